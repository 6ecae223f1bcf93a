"""The fedflow exception tree.

Every error a user can cause or meet is a ``FedflowError``; the CLI maps each branch to a
one-line message and an exit code. Errors of the libraries underneath (msgspec, asyncssh, httpx,
pydantic) are translated where they enter fedflow (``raise SiteError(...) from exc``).

    FedflowError
    ├── StudyError            the study file is malformed or invalid          exit 2
    ├── DataError             a site's data is missing, empty or unusable     exit 2
    ├── AppError              unknown app, invalid parameters, app failure    exit 2
    ├── SiteError             a site crashed, timed out or reported a failure exit 3
    │   └── SiteTimeout
    ├── ProtocolError         a frame or message broke the wire protocol      exit 3
    │   ├── LocalProtocolError   we tried to send something invalid
    │   └── RemoteProtocolError  the peer sent something invalid
    ├── ComparisonMismatch    federated and pooled results differ             exit 4
    └── PlatformError         the FeatureCloud platform refused or failed     exit 5
"""

from __future__ import annotations

__all__ = [
    "AppError",
    "ComparisonMismatch",
    "DataError",
    "EXIT_CODES",
    "FedflowError",
    "LocalProtocolError",
    "PlatformError",
    "ProtocolError",
    "RemoteProtocolError",
    "SiteError",
    "SiteTimeout",
    "StudyError",
    "exit_code",
]


class FedflowError(Exception):
    """Base of every error fedflow raises on purpose."""

    exit_code = 1

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

    exit_code = 2


class DataError(FedflowError):
    """A site's data cannot be used: missing file, empty, missing column, missing values."""

    exit_code = 2

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

    exit_code = 2


class SiteError(FedflowError):
    """A site could not be started or reached, crashed, or answered with an error."""

    exit_code = 3


class SiteTimeout(SiteError):
    """A site did not answer within the round timeout."""


class ProtocolError(FedflowError):
    """A frame or message violated the wire protocol."""

    exit_code = 3


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol does not allow (our fault)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (its fault)."""


class ComparisonMismatch(FedflowError):
    """The federated result differs from the centralized reference beyond tolerance."""

    exit_code = 4


class PlatformError(FedflowError):
    """The FeatureCloud platform or a local controller refused or failed a request."""

    exit_code = 5


EXIT_CODES = {
    "success": 0,
    "internal error": 1,
    "bad study or input": 2,
    "a site failed": 3,
    "comparison mismatch": 4,
    "platform error": 5,
    "interrupted": 130,
}


def exit_code(exc: BaseException) -> int:
    """Return the process exit code for ``exc`` (1 for anything unexpected)."""
    if isinstance(exc, FedflowError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1
