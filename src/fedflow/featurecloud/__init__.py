"""FeatureCloud.ai, headless: the web API client, the controller client, ``fcauto`` and the
``platform = "featurecloud"`` workflow. Fakes of both servers live in ``fedflow.featurecloud.fake``.

    PlatformError (fedflow.errors)
    ├── PlatformHTTPError     an error status from the platform or a controller (``.status``)
    │   └── Unauthorized      HTTP 401 (the web client refreshes its token once, then stops)
    ├── ProjectFailed         the run ended failed / error / stopped
    └── ProjectTimeout        the run did not end in time
"""

from __future__ import annotations

from fedflow.featurecloud._http import USER_AGENT, PlatformHTTPError, Policy, Unauthorized
from fedflow.featurecloud.client import DEFAULT_URL, FeatureCloudClient, list_apps, signup
from fedflow.featurecloud.controller import DEFAULT_CONTROLLER, ControllerClient
from fedflow.featurecloud.ops import ProjectFailed, ProjectTimeout, contribute, monitor
from fedflow.featurecloud.ratelimit import DEFAULT_RATE, RateLimiter

__all__ = [
    "DEFAULT_CONTROLLER",
    "DEFAULT_RATE",
    "DEFAULT_URL",
    "USER_AGENT",
    "ControllerClient",
    "FeatureCloudClient",
    "PlatformHTTPError",
    "Policy",
    "ProjectFailed",
    "ProjectTimeout",
    "RateLimiter",
    "Unauthorized",
    "contribute",
    "list_apps",
    "monitor",
    "signup",
]
