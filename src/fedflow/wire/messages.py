"""Typed, versioned messages between the coordinator and a node agent.

Conversation (coordinator → node, node → coordinator), one answer per request::

    Hello(protocol, version, site)          → Welcome(protocol, version, site, python, pid, host)
    Setup(data | dataset, dropna, min_count, seed, outputs, …) → Ready(rows, columns, files)
    Prepare(app, params, columns, code)     → Prepared(rows)                     check columns
    Task(round, phase, payload)             → Reply(round, payload, seconds)     one per round
    Finish(status)                          → Bye(peak_rss, cpu_seconds, outputs, files)

With ``secure = true`` (``Prepare.secure``) the site keeps its own reply to a summed phase and
sends it only masked (docs/secure-aggregation.md). For analytics (a dropped site ends the run)
each site's ``Prepared`` carries its X25519 public key for the run, the first ``MaskedTask``
every site's key, and a round is one exchange::

    MaskedTask(round, phase, payload, counter, lsb, msb, terms, session?, keys?)
                                            → MaskedSum(layout, lsb, msb, vector?) "masked_sum"

(a second one, with a higher counter, only when the encoding proposed does not hold a site's
values: that site answers its range and no vector). With dropout recovery (training) a round is
four exchanges instead of one ``Task``::

    SecureTask(round, phase, payload, session, sites, threshold)
                                            → SecureKeys(keys, layout, lsb, msb)  "keys"
    RelayKeys(round, keys, lsb, msb, terms) → SecureShares(boxes, commitment)     "shares"
    RelayShares(round, boxes)               → SecureMasked(vector)                "masked"
    Unmask(round, survivors, dropped)       → SecureReveal(self_seeds, mask_keys) "reveal"

Any request may instead be answered with ``Failure(kind, message, file, column)``. ``Prepare.app``
is the app as the study names it (a built-in name or ``package.module:Class``). Payloads are maps
of plain values and numpy arrays (see ``arrays``), typed per phase by the app; they never carry
rows, only aggregates.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from fedflow.errors import LocalProtocolError, RemoteProtocolError
from fedflow.wire.arrays import ARRAY_EXT, decode_array, encode_array

__all__ = [
    "MaskedTask",
    "MaskedSum",
    "PROTOCOL_VERSION",
    "Bye",
    "Column",
    "Failure",
    "FileInfo",
    "Finish",
    "Hello",
    "Message",
    "MessageCodec",
    "LayoutField",
    "Prepare",
    "Prepared",
    "PublicKeys",
    "Ready",
    "RelayKeys",
    "RelayShares",
    "Reply",
    "ROUND_REQUESTS",
    "SECURE_REQUESTS",
    "SecureKeys",
    "SecureMasked",
    "SecureReveal",
    "SecureShares",
    "SecureTask",
    "Setup",
    "Task",
    "Unmask",
    "Welcome",
]

PROTOCOL_VERSION = 7  # 7: analytics masks are AES-256-CTR keystreams (were ChaCha20)


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    pass


class Column(msgspec.Struct, frozen=True):
    """One column of a site's data: its name and kind (``int``, ``float`` or ``str``)."""

    name: str
    dtype: str
    missing: int = 0


class FileInfo(msgspec.Struct, frozen=True):
    """A data file's fingerprint, computed at the site: name, sha256, size and row count.

    ``sha256`` is None where the site has not hashed the file yet: ``Ready`` carries files'
    names, sizes and rows (a file's hash is computed while the site reads it, a query's at
    Setup), ``Bye`` every hash the site completed (all of them once it sent a result)."""

    name: str
    sha256: str | None
    bytes: int
    rows: int


class Hello(_Msg, tag="hello", frozen=True):
    protocol: int
    version: str
    site: str


class Welcome(_Msg, tag="welcome", frozen=True):
    protocol: int
    version: str
    site: str
    python: str
    pid: int
    host: str


class Setup(_Msg, tag="setup", frozen=True):
    data: list[str] = []
    dropna: bool = False
    min_count: int = 5
    seed: int | None = None
    outputs: str | None = None
    """Folder at the site for the app's per-site output files (None: the app may write none)."""
    sep: str | None = None
    """Field separator of the site's CSV/TSV files (None: ``,`` for .csv, tab for .tsv)."""
    header: bool = True
    """False: the files' first line is data; ``columns`` names the columns."""
    columns: list[str] | None = None
    """Column names of files without a header line."""
    dataset: str | None = None
    """A dataset the site's own configuration names (instead of ``data`` paths)."""
    study: str = ""
    study_sha256: str | None = None
    """The study's name and file hash, for the site's audit log."""


class Ready(_Msg, tag="ready", frozen=True):
    rows: int
    columns: list[Column]
    files: list[FileInfo]


class Prepare(_Msg, tag="prepare", frozen=True):
    app: str
    params: dict[str, Any]
    columns: dict[str, str]
    code: str | None = None
    """The source of a custom app's module (``package.module:Class``), for sites that run only
    code whose sha256 they approved; the site runs its own approved copy, never this text."""
    secure: bool = False
    """The study asked for ``secure = true``: the site answers only the secure steps of summed
    phases (a plain ``Task`` is refused) and refuses an app that does not support it."""


class Prepared(_Msg, tag="prepared", frozen=True):
    rows: int
    mask_pk: bytes | None = None
    """With ``secure = true``: the site's X25519 public key for this run's pairwise masks."""


class Task(_Msg, tag="task", frozen=True):
    round: int
    phase: str
    payload: dict[str, Any]


class Reply(_Msg, tag="reply", frozen=True):
    round: int
    payload: dict[str, Any]
    seconds: float = 0.0


class Finish(_Msg, tag="finish", frozen=True):
    status: str = "completed"


class Bye(_Msg, tag="bye", frozen=True):
    peak_rss: int
    cpu_seconds: float
    outputs: list[str] = []
    files: list[FileInfo] = []
    """The data's fingerprints as the site ends (see ``FileInfo``)."""


class Failure(_Msg, tag="failure", frozen=True):
    """A node's refusal or failure: ``kind`` is ``data``, ``app``, ``policy``, ``protocol`` or ``internal``."""

    kind: str
    message: str
    file: str | None = None
    column: str | None = None
    blame: str | None = None
    """Another site this failure is blamed on (a secure-aggregation share that does not open
    names the site that sealed it)."""


# -- secure aggregation (one round of a summed phase) -------------------------------------------


class LayoutField(msgspec.Struct, frozen=True, array_like=True):
    """One field of a flattened summed reply: name, kind (``int``, ``float``, ``exact``,
    ``int64`` or ``float64``) and shape."""

    name: str
    kind: str
    shape: list[int]


class PublicKeys(msgspec.Struct, frozen=True, array_like=True):
    """A site's two X25519 public keys (32 bytes each)."""

    cipher_pk: bytes
    mask_pk: bytes


class SecureTask(_Msg, tag="secure_task", frozen=True):
    """Step 1: compute ``phase`` and keep the reply; answer with keys and the reply's layout.
    ``session`` is the run's random session id, ``sites`` every site of the sum."""

    round: int
    phase: str
    payload: dict[str, Any]
    session: bytes
    sites: list[str]
    threshold: int


class SecureKeys(_Msg, tag="keys", frozen=True):
    """Step 1's answer: the site's public keys, its reply's layout and the exponent range of its
    values (``lsb``/``msb``; both None when every value is zero)."""

    round: int
    keys: PublicKeys
    layout: list[LayoutField]
    lsb: int | None
    msb: int | None
    seconds: float = 0.0


class RelayKeys(_Msg, tag="relay_keys", frozen=True):
    """Step 2: every site's public keys and the agreed encoding FixedPoint(lsb, msb, terms)."""

    round: int
    keys: dict[str, PublicKeys]
    lsb: int
    msb: int
    terms: int


class SecureShares(_Msg, tag="shares", frozen=True):
    """Step 2's answer: sealed shares per recipient and the commitment to the self-mask seed."""

    round: int
    boxes: dict[str, bytes]
    commitment: bytes


class RelayShares(_Msg, tag="relay_shares", frozen=True):
    """Step 3: the sealed shares addressed to this site (sender → box)."""

    round: int
    boxes: dict[str, bytes]


class SecureMasked(_Msg, tag="masked", frozen=True):
    """Step 3's answer: the site's encoded reply, masked (a (length, limbs) uint64 array)."""

    round: int
    vector: Any


class Unmask(_Msg, tag="unmask", frozen=True):
    """Step 4: who sent a masked vector and who dropped after sharing its keys."""

    round: int
    survivors: list[str]
    dropped: list[str]


class SecureReveal(_Msg, tag="reveal", frozen=True):
    """Step 4's answer: shares of the survivors' self-mask seeds and the dropped sites' keys."""

    round: int
    self_seeds: dict[str, bytes]
    mask_keys: dict[str, bytes]


class MaskedTask(_Msg, tag="masked_task", frozen=True):
    """A summed phase as one exchange (no dropout recovery): compute ``phase`` and answer the
    reply masked with pairwise masks. ``counter`` strictly increases within the run (a retry
    of the same round reuses the reply kept at the site); ``lsb``/``msb``/``terms``: the
    encoding proposed (``lsb`` None: answer the range only); ``session`` and ``keys`` (every
    site's public key) come with the site's first one and may only be repeated unchanged, with
    ``threshold``: the collusion threshold the masking graph is drawn for (None: every pair)."""

    round: int
    phase: str
    payload: dict[str, Any]
    counter: int
    lsb: int | None
    msb: int | None
    terms: int
    session: bytes | None = None
    keys: dict[str, bytes] | None = None
    threshold: int | None = None


class MaskedSum(_Msg, tag="masked_sum", frozen=True):
    """``MaskedTask``'s answer: the reply's layout, the exponent range of its values (both
    None when every value is zero) and, when the encoding proposed holds them, the encoded
    reply masked (a (length, limbs) uint64 array; None otherwise)."""

    round: int
    counter: int
    layout: list[LayoutField]
    lsb: int | None
    msb: int | None
    vector: Any = None
    seconds: float = 0.0


SECURE_REQUESTS = (SecureTask, RelayKeys, RelayShares, Unmask, MaskedTask)
"""What the coordinator sends during a secure round."""
ROUND_REQUESTS = (Task, *SECURE_REQUESTS)
"""Requests answered within the study's round timeout."""


Message = (
    Hello
    | Welcome
    | Setup
    | Ready
    | Prepare
    | Prepared
    | Task
    | Reply
    | Finish
    | Bye
    | Failure
    | SecureTask
    | SecureKeys
    | RelayKeys
    | SecureShares
    | RelayShares
    | SecureMasked
    | Unmask
    | SecureReveal
    | MaskedTask
    | MaskedSum
)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgspec.msgpack.Ext(ARRAY_EXT, encode_array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    raise LocalProtocolError(f"cannot send a value of type {type(obj).__name__} on the wire")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != ARRAY_EXT:
        raise RemoteProtocolError(f"unknown msgpack extension type {code}")
    return decode_array(data)


class MessageCodec:
    """Encode messages to payload bytes and decode payload bytes to messages (no framing)."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._decoder = msgspec.msgpack.Decoder(Message, ext_hook=_ext_hook)

    def encode(self, message: Message) -> bytes:
        """Return the msgpack bytes of ``message``; raise LocalProtocolError if unencodable."""
        try:
            return self._encoder.encode(message)
        except LocalProtocolError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def decode(self, payload: bytes) -> Message:
        """Return the message in ``payload``; raise RemoteProtocolError if corrupt or unknown."""
        try:
            return self._decoder.decode(payload)
        except RemoteProtocolError:
            raise
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RemoteProtocolError(f"corrupt message: {exc}") from exc
        except RecursionError:
            raise RemoteProtocolError("corrupt message: nested too deeply") from None
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            raise RemoteProtocolError(f"corrupt message: {type(exc).__name__}: {exc}") from None
