"""FeatureCloud.ai, headless: the web API client, the controller client, ``fcauto`` and the
``platform = "featurecloud"`` workflow. Fakes of both servers live in ``fedflow.featurecloud.fake``.

Its errors (``PlatformError`` and below: ``PlatformHTTPError``, ``Unauthorized``,
``ProjectFailed``, ``ProjectTimeout``) are defined in ``fedflow.errors`` and re-exported here.
"""

from __future__ import annotations

from fedflow.errors import PlatformHTTPError, ProjectFailed, ProjectTimeout, Unauthorized
from fedflow.featurecloud._http import USER_AGENT, Policy
from fedflow.featurecloud.client import DEFAULT_URL, FeatureCloudClient, list_apps, signup
from fedflow.featurecloud.controller import DEFAULT_CONTROLLER, ControllerClient
from fedflow.featurecloud.ops import contribute, monitor
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
