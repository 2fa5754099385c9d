"""The stack's process bookkeeping: which parts run, on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from driftloop.stack import StackConfig, pid_of

# a parent that starts a child, says its pid and never reaps it (an earlier `stack up`)
_PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(30)\n"
)


def _config(tmp_path: Path) -> StackConfig:
    return StackConfig(home=tmp_path, project=tmp_path)


def _record(config: StackConfig, name: str, pid: int) -> None:
    (config.home / "run").mkdir(parents=True, exist_ok=True)
    (config.home / "run" / f"{name}.pid").write_text(str(pid))


def test_a_killed_part_left_unreaped_is_not_running(tmp_path: Path) -> None:
    config = _config(tmp_path)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        _record(config, "prefect-api", child)
        assert pid_of(config, "prefect-api") == child
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_of(config, "prefect-api") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_of(config, "prefect-api") is None
        assert Path(f"/proc/{child}").exists()  # still there, a zombie: its parent never reaps
    finally:
        parent.kill()
        parent.wait()


def test_a_part_that_runs_is_running_and_one_never_started_is_not(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert pid_of(config, "worker-1") is None
    _record(config, "worker-1", os.getpid())
    assert pid_of(config, "worker-1") == os.getpid()


def test_each_worker_gets_a_warm_starter_and_the_pool_starts_runs_through_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from driftloop import stack
    from driftloop.warm import SOCKET_ENV

    monkeypatch.delenv("DRIFTLOOP_STACK_WARM", raising=False)
    config = StackConfig(home=tmp_path / "stack", project=tmp_path)
    by_name = {p.name: p for p in stack.parts(config)}
    for i in (1, 2):
        socket = str(stack.warm_socket(config, i))
        assert by_name[f"warm-{i}"].argv[-2:] == ["serve", socket]
        assert by_name[f"worker-{i}"].env[SOCKET_ENV] == socket
    command = stack.pool_template()["variables"]["properties"]["command"]["default"]
    assert command == f"{sys.executable} -m driftloop.warm"

    monkeypatch.setenv("DRIFTLOOP_STACK_WARM", "0")  # plain process workers
    names = {p.name for p in stack.parts(config)}
    assert not any(n.startswith("warm-") for n in names) and {"worker-1", "worker-2"} <= names
    assert all(SOCKET_ENV not in p.env for p in stack.parts(config))
    assert stack.pool_template()["variables"]["properties"]["command"]["default"] is None


def test_a_warm_socket_path_too_long_for_unix_moves_to_the_temp_dir(tmp_path: Path) -> None:
    from driftloop import stack

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = stack.warm_socket(StackConfig(home=deep, project=tmp_path), 1)
    assert len(os.fsencode(path)) <= 100 and path.name == "worker-1.sock"
    assert path == stack.warm_socket(StackConfig(home=deep, project=tmp_path), 2).with_name(
        "worker-1.sock"
    )
