"""The fault suite: each fault injected into the real stack (`driftloop stack up` for a temp
project: Prefect server on PostgreSQL and Redis with two workers, MLflow server with basic auth,
the WebDAV DVC remote, the ledger on PostgreSQL), nothing mocked.

The stack gets its own ports, its own PostgreSQL databases (a random prefix, dropped at the end)
and two empty Redis databases; `stack down` at the end. Select with `-m stack`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import harness
from driftloop.config import load_params
from tests.helpers import Project, build_project, cli_command, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(1500)]


# -- the stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The running stack of the module's project and how to reach it."""

    project: Project
    env: dict[str, str]  # the project's environment with stack.env applied
    prefix: str
    home: Path

    @property
    def state_db(self) -> str:
        return f"{self.prefix}_state"

    def run(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
        """`driftloop ARGS` as its own process, pointed at the stack (env overrides given)."""
        return subprocess.run(
            cli_command(*args),
            cwd=self.project.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, project_template: Path) -> Iterator[Stack]:
    """`driftloop stack up` for a temp project (own ports, databases, Redis dbs); down after."""
    missing = harness.services_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the fault suite needs PostgreSQL and Redis in CI: {missing}")
        pytest.skip(missing)
    with pytest.MonkeyPatch.context() as mp:
        project = build_project(tmp_path_factory.mktemp("faults"), project_template, mp, None)
        for key in harness.STACK_TARGETS:
            mp.delenv(key, raising=False)
        home = project.settings.state_dir / "stack"
        with harness.stack_session(
            cli_command(),
            project.root,
            subprocess_env(),
            home,
            tmp_path_factory.mktemp("templates"),
        ) as up:
            for key, value in (up.own | up.client).items():
                mp.setenv(key, value)
            yield Stack(project, up.env, up.prefix, home)


def test_the_stack_is_up(stack: Stack) -> None:
    status = stack.run("stack", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["up"] and {p["name"] for p in report["parts"]} >= {"worker-1", "worker-2"}


# -- helpers of the faults ------------------------------------------------------------------------

TRAIN_UNTIL, AS_OF = "2014-12-31", "2015-01-31"


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args[4:]} -> {done.returncode}: {done.stderr[-3000:]}"
    return done


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's reason: one `error:` line on stderr, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def loop(stack: Stack) -> Stack:
    """The champion (v1) trained on 2012-2014 through the stack, then January 2015 ingested."""
    _ok(stack.run("ingest", "--until", TRAIN_UNTIL))
    trained = json.loads(_ok(stack.run("train", "--json")).stdout)
    assert trained["promoted"] is True, trained
    _ok(stack.run("ingest", "--until", AS_OF))
    return stack


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _versions(name: str) -> dict[str, Any]:
    return {str(mv.version): mv for mv in _client().search_model_versions(f"name = '{name}'")}


def _alias(name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None


def _ledger(stack: Stack) -> dict[str, Any]:
    """`driftloop ledger verify --json` as its own process (exit 0 or 9)."""
    done = stack.run("ledger", "verify", "--json")
    assert done.returncode in (0, 9), done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def _copies(name: str, of: str, count: int) -> list[str]:
    """`count` more registered versions of the same model as version `of` (cheap candidates)."""
    return harness.version_copies(_client(), name, of, count)


def _move(env: dict[str, str], version: str, basis: str, start: Any, rounds: int) -> list[str]:
    """In a process of its own: move the champion to `version` (basis: the champion it read),
    `rounds` times through the promotion's compare-and-set; each outcome, errors as their line."""
    os.environ.update(env)
    from driftloop import champion, registry
    from driftloop.config import load_context
    from driftloop.errors import DriftloopError
    from driftloop.ledger import Promotion

    params, settings = load_context()
    name = params.train.model_name
    client = registry.connect(settings)
    start.wait()
    outcomes = []
    for i in range(rounds):
        try:
            if i:
                basis = champion.store_of(settings).champion(name) or basis
            event = Promotion(
                name, version=version, decision="promoted", reason="race", champion_before=basis
            )
            refused = champion.move(settings, client, event, basis)
            outcomes.append("won" if refused is None else "lost")
        except DriftloopError as exc:
            outcomes.append(f"error {exc.exit_code}: {exc}")
        except Exception as exc:
            outcomes.append(f"UNEXPECTED {exc.__class__.__name__}: {exc}")
    return outcomes


def _race(stack: Stack, versions: list[str], basis: str, rounds: int = 1) -> list[list[str]]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    env = {k: v for k, v in stack.env.items() if k != "PATH"}
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(len(versions)) as pool:
            pending = [pool.apply_async(_move, (env, v, basis, start, rounds)) for v in versions]
            time.sleep(1)
            start.set()
            return [p.get(timeout=600) for p in pending]


# -- 2. a flipped byte in a DVC cache object and in its WebDAV remote copy ------------------------


def _flip(path: Path) -> bytes:
    """Bit rot: one byte changed in place, size and mtime kept; the original bytes returned."""
    stat = path.stat()
    os.chmod(path, 0o644)
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return original


def _objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".dir"))


def test_a_flipped_byte_in_the_cache_and_on_the_webdav_remote_is_named(loop: Stack) -> None:
    clean = json.loads(_ok(loop.run("data", "verify", "--remote", "--json")).stdout)
    assert clean["ok"] and clean["checked"] >= 4

    cached = _objects(loop.project.root / ".dvc" / "cache" / "files" / "md5")[0]
    remote = _objects(loop.home / "webdav" / "store" / "files" / "md5")[-1]
    saved = {cached: _flip(cached), remote: _flip(remote)}
    try:
        started = time.monotonic()
        found = loop.run("data", "verify", "--remote", "--json")
        took = time.monotonic() - started
        assert found.returncode == 3, found.stderr[-2000:]
        corrupt = {c["where"]: c for c in json.loads(found.stdout)["corrupt"]}
        assert set(corrupt) == {"cache", "remote"}, corrupt
        assert corrupt["cache"]["path"] == str(cached)
        assert corrupt["remote"]["oid"] == remote.parent.name + remote.name
        for bad in corrupt.values():
            assert "data/raw" in bad["tracked"], bad
        text = loop.run("data", "verify", "--remote")
        assert text.returncode == 3
        assert "corrupt cache object" in text.stdout and "corrupt remote object" in text.stdout
        print(f"fault 2: both corruptions named by data verify --remote in {took:.1f} s")
    finally:
        for path, data in saved.items():
            path.write_bytes(data)
    assert _ok(loop.run("data", "verify", "--remote")).returncode == 0


# -- 7. the Prefect API killed (-9) while flow runs are in flight on the two workers -------------


def _taken_by(client: Any, worker: int, idle: int, parameters: dict[str, Any]) -> Any:
    """A monitor run taken by the worker with pid `worker`: the other one (`idle`) is stopped
    (SIGSTOP) until the run's process is up, so each worker gets a run of its own."""
    import signal

    os.kill(idle, signal.SIGSTOP)
    try:
        run = _start(client, MONITOR, parameters)
        pid = _wait(lambda: _process_of(run.id), 300, 0.5)
    finally:
        os.kill(idle, signal.SIGCONT)
    assert _parent(pid) == worker, (pid, _parent(pid), worker)
    return run


def _running_states(client: Any, run_id: Any) -> int:
    return sum(s.type.value == "RUNNING" for s in client.read_flow_run_states(run_id))


def _monitor_runs_since(experiment: str, since: float) -> list[Any]:
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    since_ms = int(since * 1000)
    return list(
        client.search_runs(
            [found.experiment_id], filter_string=f"attributes.start_time >= {since_ms}"
        )
    )


def test_a_killed_prefect_api_comes_back_and_every_run_executes_once(loop: Stack) -> None:
    import signal

    from driftloop import stack as stack_mod
    from driftloop.config import Settings

    config = stack_mod.StackConfig.of(Settings())
    api = next(p for p in stack_mod.parts(config) if p.name == "prefect-api")
    workers = [stack_mod.pid_of(config, f"worker-{i}") for i in (1, 2)]
    assert None not in workers, workers
    one, two = (int(w) for w in workers if w is not None)
    experiment = loop.project.params.monitor.experiment
    parameters = {"as_of": AS_OF, "retrain": "off", "version": False}
    since = time.time()
    with _prefect(loop) as client:
        in_flight = [
            _taken_by(client, one, two, parameters),
            _taken_by(client, two, one, parameters),
        ]
        # both runs into the monitoring sequence (its later steps need the API again)
        _wait(
            lambda: all(
                _task_running(client, r.id, ("reference", "drift", "performance"))
                for r in in_flight
            ),
            600,
            0.3,
        )
        queued = _start(client, MONITOR, parameters)  # scheduled, taken after the restart
        runs = [*in_flight, queued]
        os.kill(int(stack_mod.pid_of(config, api.name) or 0), signal.SIGKILL)
        killed = time.monotonic()
        assert not stack_mod.answers(api.health or "", timeout=2)
        # back the way `stack up` starts a part that is not running
        stack_mod.start_part(config, api)
        stack_mod.wait_healthy(config, api, 300)
        down_for = time.monotonic() - killed
        ended = [_wait(lambda r=r: _final(client, r.id), 900, 2) for r in runs]
        finished = time.monotonic() - killed
        assert [r.state_type.value for r in ended] == ["COMPLETED"] * 3, [
            (r.state_type.value, r.state.message if r.state else "") for r in ended
        ]
        assert [r.run_count for r in ended] == [1, 1, 1], [r.run_count for r in ended]
        assert [_running_states(client, r.id) for r in runs] == [1, 1, 1]
    assert all(stack_mod.pid_of(config, f"worker-{i}") == w for i, w in ((1, one), (2, two)))
    logged = _monitor_runs_since(experiment, since)
    assert len(logged) == 3, [(r.info.run_name, r.info.start_time) for r in logged]
    print(
        f"fault 7: Prefect API killed -9 with two monitor runs in flight (one per worker) and "
        f"one queued; API answering again {down_for:.0f} s later; all three completed "
        f"{finished:.0f} s after the kill, each run once (run_count 1, one Running state, "
        "one MLflow monitoring run each)"
    )


# -- 1b. ten promotions racing, in ten processes, on the stack's ledger and MLflow server --------


def test_ten_racing_promotions_have_one_winner_and_the_ledger_verifies(loop: Stack) -> None:
    name = loop.project.model_name
    basis = _alias(name)
    assert basis is not None
    candidates = _copies(name, basis, 10)
    started = time.monotonic()
    outcomes = [o for process in _race(loop, candidates, basis) for o in process]
    took = time.monotonic() - started
    assert sorted(outcomes) == ["lost"] * 9 + ["won"], outcomes
    winner = candidates[outcomes.index("won")]
    check = _ledger(loop)
    assert check["ok"], check
    assert check["models"][name]["ledger"] == winner == _alias(name)
    print(f"fault 1b: ten racing promotions, one winner (v{winner}), {took:.1f} s")


# -- 3. the ledger's PostgreSQL connections killed while promotions run ---------------------------


def _champion_moves(stack: Stack, name: str) -> list[Any]:
    from driftloop.ledger import Promotion, Rollback, Store

    store = Store(stack.env["DRIFTLOOP_STATE_URL"])
    try:
        events = [r.event for r in store.events(name)]
    finally:
        store.dispose()
    return [
        e
        for e in events
        if (isinstance(e, Promotion) and e.decision == "promoted") or isinstance(e, Rollback)
    ]


def test_killed_ledger_connections_leave_one_champion_and_nothing_half_written(
    loop: Stack,
) -> None:
    import threading

    name = loop.project.model_name
    basis = _alias(name)
    assert basis is not None
    candidates = _copies(name, basis, 10)
    kills: list[int] = []
    done = threading.Event()

    def killer() -> None:
        with contextlib.closing(harness.pg_admin()) as admin, admin.cursor() as cursor:
            while not done.wait(0.25):
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (loop.state_db,),
                )
                kills.append(int(cursor.fetchone()[0]))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        outcomes = [o for process in _race(loop, candidates, basis, rounds=6) for o in process]
    finally:
        done.set()
        thread.join(timeout=30)
    assert sum(kills) > 0, "no connection was killed"
    unexpected = [o for o in outcomes if not (o in ("won", "lost") or o.startswith("error 9: "))]
    assert unexpected == [], unexpected
    assert all("\n" not in o for o in outcomes)
    assert "won" in outcomes, outcomes

    repaired = loop.run("ledger", "verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr[-2000:]
    check = _ledger(loop)
    assert check["ok"], check
    champion = check["models"][name]["ledger"]
    assert champion == _alias(name) and champion in [basis, *candidates]
    moves = _champion_moves(loop, name)
    for before, after in itertools.pairwise(moves):  # each move based on the last one
        assert after.champion_before == before.version, (before, after)
    assert moves[-1].version == champion
    errors = [o for o in outcomes if o.startswith("error")]
    print(
        f"fault 3: {sum(kills)} connections killed, {len(outcomes)} promotions: "
        f"{outcomes.count('won')} moved, {outcomes.count('lost')} refused, {len(errors)} failed "
        f"with one line ({errors[:1]}); champion v{champion}, ledger and alias agree"
    )


# -- 4. the MLflow server answering 503 -----------------------------------------------------------


class Proxy:
    """A local HTTP proxy in front of the MLflow server that fails as told:
    `down`: every request answered 503; `lose-create`: a model-version create is passed on
    (the server makes the version) but its answer replaced by a 503."""

    def __init__(self, upstream: str, mode: str) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.mode = mode
        self.seen: list[str] = []
        self.times: list[float] = []  # when each request came (time.monotonic)
        self.forwarded_creates = 0
        target = urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                """Quiet: the test reads `seen`, not the server's access log."""

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append(f"{self.command} {self.path}")
                proxy.times.append(time.monotonic())
                create = self.path.endswith("/model-versions/create")
                if proxy.mode == "down" or (proxy.mode == "lose-create" and create):
                    if create and proxy.mode == "lose-create":
                        self._forward(body)
                        proxy.forwarded_creates += 1
                    self._answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', [])
                    return
                status, data, headers = self._forward(body)
                self._answer(status, data, headers)

            def _forward(self, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                kept = [
                    (k, v)
                    for k, v in response.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                ]
                return response.status, data, kept

            def _answer(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _state(stack: Stack) -> tuple[set[str], str | None, int]:
    name = stack.project.model_name
    return set(_versions(name)), _alias(name), _ledger(stack)["events"]


def test_an_mlflow_server_answering_503_fails_a_training_run_in_one_line(loop: Stack) -> None:
    before = _state(loop)
    with Proxy(loop.env["MLFLOW_TRACKING_URI"], "down") as proxy:
        started = time.monotonic()
        done = loop.run("train", "--json", MLFLOW_TRACKING_URI=proxy.url)
        ended = time.monotonic()
    took, retrying = ended - started, ended - proxy.times[0]
    assert done.returncode == 6, done.stderr[-3000:]
    line = _one_line_error(done)
    assert proxy.url in line and "HTTP 503" in line, line
    assert done.stdout == ""
    assert _state(loop) == before  # no version, no alias moved, no decision recorded
    print(
        f"fault 4a: MLflow answering 503: train failed {took:.1f} s after its start, "
        f"{retrying:.1f} s after its first request ({len(proxy.seen)} requests): {line}"
    )


def test_a_lost_registration_answer_leaves_no_half_registered_version(loop: Stack) -> None:
    name = loop.project.model_name
    before = _state(loop)
    with Proxy(loop.env["MLFLOW_TRACKING_URI"], "lose-create") as proxy:
        started = time.monotonic()
        done = loop.run("train", "--json", MLFLOW_TRACKING_URI=proxy.url)
        took = time.monotonic() - started
    assert done.returncode == 6, done.stderr[-3000:]
    line = _one_line_error(done)
    assert "HTTP 503" in line, line
    assert proxy.forwarded_creates >= 1  # the server did make versions
    after = _state(loop)
    assert after == before, (before, after)  # each made version deleted again: none half there
    check = _ledger(loop)
    assert check["ok"] and check["models"][name]["ledger"] == before[1]
    print(
        f"fault 4b: {proxy.forwarded_creates} registrations made whose answer was lost: "
        f"train failed in {took:.1f} s, no version left: {line}"
    )


# -- 1a. two monitoring runs on the same trigger, on the two workers ------------------------------

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
MONITOR, RETRAIN = "monitor/monitor-daily", "retrain/retrain"


@contextlib.contextmanager
def _prefect(stack: Stack) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        yield client


def _runs_of(client: Any, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    wanted = client.read_deployment_by_name(deployment).id
    return list(
        client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[wanted])), limit=50
        )
    )


def _start(client: Any, deployment: str, parameters: dict[str, Any]) -> Any:
    found = client.read_deployment_by_name(deployment)
    return client.create_flow_run_from_deployment(found.id, parameters=parameters)


def _wait(probe: Any, timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := probe():
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout:.0f} s")


def _final(client: Any, run_id: Any) -> Any:
    run = client.read_flow_run(run_id)
    return run if run.state_type.value in FINAL else None


def _claims(stack: Stack) -> list[Any]:
    from driftloop.ledger import Store

    store = Store(stack.env["DRIFTLOOP_STATE_URL"])
    try:
        return store.events(stack.project.model_name, ("retrain_claim",))
    finally:
        store.dispose()


@contextlib.contextmanager
def _drift_fires(project: Project) -> Iterator[None]:
    """A monitoring policy whose drift trigger fires on the January window: fixed K-S thresholds
    (p < 0.5 is drift) instead of the calibrated ones, which find January 2015 quiet. The
    project's params.yaml, read by every flow run on the workers, is restored afterwards."""
    file = project.root / "params.yaml"
    saved = file.read_text()
    project.edit_params(
        monitor={
            "drift_thresholds": "fixed",
            "threshold": 0.5,
            "importance_weighting": False,
            "domain_classifier": False,
            "triggers": ["drift"],
        }
    )
    try:
        yield
    finally:
        file.write_text(saved)
        project.params = load_params(file)


def test_two_monitoring_runs_on_the_same_trigger_start_one_retrain(loop: Stack) -> None:
    name = loop.project.model_name
    claims_before = len(_claims(loop))
    started = time.monotonic()
    with _drift_fires(loop.project), _prefect(loop) as client:
        retrains_before = {r.id for r in _runs_of(client, RETRAIN)}
        monitors = [_start(client, MONITOR, {"as_of": AS_OF}) for _ in range(2)]
        ended = [_wait(lambda r=r: _final(client, r.id), 600) for r in monitors]
        assert [r.state_type.value for r in ended] == ["COMPLETED"] * 2, [
            (r.state_type.value, r.state.message if r.state else "") for r in ended
        ]
        monitored = time.monotonic() - started
        retrains = [r for r in _runs_of(client, RETRAIN) if r.id not in retrains_before]
        assert len(retrains) == 1, [(r.name, r.state_type.value) for r in retrains]
        (retrain,) = retrains
        assert retrain.parameters["until"] == AS_OF, retrain.parameters
        assert retrain.parameters["reason"].startswith("signals fired: drift"), retrain.parameters
        retrained = _wait(lambda: _final(client, retrain.id), 600)
    assert retrained.state_type.value == "COMPLETED", retrained.state
    assert len(_claims(loop)) == claims_before + 1
    check = _ledger(loop)
    assert check["ok"] and check["models"][name]["ledger"] == _alias(name), check
    total = time.monotonic() - started
    print(
        f"fault 1a: two monitor runs at once on the two workers: one claim, one retrain run; "
        f"monitors done in {monitored:.0f} s, the retrain in {total:.0f} s"
    )


# -- 5. a worker killed (-9) mid-training ---------------------------------------------------------


def _process_of(run_id: Any) -> int | None:
    """The pid of the process running a flow run (its environment names the run)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
    return None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _task_running(client: Any, run_id: Any, names: tuple[str, ...]) -> bool:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return any(t.name.rsplit("-", 1)[0] in names for t in tasks)


def test_a_worker_killed_mid_training_is_crashed_and_the_retrain_runs_again(loop: Stack) -> None:
    import signal

    from driftloop import stack as stack_mod
    from driftloop.config import Settings

    name = loop.project.model_name
    alias_before, versions_before = _alias(name), set(_versions(name))
    parameters = {"reason": "fault: worker killed", "until": AS_OF}
    with _prefect(loop) as client:
        run = _start(client, RETRAIN, parameters)
        # the run's own process, once it is into the training sequence (before any register)
        _wait(
            lambda: _task_running(
                client, run.id, ("validate", "load-training-data", "build-features", "train")
            ),
            600,
            0.3,
        )
        pid = _process_of(run.id)
        assert pid is not None
        worker = _parent(pid)
        for victim in (worker, pid):  # the machine dies: worker and run at once
            os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        crashed = _wait(lambda: _final(client, run.id), 400, 2)
        took = time.monotonic() - killed
        assert crashed.state_type.value == "CRASHED", crashed.state
        assert _alias(name) == alias_before and set(_versions(name)) == versions_before
        # the worker comes back (`stack up` starts what is not running) and the retrain runs again
        config = stack_mod.StackConfig.of(Settings())
        for part in stack_mod.parts(config):
            if part.name.startswith("worker-"):
                stack_mod.start_part(config, part)
        again = _start(client, RETRAIN, parameters)
        rerun = _wait(lambda: _final(client, again.id), 600, 2)
    assert rerun.state_type.value == "COMPLETED", rerun.state
    assert len(set(_versions(name)) - versions_before) == 1
    check = _ledger(loop)
    assert check["ok"] and check["models"][name]["ledger"] == _alias(name), check
    print(
        f"fault 5: worker and run killed -9; flow run Crashed {took:.0f} s later, alias kept; "
        "the retrain ran again to completion"
    )


# -- 6. the MLflow server's artifact disk full ----------------------------------------------------


def test_a_full_artifact_disk_fails_the_run_and_registers_nothing(
    loop: Stack, tmp_path: Path
) -> None:
    import shutil

    disk = tmp_path / "artifacts"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    port = harness.free_port_base()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(disk),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env={**loop.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=(tmp_path / "mlflow.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        from driftloop.stack import answers

        _wait(lambda: server.poll() is not None or answers(f"{url}/health"), 300)
        assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 16 * 1024))  # 16 KiB left
        env = {
            "MLFLOW_TRACKING_URI": url,
            "DRIFTLOOP_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        }
        started = time.monotonic()
        done = loop.run("train", "--json", **env)
        took = time.monotonic() - started
        assert done.returncode == 6, done.stderr[-3000:]
        line = _one_line_error(done)
        assert "logging the training run failed" in line and "HTTP 500" in line, line
        from mlflow import MlflowClient

        from driftloop.lineage import COMPLETE_TAG

        client = MlflowClient(url)
        assert client.search_registered_models() == [] or not client.search_model_versions(
            f"name = '{loop.project.model_name}'"
        )
        runs = client.search_runs(client.search_experiments()[0].experiment_id)
        assert all(r.data.tags.get(COMPLETE_TAG) != "true" for r in runs)
        (disk / "filler").unlink()  # room again: the store is readable and takes the next run
        again = loop.run("train", "--json", **env)
        assert again.returncode == 0, again.stderr[-3000:]
        print(
            f"fault 6: artifact disk full: train failed in {took:.0f} s (exit "
            f"{done.returncode}): {line}; the next run with room registers"
        )
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 9)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
