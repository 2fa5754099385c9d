"""Promotion throughput under contention: N promoters race to move the champion of one model.

A promotion moves the champion by a compare-and-set in the decision ledger, in the transaction
that records it, then the MLflow `champion` alias follows (`driftloop.champion.move`). This
benchmark starts the scale-out stack (`driftloop stack up`: the ledger on PostgreSQL, an MLflow
tracking server with basic auth) for a throwaway project, trains and registers a real model
through it, registers copies of that version as candidates, and lets N promoter processes race:

    uv run python -m bench.bench_promotion                       # N = 1, 2, 4, 8; 20 rounds each
    uv run python -m bench.bench_promotion --quick               # N = 1, 2; 5 rounds; no embedded
    uv run python -m bench.bench_promotion --promoters 1,4 --rounds 40 --json
    uv run python -m bench.bench_promotion --embedded ''         # the stack only

In each round every promoter reads the champion, all wait for each other, then each tries to move
the champion from that version to a candidate of its own: exactly one may win. Throughput is the
decisions committed per second of race (barriers included); the baseline is N = 1 in the same
run, the ratio is contended / uncontended. The embedded default (SQLite ledger and MLflow store
in the project) is measured the same way for comparison. Exit 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import percentile

TRAIN_UNTIL = "2014-12-31"
BARRIER_TIMEOUT_S = 600.0


# -- one promoter (a process of its own) ----------------------------------------------------------


def promoter(
    env: dict[str, str], own: tuple[str, str], rounds: int, barrier: Any, reason: str
) -> list[dict[str, Any]]:
    """Race `rounds` times: read the champion, wait for the others, move it to one of `own` (the
    one that is not champion) through the promotion's compare-and-set. One record per attempt:
    round, basis, version, outcome (`won`, `lost`, `error N: ...`), monotonic start and end."""
    os.environ.update(env)
    from driftloop import champion, registry
    from driftloop.config import load_context
    from driftloop.errors import DriftloopError
    from driftloop.ledger import Promotion

    params, settings = load_context()
    name = params.train.model_name
    client = registry.connect(settings)
    store = champion.store_of(settings)
    for version in own:  # warm: the HTTP session, the ledger's connection pool
        registry.get_version(client, name, version)
    champion.alias_version(client, name)
    store.champion(name)
    barrier.wait(BARRIER_TIMEOUT_S)
    attempts = []
    for round_ in range(rounds):
        barrier.wait(BARRIER_TIMEOUT_S)  # every move of the last round is done
        basis = store.champion(name)
        version = own[1] if own[0] == basis else own[0]
        event = Promotion(
            name, version=version, decision="promoted", reason=reason, champion_before=basis
        )
        barrier.wait(BARRIER_TIMEOUT_S)  # every promoter read the same champion
        began = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        try:
            refused = champion.move(settings, client, event, basis)
            outcome = "won" if refused is None else "lost"
        except DriftloopError as exc:
            outcome = f"error {exc.exit_code}: {exc}"
        except Exception as exc:
            outcome = f"unexpected {exc.__class__.__name__}: {exc}"
        attempts.append(
            {
                "round": round_,
                "basis": basis,
                "version": version,
                "outcome": outcome,
                "began": began,
                "ended": time.monotonic(),
            }
        )
    return attempts


def race(
    env: dict[str, str], candidates: Sequence[tuple[str, str]], rounds: int, reason: str
) -> list[dict[str, Any]]:
    """One promoter process per candidate pair (spawned: nothing inherited but the environment),
    started and warmed before the first round; every attempt of every promoter."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    child_env = {k: v for k, v in env.items() if k != "PATH"}
    with context.Manager() as manager:
        barrier = manager.Barrier(len(candidates))
        with context.Pool(len(candidates)) as pool:
            pending = [
                pool.apply_async(promoter, (child_env, own, rounds, barrier, reason))
                for own in candidates
            ]
            return [a for p in pending for a in p.get(timeout=BARRIER_TIMEOUT_S * 4)]


# -- the figures of one race (pure) ---------------------------------------------------------------


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 1),
        "p95": round(percentile(values, 95) * 1000, 1),
        "max": round(max(values) * 1000, 1),
    }


def summarize(promoters: int, rounds: int, attempts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Throughput, latency and the race's own correctness from its attempts.

    Committed per second: wins over the race's wall (first attempt's start to last one's end,
    the barriers and champion reads between rounds included). A round is correct when exactly
    one promoter won, every promoter read the same champion, and the next round read the winner.
    """
    by_round: dict[int, list[dict[str, Any]]] = {}
    for attempt in attempts:
        by_round.setdefault(attempt["round"], []).append(attempt)
    outcomes = [a["outcome"] for a in attempts]
    won = outcomes.count("won")
    wall = max(a["ended"] for a in attempts) - min(a["began"] for a in attempts)
    wrong = []
    for round_ in range(rounds):
        here = by_round.get(round_, [])
        winners = [a for a in here if a["outcome"] == "won"]
        bases = {a["basis"] for a in here}
        if len(here) != promoters or len(winners) != 1 or len(bases) != 1:
            wrong.append(f"round {round_}: {len(winners)} won of {len(here)}, bases {bases}")
            continue
        following = by_round.get(round_ + 1)
        if following and following[0]["basis"] != winners[0]["version"]:
            wrong.append(f"round {round_ + 1} read v{following[0]['basis']}, not the winner")
    spans = [
        max(a["ended"] for a in here) - min(a["began"] for a in here) for here in by_round.values()
    ]
    latency = [a["ended"] - a["began"] for a in attempts]
    won_latency = [a["ended"] - a["began"] for a in attempts if a["outcome"] == "won"]
    errors = [o for o in outcomes if o not in ("won", "lost")]
    return {
        "promoters": promoters,
        "rounds": rounds,
        "attempts": len(attempts),
        "committed": won,
        "lost": outcomes.count("lost"),
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "wall_s": round(wall, 3),
        "committed_per_s": round(won / wall, 3) if wall > 0 else 0.0,
        "attempts_per_s": round(len(attempts) / wall, 3) if wall > 0 else 0.0,
        "latency_ms": _ms(latency),
        "won_latency_ms": _ms(won_latency) if won_latency else None,
        "round_ms": _ms(spans),
        "rounds_with_one_winner": rounds - len(wrong),
        "wrong_rounds": wrong[:5],
    }


def ratios(races: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Committed per second of each N over the baseline's: the mean of the N = 1 races (run
    first and again last, so that a change of machine load during the run shows and is shared
    out). None without a baseline; the N = 1 entry is the later baseline over the mean."""
    singles = [r["committed_per_s"] for r in races if r["promoters"] == 1]
    base = sum(singles) / len(singles) if singles else 0.0
    return {
        str(r["promoters"]): round(r["committed_per_s"] / base, 3) if base else None for r in races
    }


# -- one backend: a project, a trained model, candidates, the races -------------------------------


def _cli(env: dict[str, str], root: Path, *args: str) -> str:
    from tests.helpers import cli_command

    done = subprocess.run(
        cli_command(*args), cwd=root, env=env, capture_output=True, text=True, timeout=1200
    )
    allowed = (0, 9) if args[:2] == ("ledger", "verify") else (0,)  # 9: the chain is broken
    if done.returncode not in allowed:
        raise RuntimeError(
            f"driftloop {' '.join(args)} -> {done.returncode}: {done.stderr[-2000:]}"
        )
    return done.stdout


def _state(settings: Any, client: Any, name: str, reason: str) -> dict[str, Any]:
    """The ledger's verdict, its champion, the alias, and the events the race left."""
    from driftloop import champion
    from driftloop.ledger import Promotion, Reconcile

    store = champion.store_of(settings)
    check = store.verify()
    events = [r.event for r in store.events(name)]
    return {
        "ledger_ok": check.ok,
        "ledger_events": check.events,
        "ledger_problems": check.problems[:5],
        "champion": store.champion(name),
        "alias": champion.alias_version(client, name),
        "promotions_recorded": sum(isinstance(e, Promotion) and e.reason == reason for e in events),
        "reconciles": sum(isinstance(e, Reconcile) for e in events),
    }


def _timed(work: Any, reps: int) -> dict[str, float]:
    took = []
    for _ in range(reps):
        began = time.monotonic()
        work()
        took.append(time.monotonic() - began)
    return _ms(took)


def parts(settings: Any, client: Any, name: str, pair: tuple[str, str], reps: int = 5) -> Any:
    """What one move is made of, each step timed alone from one warm process (no contention):
    the reads of the champion's reconcile and version check, the ledger's compare-and-set
    (a real move, recorded) and the alias write that follows it; and the MLflow server's
    `/health`, which needs neither auth nor its database (the floor of one HTTP request)."""
    from driftloop import champion, registry
    from driftloop.ledger import Promotion
    from driftloop.stack import answers

    store = champion.store_of(settings)
    moves = iter([pair[i % 2] for i in range(reps)])

    def cas_and_alias() -> tuple[float, float]:
        version, basis = next(moves), store.champion(name)
        event = Promotion(name, version=version, decision="promoted", reason="bench parts")
        began = time.monotonic()
        if not store.move_champion(event, basis):
            raise RuntimeError("nobody else moves the champion here")
        middle = time.monotonic()
        registry.set_alias(client, name, registry.CHAMPION, version)
        return middle - began, time.monotonic() - middle

    split = [cas_and_alias() for _ in range(reps)]
    uri = settings.mlflow_uri
    found = {
        "ledger_read": _timed(lambda: store.champion(name), reps),
        "alias_read": _timed(lambda: champion.alias_version(client, name), reps),
        "version_read": _timed(lambda: registry.get_version(client, name, pair[0]), reps),
        "ledger_cas": _ms([c for c, _ in split]),
        "alias_write": _ms([a for _, a in split]),
    }
    if uri.startswith("http"):
        found["mlflow_health"] = _timed(lambda: answers(f"{uri}/health"), reps)
    return found


def bench_backend(
    label: str, root: Path, env: dict[str, str], promoters: Sequence[int], rounds: int
) -> dict[str, Any]:
    """Train and register a model in the project at `root` (its environment `env`), register
    candidates, race with each N; figures and correctness per race and at the end."""
    from driftloop import registry
    from driftloop.config import load_context

    started = time.monotonic()
    _cli(env, root, "ingest", "--until", TRAIN_UNTIL)
    trained = json.loads(_cli(env, root, "train", "--json"))
    if trained.get("promoted") is not True:
        raise RuntimeError(f"{label}: the first model was not promoted: {trained}")
    params, settings = load_context()
    name = params.train.model_name
    client = registry.connect(settings)
    first = str(trained["version"])
    candidates = harness.version_copies(client, name, first, 2 * max(promoters))
    pairs = [(candidates[2 * i], candidates[2 * i + 1]) for i in range(max(promoters))]
    setup = time.monotonic() - started
    _say(f"{label}: v{first} trained and promoted, {len(candidates)} candidates ({setup:.0f} s)")
    steps = parts(settings, client, name, pairs[0])
    _say(
        f"{label}: one move's steps, ms p50: "
        + ", ".join(f"{k} {v['p50']:.0f}" for k, v in steps.items())
    )
    races = []
    order = [*promoters, 1] if len(promoters) > 1 else promoters  # the baseline again at the end
    for n in order:
        reason = f"bench {label} N={n} #{len(races)}"
        before = _state(settings, client, name, reason)
        load = os.getloadavg()[0]
        attempts = race(env, pairs[:n], rounds, reason)
        figures = summarize(n, rounds, attempts)
        after = _state(settings, client, name, reason)
        figures["load_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        figures["after"] = after
        figures["ok"] = (
            figures["rounds_with_one_winner"] == rounds
            and figures["failed"] == 0
            and after["ledger_ok"]
            and after["champion"] == after["alias"]
            and after["promotions_recorded"] - before["promotions_recorded"] == figures["committed"]
        )
        races.append(figures)
        _say(_line(label, figures))
    verify = json.loads(_cli(env, root, "ledger", "verify", "--json"))
    final = _state(settings, client, name, "")
    return {
        "setup_s": round(setup, 1),
        "steps_ms": steps,
        "model": name,
        "versions": [first, *candidates],
        "races": races,
        "baseline_committed_per_s": [r["committed_per_s"] for r in races if r["promoters"] == 1],
        "ratio_committed_per_s": ratios(races),
        "ledger_verify": {"ok": verify.get("ok"), "models": verify.get("models")},
        "champion": final["champion"],
        "alias": final["alias"],
        "ok": all(r["ok"] for r in races)
        and bool(verify.get("ok"))
        and final["champion"] == final["alias"],
    }


# -- the run --------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _line(label: str, r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (
        f"{label} N={r['promoters']}: {r['committed']} committed / {r['attempts']} attempts in "
        f"{r['wall_s']:.1f} s = {r['committed_per_s']:.2f}/s; attempt p50 {lat['p50']:.0f} ms "
        f"p95 {lat['p95']:.0f} ms; {r['lost']} lost, {r['failed']} failed; "
        f"{r['rounds_with_one_winner']}/{r['rounds']} rounds with one winner; "
        f"load {r['load_1min']}; {'ok' if r['ok'] else 'WRONG'}"
    )


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _project_template(base: Path, env: dict[str, str]) -> Path:
    """`git init` + `dvc init` + analytics off, as the test suite's project template."""
    template = base / "template"
    template.mkdir(parents=True)
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        subprocess.run(cmd, cwd=template, env=env, check=True, capture_output=True)
    return template


@contextlib.contextmanager
def _project(base: Path, template: Path) -> Iterator[Any]:
    """A throwaway project laid out as the test suite's (env and cwd point at it meanwhile)."""
    import pytest

    from tests.helpers import build_project

    with pytest.MonkeyPatch.context() as mp:
        project = build_project(base, template, mp, None)
        for key in harness.STACK_TARGETS:
            mp.delenv(key, raising=False)
        yield project, mp


def run(promoters: list[int], embedded: list[int], rounds: int, work: Path) -> dict[str, Any]:
    from driftloop.ledger import STORES
    from tests.helpers import cli_command, subprocess_env

    missing = harness.services_missing()
    if missing is not None:
        raise RuntimeError(f"the stack needs PostgreSQL and Redis: {missing}")
    result: dict[str, Any] = {
        "benchmark": "promotion throughput under contention",
        "cpus": os.cpu_count(),
        "uptime_before": _uptime(),
        "rounds": rounds,
    }
    template = _project_template(work, subprocess_env())
    with _project(work / "stack", template) as (project, mp):
        home = project.settings.state_dir / "stack"
        with harness.stack_session(
            cli_command(), project.root, subprocess_env(), home, work / "templates"
        ) as up:
            for key, value in (up.own | up.client).items():
                mp.setenv(key, value)
            result["stack"] = bench_backend("stack", project.root, up.env, promoters, rounds)
    STORES.clear()
    if embedded:
        with _project(work / "embedded", template) as (project, _):
            result["embedded"] = bench_backend(
                "embedded", project.root, subprocess_env(), embedded, rounds
            )
        STORES.clear()
    result["uptime_after"] = _uptime()
    result["ok"] = all(result[k]["ok"] for k in ("stack", "embedded") if k in result)
    return result


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promoters", default="1,2,4,8", help="N per race on the stack (1 first)")
    parser.add_argument("--embedded", default="1,2", help="N per race on the embedded default")
    parser.add_argument("--rounds", type=int, default=20, help="race rounds per N")
    parser.add_argument("--quick", action="store_true", help="N = 1, 2; 5 rounds; no embedded")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    promoters, embedded, rounds = _ints(args.promoters), _ints(args.embedded), args.rounds
    if args.quick:
        promoters, embedded, rounds = [1, 2], [], 5
    if 1 not in promoters:
        promoters.insert(0, 1)  # the baseline
    # Everything this process and its children print goes to stderr; the report to stdout.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    work = harness.scratch_dir("driftloop-promobench-")
    try:
        result = run(promoters, embedded, rounds, work)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    text = json.dumps(result, indent=2, allow_nan=False)
    (results / "promotion.json").write_text(text + "\n")
    out.write(text + "\n" if args.json else _table(result))
    out.flush()
    return 0 if result["ok"] else 1


def _table(result: dict[str, Any]) -> str:
    lines = [f"{result['uptime_before']}", ""]
    lines.append(
        "| backend | N | committed/s | ratio | attempts/s | attempt p50 ms | p95 ms | "
        "round p50 ms | lost | failed | one winner | ok |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in ("stack", "embedded"):
        if backend not in result:
            continue
        part = result[backend]
        for r in part["races"]:
            ratio = part["ratio_committed_per_s"][str(r["promoters"])]
            lines.append(
                f"| {backend} | {r['promoters']} | {r['committed_per_s']:.2f} | "
                f"{ratio if ratio is not None else '-'} | {r['attempts_per_s']:.2f} | "
                f"{r['latency_ms']['p50']:.0f} | {r['latency_ms']['p95']:.0f} | "
                f"{r['round_ms']['p50']:.0f} | {r['lost']} | {r['failed']} | "
                f"{r['rounds_with_one_winner']}/{r['rounds']} | {r['ok']} |"
            )
    for backend in ("stack", "embedded"):
        if backend in result:
            steps = result[backend]["steps_ms"]
            lines.append(
                f"{backend}, one move's steps alone, ms p50: "
                + ", ".join(f"{k} {v['p50']:.0f}" for k, v in steps.items())
            )
    lines += ["", result["uptime_after"], f"all checks: {'ok' if result['ok'] else 'FAILED'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
