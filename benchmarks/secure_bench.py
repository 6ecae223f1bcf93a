"""Micro-benchmark of the secure-aggregation core (fedflow.secure), in one process.

For n sites × vector length L, in the 64-bit ring (1 limb) and the exact 128-bit ring (2 limbs):
the key exchange and share sealing of all sites (steps 1–2), one site's masking (step 3: n − 1
pairwise masks and its self mask), and the coordinator's unmasking (sum of n masked vectors and
removal of n self masks; step 4 without and with one dropped site). No processes, no network:
the cost of the cryptography and the ring arithmetic only.

    python benchmarks/secure_bench.py            # 3, 10, 50 sites × 10, 10^4, 10^6 (skips 50 × 10^6)
    python benchmarks/secure_bench.py --full     # also 50 sites × 10^6 (minutes, ~1 GB RAM)
"""

from __future__ import annotations

import argparse
import secrets
import time

import numpy as np

from fedflow.secure import CoordinatorAggregation, Session, SiteAggregation, ring


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run 50 sites × 10^6")
    parser.add_argument("--limbs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(
        "| sites | length | ring bits | keys + shares, all sites | mask, one site | unmask | unmask, 1 dropped |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (3, 10, 50):
        for length in (10, 10_000, 1_000_000):
            for limbs in args.limbs:
                if n == 50 and length == 1_000_000 and not args.full:
                    print(f"| {n} | {length:,} | {64 * limbs} | skipped (--full) | | | |")
                    continue
                plain = run(n, length, limbs, drop=False)
                dropped = run(n, length, limbs, drop=True)
                print(
                    f"| {n} | {length:,} | {64 * limbs} | {plain['setup'] * 1e3:.1f} ms "
                    f"| {plain['mask'] * 1e3:.2f} ms | {plain['unmask'] * 1e3:.1f} ms "
                    f"| {dropped['unmask'] * 1e3:.1f} ms |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
