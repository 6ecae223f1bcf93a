"""Host key verification for SSH sites: known_hosts lookup, explicit trust, clear refusals.

Two files are read, in OpenSSH's ``known_hosts`` format:

* ``~/.ssh/known_hosts`` — the user's own file, shared with ``ssh``; fedflow only reads it;
* fedflow's file — ``$FEDFLOW_KNOWN_HOSTS``, else ``$XDG_CONFIG_HOME/fedflow/known_hosts``
  (default ``~/.config/fedflow/known_hosts``); ``fedflow trust STUDY`` and the study option
  ``trust_new_hosts = true`` append newly accepted keys here.

A key that matches an entry in either file is trusted. A host with no entry is *unknown*: the run
stops unless the study says ``trust_new_hosts = true``. A host whose entries all differ from the
key it presents has *changed* its key: that is always refused, whatever the options say.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from fedflow.errors import SiteError, StudyError

if TYPE_CHECKING:
    from fedflow.study.schema import Client, Study

__all__ = [
    "HostKeyPolicy",
    "TrustResult",
    "fedflow_known_hosts",
    "fingerprint",
    "host_label",
    "known_hosts_files",
    "trust_hosts",
]


def fedflow_known_hosts() -> Path:
    """Return fedflow's own known_hosts file (it may not exist yet)."""
    explicit = os.environ.get("FEDFLOW_KNOWN_HOSTS")
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "fedflow" / "known_hosts"


def known_hosts_files() -> list[Path]:
    """Return the known_hosts files consulted, in order (only those that exist)."""
    files = [Path.home() / ".ssh" / "known_hosts", fedflow_known_hosts()]
    return [f for f in files if f.is_file()]


def host_label(host: str, port: int) -> str:
    """Return how known_hosts names ``host`` at ``port`` (``[host]:port`` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    """Return the key's OpenSSH-style SHA256 fingerprint (``SHA256:…``)."""
    return key.get_fingerprint("sha256")


def _keys_for(host: str, addr: str | None, port: int) -> list[asyncssh.SSHKey]:
    """Return every key recorded for ``host`` (or ``addr``) at ``port`` in the files read."""
    found: list[asyncssh.SSHKey] = []
    for path in known_hosts_files():
        try:
            known = asyncssh.read_known_hosts(str(path))
        except (OSError, ValueError, asyncssh.KeyImportError) as exc:
            raise StudyError(f"{path}: cannot read known_hosts file ({exc})") from None
        trusted, *_ = known.match(host, addr or "", port if port != 22 else None)
        found.extend(trusted)
    return found


def _record(host: str, port: int, key: asyncssh.SSHKey) -> Path:
    """Append ``key`` for ``host`` to fedflow's known_hosts file (mode 600); return the file."""
    path = fedflow_known_hosts()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{host_label(host, port)} {key.export_public_key('openssh').decode().strip()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line)
    return path


@dataclass
class HostKeyPolicy:
    """Decide, during the SSH handshake, whether to trust a host key; remember why not.

    ``trust_new``: accept and record keys of hosts never seen before. Changed keys are refused.
    After a refusal, ``refusal(site)`` returns the SiteError to raise.
    """

    host: str
    port: int
    trust_new: bool = False
    presented: asyncssh.SSHKey | None = None
    status: str = ""

    def known_hosts(
        self, host: str, addr: str, port: int | None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """asyncssh callback: return (trusted host keys, CA keys, revoked keys) for the host."""
        return _keys_for(self.host, addr, self.port), [], []

    def validate(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Called for a key that is not recorded: accept it only if the host is new and allowed."""
        self.presented = key
        if _keys_for(self.host, addr, self.port):
            self.status = "changed"
            return False
        if self.trust_new:
            _record(self.host, self.port, key)
            self.status = "added"
            return True
        self.status = "unknown"
        return False

    def refusal(self, site: str) -> SiteError:
        """Return the error explaining why the host key was refused."""
        label = host_label(self.host, self.port)
        shown = fingerprint(self.presented) if self.presented else "no key"
        if self.status == "changed":
            return SiteError(
                f"host key of {label} has CHANGED (now {shown}); refusing to connect. If the change "
                f"is expected, remove the old entry from {', '.join(map(str, known_hosts_files()))}",
                site=site,
            )
        return SiteError(
            f"host key of {label} is unknown ({shown}); check the fingerprint, then run "
            f"`fedflow trust STUDY` or set trust_new_hosts = true",
            site=site,
        )

    def client_factory(self) -> type[asyncssh.SSHClient]:
        """Return an SSHClient class whose unknown-key hook is this policy's ``validate``."""
        policy = self

        class _Client(asyncssh.SSHClient):
            def validate_host_public_key(
                self, host: str, addr: str, port: int, key: asyncssh.SSHKey
            ) -> bool:
                return policy.validate(host, addr, port, key)

        return _Client


@dataclass(frozen=True)
class TrustResult:
    """One line of ``fedflow trust``: the site, ``host[:port]``, the key's fingerprint, the status.

    ``status`` is ``known`` (already trusted), ``added`` (recorded now), ``changed`` (refused:
    differs from the recorded key) or ``unreachable: <why>``.
    """

    site: str
    host: str
    fingerprint: str
    status: str

    def __iter__(self):  # unpack as (site, host, fingerprint, status)
        return iter((self.site, self.host, self.fingerprint, self.status))


def resolve_target(client: Client) -> tuple[str, int]:
    """Return (hostname, port) for ``client`` after applying ``~/.ssh/config`` aliases."""
    assert client.hostname is not None
    host, port = client.hostname, client.port
    config_path = Path.home() / ".ssh" / "config"
    if config_path.is_file():
        try:
            options = asyncssh.SSHClientConnectionOptions(
                config=[str(config_path)], host=client.hostname, known_hosts=None
            )
        except (OSError, ValueError, asyncssh.Error) as exc:
            raise StudyError(f"{config_path}: cannot read the SSH config ({exc})") from None
        options_host = getattr(options, "host", None)
        if options_host:
            host = options_host
        if client.port == 22 and getattr(options, "port", None):
            port = int(options.port)  # type: ignore[attr-defined]
    return host, port


async def _trust_one(client: Client, timeout: float) -> TrustResult:
    host, port = resolve_target(client)
    label = host_label(host, port)
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, config=None), timeout)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return TrustResult(client.name, label, "", f"unreachable: {exc or type(exc).__name__}")
    if key is None:
        return TrustResult(client.name, label, "", "unreachable: the server showed no host key")
    recorded = _keys_for(host, None, port)
    if key in recorded:
        status = "known"
    elif recorded:
        status = "changed"
    else:
        _record(host, port, key)
        status = "added"
    return TrustResult(client.name, label, fingerprint(key), status)


def trust_hosts(study: Study, *, timeout: float = 15.0) -> list[TrustResult]:
    """Fetch every remote site's host key and record the new ones in fedflow's known_hosts.

    Returns one TrustResult per remote site (iterable as ``(site, host, fingerprint, status)``).
    Changed keys are reported and never recorded. Raises StudyError for an unreadable
    known_hosts or SSH config file.
    """
    remote = [c for c in study.clients if not c.is_local]

    async def _all() -> list[TrustResult]:
        return list(await asyncio.gather(*(_trust_one(c, timeout) for c in remote)))

    return asyncio.run(_all()) if remote else []
