"""`driftloop schedule`: every deployment of prefect.yaml served from this one process.

Schedules, parameters and limits come from deployments/prefect.yaml, so `prefect deploy` and the
serve mode never disagree. Without PREFECT_API_URL a local `prefect server start` is launched
first (and stopped on exit), so the UI shows the schedules and runs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

PREFECT_FILE = Path(__file__).with_name("prefect.yaml")
DEFAULT_PORT = 4200


def deployment_specs(path: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """The deployments declared in prefect.yaml."""
    return list(yaml.safe_load(path.read_text())["deployments"])


def _load_flow(entrypoint: str) -> Any:
    module_path, func = entrypoint.split(":")
    module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


def to_runner_deployment(spec: dict[str, Any], target: Mapping[str, str] | None = None) -> Any:
    """A served deployment from one prefect.yaml entry (same name, schedule, limit).

    `target` (project, params file, home, tracking URI) is added to its parameters.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    schedules = [
        Cron(s["cron"], timezone=s.get("timezone", "UTC")) for s in spec.get("schedules", [])
    ]
    limit = spec.get("concurrency_limit")
    return _load_flow(spec["entrypoint"]).to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        parameters={**(spec.get("parameters") or {}), **(target or {})},
        schedules=schedules or None,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
    )


def wait_healthy(api_url: str, timeout: float = 120) -> None:
    """Block until the Prefect API answers /health."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"Prefect server at {api_url} did not become healthy in {timeout:.0f} s")


@contextlib.contextmanager
def local_server(
    port: int = DEFAULT_PORT, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[str]:
    """A `prefect server start` child process (its own process group) while the context lasts.

    `env` replaces the child's environment (e.g. a PostgreSQL `PREFECT_API_DATABASE_...`).
    """
    api_url = f"http://127.0.0.1:{port}/api"
    argv = [
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "server",
        "start",
        "--host",
        "127.0.0.1",
    ]
    # The UI finds its API from these, never from --port: on another port than 4200 it would
    # otherwise call a server that is not there.
    child_env = {
        **(env if env is not None else os.environ),
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_UI_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
    }
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the server and its workers stop together
    )
    try:
        wait_healthy(api_url, timeout)
        yield api_url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def serve_all(target: Mapping[str, str] | None = None) -> None:
    """Serve every deployment for one model (limit: two flow runs at once on 2 cores)."""
    from prefect import serve

    if os.environ.get("PREFECT_API_URL"):
        serve(*[to_runner_deployment(s, target) for s in deployment_specs()], limit=2)
        return
    with local_server() as api_url:
        print(f"Prefect UI: {api_url.removesuffix('/api')}", flush=True)
        _serve_in_child(api_url, target)


def _serve_in_child(api_url: str, target: Mapping[str, str] | None) -> None:
    """Prefect reads its settings at import: serve from a process that starts with the URL set."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    code = (
        "import json, sys; from deployments.serve import serve_all; "
        "serve_all(json.loads(sys.argv[1]) or None)"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(target or {})], env=env, check=False)
