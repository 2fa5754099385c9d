"""The scale-out stack on one machine, for trying it: `driftloop stack up | status | down | env`.

The same parts a team spreads across machines, started here as child processes:

- a Prefect server on PostgreSQL with Redis for messaging (`prefect-redis`): the API and its
  background services as two processes, a process work pool with two workers, the project's
  deployments registered from `deployments/prefect.yaml`, and an automation that marks zombie
  runs (a killed worker's) crashed from missing heartbeats;
- an MLflow tracking server on PostgreSQL, artifacts served through it (`--artifacts-destination`:
  no worker needs a shared disk), the basic-auth app on, with a training identity that may write
  experiments and the registry and a read-only one;
- a WebDAV server (wsgidav) holding the DVC remote every worker pushes to and pulls from, with
  `verify` on;
- the shared state store (the decision ledger) on PostgreSQL.

PostgreSQL and Redis are the servers already running (`DRIFTLOOP_STACK_POSTGRES`,
`DRIFTLOOP_STACK_REDIS`); the stack makes its own databases in them. Everything else lives under
`<home>/stack/`: logs, pids, the generated secrets (mode 0600) and `stack.env`, the environment a
shell or a worker on another machine sources to use the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftloop.config import Settings
from driftloop.errors import DriftloopError
from driftloop.warm import SOCKET_ENV

POOL = "driftloop-local"  # the work pool named in deployments/prefect.yaml
WORKERS = 2
HEARTBEAT_SECONDS = 30  # Prefect's minimum
ZOMBIE_WITHIN_SECONDS = 90  # a run without a heartbeat this long is crashed
ZOMBIE_AUTOMATION = "driftloop-crash-zombie-runs"
CLIENT_RETRIES = 7  # Prefect's default is 5 (about 1 min): too short for an API restart


class StackError(DriftloopError):
    """A part of the stack would not start, or is not running."""

    exit_code = 10


@dataclass(frozen=True)
class StackConfig:
    """Where the stack's parts listen and which databases it uses (defaults: this machine)."""

    home: Path
    project: Path
    postgres: str = "postgresql://postgres@127.0.0.1:5432"
    redis: str = "redis://127.0.0.1:6379"
    redis_dbs: tuple[int, int] = (6, 7)  # messaging, background-service coordination
    prefix: str = "driftloop"
    prefect_port: int = 4210
    mlflow_port: int = 5210
    webdav_port: int = 8210

    @classmethod
    def of(cls, settings: Settings) -> StackConfig:
        env = os.environ
        base = int(env.get("DRIFTLOOP_STACK_PORT_BASE", "0") or 0)
        ports = (4210, 5210, 8210) if not base else (base, base + 1, base + 2)
        dbs = env.get("DRIFTLOOP_STACK_REDIS_DBS", "")
        try:
            messaging, docket = (int(d) for d in dbs.split(",")) if dbs else cls.redis_dbs
        except ValueError:
            raise StackError(
                f"DRIFTLOOP_STACK_REDIS_DBS={dbs!r}: give two Redis database numbers, e.g. 6,7"
            ) from None
        return cls(
            home=settings.state_dir / "stack",
            project=settings.project,
            postgres=env.get("DRIFTLOOP_STACK_POSTGRES", cls.postgres).rstrip("/"),
            redis=env.get("DRIFTLOOP_STACK_REDIS", cls.redis).rstrip("/"),
            redis_dbs=(messaging, docket),
            prefix=env.get("DRIFTLOOP_STACK_PREFIX", cls.prefix),
            prefect_port=ports[0],
            mlflow_port=ports[1],
            webdav_port=ports[2],
        )

    def database(self, part: str) -> str:
        return f"{self.prefix}_{part}"

    def pg(self, part: str, driver: str = "") -> str:
        scheme, rest = self.postgres.split("://", 1)
        scheme = "postgresql" + (f"+{driver}" if driver else "")
        return f"{scheme}://{rest}/{self.database(part)}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def webdav_url(self) -> str:
        return f"webdav://127.0.0.1:{self.webdav_port}/dvc/store"


# -- secrets and environments ---------------------------------------------------------------------


def stack_secrets(config: StackConfig) -> dict[str, str]:
    """The stack's passwords and keys: generated once, kept in a 0600 file."""
    path = config.home / "secrets.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    config.home.mkdir(parents=True, exist_ok=True)
    made = {
        name: secrets.token_urlsafe(18)
        for name in ("admin", "trainer", "reader", "flask_key", "webdav")
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(made, handle)
    return made


def server_env(config: StackConfig) -> dict[str, str]:
    """Settings of the Prefect server processes (API and services)."""
    messaging, docket = config.redis_dbs
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": config.pg("prefect", "asyncpg"),
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
        "PREFECT_REDIS_MESSAGING_URL": f"{config.redis}/{messaging}",
        "PREFECT_REDIS_WORKER_CLEANUP_QUEUE_URL": f"{config.redis}/{messaging}",
        "PREFECT_SERVER_DOCKET_URL": f"{config.redis}/{docket}",
        # events are published at once, not in batches of 5 or every 10 s: automations
        # (zombie runs, alerts) act within a second or two
        "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE": "1",
        "PREFECT_REDIS_MESSAGING_PUBLISHER_PUBLISH_EVERY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(config.prefect_port),
        "PREFECT_UI_API_URL": config.prefect_api,
        "PREFECT_SERVER_UI_API_URL": config.prefect_api,
        "PREFECT_HOME": str(config.home / "prefect"),
    }


def client_env(config: StackConfig, identity: str = "trainer") -> dict[str, str]:
    """What a command, a service or a worker needs to use the stack (`stack.env`)."""
    keys = stack_secrets(config)
    return {
        "PREFECT_API_URL": config.prefect_api,
        "MLFLOW_TRACKING_URI": config.mlflow_url,
        "MLFLOW_TRACKING_USERNAME": identity,
        "MLFLOW_TRACKING_PASSWORD": keys[identity],
        "DRIFTLOOP_STATE_URL": config.pg("state", "psycopg2"),
        "DRIFTLOOP_PROJECT": str(config.project),
        # bounded retries on the tracking server: a failing call gives up within seconds
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }


def write_env_file(config: StackConfig) -> Path:
    """`stack.env`: `set -a; . .driftloop/stack/stack.env; set +a` points a shell at the stack."""
    path = config.home / "stack.env"
    lines = [f"{k}={_shell_quote(v)}" for k, v in client_env(config).items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


# -- the parts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One process of the stack: how to start it and how to know it is up."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health: str | None = None  # a URL answering 2xx (or 401/207 for WebDAV) when up
    stop_signal: int = signal.SIGTERM
    signals: int = 1  # a Prefect worker stops on the second SIGINT


@dataclass
class PartStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool | None
    log: str
    detail: str = ""


def warm_starts() -> bool:
    """Whether each worker gets a warm starter (`driftloop.warm`); `DRIFTLOOP_STACK_WARM=0`
    gives plain process workers that start every flow run as a new interpreter."""
    return os.environ.get("DRIFTLOOP_STACK_WARM", "1").strip().lower() not in ("0", "false", "no")


def warm_socket(config: StackConfig, worker: int) -> Path:
    """The worker's warm starter's socket: under the stack's home, or, where that path is too
    long for a Unix socket (108 bytes), in a folder of the temp dir named by the home's hash."""
    path = config.home / "warm" / f"worker-{worker}.sock"
    if len(os.fsencode(path)) <= 100:
        return path
    import hashlib
    import tempfile

    tag = hashlib.sha1(os.fsencode(config.home.resolve())).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"driftloop-warm-{os.getuid()}-{tag}" / path.name


def pool_template() -> dict[str, Any]:
    """The work pool's base job template: a process pool whose flow runs start through the
    warm client (which starts cold by itself when its worker has no starter)."""
    from prefect.workers.process import ProcessWorker

    template: dict[str, Any] = ProcessWorker.get_default_base_job_template()
    command = template["variables"]["properties"]["command"]
    command["default"] = " ".join(_python("-m", "driftloop.warm")) if warm_starts() else None
    return template


def runs_per_worker() -> int:
    """How many flow runs a worker runs at once (`DRIFTLOOP_STACK_RUNS_PER_WORKER`, 0: no limit).
    The default, one, keeps two trainings off one worker and leaves the retrain a monitoring run
    waits for to the other worker."""
    value = os.environ.get("DRIFTLOOP_STACK_RUNS_PER_WORKER", "1").strip() or "1"
    try:
        return max(int(value), 0)
    except ValueError:
        raise StackError(
            f"DRIFTLOOP_STACK_RUNS_PER_WORKER={value!r}: give a number of runs (0: no limit)"
        ) from None


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _base_env(config: StackConfig) -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):  # the stack's parts never inherit a user's pointers elsewhere
        if key.startswith(("PREFECT_API_", "MLFLOW_TRACKING_", "DRIFTLOOP_STATE_URL")):
            env.pop(key)
    env.update(
        {
            "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def parts(config: StackConfig) -> list[Part]:
    """The stack's processes, in start order."""
    keys = stack_secrets(config)
    limit = runs_per_worker()
    base = _base_env(config)
    prefect_server = {**base, **server_env(config)}
    mlflow_env = {
        **base,
        "MLFLOW_AUTH_CONFIG_PATH": str(config.home / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": keys["admin"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": keys["flask_key"],
        # no job runner: it starts eight more processes (huey consumers) for jobs the loop
        # never submits
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    worker_env = {
        **base,
        **client_env(config),
        "PREFECT_HOME": str(config.home / "prefect"),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        # a worker and the flow runs it starts ride out a restart of the API: a lost
        # connection is tried again with backoff 2, 4, ... 128 s (about 4 min in all)
        "PREFECT_CLIENT_MAX_RETRIES": str(CLIENT_RETRIES),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    out = [
        Part(
            "prefect-api",
            _python(
                "-m",
                "prefect",
                "--no-prompt",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(config.prefect_port),
                "--no-services",
            ),
            prefect_server,
            health=f"{config.prefect_api}/health",
        ),
        Part(
            "prefect-services",
            _python("-m", "prefect", "--no-prompt", "server", "services", "start"),
            prefect_server,
        ),
        Part(
            "mlflow",
            _python(
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                config.pg("mlflow"),
                "--artifacts-destination",
                str(config.home / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(config.mlflow_port),
                "--app-name",
                "basic-auth",
                "--workers",
                "1",
            ),
            mlflow_env,
            health=f"{config.mlflow_url}/health",
        ),
        Part(
            "webdav",
            _python(
                "-m", "wsgidav.server.server_cli", "--config", str(config.home / "wsgidav.yaml")
            ),
            base,
            health=f"http://127.0.0.1:{config.webdav_port}/dvc/",
        ),
    ]
    if warm_starts():
        out += [
            Part(
                f"warm-{i}",
                _python("-m", "driftloop.warm", "serve", str(warm_socket(config, i))),
                worker_env,
            )
            for i in range(1, WORKERS + 1)
        ]
    out += [
        Part(
            f"worker-{i}",
            _python(
                "-m",
                "prefect",
                "--no-prompt",
                "worker",
                "start",
                "--pool",
                POOL,
                "--name",
                f"{config.prefix}-worker-{i}",
                "--type",
                "process",
                *(["--limit", str(limit)] if limit else []),
            ),
            {**worker_env, **({SOCKET_ENV: str(warm_socket(config, i))} if warm_starts() else {})},
            stop_signal=signal.SIGINT,
            signals=2,
        )
        for i in range(1, WORKERS + 1)
    ]
    return out


# -- process bookkeeping --------------------------------------------------------------------------


def _pid_file(config: StackConfig, name: str) -> Path:
    return config.home / "run" / f"{name}.pid"


def _log_file(config: StackConfig, name: str) -> Path:
    return config.home / "logs" / f"{name}.log"


def pid_of(config: StackConfig, name: str) -> int | None:
    """The pid of a running part (None when not started or gone)."""
    path = _pid_file(config, name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid and _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):  # not a child of this process
        if os.waitpid(pid, os.WNOHANG)[0] != 0:
            return False  # a zombie child of this process (reaped now) is not alive
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether a process has exited but is not reaped yet: a killed part whose parent (an
    earlier `stack up`) is gone waits for init to reap it, which can take a while."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def start_part(config: StackConfig, part: Part) -> int:
    """Start one part in its own process group (unless it runs); its pid."""
    running = pid_of(config, part.name)
    if running is not None:
        return running
    log = _log_file(config, part.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(config, part.name).parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            part.argv,
            env=part.env,
            cwd=config.project,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _pid_file(config, part.name).write_text(str(proc.pid))
    return proc.pid


def stop_part(config: StackConfig, part: Part, timeout: float = 30) -> bool:
    """Stop a part (its whole process group); True when it was running."""
    pid = pid_of(config, part.name)
    _pid_file(config, part.name).unlink(missing_ok=True)
    if pid is None:
        return False
    for _ in range(part.signals):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, part.stop_signal)
        if _wait_gone(pid, timeout / part.signals):
            return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_gone(pid, 5)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


def answers(url: str, auth: tuple[str, str] | None = None, timeout: float = 3) -> bool:
    """Whether a URL answers (2xx, or 401: a server that asks who we are is up)."""
    request = urllib.request.Request(url)
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 400
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 207)
    except OSError:
        return False


def wait_healthy(config: StackConfig, part: Part, timeout: float) -> None:
    """Block until the part answers its health URL; StackError (with its log's tail) if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_of(config, part.name) is None:
            raise StackError(f"{part.name} exited while starting: {_tail(config, part.name)}")
        if part.health is None or answers(part.health):
            return
        time.sleep(1)
    raise StackError(
        f"{part.name} did not answer {part.health} in {timeout:.0f} s: {_tail(config, part.name)}"
    )


def _tail(config: StackConfig, name: str) -> str:
    log = _log_file(config, name)
    if not log.exists():
        return "no log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "empty log")[:300] + f" (log: {log})"


# -- one-time set-up ------------------------------------------------------------------------------


def ensure_databases(config: StackConfig) -> None:
    """The stack's databases in the PostgreSQL server (created when missing)."""
    import psycopg2

    try:
        admin = psycopg2.connect(f"{config.postgres}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise StackError(f"PostgreSQL at {config.postgres}: {first}") from None
    admin.autocommit = True
    with contextlib.closing(admin), admin.cursor() as cursor:
        for part in ("prefect", "mlflow", "mlflow_auth", "state"):
            name = config.database(part)
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')


def write_configs(config: StackConfig) -> None:
    """MLflow's basic-auth ini and wsgidav's config (the WebDAV store folder made)."""
    keys = stack_secrets(config)
    (config.home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    store = config.home / "webdav" / "store"
    store.mkdir(parents=True, exist_ok=True)  # WebDAV makes no parent folders
    ini = "\n".join(
        [
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = {config.pg('mlflow_auth')}",
            "admin_username = admin",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "grant_default_workspace_access = false",
            # a verified (user, password) is trusted for a minute: each request otherwise
            # re-checks the scrypt hash (~0.2-0.5 s of CPU), 50 of them per training run; one
            # server worker, so a password changed through the API takes effect at once
            "auth_cache_ttl_seconds = 60",
            "",
        ]
    )
    (config.home / "basic_auth.ini").write_text(ini)
    webdav = {
        "host": "127.0.0.1",
        "port": config.webdav_port,
        "server": "cheroot",
        "provider_mapping": {"/dvc": str(config.home / "webdav")},
        "http_authenticator": {
            "domain_controller": None,
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
        },
        "simple_dc": {"user_mapping": {"*": {"dvc": {"password": keys["webdav"]}}}},
        "verbose": 1,
        "logging": {"enable_loggers": []},
    }
    path = config.home / "wsgidav.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(webdav, handle)  # JSON is YAML


def _run(argv: list[str], env: dict[str, str], config: StackConfig, what: str) -> None:
    done = subprocess.run(
        argv, env=env, cwd=config.project, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StackError(f"{what} failed: {lines[-1] if lines else done.returncode}")


def migrate(config: StackConfig) -> None:
    """Create or upgrade the Prefect and MLflow schemas once, before any server starts (the two
    at once: each is mostly its interpreter's start-up)."""
    base = _base_env(config)
    prefect_env = {**base, **server_env(config)}
    _together(
        lambda: _run(
            _python("-m", "prefect", "--no-prompt", "server", "database", "upgrade", "-y"),
            prefect_env,
            config,
            "prefect server database upgrade",
        ),
        lambda: _run(
            _python("-m", "mlflow", "db", "upgrade", config.pg("mlflow")),
            base,
            config,
            "mlflow db upgrade",
        ),
    )


def _together(*steps: Callable[[], object]) -> None:
    """Run independent set-up steps in threads; the first failure is raised after all end."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
    for future in futures:
        future.result()


def ensure_identities(config: StackConfig) -> None:
    """The training identity (may write experiments and the registry) and the read-only one."""
    keys = stack_secrets(config)
    # creating a user hashes its password on the server: seconds on a busy machine, so the
    # client's usual 5 s read timeout is too short here
    saved = {k: os.environ.get(k) for k in _IDENTITY_ENV}
    os.environ.update(
        MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=keys["admin"],
        MLFLOW_HTTP_REQUEST_TIMEOUT="120",
    )
    try:
        from mlflow.server.auth.client import AuthServiceClient

        client = AuthServiceClient(config.mlflow_url)
        for user in ("trainer", "reader"):
            with contextlib.suppress(Exception):  # already there: a second `up`
                client.create_user(user, keys[user])
        roles = {r.name: r for r in _call_quiet(client.list_roles, "default") or []}
        role = roles.get("trainers") or client.create_role(
            "default", "trainers", "may write experiments and the model registry"
        )
        for resource in ("experiment", "registered_model"):
            with contextlib.suppress(Exception):
                client.add_role_permission(role.id, resource, "*", "EDIT")
        with contextlib.suppress(Exception):
            client.assign_role("trainer", role.id)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise StackError(f"MLflow identities at {config.mlflow_url}: {first[:300]}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_IDENTITY_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def _call_quiet(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        return None


def deploy_env(config: StackConfig) -> dict[str, str]:
    """The environment of the commands that register the deployments."""
    return {
        **_base_env(config),
        **client_env(config),
        "PREFECT_HOME": str(config.home / "prefect"),
    }


def register_deployments(config: StackConfig, env: dict[str, str] | None = None) -> None:
    """The work pool, the project's deployments and the zombie-run automation."""
    env = deploy_env(config) if env is None else env
    template = config.home / "pool-template.json"
    template.write_text(json.dumps(pool_template(), indent=1))
    done = subprocess.run(
        _python(
            "-m",
            "prefect",
            "--no-prompt",
            "work-pool",
            "create",
            POOL,
            "--type",
            "process",
            "--base-job-template",
            str(template),
            "--overwrite",
        ),
        env=env,
        cwd=config.project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and "already exists" not in (done.stdout + done.stderr):
        raise StackError(f"work pool {POOL}: {(done.stderr or done.stdout).strip()[-300:]}")
    prefect_file = Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml"
    _run(
        _python(
            "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)
        ),
        env,
        config,
        "prefect deploy",
    )
    _run(_python("-m", "driftloop.stack", "automation"), env, config, "zombie automation")


def create_zombie_automation() -> str:
    """Mark a flow run crashed when its heartbeats stop (its worker or machine died): crashed at
    most heartbeat + `ZOMBIE_WITHIN_SECONDS` + a few seconds after the last sign of life."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    with contextlib.suppress(Exception):
        existing: Any = Automation.read(name=ZOMBIE_AUTOMATION)
        existing.delete()
    automation = Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_WITHIN_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {ZOMBIE_WITHIN_SECONDS} s: its worker or machine died",
            )
        ],
    ).create()
    return str(getattr(automation, "id", ""))


def use_dvc_remote(config: StackConfig, env: dict[str, str] | None = None) -> None:
    """The project's DVC remote becomes the stack's WebDAV store (local config: not committed)."""
    keys = stack_secrets(config)
    env = _base_env(config) if env is None else env
    for args in (
        ["remote", "add", "--local", "-f", "stack", config.webdav_url],
        ["remote", "modify", "--local", "stack", "verify", "true"],
        ["remote", "modify", "--local", "stack", "user", "dvc"],
        ["remote", "modify", "--local", "stack", "password", keys["webdav"]],
        ["remote", "default", "--local", "stack"],
    ):
        _run(_python("-m", "dvc", *args), env, config, f"dvc {' '.join(args[:3])}")


def release_dvc_remote(config: StackConfig) -> None:
    """Back to the project's own default remote."""
    local = config.project / ".dvc" / "config.local"
    if local.exists():
        _run(
            _python("-m", "dvc", "remote", "remove", "--local", "stack"),
            _base_env(config),
            config,
            "dvc remote remove",
        )


# -- up, status, down -----------------------------------------------------------------------------


@dataclass
class StackReport:
    parts: list[PartStatus] = field(default_factory=list)
    env_file: str = ""
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return bool(self.parts) and all(p.running and p.healthy is not False for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "up": self.up,
            "env_file": self.env_file,
            "urls": self.urls,
            "parts": [p.__dict__ for p in self.parts],
        }


def up(settings: Settings, timeout: float = 300) -> StackReport:
    """Start every part (those already running are left alone) and set up what they need."""
    config = StackConfig.of(settings)
    config.home.mkdir(parents=True, exist_ok=True)
    ensure_databases(config)
    write_configs(config)
    migrate(config)
    by_name = {p.name: p for p in parts(config)}
    for name in ("prefect-api", "prefect-services", "mlflow", "webdav"):
        start_part(config, by_name[name])
    for part in by_name.values():  # the warm starters import while the servers come up
        if part.name.startswith("warm-"):
            start_part(config, part)
    # each server's set-up as soon as it answers, the three at once; their environments are
    # taken before `ensure_identities` lends the process its admin credentials
    deploying, dvc_env = deploy_env(config), _base_env(config)

    def once_up(name: str, step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            wait_healthy(config, by_name[name], timeout)
            step()

        return run

    _together(
        once_up("prefect-api", lambda: register_deployments(config, deploying)),
        once_up("mlflow", lambda: ensure_identities(config)),
        once_up("webdav", lambda: use_dvc_remote(config, dvc_env)),
    )
    for part in by_name.values():
        if part.name.startswith("worker-"):
            start_part(config, part)
    write_env_file(config)
    return status(settings)


def status(settings: Settings) -> StackReport:
    """Each part: running (pid), answering its health URL."""
    config = StackConfig.of(settings)
    report = StackReport(
        env_file=str(config.home / "stack.env"),
        urls={
            "prefect": config.prefect_api.removesuffix("/api"),
            "mlflow": config.mlflow_url,
            "dvc_remote": config.webdav_url,
            "state": config.pg("state"),
        },
    )
    if not (config.home / "secrets.json").exists():
        return report
    for part in parts(config):
        pid = pid_of(config, part.name)
        healthy = None if part.health is None or pid is None else answers(part.health)
        report.parts.append(
            PartStatus(part.name, pid, pid is not None, healthy, str(_log_file(config, part.name)))
        )
    return report


def down(settings: Settings) -> StackReport:
    """Stop every part (workers first) and give the project its own DVC remote back."""
    config = StackConfig.of(settings)
    if (config.home / "secrets.json").exists():
        every = parts(config)
        workers = [p for p in every if p.name.startswith("worker-")]
        servers = [p for p in every if p not in workers]
        for group in (workers, servers):  # the workers first; each group at once
            _together(*(lambda p=p: stop_part(config, p) for p in group))
        release_dvc_remote(config)
    for leftover in Path("/tmp").glob("prefect-workspace-attempt-*"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_uid == os.getuid():
                shutil.rmtree(leftover, ignore_errors=True)
    return status(settings)


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[StackReport]:
    """The stack for the length of a block (tests, benchmarks)."""
    try:
        yield up(settings)
    finally:
        down(settings)


def _main(argv: list[str]) -> int:
    """`python -m driftloop.stack automation` (run against the stack's API by `up`)."""
    if argv[:1] == ["automation"]:
        print(create_zombie_automation())
        return 0
    print("usage: python -m driftloop.stack automation", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
