"""Every documented example runs as written, and every app's result reads well in a terminal.

Each docs/apps/<app>.md shows examples/<app>/study.toml verbatim; each example study runs from a
clean checkout (small CSVs cut from datasets shipped with scikit-learn, statsmodels, lifelines)
through ``fedflow.run`` on local sites, and matches its centralized twin.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Group

import fedflow
from fedflow.apps import available_apps
from fedflow.results.report import render_text, result_tables

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*/study.toml") if p.parent.name != "plugin")
APP_PAGES = sorted((ROOT / "docs" / "apps").glob("*.md"))
FOLDER = {"train": "training"}
"""Apps whose example is not in examples/<app> (issue 13 names examples/training)."""
TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.S)

_runs: dict[str, Any] = {}


def run_example(name: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run examples/<name>/study.toml once per test session (with --compare where possible)."""
    if name not in _runs:
        out = tmp_path_factory.mktemp(f"run-{name}")
        _runs[name] = fedflow.run(
            ROOT / "examples" / name / "study.toml", out=out, force=True, compare=True
        )
    return _runs[name]


def test_every_app_has_a_page_and_an_example() -> None:
    pages = {p.stem for p in APP_PAGES}
    examples = {p.parent.name for p in EXAMPLES}
    assert set(available_apps()) <= pages, "docs/apps/<app>.md missing"
    assert {FOLDER.get(a, a) for a in available_apps()} <= examples, "examples/<app> missing"


@pytest.mark.parametrize("page", APP_PAGES, ids=lambda p: p.stem)
def test_page_shows_its_example_verbatim(page: Path) -> None:
    folder = FOLDER.get(page.stem, page.stem)
    example = ROOT / "examples" / folder / "study.toml"
    section = page.read_text(encoding="utf-8").split("\n## Example\n", 1)
    assert len(section) == 2, f"{page.name} has no '## Example' section"
    blocks = TOML_BLOCK.findall(section[1])
    assert blocks, f"{page.name}: no toml block in the example"
    assert blocks[0].strip() == example.read_text(encoding="utf-8").strip()
    assert f"fedflow run examples/{folder}/study.toml" in section[1]
    for data in re.findall(r'data = \["([^"]+)"\]', blocks[0]):
        assert (example.parent / data).is_file(), f"{page.name}: {data} is not in examples/"


@pytest.mark.slow
@pytest.mark.parametrize("study", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_runs_and_matches_its_twin(
    study: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = run_example(study.parent.name, tmp_path_factory)
    assert run.status == "completed"
    assert run.matches, run.comparison
    assert (run.dir / "result.json").is_file()


def rendered(name: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    run = run_example(name, tmp_path_factory)
    return render_text(Group(*result_tables(run.result, app=run.app)), width=110)


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


@pytest.mark.slow
def test_kaplan_meier_reads_as_groups_test_and_timelines(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    text = rendered("kaplan-meier", tmp_path_factory)
    assert lines_with(text, "group", "n", "events", "median survival")
    assert lines_with(text, "0", "216", "not reached")
    assert "log-rank test" in text and lines_with(text, "chi2", "dof", "p")
    assert "timeline, group 0: 10 of" in text and "timeline, group 1:" in text
    assert lines_with(text, "time", "at risk", "survival", "ci low", "ci high")
    assert "{" not in text and "…" not in text


@pytest.mark.slow
def test_kmeans_centres_are_a_table(tmp_path_factory: pytest.TempPathFactory) -> None:
    text = rendered("kmeans", tmp_path_factory)
    assert lines_with(text, "cluster", "sepal_length", "petal_width", "size")
    assert len(lines_with(text, "5.006", "3.428", "50")) == 1  # setosa's centre, all 50 rows
    assert "inertia" in text and "[[" not in text and "…" not in text


@pytest.mark.slow
def test_pca_shows_variance_and_loadings(tmp_path_factory: pytest.TempPathFactory) -> None:
    text = rendered("pca", tmp_path_factory)
    assert lines_with(text, "variance", "ratio", "cumulative")
    assert lines_with(text, "PC1", "█")
    assert lines_with(text, "column", "PC1", "PC2", "PC3", "mean", "scale")
    assert lines_with(text, "proline") and "[[" not in text and "…" not in text


@pytest.mark.slow
def test_stats_shows_columns_histograms_and_matrices(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    text = rendered("stats", tmp_path_factory)
    assert lines_with(text, "column", "count", "mean", "std", "q0.25", "q0.5", "q0.75")
    assert lines_with(text, "mdvis", "600") and lines_with(text, "lpi", "600")
    assert "histogram of mdvis" in text
    assert lines_with(text, "[0, 1)", "█") and lines_with(text, "[10, 100]")
    assert "correlation" in text and "{" not in text and "…" not in text


@pytest.mark.slow
def test_random_forest_ranks_importances(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = run_example("random-forest", tmp_path_factory)
    text = rendered("random-forest", tmp_path_factory)
    importances = run.result["feature_importances"]
    ranked = sorted(importances, key=lambda k: -importances[k])
    rows = [line.split()[0] for line in text.splitlines() if "█" in line]
    assert rows == ranked
    assert lines_with(text, "oob_accuracy") and lines_with(text, "berlin", "25")
    assert "…" not in text


def test_other_shapes_fall_back_to_the_generic_tables() -> None:
    text = render_text(Group(*result_tables({"centers": "not a list"}, app="kmeans")))
    assert "centers" in text and "not a list" in text
