"""Warm flow-run starts: a process that has paid the heavy imports once forks each flow run.

A Prefect process worker starts every flow run as a new `python -m prefect.engine`: pandas,
scikit-learn, MLflow, Great Expectations, Evidently and Prefect itself are imported again each time
(10-25 s on two cores before the run does any work). The stack instead gives each worker a *warm
starter* (`python -m driftloop.warm serve SOCKET`) that imports those libraries once and then
forks a child per flow run, and sets the work pool's command to the thin client
(`python -m driftloop.warm`), which the worker starts as the flow run's process:

- the client (standard library only, ~50 ms) hands its standard streams, environment, working
  directory and arguments to the starter over a Unix socket; the starter forks, and the child runs
  exactly what `python -m prefect.engine` runs, with those streams, environment and directory;
- the client stays the run's process for the worker: a signal it gets (a cancel) is passed on to
  the child, and it exits with the child's exit code (killed by a signal: the same signal);
- the client killed (`kill -9`, its worker or machine gone): the child sees its socket close and
  kills itself, so no run goes on without a process the worker knows of;
- no starter (`DRIFTLOOP_WARM_SOCKET` unset, nothing listening, a starter stopped): the client
  becomes `python -m prefect.engine` itself (a cold start), so a run never fails for want of one.

Only third-party libraries are preloaded: the project's own modules (`flows`, `driftloop`) are
imported fresh by each run, so changed project code is picked up without restarting anything; a
library upgrade needs the starter restarted (`driftloop stack down` / `up`).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

SOCKET_ENV = "DRIFTLOOP_WARM_SOCKET"
ENGINE = "prefect.engine"  # what `python -m` runs for a flow run
# what a flow run of the project imports on its way (third-party only: see the module's note)
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow",
    "scipy.stats",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.preprocessing",
    "sklearn.calibration",
    "sklearn.metrics",
    "sklearn.model_selection",
    "statsmodels.api",
    "sqlalchemy",
    "psycopg2",
    "yaml",
    "pydantic",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.tracking",
    "great_expectations",
    "evidently",
    "evidently.presets",
    "dvc.api",
    "dvc.repo",
    "prefect",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.deployments.steps",
    "prefect.client.orchestration",
    "prefect.runner.storage",
)
_HEADER = struct.Struct("!I")
_STREAMS = 3


# -- the client: the flow run's process as the worker sees it -------------------------------------


def _cold(argv: list[str]) -> None:
    """Become `python -m prefect.engine ARGS` (no starter to ask)."""
    module = os.environ.get("DRIFTLOOP_WARM_MODULE", ENGINE)
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def client(argv: list[str]) -> int:
    """Run one flow run through the warm starter named by `DRIFTLOOP_WARM_SOCKET`."""
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        _cold(argv)
        return 1  # not reached: exec
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(sock, [_HEADER.pack(len(request)) + request], list(range(_STREAMS)))
        started = _read_line(sock)
    except OSError:
        started = None
    if started is None or not started.startswith("pid "):
        sock.close()
        print(f"driftloop.warm: no warm starter at {path}: a cold start", file=sys.stderr)
        _cold(argv)
        return 1  # not reached: exec
    child = int(started.split()[1])

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(f"sig {signum}\n".encode())

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    while True:
        try:
            line = _read_line(sock)
        except InterruptedError:
            continue
        except OSError:
            line = None
        if line is None:
            print(f"driftloop.warm: flow run process {child} ended without a code", file=sys.stderr)
            return 1
        if line.startswith("exit "):
            code = int(line.split()[1])
            if code < 0:  # killed by a signal: end the same way
                with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler
                    signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
                time.sleep(1)
                return 128 - code
            return code


def _read_line(sock: socket.socket) -> str | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return None
        data += chunk
    return data.decode().strip()


# -- the starter ---------------------------------------------------------------------------------


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, str]:
    """Import the heavy libraries once; a module that will not import is named, not fatal."""
    import importlib

    failed: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional library missing: the runs import what they need
            failed[name] = f"{exc.__class__.__name__}: {exc}"
    return failed


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    message, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, _STREAMS)
    if len(message) < _HEADER.size:
        raise OSError("short request")
    (size,) = _HEADER.unpack(message[: _HEADER.size])
    body = message[_HEADER.size :]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise OSError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def serve(path: str | Path, modules: tuple[str, ...] = PRELOAD, module: str = ENGINE) -> int:
    """Listen on `path` and fork a run of `python -m MODULE` per request, until SIGTERM or
    SIGINT."""
    started = time.monotonic()
    failed = preload(modules)
    for name, why in failed.items():
        print(f"driftloop.warm: not preloaded {name}: {why}", file=sys.stderr)
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    owner = os.getpid()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    stopping: list[int] = []
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda signum, _f: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _f: stopping.append(signum))
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    print(
        f"driftloop.warm: ready on {path} after {time.monotonic() - started:.1f} s "
        f"({len(modules) - len(failed)} libraries preloaded)",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stopping:
            for key, _events in selector.select(timeout=5):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):  # a byte per signal; select
                        wake_r.recv(4096)  # wakes again if more are left
                    continue
                conn, _ = listener.accept()
                pid = _fork_run(conn, module, (listener, wake_r, wake_w), selector)
                if pid is not None:
                    children[pid] = conn
            _reap(children)
    finally:
        if os.getpid() == owner:
            path.unlink(missing_ok=True)
            for pid in children:  # runs in flight end with their starter's stack part
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    return 0


def _reap(children: dict[int, socket.socket]) -> None:
    """Collect ended children; tell each one's client how it ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def _fork_run(
    conn: socket.socket,
    module: str,
    own: tuple[socket.socket, ...],
    selector: selectors.BaseSelector,
) -> int | None:
    try:
        conn.settimeout(10)
        request, fds = _recv_request(conn)
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        print(f"driftloop.warm: a request was dropped: {exc}", file=sys.stderr, flush=True)
        conn.close()
        return None
    if len(fds) != _STREAMS:
        conn.close()
        for fd in fds:
            os.close(fd)
        return None
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.sendall(f"pid {pid}\n".encode())
        return pid
    # the child: becomes the flow run (never returns)
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        selector.close()
        for sock in own:
            sock.close()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        code = _run_child(conn, request, fds, module)
    finally:
        os._exit(code)


def _run_child(conn: socket.socket, request: dict[str, Any], fds: list[int], module: str) -> int:
    import atexit
    import runpy
    import threading

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [sys.argv[0], *request["argv"]]

    def watch() -> None:
        """Signals the client passes on; its end closing (the client killed) ends the run."""
        while True:
            line = _read_line(conn)
            if line is None:
                os.kill(os.getpid(), signal.SIGKILL)
                return
            if line.startswith("sig "):
                os.kill(os.getpid(), int(line.split()[1]))

    threading.Thread(target=watch, name="driftloop-warm-client", daemon=True).start()
    if "prefect.context" in sys.modules:  # the run's settings, not the starter's
        sys.modules["prefect.context"].refresh_global_settings_context()
    sys.modules.pop(module, None)  # run as __main__, as `python -m` would
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()  # what interpreter exit would run: logs and events flushed
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m driftloop.warm serve")
        parser.add_argument("socket")
        parser.add_argument("--module", default=ENGINE, help="what each run runs as `-m`")
        parser.add_argument("--preload", default=None, help="comma-separated modules")
        given = parser.parse_args(args[1:])
        preloads = tuple(filter(None, given.preload.split(","))) if given.preload else PRELOAD
        return serve(given.socket, preloads, given.module)
    return client(args)


if __name__ == "__main__":
    sys.exit(main())
