"""fedflow compare RUN_A RUN_B: study, data, result and timing differences of two real runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fedflow as api
from fedflow.connectors.memory import MemoryConnector
from fedflow.errors import FedflowError
from fedflow.results.compare import flatten
from fedflow.results.run_compare import SHOWN, compare_runs
from fedflow.results.saved import load_run_dir
from tests.helpers import SITES, copy_quickstart, fedflow, write_study
from tests.results.runs import memory_run


def _part(text: str, name: str) -> list[str]:
    """Return the lines of one part (``study:``, ``data:``, ``result:``, ``timings:``)."""
    for block in text.split("\n\n"):
        if block.startswith(name):
            return block.splitlines()
    raise AssertionError(f"no {name} part in:\n{text}")


def _row(lines: list[str], path: str) -> list[str]:
    for line in lines:
        cells = line.split()
        if len(cells) > 1 and cells[1] == path:
            return cells
    raise AssertionError(f"no row {path}")


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())["result"]


def test_two_runs_of_one_study_differ_in_nothing_but_time(tmp_path: Path) -> None:
    a = memory_run("logistic-regression", tmp_path / "a").dir
    b = memory_run("logistic-regression", tmp_path / "b").dir
    proc = fedflow("compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text == compare_runs(load_run_dir(a), load_run_dir(b))
    assert _part(text, "study")[0].endswith(" keys identical, 0 differ")
    data = _part(text, "data")
    sites = json.loads((a / "manifest.json").read_text())["sites"]
    for name, site in sites.items():
        line = next(x for x in data if x.strip().startswith(f"{name}:"))
        assert "identical" in line and site["files"][0]["sha256"][:12] in line
    n = len(flatten(_result(a)))
    result = _part(text, "result")
    assert result[0] == f"result: {n} values: {n} identical, 0 differ, 0 in one run only"
    assert [line.split()[0] for line in result[2:]] == ["="] * n
    duration = next(x.split() for x in _part(text, "timings") if x.split()[0] == "duration")
    seconds = [json.loads((r / "manifest.json").read_text())["duration_seconds"] for r in (a, b)]
    assert duration[1:5] == [f"{seconds[0]:.3f}", "s", f"{seconds[1]:.3f}", "s"]


def test_a_changed_parameter_and_the_values_it_moved(tmp_path: Path) -> None:
    a = memory_run("kaplan-meier", tmp_path / "a").dir
    b = memory_run("kaplan-meier", tmp_path / "b", params={"alpha": 0.1}).dir
    full = compare_runs(load_run_dir(a), load_run_dir(b), all_values=True)
    study = _part(full, "study")
    assert study[0].endswith(" keys identical, 1 differ")
    assert study[2].split() == ["params.alpha", "0.05", "0.1"]
    fa, fb = flatten(_result(a)), flatten(_result(b))
    rows = _part(full, "result")
    changed = [p for p in fa if fa[p] != fb[p]]
    assert changed and all(".ci_" in p for p in changed)  # only the bands move
    assert rows[0] == (
        f"result: {len(fa)} values: {len(fa) - len(changed)} identical, {len(changed)} differ, "
        "0 in one run only"
    )
    for path in changed[:20]:
        mark, _, x, y, abs_diff, rel_diff = _row(rows, path)
        assert mark == "≠" and float(x) == pytest.approx(fa[path], rel=1e-9)
        assert float(y) == pytest.approx(fb[path], rel=1e-9)
        assert float(abs_diff) == pytest.approx(abs(fb[path] - fa[path]), rel=1e-9)
        assert float(rel_diff) == pytest.approx(abs(fb[path] - fa[path]) / abs(fa[path]), rel=1e-9)
    survival = next(p for p in fa if ".survival[" in p and fa[p] != 1.0)
    assert _row(rows, survival)[0] == "=" and _row(rows, survival)[4:] == ["0", "0"]
    # without --all: the values that differ first, the rest counted
    short = _part(compare_runs(load_run_dir(a), load_run_dir(b)), "result")
    listed = short[2:-1]
    assert len(listed) == SHOWN and all(line.split()[0] == "≠" for line in listed)
    assert short[-1] == (
        f"  … {len(fa) - len(changed)} identical and {len(changed) - SHOWN} different values "
        "not shown (--all lists them)"
    )


def _quickstart_run(folder: Path, out: Path) -> Path:
    study = api.load_study(folder / "study.toml")
    connectors = {name: MemoryConnector(name) for name in SITES}
    return api.run(study, connectors=connectors, out=out).dir


def test_changed_data_names_the_site_and_both_fingerprints(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        copy_quickstart(tmp_path / side)
    vienna = tmp_path / "b" / "vienna.csv"
    lines = vienna.read_text().splitlines()
    vienna.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer at vienna
    a = _quickstart_run(tmp_path / "a", tmp_path / "ra")
    b = _quickstart_run(tmp_path / "b", tmp_path / "rb")
    text = compare_runs(load_run_dir(a), load_run_dir(b))
    data = _part(text, "data")
    assert any(x.strip().startswith("berlin: identical") for x in data)
    assert any(x.strip().startswith("zurich: identical") for x in data)
    assert "  vienna: differs" in data
    sha = {
        side: json.loads((run / "manifest.json").read_text())["sites"]["vienna"]["files"][0]
        for side, run in (("a", a), ("b", b))
    }
    differs = {x.split()[1]: x.split()[2:] for x in data if x.strip().startswith("vienna.csv ")}
    assert differs["sha256"] == [sha["a"]["sha256"], sha["b"]["sha256"]]
    assert differs["rows"] == [str(sha["a"]["rows"]), str(sha["a"]["rows"] - 1)]
    assert sha["b"]["rows"] == sha["a"]["rows"] - 1
    fa, fb = flatten(_result(a)), flatten(_result(b))
    same = sum(fa[p] == fb[p] for p in fa)
    assert fa["n_obs"] == fb["n_obs"] + 1 and same < len(fa)
    assert _part(text, "result")[0] == (
        f"result: {len(fa)} values: {same} identical, {len(fa) - same} differ, 0 in one run only"
    )


def test_a_failed_run_is_compared_as_far_as_it_goes(tmp_path: Path) -> None:
    copy_quickstart(tmp_path)
    study = write_study(
        tmp_path,
        'app = "tests.plugins:Faulty"\ntimeout = 5\n[params]\nmode = "raise"\n',
        {"berlin": "berlin.csv", "vienna": "vienna.csv"},
        name="faulty.toml",
    )
    loaded = api.load_study(study)
    with pytest.raises(FedflowError) as info:
        api.run(
            loaded,
            connectors={c.name: MemoryConnector(c.name) for c in loaded.clients},
            out=tmp_path / "failed",
        )
    failed = Path(info.value.run_dir)  # type: ignore[attr-defined]
    good = memory_run("logistic-regression", tmp_path / "good").dir
    proc = fedflow("compare", str(failed), str(good))
    assert proc.returncode == 0, proc.stderr
    error = json.loads((failed / "manifest.json").read_text())["error"]["message"]
    assert f"A failed: SiteError: {error}" in proc.stdout
    assert _part(proc.stdout, "result")[0].startswith(
        "result: not compared: A has no result.json (failed: SiteError: "
    )
    assert "berlin: only in A" in proc.stdout and "north: only in B" in proc.stdout


@pytest.mark.parametrize("which", [0, 1])
def test_not_a_run_directory_is_one_line_naming_it(tmp_path: Path, which: int) -> None:
    good = memory_run("cox", tmp_path / "good").dir
    bad = tmp_path / "empty"
    bad.mkdir()
    args = [str(good), str(bad)] if which else [str(bad), str(good)]
    proc = fedflow("compare", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"fedflow: error: {bad}: not a run directory (no manifest.json)\n"


def test_a_copied_run_directory_compares_identical(tmp_path: Path) -> None:
    a = memory_run("cox", tmp_path / "a").dir
    shutil.copytree(a, tmp_path / "copy")
    text = compare_runs(load_run_dir(a), load_run_dir(tmp_path / "copy"))
    n = len(flatten(_result(a)))
    assert f"result: {n} values: {n} identical, 0 differ" in text
    assert all(x.split()[-1] == "1.00×" for x in _part(text, "timings")[2:] if "×" in x)


def test_a_dropped_feature_shows_as_whole_lists_and_values_in_one_run_only(
    tmp_path: Path,
) -> None:
    a = memory_run("logistic-regression", tmp_path / "a").dir
    b = memory_run("logistic-regression", tmp_path / "b", params={"features": ["GPA", "PSI"]}).dir
    text = compare_runs(load_run_dir(a), load_run_dir(b))
    study = _part(text, "study")
    assert study[0].endswith(" keys identical, 1 differ")
    assert study[2] == '  params.features  ["GPA", "TUCE", "PSI"]  ["GPA", "PSI"]'
    fa, fb = flatten(_result(a)), flatten(_result(b))
    only_a = [p for p in fa if p not in fb]
    assert only_a and all(p.endswith(".TUCE") for p in only_a)
    rows = _part(text, "result")
    for path in only_a:
        assert _row(rows, path)[0] == "A" and float(_row(rows, path)[2]) == pytest.approx(fa[path])
    assert f"{len(only_a)} in one run only" in rows[0]
