"""secure = true end to end through real local site processes and the CLI: the result equals the
plaintext run's, and trace.jsonl shows that no site's own aggregate reached the coordinator."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import fedflow
from fedflow.apps.base import Table
from fedflow.runtime.secure import first_proposal
from fedflow.secure import EncodingError, FixedPoint
from fedflow.secure.layout import flatten
from fedflow.study import load_study
from tests.helpers import fedflow as cli
from tests.helpers import write_study
from tests.secure.summing_app import moments, site_tables

APP = "tests.secure.summing_app:SummingApp"


def _write_sites(folder: Path, tables: dict[str, Table]) -> dict[str, str]:
    files = {}
    for name, table in tables.items():
        table.to_pandas().to_csv(folder / f"{name}.csv", index=False, float_format="%.17g")
        files[name] = f"{name}.csv"
    return files


def _study(folder: Path, *, secure: bool, extra: str = "") -> Path:
    files = _write_sites(folder, site_tables())
    body = f'name = "sums"\napp = "{APP}"\nsecure = {str(secure).lower()}\n{extra}'
    return write_study(folder, body, files, name=f"study-{secure}.toml")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _numbers(obj, out: set) -> set:
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) or isinstance(obj, str):
        out.add(obj)
    return out


def _own_aggregates(folder: Path) -> dict[str, tuple[set, set]]:
    """Per site: the floats and exact values of its own first-round reply (computed here by the
    app's local step on the site's data as the site read it), and its encoded ring words."""
    out = {}
    for name in site_tables():
        frame = pd.read_csv(folder / f"{name}.csv", float_precision="round_trip")
        reply = moments(Table.from_pandas(frame), 4)
        values = {reply.total, *reply.columns.tolist(), *(str(v) for v in reply.exact)}
        out[name] = (values, reply)
    return out


@pytest.mark.slow
def test_a_secure_local_run_matches_plaintext_and_its_trace_hides_every_site(
    tmp_path: Path,
) -> None:
    plain = fedflow.run(load_study(_study(tmp_path, secure=False)), out=tmp_path / "p", trace=True)
    secure = fedflow.run(load_study(_study(tmp_path, secure=True)), out=tmp_path / "s", trace=True)
    assert plain.status == secure.status == "completed"
    assert secure.result == plain.result
    assert secure.manifest["secure"] is True and plain.manifest["secure"] is False

    own = _own_aggregates(tmp_path)
    # the plaintext trace shows each site's aggregate: the check below can see one
    plain_seen = _numbers([m["message"] for m in _lines(plain.dir / "trace.jsonl")], set())
    assert all(values & plain_seen for values, _ in own.values())

    lines = _lines(secure.dir / "trace.jsonl")
    in_rounds = [m for m in lines if m["round"] is not None]
    assert {m["type"] for m in lines} == {"welcome", "ready", "prepared", "masked_sum", "bye"}
    assert {m["type"] for m in in_rounds} == {"masked_sum"}
    mine = [m["round"] for m in in_rounds if m["site"] == "site-1"]
    assert sorted(set(mine)) == [1, 2] and len(mine) <= 4  # one exchange a round, or two
    seen = _numbers([m["message"] for m in in_rounds], set())
    for values, _ in own.values():
        assert not values & seen  # no float, no exact sum of any site

    # nor any word of a site's encoded reply among the masked vectors' words, in the encodings
    # the coordinator could have asked for: the first proposal and the sites' agreed range
    first = [m["message"] for m in in_rounds if m["round"] == 1]
    specs = [
        first_proposal(3),
        FixedPoint.agree([(k["lsb"], k["msb"]) for k in first if k["lsb"] is not None], 3),
    ]
    masked_words = {
        w for m in first if m["vector"] is not None for row in m["vector"]["data"] for w in row
    }
    assert masked_words
    checked = 0
    for _, reply in own.values():
        for spec in specs:
            try:
                encoded = flatten(reply).encode(spec)
            except EncodingError:  # values this encoding does not hold were not sent in it
                continue
            words = set(encoded.ravel().tolist()) - {0, 2**64 - 1}
            assert words and not words & masked_words
            checked += 1
    assert checked >= len(own)


def test_the_cli_runs_secure_and_validate_refuses_an_app_without_support(tmp_path: Path) -> None:
    study = _study(tmp_path, secure=False)
    done = cli("run", str(study), "--secure", "--json", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["n"] == 96
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["secure"] is True

    refused = write_study(
        tmp_path,
        'app = "tests.plugins:Faulty"\nsecure = true',
        {"a": "site-1.csv", "b": "site-2.csv"},
        name="faulty.toml",
    )
    for command in ("validate", "run"):
        out = cli(command, str(refused))
        assert out.returncode == 2
        assert "app 'faulty' cannot run with secure = true" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_fedflow_apps_shows_secure_support() -> None:
    out = cli("apps")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name, support in (
        ("linear-regression", fedflow.apps.get_app("linear-regression").secure),
        ("random-forest", fedflow.apps.get_app("random-forest").secure),
    ):
        at = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
        shown = lines[at + 1].strip()
        assert shown == (
            "secure = true: yes" if support is True else f"secure = true: no ({support})"
        )


@pytest.mark.parametrize(
    ("extra", "clients", "message"),
    [
        ("secure_threshold = 2", 3, "secure_threshold is for secure = true"),
        ("secure = true\nsecure_threshold = 4", 3, "secure_threshold = 4 must lie in 2..3"),
        ("secure = true\nsecure_threshold = 2", 4, "secure_threshold = 2 must lie in 3..4"),
        ("secure = true", 1, "needs at least two sites"),
    ],
)
def test_the_study_validates_secure_keys(tmp_path: Path, extra, clients, message) -> None:
    from fedflow.errors import StudyError

    path = write_study(
        tmp_path, f'app = "stats"\n{extra}', {f"s{i}": "x.csv" for i in range(clients)}
    )
    with pytest.raises(StudyError, match=message):
        load_study(path)
