"""Benchmark the prediction service against `mlflow models serve` on the same model and rows.

    uv run python -m bench.bench_serve            # flights 5 % model, full load
    uv run python -m bench.bench_serve --quick    # smoke run (~3 min)
    uv run python -m bench.bench_serve --check    # exit 1 when a target is missed

One throwaway project (flights, `bench.data`): v1 trained and promoted (champion), v2 registered
as `challenger`; each driftloop server gets its own copy of it (its own prediction log and
experiment state). All four servers run at once, each its own process on 127.0.0.1 (one worker,
one OpenMP thread), and are measured in turn, round after round (`--rounds`, the order rotated;
medians reported), so that load from other processes hits each alike. The client is async (httpx)
with bounded concurrency, a bounded number of requests and a time limit per phase, for single-row
and 100-row requests:

- `mlflow`: `mlflow models serve -m models:/NAME@champion --env-manager local`, posted the
  model's feature rows (what its signature takes; feature engineering is not its job);
- `service`: `driftloop serve`, posted the same rows raw (it runs the feature step itself);
- `shadow`: `driftloop serve` while a shadow experiment runs (the challenger scores every row);
- `no-log`: `driftloop serve` with a no-op prediction log (`--serve-child`: records are dropped
  at append, so the queue and the writer thread's JSON and fsync are what it saves).

Latency (p50, p99) is measured at concurrency 1 (a lone caller: what a request costs), throughput
(requests/s) at `--concurrency` (the server saturated). Targets: service/mlflow throughput >= 2x;
shadow and logging each add <= 10 % to the p50 (both request sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import harness
from bench.data import make_flights

REPO = Path(__file__).resolve().parents[1]
SIZES = (1, 100)
TARGETS = {"throughput": 2.0, "shadow_p50": 0.10, "logging_p50": 0.10}


@dataclass(frozen=True)
class Load:
    """How hard to push: requests per phase, the client's concurrency and a time limit."""

    latency_requests: int
    throughput_requests: int
    concurrency: int
    seconds: float
    warmup: int = 20


@dataclass(frozen=True)
class Figures:
    """One server and request size: p50/p99 latency (ms, concurrency 1) and requests/s."""

    p50_ms: float
    p99_ms: float
    rps: float
    n: int
    errors: int

    def text(self) -> str:
        return f"{self.rps:8.1f} req/s  p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms"


# -- the load --------------------------------------------------------------------------------------


async def _drive(
    url: str, bodies: list[bytes], requests: int, concurrency: int, seconds: float
) -> tuple[list[float], float, int]:
    """POST bodies round-robin: latencies (s) of the successful requests, wall time, errors."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            began = time.perf_counter()
            try:
                answer = await client.post(url, content=body, headers=headers)
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return latencies, wall, errors


def measure(url: str, bodies: list[bytes], load: Load, fewer: int) -> Figures:
    """Warm up, then latency at concurrency 1 and throughput at load.concurrency."""
    asyncio.run(_drive(url, bodies, load.warmup, 1, load.seconds))
    n = max(load.latency_requests // fewer, 20)
    lat, _, err1 = asyncio.run(_drive(url, bodies, n, 1, load.seconds))
    n = max(load.throughput_requests // fewer, 20)
    done, wall, err2 = asyncio.run(_drive(url, bodies, n, load.concurrency, load.seconds))
    lat.sort()
    return Figures(
        p50_ms=1000 * statistics.median(lat) if lat else float("nan"),
        p99_ms=1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        rps=len(done) / wall if wall > 0 else 0.0,
        n=len(lat) + len(done),
        errors=err1 + err2,
    )


# -- the project and its rows --------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """The throwaway project, its environment and the request bodies per server and size."""

    root: Path
    env: dict[str, str]
    model: str
    raw: dict[int, list[bytes]]  # for driftloop: raw input rows
    features: dict[int, list[bytes]]  # for mlflow: the model's feature rows


def prepare(work: Path, fraction: float, rows: int) -> Bench:
    """Make the flights data, a project, v1 champion and v2 challenger; the request bodies."""
    env = harness.child_env(pycache=work / "pycache")
    made = make_flights(fraction, work / "data")
    params = yaml.safe_load(made.params.read_text())
    params["serve"] = {"experiment": {"kind": "shadow", "max_p99_ms": 60_000.0}}
    made.params.write_text(yaml.safe_dump(params, sort_keys=False))
    root = harness.ProjectFactory(work / "projects", env).new(made.params, "flights")
    harness.driftloop(env, root, "ingest")
    harness.driftloop(env, root, "train", "--json")
    second = json.loads(harness.driftloop(env, root, "train", "--no-promote", "--json"))
    model = params["train"]["model_name"]
    env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / '.driftloop' / 'mlflow.db'}"}
    from mlflow import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    MlflowClient(uri, uri).set_registered_model_alias(model, "challenger", second["version"])
    raw, features = request_rows(root, uri, model, rows)
    return Bench(root, env, model, _bodies(raw, "records"), _bodies(features, "dataframe_records"))


def request_rows(root: Path, uri: str, model: str, rows: int) -> tuple[Any, Any]:
    """The newest `rows` complete raw rows and the same rows as the champion's feature rows."""
    import mlflow

    from driftloop import datastore
    from driftloop.config import load_context
    from driftloop.features import feature_frame
    from driftloop.serving.schema import input_columns, optional_columns

    params, settings = load_context(project=root)
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(f"models:/{model}@champion")
    assert info.signature is not None
    signature = list(info.signature.inputs.input_names())
    frame = datastore.load_accepted(settings.path(params.data.raw_dir), params)
    columns = [*input_columns(params), *optional_columns(params)]
    raw = frame[columns].dropna().tail(rows).reset_index(drop=True)
    features = feature_frame(raw, params.features, params.data)[signature]
    ts = params.data.timestamp_column
    raw[ts] = raw[ts].map(lambda t: t.isoformat())
    return raw, features


def _bodies(frame: Any, key: str) -> dict[int, list[bytes]]:
    records = json.loads(frame.to_json(orient="records"))
    out: dict[int, list[bytes]] = {}
    for size in SIZES:
        chunks = [records[i : i + size] for i in range(0, len(records) - size + 1, size)]
        out[size] = [json.dumps({key: c}).encode() for c in chunks]
    return out


# -- servers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(cmd: list[str], cwd: Path, env: dict[str, str], ready: str) -> Iterator[None]:
    """A server process (own session) until the context ends; waits for GET `ready` to be 200."""
    import httpx

    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} did not answer {ready} (exit {proc.poll()})")
            time.sleep(0.5)
        yield
    finally:
        harness.kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            harness.kill_group(proc.pid)
            proc.wait()


KINDS = ("mlflow", "service", "no-log", "shadow")


def clone(root: Path, kind: str) -> Path:
    """A copy of the trained project for one driftloop server (its own log and experiment)."""
    import shutil

    target = root.with_name(f"{root.name}-{kind}")
    shutil.copytree(root, target, symlinks=True)
    return target


def server_command(bench: Bench, kind: str, port: int) -> tuple[list[str], str, str]:
    """(argv, predict URL, readiness URL) of one kind of server."""
    base = f"http://127.0.0.1:{port}"
    if kind == "mlflow":
        model_uri = f"models:/{bench.model}@champion"
        cmd = [str(harness.BIN / "mlflow"), "models", "serve", "-m", model_uri]
        cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "-w", "1"]
        return cmd, f"{base}/invocations", f"{base}/ping"
    cmd = [str(harness.BIN / "driftloop"), "serve", "--port", str(port)]
    if kind == "no-log":
        cmd = [sys.executable, "-m", "bench.bench_serve", "--serve-child", "--port", str(port)]
    return cmd, f"{base}/predict", f"{base}/health"


@contextlib.contextmanager
def servers(bench: Bench) -> Iterator[dict[str, str]]:
    """Every kind of server running (shadow: with a shadow experiment); their predict URLs."""
    urls, envs, roots = {}, {}, {}
    with contextlib.ExitStack() as stack:
        for kind in KINDS:
            roots[kind] = root = bench.root if kind == "mlflow" else clone(bench.root, kind)
            envs[kind] = env = bench.env | {
                "PYTHONPATH": str(REPO),  # the no-log child runs `-m bench.bench_serve`
                "MLFLOW_TRACKING_URI": f"sqlite:///{root / '.driftloop' / 'mlflow.db'}",
            }
            if kind == "shadow":
                harness.driftloop(env, root, "experiment", "start")
            cmd, urls[kind], ready = server_command(bench, kind, harness.free_port())
            stack.enter_context(server(cmd, root, env, ready))
        yield urls
        status = json.loads(
            harness.driftloop(envs["shadow"], roots["shadow"], "experiment", "status", "--json")
        )
        if status.get("status") != "running":
            raise RuntimeError(f"the shadow experiment ended during the run: {status['message']}")


def run_all(bench: Bench, load: Load, rounds: int) -> dict[str, dict[int, Figures]]:
    """Each server and request size measured once per round (order rotated); medians."""
    runs: dict[tuple[str, int], list[Figures]] = {}
    with servers(bench) as urls:
        for r in range(rounds):
            for kind in KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]:
                for size, fewer in zip(SIZES, (1, 5), strict=True):
                    body = bench.features if kind == "mlflow" else bench.raw
                    figures = measure(urls[kind], body[size], load, fewer)
                    runs.setdefault((kind, size), []).append(figures)
        scored, dropped = shadow_counts(urls["shadow"])
        print(f"shadow: {scored:.0f} requests scored by the challenger, {dropped:.0f} rows dropped")
    return {kind: {size: median_figures(runs[(kind, size)]) for size in SIZES} for kind in KINDS}


def shadow_counts(predict_url: str) -> tuple[float, float]:
    """(shadow requests scored, shadow rows dropped) from the shadow server's /metrics."""
    import httpx

    text = httpx.get(predict_url.replace("/predict", "/metrics"), timeout=10).text
    scored = dropped = 0.0
    for line in text.splitlines():
        if line.startswith("driftloop_predict_requests_total") and 'variant="shadow"' in line:
            scored += float(line.split()[-1])
        elif line.startswith("driftloop_shadow_dropped_total"):
            dropped += float(line.split()[-1])
    return scored, dropped


def median_figures(runs: list[Figures]) -> Figures:
    return Figures(
        p50_ms=statistics.median(f.p50_ms for f in runs),
        p99_ms=statistics.median(f.p99_ms for f in runs),
        rps=statistics.median(f.rps for f in runs),
        n=sum(f.n for f in runs),
        errors=sum(f.errors for f in runs),
    )


def serve_without_log(port: int) -> None:
    """`driftloop serve` with a no-op prediction log (a benchmark stand-in, not an option)."""
    from driftloop.config import load_context
    from driftloop.serving import app, predlog, run_service

    class NullLog(predlog.PredictionLog):
        def append(self, batch: list[dict[str, Any]]) -> None:
            return None

    build = app.build_service

    def build_without_log(*args: Any, **kwargs: Any) -> Any:
        service = build(*args, **kwargs)
        service.log.__class__ = NullLog
        return service

    app.build_service = build_without_log
    params, settings = load_context()
    run_service(params, settings, "127.0.0.1", port)


# -- report --------------------------------------------------------------------------------------


def verdicts(results: dict[str, dict[int, Figures]]) -> list[tuple[str, float, str, bool]]:
    """(what, value, target text, met) per target and request size."""
    out = []
    for size in SIZES:
        m, s = results["mlflow"][size], results["service"][size]
        ratio = s.rps / m.rps if m.rps else float("nan")
        out.append((f"throughput service/mlflow, {size}-row", ratio, ">= 2.00x", ratio >= 2.0))
        for kind, key in (("shadow", "shadow_p50"), ("no-log", "logging_p50")):
            if kind not in results:
                continue
            if kind == "shadow":
                extra = results["shadow"][size].p50_ms / s.p50_ms - 1
                what = f"shadow p50 overhead, {size}-row"
            else:
                extra = s.p50_ms / results["no-log"][size].p50_ms - 1
                what = f"logging p50 overhead, {size}-row"
            out.append((what, extra, f"<= {TARGETS[key]:.0%}", extra <= TARGETS[key]))
    return out


def report(results: dict[str, dict[int, Figures]], load: Load, rounds: int) -> bool:
    print(
        f"\nlatency at concurrency 1, throughput at concurrency {load.concurrency}; "
        f"medians of {rounds} rounds"
    )
    for kind, by_size in results.items():
        for size, f in by_size.items():
            rows = f"{f.rps * size:8.0f} rows/s"
            print(f"{kind:8} {size:4}-row  {f.text()} {rows}  (n={f.n}, errors={f.errors})")
    ok = all(f.errors == 0 for by_size in results.values() for f in by_size.values())
    print()
    for what, value, target, met in verdicts(results):
        shown = f"{value:.2f}x" if "throughput" in what else f"{value:+.1%}"
        print(f"{what:40} {shown:>8}  target {target:9} {'PASS' if met else 'MISS'}")
        ok &= met
    print()
    for size in SIZES:  # no target: what saturation costs (the off-path work competes for CPU)
        service = results["service"][size].rps
        for kind, cost in (
            ("shadow", 1 - results["shadow"][size].rps / service),
            ("logging", 1 - service / results["no-log"][size].rps),
        ):
            what = f"{kind} throughput cost, {size}-row"
            print(f"{what:40} {cost:>+8.1%}  (no target)")
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, a smaller model")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, help="measurements per server (default 3; quick 2)")
    parser.add_argument("--fraction", type=float, help="share of the flights (default 0.05)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed)")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_child:
        serve_without_log(args.port)
        return
    load = (
        Load(150, 400, args.concurrency, 10.0)
        if args.quick
        else Load(300, 1500, args.concurrency, 20.0)
    )
    args.rounds = args.rounds or (2 if args.quick else 3)
    fraction = args.fraction or (0.02 if args.quick else 0.05)
    work = args.work or harness.scratch_dir()
    try:
        began = time.perf_counter()
        bench = prepare(work, fraction, rows=2000)
        print(f"project ready in {time.perf_counter() - began:.0f} s: {bench.root}")
        results = run_all(bench, load, args.rounds)
        ok = report(results, load, args.rounds)
    finally:
        if args.work is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if args.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
