"""Replay a bundled history through the real loop: ingest, monitor, retrain, promote."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from driftloop import online, replay
from driftloop.config import FlowTarget, Params, flow_target, load_params
from driftloop.errors import TrainingError
from flows.experiments import evaluate_experiment_flow
from flows.monitoring import monitor_flow
from flows.training import context, training_flow
from tasks import replay as r


def initial_model(params: Params, where: FlowTarget) -> dict[str, Any]:
    """The replay's first model, trained on the months up to `replay.initial_until`."""
    first = training_flow(
        until=params.replay.initial_until,
        trigger=replay.INITIAL_TRIGGER,
        **where,
    )
    if not first.get("promoted"):
        raise TrainingError(f"replay: the initial model was not promoted: {first.get('reason')}")
    return first


@flow(name="replay", log_prints=True)
def replay_flow(
    steps: int | None = None,
    name: str | None = None,
    project: str | None = None,
    params_file: str | None = None,
) -> dict[str, Any]:
    """Train on the first months, then at each step ingest, monitor and retrain when decided."""
    started = time.monotonic()
    params, settings = context(project, params_file)
    ws = replay.prepare_workspace(params, settings, name)
    where = flow_target(ws)
    calendar = replay.step_dates(params)[:steps]
    timeline: list[replay.Step] = []
    wparams = load_params(ws.params)
    first = initial_model(wparams, where)
    previous = dt.date.fromisoformat(wparams.replay.initial_until)
    # The step subflows run inside this process, whose own run keeps its heartbeat; theirs
    # would each cost ~0.5 s at exit (the heartbeat thread is joined) for nothing.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for as_of in r.progress(calendar, "replaying"):
            batch_start = previous + dt.timedelta(days=1)
            champion = r.champion_version(wparams, ws)
            quarantined = r.ingest_step(wparams, ws, as_of.isoformat())
            outcome = monitor_flow(
                as_of=as_of.isoformat(), retrain="subflow", version=False, **where
            )
            timeline.append(r.to_step(outcome, batch_start, champion, quarantined))
            previous = as_of
    r.push(ws, wparams)
    comparison = r.compare(wparams, ws, timeline)
    timeline, estimation = r.estimation(wparams, ws, timeline)
    meta = {
        "title": wparams.replay.title,
        "workspace": str(ws.project),
        "initial_until": wparams.replay.initial_until,
        "end": calendar[-1].isoformat() if calendar else wparams.replay.initial_until,
        "steps": len(timeline),
        "step_days": wparams.replay.step_days,
        "first_model": first.get("message"),
        "estimation_error": estimation,
        "quarantined_steps": sum(1 for s in timeline if s.quarantined),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    paths = r.report(settings.path(params.replay.report_dir), timeline, comparison, meta)
    return {"report": [str(p) for p in paths], "comparison": comparison, "meta": meta}


@flow(name="online-replay-arm", log_prints=True)
def online_arm_flow(
    arm: str,
    steps: int | None = None,
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """One promotion policy: the first model, then each step served by the running service."""
    params, ws = context(project, params_file, home, tracking_uri)
    where = flow_target(ws)
    initial_model(params, where)
    previous = dt.date.fromisoformat(params.replay.initial_until)
    clock = online.ReplayClock(online.end_of_day(previous))
    timeline: list[online.OnlineStep] = []
    with (
        online.LiveService(params, ws, clock) as live,
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        live.follow_registry()
        for as_of in r.progress(replay.step_dates(params)[:steps], f"online replay: {arm}"):
            champion = live.health()["champion_version"]
            traffic = r.serve_step(params, ws, live, as_of)
            clock.set(online.end_of_day(as_of))
            looked = None
            if arm == "experiment":
                looked = evaluate_experiment_flow(as_of=as_of.isoformat(), **where)
            outcome = monitor_flow(
                as_of=as_of.isoformat(), retrain="subflow", version=False, **where
            )
            live.follow_registry()  # a promotion or a new challenger is served from now on
            batch_start = previous + dt.timedelta(days=1)
            timeline.append(r.to_online_step(arm, outcome, batch_start, champion, traffic, looked))
            previous = as_of
    r.push(ws, params)
    summary, events = r.judge_arm(params, ws, timeline)
    return {
        "summary": summary,
        "events": events,
        "timeline": timeline,
        "workspace": str(ws.project),
    }


@flow(name="online-replay", log_prints=True)
def online_replay_flow(
    steps: int | None = None,
    name: str | None = None,
    experiment: str = "shadow",
    project: str | None = None,
    params_file: str | None = None,
) -> dict[str, Any]:
    """The same period served online twice: promotion on the holdout gate alone, and promotion
    only after the gate's winner is tested online (`experiment`: shadow, ab or canary)."""
    started = time.monotonic()
    params, settings = context(project, params_file)
    online.check_online(params)
    stamp = name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = {}
    for arm in online.ARMS:
        changes = online.arm_changes(arm, experiment)
        ws = replay.prepare_workspace(params, settings, f"{stamp}-{arm}", changes)
        results[arm] = online_arm_flow(arm=arm, steps=steps, **flow_target(ws))
    calendar = replay.step_dates(params)[:steps]
    meta = {
        "title": f"{params.replay.title} (online: gate vs {experiment} test)",
        "experiment": experiment,
        "initial_until": params.replay.initial_until,
        "end": calendar[-1].isoformat() if calendar else params.replay.initial_until,
        "steps": len(calendar),
        "step_days": params.replay.step_days,
        **{f"workspace_{arm}": res["workspace"] for arm, res in results.items()},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    arms = {arm: res["summary"] for arm, res in results.items()}
    paths = r.online_report(
        settings.path(params.replay.report_dir) / "online",
        arms,
        {arm: res["timeline"] for arm, res in results.items()},
        {arm: res["events"] for arm, res in results.items()},
        meta,
    )
    return {"report": [str(p) for p in paths], "comparison": arms, "meta": meta}
