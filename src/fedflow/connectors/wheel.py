"""The coordinator's side of provisioning: a wheel of the running fedflow and a wheelhouse.

The site's node agent runs from a venv holding exactly the coordinator's fedflow build. The
coordinator builds, once per build and site platform, a *wheelhouse* in its cache
(``$XDG_CACHE_HOME/fedflow/wheels``): a wheel of the running fedflow (made from the installed
files, so editable installs work too; the FeatureCloud test fakes are left out) and its
dependency wheels at the coordinator's own versions (repacked from this installation when the
site's platform is this one, else fetched with ``pip download``).

Pure parts (file selection, the wheel's entries, pip's platform options, the constraints text)
are separate functions, tested without a site (``tests/connectors/test_provisioning.py``).
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fedflow
from fedflow._version import __version__
from fedflow.errors import SiteError

__all__ = [
    "DIST_NAME",
    "EXCLUDED_FROM_WHEEL",
    "SitePlatform",
    "build_id",
    "build_wheel",
    "cache_dir",
    "constraints_text",
    "dependency_closure",
    "local_platform",
    "package_files",
    "pinned",
    "pip_platform_args",
    "repack_wheel",
    "wheel_entries",
    "wheelhouse",
]

DIST_NAME = "fedflow-studies"
WHEEL_DATE = (2020, 1, 1, 0, 0, 0)
"""Every file in a wheel built here has this date, so the same files give the same wheel."""
EXCLUDED_FROM_WHEEL = ("featurecloud/fake",)
"""Folders of the ``fedflow`` package (relative, POSIX) that never go to a site: test fakes."""


@dataclass(frozen=True)
class SitePlatform:
    """The interpreter and platform a site's wheels are chosen for."""

    python_version: tuple[int, ...]
    machine: str
    libc: str = ""

    @property
    def tag(self) -> str:
        """Return the tag wheelhouses are keyed by (``cp311-x86_64-glibc2.36``)."""
        major, minor = self.python_version[:2]
        return f"cp{major}{minor}-{self.machine}-{self.libc or 'unknown'}"


def local_platform() -> SitePlatform:
    """Return the coordinator's own platform."""
    return SitePlatform(
        tuple(sys.version_info[:3]), platform.machine(), "".join(platform.libc_ver())
    )


# -- the fedflow wheel -------------------------------------------------------------------------


def _shipped(rel: Path) -> bool:
    """Return True when the package file at ``rel`` (relative to the package) goes to sites."""
    if "__pycache__" in rel.parts or rel.suffix in (".pyc", ".pyo"):
        return False
    posix = rel.as_posix()
    return not any(posix == ex or posix.startswith(ex + "/") for ex in EXCLUDED_FROM_WHEEL)


def package_files(root: Path | None = None) -> list[Path]:
    """Return the files of the fedflow package under ``root`` that a site's wheel holds, sorted.

    Byte-code and the FeatureCloud test fakes (``EXCLUDED_FROM_WHEEL``) are left out.
    """
    root = Path(fedflow.__file__).parent if root is None else root
    return sorted(p for p in root.rglob("*") if p.is_file() and _shipped(p.relative_to(root)))


@functools.lru_cache(maxsize=1)
def build_id() -> str:
    """Return ``<version>+<digest>`` identifying the running fedflow's shipped files."""
    root = Path(fedflow.__file__).parent
    digest = hashlib.sha256()
    for path in package_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_entries(
    root: Path, version: str, metadata: str | None, entry_points: str | None
) -> tuple[str, list[tuple[str, bytes]]]:
    """Return the wheel's file name and its entries (name, content), RECORD included last."""
    stem = f"{DIST_NAME.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    entries = [
        (f"fedflow/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in package_files(root)
    ]
    meta = metadata or f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
    entries.append((f"{info}/METADATA", meta.encode()))
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: fedflow\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entries.append((f"{info}/WHEEL", wheel_meta.encode()))
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = [_record_line(name, data) for name, data in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    return f"{stem}-py3-none-any.whl", entries


def build_wheel(dest: Path, root: Path | None = None) -> Path:
    """Write a wheel of the running fedflow (from its installed files) into ``dest``; return it."""
    dist = importlib.metadata.distribution(DIST_NAME)
    root = Path(fedflow.__file__).parent if root is None else root
    name, entries = wheel_entries(
        root, dist.version, dist.read_text("METADATA"), dist.read_text("entry_points.txt")
    )
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, data in entries:
            zf.writestr(zipfile.ZipInfo(entry, date_time=WHEEL_DATE), data)
    partial.replace(target)
    return target


# -- dependency wheels -------------------------------------------------------------------------


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


def dependency_closure(
    extras: Sequence[str] = (), packages: Sequence[str] = ()
) -> list[importlib.metadata.Distribution]:
    """Return the installed distributions fedflow (with ``extras``) and ``packages`` (more
    distribution names, e.g. ``scikit-learn``) need here, fedflow excluded.

    Raises SiteError naming a requirement that is not installed on the coordinator.
    """
    requirement_cls, canonical = _requirement_tools()
    found: dict[str, tuple[importlib.metadata.Distribution, set[str]]] = {}
    todo: list[tuple[str, set[str]]] = [(DIST_NAME, set(extras))]
    todo += [(name, set()) for name in packages]
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


def repacked_wheel_name(name: str, version: str, wheel_text: str) -> str | None:
    """Return the file name of a wheel of ``name`` ``version`` whose WHEEL file is ``wheel_text``.

    The tags of every ``Tag:`` line are merged (``cp311.cp312-abi3-manylinux…``); None when the
    WHEEL file names no tag.
    """
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")
    ]
    if not tags:
        return None
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    stem = "_".join(filter(None, re.split(r"[-_.]+", name)))
    return f"{stem}-{version}-{'-'.join('.'.join(p) for p in parts)}.whl"


def repack_wheel(dist: importlib.metadata.Distribution, dest: Path) -> Path | None:
    """Write a wheel of an installed distribution from its RECORD into ``dest``; return it.

    Returns None when the installation cannot be repacked (no RECORD or WHEEL file, an
    editable or direct-URL install).
    """
    wheel_text = dist.read_text("WHEEL")
    if not dist.files or not wheel_text or dist.read_text("direct_url.json"):
        return None
    name = repacked_wheel_name(dist.metadata["Name"], dist.version, wheel_text)
    if name is None:
        return None
    target = dest / name
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
            info = zipfile.ZipInfo(rel, date_time=WHEEL_DATE)
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=1)
            record.append(_record_line(rel, data))
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(
            zipfile.ZipInfo(f"{info_dir}/RECORD", date_time=WHEEL_DATE), "\n".join(record) + "\n"
        )
    partial.replace(target)
    return target


def _reuse_wheel(
    dist: importlib.metadata.Distribution, root: Path, tag: str, dest: Path
) -> Path | None:
    """Link into ``dest`` the wheel of ``dist`` repacked earlier for another set of extras (the
    same installation gives the same bytes: names, dates and order are fixed); None if none."""
    wheel_text = dist.read_text("WHEEL")
    name = wheel_text and repacked_wheel_name(dist.metadata["Name"], dist.version, wheel_text)
    if not name:
        return None
    for folder in root.glob(f"deps-{tag}-*"):
        if folder != dest and (folder / "complete").exists() and (folder / name).is_file():
            target = dest / name
            if not target.exists():
                try:
                    os.link(folder / name, target)
                except OSError:
                    shutil.copyfile(folder / name, target)
            return target
    return None


def constraints_text(installed: Iterable[tuple[str, str, bool]]) -> str:
    """Return a pip constraints file pinning each ``(name, version, from_index)`` distribution.

    fedflow itself, pip's own tools and distributions not installed from an index (editable or
    local installs) are left out.
    """
    lines = {
        f"{name}=={version}"
        for name, version, from_index in installed
        if name and from_index and name.lower() not in (DIST_NAME, "pip", "setuptools", "wheel")
    }
    return "\n".join(sorted(lines)) + "\n"


def _constraints() -> str:
    """Return a pip constraints file pinning every installed distribution to its version here."""
    return constraints_text(
        (d.metadata["Name"], d.version, not d.read_text("direct_url.json"))
        for d in importlib.metadata.distributions()
    )


def pip_platform_args(site: SitePlatform, here: SitePlatform | None = None) -> list[str]:
    """Return ``pip download`` options selecting wheels for ``site`` when it differs from ``here``
    (default: this machine); none when they are the same."""
    if site.tag == (here or local_platform()).tag:
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


# -- the wheelhouse ----------------------------------------------------------------------------


def pinned(dist: importlib.metadata.Distribution) -> str:
    """Return ``name==version`` of a distribution, the name canonical (``scikit-learn==1.9.1``)."""
    return f"{_requirement_tools()[1](dist.metadata['Name'])}=={dist.version}"


def wheelhouse(
    site: SitePlatform,
    extras: Sequence[str] = (),
    *,
    packages: Sequence[str] = (),
    present: Iterable[str] = (),
    full: bool = True,
    log: IO[str] | None = None,
) -> Path:
    """Return a folder with the fedflow wheel (and, if ``full``, all dependency wheels) for ``site``.

    ``packages`` are more distributions the site needs (at this installation's versions);
    ``present`` (``name==version``, names canonical) are those the site's Python already has at
    exactly this installation's version: no wheel is made or sent for them. Dependency wheels
    are gathered once per site platform and fedflow requirements into the coordinator's cache.
    Raises SiteError when pip cannot get a wheel.
    """
    root = cache_dir() / "wheels"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _wheelhouse(root, site, extras, packages, frozenset(present), full=full, log=log)


def _wheelhouse(
    root: Path,
    site: SitePlatform,
    extras: Sequence[str],
    packages: Sequence[str],
    present: frozenset[str],
    *,
    full: bool,
    log: IO[str] | None,
) -> Path:
    closure = dependency_closure(extras, packages)
    requires = "\n".join(f"{d.metadata['Name']}=={d.version}" for d in closure)
    wanted = sorted({*extras, *(f"+{p}" for p in packages)})
    key = hashlib.sha256(f"{site.tag}\n{','.join(wanted)}\n{requires}".encode()).hexdigest()[:16]
    needed = [d for d in closure if pinned(d) not in present]
    skipped = sorted(pinned(d) for d in closure if pinned(d) in present)
    if skipped:  # the house (and the venv marker's deps key) differ with what the site has
        key = hashlib.sha256(f"{key}\n{','.join(skipped)}".encode()).hexdigest()[:16]
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
    local = site.tag == local_platform().tag
    if full and not (deps / "complete").exists() and local:
        deps.mkdir(parents=True, exist_ok=True)
        for dist in needed:
            if (
                _reuse_wheel(dist, root, site.tag, deps) is None
                and repack_wheel(dist, deps) is None
            ):
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
            "--dest", str(deps), "-c", str(constraints), *pip_platform_args(site), requirement,
            *packages,
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
                try:
                    os.link(src, link)  # torch's wheel alone is 200 MB
                except OSError:
                    shutil.copyfile(src, link)
        (house / "complete").write_text(ident)
    return house
