"""Timing harness: run a command as a new process several times; wall, CPU and peak RSS.

- `measure(cmd, repeat)`: each run is a fresh process in its own session; wall time includes
  interpreter start, imports and exit. Peak memory is of the whole process tree: the sum of the
  live processes' PSS (shared pages split between their sharers, so a forked child is not counted
  twice), sampled every `SAMPLE_S`, or the largest single process's own high-water mark (VmHWM)
  if that is higher (a short peak between two samples). Not wait4's ru_maxrss: on Linux a child
  inherits the parent's high-water mark across fork + exec, so a bare interpreter started from a
  100 MB parent reports 100 MB.
- `Spread`: median and min-max of the runs.
- `prefect_server()`: a local Prefect server on a free port with a throwaway PREFECT_HOME.
- `ProjectFactory`: a throwaway driftloop project per run (git + DVC with a local remote, the
  MLflow store migrated once and copied).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil  # in uv.lock (a dependency of the stack); reads the process tree

BIN = Path(sys.executable).parent
SAMPLE_S = 0.05
MB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    """One finished process: wall and CPU seconds (tree), peak RSS of the tree, exit code."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    load_before: float


@dataclass(frozen=True)
class Spread:
    """Median and range of a few measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, digits: int = 1) -> str:
        """`12.3 (11.9-13.0)`: the median and the range."""
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proc_kib(path: str, key: str) -> int:
    """A `Key:   123 kB` field of a /proc file, in bytes (0 if the process is gone)."""
    with contextlib.suppress(OSError, ValueError), open(path) as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _high_water(pid: int) -> int:
    """A process's own peak resident bytes since its exec (VmHWM)."""
    return _proc_kib(f"/proc/{pid}/status", "VmHWM:")


def _pss(pid: int) -> int:
    """A process's proportional set size now: its private pages plus its share of shared ones."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


class _PeakSampler(threading.Thread):
    """Samples the process tree until stopped.

    `peak` is the highest of: the sum of the live processes' PSS at one sample, and any single
    process's own high-water mark.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for proc in [self.root, *self.root.children(recursive=True)]:
                total += _pss(proc.pid)
                self.peak = max(self.peak, _high_water(proc.pid))
        self.peak = max(self.peak, total)

    def run(self) -> None:
        self.sample()
        while not self.stopped.wait(SAMPLE_S):
            self.sample()


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group a child leads (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run_once(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    errlog: Path | None = None,
    timeout: float = 3600,
) -> Run:
    """Run `cmd` to completion as a new session; stdout to `log`, stderr to `errlog` (else log)."""
    load = os.getloadavg()[0]
    with open(log or os.devnull, "wb") as out, open(errlog or os.devnull, "wb") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err if errlog else subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = _PeakSampler(proc.pid)
        sampler.start()
        timer = threading.Timer(timeout, kill_group, [proc.pid])
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # CPU of the tree (reaped descendants)
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
            sampler.stopped.set()
        wall = time.perf_counter() - began
    sampler.join()
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    kill_group(proc.pid)  # anything the run left behind in its session
    return Run(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=sampler.peak / MB,
        returncode=code,
        load_before=load,
    )


def measure(cmd: Sequence[str], repeat: int = 3, **kwargs: Any) -> list[Run]:
    """`repeat` runs of the same command (see `run_once` for the keyword arguments)."""
    return [run_once(cmd, **kwargs) for _ in range(repeat)]


def summarize(runs: Sequence[Run]) -> dict[str, Spread]:
    """Spread of wall, CPU and peak RSS over runs."""
    return {
        "wall_s": Spread.of([r.wall_s for r in runs]),
        "cpu_s": Spread.of([r.cpu_s for r in runs]),
        "peak_rss_mb": Spread.of([r.peak_rss_mb for r in runs]),
    }


# -- environment ----------------------------------------------------------------------------------


def child_env(
    extra: dict[str, str] | None = None, *, threads: int = 1, pycache: Path | None = None
):
    """A clean child environment: quiet and offline, no inherited Prefect/driftloop/MLflow target.

    `threads` pins OpenMP (on a shared 2-core machine two threads made the same CV many times
    slower); `pycache` is a private bytecode cache (this environment sets PYTHONDONTWRITEBYTECODE,
    so otherwise every process recompiles every module it imports).
    """
    from driftloop.config import QUIET_OFFLINE_ENV

    skip = ("PREFECT_", "DRIFTLOOP_", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env |= QUIET_OFFLINE_ENV
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env | (extra or {})


# -- Prefect server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prefect_server(home: Path, env: dict[str, str]) -> Iterator[str]:
    """A local `prefect server start` (own PREFECT_HOME under `home`) while the context lasts."""
    from deployments.serve import local_server

    home.mkdir(parents=True, exist_ok=True)
    server_env = env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with local_server(port=free_port(), env=server_env, timeout=180) as api_url:
        yield api_url


# -- throwaway projects ---------------------------------------------------------------------------


def _run(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout}{done.stderr}")


class ProjectFactory:
    """Throwaway driftloop projects: git + DVC (local remote) + a migrated MLflow store.

    The slow part (`git init`, `dvc init`, `mlflow db upgrade`: seconds) is done once into a
    template; each project is a copy with its own params file, remote and first commit.
    """

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env = base, env
        self.template = base / "template"
        self.count = 0
        self.template.mkdir(parents=True)
        for cmd in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "config", "user.email", "bench@driftloop.invalid"],
            ["git", "config", "user.name", "driftloop bench"],
            ["git", "config", "commit.gpgsign", "false"],
            [str(BIN / "dvc"), "init", "-q"],
            [str(BIN / "dvc"), "config", "core.analytics", "false"],
        ):
            _run(cmd, self.template, env)
        db = self.template / ".driftloop" / "mlflow.db"
        db.parent.mkdir()
        _run([sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db}"], db.parent, env)

    def new(self, params: Path, name: str | None = None) -> Path:
        """A fresh project holding `params` as params.yaml, committed, with its own DVC remote."""
        self.count += 1
        root = self.base / (name or f"project-{self.count}")
        shutil.copytree(self.template, root, symlinks=True)
        shutil.copyfile(params, root / "params.yaml")
        (root / ".gitignore").write_text(".driftloop/\n")
        _run(
            [str(BIN / "dvc"), "remote", "add", "-d", "local", str(root) + "-remote"],
            root,
            self.env,
        )
        _run(["git", "add", "-A"], root, self.env)
        _run(["git", "commit", "-q", "-m", "bench project"], root, self.env)
        return root

    def remove(self, root: Path) -> None:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(Path(str(root) + "-remote"), ignore_errors=True)


def scratch_dir(prefix: str = "driftloop-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
