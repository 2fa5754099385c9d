"""Benchmark driftloop's training pipeline against a bare pandas + scikit-learn baseline.

For each size (the Seattle data, or N synthetic weather-like daily rows) the same Parquet file is
trained on twice, each run in a fresh subprocess whose wall time and peak RSS (wait4 ru_maxrss,
imports and interpreter exit included) are measured:

- bare: bench/bare_train.py, the same features, split, CV folds, model and metrics in plain pandas
  + scikit-learn (no driftloop, Prefect, MLflow, Great Expectations or DVC);
- pipeline: `flows.training.training_flow(source=<file>)` (ingest + GE gate -> DVC add/push ->
  GE over all data -> train -> evaluate -> MLflow log + register -> promote) in a new temporary
  project (git + DVC with a local remote, params.yaml copied from the repo, MLflow store created
  beforehand), against a Prefect server this script starts (or `--prefect-api URL`).

A line wall = fixed + slope * rows is fitted over the sizes for both. Reported against targets:
marginal overhead per row (pipeline slope / bare slope - 1) <= 10 %, fixed overhead (pipeline
fixed - bare fixed) <= 10 s against a running Prefect server. Extras at the Seattle size: a cold
MLflow store, and Prefect's ephemeral mode (fresh, then reused PREFECT_HOME). When a target is
missed (or with --profile) the pipeline is re-run under cProfile for a breakdown.

    uv run python bench/bench_train.py
    uv run python bench/bench_train.py --sizes seattle,50000 --repeat 3
    uv run python bench/bench_train.py --prefect-api http://127.0.0.1:4200/api --no-extras

Dates must be daily (lag features mean "yesterday") and fit in datetime64[ns] (1677-09-22 to
2262-04-11, 213,503 days): driftloop breaks on wider date units (see README), so a larger size is
capped and the output says so. Figures are printed, not asserted; JSON goes to
bench/results/train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from driftloop.config import QUIET_OFFLINE_ENV, Params, load_params

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results" / "train.json"
BIN = Path(sys.executable).parent
PROJECT_FILES = ("params.yaml", "uv.lock", ".gitignore")

# Daily dates that fit datetime64[ns]; synthetic data starts at 1800-01-01 when it fits.
FIRST_DAY = pd.Timestamp("1677-09-22")
LAST_DAY = pd.Timestamp("2262-04-11")
MAX_DAILY_ROWS = (LAST_DAY - FIRST_DAY).days + 1
PREFERRED_START = pd.Timestamp("1800-01-01")

TARGET_MARGINAL_PCT = 10.0
TARGET_FIXED_S = 10.0
CHILD_TIMEOUT_S = 3600

# Functions whose cumulative time the profile breakdown reports: (file suffix, function, label).
PROFILED = (
    ("driftloop/pipeline.py", "read_next_batch", "read source file"),
    ("driftloop/validation.py", "validate_batch", "GE validate_batch"),
    ("driftloop/datastore.py", "content_id", "hash frame (batch id)"),
    ("driftloop/datastore.py", "write_batch", "write raw parquet"),
    ("driftloop/versioning.py", "track", "DVC add + push"),
    ("driftloop/versioning.py", "is_in_sync", "DVC status"),
    ("driftloop/datastore.py", "load_accepted", "read accepted data"),
    ("driftloop/pipeline.py", "already_trained", "registry lookup"),
    ("driftloop/features.py", "make_dataset", "features (make_dataset)"),
    ("driftloop/training.py", "cross_validate", "time-series CV"),
    ("driftloop/training.py", "fit_candidate", "CV + final fit"),
    ("driftloop/training.py", "evaluate", "evaluate (predict + metrics)"),
    ("driftloop/pipeline.py", "log_and_register", "MLflow log + register"),
    ("mlflow/data/pandas_dataset.py", "from_pandas", "  mlflow from_pandas dataset"),
    ("mlflow/tracking/fluent.py", "log_input", "  mlflow log_input"),
    ("driftloop/registry.py", "trusted_types", "  skops trusted types"),
    ("mlflow/sklearn/__init__.py", "log_model", "  mlflow.sklearn.log_model"),
    ("driftloop/pipeline.py", "promote", "promote"),
    ("driftloop/registry.py", "load_model", "  load registered model"),
    ("driftloop/pipeline.py", "evaluate_on_holdout", "  rebuild features + score"),
    ("prefect/artifacts.py", "create_markdown_artifact", "Prefect markdown artifacts"),
    ("prefect/artifacts.py", "create_table_artifact", "Prefect table artifact"),
)


# -- data ----------------------------------------------------------------------------------------


@dataclass
class Size:
    """One benchmarked size: what was asked, what runs, and why they differ."""

    label: str
    rows: int
    asked: list[str] = field(default_factory=list)
    start: str | None = None
    note: str = ""

    @property
    def capped(self) -> bool:
        return bool(self.note)


def plan_sizes(spec: str) -> list[Size]:
    """Parse --sizes; cap synthetic sizes to the daily datetime64[ns] range; merge duplicates."""
    planned: dict[int | str, Size] = {}
    for item in (s.strip().lower() for s in spec.split(",") if s.strip()):
        if item == "seattle":
            planned.setdefault("seattle", Size("seattle", 1461, ["seattle"]))
            continue
        asked = int(float(item.replace("_", "")))
        rows = min(asked, MAX_DAILY_ROWS)
        start = max(FIRST_DAY, min(PREFERRED_START, LAST_DAY - pd.Timedelta(days=rows - 1)))
        size = planned.setdefault(rows, Size(f"{rows:,}", rows, [], str(start.date())))
        size.asked.append(item)
        if asked > rows:
            size.note = (
                f"capped: {asked:,} daily rows do not fit datetime64[ns]; "
                f"largest that fits is {MAX_DAILY_ROWS:,} ({FIRST_DAY.date()}..{LAST_DAY.date()})"
            )
    return list(planned.values())


def synthetic_weather(rows: int, start: str, seed: int = 7) -> pd.DataFrame:
    """Seattle-like daily weather: seasonal temperatures, rain in spells (so tomorrow is learnable).

    Rain comes from an AR(1) wetness process plus a winter-wet season term (about 42 % rain
    days, 75 % day-to-day persistence); temperatures have a seasonal cycle and AR(1) anomalies.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=rows, freq="D")
    winter = np.cos(2 * np.pi * (dates.dayofyear.to_numpy(float) - 15) / 365.25)
    wetness = lfilter([1.0], [1.0, -0.6], rng.normal(0.0, 1.0, rows))
    rain = wetness + 0.9 * winter > 0.3
    amount = rng.gamma(0.8, 5.0, rows) * (1 + 0.5 * np.clip(wetness, 0, None))
    precipitation = np.where(rain, np.clip(amount, 0.1, 300.0), 0.0).round(1)
    anomaly = lfilter([1.0], [1.0, -0.8], rng.normal(0.0, 1.5, rows))
    temp_max = np.clip(16.5 - 8.5 * winter + anomaly - 2.0 * rain, -35, 50).round(1)
    temp_min = np.clip(temp_max - 8.0 + 2.5 * rain + rng.normal(0, 1.5, rows), -45, 40).round(1)
    wind = np.clip(rng.gamma(4.0, 0.75, rows) + 1.2 * rain, 0, 50).round(1)
    weather = np.where(precipitation > 1.0, "rain", np.where(precipitation > 0, "drizzle", "sun"))
    return pd.DataFrame(
        {
            "date": dates,
            "precipitation": precipitation,
            "temp_max": temp_max,
            "temp_min": temp_min,
            "wind": wind,
            "weather": weather.astype(object),
        }
    )


def write_data(size: Size, folder: Path) -> Path:
    """The size's batch as a Parquet file (the same file feeds bare and pipeline)."""
    if size.label == "seattle":
        from driftloop.sources import load_seattle

        frame = load_seattle()
    else:
        assert size.start is not None
        frame = synthetic_weather(size.rows, size.start)
    path = folder / f"weather-{size.rows}.parquet"
    frame.to_parquet(path, index=False)
    return path


def bare_config(params: Params) -> dict[str, Any]:
    """What bare_train.py needs from params.yaml (validated and defaulted by driftloop)."""
    return {
        "date_column": params.data.date_column,
        "numeric": params.features.numeric,
        "lags": params.features.lags,
        "rolling_windows": params.features.rolling_windows,
        "season": params.features.season,
        "target_column": params.target.column,
        "horizon": params.target.horizon,
        "threshold": params.target.threshold,
        "holdout_days": params.train.holdout_days,
        "cv_splits": params.train.cv_splits,
        "seed": params.train.seed,
        "model": params.train.model,
        "hyperparams": params.train.hyperparams,
    }


# -- child processes -----------------------------------------------------------------------------


@dataclass
class Run:
    """One measured child process."""

    kind: str
    size: str
    rows: int
    wall_s: float
    peak_mb: float
    returncode: int
    log: str
    spawned_at: float
    ended_at: float
    out: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and "error" not in self.out


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a child this script started (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float, int, float, float]:
    """Run one child; return (wall s, peak RSS MB of it and its waited children, rc, t0, t1)."""
    with log.open("wb") as fh:
        spawned = time.time()
        began = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        timer = threading.Timer(CHILD_TIMEOUT_S, _kill_group, [proc.pid])
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
        ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(proc.pid, signal.SIGTERM)  # leftovers of the run (none expected)
    return wall, usage.ru_maxrss / 1024, proc.returncode, spawned, ended


def child_env(extra: dict[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRIFTLOOP_"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(QUIET_OFFLINE_ENV)
    env.update(extra)
    for key in drop:
        env.pop(key, None)
    return env


def run_bare(size: Size, data: Path, config: Path, work: Path, n: int) -> Run:
    out_dir = work / f"bare-{size.rows}-{n}"
    log = work / f"bare-{size.rows}-{n}.log"
    cmd = [sys.executable, str(BENCH / "bare_train.py"), str(data), str(config), str(out_dir)]
    wall, peak, rc, t0, t1 = run_child(cmd, work, child_env({}), log)
    run = Run("bare", size.label, size.rows, wall, peak, rc, str(log), t0, t1)
    result = out_dir / "result.json"
    run.out = json.loads(result.read_text()) if result.exists() else {"error": "no result"}
    marks = run.out.get("marks", {})
    if marks:
        run.phases = {
            "start + imports": marks["imported"] - t0,
            "read parquet": marks["read"] - marks["imported"],
            "features + split": marks["features"] - marks["read"],
            "time-series CV": marks["cv"] - marks["features"],
            "final fit": marks["fit"] - marks["cv"],
            "evaluate": marks["evaluate"] - marks["fit"],
            "save model": marks["saved"] - marks["evaluate"],
            "interpreter exit": t1 - marks["end"],
        }
    return run


def _cmd(*args: str | Path, cwd: Path, env: dict[str, str]) -> None:
    subprocess.run([str(a) for a in args], cwd=cwd, env=env, check=True, capture_output=True)


INIT_MLFLOW = (
    "from driftloop.config import Settings, apply_env_defaults\n"
    "settings = Settings()\n"
    "apply_env_defaults(settings)\n"
    "from driftloop.registry import connect\n"
    "connect(settings)\n"
)


def make_project(root: Path, remote: Path, *, warm_mlflow: bool) -> Path:
    """A throwaway driftloop project: git + DVC (local remote), params.yaml, MLflow store."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, root / name)
    env = child_env({"DRIFTLOOP_PROJECT": str(root)})
    _cmd("git", "init", "-q", "-b", "main", cwd=root, env=env)
    _cmd("git", "config", "user.email", "bench@example.invalid", cwd=root, env=env)
    _cmd("git", "config", "user.name", "bench", cwd=root, env=env)
    _cmd("git", "config", "commit.gpgsign", "false", cwd=root, env=env)
    _cmd(BIN / "dvc", "init", "-q", cwd=root, env=env)
    _cmd(BIN / "dvc", "config", "core.analytics", "false", cwd=root, env=env)
    _cmd(BIN / "dvc", "remote", "add", "-d", "local", remote, cwd=root, env=env)
    _cmd("git", "add", "-A", cwd=root, env=env)
    _cmd("git", "commit", "-q", "-m", "bench project", cwd=root, env=env)
    if warm_mlflow:
        _cmd(sys.executable, "-c", INIT_MLFLOW, cwd=root, env=env)
    return root


def run_pipeline(
    size: Size,
    data: Path,
    work: Path,
    tag: str,
    prefect_env: dict[str, str],
    *,
    warm_mlflow: bool = True,
    profile: Path | None = None,
) -> Run:
    name = f"pipe-{size.rows}-{tag}"
    project = make_project(work / name, work / f"{name}-remote", warm_mlflow=warm_mlflow)
    out, log = work / f"{name}.json", work / f"{name}.log"
    cmd = [sys.executable, str(BENCH / "pipeline_child.py"), str(data), str(out)]
    if profile is not None:
        cmd.append(str(profile))
    drop = () if "PREFECT_API_URL" in prefect_env else ("PREFECT_API_URL",)
    env = child_env({"DRIFTLOOP_PROJECT": str(project), **prefect_env}, drop)
    wall, peak, rc, t0, t1 = run_child(cmd, project, env, log)
    run = Run("pipeline", size.label, size.rows, wall, peak, rc, str(log), t0, t1)
    run.out = json.loads(out.read_text()) if out.exists() else {"error": "no result"}
    marks = run.out.get("marks", {})
    if "end" in marks:
        run.phases = {
            "start + imports": marks["imported"] - t0,
            "flow call": marks["flow_done"] - marks["imported"],
            "interpreter exit": t1 - marks["end"],
        }
    return run


def median_run(runs: list[Run]) -> Run:
    """The run with the median wall time (first failed run if any failed)."""
    failed = [r for r in runs if not r.ok]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


# -- Prefect server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    api: str
    started_in_s: float


def start_server(work: Path) -> Server:
    """`prefect server start` on a free port with its own PREFECT_HOME; wait for /api/health."""
    port = _free_port()
    env = child_env(
        {"PREFECT_HOME": str(work / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    )
    log = (work / "prefect-server.log").open("wb")
    began = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    while time.perf_counter() - began < 180:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited ({proc.returncode}); see {log.name}")
        with contextlib.suppress(OSError, ValueError):
            if _http(f"{api}/health", timeout=2) is True:
                return Server(proc, api, time.perf_counter() - began)
        time.sleep(0.5)
    stop_server(Server(proc, api, 0))
    raise RuntimeError("prefect server did not answer /api/health within 180 s")


def stop_server(server: Server) -> None:
    """SIGTERM the server's process group (it runs in its own session), then SIGKILL."""
    _kill_group(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        _kill_group(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


def task_durations(api: str, flow_run_id: str) -> dict[str, float]:
    """Seconds per task of a flow run (start to end, from the Prefect API), plus the flow run."""

    def seconds(run: dict[str, Any]) -> float:
        if not run.get("start_time") or not run.get("end_time"):
            return float("nan")
        start = dt.datetime.fromisoformat(run["start_time"])
        return (dt.datetime.fromisoformat(run["end_time"]) - start).total_seconds()

    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    durations: dict[str, float] = {}
    for task_run in _http(f"{api}/task_runs/filter", {**body, "limit": 200}):
        name = task_run["name"].rsplit("-", 1)[0]
        durations[name] = durations.get(name, 0.0) + seconds(task_run)
    durations["(flow run, server view)"] = seconds(_http(f"{api}/flow_runs/{flow_run_id}"))
    return durations


# -- analysis ------------------------------------------------------------------------------------


def fit_line(rows: list[int], walls: list[float]) -> dict[str, float] | None:
    """Least-squares wall = fixed + slope * rows (None with fewer than two distinct sizes)."""
    if len(set(rows)) < 2:
        return None
    slope, fixed = np.polyfit(np.asarray(rows, float), np.asarray(walls, float), 1)
    return {"fixed_s": float(fixed), "slope_s_per_row": float(slope)}


def profile_breakdown(path: Path) -> list[dict[str, Any]]:
    """Cumulative seconds and call counts of the PROFILED functions in a cProfile dump."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    for suffix, func, label in PROFILED:
        calls, seconds = 0, 0.0
        for (filename, _, name), (_, ncalls, _, cumtime, _) in stats.items():
            if name == func and filename.replace("\\", "/").endswith(suffix):
                calls, seconds = calls + ncalls, max(seconds, cumtime)
        if calls:
            rows.append({"step": label, "calls": calls, "seconds": round(seconds, 3)})
    return rows


def metrics_match(bare: Run, pipe: Run) -> str:
    b = bare.out.get("holdout", {}).get("roc_auc")
    p = (pipe.out.get("result") or {}).get("holdout", {}).get("roc_auc")
    if b is None or p is None:
        return "n/a"
    return f"{'same' if abs(b - p) < 1e-9 else 'DIFFERENT'} (bare {b:.4f}, pipeline {p:.4f})"


def fmt_phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in phases.items())


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="seattle,1000000,4000000")
    parser.add_argument("--prefect-api", help="use this running server (default: start one)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; median reported")
    parser.add_argument("--no-extras", action="store_true", help="skip cold-store and ephemeral")
    parser.add_argument("--profile", action="store_true", help="profile even if targets pass")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    params = load_params(REPO / "params.yaml")
    sizes = plan_sizes(args.sizes)
    work = Path(tempfile.mkdtemp(prefix="driftloop-bench-train-"))
    config = work / "bare_config.json"
    config.write_text(json.dumps(bare_config(params)))
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "model": {"name": params.train.model, **params.train.hyperparams},
        "sizes": [asdict(s) for s in sizes],
    }
    print(f"driftloop training bench: {params.train.model} {params.train.hyperparams}, "
          f"cv_splits={params.train.cv_splits}, holdout_days={params.train.holdout_days}")
    print(f"work dir: {work}")
    for size in sizes:
        if size.capped:
            print(f"NOTE size {'/'.join(size.asked)}: {size.note}; running {size.rows:,} rows")

    server: Server | None = None
    try:
        if args.prefect_api:
            api = args.prefect_api.rstrip("/")
            print(f"Prefect server: {api} (given)")
        else:
            server = start_server(work)
            api = server.api
            print(f"Prefect server: {api} (started in {server.started_in_s:.1f} s, not timed)")
        client_home = {"PREFECT_API_URL": api, "PREFECT_HOME": str(work / "prefect-client")}

        measured: list[tuple[Size, Run, Run]] = []
        datafiles: dict[str, Path] = {}
        for size in sizes:
            data = datafiles[size.label] = write_data(size, work)
            bares = [run_bare(size, data, config, work, n) for n in range(args.repeat)]
            pipes = []
            for n in range(args.repeat):
                pipe = run_pipeline(size, data, work, f"server{n}", client_home)
                if pipe.out.get("flow_run_id"):
                    with contextlib.suppress(OSError, ValueError):
                        pipe.tasks = task_durations(api, pipe.out["flow_run_id"])
                pipes.append(pipe)
            bare, pipe = median_run(bares), median_run(pipes)
            measured.append((size, bare, pipe))
            print(f"  {size.label}: bare {bare.wall_s:.1f} s / {bare.peak_mb:.0f} MB, "
                  f"pipeline {pipe.wall_s:.1f} s / {pipe.peak_mb:.0f} MB"
                  + ("" if pipe.ok else f"  FAILED: {pipe.out.get('error')} (log {pipe.log})"),
                  flush=True)

        extras: list[tuple[str, Run]] = []
        seattle = next((s for s in sizes if s.label == "seattle"), None)
        if seattle is not None and not args.no_extras:
            data = datafiles["seattle"]
            extras.append(("server, cold MLflow store", run_pipeline(
                seattle, data, work, "cold-store", client_home, warm_mlflow=False)))
            ephemeral = {"PREFECT_HOME": str(work / "prefect-ephemeral"),
                         "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            extras.append(("ephemeral, fresh PREFECT_HOME",
                           run_pipeline(seattle, data, work, "ephemeral0", ephemeral)))
            extras.append(("ephemeral, reused PREFECT_HOME",
                           run_pipeline(seattle, data, work, "ephemeral1", ephemeral)))

        ok = all(p.ok and b.ok for _, b, p in measured)
        rows = [s.rows for s, _, _ in measured]
        bare_fit = fit_line(rows, [b.wall_s for _, b, _ in measured]) if ok else None
        pipe_fit = fit_line(rows, [p.wall_s for _, _, p in measured]) if ok else None
        summary = summarize(bare_fit, pipe_fit)

        profiles: dict[str, Any] = {}
        missed = summary.get("marginal_pass") is False or summary.get("fixed_pass") is False
        if ok and (missed or args.profile):
            targets = {measured[0][0].label: measured[0][0], measured[-1][0].label: measured[-1][0]}
            for label, size in targets.items():
                dump = work / f"profile-{size.rows}.out"
                run = run_pipeline(size, datafiles[label], work, "profile", client_home,
                                   profile=dump)
                profiles[label] = {
                    "wall_s": run.wall_s,
                    "imports_s": run.out.get("imports", {}),
                    "functions": profile_breakdown(dump) if dump.exists() else [],
                }

        print_report(measured, extras, bare_fit, pipe_fit, summary, profiles)
        report.update(
            runs=[{"size": s.label, "rows": s.rows, "note": s.note, "bare": asdict(b),
                   "pipeline": asdict(p)} for s, b, p in measured],
            extras=[{"mode": m, **asdict(r)} for m, r in extras],
            fit={"bare": bare_fit, "pipeline": pipe_fit, **summary},
            targets={"marginal_overhead_pct_max": TARGET_MARGINAL_PCT,
                     "fixed_overhead_s_max": TARGET_FIXED_S},
            profiles=profiles,
        )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nresults: {RESULTS.relative_to(REPO)}")
        return 0 if ok else 1
    finally:
        if server is not None:
            stop_server(server)
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def summarize(bare: dict[str, float] | None, pipe: dict[str, float] | None) -> dict[str, Any]:
    if bare is None or pipe is None:
        return {}
    fixed = pipe["fixed_s"] - bare["fixed_s"]
    marginal = (pipe["slope_s_per_row"] / bare["slope_s_per_row"] - 1) * 100
    return {
        "fixed_overhead_s": fixed,
        "marginal_overhead_pct": marginal,
        "fixed_pass": fixed <= TARGET_FIXED_S,
        "marginal_pass": marginal <= TARGET_MARGINAL_PCT,
    }


def print_report(
    measured: list[tuple[Size, Run, Run]],
    extras: list[tuple[str, Run]],
    bare_fit: dict[str, float] | None,
    pipe_fit: dict[str, float] | None,
    summary: dict[str, Any],
    profiles: dict[str, Any],
) -> None:
    print("\n| size | rows | bare wall s | bare peak MB | pipeline wall s | pipeline peak MB "
          "| ratio wall | ratio mem |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, bare, pipe in measured:
        label = size.label + (f" (asked {', '.join(size.asked)}; capped)" if size.capped else "")
        failed = "" if pipe.ok else " FAILED"
        print(f"| {label} | {size.rows:,} | {bare.wall_s:.1f} | {bare.peak_mb:.0f} | "
              f"{pipe.wall_s:.1f}{failed} | {pipe.peak_mb:.0f} | "
              f"{pipe.wall_s / bare.wall_s:.1f}x | {pipe.peak_mb / bare.peak_mb:.1f}x |")
    for size, _, _ in measured:
        if size.capped:
            print(f"note: {size.note}")
    for size, bare, pipe in measured:
        print(f"holdout roc_auc at {size.label}: {metrics_match(bare, pipe)}")

    print("\nfit wall = fixed + slope * rows:")
    if bare_fit is None or pipe_fit is None:
        print("  needs two distinct sizes and no failed run")
    else:
        for name, fit in (("bare", bare_fit), ("pipeline", pipe_fit)):
            print(f"  {name:8s} fixed {fit['fixed_s']:6.2f} s, "
                  f"slope {fit['slope_s_per_row'] * 1e6:7.2f} s per 1M rows")
        fixed, marginal = summary["fixed_overhead_s"], summary["marginal_overhead_pct"]
        print(f"  fixed overhead    {fixed:6.2f} s   (target <= {TARGET_FIXED_S:.0f} s)   "
              f"{'PASS' if summary['fixed_pass'] else 'MISS'}")
        print(f"  marginal overhead {marginal:6.1f} %   (target <= {TARGET_MARGINAL_PCT:.0f} %)   "
              f"{'PASS' if summary['marginal_pass'] else 'MISS'}")

    if extras:
        base = next((p for s, _, p in measured if s.label == "seattle"), None)
        print("\nSeattle extras (pipeline, one run each):")
        for mode, run in extras:
            delta = f", {run.wall_s - base.wall_s:+.1f} s vs warm server run" if base else ""
            status = "" if run.ok else f" FAILED ({run.out.get('error')}, log {run.log})"
            print(f"  {mode:32s} {run.wall_s:5.1f} s, {run.peak_mb:4.0f} MB{delta}{status}")

    print("\nwhere the time goes (median runs; seconds):")
    for size, bare, pipe in measured:
        print(f"  {size.label} bare:     {fmt_phases(bare.phases)}")
        print(f"  {size.label} pipeline: {fmt_phases(pipe.phases)}")
        if pipe.tasks:
            print(f"  {size.label} tasks:    {fmt_phases(pipe.tasks)}")
    for label, prof in profiles.items():
        print(f"\nprofile, {label} (separate run under cProfile, {prof['wall_s']:.1f} s wall):")
        print("  imports: " + fmt_phases(prof["imports_s"]))
        for row in prof["functions"]:
            print(f"  {row['step']:32s} {row['seconds']:8.2f} s  ({row['calls']} calls)")


if __name__ == "__main__":
    sys.exit(main())
