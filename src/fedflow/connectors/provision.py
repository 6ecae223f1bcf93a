"""Prepare a remote site: working folder, the user's provision script, Python checks, the venv.

The site's node agent runs from ``<workdir>/venv`` holding exactly the coordinator's fedflow
build. The coordinator builds, once per build and site platform, a *wheelhouse* in its cache
(``$XDG_CACHE_HOME/fedflow/wheels``): a wheel of the running fedflow (made from the installed
files, so editable installs work too) and its dependency wheels at the coordinator's own
versions (``pip download``). With ``install = "wheels"`` (the default) all of them are uploaded
and installed with ``pip --no-index`` (the site needs no internet); with ``install = "index"``
only the fedflow wheel is uploaded and the site's pip fetches the pinned dependencies from its
package index. A marker file (``venv/fedflow-ready.json``) records the build; a site whose
marker matches is reused after one probe command.

Everything fedflow writes on a site is created under umask 077 (readable only by that user).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import asyncssh

import fedflow
from fedflow._version import __version__
from fedflow.errors import SiteError, StudyError

__all__ = [
    "DIST_NAME",
    "Progress",
    "Remote",
    "SiteInfo",
    "build_id",
    "build_wheel",
    "prepare_site",
    "wheelhouse",
]

DIST_NAME = "fedflow-studies"
MIN_PYTHON = (3, 11)
MARKER = "fedflow-ready.json"
CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]
"""Transfer progress callback: (file name, bytes done, bytes total)."""


# -- the coordinator side: build id, wheel, wheelhouse -----------------------------------------


def _package_files() -> list[Path]:
    root = Path(fedflow.__file__).parent
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


@functools.lru_cache(maxsize=1)
def build_id() -> str:
    """Return ``<version>+<digest>`` identifying the running fedflow's exact files."""
    root = Path(fedflow.__file__).parent
    digest = hashlib.sha256()
    for path in _package_files():
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(dest: Path) -> Path:
    """Write a wheel of the running fedflow (from its installed files) into ``dest``; return it."""
    dist = importlib.metadata.distribution(DIST_NAME)
    version = dist.version
    info = f"{DIST_NAME.replace('-', '_')}-{version}.dist-info"
    target = dest / f"{DIST_NAME.replace('-', '_')}-{version}-py3-none-any.whl"
    root = Path(fedflow.__file__).parent
    entries: list[tuple[str, bytes]] = [
        (f"fedflow/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in _package_files()
    ]
    metadata = (
        dist.read_text("METADATA")
        or f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
    )
    entries.append((f"{info}/METADATA", metadata.encode()))
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: fedflow\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entries.append((f"{info}/WHEEL", wheel_meta.encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = [_record_line(name, data) for name, data in entries] + [f"{info}/RECORD,,"]
    dest.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
        zf.writestr(
            zipfile.ZipInfo(f"{info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)),
            "\n".join(record) + "\n",
        )
    partial.replace(target)
    return target


def cache_dir() -> Path:
    """Return fedflow's cache folder on the coordinator (``$XDG_CACHE_HOME/fedflow``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedflow"


def _requirement_tools() -> tuple[Any, Any]:
    try:
        from packaging import requirements, utils
    except ImportError:  # pip always vendors packaging
        from pip._vendor.packaging import requirements, utils  # type: ignore[no-redef]
    return requirements.Requirement, utils.canonicalize_name


def dependency_closure(extras: Sequence[str] = ()) -> list[importlib.metadata.Distribution]:
    """Return the installed distributions fedflow (with ``extras``) needs here, fedflow excluded.

    Raises SiteError naming a requirement that is not installed on the coordinator.
    """
    requirement_cls, canonical = _requirement_tools()
    found: dict[str, tuple[importlib.metadata.Distribution, set[str]]] = {}
    todo: list[tuple[str, set[str]]] = [(DIST_NAME, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonical(name)
        if key in found and wanted <= found[key][1]:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise SiteError(f"{name}, needed at the sites, is not installed here") from None
        merged = wanted | (found[key][1] if key in found else set())
        found[key] = (dist, merged)
        for text in dist.requires or []:
            req = requirement_cls(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in (merged or {""})
            ):
                continue
            todo.append((req.name, set(req.extras)))
    found.pop(canonical(DIST_NAME), None)
    return sorted((d for d, _ in found.values()), key=lambda d: d.metadata["Name"].lower())


_SKIP_IN_REPACK = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def repack_wheel(dist: importlib.metadata.Distribution, dest: Path) -> Path | None:
    """Write a wheel of an installed distribution from its RECORD into ``dest``; return it.

    Returns None when the installation cannot be repacked (no RECORD or WHEEL file, an
    editable or direct-URL install).
    """
    wheel_text = dist.read_text("WHEEL")
    if not dist.files or not wheel_text or dist.read_text("direct_url.json"):
        return None
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")
    ]
    if not tags:
        return None
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = "_".join(filter(None, re.split(r"[-_.]+", dist.metadata["Name"])))
    target = dest / f"{name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    info_dir = next(
        (str(f).split("/")[0] for f in dist.files if str(f).split("/")[0].endswith(".dist-info")),
        None,
    )
    if info_dir is None:
        return None
    record: list[str] = []
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for entry in dist.files:
            rel = str(entry)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith((".pyc", ".pyo")):
                continue
            if rel.startswith(info_dir + "/") and rel.split("/", 1)[1] in _SKIP_IN_REPACK:
                continue
            path = Path(str(dist.locate_file(entry)))
            if not path.is_file():
                continue
            data = path.read_bytes()
            info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=1)
            record.append(_record_line(rel, data))
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(
            zipfile.ZipInfo(f"{info_dir}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)),
            "\n".join(record) + "\n",
        )
    partial.replace(target)
    return target


def _constraints() -> str:
    """Return a pip constraints file pinning every installed distribution to its version here."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in (DIST_NAME, "pip", "setuptools", "wheel"):
            continue
        if dist.read_text("direct_url.json"):  # editable or local installs are not on an index
            continue
        lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines)) + "\n"


@dataclass(frozen=True)
class SiteInfo:
    """What the probe found at a site: its home, working folder, Python and venv state."""

    home: str
    workdir: str
    python: str | None = None
    python_version: tuple[int, ...] = ()
    machine: str = ""
    libc: str = ""
    has_venv: bool = False
    marker: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """Return the platform tag the site's wheels are chosen for (``cp311-x86_64-glibc2.36``)."""
        major, minor = self.python_version[:2]
        return f"cp{major}{minor}-{self.machine}-{self.libc or 'unknown'}"

    @property
    def venv_python(self) -> str:
        return f"{self.workdir}/venv/bin/python"


def _local_tag() -> str:
    libc = "".join(platform.libc_ver())
    return f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}-{libc or 'unknown'}"


def _platform_args(site: SiteInfo) -> list[str]:
    """Return pip download options selecting wheels for ``site`` when it differs from here."""
    if site.tag == _local_tag():
        return []
    major, minor = site.python_version[:2]
    args = ["--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp"]
    args += ["--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    arch = site.machine
    glibc = site.libc.removeprefix("glibc") if site.libc.startswith("glibc") else ""
    if glibc:
        top = int(glibc.split(".")[1]) if "." in glibc else 17
        for minor_glibc in range(top, 16, -1):
            args += ["--platform", f"manylinux_2_{minor_glibc}_{arch}"]
        args += ["--platform", f"manylinux2014_{arch}"]
    args += ["--platform", f"linux_{arch}", "--platform", "any"]
    return args


def wheelhouse(
    site: SiteInfo, extras: Sequence[str] = (), *, full: bool = True, log: IO[str] | None = None
) -> Path:
    """Return a folder with the fedflow wheel (and, if ``full``, all dependency wheels) for ``site``.

    Dependency wheels are downloaded once per site platform and fedflow requirements into the
    coordinator's cache. Raises SiteError when pip cannot get a wheel.
    """
    root = cache_dir() / "wheels"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _wheelhouse(root, site, extras, full=full, log=log)


def _wheelhouse(
    root: Path, site: SiteInfo, extras: Sequence[str], *, full: bool, log: IO[str] | None
) -> Path:
    requires = "\n".join(f"{d.metadata['Name']}=={d.version}" for d in dependency_closure(extras))
    key = hashlib.sha256(
        f"{site.tag}\n{','.join(sorted(extras))}\n{requires}".encode()
    ).hexdigest()[:16]
    root = cache_dir() / "wheels"
    deps = root / f"deps-{site.tag}-{key}"
    ident = build_id()
    own = root / f"fedflow-{ident}"
    if not (own / "complete").exists():
        own.mkdir(parents=True, exist_ok=True)
        for stale in own.glob("*.whl"):
            stale.unlink()
        build_wheel(own)
        (own / "complete").write_text(ident)
    constraints = root / f"constraints-{key}.txt"
    if not constraints.exists():
        root.mkdir(parents=True, exist_ok=True)
        constraints.write_text(_constraints())
    if full and not (deps / "complete").exists() and site.tag == _local_tag():
        deps.mkdir(parents=True, exist_ok=True)
        for dist in dependency_closure(extras):
            if repack_wheel(dist, deps) is None:
                break
        else:
            (deps / "complete").write_text("\n".join(sorted(p.name for p in deps.glob("*.whl"))))
            if log is not None:
                log.write(
                    f"[fedflow] dependency wheels repacked from this installation into {deps}\n"
                )
    if full and not (deps / "complete").exists():
        deps.mkdir(parents=True, exist_ok=True)
        wheel = next(own.glob("*.whl"))
        requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--dest", str(deps), "-c", str(constraints), *_platform_args(site), requirement,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if log is not None:
            log.write(f"[fedflow] {' '.join(command)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise SiteError(
                f"cannot gather dependency wheels for a {site.tag} site with pip download: {tail[0]}",
                site=None,
            )
        for own_copy in deps.glob(f"{DIST_NAME.replace('-', '_')}-*.whl"):
            own_copy.unlink()
        (deps / "complete").write_text("\n".join(sorted(p.name for p in deps.glob("*.whl"))))
    house = root / f"house-{ident}-{site.tag}-{key}-{'full' if full else 'own'}"
    if not (house / "complete").exists():
        house.mkdir(parents=True, exist_ok=True)
        for src in [*own.glob("*.whl"), *(deps.glob("*.whl") if full else []), constraints]:
            link = house / src.name
            if not link.exists():
                shutil.copyfile(src, link)
        (house / "complete").write_text(ident)
    return house


# -- the site side ---------------------------------------------------------------------------


_PY_SHA256 = (
    "import hashlib, os, sys\n"
    "for p in sys.argv[1:]:\n"
    " if os.path.isfile(p):\n"
    "  h = hashlib.sha256()\n"
    "  with open(p, 'rb') as f:\n"
    "   for b in iter(lambda: f.read(1 << 20), b''): h.update(b)\n"
    "  print(h.hexdigest() + '  ' + p)"
)
"""Fallback for sites without coreutils' sha256sum; prints lines as sha256sum does."""


class Remote:
    """Commands and verified file transfers over one asyncssh connection, for one site."""

    def __init__(
        self, conn: asyncssh.SSHClientConnection, site: str, log: IO[str] | None = None
    ) -> None:
        self.conn = conn
        self.site = site
        self.log = log
        self._sftp: asyncssh.SFTPClient | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    def note(self, text: str) -> None:
        """Append a line to the site's local log."""
        if self.log is not None:
            self.log.write(f"[fedflow] {text}\n")
            self.log.flush()

    async def run(
        self, script: str, *, check: bool = True, what: str = "command", stdin: str | None = None
    ) -> asyncssh.SSHCompletedProcess:
        """Run ``script`` with the site user's shell under umask 077; return the completed process.

        Raises SiteError naming ``what`` when it fails (exit status != 0 and ``check``).
        """
        try:
            done = await self.conn.run(f"umask 077; {script}", check=False, input=stdin)
        except (asyncssh.Error, OSError) as exc:
            raise SiteError(f"connection lost during {what}: {exc}", site=self.site) from exc
        out = str(done.stdout or "")
        err = str(done.stderr or "")
        if (
            self.log is not None
            and (out.strip() or err.strip())
            and what not in ("probe", "checksum")
        ):
            self.log.write(f"[fedflow] {what}:\n{out}{err}")
            self.log.flush()
        if check and done.exit_status != 0:
            lines = [ln for ln in (err or out).strip().splitlines() if ln.strip()]
            tail = lines[-1] if lines else f"exit status {done.exit_status}"
            raise SiteError(f"{what} failed on the site: {tail}", site=self.site)
        return done

    async def sftp(self) -> asyncssh.SFTPClient:
        """Return the connection's SFTP client (opened on first use)."""
        if self._sftp is None:
            try:
                self._sftp = await self.conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                raise SiteError(f"cannot open an SFTP session: {exc}", site=self.site) from exc
        return self._sftp

    async def remote_sha256(self, paths: Sequence[str]) -> dict[str, str]:
        """Return {path: sha256} for the existing files among ``paths`` at the site."""
        if not paths:
            return {}
        quoted = " ".join(shlex.quote(p) for p in paths)
        script = (
            f"if command -v sha256sum >/dev/null 2>&1; then sha256sum -- {quoted} 2>/dev/null; "
            f"else python3 -c {shlex.quote(_PY_SHA256)} {quoted}; fi"
        )
        done = await self.run(script, check=False, what="checksum")
        found = {}
        for line in str(done.stdout or "").splitlines():
            digest, _, name = line.partition("  ")
            if name:
                found[name] = digest
        return found

    async def upload(
        self,
        local: Path,
        remote: str,
        *,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Copy ``local`` to ``remote`` unless an identical file is there; return True if copied.

        An interrupted earlier copy (``remote.part``) is resumed; the result is verified by
        SHA-256 and renamed into place. Raises SiteError on failure or checksum mismatch.
        """
        digest = sha256 or _sha256(local)
        size = local.stat().st_size
        existing = await self.remote_sha256([remote])
        if existing.get(remote) == digest:
            if progress:
                progress(local.name, size, size)
            return False
        sftp = await self.sftp()
        partial = f"{remote}.part"
        try:
            await sftp.makedirs(str(PurePosixPath(remote).parent), exist_ok=True)
            offset = 0
            if await sftp.exists(partial):
                offset = (await sftp.stat(partial)).size or 0
                if offset > size:
                    offset = 0
            if offset:
                self.note(f"resuming upload of {local.name} at byte {offset}")
            async with sftp.open(
                partial, "ab" if offset else "wb", attrs=asyncssh.SFTPAttrs(permissions=0o600)
            ) as dst:
                with local.open("rb") as src:
                    src.seek(offset)
                    done = offset
                    while chunk := src.read(CHUNK):
                        await dst.write(chunk)
                        done += len(chunk)
                        self.bytes_up += len(chunk)
                        if progress:
                            progress(local.name, done, size)
            check = await self.remote_sha256([partial])
            if check.get(partial) != digest:
                await sftp.remove(partial)
                raise SiteError(
                    f"checksum mismatch after uploading {local.name} (the partial copy was removed; run again)",
                    site=self.site,
                )
            await sftp.posix_rename(partial, remote)
        except (asyncssh.Error, OSError) as exc:
            raise SiteError(f"uploading {local.name} failed: {exc}", site=self.site) from exc
        return True

    async def download(self, remote: str, local: Path, *, progress: Progress | None = None) -> None:
        """Copy ``remote`` at the site to ``local`` and verify its SHA-256; raise SiteError."""
        sftp = await self.sftp()
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".part")
        try:
            size = (await sftp.stat(remote)).size or 0
            async with sftp.open(remote, "rb", encoding=None) as src:
                with partial.open("wb") as dst:
                    done = 0
                    while chunk := cast(bytes, await src.read(CHUNK)):
                        dst.write(chunk)
                        done += len(chunk)
                        self.bytes_down += len(chunk)
                        if progress:
                            progress(local.name, done, size)
        except (asyncssh.Error, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise SiteError(f"fetching {remote} failed: {exc}", site=self.site) from exc
        expected = (await self.remote_sha256([remote])).get(remote)
        if expected and expected != _sha256(partial):
            partial.unlink(missing_ok=True)
            raise SiteError(f"checksum mismatch after fetching {remote}", site=self.site)
        partial.replace(local)

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def workdir_expr(workdir: str | None, study_name: str) -> str:
    """Return a shell expression for the site's working folder (``~`` becomes ``$HOME``)."""
    path = workdir or f"~/.fedflow/{study_name}"
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if path.startswith("/"):
        return shlex.quote(path)
    return '"$HOME"/' + shlex.quote(path)


_PY_PROBE = (
    "import sys, platform, json; "
    "ok = True\n"
    "try:\n import venv, ensurepip\nexcept ImportError:\n ok = False\n"
    "print(json.dumps({'version': list(sys.version_info[:3]), 'machine': platform.machine(), "
    "'libc': ''.join(platform.libc_ver()), 'venv': ok}))"
)


async def probe(remote: Remote, workdir: str, python: str, *, ask_python: bool = False) -> SiteInfo:
    """Return what the site has (home, working folder, Python, venv marker) in one command.

    Python itself is asked only with ``ask_python`` or when there is no prepared venv (whose
    marker holds the version): a reused site costs one quick shell command.
    """
    marker_file = f'"$W/venv/{MARKER}"'
    have_venv = f'{{ [ -f {marker_file} ] && [ -x "$W/venv/bin/python" ]; }}'
    ask = (
        f"P=$(command -v {shlex.quote(python)} 2>/dev/null) && "
        f'printf "python=%s\\n" "$P" && '
        f'printf "py=%s\\n" "$("$P" -c {shlex.quote(_PY_PROBE)} 2>/dev/null)"'
    )
    script = (
        f'W={workdir}; printf "home=%s\\nworkdir=%s\\n" "$HOME" "$W"; '
        f'if {have_venv}; then printf "marker=%s\\n" "$(cat {marker_file})"; fi; '
        f"if {'true' if ask_python else f'! {have_venv}'}; then {ask}; fi; true"
    )
    done = await remote.run(script, what="probe")
    fields: dict[str, str] = {}
    for line in str(done.stdout or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("home", "workdir", "python", "py", "marker"):
            fields[key] = value
    if "workdir" not in fields:
        raise SiteError(
            f"the site's shell gave no answer to the probe: {done.stderr!s}", site=remote.site
        )
    py: dict[str, Any] = {}
    marker: dict[str, Any] = {}
    try:
        py = json.loads(fields["py"]) if fields.get("py") else {}
        marker = json.loads(fields["marker"]) if fields.get("marker") else {}
    except json.JSONDecodeError:
        marker = {}
    return SiteInfo(
        home=fields.get("home", ""),
        workdir=fields["workdir"],
        python=fields.get("python") if py else None,
        python_version=tuple(py.get("version") or marker.get("python") or ()),
        machine=py.get("machine", ""),
        libc=py.get("libc", ""),
        has_venv=bool(py.get("venv")),
        marker=marker,
    )


def _check_python(info: SiteInfo, python: str, site: str) -> None:
    if info.python is None:
        raise SiteError(
            f"no usable Python at the site ('{python}' not found on the remote PATH); install "
            f'Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} there or set python = "/path/to/python3" for this client',
            site=site,
        )
    if info.python_version[:2] < MIN_PYTHON:
        shown = ".".join(map(str, info.python_version))
        raise SiteError(
            f"{info.python} is Python {shown}; fedflow needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} "
            f'(set python = "/path/to/python3.11" for this client)',
            site=site,
        )
    if not info.has_venv:
        raise SiteError(
            f"{info.python} lacks the venv module (on Debian/Ubuntu: apt install python3-venv)",
            site=site,
        )


async def run_provision_script(remote: Remote, script: Path, workdir: str) -> None:
    """Upload the study's provision script and run it in the working folder; raise SiteError."""
    if not script.is_file():
        raise StudyError(f"provision_script: no such file {script}")
    target = f"{workdir}/provision-{script.name}"
    await remote.run(f"mkdir -p {shlex.quote(workdir)}", what="creating the working folder")
    await remote.upload(script, target)
    remote.note(f"running provision script {script.name}")
    done = await remote.run(
        f"cd {shlex.quote(workdir)} && chmod 700 {shlex.quote(target)} && {shlex.quote(target)}",
        check=False,
        what=f"provision script {script.name}",
    )
    if done.exit_status != 0:
        lines = [ln for ln in str(done.stderr or done.stdout or "").splitlines() if ln.strip()]
        tail = f": {lines[-1]}" if lines else ""
        raise SiteError(
            f"provision script {script.name} failed (exit status {done.exit_status}){tail}",
            site=remote.site,
        )


_CLEAN_PIP_ENV = (
    "env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "
    "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
)


async def install_venv(
    remote: Remote,
    info: SiteInfo,
    *,
    install: str,
    extras: Sequence[str],
    progress: Progress | None = None,
) -> None:
    """Create or update ``<workdir>/venv`` with this fedflow build; write the marker on success."""
    ident = build_id()
    full = install != "index"
    loop = asyncio.get_running_loop()
    try:
        house = await loop.run_in_executor(
            None, lambda: wheelhouse(info, extras, full=full, log=remote.log)
        )
    except SiteError as exc:
        raise SiteError(exc.message, site=remote.site) from exc
    deps_key = house.name.split("-")[-2] + ("-" + ",".join(sorted(extras)) if extras else "")
    w = shlex.quote(info.workdir)
    await remote.run(f"mkdir -p {w}/wheels && chmod 700 {w}", what="creating the working folder")
    sftp = await remote.sftp()
    try:
        present = {
            name: (await sftp.stat(f"{info.workdir}/wheels/{name}")).size
            for name in await sftp.listdir(f"{info.workdir}/wheels")
        }
    except (asyncssh.Error, OSError) as exc:
        raise SiteError(f"cannot list {info.workdir}/wheels: {exc}", site=remote.site) from exc
    wheels = sorted(p for p in house.iterdir() if p.suffix in (".whl", ".txt"))
    fedflow_wheel = next(p for p in wheels if p.name.startswith(DIST_NAME.replace("-", "_")))
    for path in wheels:
        if path == fedflow_wheel or present.get(path.name) != path.stat().st_size:
            await remote.upload(path, f"{info.workdir}/wheels/{path.name}", progress=progress)
    requirement = shlex.quote(
        f"{info.workdir}/wheels/{fedflow_wheel.name}" + (f"[{','.join(extras)}]" if extras else "")
    )
    constraints = next(p for p in wheels if p.suffix == ".txt").name
    pip = f"{w}/venv/bin/python -m pip install --quiet --no-cache-dir"
    source = (
        f"--no-index --find-links {w}/wheels"
        if full
        else f"--find-links {w}/wheels -c {w}/wheels/{shlex.quote(constraints)}"
    )
    env = _CLEAN_PIP_ENV if full else "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
    same_deps = info.marker.get("deps") == deps_key and info.marker.get("python") == list(
        info.python_version
    )
    if same_deps:
        remote.note(f"updating fedflow in the prepared venv to {ident}")
        script = f"{env} {pip} {source} --no-deps --force-reinstall {requirement}"
    else:
        remote.note(
            f"creating the venv in {info.workdir}/venv ({'offline wheels' if full else 'package index'})"
        )
        script = (
            f"rm -rf {w}/venv && {shlex.quote(str(info.python))} -m venv {w}/venv && "
            f"{env} {pip} {source} {requirement}"
        )
    await remote.run(script, what="installing fedflow into the site's venv")
    check = await remote.run(
        f"{w}/venv/bin/python -c 'import fedflow, fedflow.node.agent; print(fedflow.__version__)'",
        what="checking the site's fedflow",
    )
    if str(check.stdout).strip() != __version__:
        raise SiteError(
            f"the site's venv runs fedflow {str(check.stdout).strip()!r}, expected {__version__}",
            site=remote.site,
        )
    marker = json.dumps(
        {"build": ident, "deps": deps_key, "python": list(info.python_version), "install": install}
    )
    await remote.run(
        f"cat > {w}/venv/{MARKER}", stdin=marker + "\n", what="writing the venv marker"
    )


async def prepare_site(
    remote: Remote,
    *,
    workdir: str | None,
    study_name: str,
    python: str = "python3",
    provision_script: Path | None = None,
    install: str = "wheels",
    extras: Sequence[str] = (),
    progress: Progress | None = None,
) -> SiteInfo:
    """Make the site ready to run this fedflow build; return what was found (absolute paths).

    Order: probe; run the provision script (it may install Python); check Python and venv;
    create, update or reuse the venv. Raises SiteError naming the site and the cause.
    """
    expr = workdir_expr(workdir, study_name)
    info = await probe(remote, expr, python)
    if provision_script is not None:
        await run_provision_script(remote, provision_script, info.workdir)
        info = await probe(remote, expr, python)
    if info.marker.get("build") == build_id() and info.marker.get("install") == install:
        return info
    if info.marker:  # a venv of another build: ask Python about itself now
        info = await probe(remote, expr, python, ask_python=True)
    _check_python(info, python, remote.site)
    await install_venv(remote, info, install=install, extras=extras, progress=progress)
    return await probe(remote, expr, python)
