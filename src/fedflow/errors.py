"""The fedflow exception tree.

Every error a user can cause or meet is a ``FedflowError``, and every fedflow error class is
defined here; the CLI (``fedflow``) and ``fcauto`` map each branch to a one-line message and an
exit code from the one table below (``ExitCode``). Errors of the libraries underneath (msgspec,
asyncssh, httpx, pydantic) are translated where they enter fedflow (``raise SiteError(...) from
exc``).

    FedflowError
    ├── StudyError            the study file is malformed or invalid          exit 2
    ├── DataError             a site's data is missing, empty or unusable     exit 2
    ├── AppError              unknown app, invalid parameters, app failure    exit 2
    ├── SiteError             a site crashed, timed out or reported a failure exit 3
    │   └── SiteTimeout
    ├── PolicyError           a site's own policy refuses the request         exit 3
    ├── ProtocolError         a frame or message broke the wire protocol      exit 3
    │   ├── LocalProtocolError   we tried to send something invalid
    │   └── RemoteProtocolError  the peer sent something invalid
    ├── ComparisonMismatch    federated and pooled results differ             exit 4
    └── PlatformError         the FeatureCloud platform refused or failed     exit 5
        ├── PlatformHTTPError an error status from the platform or a controller (``.status``)
        │   └── Unauthorized  HTTP 401 (the web client refreshes its token once, then stops)
        ├── ProjectFailed     the project's run ended failed / error / stopped
        └── ProjectTimeout    the project's run did not end in time (``fcauto``: exit 6)

Anything else that escapes is a bug: exit 1. An interrupt (Ctrl-C) is exit 130.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AppError",
    "ComparisonMismatch",
    "DataError",
    "ExitCode",
    "FedflowError",
    "LocalProtocolError",
    "PlatformError",
    "PlatformHTTPError",
    "PolicyError",
    "ProjectFailed",
    "ProjectTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "SiteError",
    "SiteTimeout",
    "StudyError",
    "Unauthorized",
    "exit_code",
]


class ExitCode(IntEnum):
    """The exit codes of ``fedflow`` and ``fcauto`` (the README and docs/featurecloud.md list them)."""

    OK = 0
    INTERNAL = 1
    """A bug: anything that is not a FedflowError."""
    INPUT = 2
    """Bad study or input: StudyError, DataError, AppError."""
    SITE = 3
    """A site failed, refused or broke the protocol: SiteError, PolicyError, ProtocolError."""
    MISMATCH = 4
    """``--compare`` found a mismatch: ComparisonMismatch."""
    PLATFORM = 5
    """The FeatureCloud platform refused or failed: PlatformError."""
    TIMEOUT = 6
    """``fcauto monitor`` timed out (ProjectTimeout); ``fedflow run`` reports it as PLATFORM."""
    INTERRUPTED = 130


class FedflowError(Exception):
    """Base of every error fedflow raises on purpose."""

    exit_code: int = ExitCode.INTERNAL

    def __init__(self, message: str, *, site: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.site = site

    def __str__(self) -> str:
        if self.site and not self.message.startswith(f"site '{self.site}'"):
            return f"site '{self.site}': {self.message}"
        return self.message


class StudyError(FedflowError):
    """The study file cannot be read or does not describe a valid study."""

    exit_code = ExitCode.INPUT


class DataError(FedflowError):
    """A site's data cannot be used: missing file, empty, missing column, missing values."""

    exit_code = ExitCode.INPUT

    def __init__(
        self,
        message: str,
        *,
        site: str | None = None,
        file: str | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message, site=site)
        self.file = file
        self.column = column


class AppError(FedflowError):
    """An app does not exist, rejected its parameters, or failed in its own logic."""

    exit_code = ExitCode.INPUT


class SiteError(FedflowError):
    """A site could not be started or reached, crashed, or answered with an error."""

    exit_code = ExitCode.SITE


class SiteTimeout(SiteError):
    """A site did not answer within the round timeout."""


class PolicyError(FedflowError):
    """The site's own policy refuses the request (an app it does not allow, an unreadable policy)."""

    exit_code = ExitCode.SITE


class ProtocolError(FedflowError):
    """A frame or message violated the wire protocol."""

    exit_code = ExitCode.SITE


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow (our fault)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (its fault)."""


class ComparisonMismatch(FedflowError):
    """The federated result differs from the centralized reference beyond tolerance."""

    exit_code = ExitCode.MISMATCH


class PlatformError(FedflowError):
    """The FeatureCloud platform or a local controller refused or failed a request."""

    exit_code = ExitCode.PLATFORM


class PlatformHTTPError(PlatformError):
    """The platform or a controller answered with an error status (kept in ``status``)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class Unauthorized(PlatformHTTPError):
    """HTTP 401: the access token is missing, expired or invalid."""


class ProjectFailed(PlatformError):
    """The project's run ended ``failed``, ``error`` or ``stopped``."""

    def __init__(self, message: str, *, status: str, site: str | None = None) -> None:
        super().__init__(message, site=site)
        self.status = status


class ProjectTimeout(PlatformError):
    """The project's run did not end within the timeout."""

    def __init__(self, message: str, *, status: str, site: str | None = None) -> None:
        super().__init__(message, site=site)
        self.status = status


def exit_code(exc: BaseException, *, fcauto: bool = False) -> int:
    """Return the process exit code for ``exc`` (1 for anything unexpected).

    ``fcauto`` distinguishes a monitor timeout (ProjectTimeout: 6) from other platform errors.
    """
    if fcauto and isinstance(exc, ProjectTimeout):
        return int(ExitCode.TIMEOUT)
    if isinstance(exc, FedflowError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.INTERNAL)
