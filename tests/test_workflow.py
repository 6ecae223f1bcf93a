"""examples/workflow: the Snakemake comparison workflow, run end to end on its reduced grid.

The test runs ``snakemake -c2 --configfile config-quick.yaml`` in a temporary directory and
checks the summary against the run directories themselves: every (app, split, sites) cell is in
the table, each verdict and count is the one the run's comparison.json holds, each split is a
partition of the pooled data, and the HTML report holds the table and both plots.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "workflow"
SNAKEMAKE = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))

pytestmark = pytest.mark.skipif(
    not Path(SNAKEMAKE).is_file(),
    reason="snakemake is not installed (pip install 'fedflow-studies[workflow]')",
)


def snakemake(workdir: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """Run the workflow's Snakefile with ``-d workdir``; ``python`` and ``fedflow`` on PATH are
    this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [SNAKEMAKE, "-s", str(WORKFLOW / "Snakefile"), "-d", str(workdir), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    done = snakemake(workdir, "-c2", "--configfile", str(WORKFLOW / "config-quick.yaml"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir


def grid(*configs: Path) -> set[tuple[str, str, int]]:
    """The (app, split, sites) cells of the config files, later files overriding earlier."""
    config: dict[str, Any] = {}
    for path in configs:
        config.update(yaml.safe_load(path.read_text(encoding="utf-8")))
    return set(itertools.product(config["apps"], config["splits"], config["sites"]))


def read_table(workdir: Path) -> list[dict[str, str]]:
    with (workdir / "results" / "comparisons.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class _Tables(HTMLParser):
    """The text of every table cell of a page, row by row, each row's links, the img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[list[str]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
            self.links.append([])
        elif tag == "a" and self.rows:
            self.links[-1].append(dict(attrs).get("href") or "")
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
def test_every_cell_is_in_the_table_with_the_verdict_of_its_run(quick_run: Path) -> None:
    rows = read_table(quick_run)
    cells = {(r["app"], r["split"], int(r["sites"])) for r in rows}
    assert len(cells) == len(rows), "a cell appears twice"
    assert cells == grid(WORKFLOW / "config.yaml", WORKFLOW / "config-quick.yaml")
    for r in rows:
        run = quick_run / r["run_dir"]
        assert run.parts[-3:] == (r["app"], r["split"], r["sites"])
        comparison = json.loads((run / "comparison.json").read_text(encoding="utf-8"))
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        assert r["verdict"] == comparison["status"] == manifest["comparison"]["status"]
        assert int(r["compared"]) == comparison["compared"] == len(comparison["items"]) > 0
        assert int(r["mismatched"]) == comparison["mismatched"]
        assert int(r["mismatched"]) == sum(not i["match"] for i in comparison["items"])
        assert float(r["max_rel_diff"]) == comparison["max_rel_diff"]
        assert manifest["app"] == r["app"] and len(manifest["sites"]) == int(r["sites"])
    # The quick grid holds a cell whose run exits 4 (--compare: mismatch); the workflow records it.
    assert {r["verdict"] for r in rows} == {"match", "mismatch"}


@pytest.mark.slow
def test_each_split_partitions_the_pooled_data_and_the_study_carries_the_config(
    quick_run: Path,
) -> None:
    config = yaml.safe_load((WORKFLOW / "config.yaml").read_text(encoding="utf-8"))
    for r in read_table(quick_run):
        settings = config["app"][r["app"]]
        pooled = (quick_run / "data" / f"{settings['dataset']}.csv").read_text().splitlines()
        split_dir = quick_run / "splits" / r["app"] / r["split"] / r["sites"]
        study = tomllib.loads((split_dir / "study.toml").read_text(encoding="utf-8"))
        assert study["app"] == r["app"] and study["params"] == settings["params"]
        site_rows: list[str] = []
        for client in study["clients"]:
            lines = (split_dir / client["data"][0]).read_text().splitlines()
            assert lines[0] == pooled[0]  # the header
            site_rows += lines[1:]
        assert len(study["clients"]) == int(r["sites"])
        assert sorted(site_rows) == sorted(pooled[1:])  # every pooled row at exactly one site
        manifest = json.loads((quick_run / r["run_dir"] / "manifest.json").read_text())
        assert sum(s["rows_used"] for s in manifest["sites"].values()) == len(pooled) - 1


@pytest.mark.slow
def test_the_report_holds_the_table_and_both_plots(quick_run: Path) -> None:
    page = quick_run / "results" / "summary.html"
    parser = _Tables()
    parser.feed(page.read_text(encoding="utf-8"))
    header, *body = parser.rows
    assert header[:5] == ["app", "split", "sites", "rows per site", "verdict"]
    shown = {(c[0], c[1], c[2], c[4]) for c in body}
    assert shown == {
        (r["app"], r["split"], r["sites"], r["verdict"]) for r in read_table(quick_run)
    }
    # config-quick.yaml sets run_reports: false: each row links its run directory only
    for cells, links in zip(body, parser.links[1:], strict=True):
        assert links == [f"../runs/{cells[0]}/{cells[1]}/{cells[2]}"]
    assert len(parser.images) == 2
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    for name in ("max_rel_diff.png", "tolerance_use.png"):
        assert (quick_run / "results" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_summary_links_the_report_of_a_run_that_has_one(quick_run: Path) -> None:
    run = quick_run / read_table(quick_run)[0]["run_dir"]
    out = quick_run / "relinked" / "summary.html"
    (run / "report.html").write_text("<html></html>", encoding="utf-8")
    try:
        subprocess.run(
            [
                sys.executable,
                str(WORKFLOW / "scripts" / "summary_report.py"),
                str(quick_run / "results" / "comparisons.csv"),
                "--out",
                str(out),
            ],
            cwd=quick_run,
            check=True,
        )
    finally:
        (run / "report.html").unlink()
    parser = _Tables()
    parser.feed(out.read_text(encoding="utf-8"))
    linked = [links for links in parser.links if any(a.endswith("report.html") for a in links)]
    rel = os.path.relpath(run, out.parent)
    assert linked == [[rel, f"{rel}/report.html"]]


def test_the_full_grid_plans_one_run_per_cell(tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "-p", "-c1", timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = dict(line.split()[:2] for line in done.stdout.splitlines() if len(line.split()) == 2)
    cells = grid(WORKFLOW / "config.yaml")
    assert int(counts["run"]) == int(counts["split"]) == len(cells) == 32
    # config.yaml sets run_reports: every run writes its report.html
    runs = [line for line in done.stdout.splitlines() if "fedflow run " in line]
    assert len(runs) == 32 and all(" --compare --report " in line for line in runs)


def test_a_grid_the_settings_cannot_fill_is_refused_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [3, 4]\n", encoding="utf-8")  # `sizes` gives no ratio for 4 sites
    done = snakemake(tmp_path, "-n", "-c1", "--configfile", str(bad), timeout=120)
    assert done.returncode != 0
    assert "config: split.sizes.sizes has no ratio for 4 sites" in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()


def test_collect_refuses_a_run_without_a_comparison_naming_it(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "pca" / "iid" / "3"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"app": "pca", "sites": {}}', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(WORKFLOW / "scripts" / "collect.py"), "--out", "t.csv", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    message = done.stderr.strip()
    assert (
        message
        == f"collect.py: {run / 'comparison.json'} is missing (was the run made with --compare?)"
    )
    assert not (tmp_path / "t.csv").exists()
