"""``fcauto``: drive FeatureCloud.ai from the command line (the original fedflow's tool).

Exit codes (``fedflow.errors.ExitCode``, shared with ``fedflow``): 0 ok; 2 bad input (unknown
option, missing credentials or file); 5 the platform or a controller refused or failed, or
``monitor`` saw the run end ``failed``/``error``/``stopped``; 6 ``monitor`` timed out; 130
interrupted. Passwords and access tokens are never printed; ``create`` prints the
participant tokens, which is what it is for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Any

import httpx

from fedflow._version import __version__
from fedflow.errors import ExitCode, FedflowError, StudyError, exit_code
from fedflow.featurecloud._http import Policy, is_loopback
from fedflow.featurecloud.client import (
    DEFAULT_URL,
    SITE_FIELDS,
    FeatureCloudClient,
    list_apps,
    signup,
)
from fedflow.featurecloud.controller import DEFAULT_CONTROLLER, ControllerClient
from fedflow.featurecloud.ops import contribute, monitor, raise_for_outcome
from fedflow.featurecloud.ratelimit import DEFAULT_RATE
from fedflow.study.env import load_credentials

__all__ = ["build_parser", "main"]


def _common() -> argparse.ArgumentParser:
    """Options every subcommand accepts (also before the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    sup = argparse.SUPPRESS
    common.add_argument(
        "--json", action="store_true", default=sup, help="print one JSON object (for scripts)"
    )
    common.add_argument(
        "--url", default=sup, help=f"web API base URL (env FEATURECLOUD_URL; default {DEFAULT_URL})"
    )
    common.add_argument(
        "--controller",
        default=sup,
        help=f"local controller URL (env FEATURECLOUD_CONTROLLER; default {DEFAULT_CONTROLLER})",
    )
    common.add_argument(
        "--env",
        default=sup,
        metavar="FILE",
        help="credentials file with USER=PASSWORD lines (default ./.env)",
    )
    common.add_argument(
        "--rate",
        type=float,
        default=sup,
        help=f"requests per second (env FEATURECLOUD_RATE; default {DEFAULT_RATE:g}; more only for a local server)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=sup,
        help="log every request (never secrets)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """Return the ``fcauto`` argument parser."""
    common = _common()  # the subcommands' copy; the top level gets its own (defaults differ)
    parser = argparse.ArgumentParser(
        prog="fcauto", description="FeatureCloud automation tool", parents=[_common()]
    )
    parser.add_argument("--version", action="version", version=f"fcauto (fedflow) {__version__}")
    parser.set_defaults(json=False, url=None, controller=None, env=None, rate=None, verbose=False)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")

    def add(
        name: str, help: str, *, user: bool = True, project: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        if user:
            p.add_argument(
                "-u", "--user", required=True, help="user name on FeatureCloud (password from .env)"
            )
        if project:
            p.add_argument(
                "-p", "--project", required=True, type=int, help="FeatureCloud project ID"
            )
        return p

    create = add("create", "Create a new FeatureCloud project (as coordinator)", project=False)
    create.add_argument(
        "-t", "--tool", required=True, help="app (slug) the project runs, see list-apps"
    )
    create.add_argument(
        "-n", "--num", type=int, default=0, help="number of participant tokens to create"
    )
    join = add("join", "Join an existing FeatureCloud project")
    join.add_argument(
        "-t", "--token", required=True, help="participant token to join the project with"
    )
    mon = add("monitor", "Monitor a running FeatureCloud project")
    mon.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=60,
        help="seconds to wait for the run to end (default 60)",
    )
    mon.add_argument(
        "--interval", type=float, default=5.0, help="seconds between status queries (default 5)"
    )
    add("query", "Query FeatureCloud project status")
    con = add("contribute", "Contribute data to a FeatureCloud project")
    con.add_argument(
        "-d", "--data", required=True, nargs="+", help="files to contribute (several allowed)"
    )
    add("reset", "Reset a FeatureCloud project to status 'ready'")
    add("prep", "Set a FeatureCloud project to status 'prepare', which allows data contribution")
    add("list-apps", "List available apps on FeatureCloud", user=False, project=False)
    up = add(
        "signup",
        "Create a new user account on FeatureCloud (and optionally its site)",
        user=False,
        project=False,
    )
    up.add_argument(
        "--email", required=True, help="email address of the new user (also the user name)"
    )
    up.add_argument("--first-name", required=True)
    up.add_argument("--last-name", required=True)
    up.add_argument("--site-name", help="also register the user's site under this name")
    up.add_argument("--role", default="user", help="role of the new user (default user)")
    up.add_argument(
        "-u", "--user", help="the .env entry holding the new password (default: the email)"
    )
    for key in ("organization", "address", "zip", "city", "country", "phone"):
        up.add_argument(f"--{key}", default="", help=f"site {key}")
    dl = add("download", "Download every log and result of the project's most recent run")
    dl.add_argument("-o", "--out", required=True, help="folder to write the files into")
    return parser


class _Context:
    """What a command needs: URLs, policy, credentials, and how to print."""

    def __init__(
        self,
        args: argparse.Namespace,
        policy: Policy,
        transport: httpx.BaseTransport | None,
        controller_transport: httpx.BaseTransport | None,
    ) -> None:
        self.args = args
        self.url = args.url or os.environ.get("FEATURECLOUD_URL") or DEFAULT_URL
        self.controller_url = (
            args.controller or os.environ.get("FEATURECLOUD_CONTROLLER") or DEFAULT_CONTROLLER
        )
        self.policy = policy
        self.transport = transport
        self.controller_transport = controller_transport
        self.outcome: tuple[dict[str, Any], float] | None = None
        """``monitor``'s outcome and timeout, judged after the output is printed."""
        self._credentials: Any = None

    def password(self, user: str) -> str:
        if self._credentials is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._credentials = load_credentials(self.args.env)
            for warning in caught:
                print(f"fcauto: warning: {warning.message}", file=sys.stderr)
        return str(self._credentials.password(user))

    def web(self, user: str) -> FeatureCloudClient:
        fc = FeatureCloudClient(
            user, self.password(user), url=self.url, transport=self.transport, policy=self.policy
        )
        fc.login()
        return fc

    def controller(self) -> ControllerClient:
        return ControllerClient(
            self.controller_url, transport=self.controller_transport, policy=self.policy
        )


def _policy(args: argparse.Namespace, url: str, base: Policy | None) -> Policy:
    raw = args.rate if args.rate is not None else os.environ.get("FEATURECLOUD_RATE")
    policy = base or Policy()
    if raw is None:
        return policy
    try:
        rate = float(raw)
    except ValueError:
        raise StudyError(f"FEATURECLOUD_RATE={raw!r}: not a number") from None
    if rate <= 0:
        raise StudyError(f"--rate {rate:g}: must be positive")
    if rate > DEFAULT_RATE and not is_loopback(url):
        raise StudyError(
            f"--rate {rate:g}: more than {DEFAULT_RATE:g} requests/s is allowed only against a local server "
            f"({url} is not local)"
        )
    policy.rate = rate
    return policy


def _cmd_create(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    if a.num < 0:
        raise StudyError(f"-n {a.num}: the number of tokens cannot be negative")
    with ctx.web(a.user) as fc:
        app_id, bought = fc.ensure_app(a.tool)
        if bought:
            print(f"fcauto: added app '{a.tool}' to the apps of user '{a.user}'", file=sys.stderr)
        pid = fc.create_project_for_tool(a.tool)
        tokens = [str(fc.create_token(pid)["token"]) for _ in range(a.num)]
    lines = [f"PROJECT: {pid}", *(f"TOKEN: {t}" for t in tokens)]
    return {
        "project": pid,
        "tool": a.tool,
        "app_id": app_id,
        "bought_app": bought,
        "tokens": tokens,
    }, lines


def _cmd_join(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    with ctx.web(a.user) as fc:
        answer = fc.join(a.token)
        joined = answer.get("project") if isinstance(answer, dict) else None
        if joined is not None and int(joined) != a.project:
            print(
                f"fcauto: warning: the token belonged to project {joined}, not {a.project}",
                file=sys.stderr,
            )
        pid = int(joined) if joined is not None else a.project
        status = fc.status(pid)
    return {"user": a.user, "project": pid, "status": status}, [
        f"{a.user} joined project {pid} (status: {status})"
    ]


def _cmd_monitor(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    if a.timeout < 0 or a.interval <= 0:
        raise StudyError("monitor: --timeout must be >= 0 and --interval > 0")

    def show(status: str) -> None:
        if not a.json:
            print(f"project {a.project}: {status}", file=sys.stderr)

    with ctx.web(a.user) as fc:
        outcome = monitor(
            fc,
            a.project,
            timeout=a.timeout,
            interval=a.interval,
            clock=ctx.policy.clock,
            sleep=ctx.policy.sleep,
            on_status=show,
        )
    data = {"project": a.project, **outcome}
    ctx.outcome = (outcome, a.timeout)
    return data, [f"Project {a.project} status: {outcome['status']}"]


def _cmd_query(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    with ctx.web(a.user) as fc:
        project = fc.project(a.project)
    return {"project": a.project, "status": project["status"], "role": project.get("role")}, [
        str(project["status"])
    ]


def _cmd_contribute(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    with ctx.web(a.user) as fc, ctx.controller() as ctl:
        done = contribute(fc, ctl, a.project, a.data)
    lines = [f"{a.user} uploaded {len(done['files'])} file(s) to project {a.project} and finalized"]
    return {"user": a.user, "project": a.project, **done}, lines


def _set(ctx: _Context, status: str, verb: str) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    with ctx.web(a.user) as fc:
        fc.set_status(a.project, status)
        now = fc.status(a.project)
    return {"project": a.project, "status": now}, [f"Project {a.project} {verb} (status: {now})"]


def _cmd_list_apps(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    apps = list_apps(url=ctx.url, transport=ctx.transport, policy=ctx.policy)
    return {"apps": apps}, sorted(apps)


def _cmd_signup(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    key = a.user or a.email
    password = ctx.password(key)
    signup(
        {
            "email": a.email,
            "password": password,
            "firstName": a.first_name,
            "lastName": a.last_name,
            "role": a.role,
        },
        url=ctx.url,
        transport=ctx.transport,
        policy=ctx.policy,
    )
    lines = [f"created FeatureCloud account {a.email}"]
    data: dict[str, Any] = {"email": a.email, "site": None}
    if a.site_name:
        fields = {
            k: getattr(a, k) for k in ("organization", "address", "zip", "city", "country", "phone")
        }
        fields.update(name=a.site_name, firstName=a.first_name, lastName=a.last_name)
        assert set(fields) <= set(SITE_FIELDS)
        with FeatureCloudClient(
            a.email, password, url=ctx.url, transport=ctx.transport, policy=ctx.policy
        ) as fc:
            fc.login()
            fc.register_site(fields)
        data["site"] = a.site_name
        lines.append(f"registered site '{a.site_name}'")
    return data, lines


def _cmd_download(ctx: _Context) -> tuple[dict[str, Any], list[str]]:
    a = ctx.args
    with ctx.web(a.user) as fc:
        fc.project(a.project)  # the user must be a member; fails loudly otherwise
    with ctx.controller() as ctl:
        got = ctl.download_latest(a.project, a.out)
    files = [str(p) for p in [*got["logs"], *got["results"]]]
    data = {
        "project": a.project,
        "run": got["run"],
        "status": got.get("status"),
        "logs": [str(p) for p in got["logs"]],
        "results": [str(p) for p in got["results"]],
    }
    return data, [f"run {got['run']}: {len(files)} file(s) in {a.out}", *files]


_COMMANDS = {
    "create": _cmd_create,
    "join": _cmd_join,
    "monitor": _cmd_monitor,
    "query": _cmd_query,
    "contribute": _cmd_contribute,
    "reset": lambda ctx: _set(ctx, "ready", "reset to 'ready'"),
    "prep": lambda ctx: _set(ctx, "prepare", "set to 'prepare'"),
    "list-apps": _cmd_list_apps,
    "signup": _cmd_signup,
    "download": _cmd_download,
}


def main(
    argv: list[str] | None = None,
    *,
    policy: Policy | None = None,
    transport: httpx.BaseTransport | None = None,
    controller_transport: httpx.BaseTransport | None = None,
) -> int:
    """Run ``fcauto`` and return its exit code (tests inject the policy and transports)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fcauto: %(message)s"))
    logger = logging.getLogger("fedflow.featurecloud")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return _main(args, policy, transport, controller_transport)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _main(
    args: argparse.Namespace,
    policy: Policy | None,
    transport: httpx.BaseTransport | None,
    controller_transport: httpx.BaseTransport | None,
) -> int:
    code = 0
    try:
        url = args.url or os.environ.get("FEATURECLOUD_URL") or DEFAULT_URL
        ctx = _Context(args, _policy(args, url, policy), transport, controller_transport)
        data, lines = _COMMANDS[args.cmd](ctx)
        if ctx.outcome is not None:
            try:
                raise_for_outcome(args.project, *ctx.outcome)
            except FedflowError as exc:
                code = exit_code(exc, fcauto=True)
                print(f"fcauto: error: {exc}", file=sys.stderr)
    except FedflowError as exc:
        code = exit_code(exc, fcauto=True)
        print(f"fcauto: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit": code}))
        return code
    except KeyboardInterrupt:
        print("fcauto: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    if args.json:
        print(json.dumps({"ok": code == 0, **data}, default=str))
    else:
        for line in lines:
            print(line)
    return code


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
