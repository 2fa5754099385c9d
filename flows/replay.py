"""Replay a bundled history through the real loop: ingest, monitor, retrain, promote."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from prefect import flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from driftloop import replay
from driftloop.config import flow_target, load_params
from driftloop.errors import TrainingError
from flows.monitoring import monitor_flow
from flows.training import context, training_flow
from tasks import replay as r


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
    source = wparams.data.source
    first = training_flow(
        source=source, until=wparams.replay.initial_until, trigger="replay: initial model", **where
    )
    if not first.get("promoted"):
        raise TrainingError(f"replay: the initial model was not promoted: {first.get('reason')}")
    previous = dt.date.fromisoformat(wparams.replay.initial_until)
    # The step subflows run inside this process, whose own run keeps its heartbeat; theirs
    # would each cost ~0.5 s at exit (the heartbeat thread is joined) for nothing.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for as_of in r.progress(calendar, "replaying"):
            batch_start = previous + dt.timedelta(days=1)
            champion = r.champion_version(wparams, ws)
            r.ingest_step(wparams, ws, source, as_of.isoformat())
            outcome = monitor_flow(
                as_of=as_of.isoformat(), retrain="subflow", version=False, **where
            )
            timeline.append(r.to_step(outcome, batch_start, champion))
            previous = as_of
    r.push(ws, wparams)
    comparison = r.compare(wparams, ws, timeline)
    meta = {
        "title": wparams.replay.title,
        "workspace": str(ws.project),
        "initial_until": wparams.replay.initial_until,
        "end": calendar[-1].isoformat() if calendar else wparams.replay.initial_until,
        "steps": len(timeline),
        "step_days": wparams.replay.step_days,
        "first_model": first.get("message"),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    paths = r.report(settings.path(params.replay.report_dir), timeline, comparison, meta)
    return {"report": [str(p) for p in paths], "comparison": comparison, "meta": meta}
