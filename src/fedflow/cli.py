"""The ``fedflow`` command: run, report, compare, validate, template, apps, node, predict,
trust, site.

Every expected error is one line on stderr and a documented exit code (the one table is
``fedflow.errors.ExitCode``): 0 success, 2 bad study or input, 3 a site failed, 4 comparison
mismatch, 5 platform error, 1 internal error, 130 interrupted (143: SIGTERM). ``--debug`` adds
the traceback and changes nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fedflow._version import __version__
from fedflow.errors import ComparisonMismatch, ExitCode, FedflowError, StudyError, exit_code

if TYPE_CHECKING:
    from fedflow.connectors.forkserver import ForkServer

__all__ = ["main", "progress_observer", "study_file"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedflow",
        description="Run federated analyses across data-holding sites from one study file.",
        epilog="The original fedflow's forms still work: `fedflow -c STUDY` runs, `fedflow -t` writes a template.",
    )
    parser.add_argument("--version", action="version", version=f"fedflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run a study", description="Run a study and write its run directory."
    )
    run.add_argument("study", type=Path, help="the study file (TOML)")
    run.add_argument("--out", type=Path, help="write the run directory exactly here")
    run.add_argument("--force", action="store_true", help="allow --out to name a non-empty folder")
    run.add_argument(
        "--compare", action="store_true", help="check the result against the pooled analysis"
    )
    run.add_argument(
        "--trace",
        action="store_true",
        help="write trace.jsonl: every message the coordinator receives, decoded, in order",
    )
    run.add_argument(
        "--secure",
        action="store_true",
        help="secure aggregation, as if the study said secure = true",
    )
    run.add_argument("--json", action="store_true", help="print result.json instead of tables")
    run.add_argument(
        "--report", action="store_true", help="write report.html in the run directory at the end"
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument("--debug", action="store_true", help="show tracebacks")

    resume = sub.add_parser(
        "resume",
        help="continue an interrupted training run in its run directory",
        description="Continue a training run from its last checkpoint, in the same directory; "
        "it ends with the weights the run would have had uninterrupted.",
    )
    resume.add_argument(
        "run_dir", type=Path, help="the run directory (holds checkpoint.safetensors)"
    )
    resume.add_argument("--json", action="store_true", help="print result.json instead of tables")
    resume.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    resume.add_argument("--debug", action="store_true", help="show tracebacks")

    report = sub.add_parser(
        "report", help="write RUN_DIR/report.html: what ran, the result tables and plots"
    )
    report.add_argument("run_dir", type=Path, help="a run directory")
    report.add_argument("--debug", action="store_true")

    cmp = sub.add_parser("compare", help="print what differs between two run directories")
    cmp.add_argument("run_a", type=Path)
    cmp.add_argument("run_b", type=Path)
    cmp.add_argument("--all", action="store_true", help="list every result value")
    cmp.add_argument("--debug", action="store_true")

    val = sub.add_parser("validate", help="check a study without running it")
    val.add_argument("study", type=Path)
    val.add_argument("--debug", action="store_true")

    tpl = sub.add_parser("template", help="write a commented study template")
    tpl.add_argument("path", type=Path, nargs="?", help="file to write (default: standard output)")
    tpl.add_argument("--force", action="store_true", help="overwrite an existing file")

    apps = sub.add_parser("apps", help="list the built-in apps, or describe one")
    apps.add_argument("name", nargs="?", help="an app: print its parameters, types and defaults")

    split = sub.add_parser(
        "split",
        help="split one data file into per-site files and a study skeleton",
        description="Split DATA (CSV/TSV/Parquet) into one file per site, seeded and reproducible, "
        "and write DIR/study.toml with one [[clients]] per file.",
    )
    split.add_argument("data", type=Path)
    split.add_argument("--sites", type=int, required=True, help="number of sites")
    how = split.add_mutually_exclusive_group()
    how.add_argument("--iid", action="store_true", help="shuffled rows, equal sizes (default)")
    how.add_argument("--by", metavar="COLUMN", help="each value of COLUMN at exactly one site")
    how.add_argument("--dirichlet", type=float, metavar="ALPHA", help="label skew (with --label)")
    split.add_argument("--label", metavar="COLUMN", help="the label column of --dirichlet")
    split.add_argument("--sizes", help="iid size ratio, e.g. 2:6:12 (one part per site)")
    split.add_argument("--seed", type=int, required=True)
    split.add_argument(
        "--out", type=Path, required=True, help="folder for the files and study.toml"
    )
    split.add_argument("--min-count", type=int, default=5, help="refuse a site with fewer rows")
    split.add_argument("--force", action="store_true", help="write into a non-empty --out")
    split.add_argument("--debug", action="store_true")

    node = sub.add_parser(
        "node", help="run a node agent on stdin/stdout (started by fedflow itself)", add_help=False
    )
    node.add_argument("rest", nargs=argparse.REMAINDER)

    pred = sub.add_parser("predict", help="score new data with a model from a run directory")
    pred.add_argument("run_dir", type=Path)
    pred.add_argument("data", type=Path, nargs="+")
    pred.add_argument(
        "--out", type=Path, help="CSV file for the predictions (default: standard output)"
    )
    pred.add_argument("--debug", action="store_true")

    trust = sub.add_parser(
        "trust", help="accept and record the host keys of a study's remote sites"
    )
    trust.add_argument("study", type=Path)
    trust.add_argument("--debug", action="store_true")

    site = sub.add_parser(
        "site",
        help="the site operator's commands: check the configuration, approve code, read the log",
        description="Commands for a site operator (the site configuration of a defended agent).",
    )
    site.set_defaults(site_help=site.print_help)
    site_sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")
    config_help = (
        "the site configuration (default: $FEDFLOW_SITE_POLICY, "
        "else $XDG_CONFIG_HOME/fedflow/site-policy.toml)"
    )
    check = site_sub.add_parser(
        "check", help="validate the configuration and print what the site offers"
    )
    check.add_argument("--config", type=Path, help=config_help)
    check.add_argument("--debug", action="store_true")
    approve = site_sub.add_parser(
        "approve", help="show custom app code and record its sha256 as approved"
    )
    approve.add_argument("file", type=Path, help="the app's Python source file")
    approve.add_argument("--config", type=Path, help=config_help)
    approve.add_argument(
        "--yes", action="store_true", help="approve without asking (you have read the code)"
    )
    approve.add_argument("--debug", action="store_true")
    log_cmd = site_sub.add_parser("log", help="print the audit log, or verify its hash chain")
    log_cmd.add_argument("--verify", action="store_true", help="check the chain, line by line")
    log_cmd.add_argument("--config", type=Path, help=config_help)
    log_cmd.add_argument("--debug", action="store_true")
    return parser


def _legacy(argv: list[str]) -> list[str]:
    """Map the original fedflow's ``-c CONFIG`` / ``-t`` to ``run CONFIG`` / ``template``."""
    if argv and argv[0] in ("-c", "--config"):
        return ["run", *argv[1:]]
    if argv and argv[0].startswith("--config="):
        return ["run", argv[0].split("=", 1)[1], *argv[1:]]
    if argv and argv[0] in ("-t", "--template"):
        return ["template", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedflow`` command; returns the exit code."""
    argv = _legacy(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] == "node":
        from fedflow.node.agent import main as node_main

        return node_main(argv[1:])
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.command is None:
        _parser().print_help()
        return ExitCode.INPUT
    debug = getattr(args, "debug", False)
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        if isinstance(getattr(args, "study", None), Path):
            args.study = study_file(args.study)
        return int(_COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a run (exit 143)
        return _failed(args, exc, "interrupted", int(getattr(exc, "exit_code", exit_code(exc))))
    except FedflowError as exc:
        return _failed(args, exc, f"error: {exc}", exit_code(exc))
    except Exception as exc:
        hint = "" if debug else " (run with --debug for the traceback)"
        return _failed(
            args, exc, f"internal error: {type(exc).__name__}: {exc}{hint}", exit_code(exc)
        )


def study_file(path: Path) -> Path:
    """Return ``path``, or for a folder the study file in it (``study.toml``, else its only
    ``.toml`` file); raise StudyError for a folder without exactly one."""
    if not path.is_dir():
        return path
    if (path / "study.toml").is_file():
        return path / "study.toml"
    found = sorted(path.glob("*.toml"))
    if len(found) == 1:
        return found[0]
    hint = f"it holds {', '.join(f.name for f in found)}: name one" if found else "no .toml in it"
    raise StudyError(f"{path} is a folder, not a study file ({hint})")


def _failed(args: argparse.Namespace, exc: BaseException, line: str, code: int) -> int:
    """Report a failed command the same way with or without ``--debug`` (which adds the
    traceback): one line on stderr, the run directory (if one was written) as the last line on
    stdout, or with ``--json`` one JSON document; return ``code``."""
    if getattr(args, "debug", False):
        traceback.print_exception(exc)
    print(f"fedflow: {line}", file=sys.stderr)
    run_dir = getattr(exc, "run_dir", None)
    if getattr(args, "json", False):
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = {
            "type": type(exc).__name__,
            "message": str(exc) or type(exc).__name__,
            "site": getattr(exc, "site", None),
        }
        _print_json({"run_dir": run_dir, "status": status, "exit_code": code, "error": error})
    elif run_dir is not None:
        print(run_dir)
    return code


def _print_json(doc: dict[str, Any]) -> None:
    from fedflow.results.rundir import json_ready

    print(json.dumps(json_ready(doc), indent=2))


# -- commands ------------------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    from fedflow.connectors.forkserver import ForkServer, forkserver_wanted

    # first thing: the fork server's imports (0.4-0.7 s) run while this process imports and
    # reads the study; a study without local sites stops it unused
    forkserver = ForkServer.launch() if forkserver_wanted() else None
    try:
        return _run_command(args, forkserver)
    finally:
        if forkserver is not None:
            forkserver.kill()  # a no-op once the run has stopped it


def _run_command(args: argparse.Namespace, forkserver: ForkServer | None) -> int:
    from rich.console import Console

    from fedflow.results.report import comparison_line, result_tables
    from fedflow.runtime.run import run_study, study_warnings
    from fedflow.study import load_study

    study = load_study(args.study)
    if args.debug:
        study.debug.verbose = True
    if args.secure and not study.secure:
        try:
            study.secure = True  # validated as the key in the file would be
        except ValueError as exc:
            raise StudyError(f"{args.study}: --secure: {_first_error(exc)}") from None
    for notice in study.notices:
        print(f"fedflow: note: {notice}", file=sys.stderr)
    for warning in study_warnings(study):
        print(f"fedflow: warning: {warning}", file=sys.stderr)
    if getattr(args, "report", False):
        from fedflow.results.html_report import require_matplotlib

        require_matplotlib()  # before the run, not after it
    err = Console(stderr=True)
    observer = progress_observer(err, quiet=args.quiet or args.json)
    try:
        run = run_study(
            study,
            out=args.out,
            force=args.force,
            compare=args.compare,
            trace=args.trace,
            resume=getattr(args, "resume", None),
            observer=observer,
            command=["fedflow", *args.argv],
            forkserver=forkserver,
        )
    except FedflowError as exc:
        failed_dir = getattr(exc, "run_dir", None)
        if getattr(args, "report", False) and failed_dir:
            try:  # the report of what the failed run left
                _report_line(failed_dir)
            except FedflowError as why:
                print(f"fedflow: report not written: {why}", file=sys.stderr)
        raise
    finally:
        observer.stop()
    if getattr(args, "report", False):
        _report_line(run.dir)
    mismatch = None
    if run.comparison is not None and not run.matches:
        worst = [i for i in run.comparison["items"] if not i["match"]][:3]
        detail = "; ".join(
            f"{i['path']}: missing from the {i['missing']} result"
            if i.get("missing")
            else f"{i['path']}: {i['federated']} vs {i['centralized']}"
            for i in worst
        )
        mismatch = ComparisonMismatch(detail)
    code = int(ExitCode.MISMATCH if mismatch is not None else ExitCode.OK)
    if args.json:
        doc: dict[str, Any] = {"run_dir": run.dir, "status": run.status, "exit_code": code}
        doc.update(json.loads((run.dir / "result.json").read_text(encoding="utf-8")))
        if run.comparison is not None:
            doc["comparison"] = run.manifest.get("comparison")
        if mismatch is not None:
            doc["error"] = {"type": "ComparisonMismatch", "message": str(mismatch), "site": None}
        _print_json(doc)
    else:
        out = Console(highlight=False)
        if not out.is_terminal:
            out = Console(highlight=False, width=120)
        for table in result_tables(run.result, app=run.app):
            out.print(table)
        for note in run.notes:
            out.print(f"note: {note}", style="yellow", soft_wrap=True)
        if run.comparison is not None:
            style = "green" if run.matches else "bold red"
            out.print(comparison_line(run.comparison), style=style, soft_wrap=True)  # one line
        print(run.dir)
    if mismatch is not None:
        print(f"fedflow: error: {mismatch}", file=sys.stderr)
    return code


def _report_line(run_dir: Path) -> None:
    from fedflow.results.html_report import write_report

    print(f"fedflow: report: {write_report(Path(run_dir))}", file=sys.stderr)


def _cmd_report(args: argparse.Namespace) -> int:
    from fedflow.results.html_report import write_report

    print(write_report(args.run_dir))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedflow.results.run_compare import compare_runs
    from fedflow.results.saved import load_run_dir

    sys.stdout.write(
        compare_runs(load_run_dir(args.run_a), load_run_dir(args.run_b), all_values=args.all)
    )
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    """``fedflow resume RUN_DIR``: ``fedflow run`` of the run's own study.toml, from its
    checkpoint, into the same directory."""
    run_dir = args.run_dir.expanduser().absolute()
    if not (run_dir / "study.toml").is_file():
        raise StudyError(f"{run_dir}: no study.toml (not a run directory?)")
    args.study, args.out, args.force, args.resume = run_dir / "study.toml", None, False, run_dir
    args.compare = args.trace = args.secure = False
    return _cmd_run(args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedflow.runtime.run import study_warnings
    from fedflow.study import load_study
    from fedflow.validate import validate_study

    console = Console(highlight=False, soft_wrap=True)
    report = validate_study(args.study)
    for line in report.lines:
        console.print(line)
    loaded = load_study(args.study)
    for notice in loaded.notices:
        print(f"fedflow: note: {notice}", file=sys.stderr)
    for warning in study_warnings(loaded):
        print(f"fedflow: warning: {warning}", file=sys.stderr)
    console.print(
        f"[green]✓[/green] {args.study} is valid"
        + (f" ({report.unchecked} remote site(s) checked at run time)" if report.unchecked else "")
    )
    return 0


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()
        if first:
            return str(first[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


def _cmd_template(args: argparse.Namespace) -> int:
    from fedflow.study.template import TEMPLATE

    if args.path is None:
        sys.stdout.write(TEMPLATE)
        return 0
    if args.path.exists() and not args.force:
        raise StudyError(f"{args.path} exists (use --force to overwrite it)")
    try:
        args.path.write_text(TEMPLATE, encoding="utf-8")
    except OSError as exc:
        raise StudyError(f"cannot write {args.path}: {exc.strerror or exc}") from None
    print(f"wrote {args.path}", file=sys.stderr)
    return 0


def _cmd_apps(args: argparse.Namespace) -> int:
    from fedflow.apps import available_apps, get_app

    if args.name:
        from fedflow.results.appinfo import describe_app

        sys.stdout.write(describe_app(args.name))
        return 0
    for name in available_apps():
        try:
            app = get_app(name)
        except FedflowError:
            continue
        doc = (type(app).__doc__ or "").strip().splitlines()[0] if type(app).__doc__ else ""
        print(f"{name:22} {doc}")
        support = type(app).secure
        print(
            f"{'':22} secure = true: "
            + ("yes" if support is True else f"no ({support or 'not declared'})")
        )
    from fedflow.study.original import TWINS, UNTWINNED

    print('FeatureCloud twins (a study\'s tool = "<FeatureCloud app>" runs the native app):')
    for tool, twin in sorted(TWINS.items()):
        print(f"{tool:22} → {twin} (reads the app's config.yml from the data list)")
    for tool, instead in sorted(UNTWINNED.items()):
        print(f"{tool:22} no twin yet: write {instead}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from fedflow.results.predict import predict

    predict(args.run_dir, list(args.data), out=args.out)
    return 0


def _cmd_trust(args: argparse.Namespace) -> int:
    from fedflow.connectors.hostkeys import fedflow_known_hosts, trust_hosts
    from fedflow.study import load_study

    study = load_study(args.study)
    results = trust_hosts(study)
    if not results:
        print(f"{args.study}: no remote sites (no client has a hostname)")
        return 0
    for site, host, fingerprint, status in results:
        print(f"{site}  {host}  {fingerprint}  {status}")
    if any(r.status == "added" for r in results):
        print(f"recorded in {fedflow_known_hosts()}", file=sys.stderr)
    bad = [r for r in results if r.status == "changed" or r.status.startswith("unreachable")]
    return ExitCode.SITE if bad else ExitCode.OK


def _cmd_site(args: argparse.Namespace) -> int:
    from fedflow.node import siteops

    if args.site_command is None:
        args.site_help()
        return ExitCode.INPUT
    if args.site_command == "check":
        print(siteops.check(args.config))
        return 0
    if args.site_command == "log":
        print(siteops.show_log(args.config, check_chain=args.verify))
        return 0
    return _site_approve(args)


def _site_approve(args: argparse.Namespace) -> int:
    """Show the file's code and sha256; record it after a yes on a terminal (or ``--yes``)."""
    from fedflow.errors import PolicyError
    from fedflow.node import siteops
    from fedflow.node.siteconfig import source_hash

    try:
        source = args.file.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    code = source_hash(source)
    print(f"--- {args.file} ---")
    text = source.decode("utf-8", "replace")
    print(text, end="" if text.endswith("\n") or not text else "\n")
    print(f"--- end of {args.file} ---")
    print(f"sha256: {code}")
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            print(
                "fedflow: error: not approved: no terminal to confirm on "
                "(read the code above, then add --yes)",
                file=sys.stderr,
            )
            return ExitCode.INPUT
        try:
            answer = input(f"approve {args.file.name} ({code[:19]}…) to run at this site? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("fedflow: not approved; nothing recorded", file=sys.stderr)
            return ExitCode.INPUT
    print(siteops.approve(args.file, args.config))
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from fedflow.study.split import parse_sizes, split_file

    if args.dirichlet is not None and not args.label:
        raise StudyError("--dirichlet ALPHA needs --label COLUMN")
    if args.label and args.dirichlet is None:
        raise StudyError("--label is for --dirichlet ALPHA")
    if args.sizes and (args.by or args.dirichlet is not None):
        raise StudyError("--sizes is for --iid splits")
    mode: Literal["iid", "by", "dirichlet"] = (
        "by" if args.by else "dirichlet" if args.dirichlet is not None else "iid"
    )
    done = split_file(
        args.data,
        args.out,
        sites=args.sites,
        seed=args.seed,
        mode=mode,
        column=args.by or args.label,
        alpha=args.dirichlet,
        sizes=parse_sizes(args.sizes) if args.sizes else None,
        min_count=args.min_count,
        force=args.force,
    )
    for path, rows in zip(done.files, done.rows, strict=True):
        print(f"{path}  {rows} rows")
    print(f"{done.study}  (set app = ... in it, then: fedflow run {done.study})")
    return 0


_COMMANDS: dict[str, Any] = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "split": _cmd_split,
    "validate": _cmd_validate,
    "template": _cmd_template,
    "apps": _cmd_apps,
    "predict": _cmd_predict,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "trust": _cmd_trust,
    "site": _cmd_site,
}


# -- progress ------------------------------------------------------------------------------------
def progress_observer(console: Any, *, quiet: bool) -> Any:
    """Return the progress display for ``console`` (a rich Console on stderr): a live table on a
    terminal, timestamped lines otherwise, nothing when ``quiet``; call its ``stop()`` at the end."""
    from fedflow.runtime.observer import Observer

    class Plain(Observer):
        """Log lines on stderr (not a terminal)."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.steps: dict[str, int] = {}

        def _say(self, text: str) -> None:
            print(f"[{time.perf_counter() - self.t0:7.3f}s] {text}", file=sys.stderr, flush=True)

        def phase(self, name: str) -> None:
            self._say(name)

        def site(self, site: str, status: str, detail: str) -> None:
            if status in ("ready", "failed"):
                self._say(f"site {site}: {status}{f' ({detail})' if detail else ''}")

        def round_done(self, round: int, seconds: float, final: bool) -> None:
            self._say(f"round {round} done in {1000 * seconds:.1f} ms{' (final)' if final else ''}")

        def transfer(self, what: str, done: int, total: int) -> None:
            if total < 8 * 2**20:  # only large files are worth a line
                return
            step = int(4 * done / total) if total else 4
            if self.steps.get(what) != step:
                self.steps[what] = step
                self._say(f"{what}: {done / 2**20:.0f} of {total / 2**20:.0f} MiB")

        def message(self, text: str) -> None:
            self._say(text)

        def stop(self) -> None:
            pass

    class Quiet(Plain):
        def _say(self, text: str) -> None:
            pass

    class Live(Observer):
        """A live table of sites and rounds on a terminal."""

        def __init__(self) -> None:
            from rich.live import Live as RichLive

            self.sites: dict[str, tuple[str, str]] = {}
            self.round = 0
            self.last_ms = 0.0
            self.final = False
            self.phase_name = "starting"
            self.notes: list[str] = []
            self.transfers: dict[str, tuple[int, int]] = {}
            self.live = RichLive(
                self._render(), console=console, refresh_per_second=12, transient=False
            )
            self.live.start()

        def _render(self) -> Any:
            from rich.table import Table

            table = Table.grid(padding=(0, 2))
            marks = {"ready": "[green]✓[/green]", "failed": "[red]✗[/red]"}
            row = []
            for name, (status, detail) in self.sites.items():
                row.append(
                    f"{name} {marks.get(status, '…')} {status}{f' ({detail})' if detail else ''}"
                )
            for i in range(0, len(row), 3):
                table.add_row(*row[i : i + 3])
            if self.round:
                mark = "  [green]done[/green]" if self.final else ""
                table.add_row(f"round {self.round}  {self.last_ms:.1f} ms{mark}")
            else:
                table.add_row(f"[dim]{self.phase_name}…[/dim]")
            for what, (done, total) in self.transfers.items():
                if done < total:
                    table.add_row(f"{what}  {done / 2**20:.0f}/{total / 2**20:.0f} MiB")
            for note in self.notes[-3:]:
                table.add_row(f"[yellow]{note}[/yellow]")
            return table

        def _update(self) -> None:
            self.live.update(self._render())

        def phase(self, name: str) -> None:
            self.phase_name = name
            self._update()

        def site(self, site: str, status: str, detail: str) -> None:
            self.sites[site] = (status, detail)
            self._update()

        def round_done(self, round: int, seconds: float, final: bool) -> None:
            self.round, self.last_ms, self.final = round, 1000 * seconds, final
            self._update()

        def message(self, text: str) -> None:
            self.notes.append(text)
            self._update()

        def transfer(self, what: str, done: int, total: int) -> None:
            if total >= 8 * 2**20:
                self.transfers[what] = (done, total)
                self._update()

        def stop(self) -> None:
            self.live.stop()

    if quiet:
        return Quiet()
    if console.is_terminal:
        return Live()
    return Plain()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
