"""The site operator's commands: ``fedflow site check``, ``approve FILE`` and ``log [--verify]``.

Each returns the text to print (and raises PolicyError or DataError with a one-line message), so
the CLI stays a thin wrapper.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from fedflow._atomic import atomic_write
from fedflow.apps import available_apps
from fedflow.errors import PolicyError
from fedflow.node.audit import verify
from fedflow.node.databases import open_dataset
from fedflow.node.siteconfig import approved_store, config_file, load_config, source_hash

__all__ = ["approve", "check", "show_log"]


def check(path: Path | None = None) -> str:
    """Validate the site configuration and describe what the site offers to a bare agent."""
    path = path or config_file()
    config = load_config(path)
    lines = [f"site configuration: {path}" + ("" if path.exists() else " (absent: defaults)")]
    lines.append(f"min_count floor: {config.floor(owned=False)}")
    apps = sorted(config.allowed_apps) if config.allowed_apps is not None else available_apps()
    unknown = sorted(set(apps) - set(available_apps()))
    if unknown:
        raise PolicyError(f"{path}: allowed_apps names unknown app(s): {', '.join(unknown)}")
    lines.append(f"built-in apps: {', '.join(apps) or 'none'}")
    store = approved_store(path)
    for code in sorted(config.approved_code):
        copy = store / f"{code.partition(':')[2]}.py"
        state = "stored" if copy.exists() else "NO STORED COPY (approve the file again)"
        lines.append(f"approved code: {code} ({state})")
    lines.append(
        "per-site outputs: "
        + ("may be fetched" if config.outputs_leave_site else "stay at the site")
        + f" (written under {config.outputs_dir()})"
    )
    lines.append(f"audit log: {config.audit_path(owned=False)}")
    if not config.datasets:
        lines.append("datasets: none (a bare agent refuses every study)")
    for name, dataset in sorted(config.datasets.items()):
        source = open_dataset(dataset, site=name)  # files or a query, as a run opens it
        held = source.columns
        offered = list(dataset.columns) if dataset.columns is not None else held
        absent = [c for c in offered if c not in held]
        if absent:
            raise PolicyError(
                f"{path}: dataset '{name}' lists column(s) not in its source: {', '.join(absent)}"
            )
        where = ", ".join(f.name for f in source.files) if dataset.query is None else "a query"
        lines.append(f"dataset {name}: {source.rows} rows in {where}; columns {', '.join(offered)}")
    return "\n".join(lines)


_APPROVED = re.compile(r"^approved_code\s*=\s*\[[^\]]*\]", re.M)


def approve(file: Path, path: Path | None = None) -> str:
    """Record ``file``'s sha256 as approved custom code and keep a copy beside the configuration
    (the agent runs that copy, never the text a coordinator sends). Returns the hash line."""
    path = path or config_file()
    try:
        source = file.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read {file}: {exc.strerror}") from None
    config = load_config(path)  # refuse to edit a configuration that does not load
    code = source_hash(source)
    store = approved_store(path)
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    copy = store / f"{code.partition(':')[2]}.py"
    shutil.copyfile(file, copy)
    copy.chmod(0o400)
    if code not in config.approved_code:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        codes = sorted(config.approved_code | {code})
        line = "approved_code = [" + ", ".join(json.dumps(c) for c in codes) + "]"
        text = _APPROVED.sub(line, text, count=1) if _APPROVED.search(text) else line + "\n" + text
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, text.encode("utf-8"), sync=False)
        load_config(path)  # the edit must leave a valid configuration
    return f"approved {file.name}: {code} (copy at {copy})"


def show_log(path: Path | None = None, *, check_chain: bool = False) -> str:
    """Return the audit log's lines in a readable form, or (``check_chain``) verify its chain."""
    config = load_config(path or config_file())
    log = config.audit_path(owned=False)
    assert log is not None
    if not log.exists():
        return f"{log}: no requests logged yet"
    if check_chain:
        result = verify(log)
        if not result.ok:
            raise PolicyError(f"{log}: line {result.broken_at} {result.reason}")
        return f"{log}: {result.lines} line(s), chain intact"
    out = []
    for number, raw in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            out.append(
                f"line {number}: not a log entry (fedflow site log --verify checks the chain)"
            )
            continue
        what = entry.get("app") or entry.get("dataset") or ""
        why = f" — {entry['reason']}" if entry.get("reason") else ""
        out.append(
            f"{entry.get('time')} {entry.get('study') or '-'} {entry.get('event')} {what} "
            f"{entry.get('outcome')}{why}"
        )
    return "\n".join(out)
