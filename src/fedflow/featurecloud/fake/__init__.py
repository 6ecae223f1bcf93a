"""Fake FeatureCloud servers for tests and for trying fedflow by hand: a web API and a controller.

They follow ``featurecloud-api.md`` strictly and fail loudly (400/403/404 with a ``detail``
message) wherever the contract says nothing, rather than guess kindly:

- web API: login with bearer access tokens that expire (``access_ttl``) and a refresh endpoint;
  roles (only the coordinator creates tokens and sets ``prepare``, ``shutdown``, ``ready``);
  the status machine ``init → ready → prepare → running → finished | failed``, ``shutdown`` →
  ``stopped``, reset to ``ready`` from an ended run; one-use participant tokens; apps must be
  bought before a project may use them; a per-user rate limit answered with 429 + Retry-After.
- controller: uploads only while the project is in ``prepare`` and before this participant has
  finalized; finalizing tells the web API (through fake-only endpoints under ``/api/fake/``,
  authenticated by the ``controllerKey`` of the site info); when every participant has
  finalized the run starts, lasts ``run_seconds`` and ends with a log and a result zip per step.

The "app" is real and simple: for ``mean-app`` every controller reads the numbers in its
uploaded files (commas, semicolons, whitespace; a non-numeric first line is a header) and sends
only their sum and count; the run's result is the mean over all sites. Any other app makes the run
fail with a log line saying it is not simulated. Faults can be injected for tests (``inject``).

Modules: ``state`` (accounts, projects, runs and the status machine), ``web`` (the web API),
``controller`` (a site's controller, ``FakeSiteOps``), ``server`` (the HTTP server runner with
fault injection), ``clock`` (``FakeClock``), ``cli`` (``python -m fedflow.featurecloud.fake``).
This subpackage is for tests and trying things by hand only: the wheel uploaded to SSH sites
leaves it out (``fedflow.connectors.wheel.EXCLUDED_FROM_WHEEL``).

By hand::

    python -m fedflow.featurecloud.fake web --port 8080 --user alice:pw1 --user bob:pw2
    python -m fedflow.featurecloud.fake controller --port 8001 --web http://127.0.0.1:8080 \\
        --data-dir /tmp/fc-alice
"""

from __future__ import annotations

from fedflow.featurecloud.fake.cli import main
from fedflow.featurecloud.fake.clock import FakeClock
from fedflow.featurecloud.fake.controller import FakeController, FakeSiteOps, parse_numbers
from fedflow.featurecloud.fake.server import HTTPFail
from fedflow.featurecloud.fake.state import APPS
from fedflow.featurecloud.fake.web import FakeWeb

__all__ = [
    "APPS",
    "FakeClock",
    "FakeController",
    "FakeSiteOps",
    "FakeWeb",
    "HTTPFail",
    "main",
    "parse_numbers",
]
