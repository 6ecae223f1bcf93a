"""``fedflow apps NAME``: an app's parameters from the installed package, not from docs/."""

from __future__ import annotations

import msgspec
import pytest

from fedflow.apps import available_apps, get_app
from fedflow.cli import main
from fedflow.errors import AppError
from fedflow.results.appinfo import app_parameters, describe_app


@pytest.mark.parametrize("name", available_apps())
def test_every_parameter_is_described(name: str) -> None:
    app = get_app(name)
    text = describe_app(name)
    summary = (type(app).__doc__ or "").strip().splitlines()[0]
    assert text.startswith(f"{name} — {summary}")
    fields = msgspec.structs.fields(app.Params)
    assert [p.name for p in app_parameters(app)] == [f.name for f in fields]
    for field in fields:
        assert any(line.split()[:1] == [field.name] for line in text.splitlines())


def test_types_and_defaults_read_like_a_study_file() -> None:
    text = describe_app("random-forest")
    lines = {line.split()[0]: line for line in text.splitlines()[1:] if line.startswith("  ")}
    assert "string" in lines["target"] and "required" in lines["target"]
    assert "integer" in lines["n_estimators"] and "default 100" in lines["n_estimators"]
    assert '"classification" | "regression"' in lines["task"]
    assert "default none (not set)" in lines["seed"]
    stats = describe_app("stats")
    assert 'default ["count", "mean", "variance", "std"]' in stats
    assert "default false" in stats


def test_cli_prints_one_app_or_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apps", "kmeans"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kmeans — ") and "default 300" in out
    assert main(["apps"]) == 0
    assert "kaplan-meier" in capsys.readouterr().out
    assert main(["apps", "kmean"]) == 2
    assert "did you mean 'kmeans'?" in capsys.readouterr().err
    with pytest.raises(AppError):
        describe_app("kmean")
