"""Benchmark the training pipeline against a bare pandas + scikit-learn baseline.

For each dataset (flights, synthetic events) and size, the same Parquet and params files go
through `bare_train.py` and through `driftloop --params params.yaml run --json` (ingest ->
validate -> train -> evaluate -> register -> promote) in a new throwaway project, against a local
Prefect server started once (or `--prefect-api`). Each is a new process, run `--repeat` times,
bare and pipeline alternating so that load on the machine hits both alike.

It prints wall (median and min-max), CPU and peak RSS per run kind, the pipeline/bare ratio, and
per dataset a line `wall = fixed + slope * rows` fitted to the medians of each kind:

- FIXED overhead = pipeline fixed - bare fixed (target <= 10 s against a running server);
- MARGINAL overhead per row = (pipeline slope - bare slope) / bare slope (target <= 10 %).

    uv run python -m bench.bench_train                 # flights 50 % + 100 %, synthetic 500k + 2M
    uv run python -m bench.bench_train --quick         # smoke: synthetic 20k + 60k
    uv run python -m bench.bench_train --check         # exit 1 when a target is missed

JSON goes to bench/results/train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import data, harness

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "train.json"
TARGET_FIXED_S = 10.0
TARGET_MARGINAL = 0.10
KINDS = ("bare", "pipeline")


@dataclass
class Case:
    """One dataset at one size, with the runs of each kind."""

    made: data.Made
    dataset: str
    runs: dict[str, list[harness.Run]] = field(default_factory=lambda: {k: [] for k in KINDS})
    auc: dict[str, list[float | None]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def ok(self, kind: str) -> list[harness.Run]:
        return [r for r in self.runs[kind] if r.returncode == 0]

    def median(self, kind: str, what: str = "wall_s") -> float | None:
        ok = self.ok(kind)
        return harness.Spread.of([getattr(r, what) for r in ok]).median if ok else None


# -- running -------------------------------------------------------------------------------------


class Runner:
    """Runs one bare or pipeline process and keeps its logs under `work`."""

    def __init__(self, work: Path, env: dict[str, str], api_url: str | None, keep: bool) -> None:
        self.work, self.env, self.api_url, self.keep = work, env, api_url, keep
        self.projects = harness.ProjectFactory(work / "projects", env) if api_url else None
        self.count = 0

    def bare(self, made: data.Made) -> tuple[harness.Run, float | None]:
        self.count += 1
        out = self.work / f"bare-{self.count}"
        cmd = [sys.executable, str(BENCH / "bare_train.py"), str(made.params), str(out)]
        log = self.work / f"bare-{self.count}.log"
        run = harness.run_once(cmd, cwd=self.work, env=self.env, log=log)
        result = out / "result.json"
        auc = json.loads(result.read_text())["holdout"]["roc_auc"] if result.exists() else None
        shutil.rmtree(out, ignore_errors=True)
        return run, auc

    def pipeline(self, made: data.Made) -> tuple[harness.Run, float | None]:
        assert self.projects is not None and self.api_url is not None
        self.count += 1
        project = self.projects.new(made.params, f"pipeline-{self.count}")
        env = self.env | {"DRIFTLOOP_PROJECT": str(project), "PREFECT_API_URL": self.api_url}
        cmd = [str(harness.BIN / "driftloop"), "--params", "params.yaml", "run", "--json"]
        out, err = (
            self.work / f"pipeline-{self.count}.json",
            self.work / f"pipeline-{self.count}.log",
        )
        run = harness.run_once(cmd, cwd=project, env=env, log=out, errlog=err)
        if run.returncode != 0:
            tail = err.read_text(errors="replace").strip().splitlines()[-5:]
            print(f"  pipeline failed ({run.returncode}), see {err}:", *tail, sep="\n    ")
        if not self.keep:
            self.projects.remove(project)
        return run, find_auc(out)


def find_auc(path: Path) -> float | None:
    """The holdout ROC AUC of `driftloop run --json` (`holdout.roc_auc`; None if absent)."""
    try:
        value = json.loads(path.read_text())["holdout"]["roc_auc"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def run_cases(
    cases: list[Case], runner: Runner, kinds: tuple[str, ...], repeat: int, save: Any
) -> None:
    """Every case `repeat` times, kinds alternating; `save()` after each case (partial results)."""
    for case in cases:
        for i in range(repeat):
            for kind in kinds:
                run, auc = getattr(runner, kind)(case.made)
                case.runs[kind].append(run)
                case.auc[kind].append(auc)
                print(
                    f"{case.dataset:>9} {case.made.rows:>9,} {kind:>8} #{i + 1}: "
                    f"{run.wall_s:6.1f} s  {run.peak_rss_mb:6.0f} MB  rc={run.returncode}  "
                    f"load {run.load_before:.1f}",
                    flush=True,
                )
        save()


# -- analysis ------------------------------------------------------------------------------------


def fit_line(rows: list[int], walls: list[float]) -> tuple[float, float]:
    """Least squares wall = fixed + slope * rows; returns (fixed s, slope s per row)."""
    slope, fixed = np.polyfit(np.asarray(rows, float), np.asarray(walls, float), 1)
    return float(fixed), float(slope)


def overheads(cases: list[Case]) -> dict[str, Any] | None:
    """Fixed and marginal overhead of one dataset's sizes (None: too few complete sizes)."""
    complete = [c for c in cases if all(c.ok(k) for k in KINDS)]
    if len({c.made.rows for c in complete}) < 2:
        return None
    rows = [c.made.rows for c in complete]
    out: dict[str, Any] = {}
    for what in ("wall_s", "cpu_s"):  # CPU: the same fit, less sensitive to other load
        lines = {k: fit_line(rows, [c.median(k, what) or 0.0 for c in complete]) for k in KINDS}
        out[what] = {
            **{k: {"fixed_s": a, "s_per_million_rows": b * 1e6} for k, (a, b) in lines.items()},
            "fixed_overhead_s": lines["pipeline"][0] - lines["bare"][0],
            "marginal_overhead": (lines["pipeline"][1] - lines["bare"][1]) / lines["bare"][1],
        }
    wall = out["wall_s"]
    return {
        **out,
        "fixed_overhead_s": wall["fixed_overhead_s"],
        "marginal_overhead": wall["marginal_overhead"],
        "fixed_pass": wall["fixed_overhead_s"] <= TARGET_FIXED_S,
        "marginal_pass": wall["marginal_overhead"] <= TARGET_MARGINAL,
    }


def table(cases: list[Case]) -> list[str]:
    head = f"{'dataset':<10}{'rows':>10}  {'kind':<9}{'wall s (min-max)':<22}"
    lines = [head + f"{'cpu s':>8}{'peak MB':>9}{'pipe/bare':>11}  auc"]
    for case in cases:
        for kind in KINDS:
            ok = case.ok(kind)
            if not case.runs[kind]:
                continue
            label = f"{case.dataset:<10}{case.made.rows:>10,}  {kind:<9}"
            if not ok:
                lines.append(label + f"FAILED ({len(case.runs[kind])} runs)")
                continue
            stats = harness.summarize(ok)
            bare, pipe = case.median("bare"), case.median("pipeline")
            ratio = f"{pipe / bare:.2f}x" if kind == "pipeline" and bare and pipe else ""
            aucs = [a for a in case.auc[kind] if a is not None and math.isfinite(a)]
            lines.append(
                label
                + f"{stats['wall_s'].text():<22}{stats['cpu_s'].median:>8.1f}"
                + f"{stats['peak_rss_mb'].median:>9.0f}{ratio:>11}  "
                + (f"{aucs[0]:.4f}" if aucs else "-")
            )
    return lines


def verdict(name: str, fit: dict[str, Any] | None) -> list[str]:
    if fit is None:
        return [f"{name}: fewer than two sizes with both kinds complete: no fit"]
    b, p, cpu = fit["wall_s"]["bare"], fit["wall_s"]["pipeline"], fit["cpu_s"]
    mark = {True: "PASS", False: "MISS"}
    return [
        f"{name}: bare wall = {b['fixed_s']:.1f} s + {b['s_per_million_rows']:.1f} s/M rows; "
        f"pipeline wall = {p['fixed_s']:.1f} s + {p['s_per_million_rows']:.1f} s/M rows",
        f"  FIXED overhead    {fit['fixed_overhead_s']:6.1f} s   (target <= {TARGET_FIXED_S:.0f} s)"
        f"  {mark[fit['fixed_pass']]}",
        f"  MARGINAL overhead {fit['marginal_overhead'] * 100:6.1f} % per row (target <= "
        f"{TARGET_MARGINAL * 100:.0f} %)  {mark[fit['marginal_pass']]}",
        f"  (same fit on CPU seconds: fixed {cpu['fixed_overhead_s']:.1f} s, "
        f"marginal {cpu['marginal_overhead'] * 100:.1f} %)",
    ]


def strict(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def report(cases: list[Case], fits: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"meta": meta, "fits": fits, "cases": []}
    for case in cases:
        entry: dict[str, Any] = {"dataset": case.dataset, "rows": case.made.rows}
        for kind in KINDS:
            ok = case.ok(kind)
            entry[kind] = {
                "runs": [r.__dict__ for r in case.runs[kind]],
                "summary": {k: s.to_dict() for k, s in harness.summarize(ok).items()}
                if ok
                else None,
                "holdout_roc_auc": case.auc[kind],
            }
        out["cases"].append(entry)
    return strict(out)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", default="500000,2000000", help="rows, comma-separated")
    parser.add_argument("--flights", default="0.5,1", help="fractions of 336,776 rows ('' = none)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per kind and size (>= 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: synthetic 20k + 60k")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", choices=KINDS, help="run one kind only (no fit)")
    parser.add_argument("--prefect-api", help="use this Prefect server instead of starting one")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (0: unset)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and projects")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.synthetic, args.flights = "20000,60000", ""
    return args


def make_cases(args: argparse.Namespace, folder: Path) -> list[Case]:
    cases = [Case(data.make_flights(float(f), folder), "flights") for f in _items(args.flights)]
    cases += [
        Case(data.make_synthetic(int(n), folder), "synthetic") for n in _items(args.synthetic)
    ]
    return cases


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def _items(spec: str) -> list[str]:
    return [s.strip().replace("_", "") for s in spec.split(",") if s.strip()]


def warm_up(runner: Runner, case: Case, kinds: tuple[str, ...]) -> None:
    """One unreported run of each kind: fills the bytecode cache and the OS file cache."""
    for kind in kinds:
        run, _ = getattr(runner, kind)(case.made)
        print(f"warm-up {kind}: {run.wall_s:.1f} s (not reported)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    kinds = (args.only,) if args.only else KINDS
    work = args.work or harness.scratch_dir()
    work.mkdir(parents=True, exist_ok=True)
    env = harness.child_env(threads=args.threads, pycache=work / "pycache")
    with contextlib.ExitStack() as stack:
        if not args.keep and args.work is None:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        cases = make_cases(args, work / "data")
        api_url = args.prefect_api
        if "pipeline" in kinds and not api_url:
            api_url = stack.enter_context(harness.prefect_server(work / "prefect-server", env))
            print(f"Prefect server: {api_url}", flush=True)
        runner = Runner(work, env, api_url, args.keep)
        warm_up(runner, min(cases, key=lambda c: c.made.rows), kinds)
        run_cases(cases, runner, kinds, args.repeat, lambda: save(cases, args, argv, kinds))

    fits = save(cases, args, argv, kinds)
    print("\n" + "\n".join(table(cases)) + "\n")
    if args.only is None:
        for name, fit in fits.items():
            print("\n".join(verdict(name, fit)))
    print(f"\nJSON: {args.out}")
    missed = args.only is None and any(
        fit is None or not (fit["fixed_pass"] and fit["marginal_pass"]) for fit in fits.values()
    )
    failed = any(r.returncode != 0 for c in cases for k in kinds for r in c.runs[k])
    return 1 if args.check and (missed or failed) else 0


def save(
    cases: list[Case], args: argparse.Namespace, argv: list[str] | None, kinds: tuple[str, ...]
) -> dict[str, Any]:
    """Fit each dataset and write the JSON (after every case too: partial results survive)."""
    fits = {
        name: overheads([c for c in cases if c.dataset == name])
        for name in dict.fromkeys(c.dataset for c in cases)
    }
    meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "repeat": args.repeat,
        "threads": args.threads,
        "kinds": kinds,
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report(cases, fits, meta), indent=2, allow_nan=False))
    return fits


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the running child's group is killed, server stopped


if __name__ == "__main__":
    sys.exit(main())
