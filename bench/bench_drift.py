"""Benchmark the drift check: driftloop's adapter vs bare Evidently vs plain scipy.

Each measurement runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own. Every child
generates the same seeded weather-like data (N reference rows vs N current rows, the current one
shifted on some columns), imports its library, then times only the drift computation.

    uv run python bench/bench_drift.py                # 1M x 1M rows, params.yaml method
    uv run python bench/bench_drift.py --rows 10000   # quick
    uv run python bench/bench_drift.py --method psi --threshold 0.1 --repeat 3

Targets (at 1M x 1M): drift check <= 10 s and <= 1.5 GB peak; adapter <= 20% over bare Evidently.
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ["precipitation", "temp_max", "temp_min", "wind", "humidity"]
MODES = ("adapter", "evidently", "scipy")
LABELS = {
    "adapter": "driftloop.drift.compute_drift",
    "evidently": "bare Evidently Report",
    "scipy": "plain scipy/numpy",
}


def weather(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    """Seattle-like daily weather; `shifted` is warmer, drier and windier (humidity unchanged)."""
    rng = np.random.default_rng(seed + int(shifted))
    warm = 3.0 if shifted else 0.0
    temp_max = rng.normal(16.4 + warm, 7.3, rows)
    rainy = rng.random(rows) < (0.35 if shifted else 0.45)
    return pd.DataFrame(
        {
            "precipitation": np.where(rainy, rng.gamma(0.7, 7.0, rows), 0.0).round(1),
            "temp_max": temp_max.round(1),
            "temp_min": (temp_max - 8.2 + rng.normal(0.0, 2.5, rows)).round(1),
            "wind": rng.gamma(5.0, 0.65 * (1.15 if shifted else 1.0), rows).round(1),
            "humidity": rng.normal(72.0, 12.0, rows).clip(5, 100).round(0),
        }
    )


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the three contenders (run inside a child) --------------------------------------------------


def run_adapter(ref: pd.DataFrame, cur: pd.DataFrame, method: str, threshold: float | None):
    from driftloop.config import MonitorParams
    from driftloop.drift import compute_drift

    # max_rows = all rows: the same work as the other two (monitoring samples down to
    # params.yaml's monitor.max_rows, 200,000 by default, before it calls Evidently)
    monitor = MonitorParams(method=method, threshold=threshold, max_rows=max(len(ref), 1000))
    start = time.perf_counter()
    summary = compute_drift(ref, cur, COLUMNS, [], monitor)
    return time.perf_counter() - start, list(summary.drifted_columns)


def run_evidently(ref: pd.DataFrame, cur: pd.DataFrame, method: str, threshold: float | None):
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    start = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=COLUMNS,
        categorical_columns=[],
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    metrics = [ValueDrift(column=c, method=method, threshold=threshold) for c in COLUMNS]
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )
    tests = json.loads(snapshot.json())["tests"]
    drifted = [t["metric_config"]["params"]["column"] for t in tests if t["status"] == "FAIL"]
    return time.perf_counter() - start, drifted


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI on Sturges bins of the pooled sample (what Evidently's `psi` does for numbers)."""
    bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    r = np.histogram(ref, bins)[0] / len(ref)
    c = np.histogram(cur, bins)[0] / len(cur)
    r, c = np.where(r == 0, 1e-4, r), np.where(c == 0, 1e-4, c)
    return float(np.sum((r - c) * np.log(r / c)))


def run_scipy(ref: pd.DataFrame, cur: pd.DataFrame, method: str, threshold: float | None):
    from scipy import stats

    tests = {
        "ks": (lambda r, c: stats.ks_2samp(r, c).pvalue, 0.05, lambda s, t: s <= t),
        "wasserstein": (
            lambda r, c: stats.wasserstein_distance(r, c) / max(float(np.std(r)), 0.001),
            0.1,
            lambda s, t: s >= t,
        ),
        "psi": (_psi, 0.1, lambda s, t: s >= t),
    }
    if method not in tests:
        raise SystemExit(f"no plain baseline for method {method!r} (have: {sorted(tests)})")
    score, default, is_drift = tests[method]
    limit = default if threshold is None else threshold
    start = time.perf_counter()
    drifted = [c for c in COLUMNS if is_drift(score(ref[c].to_numpy(), cur[c].to_numpy()), limit)]
    return time.perf_counter() - start, drifted


RUNNERS = {"adapter": run_adapter, "evidently": run_evidently, "scipy": run_scipy}
IMPORTS = {"adapter": "evidently", "evidently": "evidently", "scipy": "scipy.stats"}


def child(mode: str, rows: int, seed: int, method: str, threshold: float | None) -> None:
    ref, cur = weather(rows, seed, shifted=False), weather(rows, seed, shifted=True)
    start = time.perf_counter()
    __import__(IMPORTS[mode])
    import_s = time.perf_counter() - start
    before = peak_mb()
    seconds, drifted = RUNNERS[mode](ref, cur, method, threshold)
    result = {"import_s": import_s, "seconds": seconds, "peak_mb": peak_mb()}
    print(json.dumps({**result, "before_mb": before, "drifted": drifted}))


# --- the parent: spawn, collect, print ----------------------------------------------------------


def measure(
    mode: str, args: argparse.Namespace, method: str, threshold: float | None
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows)]
    cmd += ["--seed", str(args.seed), "--method", method]
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    env = {**os.environ, "DO_NOT_TRACK": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def default_stattest() -> tuple[str, float | None]:
    """The method and threshold the flow uses: params.yaml's monitor section."""
    from driftloop.config import load_params

    monitor = load_params(Path(__file__).resolve().parents[1] / "params.yaml").monitor
    return monitor.method, monitor.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in reference and current")
    parser.add_argument("--method", help="Evidently stattest (default: params.yaml monitor.method)")
    parser.add_argument("--threshold", type=float, help="(default: params.yaml monitor.threshold)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (best time)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.seed, args.method, args.threshold)
        return
    method, threshold = default_stattest()
    if args.method is not None:
        method, threshold = args.method, args.threshold
    elif args.threshold is not None:
        threshold = args.threshold
    report(args, method, threshold)


def report(args: argparse.Namespace, method: str, threshold: float | None) -> None:
    shown = "Evidently default" if threshold is None else threshold
    print(
        f"drift check: {args.rows:,} reference x {args.rows:,} current rows, "
        f"{len(COLUMNS)} numeric columns, method={method}, threshold={shown}, "
        f"repeat={args.repeat} (compute: best of; import, memory: median)"
    )
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for _ in range(args.repeat):  # interleaved, so a busy moment hits every contender alike
        for m in MODES:
            runs[m].append(measure(m, args, method, threshold))
    figures = {
        m: {
            "seconds": min(r["seconds"] for r in rs),
            "import_s": statistics.median(r["import_s"] for r in rs),
            "peak_mb": statistics.median(r["peak_mb"] for r in rs),
            "added_mb": statistics.median(r["peak_mb"] - r["before_mb"] for r in rs),
        }
        for m, rs in runs.items()
    }
    print(
        f"\n{'contender':32} {'compute s':>10} {'import s':>9} {'peak MB':>8} {'+MB':>6}"
        "  drifted columns"
    )
    for m in MODES:
        figs = figures[m]
        drifted = ",".join(runs[m][-1]["drifted"]) or "-"
        print(
            f"{LABELS[m]:32} {figs['seconds']:10.2f} {figs['import_s']:9.2f} "
            f"{figs['peak_mb']:8.0f} {figs['added_mb']:6.0f}  {drifted}"
        )
    a, e, s = figures["adapter"], figures["evidently"], figures["scipy"]
    print(
        f"\nadapter / bare Evidently: time {a['seconds'] / e['seconds']:.2f}x, "
        f"peak memory {a['peak_mb'] / e['peak_mb']:.2f}x"
    )
    print(
        f"adapter / plain scipy:    time {a['seconds'] / s['seconds']:.2f}x, "
        f"peak memory {a['peak_mb'] / s['peak_mb']:.2f}x"
    )
    agree = all(runs[m][-1]["drifted"] == runs["scipy"][-1]["drifted"] for m in MODES)
    print(f"same drifted columns in all three: {'yes' if agree else 'NO'}")
    print(
        "(compute s: the drift call alone; import s: its library import, paid once per process;"
        " peak MB: the child's ru_maxrss, data included; +MB: peak added by the drift call)"
    )


if __name__ == "__main__":
    main()
