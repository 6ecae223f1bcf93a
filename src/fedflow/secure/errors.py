"""The errors of secure aggregation, all in fedflow's one error tree.

::

    FedflowError
    ├── ProtocolError
    │   └── SecureAggregationError      too few sites left to unmask, a message out of order
    │       └── ShareError              (a RemoteProtocolError too) a share that is corrupt,
    │                                   replayed from another round, or sent by another site
    └── AppError
        └── EncodingError               a value the fixed-point encoding cannot hold exactly
"""

from __future__ import annotations

from fedflow.errors import AppError, ProtocolError, RemoteProtocolError

__all__ = ["EncodingError", "SecureAggregationError", "ShareError"]


class SecureAggregationError(ProtocolError):
    """The secure-aggregation protocol cannot go on (e.g. fewer survivors than the threshold)."""


class ShareError(SecureAggregationError, RemoteProtocolError):
    """An encrypted share failed to decrypt or names the wrong sender, recipient or round;
    ``site`` is the site that (supposedly) sent it."""


class EncodingError(AppError):
    """A value lies outside the fixed-point range the sites agreed on, or is not finite."""
