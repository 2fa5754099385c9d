"""The deployments for real: `prefect server start`, a process work pool, `prefect deploy --all`
from deployments/prefect.yaml, a worker, and the daily monitor run by deployment on a drifted
month; its retrain decision starts the `retrain` deployment as a linked child run, which the
worker runs to a new registered version.

Every process is started in its own session and stopped by process group; runs the worker starts
(Prefect gives them sessions of their own) are found by the unique PREFECT_HOME in their
environment, and none may outlive the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from driftloop.config import flow_target
from driftloop.lineage import Lineage
from tests.helpers import BIN_DIR, REPO_ROOT, Project, subprocess_env
from tests.integration.conftest_loop import AS_OF, fired_signals, wait_until, with_champion

pytestmark = pytest.mark.slow

POOL = "driftloop-local"
MONITOR, RETRAIN = "monitor/monitor-daily", "retrain/retrain"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


@dataclass(frozen=True)
class Server:
    api_url: str
    home: Path
    env: dict[str, str]
    logs: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A long-running process in a session of its own (so its whole group can be stopped)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], signals: list[signal.Signals], grace: float) -> None:
    """Signal the process group, escalating, until it exits (SIGKILL last)."""
    for sig in [*signals, signal.SIGKILL]:
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the group
    proc.wait(timeout=10)


def processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds `marker` (readable for this user's processes)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def outliving(marker: str, grace: float) -> list[int]:
    """Processes with `marker` still there after `grace` seconds (a finished run may be exiting)."""
    deadline = time.monotonic() + grace
    while (pids := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return pids


def prefect(
    server: Server, *args: str, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(BIN_DIR / "prefect"), *args],
        cwd=cwd,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"prefect {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}"
    )
    return done


@contextlib.contextmanager
def api(server: Server) -> Iterator[Any]:
    """A sync Prefect client on this server (whatever the rest of the session points at)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as c:
        yield c


def healthy(api_url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
        return r.status == 200
    return False


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_project: Project) -> Iterator[Server]:
    """`prefect server start` (it boots while the project gets its data and champion)."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    srv = Server(api_url, home, server_env(home, api_url), home / "logs")
    srv.logs.mkdir()
    argv = [str(BIN_DIR / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in srv.env.items() if k != "PREFECT_API_URL"}
    proc = start(argv, env, home, srv.logs / "server.log")
    try:
        with_champion(module_project, eager=True)
        wait_until(lambda: proc.poll() is not None or healthy(srv.api_url), timeout=120)
        assert proc.poll() is None, (srv.logs / "server.log").read_text()[-3000:]
        yield srv
    finally:
        stop(proc, [signal.SIGTERM], grace=20)
        leftovers = outliving(f"PREFECT_HOME={home}", grace=30)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert leftovers == [], f"stray processes after teardown: {leftovers}"


def server_env(home: Path, api_url: str) -> dict[str, str]:
    """The test environment (DRIFTLOOP_PROJECT etc.) with a Prefect home and API of its own."""
    return {
        **subprocess_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def project_code(module_project: Project) -> Project:
    """The code a worker's flow runs import from the project dir (the pull step's cwd)."""
    for name in ("flows", "tasks"):
        (module_project.root / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    shutil.copytree(REPO_ROOT / "deployments", module_project.root / "deployments")
    return module_project


@pytest.fixture(scope="module")
def worker(server: Server, project_code: Project) -> Iterator[None]:
    """The work pool, the deployments of prefect.yaml, and a worker (started while deploying)."""
    root = project_code.root
    prefect(server, "work-pool", "create", POOL, "--type", "process", cwd=root, timeout=120)
    argv = [str(BIN_DIR / "prefect"), "worker", "start", "--pool", POOL]
    proc = start(argv, server.env, root, server.logs / "worker.log")
    try:
        prefect(
            server,
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            "deployments/prefect.yaml",
            cwd=root,
            timeout=180,
        )
        yield
    finally:
        # A single SIGINT is not enough to stop a worker (STACK_NOTES); the second one is.
        stop(proc, [signal.SIGINT, signal.SIGINT], grace=10)


@pytest.fixture(scope="module")
def monitor_run_id(server: Server, worker: None) -> UUID:
    """The daily monitor, run now by deployment for a drifted month (not waited for here)."""
    from prefect.deployments import run_deployment

    with api(server):
        run = run_deployment(MONITOR, parameters={"as_of": AS_OF}, timeout=0)
    return UUID(str(run.id))


@dataclass(frozen=True)
class Runs:
    monitor: Any
    retrain: Any
    retrain_parent: UUID | None


@pytest.fixture(scope="module")
def runs(server: Server, monitor_run_id: UUID) -> Runs:
    """The monitor run and the retrain run it started, both waited for to a final state.

    (Cancelling the retrain instead would be quicker but is racy: a run the worker has already
    picked up can stay in CANCELLING.)
    """
    with api(server) as client:
        monitor = wait_until(lambda: final(client.read_flow_run(monitor_run_id)), 300, every=1)
        retrain = wait_until(lambda: final(latest_run(client, RETRAIN)), timeout=300, every=2)
        parent = retrain.parent_task_run_id
        retrain_parent = client.read_task_run(parent).flow_run_id if parent else None
    return Runs(monitor, retrain, retrain_parent)


def final(run: Any) -> Any:
    return run if run is not None and run.state_type.value in FINAL else None


def latest_run(client: Any, deployment: str) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    wanted = client.read_deployment_by_name(deployment).id
    found = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[wanted])), limit=10
    )
    return max(found, key=lambda r: r.created) if found else None


# -- tests ---------------------------------------------------------------------------------------


def test_deploy_creates_the_deployments_with_schedule_and_limit(
    server: Server, project_code: Project, monitor_run_id: UUID
) -> None:
    # (the monitor run is in flight meanwhile: its worker process boots while this is checked)
    with api(server) as client:
        monitor = client.read_deployment_by_name(MONITOR)
        retrain = client.read_deployment_by_name(RETRAIN)
    assert [s.schedule.cron for s in monitor.schedules] == ["0 6 * * *"]
    assert monitor.parameters == {"retrain": "deployment"}
    assert monitor.work_pool_name == POOL
    assert retrain.global_concurrency_limit is not None
    assert retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options.collision_strategy == "CANCEL_NEW"
    listed = prefect(server, "deployment", "ls", "-o", "json", cwd=project_code.root, timeout=120)
    names = {d["name"] for d in json.loads(listed.stdout)}
    assert names == {"monitor-daily", "retrain", "retrain-monthly", "training", "experiment-hourly"}


def test_the_monitor_deployment_run_completes(runs: Runs) -> None:
    assert runs.monitor.state_type.value == "COMPLETED"
    assert runs.monitor.parameters["as_of"] == AS_OF


def test_its_retrain_decision_starts_the_retrain_deployment_as_a_child(runs: Runs) -> None:
    assert runs.retrain_parent == runs.monitor.id
    assert runs.retrain.parameters["until"] == AS_OF
    assert "drift" in fired_signals(runs.retrain.parameters["reason"])


def test_the_retrain_run_is_told_which_project_and_model_explicitly(
    runs: Runs, project_code: Project
) -> None:
    """The worker's flow runs get their project as parameters, never through os.environ."""
    target = flow_target(project_code.settings)
    assert {k: runs.retrain.parameters[k] for k in target} == target


def test_the_retrain_deployment_run_registers_a_new_version(
    runs: Runs, project_code: Project
) -> None:
    assert runs.retrain.state_type.value == "COMPLETED"
    assert project_code.versions() == ["1", "2"]
    tags = project_code.mlflow_client().get_model_version(project_code.model_name, "2").tags
    assert "drift" in fired_signals(tags[Lineage.tag("trigger")])
