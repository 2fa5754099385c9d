"""The warm starter (`driftloop.warm`): a forked run gets the client's streams, environment,
working directory and arguments; exit codes and signals pass both ways; a killed client ends its
run; with no starter the client starts cold. The real flow runs through it in the fault suite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.warm import SOCKET_ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    sock = tmp_path_factory.mktemp("warm") / "w.sock"
    log = sock.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftloop.warm",
                "serve",
                str(sock),
                "--module",
                "tests.warm_target",
                "--preload",
                "json,decimal",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield sock
    proc.terminate()
    assert proc.wait(10) == 0
    assert not sock.exists()


def _client(sock: Path | str, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop.warm", *args],
        cwd=cwd,
        env={
            **os.environ,
            SOCKET_ENV: str(sock),
            "DRIFTLOOP_WARM_MODULE": "tests.warm_target",
            "PYTHONPATH": str(ROOT),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_forked_run_gets_the_clients_streams_environment_directory_and_code(
    starter: Path, tmp_path: Path
) -> None:
    proc = _client(starter, "report", "x y", cwd=tmp_path, WARM_PROBE="p1", WARM_EXIT="3")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    report = json.loads(out)
    assert report["argv"] == ["report", "x y"]
    assert report["cwd"] == str(tmp_path)
    assert report["env"] == "p1"
    assert report["pid"] != proc.pid  # forked by the starter, not the client itself
    assert "to stderr" in err and "cold start" not in err


def test_a_signal_to_the_client_reaches_the_run(starter: Path) -> None:
    proc = _client(starter, "term")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("sleeping")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert "got SIGTERM" in out and proc.returncode == 7


def test_a_run_killed_by_a_signal_ends_its_client_the_same_way(starter: Path) -> None:
    proc = _client(starter, "sleep")
    assert proc.stdout is not None
    child = int(proc.stdout.readline().split()[1])
    os.kill(child, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_client_ends_its_run(starter: Path) -> None:
    proc = _client(starter, "sleep")
    assert proc.stdout is not None
    child = int(proc.stdout.readline().split()[1])
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and _state(child) != "Z":
        assert time.monotonic() < deadline, "the run outlived its client"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_without_a_starter_the_client_starts_cold(tmp_path: Path) -> None:
    proc = _client(tmp_path / "nobody.sock", "report", WARM_EXIT="0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "cold start" in err
    assert json.loads(out)["pid"] == proc.pid  # the client became the run itself
