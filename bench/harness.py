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
- `stack_session()`: `driftloop stack up` for a project on this machine's PostgreSQL and Redis,
  with its own ports, databases (copies of migrated templates) and two empty Redis databases;
  down, dropped and flushed at the end (the fault suite's stack and the promotion benchmark's).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
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


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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


def driftloop(env: dict[str, str], root: Path, *args: str, timeout: float = 1800) -> str:
    """`driftloop ARGS` in `root` as a new process; its stdout (RuntimeError with stderr if it
    fails)."""
    done = subprocess.run(
        [str(BIN / "driftloop"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"driftloop {' '.join(args)} -> {done.returncode}\n{done.stderr}")
    return done.stdout


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


# -- the stack on this machine's PostgreSQL and Redis --------------------------------------------

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = ("127.0.0.1", 6379)


def pg_admin() -> Any:
    """An autocommit connection to the server's `postgres` database (create and drop)."""
    import psycopg2

    conn = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    conn.autocommit = True
    return conn


def redis_command(command: list[str]) -> str:
    """One Redis command over a socket (RESP), its reply's first line (no client library)."""
    with socket.create_connection(REDIS, timeout=5) as sock:
        parts = [f"*{len(command)}\r\n"] + [f"${len(c)}\r\n{c}\r\n" for c in command]
        sock.sendall("".join(parts).encode())
        return sock.recv(4096).decode().split("\r\n", 1)[0]


def services_missing() -> str | None:
    """Why the stack cannot run here (None: PostgreSQL and Redis answer)."""
    try:
        pg_admin().close()
    except Exception as exc:
        return f"no PostgreSQL on 127.0.0.1:5432 ({exc.__class__.__name__})"
    try:
        redis_command(["PING"])
    except OSError as exc:
        return f"no Redis on 127.0.0.1:6379 ({exc.__class__.__name__})"
    return None


def free_port_base() -> int:
    """Three consecutive free ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + 3):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no three consecutive free ports")


def empty_redis_dbs() -> tuple[int, int]:
    """Two Redis databases nobody uses (no keys): the stack's messaging and coordination."""
    empty = [db for db in range(8, 16) if redis_dbsize(db) == 0]
    if len(empty) < 2:
        raise RuntimeError("fewer than two empty Redis databases in 8..15")
    first = random.randrange(len(empty) - 1)
    return empty[first], empty[first + 1]


def redis_dbsize(db: int) -> int:
    with socket.create_connection(REDIS, timeout=5) as sock:
        sock.sendall(
            f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n*1\r\n$6\r\nDBSIZE\r\n".encode()
        )
        time.sleep(0.05)
        reply = sock.recv(4096).decode()
    return int(reply.split(":")[-1].split("\r\n")[0])


def flush_redis(db: int) -> None:
    with socket.create_connection(REDIS, timeout=5) as sock:
        sock.sendall(
            f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n".encode()
        )
        time.sleep(0.05)
        sock.recv(4096)


def template_db(part: str) -> str:
    """The name of the migrated template of a stack database, per library versions (a new
    Prefect or MLflow gets templates of its own)."""
    from importlib.metadata import version

    key = f"{version('prefect')}_{version('mlflow')}".replace(".", "_")
    return f"dlf_template_{part}_{key}"


def build_templates(workdir: Path) -> None:
    """Migrate fresh Prefect and MLflow databases once (`driftloop.stack.migrate`, as `stack up`
    does) and keep them as templates; another session building them at once is harmless."""
    from driftloop import stack as stack_mod

    build = f"dlf_build_{uuid.uuid4().hex[:8]}"
    config = stack_mod.StackConfig(home=workdir, project=workdir, prefix=build)
    with contextlib.closing(pg_admin()) as admin, admin.cursor() as cursor:
        for part in ("prefect", "mlflow"):
            cursor.execute(f'CREATE DATABASE "{build}_{part}"')
        try:
            stack_mod.migrate(config)
            for part in ("prefect", "mlflow"):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template_db(part),))
                if cursor.fetchone() is None:
                    cursor.execute(
                        f'ALTER DATABASE "{build}_{part}" RENAME TO "{template_db(part)}"'
                    )
                    cursor.execute(f'ALTER DATABASE "{template_db(part)}" WITH IS_TEMPLATE true')
        finally:
            for part in ("prefect", "mlflow"):
                cursor.execute(f'DROP DATABASE IF EXISTS "{build}_{part}" WITH (FORCE)')


def clone_templates(prefix: str, workdir: Path) -> None:
    """The stack's Prefect and MLflow databases as copies of migrated templates: `stack up`
    finds their schemas current instead of running every migration on an empty database."""
    import psycopg2

    with contextlib.closing(pg_admin()) as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)",
            (template_db("prefect"), template_db("mlflow")),
        )
        built = cursor.fetchone()[0] == 2
    if not built:
        build_templates(workdir)
    with contextlib.closing(pg_admin()) as admin, admin.cursor() as cursor:
        for part in ("prefect", "mlflow"):
            for attempt in range(10):  # a template is copied only while nobody is connected
                try:
                    cursor.execute(
                        f'CREATE DATABASE "{prefix}_{part}" TEMPLATE "{template_db(part)}"'
                    )
                    break
                except psycopg2.errors.ObjectInUse:
                    if attempt == 9:
                        raise
                    time.sleep(1 + attempt)


def read_stack_env(home: Path) -> dict[str, str]:
    """The variables of `<home>/stack.env`, the environment that points a process at the stack."""
    import shlex

    out = {}
    for line in (home / "stack.env").read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


@dataclass(frozen=True)
class StackSession:
    """A running stack: its own settings (`own`: ports, prefix, Redis dbs), `stack.env`'s
    variables (`client`), and both over the environment it was started from (`env`)."""

    prefix: str
    own: dict[str, str]
    client: dict[str, str]
    env: dict[str, str]

    @property
    def state_db(self) -> str:
        return f"{self.prefix}_state"


STACK_TARGETS = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DRIFTLOOP_STATE_URL")


@contextlib.contextmanager
def stack_session(
    cli: Sequence[str], project: Path, env: dict[str, str], home: Path, workdir: Path
) -> Iterator[StackSession]:
    """`CLI stack up` for `project` (`env`: its environment; `home`: the stack's folder under the
    project's state dir; `workdir`: scratch for building templates) with its own ports, a random
    database prefix (databases copied from migrated templates) and two empty Redis databases.
    At the end: `stack down`, the databases dropped, the Redis databases flushed."""
    prefix = f"dlf_{uuid.uuid4().hex[:8]}"
    dbs = empty_redis_dbs()
    own = {
        "DRIFTLOOP_STACK_PORT_BASE": str(free_port_base()),
        "DRIFTLOOP_STACK_PREFIX": prefix,
        "DRIFTLOOP_STACK_REDIS_DBS": f"{dbs[0]},{dbs[1]}",
    }
    base = {k: v for k, v in env.items() if k not in STACK_TARGETS} | own
    started = time.monotonic()
    try:
        clone_templates(prefix, workdir)
        print(f"databases from templates: {time.monotonic() - started:.0f} s", file=sys.stderr)
        up = subprocess.run(
            [*cli, "stack", "up", "--json"],
            cwd=project,
            env=base,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if up.returncode != 0:
            raise RuntimeError(f"stack up -> {up.returncode}: {up.stderr[-2000:]}")
        print(f"stack up: {time.monotonic() - started:.0f} s", file=sys.stderr)
        client = read_stack_env(home)
        yield StackSession(prefix, own, client, base | client)
    finally:
        subprocess.run(
            [*cli, "stack", "down", "--json"],
            cwd=project,
            env=base,
            capture_output=True,
            timeout=300,
        )
        from driftloop.ledger import STORES

        STORES.clear()
        with contextlib.closing(pg_admin()) as admin, admin.cursor() as cursor:
            for part in ("prefect", "mlflow", "mlflow_auth", "state"):
                cursor.execute(f'DROP DATABASE IF EXISTS "{prefix}_{part}" WITH (FORCE)')
        for db in dbs:
            flush_redis(db)


def version_copies(client: Any, name: str, of: str, count: int) -> list[str]:
    """`count` more registered versions of the same logged model as version `of` (candidates
    that cost no training)."""
    source = client.get_model_version(name, of)
    made = []
    for _ in range(count):
        mv = client.create_model_version(
            name,
            source.source,
            run_id=source.run_id,
            tags=dict(source.tags),
            model_id=source.source.removeprefix("models:/"),  # a LoggedModel source
        )
        made.append(str(mv.version))
    return made
