"""``python -m fedflow.featurecloud.fake web|controller``: serve a fake by hand until interrupted."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedflow.featurecloud.fake.controller import FakeController
from fedflow.featurecloud.fake.server import FakeServer
from fedflow.featurecloud.fake.web import FakeWeb

__all__ = ["main"]

DESCRIPTION = "Fake FeatureCloud servers for tests and for trying fedflow by hand: a web API and a controller."


def _users_from(args: argparse.Namespace) -> dict[str, str]:
    users: dict[str, str] = {}
    if args.env:
        from fedflow.study.env import load_credentials

        users.update(load_credentials(args.env))
    for entry in args.user or []:
        name, sep, password = entry.partition(":")
        if not sep or not name:
            raise SystemExit(f"--user {entry.split(':')[0]}…: expected NAME:PASSWORD")
        users[name] = password
    return users


def main(argv: list[str] | None = None) -> int:
    """Serve a fake web API or a fake controller until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m fedflow.featurecloud.fake", description=DESCRIPTION
    )
    sub = parser.add_subparsers(dest="what", required=True)
    web = sub.add_parser("web", help="serve the fake web API")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument(
        "--user", action="append", metavar="NAME:PASSWORD", help="an account (repeatable)"
    )
    web.add_argument("--env", metavar="FILE", help="read accounts from a USER=PASSWORD file")
    web.add_argument(
        "--rate-limit", type=float, default=5.0, help="requests/s per user before 429 (0: off)"
    )
    web.add_argument(
        "--run-seconds", type=float, default=2.0, help="how long a run stays 'running'"
    )
    ctl = sub.add_parser("controller", help="serve a fake controller for one site")
    ctl.add_argument("--host", default="127.0.0.1")
    ctl.add_argument("--port", type=int, default=8000)
    ctl.add_argument("--web", required=True, metavar="URL", help="the (fake) web API's URL")
    ctl.add_argument(
        "--data-dir", required=True, metavar="DIR", help="holds site_info.json, uploads, workflows"
    )
    args = parser.parse_args(argv)
    server: FakeServer
    if args.what == "web":
        server = FakeWeb(
            _users_from(args),
            host=args.host,
            port=args.port,
            rate_limit=args.rate_limit or None,
            run_seconds=args.run_seconds,
        )
    else:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        server = FakeController(args.web, args.data_dir, host=args.host, port=args.port)
    server.serve_forever()
    return 0
