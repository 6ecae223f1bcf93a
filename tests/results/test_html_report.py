"""fedflow report RUN_DIR / fedflow run --report: the page, its tables and plots, its errors,
and the page as a real headless Chromium shows it."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedflow._version import __version__
from fedflow.errors import StudyError
from fedflow.results import plots
from fedflow.results.html_report import INSTALL_HINT, write_report
from fedflow.results.report import comparison_line
from fedflow.results.saved import load_run_dir
from tests.helpers import ROOT, copy_quickstart, fedflow, write_study
from tests.results.runs import EXAMPLES, memory_run

Image = pytest.importorskip("PIL.Image")

_IMG = re.compile(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" id="plot-([^"]+)">')
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's C0 and C1


def _page(run_dir: Path) -> tuple[str, dict[str, bytes]]:
    """Write the report; return its HTML and the embedded PNGs by plot name."""
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    return text, {name: base64.b64decode(data) for data, name in _IMG.findall(text)}


def _rgb(png: bytes | Path) -> np.ndarray:
    source = io.BytesIO(png) if isinstance(png, bytes) else png
    return np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)


def _pixels_near(png: bytes, colour: tuple[int, int, int], tol: int = 12) -> int:
    """Count the pixels within ``tol`` of ``colour`` in every channel."""
    close = np.abs(_rgb(png) - np.array(colour, dtype=np.int16)) <= tol
    return int(close.all(axis=2).sum())


def _failed_run(folder: Path) -> Path:
    """A real run (site processes, logs) with --report in which site vienna raises in round 2."""
    copy_quickstart(folder)
    study = write_study(
        folder,
        'app = "tests.plugins:Faulty"\ntimeout = 5\n[params]\nmode = "raise"\n',
        {"berlin": "berlin.csv", "vienna": "vienna.csv"},
        name="faulty.toml",
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    out = folder / "failed"
    proc = fedflow("run", str(study), "--out", str(out), "-q", "--report", env=env)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert f"fedflow: report: {out / 'report.html'}" in proc.stderr  # --report after a failure
    assert (out / "report.html").is_file()
    return out


# -- what the page holds --------------------------------------------------------------------------
@pytest.mark.slow  # the pooled reference (lifelines) takes a few seconds
def test_a_compared_kaplan_meier_run_shows_manifest_tables_verdict_and_curves(
    tmp_path: Path,
) -> None:
    run = memory_run("kaplan-meier", tmp_path / "km", compare=True)
    text, images = _page(run.dir)
    # every plot is embedded and also written beside the page, byte for byte
    assert set(images) == {"kaplan-meier", "sites"}
    for name, png in images.items():
        assert (
            png.startswith(b"\x89PNG") and png == (run.dir / "report" / f"{name}.png").read_bytes()
        )
    # what ran: the manifest's facts
    manifest = run.manifest
    assert "recidivism" in text and manifest["study"]["sha256"] in text
    for site in manifest["sites"].values():
        for f in site["files"]:
            assert f["sha256"] in text and html.escape(f["name"]) in text
    assert f"fedflow {__version__}" in text
    assert html.escape(" ".join(manifest["command"])) in text
    assert html.escape(json.dumps(manifest["params"])) in text
    # the result tables and the verdict
    assert "median survival" in text and "log-rank test" in text
    assert 'id="comparison"' in text
    assert html.escape(comparison_line(run.comparison)) in text
    # one curve per group (fin = 0 in blue, fin = 1 in orange), each with its band
    curves = images["kaplan-meier"]
    assert _pixels_near(curves, BLUE, 8) > 300 and _pixels_near(curves, ORANGE, 8) > 300
    band = (210, 228, 240)  # C0 at alpha 0.2 over white
    assert _pixels_near(curves, band, 6) > 5000


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    run = memory_run("cox", tmp_path / "cox")
    text, images = _page(run.dir)
    assert images and "<script" not in text
    assert not re.search(r'(src|href)="(?!data:)', text), "every resource is a data: URI"


def test_a_run_without_compare_has_no_verdict_and_no_pooled_fit(tmp_path: Path) -> None:
    plain = memory_run("cox", tmp_path / "plain")
    compared = memory_run("cox", tmp_path / "compared", compare=True)
    text, images = _page(plain.dir)
    assert 'id="comparison"' not in text and "compare:" not in text
    assert "Federated vs pooled" not in text
    assert "run with --compare to draw the pooled fit" in text
    assert _pixels_near(images["coefficients"], BLUE) > 200
    assert _pixels_near(images["coefficients"], ORANGE) == 0
    text2, images2 = _page(compared.dir)
    assert 'id="comparison"' in text2
    assert html.escape(comparison_line(compared.comparison)) in text2
    assert _pixels_near(images2["coefficients"], ORANGE) > 200  # the pooled squares


def test_coefficient_intervals_come_from_the_result_or_its_standard_errors(
    tmp_path: Path,
) -> None:
    from scipy.stats import norm

    cox = memory_run("cox", tmp_path / "cox").result
    flat = plots._flat_result(cox)
    for name, beta in cox["coefficients"].items():
        assert plots._interval(flat, name, beta) == (cox["ci_lower"][name], cox["ci_upper"][name])
    linear = memory_run("linear-regression", tmp_path / "lin").result
    flat = plots._flat_result(linear)
    z = norm.ppf(0.975)
    for name, beta in linear["coefficients"].items():
        low, high = plots._interval(flat, name, beta)
        se = linear["std_errors"][name]
        assert math.isclose(low, beta - z * se, rel_tol=1e-12)
        assert math.isclose(high, beta + z * se, rel_tol=1e-12)


def test_many_coefficients_draw_the_first_ones_and_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = memory_run("cox", tmp_path / "cox")
    full = plots.coefficient_figure(load_run_dir(run.dir))
    monkeypatch.setattr(plots, "MAX_COEFFICIENTS", 3)
    capped = plots.coefficient_figure(load_run_dir(run.dir))
    assert full is not None and capped is not None
    n = len(run.result["coefficients"])
    assert "coefficients are drawn" not in full.caption
    assert capped.caption.endswith(f"The first 3 of {n} coefficients are drawn.")
    heights = [Image.open(io.BytesIO(f.png)).height for f in (full, capped) if f.png]
    assert heights[1] < heights[0]


@pytest.mark.slow  # a real run with site processes
def test_pca_draws_variance_and_the_scores_the_sites_wrote(tmp_path: Path) -> None:
    out = tmp_path / "pca"
    proc = fedflow("run", str(EXAMPLES / "pca" / "study.toml"), "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    text, images = _page(out)
    assert set(images) >= {"pca-variance", "pca-scores"}
    files = sorted(out.glob("sites/*/projections.csv"))
    rows = sum(len(f.read_text().splitlines()) - 1 for f in files)
    assert rows == json.loads((out / "result.json").read_text())["result"]["n_obs"]
    assert f"The scores of {rows} rows ({len(files)} sites" in text
    assert _pixels_near(images["pca-scores"], BLUE, 40) > 100
    assert _pixels_near(images["pca-scores"], ORANGE, 40) > 100


def test_pca_without_scores_says_what_is_there(tmp_path: Path) -> None:
    run = memory_run("pca", tmp_path / "pca", params={"projections": False})
    text, images = _page(run.dir)
    assert "pca-scores" not in images and "pca-loadings" in images
    assert "This run holds no scores" in text and "projections = true" in text


def test_convergence_is_read_from_the_trace(tmp_path: Path) -> None:
    traced = memory_run("logistic-regression", tmp_path / "traced", trace=True)
    text, images = _page(traced.dir)
    assert "convergence" in images and "loglik (phase newton)" in text
    found = plots._trace_objectives(traced.dir / "trace.jsonl")
    per_round = {r: sum(parts) for r, parts in found["newton", "loglik"].items()}
    assert sorted(per_round) == list(range(1, traced.manifest["rounds"] + 1))
    n = traced.result["n_obs"]
    assert math.isclose(per_round[1], n * math.log(0.5), rel_tol=1e-12)  # β = 0 in round 1
    assert math.isclose(per_round[max(per_round)], traced.result["loglik"], rel_tol=1e-12)
    untraced = memory_run("logistic-regression", tmp_path / "untraced")
    text, images = _page(untraced.dir)
    assert "convergence" not in images and "fedflow run --trace" in text
    assert "rounds" in images  # time and bytes per round are still drawn


@pytest.mark.slow
def test_training_convergence_per_round(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run = memory_run("training", tmp_path / "train", params={"rounds": 2})
    text, images = _page(run.dir)
    assert "convergence" in images and "each of 2 rounds" in text
    assert "sites" in images


@pytest.mark.slow  # a real run with site processes
def test_a_failed_run_reports_what_it_left(tmp_path: Path) -> None:
    run_dir = _failed_run(tmp_path)
    proc = fedflow("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir / "report.html")
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    error = json.loads((run_dir / "manifest.json").read_text())["error"]
    assert 'class="status failed"' in text and html.escape(error["message"]) in text
    assert "No result.json" in text
    last = (run_dir / "logs" / "vienna.log").read_text().strip().splitlines()[-1]
    assert 'id="logs"' in text and html.escape(last) in text


@pytest.mark.parametrize("case", ["missing", "file", "no-manifest", "bad-json"])
def test_not_a_run_directory_is_one_line_naming_the_path(tmp_path: Path, case: str) -> None:
    target = tmp_path / "x"
    if case == "file":
        target.write_text("hello")
    elif case == "no-manifest":
        target.mkdir()
    elif case == "bad-json":
        target.mkdir()
        (target / "manifest.json").write_text("{not json")
    proc = fedflow("report", str(target))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0], proc.stderr
    with pytest.raises(StudyError):
        write_report(target)


def test_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    run = memory_run("cox", tmp_path / "cox")
    hide = "import sys; sys.modules['matplotlib'] = None; from fedflow.cli import main; "
    for args in (
        ["report", str(run.dir)],
        ["run", str(EXAMPLES / "cox"), "--report", "--out", str(tmp_path / "r")],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", hide + f"sys.exit(main({args!r}))"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 2
        assert proc.stderr == f"fedflow: error: {INSTALL_HINT}\n"
    assert not (tmp_path / "r").exists(), "run --report refuses before running"
    assert not (run.dir / "report.html").exists()


@pytest.mark.slow  # a real run with site processes
def test_run_report_writes_the_page_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = fedflow("run", str(EXAMPLES / "linear-regression"), "--report", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert f"fedflow: report: {out / 'report.html'}" in proc.stderr
    assert (out / "report" / "coefficients.png").is_file()
    _, images = _page(out)
    assert "coefficients" in images


def test_force_removes_an_earlier_report(tmp_path: Path) -> None:
    first = memory_run("cox", tmp_path / "run")
    write_report(first.dir)
    assert (first.dir / "report" / "coefficients.png").exists()
    memory_run("cox", tmp_path / "run", force=True)
    assert not (first.dir / "report.html").exists() and not (first.dir / "report").exists()


# -- in a real browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    from tests.browser import ensure_chromium

    executable, why = ensure_chromium()
    if executable is None:
        pytest.skip(why or "no chromium")
    return executable


@pytest.mark.slow
def test_headless_chromium_shows_the_plots_without_console_errors(
    tmp_path: Path, chromium: str
) -> None:
    from tests.browser import Chromium

    (tmp_path / "failed").mkdir()
    runs = [
        memory_run("kaplan-meier", tmp_path / "km", compare=True).dir,
        memory_run("cox", tmp_path / "cox").dir,
        _failed_run(tmp_path / "failed"),
    ]
    browser = Chromium(chromium)
    try:
        for run_dir in runs:
            write_report(run_dir)
            page = browser.load((run_dir / "report.html").as_uri())
            (run_dir / "screenshot.png").write_bytes(page.screenshot)
            assert page.errors == [], page.errors
            saved = load_run_dir(run_dir)
            assert page.title.startswith(saved.name)
            files = sorted((run_dir / "report").glob("*.png"))
            assert [i["id"] for i in page.images] == [
                f"plot-{f.stem}" for f in _in_page_order(run_dir, files)
            ]
            shot = _rgb(page.screenshot)
            for image in page.images:
                png = _rgb(run_dir / "report" / f"{image['id'][5:]}.png")
                height, width = png.shape[:2]
                assert image["complete"]
                assert (image["naturalWidth"], image["naturalHeight"]) == (width, height)
                # the image's content box (inside its 1 px border) in the screenshot
                x, y = round(image["x"]) + 1, round(image["y"]) + 1
                crop = shot[y : y + height, x : x + width]
                colours = len(np.unique(crop.reshape(-1, 3), axis=0))
                assert colours >= 20, f"{image['id']} looks blank ({colours} colours)"
                diff = float(np.abs(crop - png).mean())
                assert diff < 4.0, (
                    f"{image['id']}: the screenshot differs from the plot ({diff:.1f})"
                )
    finally:
        browser.close()


def _in_page_order(run_dir: Path, files: list[Path]) -> list[Path]:
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    return sorted(files, key=lambda f: text.index(f'id="plot-{f.stem}"'))
