"""Prepare a remote site: working folder, the user's provision script, Python checks, the venv.

The site's node agent runs from ``<workdir>/venv`` holding exactly the coordinator's fedflow
build (``wheel.build_id``). With ``install = "wheels"`` (the default) the wheelhouse
(``wheel.wheelhouse``: fedflow and every dependency) is uploaded and installed with
``pip --no-index`` (the site needs no internet); with ``install = "index"`` only the fedflow
wheel is uploaded and the site's pip fetches the pinned dependencies from its package index. A
marker file (``venv/fedflow-ready.json``) records the build; a site whose marker matches is
reused after one probe command.

The shell scripts sent to a site, the parsing of its answers and the decisions taken on them are
pure functions here, tested without a site; ``probe``, ``install_venv`` and ``prepare_site`` only
run them through a ``Remote``.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from fedflow._version import __version__
from fedflow.connectors.remote import Progress, Remote
from fedflow.connectors.wheel import DIST_NAME, SitePlatform, build_id, wheelhouse
from fedflow.errors import SiteError, StudyError

__all__ = [
    "MARKER",
    "MIN_PYTHON",
    "SiteMachine",
    "check_python",
    "deps_key",
    "install_script",
    "is_current",
    "marker_text",
    "parse_probe",
    "prepare_site",
    "probe",
    "probe_script",
    "workdir_expr",
]

MIN_PYTHON = (3, 11)
MARKER = "fedflow-ready.json"


@dataclass(frozen=True)
class SiteMachine:
    """What the probe found on a remote site's machine: its home, working folder, Python and venv.

    (Not ``fedflow.apps.SiteInfo``, which describes a site's data to an app.)
    """

    home: str
    workdir: str
    python: str | None = None
    python_version: tuple[int, ...] = ()
    machine: str = ""
    libc: str = ""
    has_venv: bool = False
    marker: dict[str, Any] = field(default_factory=dict)

    @property
    def platform(self) -> SitePlatform:
        """Return the platform the site's wheels are chosen for."""
        return SitePlatform(self.python_version, self.machine, self.libc)

    @property
    def tag(self) -> str:
        """Return the platform tag (``cp311-x86_64-glibc2.36``)."""
        return self.platform.tag

    @property
    def venv_python(self) -> str:
        return f"{self.workdir}/venv/bin/python"


# -- pure: scripts, parsing, decisions ---------------------------------------------------------


def workdir_expr(workdir: str | None, study_name: str) -> str:
    """Return a shell expression for the site's working folder (``~`` becomes ``$HOME``).

    Default ``~/.fedflow/<study>``; a relative path is relative to the site user's home.
    """
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


def probe_script(workdir: str, python: str, *, ask_python: bool = False) -> str:
    """Return the one shell command that reports ``home=``, ``workdir=``, ``marker=`` (when a
    prepared venv exists) and, with ``ask_python`` or without a prepared venv, ``python=`` and
    ``py=`` (a JSON line from Python itself). ``workdir`` is a shell expression."""
    marker_file = f'"$W/venv/{MARKER}"'
    have_venv = f'{{ [ -f {marker_file} ] && [ -x "$W/venv/bin/python" ]; }}'
    ask = (
        f"P=$(command -v {shlex.quote(python)} 2>/dev/null) && "
        f'printf "python=%s\\n" "$P" && '
        f'printf "py=%s\\n" "$("$P" -c {shlex.quote(_PY_PROBE)} 2>/dev/null)"'
    )
    return (
        f'W={workdir}; printf "home=%s\\nworkdir=%s\\n" "$HOME" "$W"; '
        f'if {have_venv}; then printf "marker=%s\\n" "$(cat {marker_file})"; fi; '
        f"if {'true' if ask_python else f'! {have_venv}'}; then {ask}; fi; true"
    )


def parse_probe(stdout: str) -> SiteMachine | None:
    """Return the SiteMachine that the output of ``probe_script`` describes (None when it names
    no working folder). An unreadable marker counts as no marker; the Python version comes from
    Python itself, else from the marker."""
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("home", "workdir", "python", "py", "marker"):
            fields[key] = value
    if "workdir" not in fields:
        return None
    py: dict[str, Any] = {}
    marker: dict[str, Any] = {}
    try:
        py = json.loads(fields["py"]) if fields.get("py") else {}
        marker = json.loads(fields["marker"]) if fields.get("marker") else {}
    except json.JSONDecodeError:
        marker = {}
    return SiteMachine(
        home=fields.get("home", ""),
        workdir=fields["workdir"],
        python=fields.get("python") if py else None,
        python_version=tuple(py.get("version") or marker.get("python") or ()),
        machine=py.get("machine", ""),
        libc=py.get("libc", ""),
        has_venv=bool(py.get("venv")),
        marker=marker,
    )


def check_python(machine: SiteMachine, python: str, site: str) -> None:
    """Raise SiteError (naming the fix) unless the site has Python >= 3.11 with venv."""
    if machine.python is None:
        raise SiteError(
            f"no usable Python at the site ('{python}' not found on the remote PATH); install "
            f'Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} there or set python = "/path/to/python3" for this client',
            site=site,
        )
    if machine.python_version[:2] < MIN_PYTHON:
        shown = ".".join(map(str, machine.python_version))
        raise SiteError(
            f"{machine.python} is Python {shown}; fedflow needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} "
            f'(set python = "/path/to/python3.11" for this client)',
            site=site,
        )
    if not machine.has_venv:
        raise SiteError(
            f"{machine.python} lacks the venv module (on Debian/Ubuntu: apt install python3-venv)",
            site=site,
        )


def is_current(machine: SiteMachine, install: str) -> bool:
    """Return True when the site's venv already holds this build, installed the same way."""
    return machine.marker.get("build") == build_id() and machine.marker.get("install") == install


def deps_key(house: str, extras: Sequence[str]) -> str:
    """Return the key of the dependency set in wheelhouse folder ``house`` with ``extras``."""
    return house.split("-")[-2] + ("-" + ",".join(sorted(extras)) if extras else "")


_CLEAN_PIP_ENV = (
    "env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "
    "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
)


def install_script(
    machine: SiteMachine,
    *,
    wheel: str,
    constraints: str,
    extras: Sequence[str],
    full: bool,
    deps: str,
) -> tuple[str, bool]:
    """Return the shell command installing fedflow into ``<workdir>/venv`` and whether it only
    updates fedflow in a venv whose dependencies already match (``deps``, the Python version).

    ``wheel`` and ``constraints`` are file names in ``<workdir>/wheels``. ``full``: offline
    (``--no-index``, pip's configuration ignored); else the site's index, pinned by the
    constraints file.
    """
    w = shlex.quote(machine.workdir)
    requirement = shlex.quote(
        f"{machine.workdir}/wheels/{wheel}" + (f"[{','.join(extras)}]" if extras else "")
    )
    pip = f"{w}/venv/bin/python -m pip install --quiet --no-cache-dir"
    source = (
        f"--no-index --find-links {w}/wheels"
        if full
        else f"--find-links {w}/wheels -c {w}/wheels/{shlex.quote(constraints)}"
    )
    env = _CLEAN_PIP_ENV if full else "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
    same_deps = machine.marker.get("deps") == deps and machine.marker.get("python") == list(
        machine.python_version
    )
    if same_deps:
        return f"{env} {pip} {source} --no-deps --force-reinstall {requirement}", True
    return (
        f"rm -rf {w}/venv && {shlex.quote(str(machine.python))} -m venv {w}/venv && "
        f"{env} {pip} {source} {requirement}"
    ), False


def marker_text(machine: SiteMachine, *, build: str, deps: str, install: str) -> str:
    """Return the venv marker's content (one JSON line) recording what was installed."""
    data = {
        "build": build,
        "deps": deps,
        "python": list(machine.python_version),
        "install": install,
    }
    return json.dumps(data) + "\n"


# -- I/O: through a Remote ---------------------------------------------------------------------


async def probe(
    remote: Remote, workdir: str, python: str, *, ask_python: bool = False
) -> SiteMachine:
    """Return what the site has (home, working folder, Python, venv marker) in one command.

    Python itself is asked only with ``ask_python`` or when there is no prepared venv (whose
    marker holds the version): a reused site costs one quick shell command.
    """
    done = await remote.run(probe_script(workdir, python, ask_python=ask_python), what="probe")
    machine = parse_probe(str(done.stdout or ""))
    if machine is None:
        raise SiteError(
            f"the site's shell gave no answer to the probe: {done.stderr!s}", site=remote.site
        )
    return machine


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


async def install_venv(
    remote: Remote,
    machine: SiteMachine,
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
            None, lambda: wheelhouse(machine.platform, extras, full=full, log=remote.log)
        )
    except SiteError as exc:
        raise SiteError(exc.message, site=remote.site) from exc
    deps = deps_key(house.name, extras)
    w = shlex.quote(machine.workdir)
    await remote.run(f"mkdir -p {w}/wheels && chmod 700 {w}", what="creating the working folder")
    sftp = await remote.sftp()
    try:
        present = {
            name: (await sftp.stat(f"{machine.workdir}/wheels/{name}")).size
            for name in await sftp.listdir(f"{machine.workdir}/wheels")
        }
    except (asyncssh.Error, OSError) as exc:
        raise SiteError(f"cannot list {machine.workdir}/wheels: {exc}", site=remote.site) from exc
    wheels = sorted(p for p in house.iterdir() if p.suffix in (".whl", ".txt"))
    fedflow_wheel = next(p for p in wheels if p.name.startswith(DIST_NAME.replace("-", "_")))
    for path in wheels:
        if path == fedflow_wheel or present.get(path.name) != path.stat().st_size:
            await remote.upload(path, f"{machine.workdir}/wheels/{path.name}", progress=progress)
    script, update = install_script(
        machine,
        wheel=fedflow_wheel.name,
        constraints=next(p for p in wheels if p.suffix == ".txt").name,
        extras=extras,
        full=full,
        deps=deps,
    )
    if update:
        remote.note(f"updating fedflow in the prepared venv to {ident}")
    else:
        how = "offline wheels" if full else "package index"
        remote.note(f"creating the venv in {machine.workdir}/venv ({how})")
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
    await remote.run(
        f"cat > {w}/venv/{MARKER}",
        stdin=marker_text(machine, build=ident, deps=deps, install=install),
        what="writing the venv marker",
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
) -> SiteMachine:
    """Make the site ready to run this fedflow build; return what was found (absolute paths).

    Order: probe; run the provision script (it may install Python); check Python and venv;
    create, update or reuse the venv. Raises SiteError naming the site and the cause.
    """
    expr = workdir_expr(workdir, study_name)
    machine = await probe(remote, expr, python)
    if provision_script is not None:
        await run_provision_script(remote, provision_script, machine.workdir)
        machine = await probe(remote, expr, python)
    if is_current(machine, install):
        return machine
    if machine.marker:  # a venv of another build: ask Python about itself now
        machine = await probe(remote, expr, python, ask_python=True)
    check_python(machine, python, remote.site)
    await install_venv(remote, machine, install=install, extras=extras, progress=progress)
    return await probe(remote, expr, python)
