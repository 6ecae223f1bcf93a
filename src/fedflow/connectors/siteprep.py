"""Prepare a remote site: working folder, the user's provision script, Python checks, the venv.

The site's node agent runs from ``<workdir>/venv`` holding exactly the coordinator's fedflow
build (``wheel.build_id``). With ``install = "wheels"`` (the default) the wheelhouse
(``wheel.wheelhouse``: fedflow and every dependency) is uploaded and installed with
``pip --no-index`` (the site needs no internet); with ``install = "index"`` only the fedflow
wheel is uploaded and the site's pip fetches the pinned dependencies from its package index. A
marker file (``venv/fedflow-ready.json``) records the build, the extras and packages installed
(``torch`` for a training study, ``scikit-learn`` for a scikit-learn plan); a site whose marker
holds this build and at least what the study needs is reused after one probe command.

With ``system_packages`` the venv sees the site Python's own packages
(``--system-site-packages``): those it already has at exactly the coordinator's versions are
neither sent nor installed (a site whose Python has torch 2.13.0+cpu gets no 200 MB wheel);
the others are installed into the venv, pinned to the coordinator's versions.

The shell scripts sent to a site, the parsing of its answers and the decisions taken on them are
pure functions here, tested without a site; ``probe``, ``install_venv`` and ``prepare_site`` only
run them through a ``Remote``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from fedflow._version import __version__
from fedflow.connectors.remote import Progress, Remote
from fedflow.connectors.wheel import (
    DIST_NAME,
    SitePlatform,
    build_id,
    dependency_closure,
    pinned,
    wheelhouse,
)
from fedflow.errors import SiteError, StudyError

__all__ = [
    "MARKER",
    "PRESENT_SCRIPT",
    "MIN_PYTHON",
    "SiteMachine",
    "check_python",
    "deps_key",
    "extras_script",
    "install_script",
    "is_current",
    "marker_text",
    "parse_present",
    "parse_probe",
    "prepare_site",
    "probe",
    "probe_script",
    "site_packages",
    "torch_pin",
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


def is_current(
    machine: SiteMachine,
    install: str,
    extras: Sequence[str] = (),
    packages: Sequence[str] = (),
    system: bool = False,
) -> bool:
    """Return True when the site's venv already holds this build, installed the same way, with
    at least ``extras`` and ``packages``."""
    marker = machine.marker
    return (
        marker.get("build") == build_id()
        and marker.get("install") == install
        and bool(marker.get("system", False)) == system
        and set(extras) <= set(marker.get("extras", ()))
        and set(packages) <= set(marker.get("packages", ()))
    )


PRESENT_SCRIPT = (
    "import importlib.metadata as m, json, re; "
    "print(json.dumps(sorted({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() + '==' + d.version "
    "for d in m.distributions() if d.metadata['Name']})))"
)
"""Python printing the distributions an interpreter sees, as a JSON list of ``name==version``
(names canonical, as ``wheel.pinned`` writes them)."""


def parse_present(stdout: str) -> frozenset[str]:
    """Return the ``name==version`` set that ``PRESENT_SCRIPT`` printed (empty when unreadable)."""
    try:
        found = json.loads(stdout.strip() or "[]")
    except json.JSONDecodeError:
        return frozenset()
    return (
        frozenset(x for x in found if isinstance(x, str))
        if isinstance(found, list)
        else frozenset()
    )


def deps_key(house: str, extras: Sequence[str]) -> str:
    """Return the key of the dependency set in wheelhouse folder ``house`` with ``extras``."""
    return house.split("-")[-2] + ("-" + ",".join(sorted(extras)) if extras else "")


_CLEAN_PIP_ENV = (
    "env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "
    "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
)


def _pip(machine: SiteMachine, constraints: str, full: bool, system: bool) -> tuple[str, str, str]:
    """Return the environment, the venv's ``pip install`` and the wheel sources of a site."""
    w = shlex.quote(machine.workdir)
    pin = f"-c {w}/wheels/{shlex.quote(constraints)}"
    source = (
        f"--no-index --find-links {w}/wheels" + (f" {pin}" if system else "")
        if full
        else f"--find-links {w}/wheels {pin}"
    )
    env = _CLEAN_PIP_ENV if full else "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
    # --no-compile: Python compiles what the agent imports, once; compiling every module of
    # torch and sympy at install time doubled the CPU time of a fresh site's install here
    pip = f"{w}/venv/bin/python -m pip install --quiet --no-cache-dir --no-compile"
    return env, pip, source


def install_script(
    machine: SiteMachine,
    *,
    wheel: str,
    constraints: str,
    extras: Sequence[str],
    full: bool,
    deps: str,
    packages: Sequence[str] = (),
    system: bool = False,
    site_pip: bool = False,
    deps_present: bool = False,
) -> tuple[str, bool]:
    """Return the shell command installing fedflow into ``<workdir>/venv`` and whether it only
    updates fedflow in a venv whose dependencies already match (``deps``, the Python version).

    ``wheel`` and ``constraints`` are file names in ``<workdir>/wheels``. ``full``: offline
    (``--no-index``, pip's configuration ignored); else the site's index, pinned by the
    constraints file. ``packages`` are installed beside fedflow (pinned the same way).
    ``system``: the venv sees the site Python's packages (``--system-site-packages``), and the
    constraints pin every dependency to the coordinator's version, offline too; fedflow's own
    wheel is always installed into the venv (an installed fedflow of the same version outside
    the venv does not count). ``site_pip``: the site Python has pip, which the venv then uses
    (``--without-pip``: nothing of its own hides the site's packages). ``deps_present``: the
    site Python has every dependency at the coordinator's version; only fedflow is installed.
    """
    w = shlex.quote(machine.workdir)
    own = f"{machine.workdir}/wheels/{wheel}"
    requirement = " ".join(
        shlex.quote(r)
        for r in [own + (f"[{','.join(extras)}]" if extras else ""), *sorted(packages)]
    )
    env, pip, source = _pip(machine, constraints, full, system)
    same_deps = machine.marker.get("deps") == deps and machine.marker.get("python") == list(
        machine.python_version
    )
    if same_deps:
        return f"{env} {pip} {source} --no-deps --force-reinstall {shlex.quote(own)}", True
    make = f"rm -rf {w}/venv && {shlex.quote(str(machine.python))} -m venv"
    if not system:
        return f"{make} {w}/venv && {env} {pip} {source} {requirement}", False
    make += " --system-site-packages" + (" --without-pip" if site_pip else "")
    steps = [f"{env} {pip} {source} --no-deps --force-reinstall {shlex.quote(own)}"]
    if not deps_present:
        steps.append(f"{env} {pip} {source} {requirement}")
    return f"{make} {w}/venv && " + " && ".join(steps), False


def extras_script(
    machine: SiteMachine,
    *,
    wheel: str,
    constraints: str,
    extras: Sequence[str],
    full: bool,
    system: bool = False,
) -> str:
    """Return the pip command adding ``extras`` (torch) to a venv where ``install_script`` has
    just installed fedflow: the same sources and pins, only the extras' requirements are new."""
    env, pip, source = _pip(machine, constraints, full, system)
    own = f"{machine.workdir}/wheels/{wheel}"
    requirement = shlex.quote(own + (f"[{','.join(extras)}]" if extras else ""))
    return f"{env} {pip} {source} {requirement}"


def marker_text(
    machine: SiteMachine,
    *,
    build: str,
    deps: str,
    install: str,
    extras: Sequence[str] = (),
    packages: Sequence[str] = (),
    system: bool = False,
) -> str:
    """Return the venv marker's content (one JSON line) recording what was installed."""
    data: dict[str, Any] = {
        "build": build,
        "deps": deps,
        "python": list(machine.python_version),
        "install": install,
    }
    if extras:
        data["extras"] = sorted(extras)
    if packages:
        data["packages"] = sorted(packages)
    if system:
        data["system"] = True
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


_SEEDED = ("pip", "setuptools", "wheel")
"""Distributions a new venv may hold of its own, whatever the site Python has."""


async def site_packages(remote: Remote, python: str) -> frozenset[str]:
    """Return the ``name==version`` of every distribution the site's ``python`` sees."""
    done = await remote.run(
        f"{shlex.quote(python)} -c {shlex.quote(PRESENT_SCRIPT)}",
        check=False,
        what="probe",  # a long list: not copied into the site's log
    )
    return parse_present(str(done.stdout or "")) if done.exit_status == 0 else frozenset()


_CHECK = (
    "import json, fedflow, fedflow.node.agent, importlib.util as u, importlib.metadata as m; "
    "t = u.find_spec('torch') is not None; "
    "print(json.dumps({'version': fedflow.__version__, 'file': fedflow.__file__, "
    "'torch': m.version('torch') if t else None}))"
)
"""Python run in the site's venv after installing: which fedflow it imports, from where, and
which torch it would import (its version from the metadata: importing torch takes seconds)."""


def torch_pin() -> str:
    """Return the torch the sites get: this installation's (``torch==2.13.0+cpu``), else the
    ``[torch]`` extra's requirement."""
    try:
        return f"torch=={importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        return "torch (the [torch] extra)"


async def install_venv(
    remote: Remote,
    machine: SiteMachine,
    *,
    install: str,
    extras: Sequence[str],
    packages: Sequence[str] = (),
    system: bool = False,
    host: str = "",
    progress: Progress | None = None,
) -> None:
    """Create or update ``<workdir>/venv`` with this fedflow build; write the marker on success."""
    ident = build_id()
    full = install != "index"
    where = f" at {host}" if host else ""
    present = await site_packages(remote, str(machine.python)) if system else frozenset()
    site_pip = any(p.startswith("pip==") for p in present)
    if system and not site_pip:
        # the venv gets pip and setuptools of its own (Python 3.11 seeds both), which hide the
        # site Python's: those are sent when fedflow needs them (torch needs setuptools >= 77)
        present = frozenset(p for p in present if p.partition("==")[0] not in _SEEDED)
    loop = asyncio.get_running_loop()
    try:
        house = await loop.run_in_executor(
            None,
            lambda: wheelhouse(
                machine.platform,
                extras,
                packages=packages,
                present=present,
                full=full,
                log=remote.log,
            ),
        )
    except SiteError as exc:
        raise SiteError(exc.message, site=remote.site) from exc
    deps = deps_key(house.name, extras)
    deps_present = system and all(
        pinned(d) in present for d in dependency_closure(extras, packages)
    )
    w = shlex.quote(machine.workdir)
    await remote.run(f"mkdir -p {w}/wheels && chmod 700 {w}", what="creating the working folder")
    sftp = await remote.sftp()
    try:
        present_files = {
            name: (await sftp.stat(f"{machine.workdir}/wheels/{name}")).size
            for name in await sftp.listdir(f"{machine.workdir}/wheels")
        }
    except (asyncssh.Error, OSError) as exc:
        raise SiteError(f"cannot list {machine.workdir}/wheels: {exc}", site=remote.site) from exc
    wheels = sorted(p for p in house.iterdir() if p.suffix in (".whl", ".txt"))
    fedflow_wheel = next(p for p in wheels if p.name.startswith(DIST_NAME.replace("-", "_")))
    for path in wheels:
        if path == fedflow_wheel or present_files.get(path.name) != path.stat().st_size:
            await remote.upload(path, f"{machine.workdir}/wheels/{path.name}", progress=progress)
    # torch goes in a second pip command, so that its failure is told as such
    later = "torch" in extras and not deps_present
    first = [e for e in extras if e != "torch"] if later else list(extras)
    constraints = next(p for p in wheels if p.suffix == ".txt").name
    script, update = install_script(
        machine,
        wheel=fedflow_wheel.name,
        constraints=constraints,
        extras=first,
        full=full,
        deps=deps,
        packages=packages,
        system=system,
        site_pip=site_pip,
        deps_present=deps_present,
    )
    if update:
        remote.note(f"updating fedflow in the prepared venv to {ident}")
    else:
        how = "offline wheels" if full else "package index"
        also = f"; with {', '.join([*extras, *packages])}" if extras or packages else ""
        mine = (
            f"; the site Python's own packages where they match ({len(present)})" if system else ""
        )
        remote.note(f"creating the venv in {machine.workdir}/venv ({how}{also}{mine})")
    try:
        await remote.run(script, what="installing fedflow into the site's venv")
    except SiteError as exc:
        raise SiteError(f"{exc.message} ({machine.workdir}/venv{where})", site=remote.site) from exc
    if later and not update:
        step = extras_script(
            machine,
            wheel=fedflow_wheel.name,
            constraints=constraints,
            extras=extras,
            full=full,
            system=system,
        )
        try:
            await remote.run(step, what="installing torch into the site's venv")
        except SiteError as exc:
            source = "the uploaded wheels" if full else "the site's package index"
            why = exc.message.partition("failed on the site: ")[2] or exc.message
            raise SiteError(
                f"cannot install {torch_pin()} into the venv{where} ({machine.workdir}/venv) "
                f"from {source}: {why}",
                site=remote.site,
            ) from exc
    done = await remote.run(
        f"{w}/venv/bin/python -c {shlex.quote(_CHECK)}", what="checking the site's fedflow"
    )
    try:
        found = json.loads(str(done.stdout).strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        found = {}
    if found.get("version") != __version__ or not str(found.get("file", "")).startswith(
        f"{machine.workdir}/venv/"
    ):
        raise SiteError(
            f"the site's venv{where} runs fedflow {found.get('version')!r} from "
            f"{found.get('file')!r}, expected {__version__} from {machine.workdir}/venv",
            site=remote.site,
        )
    if "torch" in extras:
        want = torch_pin().partition("==")[2]
        if found.get("torch") is None:
            raise SiteError(
                f"torch cannot be imported in the venv{where} ({machine.workdir}/venv)",
                site=remote.site,
            )
        if want and found["torch"] != want:
            raise SiteError(
                f"the venv{where} has torch {found['torch']}, the coordinator {want}: the sites "
                "must train with the same build",
                site=remote.site,
            )
        remote.note(f"torch {found['torch']} in the site's venv")
    await remote.run(
        f"cat > {w}/venv/{MARKER}",
        stdin=marker_text(
            machine,
            build=ident,
            deps=deps,
            install=install,
            extras=extras,
            packages=packages,
            system=system,
        ),
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
    packages: Sequence[str] = (),
    system: bool = False,
    host: str = "",
    progress: Progress | None = None,
) -> SiteMachine:
    """Make the site ready to run this fedflow build; return what was found (absolute paths).

    Order: probe; run the provision script (it may install Python); check Python and venv;
    create, update or reuse the venv (``extras`` and ``packages`` added to those the venv
    already has, so that studies needing different ones do not rebuild it in turn). Raises
    SiteError naming the site and the cause (and ``host`` when installing fails).
    """
    expr = workdir_expr(workdir, study_name)
    machine = await probe(remote, expr, python)
    if provision_script is not None:
        await run_provision_script(remote, provision_script, machine.workdir)
        machine = await probe(remote, expr, python)
    if is_current(machine, install, extras, packages, system):
        return machine
    if machine.marker.get("build") == build_id():
        extras = sorted({*extras, *machine.marker.get("extras", ())})
        packages = sorted({*packages, *machine.marker.get("packages", ())})
    if machine.marker:  # a venv of another build: ask Python about itself now
        machine = await probe(remote, expr, python, ask_python=True)
    check_python(machine, python, remote.site)
    await install_venv(
        remote,
        machine,
        install=install,
        extras=extras,
        packages=packages,
        system=system,
        host=host,
        progress=progress,
    )
    return await probe(remote, expr, python)
