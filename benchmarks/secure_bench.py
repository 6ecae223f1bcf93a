"""Benchmarks of secure aggregation: the round overhead through real local sites, and the core.

``rounds`` (default): a summed phase whose reply is one float64 vector of L values, run for a few
rounds through real local site processes (``fedflow.run``, the default fork server), with and
without ``secure = true``; the median seconds per round (from metrics.json: the coordinator's
wall time from sending a round's first message to the aggregate's return) and bytes per site per
round. ``round_overhead(n, length)`` returns the figures, for reuse (e.g. beside Flower's SecAgg+).

    python benchmarks/secure_bench.py                 # 3, 10, 50 sites × 10, 10^4, 10^6 (skips 50 × 10^6)
    python benchmarks/secure_bench.py rounds --full   # also 50 sites × 10^6
    python benchmarks/secure_bench.py rounds --dropout  # the dropout-tolerant protocol (training)
    python benchmarks/secure_bench.py rounds --repeat 3 # each mode 3 times, alternately: the least

Analytics (the default) runs one exchange a round: pairwise masks under keys agreed once per run
(each site's public key in its Prepared answer), no self masks or shares, since a dropped site
ends the run. ``--dropout`` runs ``VectorSumDropout``, an app that completes rounds with the
sites that answered (as training does): four exchanges a round with Shamir-shared self masks.
    python benchmarks/secure_bench.py core [--full]   # the core alone, one process (below)
    python benchmarks/secure_bench.py parts --sites 10 --lengths 10000 --repeat 40
                                                      # one secure round's CPU per part

``core``: micro-benchmark of the secure-aggregation core (fedflow.secure), in one process.

For n sites × vector length L, in the 64-bit ring (1 limb) and the exact 128-bit ring (2 limbs):
the key exchange and share sealing of all sites (steps 1–2), one site's masking (step 3: n − 1
pairwise masks and its self mask), and the coordinator's unmasking (sum of n masked vectors and
removal of n self masks; step 4 without and with one dropped site). No processes, no network:
the cost of the cryptography and the ring arithmetic only.

    python benchmarks/secure_bench.py core          # 3, 10, 50 sites × 10, 10^4, 10^6 (skips 50 × 10^6)
    python benchmarks/secure_bench.py core --full   # also 50 sites × 10^6 (minutes, ~1 GB RAM)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedflow.apps.base import (
    SUM,
    App,
    ColumnKind,
    Continue,
    CoordinatorContext,
    Done,
    Empty,
    Params,
    Payload,
    Phase,
    SiteContext,
    Step,
    Table,
)
from fedflow.secure import (
    CoordinatorAggregation,
    MaskLabel,
    PairwiseMasker,
    Session,
    SiteAggregation,
    ring,
)

HERE = Path(__file__).resolve().parent


# -- the round overhead through real local sites ---------------------------------------------------


class VectorParams(Params, frozen=True):
    length: int = 10
    rounds: int = 5


class Vector(Payload, frozen=True):
    values: np.ndarray


class VectorSum(App[VectorParams]):
    """Each round every site sends one float64 vector (normal values); the coordinator sums."""

    name = "vector-sum"
    Params = VectorParams
    reference = "numpy"
    secure: ClassVar[bool | str] = True
    phases: ClassVar[Mapping[str, Phase]] = {"add": Phase(Empty, Vector, summed=True)}

    def columns(self, params: VectorParams) -> dict[str, ColumnKind]:
        return {}

    def local_add(
        self, data: Table, params: VectorParams, request: Empty, ctx: SiteContext
    ) -> Vector:
        rng = np.random.default_rng([ctx.round, sum(ctx.site.encode())])
        return Vector(values=rng.standard_normal(params.length))

    def aggregate_add(
        self, replies: Mapping[str, Vector], params: VectorParams, ctx: CoordinatorContext
    ) -> Step:
        if ctx.secure:  # the exact sum, correctly rounded
            total = replies[SUM].values
        else:  # what a plaintext app does: numpy's sum of the sites' vectors
            total = np.sum([r.values for r in replies.values()], axis=0)
        if ctx.round < params.rounds:
            return Continue("add", Empty())
        return Done({"sum": total.tolist()})

    def centralized(self, pooled: Any, params: VectorParams) -> dict[str, Any]:
        raise NotImplementedError


class VectorSumDropout(VectorSum):
    """VectorSum through the dropout-tolerant protocol (four exchanges a round)."""

    partial_rounds: ClassVar[bool] = True


def round_overhead(
    n: int, length: int, rounds: int = 5, *, dropout: bool = False, repeat: int = 1
) -> dict[str, Any]:
    """Run ``VectorSum`` over ``n`` real local sites, plaintext then secure (``repeat`` times,
    alternately); return the median seconds per round (the first round excluded: it carries the
    sites' first imports; with ``repeat`` > 1 the least of the runs' medians, the one least
    disturbed by other jobs), the bytes per site per round both ways, and the largest
    difference between numpy's plaintext sum and the exact, correctly rounded secure sum."""
    import fedflow
    from fedflow.study.load import study_from_dict

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )  # the sites import this module by reference
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    out: dict[str, Any] = {"sites": n, "length": length, "rounds": rounds}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "rows.csv"
        data.write_text("a\n" + "\n".join(str(i) for i in range(10)) + "\n")
        results = {}
        for secure in (False, True) * repeat:
            study = study_from_dict(
                {
                    "name": "secure-bench",
                    "app": "secure_bench:VectorSumDropout" if dropout else "secure_bench:VectorSum",
                    "params": {"length": length, "rounds": rounds},
                    "secure": secure,
                    "outdir": folder,
                    "clients": [{"name": f"s{i:02d}", "data": [str(data)]} for i in range(n)],
                }
            )
            run = fedflow.run(study, out=Path(folder) / f"run-{secure}-{len(results)}")
            metrics = json.loads((run.dir / "metrics.json").read_text())["rounds"]
            timed = metrics[1:] if len(metrics) > 1 else metrics
            key = "secure" if secure else "plain"
            median = statistics.median(r["seconds"] for r in timed)
            out[f"{key}_seconds"] = min(median, out.get(f"{key}_seconds", median))
            out[f"{key}_exchanges"] = statistics.median(r["exchanges"] for r in timed)
            out[f"{key}_bytes_up"] = statistics.median(
                r["sites"]["s00"]["bytes_from_site"] for r in timed
            )
            out[f"{key}_bytes_down"] = statistics.median(
                r["sites"]["s00"]["bytes_to_site"] for r in timed
            )
            results[key] = run.result
            results[f"{key}-{len(results)}"] = run.result
    plain, exact = np.array(results["plain"]["sum"]), np.array(results["secure"]["sum"])
    out["max_abs_diff"] = float(np.max(np.abs(plain - exact)))  # numpy's rounding, vs exact
    out["ratio"] = out["secure_seconds"] / out["plain_seconds"]
    return out


def _size(b: float) -> str:
    return f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB" if b >= 1e3 else f"{b:.0f} B"


def rounds_table(
    full: bool,
    dropout: bool = False,
    sizes: tuple[int, ...] = (3, 10, 50),
    repeat: int = 1,
    lengths: tuple[int, ...] = (10, 10_000, 1_000_000),
) -> None:
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}", flush=True)
    print(
        "| sites | length | plaintext s/round | secure s/round | secure ÷ plaintext "
        "| bytes up per site (plain → secure) | max abs diff | exchanges a round |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        for length in lengths:
            if n == 50 and length == 1_000_000 and not full:
                print(f"| {n} | {length:,} | skipped (--full) | | | | |", flush=True)
                continue
            rounds = 3 if length == 1_000_000 else 5
            f = round_overhead(
                n, length, rounds=rounds, dropout=dropout, repeat=1 if length > 10**5 else repeat
            )
            print(
                f"| {n} | {length:,} | {f['plain_seconds'] * 1e3:.1f} ms "
                f"| {f['secure_seconds'] * 1e3:.1f} ms | {f['ratio']:.2f}× "
                f"| {_size(f['plain_bytes_up'])} → {_size(f['secure_bytes_up'])} "
                f"| {f['max_abs_diff']:.1e} | {f['secure_exchanges']:g} |",
                flush=True,
            )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}", flush=True)


# -- the core, in one process ----------------------------------------------------------------------


def run(n: int, length: int, limbs: int, drop: bool) -> dict[str, float]:
    names = tuple(f"s{i:02d}" for i in range(n))
    session = Session(secrets.token_bytes(16), 1, names, length, limbs)
    sites = {name: SiteAggregation(session, name) for name in names}
    coordinator = CoordinatorAggregation(session)
    t0 = time.perf_counter()
    for site in sites.values():
        coordinator.receive_keys(site.advertise())
    keys = coordinator.relay_keys()
    for site in sites.values():
        coordinator.receive_shares(site.share(keys))
    boxes = coordinator.relay_shares()
    t1 = time.perf_counter()
    vector = (
        ring.from_ints(list(range(length)), limbs)
        if length <= 10_000
        else ring.zeros(length, limbs)
    )
    mask_seconds = []
    for name, site in sites.items():
        started = time.perf_counter()
        masked = site.mask(boxes[name], vector)
        mask_seconds.append(time.perf_counter() - started)
        if not (drop and name == names[-1]):
            coordinator.receive_masked(masked)
        del masked
    t2 = time.perf_counter()
    request = coordinator.unmask_request()
    for name in request.survivors:
        coordinator.receive_reveal(sites[name].reveal(request))
    total = coordinator.result()
    t3 = time.perf_counter()
    survivors = len(request.survivors)
    if length <= 10_000:
        assert ring.to_ints(total[:3]) == [survivors * i for i in range(min(3, length))]
    return {
        "setup": t1 - t0,
        "mask": float(np.median(mask_seconds)),
        "unmask": t3 - t2,
    }


def pairwise(n: int, length: int, limbs: int) -> dict[str, float]:
    """The one-exchange protocol's core: key agreement of all sites (once per run), one site's
    masking (n − 1 pairwise masks), and the coordinator's sum of n masked vectors."""
    names = [f"s{i:02d}" for i in range(n)]
    sites = {name: PairwiseMasker(name) for name in names}
    keys = {name: site.public_key for name, site in sites.items()}
    session = secrets.token_bytes(16)
    t0 = time.perf_counter()
    for site in sites.values():
        site.agree(session, keys)
    t1 = time.perf_counter()
    label = MaskLabel(1, 1, "bench", length, limbs, -60, 60, n)
    vector = ring.zeros(length, limbs)
    masked, seconds = [], []
    for site in sites.values():
        started = time.perf_counter()
        masked.append(site.mask(label, vector))
        seconds.append(time.perf_counter() - started)
    t2 = time.perf_counter()
    total = ring.total(masked)
    t3 = time.perf_counter()
    assert not total.any()  # the masks cancel
    return {"agree": t1 - t0, "mask": float(np.median(seconds)), "sum": t3 - t2}


def parts(n: int, length: int, repeat: int) -> str:
    """One secure round's CPU per part, in one process (``time.process_time``, the least of
    ``repeat`` runs): a site's flatten, encode, masks and wire encoding of its ``MaskedSum``;
    the coordinator's decoding of n such messages, their sum and the decoding of the sum. Runs
    against older trees too (put one on PYTHONPATH): it uses only the public API."""
    import inspect

    from fedflow.runtime.secure import decode_sum, majority, propose
    from fedflow.secure import FixedPoint, sum_vectors
    from fedflow.secure.layout import flatten
    from fedflow.wire import LayoutField, MaskedSum, MessageCodec

    names = [f"s{i:02d}" for i in range(n)]
    sites = {name: PairwiseMasker(name) for name in names}
    keys = {name: site.public_key for name, site in sites.items()}
    session = secrets.token_bytes(16)
    sparse = "threshold" in inspect.signature(PairwiseMasker.agree).parameters
    for site in sites.values():
        site.agree(session, keys, majority(n)) if sparse else site.agree(session, keys)  # type: ignore[call-arg]
    reply = Vector(values=np.random.default_rng(0).standard_normal(length))

    def least(f: Any) -> tuple[float, Any]:
        best, out = float("inf"), None
        for _ in range(repeat):
            started = time.process_time()
            out = f()
            best = min(best, time.process_time() - started)
        return best * 1e3, out

    t_flat, flat = least(lambda: flatten(reply))
    assert flat.range is not None
    spec = propose(FixedPoint.agree([flat.range], n))
    t_enc, encoded = least(lambda: flat.encode(spec))
    counter = iter(range(1, 10**9))

    def mask() -> np.ndarray:
        label = MaskLabel(next(counter), 1, "add", length, spec.limbs, spec.lsb, spec.msb, n)
        return sites["s00"].mask(label, encoded)

    t_mask, masked = least(mask)
    codec = MessageCodec()
    message = MaskedSum(
        round=1,
        counter=1,
        layout=[LayoutField("values", "float64", [length])],
        lsb=flat.range[0],
        msb=flat.range[1],
        vector=masked,
    )
    t_wire, raw = least(lambda: codec.encode(message))
    t_read, _ = least(lambda: [codec.decode(raw) for _ in range(n)])
    t_sum, total = least(lambda: sum_vectors([masked] * n))
    t_dec, _ = least(lambda: decode_sum("add", Vector, flat.layout, spec, total, "s00"))
    peers = len(getattr(sites["s00"], "neighbours", ())) or n - 1
    site = t_flat + t_enc + t_mask + t_wire
    return (
        f"| {n} | {length:,} | {spec.limbs} | {peers} | {t_flat:.3f} | {t_enc:.3f} "
        f"| {t_mask:.3f} | {t_wire:.3f} | {site:.3f} | {t_read:.3f} | {t_sum:.3f} "
        f"| {t_dec:.3f} | {t_read + t_sum + t_dec:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["rounds", "core", "parts"], default="rounds")
    parser.add_argument("--full", action="store_true", help="also run 50 sites × 10^6")
    parser.add_argument("--limbs", type=int, nargs="+", default=[1, 2], help="core: ring widths")
    parser.add_argument("--dropout", action="store_true", help="rounds: dropout-tolerant protocol")
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 50], help="rounds: sites")
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[10, 10_000, 1_000_000],
        help="rounds: vector lengths",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds: runs of each mode, alternately (the least)"
    )
    args = parser.parse_args()
    if args.what == "parts":
        print(
            "| sites | length | limbs | masks | flatten | encode | masks | wire | site "
            "| coordinator: read n | sum | decode | coordinator |"
        )
        print(
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        for n in args.sites:
            for length in args.lengths:
                print(parts(n, length, args.repeat if args.repeat > 1 else 20), flush=True)
        return
    if args.what == "rounds":
        rounds_table(args.full, args.dropout, tuple(args.sites), args.repeat, tuple(args.lengths))
        return
    print(
        "| sites | length | ring bits | keys + shares, all sites | mask, one site | unmask "
        "| unmask, 1 dropped | one exchange: keys, all sites (once a run) | mask, one site | sum |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (3, 10, 50):
        for length in (10, 10_000, 1_000_000):
            for limbs in args.limbs:
                if n == 50 and length == 1_000_000 and not args.full:
                    print(f"| {n} | {length:,} | {64 * limbs} | skipped (--full) | | | | | | |")
                    continue
                plain = run(n, length, limbs, drop=False)
                dropped = run(n, length, limbs, drop=True)
                fast = pairwise(n, length, limbs)
                print(
                    f"| {n} | {length:,} | {64 * limbs} | {plain['setup'] * 1e3:.1f} ms "
                    f"| {plain['mask'] * 1e3:.2f} ms | {plain['unmask'] * 1e3:.1f} ms "
                    f"| {dropped['unmask'] * 1e3:.1f} ms | {fast['agree'] * 1e3:.1f} ms "
                    f"| {fast['mask'] * 1e3:.2f} ms | {fast['sum'] * 1e3:.1f} ms |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
