"""fedflow over SSH: real sshd sites (network namespaces, needs root), measured against local sites.

    sudo python benchmarks/ssh_bench.py [--repeat 5] [--cold-cache]

Measures, on three sshd sites started here (tests/ssh/sshd.py):

* preparing a fresh site offline (venv + uploaded wheels); with ``--cold-cache`` this includes
  building the coordinator's wheel cache first (an empty cache folder);
* reusing a prepared site (connect + probe + agent start);
* per-round overhead: median round exchange time over SSH minus on local sites (quickstart
  study), next to the raw network round trip and an SSH channel echo;
* the quickstart study (3 sites, logistic regression) wall time over SSH vs on local sites.

Figures go to standard output as Markdown table rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import QUICKSTART, SITES  # noqa: E402
from tests.ssh.sshd import SSHLab, ensure_sshd, ssh_quickstart  # noqa: E402

from fedflow._version import __version__  # noqa: E402
from fedflow.connectors.ssh import SSHConnector  # noqa: E402
from fedflow.connectors.wheel import cache_dir  # noqa: E402
from fedflow.runtime import arun_study  # noqa: E402
from fedflow.study.load import load_study, study_from_dict  # noqa: E402
from fedflow.wire import PROTOCOL_VERSION, Hello, MessageCodec  # noqa: E402

codec = MessageCodec()


async def _start_and_greet(study, index: int, log: Path) -> dict[str, float]:
    conn = SSHConnector(study.clients[index], study, log_path=log)
    began = time.perf_counter()
    try:
        await conn.start()
        await conn.send(
            codec.encode(Hello(protocol=PROTOCOL_VERSION, version=__version__, site="x"))
        )
        await conn.receive(60)
        total = time.perf_counter() - began
        return {"total": total, **conn.timings}
    finally:
        await conn.close()


async def _channel_rtt(lab: SSHLab, sites: int, rounds: int = 300) -> float:
    """Median time for a 200-byte message to go out and back through ``cat`` on ``sites`` sites."""
    conns = [
        await asyncssh.connect(
            s.host,
            s.port,
            username=s.user,
            client_keys=[str(lab.client_key)],
            known_hosts=str(lab.known_hosts),
        )
        for s in lab.sites[:sites]
    ]
    try:
        procs = [await c.create_process("cat", encoding=None) for c in conns]

        async def one(p) -> None:
            p.stdin.write(b"x" * 200)
            await p.stdout.readexactly(200)

        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            await asyncio.gather(*(one(p) for p in procs))
            times.append(time.perf_counter() - began)
        for p in procs:
            p.stdin.write_eof()
        return statistics.median(times)
    finally:
        for c in conns:
            c.close()


def _tcp_rtt(host: str, port: int) -> float:
    began = time.perf_counter()
    with socket.create_connection((host, port), timeout=5):
        return time.perf_counter() - began


async def _study_once(study, out: Path) -> tuple[float, list[float]]:
    began = time.perf_counter()
    await arun_study(study, out=out, force=True, command=["bench"])
    wall = time.perf_counter() - began
    metrics = json.loads((out / "metrics.json").read_text())
    return wall, [r["exchange_seconds"] for r in metrics["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold-cache", action="store_true", help="start from an empty wheel cache")
    args = parser.parse_args()
    why = ensure_sshd()
    if why:
        sys.exit(f"cannot benchmark: {why}")
    warm_cache = cache_dir().parent
    work = Path(tempfile.mkdtemp(prefix="fedflow-ssh-bench-"))
    home = work / "home"
    (home / ".config" / "fedflow").mkdir(parents=True)
    os.environ["HOME"] = str(home)
    os.environ["XDG_CONFIG_HOME"] = str(home / ".config")
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache" if args.cold_cache else warm_cache)
    lab = SSHLab(work / "lab").start(len(SITES))
    rows: list[str] = [
        f"sites: {lab.mode} ({len(lab.sites)} sshd), fedflow {__version__}, cache {cache_dir()}"
    ]
    try:
        (home / ".config" / "fedflow" / "known_hosts").write_text(lab.known_hosts.read_text())
        study = study_from_dict(
            {
                "name": "bench",
                "app": "mean",
                "clients": [s.client_entry(lab.client_key) for s in lab.sites],
            }
        )
        fresh = asyncio.run(_start_and_greet(study, 0, work / "fresh.log"))
        rows.append(
            f"| fresh site, offline (venv + wheels){', cold wheel cache (built here first)' if args.cold_cache else ''} "
            f"| {fresh['prepare']:.1f} s prepare, {fresh['total']:.1f} s to first Welcome |"
        )
        reuse = [
            asyncio.run(_start_and_greet(study, 0, work / "reuse.log")) for _ in range(args.repeat)
        ]
        rows.append(
            "| reuse a prepared site (connect + probe + agent start + Hello) "
            f"| median {statistics.median(r['total'] for r in reuse) * 1000:.0f} ms "
            f"(connect {statistics.median(r['connect'] for r in reuse) * 1000:.0f} ms, "
            f"probe {statistics.median(r['prepare'] for r in reuse) * 1000:.0f} ms) |"
        )

        async def prepare_rest() -> None:
            await asyncio.gather(*(_start_and_greet(study, i, work / f"p{i}.log") for i in (1, 2)))

        asyncio.run(prepare_rest())
        ssh_folder, local_folder = work / "ssh", work / "local"
        ssh_folder.mkdir()
        local_folder.mkdir()
        ssh_study = load_study(ssh_quickstart(lab, ssh_folder, workdir=None))
        for name in SITES:
            shutil.copy(QUICKSTART / f"{name}.csv", local_folder / f"{name}.csv")
        local_study = load_study(
            shutil.copy(QUICKSTART / "study.toml", local_folder / "study.toml")
        )
        asyncio.run(_study_once(ssh_study, work / "warm"))  # data staged once, as on a real site
        walls: dict[str, list[float]] = {"local": [], "ssh": []}
        exchanges: dict[str, list[float]] = {"local": [], "ssh": []}
        for i in range(args.repeat):
            for kind, s in (("local", local_study), ("ssh", ssh_study)):
                wall, ex = asyncio.run(_study_once(s, work / f"run-{kind}-{i}"))
                walls[kind].append(wall)
                exchanges[kind].extend(ex)
        lw, sw = statistics.median(walls["local"]), statistics.median(walls["ssh"])
        rows.append(
            f"| quickstart, 3 sites, wall time (median of {args.repeat}) "
            f"| local {lw:.2f} s, SSH {sw:.2f} s, ratio {sw / lw:.2f} |"
        )
        le, se = statistics.median(exchanges["local"]), statistics.median(exchanges["ssh"])
        rtt = statistics.median(_tcp_rtt(lab.sites[0].host, lab.sites[0].port) for _ in range(50))
        rows.append(
            f"| network round trip to a site (TCP connect, median of 50) | {rtt * 1000:.3f} ms |"
        )
        for n in (1, 3):
            rows.append(
                f"| SSH channel echo, 200 bytes, {n} site(s) at once (median of 300) "
                f"| {asyncio.run(_channel_rtt(lab, n)) * 1000:.2f} ms |"
            )
        rows.append(
            f"| round exchange time (median over {len(exchanges['ssh'])} rounds) "
            f"| local {le * 1000:.2f} ms, SSH {se * 1000:.2f} ms, overhead {(se - le) * 1000:.2f} ms |"
        )
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
