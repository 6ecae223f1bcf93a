"""The local fork server: one Python that has imported the node agent forks each local site.

Starting a hundred local sites as fresh interpreters costs a hundred imports of numpy and the
agent (about 0.2 s of CPU each); forking a process that has already imported them costs a few
milliseconds. Each site is still its own OS process running the same agent loop as a remote site,
on a socket that serves as its stdin and stdout.

Control protocol (a SOCK_SEQPACKET socket inherited as ``argv[1]``, one JSON object a packet):

    {"op": "preload", "modules": [MODULE, ...]}                         ->  {"loaded": [...]}
    {"op": "spawn", "site": NAME, "args": [...]} + fds [channel, log]  ->  {"pid": PID}
    {"op": "status", "pid": PID}                                        ->  {"status": CODE | null}

``status`` is the child's exit status once it has ended (negative: killed by that signal). The
server exits when the coordinator closes the control socket; its children notice (their parent
is gone) and exit too.

Each site runs under the ``SCHED_BATCH`` policy (Linux): a site's work is computation, the
coordinator's is to hand out tasks and gather replies as they come. Under the default policy the
site woken by its task preempts the coordinator mid-way through sending the others, so on a
machine with fewer cores than sites the tasks went out staggered: with 10 sites training on 2
cores the coordinator's overhead per round was 10.8 ms, and 6.9 ms under SCHED_BATCH (medians of
3 runs each, alternated; benchmarks/README.md, "session 11"). Nothing else changes: a batch
process gets its full share of the CPU.

``preload``, before the first spawn (refused after it): libraries every site of this run imports
in its first round (a training study's torch: some 2-5 s of CPU per site), imported here once
before the first fork so that every site shares them. Only import: nothing here runs an operation that would start
a library's thread pool before a fork (torch gets fedflow's deterministic settings, one thread,
as each site would set them).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys

import fedflow.apps.base  # noqa: F401  (imported once here, shared by every forked site)
import fedflow.apps.linear  # noqa: F401
import fedflow.apps.logistic  # noqa: F401
import fedflow.apps.stats  # noqa: F401
import fedflow.node.agent as agent

# The data path (pyarrow's CSV reader and compute kernels, loaded lazily) runs once here on a
# tiny table, so every forked site shares it. Sites never import pandas: Arrow arrays become
# numpy through their buffers (pyarrow's own to_numpy would import it, 0.45 s per site).
agent.warm_up()

PRELOADABLE = frozenset({"torch", "safetensors", "sklearn", "scipy", "numpy"})
"""Packages the fork server may import for its sites (libraries that start no thread or process
when imported); anything else a site imports itself."""

_statuses: dict[int, int] = {}


def preload(modules: list[str]) -> list[str]:
    """Import ``modules`` (those of PRELOADABLE packages) once, before any site is forked; with
    torch, set fedflow's deterministic torch settings as a site would. Return what was imported.
    A module that fails to import is skipped: the site that needs it reports the error itself."""
    loaded = []
    for name in modules:
        if name.split(".")[0] not in PRELOADABLE:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 - the site imports it again and says what went wrong
            continue
        loaded.append(name)
    if "torch" in sys.modules:
        try:
            import fedflow.training.app  # noqa: F401  (the app module the sites load)
            from fedflow.training.engine import ready_to_train

            ready_to_train()  # imports and two settings: no operation, no thread started
        except Exception:  # noqa: S110 - the sites set it themselves, as without a preload
            pass
    return loaded


def _reap(*_: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _statuses[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child(control: socket.socket, channel: int, log: int, site: str, args: list[str]) -> None:
    control.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(channel, 0)
    os.dup2(channel, 1)
    os.dup2(log, 2)
    os.close(channel)
    os.close(log)
    code = 1
    try:
        code = agent.main(["--site", site, *args])
    finally:
        sys.stdout.flush()
        os._exit(code)


def serve(control: socket.socket) -> int:
    """Answer spawn and status requests until the coordinator closes the control socket; return 0."""
    signal.signal(signal.SIGCHLD, _reap)
    # The coordinator may close the control socket at any moment (a run that fails while sites
    # start): that ends the server quietly, never with a traceback on the run's terminal.
    with contextlib.suppress(OSError):  # BrokenPipeError, ConnectionResetError: it is gone
        _serve(control)
    return 0


def _serve(control: socket.socket) -> None:
    forked = False
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 65536, 2)
        except ConnectionError:
            return
        if not data:
            return
        request = json.loads(data)
        modules = request.get("modules")
        if request.get("op") == "preload" and not fds and not forked and isinstance(modules, list):
            control.send(json.dumps({"loaded": preload([str(m) for m in modules])}).encode())
        elif request.get("op") == "spawn" and len(fds) == 2:
            forked = True
            pid = os.fork()
            if pid == 0:
                _child(
                    control,
                    fds[0],
                    fds[1],
                    str(request["site"]),
                    [str(a) for a in request.get("args", [])],
                )
            with contextlib.suppress(AttributeError, OSError):  # SCHED_BATCH: Linux only
                os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))  # before the reply
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"pid": pid}).encode())
        elif request.get("op") == "status":
            _reap()
            control.send(json.dumps({"status": _statuses.get(int(request["pid"]))}).encode())
        else:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": "bad request"}).encode())


if __name__ == "__main__":
    code = serve(socket.socket(fileno=int(sys.argv[1])))
    # os._exit, not sys.exit: the server has nothing left to write, and a normal interpreter exit
    # tears down pyarrow's thread pool (started by warm_up) under its still-running workers now
    # and then: libstdc++ then prints "terminate called without an active exception" on the
    # run's terminal (apache/arrow#34314; a run that failed at once showed it in 1 of 5)
    sys.stderr.flush()
    os._exit(code)
