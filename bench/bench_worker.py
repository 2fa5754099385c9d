"""The scale-out stack's workers: a training run's fixed cost, and scheduled runs' lag.

One run of this benchmark starts the real stack (`driftloop stack up`: Prefect server on
PostgreSQL and Redis, two process workers with their warm starters, MLflow server, WebDAV DVC
remote, the ledger on PostgreSQL) for a throwaway project of synthetic events (`data.py`), with
its own ports, databases and Redis databases, and measures:

1. **The fixed cost of a training run on a warm worker against the bare script.** The `retrain`
   deployment (validate the accepted data, train, evaluate, log and register in MLflow, the
   promotion gate) runs on the stack's workers, each repeat once *warm* (the pool's command: the
   run is forked from the worker's warm starter, `driftloop.warm`) and once *cold* (the same
   deployment with the job variable `command` = `python -m prefect.engine`: a new interpreter, as a
   plain process worker starts it), alternating with the bare script (`bare_train.py`: read, build
   features, train and evaluate the same model on the same Parquet file, a new process). A flow
   run's wall time is from its Pending state (the worker starts its process) to its final state;
   its start-up is Pending -> Running (the engine has loaded the flow). The fixed cost is the
   median run wall minus the median bare wall.
2. **Schedule lag and duplicate executions of scheduled monitoring runs across the two workers.**
   A deployment of the monitoring flow (`retrain` off, so each run monitors and records only) gets
   an interval schedule; the stack's scheduler service creates the runs and the two workers take
   them. For the first `--runs` slots: lag = the run's Running state - its expected start time
   (pick-up = Pending - expected); a duplicate is a second flow run for the same slot, a run
   executed more than once (run count > 1, more than one Running state), or a second MLflow
   monitoring run for one flow run. Target: 0 duplicates.

    uv run python -m bench.bench_worker                     # 5 repeats; 200 runs every 12 s
    uv run python -m bench.bench_worker --quick             # 2 repeats; 20 runs every 12 s
    uv run python -m bench.bench_worker --only fixed --repeat 3

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (as the fault suite). JSON goes to
bench/results/worker.json; `--json` prints it as the one document on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import data, harness

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- the stack of the run -------------------------------------------------------------------------


class Stack:
    """A throwaway project of synthetic events and its stack (`harness.stack_session`: own
    ports, template databases, Redis databases; down and dropped when the block ends)."""

    def __init__(self, work: Path, rows: int) -> None:
        self.work = work
        self.env = harness.child_env(threads=1)
        self.made = data.make_synthetic(rows, work / "data")
        self.project = harness.ProjectFactory(work / "projects", self.env).new(self.made.params)
        self.env["DRIFTLOOP_PROJECT"] = str(self.project)
        self.up_s = 0.0

    @contextlib.contextmanager
    def up(self) -> Iterator[Stack]:
        started = time.monotonic()
        with harness.stack_session(
            [str(harness.BIN / "driftloop")],
            self.project,
            self.env,
            self.project / ".driftloop" / "stack",
            self.work,
        ) as session:
            self.env = session.env
            os.environ.update(session.client)
            self.up_s = time.monotonic() - started
            log(f"stack up in {self.up_s:.0f} s; project {self.project}")
            yield self

    def cli(self, *args: str, timeout: float = 1800) -> str:
        return harness.driftloop(self.env, self.project, *args, timeout=timeout)


# -- flow runs ------------------------------------------------------------------------------------


def _states(client: Any, run_id: Any) -> dict[str, Any]:
    """The first timestamp of each state type of a flow run, and the Running count."""
    out: dict[str, Any] = {"running_states": 0}
    for state in sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp):
        kind = state.type.value
        out.setdefault(kind, state.timestamp)
        out["running_states"] += kind == "RUNNING"
    return out


def _wait_final(client: Any, run_id: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.type.value in FINAL:
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not final in {timeout:.0f} s")


def timed_run(client: Any, deployment: str, parameters: dict[str, Any], cold: bool) -> dict:
    from prefect.deployments import run_deployment

    job = {"command": f"{sys.executable} -m prefect.engine"} if cold else None
    run = run_deployment(deployment, parameters=parameters, job_variables=job, timeout=0)
    run = _wait_final(client, run.id, 1800)
    states = _states(client, run.id)
    pending, running = states.get("PENDING"), states.get("RUNNING")
    final = states.get(run.state.type.value)
    return {
        "state": run.state.type.value,
        "wall_s": (final - pending).total_seconds() if pending and final else None,
        "startup_s": (running - pending).total_seconds() if pending and running else None,
    }


def fixed_cost(stack: Stack, repeat: int) -> dict[str, Any]:
    from prefect import get_client

    runs: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": [], "bare": []}
    bare_cmd = [
        sys.executable,
        str(BENCH / "bare_train.py"),
        str(stack.made.params),
        str(stack.project.parent / "bare-out"),
    ]
    with get_client(sync_client=True) as client:
        deployment = _deployment_name(client, "retrain")
        for i in range(repeat):
            for kind in ("warm", "cold", "bare"):
                if kind == "bare":
                    run = harness.run_once(bare_cmd, cwd=stack.project.parent, env=stack.env)
                    row = {
                        "state": "COMPLETED" if run.returncode == 0 else f"rc {run.returncode}",
                        "wall_s": run.wall_s,
                        "startup_s": None,
                    }
                else:
                    row = timed_run(client, deployment, {"reason": "bench"}, cold=kind == "cold")
                runs[kind].append(row)
                log(f"fixed #{i + 1} {kind:>4}: {row}")
    med = {
        k: _median([r["wall_s"] for r in v if r["state"] == "COMPLETED"]) for k, v in runs.items()
    }
    startup = {k: _median([r["startup_s"] for r in runs[k]]) for k in ("warm", "cold")}
    fixed = {k: _minus(med[k], med["bare"]) for k in ("warm", "cold")}
    return {
        "runs": runs,
        "median_wall_s": med,
        "median_startup_s": startup,
        "fixed_cost_s": fixed,
        "warm_over_cold_fixed": _ratio(fixed["warm"], fixed["cold"]),
        "target_fixed_warm_s": 3.0,
    }


def _deployment_name(client: Any, name: str) -> str:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    found = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
    )
    if not found:
        raise RuntimeError(f"no deployment {name!r} on the stack")
    flow = client.read_flow(found[0].flow_id)
    return f"{flow.name}/{name}"


# -- scheduled monitoring runs --------------------------------------------------------------------


def schedule_lag(stack: Stack, runs: int, every: float) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import FlowRunFilter
    from prefect.client.schemas.schedules import IntervalSchedule

    with get_client(sync_client=True) as client:
        source = client.read_deployment_by_name(_deployment_name(client, "monitor-daily"))
        anchor = (datetime.now(UTC) + timedelta(seconds=90)).replace(microsecond=0)
        deployment_id = client.create_deployment(
            flow_id=source.flow_id,
            name="monitor-bench",
            entrypoint=source.entrypoint,
            path=source.path,
            pull_steps=source.pull_steps,
            work_pool_name=source.work_pool_name,
            parameters={"retrain": "off"},  # each run monitors and records; nothing else
            parameter_openapi_schema=source.parameter_openapi_schema,
            schedules=[
                DeploymentScheduleCreate(
                    schedule=IntervalSchedule(
                        interval=timedelta(seconds=every), anchor_date=anchor
                    ),
                    active=True,
                )
            ],
        )
        end = anchor + timedelta(seconds=every * runs)
        log(f"schedule: {runs} runs every {every:g} s from {anchor:%H:%M:%S} to {end:%H:%M:%S}")
        only = FlowRunFilter(deployment_id={"any_": [deployment_id]})
        slots: list[Any] = []
        deadline = time.monotonic() + (end - datetime.now(UTC)).total_seconds() + 1200
        while time.monotonic() < deadline:
            every_run = _all_runs(client, only)
            slots = [  # the schedule also fills the minute before the anchor: not counted
                r
                for r in every_run
                if r.expected_start_time and anchor <= r.expected_start_time < end
            ]
            done = [r for r in slots if r.state and r.state.type.value in FINAL]
            if datetime.now(UTC) > end and len(done) >= runs and len(done) == len(slots):
                break
            log(f"  {len(done)} of {runs} scheduled runs final ({len(slots)} created)")
            time.sleep(30)
        client.delete_deployment(deployment_id)  # and its runs still scheduled
        rows = []
        for run in slots:
            states = _states(client, run.id)
            expected = run.expected_start_time
            rows.append(
                {
                    "id": str(run.id),
                    "expected": expected.isoformat(),
                    "state": run.state.type.value if run.state else None,
                    "run_count": run.run_count,
                    "running_states": states["running_states"],
                    "pickup_s": _seconds(states.get("PENDING"), expected),
                    "lag_s": _seconds(states.get("RUNNING"), expected),
                    "pid": run.infrastructure_pid,
                }
            )
    taken = _taken_by(stack)
    for row in rows:
        row["worker"] = taken.get(row["id"])
    per_slot = Counter(r["expected"] for r in rows)
    monitoring = _mlflow_monitor_runs(stack, {r["id"] for r in rows})
    lags = [r["lag_s"] for r in rows if r["lag_s"] is not None]
    pickups = [r["pickup_s"] for r in rows if r["pickup_s"] is not None]
    duplicates = {
        "runs_per_slot_over_1": sum(n - 1 for n in per_slot.values() if n > 1),
        "run_count_over_1": sum(1 for r in rows if (r["run_count"] or 0) > 1),
        "running_states_over_1": sum(1 for r in rows if r["running_states"] > 1),
        "mlflow_runs_over_1": sum(n - 1 for n in monitoring.values() if n > 1),
    }
    return {
        "runs": len(rows),
        "every_s": every,
        "states": dict(Counter(r["state"] for r in rows)),
        "runs_per_worker": dict(Counter(str(r["worker"]) for r in rows)),
        "lag_s": _spread(lags),
        "pickup_s": _spread(pickups),
        "duplicates": duplicates,
        "duplicates_total": sum(duplicates.values()),
        "mlflow_monitoring_runs": sum(monitoring.values()),
        "rows": rows,
    }


def _taken_by(stack: Stack) -> dict[str, str]:
    """Which worker submitted each flow run (from the workers' logs)."""
    import re

    out: dict[str, str] = {}
    for log_file in sorted((stack.project / ".driftloop" / "stack" / "logs").glob("worker-*.log")):
        text = log_file.read_text(errors="replace")
        for run_id in re.findall(r"submitting flow run '([0-9a-f-]{36})'", text):
            out[run_id] = log_file.stem
    return out


def _all_runs(client: Any, only: Any) -> list[Any]:
    out: list[Any] = []
    while True:  # the API gives at most 200 at a time
        page = client.read_flow_runs(flow_run_filter=only, limit=200, offset=len(out))
        out += page
        if len(page) < 200:
            return out


def _mlflow_monitor_runs(stack: Stack, flow_runs: set[str]) -> Counter[str]:
    """MLflow runs tagged with one of these flow runs' ids, counted per flow run."""
    from mlflow import MlflowClient

    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    counts: Counter[str] = Counter()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=50000):
            tag = run.data.tags.get("driftloop.flow_run")
            if tag in flow_runs:
                counts[tag] += 1
    return counts


# -- numbers --------------------------------------------------------------------------------------


def _seconds(later: Any, earlier: Any) -> float | None:
    return None if later is None or earlier is None else (later - earlier).total_seconds()


def _median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b  # type: ignore[operator]


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": harness.percentile(values, 50),
        "p95": harness.percentile(values, 95),
        "max": max(values),
        "min": min(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows of the project")
    parser.add_argument("--repeat", type=int, default=5, help="training runs of each kind")
    parser.add_argument("--runs", type=int, default=200, help="scheduled monitoring runs")
    parser.add_argument("--every", type=float, default=12.0, help="seconds between scheduled runs")
    parser.add_argument("--only", choices=("fixed", "schedule"), default=None)
    parser.add_argument("--quick", action="store_true", help="2 repeats, 20 scheduled runs")
    parser.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.runs = 2, 20
    work = harness.scratch_dir("driftloop-bench-worker-")
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "worker",
        "started": datetime.now(UTC).isoformat(),
        "rows": args.rows,
        "load_before": os.getloadavg()[0],
    }
    with Stack(work, args.rows).up() as stack:
        result["stack_up_s"] = stack.up_s
        stack.cli("run", "--json")  # the first champion, through the stack
        if args.only in (None, "fixed"):
            result["fixed"] = fixed_cost(stack, args.repeat)
        if args.only in (None, "schedule"):
            result["schedule"] = schedule_lag(stack, args.runs, args.every)
    result["load_after"] = os.getloadavg()[0]
    result["wall_s"] = time.monotonic() - started
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(result, indent=1, allow_nan=False, default=str)
    name = "worker.json" if args.only is None else f"worker-{args.only}.json"
    (RESULTS / name).write_text(text + "\n")
    summary(result)
    if args.json:
        print(text)
    return 0


def summary(result: dict[str, Any]) -> None:
    if "fixed" in result:
        fixed = result["fixed"]
        med, cost, up = fixed["median_wall_s"], fixed["fixed_cost_s"], fixed["median_startup_s"]
        log("training run, median wall (s):", {k: _round(v) for k, v in med.items()})
        log("start-up Pending -> Running (s):", {k: _round(v) for k, v in up.items()})
        log(
            "fixed cost against bare (s):",
            {k: _round(v) for k, v in cost.items()},
            "target warm <= 3",
        )
    if "schedule" in result:
        sched = result["schedule"]
        log(
            f"scheduled monitoring: {sched['runs']} runs {sched['states']}, lag {sched['lag_s']}, "
            f"pick-up {sched['pickup_s']}, duplicates {sched['duplicates']} (target 0), "
            f"per worker {sched['runs_per_worker']}"
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


if __name__ == "__main__":
    sys.exit(main())
