"""Sites keep their own state: SCAFFOLD's control c_i lives in each site's state folder
(``sites/<site>/state/`` for a local site), one file per round, and never in the coordinator's
checkpoint. A resumed run or a restarted site starts from the round the coordinator names; a
missing or corrupt state file is refused in one line naming the site and the file."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from fedflow.apps.base import Table  # noqa: E402
from fedflow.connectors.memory import MemoryConnector  # noqa: E402
from fedflow.errors import DataError, FedflowError, SiteError  # noqa: E402
from fedflow.node.agent import NodeAgent  # noqa: E402
from fedflow.runtime.run import RunInterrupted  # noqa: E402
from fedflow.runtime.simulate import in_memory, simulate  # noqa: E402
from fedflow.training import checkpoint  # noqa: E402
from fedflow.training.app import STATE_KEY, exact_sum  # noqa: E402
from fedflow.training.weights import from_safetensors, to_safetensors  # noqa: E402
from fedflow.wire import Task  # noqa: E402

from .helpers import MLP_PLAN, blobs, write_plan  # noqa: E402
from .test_resume_points import MODELS, CtrlC, _resume, _run, _same_models, _study  # noqa: E402


def _state_files(run_dir: Path) -> dict[str, list[str]]:
    return {
        site.name: sorted(p.name for p in (site / "state").iterdir())
        for site in sorted((run_dir / "sites").iterdir())
        if (site / "state").is_dir()
    }


def _cut_after_two_rounds(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The scaffold study, its uninterrupted run, and a run interrupted (Ctrl-C) while round 3
    trains — after the checkpoint of round 2."""
    study = _study(tmp_path / "study", "scaffold")
    # 2 of the 3 sites train each round; with seed 2 (rounds 1–4: site0 and site2, site1 and
    # site2, site0 and site1, site0 and site2) site0 starts round 3 from its state of round 1
    text = study.read_text().replace("fraction = 0.7", "fraction = 0.5")
    study.write_text(text.replace("seed = 11", "seed = 2"))
    whole = _run(study, tmp_path / "whole").dir
    out = tmp_path / "cut"
    with pytest.raises(RunInterrupted):
        _run(study, out, CtrlC(at=("site0", 3)))
    return study, whole, out


def test_scaffold_checkpoint_holds_no_site_control_and_resumes_from_the_sites_files(
    tmp_path: Path,
) -> None:
    _, whole, out = _cut_after_two_rounds(tmp_path)
    done, state = checkpoint.load_checkpoint(out)
    assert done == 2
    arrays, meta = state["checkpoint"]["arrays"], state["checkpoint"]["meta"]
    assert set(arrays) <= {"weights", "best", "control"}  # global state only
    assert "control" in arrays
    sampled = meta["sampling"]
    assert sampled["1"] == ["site0", "site2"] and sampled["2"] == ["site1", "site2"]
    assert meta["state_rounds"] == {"site0": 1, "site1": 2, "site2": 2}
    # each site starts from the last round it trained in (and was aggregated)
    for site in ("site0", "site1", "site2"):
        trained = [int(k) for k in ("1", "2") if site in sampled[k]]
        assert meta["state_rounds"].get(site, 0) == max(trained, default=0)
    files = _state_files(out)
    run_key = meta["run_key"]
    for site, names in files.items():
        assert names, site
        assert all(n.startswith(f"train-{run_key}-round-") for n in names)
        assert len(names) <= 2  # the round it started from and the one it trained last
    # c (global) is the row-weighted mean of the sites' own c_i: Σ n_i·c_i / Σ n_i
    rows = {"site0": 40, "site1": 28, "site2": 48}  # 50, 35, 60 rows less 20 % held out
    own = {}
    for site in rows:
        base = meta["state_rounds"].get(site, 0)
        if base:
            name = f"train-{run_key}-round-{base}.safetensors"
            content = (out / "sites" / site / "state" / name).read_bytes()
            own[site] = from_safetensors(content, name)[0]["control"]
    mean = sum(rows[s] * c for s, c in own.items()) / sum(rows.values())
    np.testing.assert_allclose(arrays["control"], mean, rtol=0, atol=1e-9)
    assert _resume(out).status == "completed"
    _same_models(out, whole)
    # the interrupted attempt's site folders are kept with it
    assert (out / "attempts" / "1" / "sites").is_dir()


def _first_state_file(out: Path) -> tuple[str, Path]:
    _, state = checkpoint.load_checkpoint(out)
    meta = state["checkpoint"]["meta"]
    site, base = next((s, r) for s, r in sorted(meta["state_rounds"].items()) if r)
    name = f"train-{meta['run_key']}-round-{base}.safetensors"
    return site, out / "sites" / site / "state" / name


def _resume_fails(out: Path) -> str:
    with pytest.raises(FedflowError) as caught:
        _resume(out)
    assert isinstance(caught.value, DataError)
    text = str(caught.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("damage", ["missing", "flipped", "truncated", "other round"])
def test_a_missing_or_corrupt_state_file_is_refused_naming_the_site_and_file(
    tmp_path: Path, damage: str
) -> None:
    _, _, out = _cut_after_two_rounds(tmp_path)
    site, path = _first_state_file(out)
    content = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "flipped":  # one bit of the last value of c_i
        path.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    elif damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:  # a whole, well-formed file of another round under this round's name
        arrays, meta = from_safetensors(content, str(path))
        info = json.loads(meta[STATE_KEY])
        info["round"] += 7
        path.write_bytes(to_safetensors(arrays, {STATE_KEY: json.dumps(info)}))
    text = _resume_fails(out)
    assert site in text and str(path) in text
    expected = {
        "missing": "is missing",
        "flipped": "is corrupt (hash mismatch)",
        "truncated": "is corrupt (unreadable)",
        "other round": f"holds site '{site}'",
    }[damage]
    assert expected in text


# -- a site restarted within a run ----------------------------------------------------------------


class Restartable(MemoryConnector):
    """An in-process site whose agent is new at every start (nothing in memory survives) and
    dies, at its first start, on a message whose (type, round) is in ``faults``; its folder is
    ``output_dir``."""

    def __init__(
        self, name: str, table: Table, folder: Path, faults: set[tuple[type, int]]
    ) -> None:
        super().__init__(name, output_dir=str(folder))
        self.table, self.faults, self.starts = table, faults, 0

    async def start(self) -> None:
        self.starts += 1
        agent = NodeAgent(self.site, preloaded=in_memory(self.table, self.site))
        first = self.starts == 1

        def handle(message: Any) -> Any:
            if first and (type(message), getattr(message, "round", None)) in self.faults:
                raise SiteError("killed", site=self.site)
            return agent.handle(message)

        self.handler = handle
        self._replies = asyncio.Queue()
        self.started, self.closed = True, False


def restart_run(
    plan: Path,
    root: Path,
    faults: dict[str, set[tuple[type, int]]],
    *,
    secure: bool = False,
    trace: Path | None = None,
    **extra: Any,
) -> tuple[Any, dict[str, Restartable]]:
    """A SCAFFOLD run over three in-process sites with folders under ``root``."""
    from fedflow.results.trace import TraceWriter
    from fedflow.runtime.coordinator import Coordinator
    from fedflow.training.resilience import resilient_exchange

    from .helpers import mlp_params

    kind = extra.pop("connector", Restartable)
    connectors = {
        n: (kind if n in faults else Restartable)(n, t, root / n, faults.get(n, set()))
        for n, t in blobs([50, 40, 60]).items()
    }
    params = mlp_params(plan, strategy="scaffold", rounds=4, **{"retries": 1, **extra})
    coordinator = Coordinator(
        "train",
        params,
        connectors,
        seed=6,
        round_exchange=resilient_exchange,
        secure=secure,
        trace=TraceWriter(trace) if trace is not None else None,
    )
    return asyncio.run(coordinator.run()), connectors


def test_a_restarted_site_loads_its_control_from_its_state_file(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, MLP_PLAN)
    clean, _ = restart_run(plan, tmp_path / "clean", {})
    outcome, connectors = restart_run(plan, tmp_path / "faulty", {"site1": {(Task, 3)}})
    assert connectors["site1"].starts == 2
    for name in MODELS:
        assert outcome.done.artifacts[name] == clean.done.artifacts[name], name
    # the new agent holds nothing in memory: it started round 3 from its file of round 2
    assert (tmp_path / "faulty" / "site1" / "state").is_dir()


def test_a_restarted_site_without_its_state_file_is_refused(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, MLP_PLAN)
    root = tmp_path / "run"

    class Wiping(Restartable):
        async def start(self) -> None:
            if self.starts == 1:  # the restart finds an empty state folder
                for path in (root / self.site / "state").glob("*"):
                    path.unlink()
            await super().start()

    with pytest.raises(DataError) as caught:
        restart_run(plan, root, {"site1": {(Task, 3)}}, connector=Wiping)
    text = str(caught.value)
    assert "site1" in text and "round-2.safetensors is missing" in text
    assert str(root / "site1" / "state") in text


# -- the arithmetic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sites", [2, 3, 7, 10])
def test_exact_sum_is_the_exact_sum_rounded_once(sites: int) -> None:
    """The coordinator's Σ n_i·Δc_i: against exact Fractions rounded once (half to even), on
    ordinary values, exponents 10^±300 apart, cancellation, half-way cases and signed zeros."""
    rng = np.random.default_rng(sites)
    size = 200
    kinds = [
        [rng.normal(size=size) for _ in range(sites)],
        [rng.normal(size=size) * 10.0 ** rng.integers(-300, 300, size) for _ in range(sites)],
    ]
    base = rng.normal(size=size)
    kinds.append([base, -base] + [rng.normal(size=size) * 1e-17 for _ in range(sites - 2)])
    ties = [np.ones(size), np.full(size, 2.0**-53)]  # 1 + 2^-53: half-way, then nudged
    nudges = [0.0, 2.0**-106, -(2.0**-106), 2.0**-160, -(2.0**-53), 2.0**-1074]
    ties += [rng.choice(nudges, size) for _ in range(sites - 2)]
    kinds.append(ties[:sites])
    kinds.append([rng.choice([0.0, -0.0], size) for _ in range(sites)])
    for vectors in kinds:
        got = exact_sum(vectors)
        for j in range(size):
            want = float(sum((Fraction(float(v[j])) for v in vectors), Fraction(0)))
            assert got[j] == want and np.signbit(got[j]) == np.signbit(want + 0.0), j


def test_in_memory_scaffold_runs_are_reproducible(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, MLP_PLAN)
    from .helpers import mlp_params

    params = mlp_params(plan, strategy="scaffold", fraction=0.7, rounds=4)
    a = simulate("train", params, blobs([50, 35, 60]), seed=2)
    b = simulate("train", params, blobs([50, 35, 60]), seed=2)
    assert a.done.artifacts == b.done.artifacts


def test_resume_restores_the_latest_site_state_set_aside(tmp_path: Path) -> None:
    """Attempt 2 set aside its sites' state; attempt 3 ended before its sites started (no
    sites folder): a resume restores attempt 2's, not attempt 1's."""
    for n, value in ((1, b"old"), (2, b"new")):
        for site in ("a", "b"):
            folder = tmp_path / "attempts" / str(n) / "sites" / site / "state"
            folder.mkdir(parents=True)
            (folder / "train-k-round-1.safetensors").write_bytes(value + site.encode())
    (tmp_path / "attempts" / "3").mkdir()
    restored = checkpoint.restore_site_state(tmp_path)
    assert restored == [tmp_path / "sites" / s / "state" for s in ("a", "b")]
    for site in ("a", "b"):
        path = tmp_path / "sites" / site / "state" / "train-k-round-1.safetensors"
        assert path.read_bytes() == b"new" + site.encode()
    assert checkpoint.restore_site_state(tmp_path / "nothing") == []
