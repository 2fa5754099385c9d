"""Does an ingest cost grow with the new batch or with all accepted data?

A growing source receives one weekly batch of synthetic events (`data.synthetic_events`, the same
rows per week, timestamps spread over the week) at a time. For each source kind,

- `file`: a CSV file that grows (each week's rows appended);
- `folder`: a folder of drops (one Parquet file per week);
- `sqlite`: a SQLite table read by its time column (rows inserted each week);
- `postgres` (with `--postgres`): the same table in PostgreSQL;

it times the ingest of the next week after 10 and after 200 earlier weeks were accepted, and the
training pipeline's validation step (`ingest.validate_dataset`: all accepted data) right after
that ingest. Each timed call is a new process (`--child`): caches start cold as they do for a
CLI command, and the clock runs around the call only (imports are not counted, which makes the
ratio stricter, not looser). The ratio 200/10 of the medians is printed against the target.

The earlier weeks go through the real code path once: the drops of a folder source are ingested
in a base project (each gated on its own), the base is copied at 10 and at 200 weeks, and each
copy is pointed at its source kind (the CSV of the same weeks, the table of the same rows) and
primed with one untimed ingest (nothing new: every row is a repeat) and one validation, which
fills the per-project caches a long-lived project has. Each repeat then adds the next week to
every project (untimed) and times its ingest and validation, kinds and sizes alternating so that
load from other processes hits all alike.

    uv run python -m bench.bench_ingest                      # 5 repeats, 2,000 rows a week
    uv run python -m bench.bench_ingest --repeat 3 --rows 500
    uv run python -m bench.bench_ingest --postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test

JSON goes to bench/results/ingest.json.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench import data, harness

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "ingest.json"
TARGET_RATIO = 1.5
FIRST_WEEK = pd.Timestamp("2019-01-07")  # a Monday
HOURS_PER_WEEK = 7 * 24
URL_ENV = "BENCH_SOURCE_URL"
TABLE = "events"
STEPS = ("ingest", "validate")
RAW_DIR = "data/raw"  # the params' data.raw_dir and the project's state folder (defaults)
STATE_DIR = ".driftloop"


# -- weekly batches ----------------------------------------------------------------------------


def week(k: int, rows: int) -> pd.DataFrame:
    """Week k's events: a year of synthetic events squeezed into one week, ids unique over weeks."""
    frame = data.synthetic_events(rows, seed=data.SEED + k)
    hours = (frame["timestamp"] - data.HOURS_2023[0]) // pd.Timedelta(hours=1)
    hour_of_week = (hours * HOURS_PER_WEEK) // len(data.HOURS_2023)
    start = FIRST_WEEK + pd.Timedelta(weeks=k)
    frame["timestamp"] = start + pd.to_timedelta(hour_of_week, unit="h")
    frame["event_id"] = frame["event_id"] + k * rows
    return frame


def params_for(source: Any) -> dict[str, Any]:
    """The synthetic events' params with this source (no training here)."""
    params = data.synthetic_params(Path("unused"))
    params["data"]["source"] = source
    columns = params["data"]["columns"]  # every value declared: a rare store is not "unseen"
    columns["store"]["allowed"] = [f"s{i:03d}" for i in range(data.STORES)]
    columns["region"]["allowed"] = list(data.REGIONS)
    columns["channel"]["allowed"] = list(data.CHANNELS)
    return params


# -- sources -----------------------------------------------------------------------------------


class Source(abc.ABC):
    """One source kind in one project: `add(frame)` is a week arriving at the source."""

    kind = ""

    def __init__(self, project: Path, url: str | None = None) -> None:
        self.project, self.url = project, url

    @abc.abstractmethod
    def spec(self) -> Any:
        """The `data.source` value of this kind."""

    @abc.abstractmethod
    def add(self, frame: pd.DataFrame) -> None:
        """A week of rows arrives at the source."""

    def env(self) -> dict[str, str]:
        return {URL_ENV: self.url} if self.url else {}


class FolderSource(Source):
    kind = "folder"

    def spec(self) -> Any:
        return "drops"

    def add(self, frame: pd.DataFrame) -> None:
        first = frame["timestamp"].min().date()
        folder = self.project / "drops"
        folder.mkdir(exist_ok=True)
        frame.to_parquet(folder / f"events-{first}.parquet", index=False)


class FileSource(Source):
    kind = "file"

    def spec(self) -> Any:
        return "events.csv"

    def add(self, frame: pd.DataFrame) -> None:
        path = self.project / "events.csv"
        frame.to_csv(path, mode="a", header=not path.exists(), index=False)


class TableSource(Source):
    """A SQL table (SQLite file in the project, or a PostgreSQL table of its own per project)."""

    def __init__(self, project: Path, url: str, kind: str, table: str) -> None:
        super().__init__(project, url)
        self.kind, self.table = kind, table

    def spec(self) -> Any:
        return {"kind": "sql", "url_env": URL_ENV, "table": self.table}

    def add(self, frame: pd.DataFrame) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(str(self.url))
        try:
            with engine.begin() as conn:
                frame.to_sql(self.table, conn, if_exists="append", index=False)
                name = f'"{self.table}_ts" ON "{self.table}" ("timestamp")'
                conn.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {name}"))
        finally:
            engine.dispose()

    def drop(self) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(str(self.url))
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{self.table}"'))
        finally:
            engine.dispose()


def make_source(kind: str, project: Path, postgres: str | None, tag: str) -> Source:
    if kind == "folder":
        return FolderSource(project)
    if kind == "file":
        return FileSource(project)
    if kind == "sqlite":
        return TableSource(project, f"sqlite:///{project / 'source.db'}", kind, TABLE)
    assert postgres is not None
    return TableSource(project, postgres, kind, f"bench_ingest_{tag}_{os.getpid()}")


# -- the child: one timed call -----------------------------------------------------------------


def child(step: str, project: Path) -> dict[str, Any]:
    """Time one ingest or validation in this (new) process; imports happen before the clock."""
    import great_expectations  # noqa: F401  (its import is seconds: not part of the call)

    from driftloop import ingest
    from driftloop.config import load_context

    params, settings = load_context(project, project / "params.yaml")
    began = time.perf_counter()
    if step == "ingest":
        summary = ingest.ingest_source(params, settings)
        out: dict[str, Any] = {"rows": summary.rows, "repeats": summary.repeats}
    else:
        report = ingest.validate_dataset(params, settings)
        out = {"rows": report["rows"], "batches": report["batches"]}
    return {"seconds": time.perf_counter() - began, **out}


# -- setting up the projects -------------------------------------------------------------------


@dataclass
class Case:
    """One source kind after `earlier` accepted weeks: its project and its timed calls."""

    kind: str
    earlier: int
    project: Path
    source: Source
    next_week: int
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in STEPS})

    def seconds(self, step: str) -> list[float]:
        return [r["seconds"] for r in self.runs[step] if r.get("returncode") == 0]


def in_process(project: Path, env: dict[str, str], *steps: str) -> None:
    """Untimed ingest/validation calls in a child (priming, setup)."""
    for step in steps:
        cmd = [sys.executable, "-m", "bench.bench_ingest", "--child", step, str(project)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=BENCH.parent)
        if done.returncode != 0:
            raise RuntimeError(f"{step} in {project}: {done.stderr.strip()[-2000:]}")


def write_params(project: Path, source: Source) -> None:
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params_for(source.spec()), sort_keys=False))


def copy_project(base: Path, target: Path) -> Path:
    """A copy of a project with its own DVC remote (the copy's pushes stay its own)."""
    shutil.copytree(base, target, symlinks=True)
    remote = Path(str(base) + "-remote")
    if remote.exists():
        shutil.copytree(remote, Path(str(target) + "-remote"))
    config = target / ".dvc" / "config"
    config.write_text(config.read_text().replace(str(base) + "-remote", str(target) + "-remote"))
    rekey_state(base, target)
    return target


def _where(project: Path) -> str:
    """How driftloop's state names a project's data folder (a hash of its absolute path)."""
    return hashlib.sha256(str((project / RAW_DIR).resolve()).encode()).hexdigest()[:8]


def rekey_state(base: Path, target: Path) -> None:
    """Carry the batch summaries and verdicts over to the copy (they are keyed by the data
    folder's path): a long-lived project has them, a copy would otherwise rebuild them all."""
    old, new = _where(base), _where(target)
    for folder in ("profiles", "validated"):
        for entry in (target / STATE_DIR / folder).glob(f"{old}-*"):
            entry.rename(entry.with_name(new + entry.name.removeprefix(old)))


def build_cases(args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[Case]:
    """The base project ingests folder drops week by week up to each size; each size is copied
    once per source kind and primed."""
    factory = harness.ProjectFactory(work / "projects", env)
    template = work / "base.params.yaml"
    template.write_text(yaml.safe_dump(params_for("drops"), sort_keys=False))
    base = factory.new(template, "base")
    base_source = FolderSource(base)
    cases: list[Case] = []
    done = 0
    for earlier in sorted(args.earlier):
        began = time.perf_counter()
        for k in range(done, earlier):
            base_source.add(week(k, args.rows))
        in_process(base, env | base_source.env(), "ingest", "validate")
        done = earlier
        print(f"base: {earlier} weeks accepted ({time.perf_counter() - began:.0f} s)", flush=True)
        for kind in args.kinds:
            project = copy_project(base, work / "projects" / f"{kind}-{earlier}")
            source = make_source(kind, project, args.postgres, str(earlier))
            if kind != "folder":
                if isinstance(source, TableSource):
                    source.drop()
                source.add(pd.concat([week(k, args.rows) for k in range(earlier)]))
            write_params(project, source)
            in_process(project, env | source.env(), "ingest", "validate")  # nothing new: repeats
            cases.append(Case(kind, earlier, project, source, earlier))
    return cases


# -- measuring ---------------------------------------------------------------------------------


def timed(case: Case, step: str, env: dict[str, str], work: Path) -> dict[str, Any]:
    out = work / f"{case.kind}-{case.earlier}-{step}-{len(case.runs[step])}.json"
    cmd = [sys.executable, "-m", "bench.bench_ingest", "--child", step, str(case.project)]
    cmd += ["--child-out", str(out)]
    err = out.with_suffix(".log")
    run = harness.run_once(cmd, cwd=BENCH.parent, env=env | case.source.env(), errlog=err)
    result = json.loads(out.read_text()) if out.exists() else {}
    if run.returncode != 0:
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        print(f"  {case.kind} {step} failed ({run.returncode}):", *tail, sep="\n    ")
    return {**result, "returncode": run.returncode, "process": run.__dict__}


def measure(cases: list[Case], args: argparse.Namespace, env: dict[str, str], work: Path) -> None:
    """Each repeat times every case; a kind's two sizes run back to back, in turn first, so
    that a load that changes over minutes hits both sides of a ratio alike."""
    for rep in range(args.repeat):
        for case in sorted(cases, key=lambda c: (c.kind, c.earlier * (-1) ** rep)):
            case.source.add(week(case.next_week, args.rows))
            case.next_week += 1
            for step in STEPS:
                result = timed(case, step, env, work)
                case.runs[step].append(result)
                print(
                    f"#{rep + 1} {case.kind:>8} after {case.earlier:>3} weeks {step:>8}: "
                    f"{result.get('seconds', float('nan')):6.2f} s  "
                    f"(process {result['process']['wall_s']:.1f} s, rows {result.get('rows')}, "
                    f"load {result['process']['load_before']:.1f})",
                    flush=True,
                )


def ratios(cases: list[Case], low: int, high: int) -> dict[str, dict[str, Any]]:
    """Per kind and step: medians after `low` and `high` weeks and their ratio."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(c.kind for c in cases):
        by = {c.earlier: c for c in cases if c.kind == kind}
        out[kind] = {}
        for step in STEPS:
            a, b = by[low].seconds(step), by[high].seconds(step)
            if not a or not b:
                out[kind][step] = None
                continue
            spread = {n: harness.Spread.of(v) for n, v in ((low, a), (high, b))}
            ratio = spread[high].median / spread[low].median
            out[kind][step] = {f"after_{n}": s.to_dict() for n, s in spread.items()} | {
                "ratio": ratio,
                "pass": ratio <= TARGET_RATIO,
            }
    return out


def lines(result: dict[str, dict[str, Any]], low: int, high: int) -> list[str]:
    head = f"{'source':<9}{'step':<10}{f'after {low} s':>22}{f'after {high} s':>22}{'ratio':>9}"
    out = [head]
    for kind, steps in result.items():
        for step, entry in steps.items():
            if entry is None:
                out.append(f"{kind:<9}{step:<10}FAILED")
                continue
            a = harness.Spread(**entry[f"after_{low}"]).text(2)
            b = harness.Spread(**entry[f"after_{high}"]).text(2)
            mark = "PASS" if entry["pass"] else "MISS"
            out.append(f"{kind:<9}{step:<10}{a:>22}{b:>22}{entry['ratio']:>8.2f}x  {mark}")
    return out


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows per weekly batch")
    parser.add_argument("--earlier", default="10,200", help="earlier weeks: two sizes")
    parser.add_argument("--repeat", type=int, default=5, help="timed weeks per case")
    parser.add_argument("--kinds", default="file,folder,sqlite", help="source kinds")
    parser.add_argument("--postgres", help="also a PostgreSQL table at this SQLAlchemy URL")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summarize", type=Path, help="report the runs a kept WORK folder holds")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "PROJECT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.earlier = [int(n) for n in str(args.earlier).split(",")]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.postgres and "postgres" not in args.kinds:
        args.kinds.append("postgres")
    if len(args.earlier) != 2:
        parser.error("--earlier takes two sizes, e.g. 10,200")
    return args


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    work = args.work or harness.scratch_dir("driftloop-bench-ingest-")
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = child(args.child[0], Path(args.child[1]))
        if args.child_out:
            args.child_out.write_text(json.dumps(result))
        return 0
    if args.summarize:
        return report(cases_from(args.summarize, args), args, argv)
    with workdir(args) as work:
        env = harness.child_env(pycache=work / "pycache")
        cases = build_cases(args, work, env)
        try:
            measure(cases, args, env, work)
        finally:
            for case in cases:
                if isinstance(case.source, TableSource) and case.kind == "postgres":
                    case.source.drop()
    return report(cases, args, argv)


def cases_from(work: Path, args: argparse.Namespace) -> list[Case]:
    """The timed calls an earlier run left in its work folder (`--keep`), finished or not."""
    cases = []
    for earlier in sorted(args.earlier):
        for kind in args.kinds:
            project = work / "projects" / f"{kind}-{earlier}"
            case = Case(kind, earlier, project, FolderSource(project), earlier)
            for step in STEPS:
                done = work.glob(f"{kind}-{earlier}-{step}-*.json")
                for path in sorted(done, key=lambda p: int(p.stem.rsplit("-", 1)[1])):
                    case.runs[step].append({**json.loads(path.read_text()), "returncode": 0})
            cases.append(case)
    return cases


def report(cases: list[Case], args: argparse.Namespace, argv: list[str] | None) -> int:
    """Print the ratios and write the JSON; the exit code of `--check`."""
    low, high = sorted(args.earlier)
    result = ratios(cases, low, high)
    print("\n" + "\n".join(lines(result, low, high)))
    meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "rows_per_week": args.rows,
        "repeat": max((len(c.seconds(s)) for c in cases for s in STEPS), default=0),
        "target_ratio": TARGET_RATIO,
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_after": os.getloadavg(),
    }
    runs = {f"{c.kind}-{c.earlier}": c.runs for c in cases}
    payload = harness_strict({"meta": meta, "ratios": result, "runs": runs})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, allow_nan=False))
    print(f"\nJSON: {args.out}")
    missed = any(e is None or not e["pass"] for steps in result.values() for e in steps.values())
    return 1 if args.check and missed else 0


def harness_strict(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): harness_strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [harness_strict(v) for v in value]
    return value


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
