"""The node agent: the program that runs at a site and answers the coordinator.

``NodeAgent.handle(message) -> reply`` is the whole protocol logic, one reply per request, with no
I/O but reading the site's own data files and writing its own outputs. ``serve`` is the thin loop
that carries frames over a pair of binary streams (stdin/stdout locally and over SSH alike).

States: new → greeted (Hello) → loaded (Setup) → prepared (Prepare) → rounds (Task…) → done (Finish).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import resource
import socket
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from fedflow._version import __version__
from fedflow.apps import BUILTIN_APPS, get_app
from fedflow.apps.base import App, SiteContext, Table, decode_payload, encode_payload
from fedflow.errors import AppError, DataError, PolicyError, ProtocolError, RemoteProtocolError
from fedflow.node.audit import AuditLog
from fedflow.node.data import (
    FileFingerprint,
    LoadedData,
    MemorySource,
    Source,
    StreamedTable,
    open_files,
    prepare_source,
    prepare_streamed,
)
from fedflow.node.databases import open_dataset
from fedflow.node.siteconfig import (
    Dataset,
    SiteConfig,
    approved_store,
    format_bytes,
    load_config,
    source_hash,
)
from fedflow.node.state import FolderStore
from fedflow.wire import (
    HEADER_SIZE,
    PROTOCOL_VERSION,
    SECURE_REQUESTS,
    Bye,
    Column,
    Failure,
    FileInfo,
    Finish,
    Hello,
    MaskedSum,
    MaskedTask,
    Message,
    MessageCodec,
    Prepare,
    Prepared,
    Ready,
    Reply,
    SecureMasked,
    SecureTask,
    Setup,
    Task,
    Welcome,
    frame_header,
    parse_header,
)

if TYPE_CHECKING:  # imported when a study is secure (cryptography: 0.3 s in every site)
    from fedflow.node.secure_site import SecureSite

__all__ = ["NodeAgent", "serve"]

log = logging.getLogger("fedflow.node")

FAILED_HASH_WAIT = 60.0
"""Seconds a site waits at ``Finish("failed")`` for hashes not complete yet (less than the
coordinator waits for ``Bye``, runtime.coordinator.SETUP_TIMEOUT)."""


class NodeAgent:
    """Answers coordinator messages for one site. Never sends rows, only what apps return.

    ``owned``: started by the study's own connector on machines its user controls (local
    simulation, provisioned SSH): the study may name data files and custom apps by import, and
    lower ``min_count`` to 1. Otherwise the site is **defended**: it serves only the datasets its
    configuration names, runs only built-in apps it allows and custom code whose sha256 it
    approved (its own stored copy), refuses a study asking for a ``min_count`` below its floor (5
    when unset), writes only under its own folder, and logs every request in its hash-chained
    audit log.
    """

    def __init__(
        self,
        site: str = "site",
        config: SiteConfig | None = None,
        *,
        owned: bool = True,
        preloaded: LoadedData | None = None,
        config_error: str | None = None,
    ) -> None:
        self.site = site
        self.config = config or SiteConfig()
        self.owned = owned
        self.preloaded = preloaded
        """Data held in memory (in-memory runs and tests): served instead of reading files."""
        self.config_error = config_error
        """Why the site's configuration could not be used (every request is then refused)."""
        audit = self.config.audit_path(owned=owned)
        self.audit = AuditLog(audit) if audit is not None else None
        self.state = "new"
        self._setup: Setup | None = None
        self._source: Source | None = None
        self._dataset: Dataset | None = None
        self._table: Table | None = None
        self._app: App[Any] | None = None
        self._app_ref = ""
        self._code_hash: str | None = None
        self._params: Any = None
        self._ctx: SiteContext | None = None
        self._compute_seconds = 0.0
        self._secure: SecureSite | None = None
        """With ``secure = true``: this site's side of secure aggregation (None otherwise)."""
        self._fingerprints: list[FileFingerprint] | None = None
        """The data's fingerprints once every hash is complete (before the first result)."""

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, message: Message) -> Message:
        """Return the reply to ``message``; failures become ``Failure`` replies, never exceptions."""
        try:
            reply = self._dispatch(message)
        except DataError as exc:
            log.error("data error: %s", exc.message)
            reply = Failure(kind="data", message=exc.message, file=exc.file, column=exc.column)
        except AppError as exc:
            log.error("app error: %s", exc.message)
            reply = Failure(kind="app", message=exc.message)
        except PolicyError as exc:
            log.error("refused: %s", exc.message)
            reply = Failure(kind="policy", message=exc.message)
        except ProtocolError as exc:
            log.error("protocol error: %s", exc.message)
            blame = getattr(exc, "blame", None)  # a share sealed by another site did not open
            reply = Failure(kind="protocol", message=exc.message, blame=blame)
        except Exception as exc:  # an app bug must not kill the agent silently
            log.error("internal error:\n%s", traceback.format_exc())
            reply = Failure(kind="internal", message=f"{type(exc).__name__}: {exc}")
        self._audit(message, reply)
        return reply

    def _dispatch(self, message: Message) -> Message:
        if isinstance(message, Hello):
            return self._hello(message)
        if isinstance(message, Setup):
            return self._setup_data(message)
        if isinstance(message, Prepare):
            return self._prepare(message)
        if isinstance(message, Task):
            return self._task(message)
        if isinstance(message, SECURE_REQUESTS):
            self._expect("prepared")
            if self._secure is None:
                raise RemoteProtocolError(
                    "a secure-aggregation step in a run without secure = true"
                )
            return self._secure.handle(message)
        if isinstance(message, Finish):
            return self._finish(message)
        raise RemoteProtocolError(f"unexpected {type(message).__name__} message")

    def _expect(self, *states: str) -> None:
        if self.state not in states:
            raise RemoteProtocolError(f"message out of order (agent is in state '{self.state}')")

    def _refuse_if_unconfigured(self) -> None:
        if self.config_error:
            raise PolicyError(f"the site's configuration is unusable: {self.config_error}")

    # -- steps ---------------------------------------------------------------------------------
    def _hello(self, msg: Hello) -> Welcome:
        self._expect("new")
        self.site = msg.site or self.site
        log.info("coordinator says hello (protocol %s, fedflow %s)", msg.protocol, msg.version)
        if msg.protocol != PROTOCOL_VERSION or msg.version != __version__:
            log.warning(
                "version mismatch: site runs fedflow %s (protocol %s)",
                __version__,
                PROTOCOL_VERSION,
            )
        self.state = "greeted"
        return Welcome(
            protocol=PROTOCOL_VERSION,
            version=__version__,
            site=self.site,
            python=platform.python_version(),
            pid=os.getpid(),
            host=socket.gethostname(),
        )

    def _open_data(self, msg: Setup) -> Source:
        """Return the data the request names, opened (fingerprints, rows, column names and
        kinds; no column is loaded), after checking the site serves it (no file is opened before
        that check)."""
        if self.preloaded is not None:
            return MemorySource(self.preloaded)
        if msg.dataset is not None:
            if msg.data:
                raise PolicyError("name either a dataset or data files, not both")
            dataset = self.config.datasets.get(msg.dataset)
            if dataset is None:
                offered = ", ".join(sorted(self.config.datasets)) or "none"
                raise PolicyError(f"no dataset '{msg.dataset}' here (datasets offered: {offered})")
            self._dataset = dataset
            source = open_dataset(dataset, site=self.site)
            if dataset.columns is not None:
                return restrict_columns(source, dataset.columns, where=f"dataset '{dataset.name}'")
            return source
        if not self.owned:
            raise PolicyError(
                "this site serves only the datasets its configuration names; the study names "
                'files (give the client dataset = "…")'
            )
        return open_files(
            msg.data, site=self.site, sep=msg.sep, header=msg.header, columns=msg.columns
        )

    def _setup_data(self, msg: Setup) -> Ready:
        self._expect("greeted")
        self._refuse_if_unconfigured()
        if not 1 <= msg.min_count < 2**63:
            raise PolicyError(f"min_count {msg.min_count} is outside 1 … 2^63-1")
        floor = self.config.floor(owned=self.owned)
        if not self.owned and msg.min_count < floor:  # said, not silently raised: the study's
            raise PolicyError(  # manifest then records the threshold every site applied
                f"the study asks min_count = {msg.min_count}, below this site's floor of {floor} "
                f"(set min_count = {floor} or more in the study)"
            )
        started = time.perf_counter()
        self._setup = msg
        source = self._open_data(msg)
        source.start_fingerprints()  # sha256 in the background, while the site reads the files
        self._source = source
        log.info(
            "opened %d rows × %d columns from %d source(s) in %.1f ms",
            source.rows,
            len(source.kinds),
            len(source.files),
            1000 * (time.perf_counter() - started),
        )
        self.state = "loaded"
        return Ready(
            rows=source.rows,
            columns=[
                Column(name, kind, source.missing.get(name, 0))
                for name, kind in source.kinds.items()
            ],
            files=_file_infos(source.files),  # a file's sha256 follows with Bye
        )

    def _load_app(self, msg: Prepare) -> App[Any]:
        """Return the app the request names, if this site runs it. A defended site imports no
        module because a coordinator named it: custom code runs only from the site's own
        approved copy whose sha256 equals that of the source the coordinator sent."""
        allowed = self.config.allowed_apps
        if msg.app in BUILTIN_APPS:
            if allowed is not None and msg.app not in allowed:
                raise PolicyError(
                    f"this site does not allow app '{msg.app}' "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
                )
            app = get_app(msg.app)
            runs_code = callable(getattr(app, "use_code", None))  # train runs the study's plan
            if msg.code is not None or runs_code:
                self._approve_study_code(app, msg)
            return app
        if msg.code is not None:
            self._code_hash = source_hash(msg.code.encode("utf-8"))
        if self.owned:
            return get_app(msg.app)  # the study's user controls this machine and its modules
        if msg.code is None or self._code_hash not in self.config.approved_code:
            shown = self._code_hash or "no source sent"
            raise PolicyError(
                f"custom app '{msg.app}' ({shown}) is not approved here "
                "(the site operator approves code with: fedflow site approve FILE)"
            )
        assert self.config.path is not None
        return load_approved_app(
            approved_store(self.config.path), self._code_hash, msg.app.partition(":")[2]
        )

    def _approve_study_code(self, app: App[Any], msg: Prepare) -> None:
        """Let a built-in app run the study code sent with ``msg`` (train's plan): at a defended
        site only the site's own approved copy with the same sha256, never the text sent; at an
        owned site the text sent, once its sha256 is the study's, written to
        ``<site run folder>/plan/<hex>.py`` (the study's path on the coordinator's machine need
        not exist here). An owned site without a run folder (in-process runs) reads the file the
        study names. The app checks the hash again when it loads the file."""
        use = getattr(app, "use_code", None)
        if not callable(use):
            raise PolicyError(f"app '{msg.app}' runs no study code, yet code was sent")
        if msg.code is None:  # else a path the coordinator names would run here
            raise PolicyError(f"app '{msg.app}' runs the study's code, and none was sent")
        source = msg.code.encode("utf-8")
        self._code_hash = source_hash(source)
        if self.owned:
            use(self._code_hash, self._write_study_code(app, msg, source))
            return
        if self._code_hash not in self.config.approved_code:
            raise PolicyError(
                f"the study's code for app '{msg.app}' ({self._code_hash}) is not approved here "
                "(the site operator approves code with: fedflow site approve FILE)"
            )
        assert self.config.path is not None
        copy = approved_store(self.config.path) / f"{self._code_hash.partition(':')[2]}.py"
        use(self._code_hash, copy)

    def _write_study_code(self, app: App[Any], msg: Prepare, source: bytes) -> Path | None:
        """At an owned site: check the study code sent against the hash the study gives
        (``plan_sha256`` in its parameters) and write it to the run folder; return its path."""
        assert self._code_hash is not None
        expected = getattr(app.parse_params(msg.params), "plan_sha256", "") or None
        if expected is not None and expected != self._code_hash:
            raise PolicyError(
                f"site '{self.site}' refused the study code sent for app '{msg.app}': its hash is "
                f"{self._code_hash}, the study's {expected}"
            )
        folder = self._output_folder()
        if folder is None:
            return None
        name = f"{self._code_hash.partition(':')[2]}.py"
        FolderStore(folder / "plan").write(name, source)
        return folder / "plan" / name

    def _prepare(self, msg: Prepare) -> Prepared:
        self._expect("loaded")
        assert self._setup is not None and self._source is not None
        self._refuse_if_unconfigured()
        app = self._load_app(msg)
        params = app.parse_params(msg.params)
        # the site works out the columns from the app and its parameters itself; a coordinator
        # that names others (or fewer, to skip the checks) is refused
        needed = dict(app.columns(params))
        if needed != dict(msg.columns):
            raise PolicyError(
                f"the request names columns {dict(msg.columns)} but app '{msg.app}' with these "
                f"parameters needs {needed}"
            )
        if self._dataset is not None and self._dataset.columns is not None:
            outside = sorted(set(needed) - set(self._dataset.columns))
            if outside:
                raise PolicyError(
                    f"dataset '{self._dataset.name}' does not offer column(s) {', '.join(outside)}"
                )
        floor = self.config.floor(owned=self.owned)
        min_count = max(self._setup.min_count, floor)
        started = time.perf_counter()
        for name, kind in needed.items():  # text where numbers are needed, before any pass
            if kind in ("numeric", "binary") and self._source.kinds.get(name) == "str":
                raise DataError(f"column '{name}' is not numeric in the site's data", column=name)
        table = self._prepare_table(app, msg.app, needed, min_count)
        log.info(
            "%s %d column(s) in %.1f ms",
            "loaded"
            if not isinstance(table, StreamedTable)
            else "checked (streamed)"
            if table.checked
            else "opened (values checked by the first pass)",
            len(table.columns),
            1000 * (time.perf_counter() - started),
        )
        self._app, self._app_ref, self._params, self._table = app, msg.app, params, table
        self._ctx = SiteContext(
            site=self.site, seed=self._setup.seed, min_count=min_count, secure=msg.secure
        )
        folder = self._output_folder()
        if folder is not None:  # the app's state between rounds: <output folder>/state
            self._ctx.store = FolderStore(folder / "state")
        if msg.secure:
            if app.secure is not True:
                raise AppError(f"app '{msg.app}' cannot run with secure = true: {app.secure}")
            from fedflow.node.secure_site import SecureSite

            self._secure = SecureSite(self.site, self._summed)
        log.info("prepared app '%s' on %d rows (min_count %d)", msg.app, table.n_rows, min_count)
        self.state = "prepared"
        key = self._secure.public_key if self._secure is not None else None
        return Prepared(rows=table.n_rows, mask_pk=key)

    def _prepare_table(
        self, app: App[Any], name: str, needed: Mapping[str, str], min_count: int
    ) -> Table:
        """Return the table the app sees: for a streaming app, one whose batches re-read the
        site's source; else the whole table, refused when it exceeds ``memory_limit``."""
        assert self._setup is not None and self._source is not None
        dropna = self._setup.dropna
        if app.streaming and not isinstance(self._source, MemorySource):
            limit = self.config.memory_bytes()
            return prepare_streamed(  # defer: a Parquet site's checks ride on the first pass
                self._source,
                needed,
                dropna=dropna,
                min_count=min_count,
                memory_limit=limit,
                defer=True,
            )
        self._check_memory(name, list(needed) or self._source.columns)
        return prepare_source(self._source, needed, dropna=dropna, min_count=min_count)

    def _check_memory(self, app: str, columns: Sequence[str]) -> None:
        """Refuse, before loading, an app whose columns as float64 exceed the site's
        ``memory_limit``."""
        assert self._source is not None
        rows, limit = self._source.rows, self.config.memory_bytes()
        needed = rows * len(columns) * 8
        if needed > limit:
            raise PolicyError(
                f"app '{app}' needs {rows} rows × {len(columns)} column(s) "
                f"({', '.join(columns)}) = {format_bytes(needed)} as float64, above this site's "
                f"memory_limit of {format_bytes(limit)} (raise memory_limit in the site "
                "configuration, or use fewer rows or columns)"
            )

    def _task(self, msg: Task) -> Reply:
        self._expect("prepared")
        if self._secure is not None:  # our reply may leave this site only masked
            raise RemoteProtocolError("a plain task in a run with secure = true")
        reply, seconds = self._compute(msg.round, msg.phase, msg.payload)
        return Reply(round=msg.round, payload=encode_payload(reply), seconds=seconds)

    def _summed(self, round_: int, phase: str, payload: dict[str, Any]) -> tuple[Any, float]:
        """Compute a summed phase's reply for secure aggregation (it stays at the site)."""
        assert self._app is not None
        if not self._app.check_phase(phase).summed:
            raise RemoteProtocolError(
                f"phase '{phase}' of app '{self._app.name}' is not summed: it cannot run securely"
            )
        return self._compute(round_, phase, payload)

    def _compute(self, round_: int, phase: str, payload: dict[str, Any]) -> tuple[Any, float]:
        assert self._app is not None and self._ctx is not None and self._table is not None
        self._ctx.round = round_
        kind = self._app.check_phase(phase).request
        try:
            request = decode_payload(payload, kind)
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(
                f"task for phase '{phase}' of app '{self._app.name}' does not fit: {exc}"
            ) from None
        started = time.perf_counter()
        try:
            try:
                reply = self._app.local(self._table, self._params, phase, request, self._ctx)
            finally:  # no reply before every value is checked (see prepare_streamed's defer)
                if isinstance(self._table, StreamedTable):
                    self._table.ensure_checked()
            if self._fingerprints is None and self._source is not None:
                # no result leaves before the data's hashes are complete (a file that changed
                # since Setup fails here); they reach the coordinator with Bye
                self._fingerprints = self._source.fingerprints()
        except DataError as exc:
            exc.site = None
            raise
        seconds = time.perf_counter() - started
        self._compute_seconds += seconds
        log.debug("round %d (%s) computed in %.2f ms", round_, phase, 1000 * seconds)
        return reply, seconds

    @property
    def outputs(self) -> dict[str, bytes]:
        """Files the app asked to write at this site so far (name → content)."""
        return dict(self._ctx.outputs) if self._ctx is not None else {}

    def _output_folder(self) -> Path | None:
        if not self.owned:  # a defended site writes only under its own folder
            study = self._setup.study if self._setup and self._setup.study else "study"
            return self.config.outputs_dir() / safe_name(study)
        folder = self._setup.outputs if self._setup else None
        return Path(folder) if folder else None

    def _finish(self, msg: Finish) -> Bye:
        written: list[str] = []
        if self._ctx is not None and self._ctx.outputs:
            target = self._output_folder()
            if target is None:
                log.warning(
                    "the app produced %d output file(s) but no output folder was given",
                    len(self._ctx.outputs),
                )
            else:
                target.mkdir(parents=True, exist_ok=True, mode=0o700)
                for name, content in self._ctx.outputs.items():
                    # output names may come from the study (a twin's config): a plain file name
                    # in this folder only: never a path, a dot name or a symlink to elsewhere
                    safe = Path(name).name
                    if safe in ("", ".", "..") or (target / safe).is_symlink():
                        log.warning("refused to write output file %r: not a plain file name", name)
                        continue
                    (target / safe).write_bytes(content)
                    written.append(safe)
                log.info("wrote %s to %s", ", ".join(written), target)
        self.state = "done"
        usage = resource.getrusage(resource.RUSAGE_SELF)
        log.info("run %s; computing took %.1f ms in all", msg.status, 1000 * self._compute_seconds)
        leave = self.config.outputs_leave_site
        if written and not leave:
            log.info("per-site outputs stay at the site (outputs_leave_site = false)")
        files = self._fingerprints
        if files is None and self._source is not None:  # ended before a result: what is known
            files = self._finish_fingerprints(msg.status)
        return Bye(
            peak_rss=int(usage.ru_maxrss) * 1024,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            outputs=written if leave else [],
            files=_file_infos(files or []),
        )

    def _finish_fingerprints(self, status: str) -> list[FileFingerprint]:
        """The data's fingerprints as a run ends before this site sent a result. A failed run
        is the one a user most needs to describe: wait for the hashes (the thread has been
        reading the files since Setup) up to FAILED_HASH_WAIT seconds; a hash not complete by
        then, or a file that changed, is sent as unknown (None), never guessed."""
        assert self._source is not None
        if status == "failed":
            try:
                return self._source.fingerprints(timeout=FAILED_HASH_WAIT)
            except DataError as exc:
                log.warning("fingerprints unknown: %s", exc.message)
        return self._source.fingerprints(wait=False)

    # -- audit ---------------------------------------------------------------------------------
    def _audit(self, message: Message, reply: Message) -> None:
        if self.audit is None or isinstance(message, Hello):
            return
        setup = self._setup
        record: dict[str, Any] = {
            "site": self.site,
            "mode": "owned" if self.owned else "defended",
            "event": type(message).__name__.lower(),
            "study": setup.study if setup else None,
            "study_sha256": setup.study_sha256 if setup else None,
            "dataset": setup.dataset if setup else None,
        }
        if isinstance(message, Setup):
            record["files"] = list(message.data)
        if isinstance(message, Prepare):
            record.update(app=message.app, params=message.params, columns=message.columns)
            record["code_sha256"] = self._code_hash
        if isinstance(message, (Task, SecureTask, MaskedTask)):
            record.update(app=self._app_ref, round=message.round, phase=message.phase)
        if isinstance(reply, Failure):
            record.update(outcome="refused" if reply.kind == "policy" else "failed")
            record["reason"] = reply.message
        elif isinstance(reply, (Reply, SecureMasked, MaskedSum)):  # what left the site
            encoded = MessageCodec().encode(reply)
            record.update(
                outcome="released",
                released={
                    "bytes": len(encoded),
                    "sha256": hashlib.sha256(encoded).hexdigest(),
                    "shape": _shape(
                        reply.payload if isinstance(reply, Reply) else {"masked": reply.vector}
                    ),
                },
            )
        elif isinstance(reply, (Ready, Prepared)):
            record.update(outcome="answered", rows=reply.rows)
        else:
            record.update(outcome="answered")
        try:
            self.audit.append(record)
        except OSError as exc:  # never answer without logging: stop serving
            log.error("cannot write the audit log %s: %s", self.audit.path, exc)
            raise SystemExit(1) from None


def _file_infos(files: Sequence[FileFingerprint]) -> list[FileInfo]:
    return [FileInfo(f.name, f.sha256, f.bytes, f.rows) for f in files]


def _shape(payload: Any) -> Any:
    """Return the structure of a released payload: keys, array shapes and dtypes, scalar types."""
    if isinstance(payload, dict):
        return {str(k): _shape(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [len(payload)]
    if hasattr(payload, "shape") and hasattr(payload, "dtype"):
        return {"shape": list(payload.shape), "dtype": str(payload.dtype)}
    return type(payload).__name__


def safe_name(name: str) -> str:
    """Return ``name`` reduced to a safe file name (letters, digits, ``._-``)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._")
    return cleaned or "study"


def restrict_columns(source: Source, allowed: Sequence[str], *, where: str) -> Source:
    """Return ``source`` serving only the ``allowed`` columns (those it holds, in its order)."""
    missing = [c for c in allowed if c not in source.kinds]
    if missing:
        raise DataError(f"{where}: configured column(s) {', '.join(missing)} not in its files")
    source.restrict(allowed)
    return source


def load_approved_app(store: Path, code_hash: str, class_name: str) -> App[Any]:
    """Return an instance of ``class_name`` from the site's own approved copy of the source
    whose hash is ``code_hash``; the copy's bytes are hashed again before they run."""
    import importlib.util

    path = store / f"{code_hash.partition(':')[2]}.py"
    try:
        source = path.read_bytes()
    except OSError:
        raise PolicyError(
            f"approved code {code_hash} has no stored copy at {path} (approve it again)"
        ) from None
    if source_hash(source) != code_hash:
        raise PolicyError(f"the stored copy {path} no longer has hash {code_hash}")
    module_name = f"fedflow_approved_{code_hash.partition(':')[2][:16]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PolicyError(f"cannot load the approved copy {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, App)):
        raise AppError(f"approved code {code_hash} has no App subclass '{class_name}'")
    return cls()


def warm_up() -> None:
    """Run the data path once on a tiny in-memory file, so the lazy imports and kernels it
    needs (pyarrow's CSV reader and compute functions, numpy conversions) are loaded before a
    process forks its sites."""
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from fedflow.node.data import type_strings

    table = pacsv.read_csv(io.BytesIO(b"a,b\n1,x\n2.5,NA\n"))
    for name in table.column_names:
        type_strings(table.column(name).cast(pa.string()).combine_chunks())


def tighten(
    config: SiteConfig, *, allow: Sequence[str] | None, min_count: int | None
) -> SiteConfig:
    """Return ``config`` tightened by command-line options (never loosened)."""
    allowed = config.allowed_apps
    if allow:
        allowed = frozenset(allow) if allowed is None else allowed & frozenset(allow)
    floor = config.min_count
    if min_count is not None:
        floor = max(floor or 1, min_count)
    return dataclasses.replace(config, allowed_apps=allowed, min_count=floor)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def serve(agent: NodeAgent, instream: BinaryIO, outstream: BinaryIO) -> int:
    """Answer frames from ``instream`` on ``outstream`` until Finish or end of input.

    Returns the exit status: 0 after Finish or a clean end of input, 1 on a broken frame.
    """
    codec = MessageCodec()
    while True:
        header = _read_exactly(instream, HEADER_SIZE)
        if not header:
            log.info("coordinator closed the channel")
            return 0
        try:
            if len(header) < HEADER_SIZE:
                raise RemoteProtocolError("channel closed inside a frame header")
            length = parse_header(header)
            payload = _read_exactly(instream, length)
            if len(payload) < length:
                raise RemoteProtocolError(
                    f"channel closed inside a frame ({len(payload)} of {length} bytes)"
                )
        except RemoteProtocolError as exc:
            log.error("%s", exc)
            return 1
        try:
            message = codec.decode(payload)
        except RemoteProtocolError as exc:
            log.error("%s", exc)
            reply: Message = Failure(kind="protocol", message=str(exc))
        else:
            reply = agent.handle(message)
        encoded = codec.encode(reply)
        outstream.write(frame_header(encoded))  # buffered; the payload follows unjoined
        outstream.write(encoded)
        outstream.flush()
        if isinstance(reply, Bye):
            return 0


def _exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the process that started us goes away, even if an app is stuck computing.

    The agent normally ends when its stdin closes; this covers an agent busy in ``local`` whose
    coordinator (or SSH session) was killed, so no site process outlives its run.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                log.error("the coordinator went away; exiting")
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fedflow.node`` / ``fedflow node``: serve stdin/stdout."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="fedflow node", description="Run a fedflow node agent on stdin/stdout."
    )
    parser.add_argument("--site", default="site", help="this site's name (for logs)")
    parser.add_argument(
        "--owned",
        action="store_true",
        help="started by the study's own connector on a machine its user controls: the study "
        "may name files and custom apps and lower min_count to 1 (a bare agent is defended)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the site configuration (default: $FEDFLOW_SITE_POLICY, "
        "else $XDG_CONFIG_HOME/fedflow/site-policy.toml)",
    )
    parser.add_argument(
        "--allow-app",
        action="append",
        dest="allow",
        metavar="APP",
        help="allow only these apps (repeatable; tightens the configuration)",
    )
    parser.add_argument(
        "--min-count", type=int, default=None, help="raise this site's min_count floor"
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    # Frames own the real stdout; anything else printed (by us or a library) goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s {args.site} %(levelname)s %(message)s",
    )
    _exit_with_parent()
    refusal: str | None = None
    try:
        config = load_config(args.config)
    except PolicyError as exc:
        log.error("%s", exc.message)
        config, refusal = SiteConfig(), exc.message  # refuse every request, say why
    config = tighten(config, allow=args.allow, min_count=args.min_count)
    agent = NodeAgent(args.site, config, owned=args.owned, config_error=refusal)
    log.info(
        "%s site: apps %s, min_count at least %d, datasets %s",
        "owned" if args.owned else "defended",
        ", ".join(sorted(config.allowed_apps)) if config.allowed_apps is not None else "built-in",
        config.floor(owned=args.owned),
        ", ".join(sorted(config.datasets)) or "none",
    )
    log.info(
        "node agent started (fedflow %s, python %s, pid %d)",
        __version__,
        platform.python_version(),
        os.getpid(),
    )
    try:
        return serve(agent, sys.stdin.buffer, out)
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
