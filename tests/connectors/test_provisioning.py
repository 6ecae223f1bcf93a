"""Provisioning a remote site, without a site: the wheel, the scripts sent over SSH, their parsing.

The shell scripts run here in a local ``sh`` with a scratch HOME: what a site's shell would run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fedflow
from fedflow._version import __version__
from fedflow.connectors import remote, siteprep, wheel
from fedflow.connectors.siteprep import SiteMachine
from fedflow.connectors.wheel import SitePlatform
from fedflow.errors import SiteError


def sh(script: str, home: Path, *, check: bool = True) -> str:
    """Run ``script`` with /bin/sh and HOME=``home``; return its stdout."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=env, check=check, timeout=60
    )
    return done.stdout


# -- the fedflow wheel ---------------------------------------------------------------------------


def test_package_files_leave_out_bytecode_and_the_featurecloud_fakes(tmp_path: Path) -> None:
    for rel in [
        "__init__.py",
        "node/agent.py",
        "node/__pycache__/agent.cpython-311.pyc",
        "stray.pyc",
        "featurecloud/client.py",
        "featurecloud/fake/__init__.py",
        "featurecloud/fake/web.py",
        "featurecloud/fakes_are_not_this.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    names = [p.relative_to(tmp_path).as_posix() for p in wheel.package_files(tmp_path)]
    assert names == [
        "__init__.py",
        "featurecloud/client.py",
        "featurecloud/fakes_are_not_this.py",
        "node/agent.py",
    ]


def test_the_built_wheel_holds_fedflow_without_the_fakes(tmp_path: Path) -> None:
    built = wheel.build_wheel(tmp_path)
    assert built.name == f"fedflow_studies-{built.name.split('-')[1]}-py3-none-any.whl"
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
        contents = {n: zf.read(n) for n in names}
    assert not [n for n in names if "featurecloud/fake" in n]
    assert "fedflow/node/agent.py" in names and "fedflow/featurecloud/client.py" in names
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    # the fakes are there in this checkout (so the test proves the exclusion, not their absence)
    assert (Path(fedflow.__file__).parent / "featurecloud" / "fake" / "__init__.py").is_file()
    # RECORD lists every other file with its sha256 and size
    rows = {line.split(",")[0]: line.split(",")[1:] for line in record.splitlines()}
    assert set(rows) == set(names)
    for name, data in contents.items():
        if name.endswith("/RECORD"):
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert rows[name] == [f"sha256={digest}", str(len(data))], name


def test_the_wheel_is_reproducible(tmp_path: Path) -> None:
    first = wheel.build_wheel(tmp_path / "a").read_bytes()
    assert wheel.build_wheel(tmp_path / "b").read_bytes() == first


def test_build_id_names_the_version_and_ignores_the_fakes(tmp_path: Path) -> None:
    version, _, digest = wheel.build_id().partition("+")
    assert version == __version__ and len(digest) == 16


def test_repacked_wheel_names_merge_the_tags() -> None:
    text = "Wheel-Version: 1.0\nTag: cp311-cp311-manylinux_2_17_x86_64\nTag: cp311-cp311-manylinux2014_x86_64\n"
    assert (
        wheel.repacked_wheel_name("scikit-learn", "1.5.0", text)
        == "scikit_learn-1.5.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    )
    assert wheel.repacked_wheel_name("x", "1", "Wheel-Version: 1.0\n") is None


def test_constraints_pin_index_installs_only() -> None:
    text = wheel.constraints_text(
        [
            ("numpy", "2.0.1", True),
            ("fedflow-studies", "0.1", True),
            ("pip", "24.0", True),
            ("mylib", "0.0.1", False),
            ("", "1", True),
            ("SciPy", "1.13.0", True),
        ]
    )
    assert text == "SciPy==1.13.0\nnumpy==2.0.1\n"


def test_pip_platform_args() -> None:
    here = SitePlatform((3, 11, 4), "x86_64", "glibc2.36")
    assert wheel.pip_platform_args(SitePlatform((3, 11, 9), "x86_64", "glibc2.36"), here) == []
    args = wheel.pip_platform_args(SitePlatform((3, 12, 1), "aarch64", "glibc2.28"), here)
    assert args[:5] == ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux_2_28_aarch64" and platforms[10] == "manylinux_2_18_aarch64"
    assert platforms[-4:] == [
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
        "linux_aarch64",
        "any",
    ]
    musl = wheel.pip_platform_args(SitePlatform((3, 11, 0), "x86_64", ""), here)
    assert [musl[i + 1] for i, a in enumerate(musl) if a == "--platform"] == ["linux_x86_64", "any"]
    assert SitePlatform((3, 11, 0), "x86_64", "").tag == "cp311-x86_64-unknown"


# -- checksums at the site -----------------------------------------------------------------------


def test_sha256_script_matches_local_digests(tmp_path: Path) -> None:
    a, b = tmp_path / "a file.csv", tmp_path / "b.csv"
    a.write_bytes(b"x,y\n1,2\n" * 1000)
    b.write_bytes(b"")
    missing = str(tmp_path / "missing.csv")
    found = remote.parse_sha256_lines(
        sh(remote.sha256_script([str(a), str(b), missing]), tmp_path, check=False)
    )
    assert found == {str(a): remote.file_sha256(a), str(b): remote.file_sha256(b)}
    assert remote.file_sha256(b) == hashlib.sha256(b"").hexdigest()


def test_the_python_checksum_fallback_prints_as_sha256sum_does(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_bytes(b"1\n2\n")
    out = subprocess.run(
        [sys.executable, "-c", remote._PY_SHA256, str(a), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert remote.parse_sha256_lines(out) == {str(a): remote.file_sha256(a)}
    assert remote.parse_sha256_lines("garbage\n\n") == {}


# -- the site's working folder and probe ---------------------------------------------------------


@pytest.mark.parametrize(
    ("workdir", "expected"),
    [
        (None, "{home}/.fedflow/my study"),
        ("~", "{home}"),
        ("~/runs/x", "{home}/runs/x"),
        ("relative/dir", "{home}/relative/dir"),
        ("/srv/fed flow", "/srv/fed flow"),
    ],
)
def test_workdir_expr_resolves_at_the_site(
    tmp_path: Path, workdir: str | None, expected: str
) -> None:
    expr = siteprep.workdir_expr(workdir, "my study")
    assert sh(f"printf %s {expr}", tmp_path) == expected.format(home=tmp_path)


def test_probe_of_a_fresh_site_asks_python(tmp_path: Path) -> None:
    expr = siteprep.workdir_expr(None, "s")
    machine = siteprep.parse_probe(sh(siteprep.probe_script(expr, sys.executable), tmp_path))
    assert machine is not None
    assert machine.home == str(tmp_path) and machine.workdir == f"{tmp_path}/.fedflow/s"
    assert machine.python == sys.executable and machine.python_version == tuple(
        sys.version_info[:3]
    )
    assert machine.has_venv and not machine.marker
    assert machine.venv_python == f"{tmp_path}/.fedflow/s/venv/bin/python"
    assert machine.tag == wheel.local_platform().tag
    siteprep.check_python(machine, sys.executable, "berlin")  # this Python is good enough


def test_probe_of_a_prepared_site_reads_the_marker_only(tmp_path: Path) -> None:
    venv = tmp_path / ".fedflow" / "s" / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / siteprep.MARKER).write_text(
        json.dumps({"build": "b", "deps": "d", "python": [3, 12, 1], "install": "wheels"}) + "\n"
    )
    expr = siteprep.workdir_expr(None, "s")
    machine = siteprep.parse_probe(sh(siteprep.probe_script(expr, "python3"), tmp_path))
    assert machine is not None and machine.marker["build"] == "b"
    assert machine.python is None and machine.python_version == (3, 12, 1)
    asked = siteprep.parse_probe(
        sh(siteprep.probe_script(expr, sys.executable, ask_python=True), tmp_path)
    )
    assert asked is not None and asked.python == sys.executable and asked.marker


def test_probe_without_python_and_a_broken_marker() -> None:
    machine = siteprep.parse_probe("home=/h\nworkdir=/h/w\nmarker={not json\nnoise\n")
    assert machine == SiteMachine(home="/h", workdir="/h/w")
    assert siteprep.parse_probe("bash: oops\n") is None


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        (SiteMachine("/h", "/w"), r"no usable Python at the site \('python3' not found"),
        (
            SiteMachine("/h", "/w", "/usr/bin/python3", (3, 9, 2), has_venv=True),
            r"/usr/bin/python3 is Python 3\.9\.2; fedflow needs >= 3\.11",
        ),
        (
            SiteMachine("/h", "/w", "/usr/bin/python3", (3, 11, 2), has_venv=False),
            r"lacks the venv module \(on Debian/Ubuntu: apt install python3-venv\)",
        ),
    ],
)
def test_check_python_names_the_fix(machine: SiteMachine, message: str) -> None:
    with pytest.raises(SiteError, match=message) as info:
        siteprep.check_python(machine, "python3", "vienna")
    assert info.value.site == "vienna"


# -- installing ----------------------------------------------------------------------------------


def test_a_site_is_reused_only_with_this_build_installed_the_same_way() -> None:
    marker = {"build": wheel.build_id(), "install": "wheels"}
    assert siteprep.is_current(SiteMachine("/h", "/w", marker=marker), "wheels")
    assert not siteprep.is_current(SiteMachine("/h", "/w", marker=marker), "index")
    assert not siteprep.is_current(
        SiteMachine("/h", "/w", marker={**marker, "build": "0.0+old"}), "wheels"
    )
    assert not siteprep.is_current(SiteMachine("/h", "/w"), "wheels")


def test_deps_key_from_the_wheelhouse_name() -> None:
    house = "house-0.3.0+abc-cp311-x86_64-glibc2.36-0123456789abcdef-full"
    assert siteprep.deps_key(house, ()) == "0123456789abcdef"
    assert siteprep.deps_key(house, ("parquet", "compare")) == "0123456789abcdef-compare,parquet"


def test_install_script_creates_an_offline_venv() -> None:
    machine = SiteMachine("/h", "/srv/my site", "/usr/bin/python3.11", (3, 11, 4), has_venv=True)
    script, update = siteprep.install_script(
        machine,
        wheel="fedflow_studies-0.3.0-py3-none-any.whl",
        constraints="constraints-k.txt",
        extras=("parquet",),
        full=True,
        deps="k",
    )
    assert not update
    assert script.startswith("rm -rf '/srv/my site'/venv && /usr/bin/python3.11 -m venv")
    assert "--no-index --find-links '/srv/my site'/wheels" in script
    assert "PIP_CONFIG_FILE=/dev/null" in script and "-u PIP_INDEX_URL" in script
    assert script.endswith("'/srv/my site/wheels/fedflow_studies-0.3.0-py3-none-any.whl[parquet]'")


def test_install_script_only_updates_fedflow_when_the_dependencies_match() -> None:
    marker = {"deps": "k", "python": [3, 11, 4]}
    machine = SiteMachine("/h", "/w", "/usr/bin/python3", (3, 11, 4), True, marker=marker)
    script, update = siteprep.install_script(
        machine, wheel="f.whl", constraints="c.txt", extras=(), full=False, deps="k"
    )
    assert update and "--no-deps --force-reinstall /w/wheels/f.whl" in script
    assert "--find-links /w/wheels -c /w/wheels/c.txt" in script and "--no-index" not in script
    assert "rm -rf" not in script
    newer = SiteMachine("/h", "/w", "/usr/bin/python3", (3, 11, 9), True, marker=marker)
    assert not siteprep.install_script(
        newer, wheel="f.whl", constraints="c.txt", extras=(), full=False, deps="k"
    )[1]


def test_marker_text_records_the_build() -> None:
    machine = SiteMachine("/h", "/w", python_version=(3, 11, 4))
    text = siteprep.marker_text(machine, build="0.3+x", deps="k", install="index")
    assert text.endswith("\n")
    assert json.loads(text) == {
        "build": "0.3+x",
        "deps": "k",
        "python": [3, 11, 4],
        "install": "index",
    }
