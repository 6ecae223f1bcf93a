"""Secure aggregation: the coordinator learns only the sum over sites, exactly.

A sans-I/O core (no sockets, files or processes; it imports only ``fedflow.errors``):

- ``pairwise``: pairwise masks under X25519 keys agreed once per run, one exchange per sum
  (analytics: a dropped site ends the run, so nothing is ever unmasked); from 17 sites on each
  site masks only with its t neighbours in a Harary graph (sparse masking, t the threshold);
- ``protocol``: Bonawitz et al. (2017) for an honest-but-curious coordinator — X25519 key
  agreement, ChaCha20 masks, Shamir-shared self-mask seeds and mask keys so that the survivors
  can unmask a site that dropped after sending its keys, sealed (ChaCha20-Poly1305) shares bound
  to session, round, sender and recipient;
- ``fixedpoint``: exact fixed-point encodings of float64 values (and their products) in a ring
  wide enough that the sum over sites loses no digit, and a clipped 64-bit ring for training;
- ``shamir``: secret sharing over GF(2^521 − 1); ``ring``: vectors in Z/2^(64·limbs), and
  their exact sums lane by lane with carries settled once;
- ``layout``: a summed phase's reply flattened into one vector of exact values, and back.

Runs use it with ``secure = true`` in the study: ``fedflow.runtime.secure`` (coordinator) and
``fedflow.node.secure_site`` (site) drive it over the wire; see docs/secure-aggregation.md.
"""

from __future__ import annotations

from fedflow.secure.errors import EncodingError, SecureAggregationError, ShareError
from fedflow.secure.fixedpoint import Clipped64, FixedPoint, exponent_range
from fedflow.secure.pairwise import MaskLabel, PairwiseMasker, sum_vectors
from fedflow.secure.protocol import (
    CoordinatorAggregation,
    Keys,
    Masked,
    Reveal,
    Session,
    Shares,
    SiteAggregation,
    Unmask,
)

__all__ = [
    "Clipped64",
    "CoordinatorAggregation",
    "EncodingError",
    "FixedPoint",
    "Keys",
    "MaskLabel",
    "Masked",
    "PairwiseMasker",
    "Reveal",
    "SecureAggregationError",
    "Session",
    "ShareError",
    "Shares",
    "SiteAggregation",
    "Unmask",
    "exponent_range",
    "sum_vectors",
]
