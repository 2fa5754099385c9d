"""Tasks of the replay: one step's ingest, the strategy comparison and the report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from driftloop import baselines, ingest, monitoring, online, registry, replay
from driftloop.config import Params, Settings
from driftloop.errors import ValidationFailed

T = TypeVar("T")


def progress(items: list[T], label: str) -> Iterator[T]:
    """A progress bar on the terminal (rich, shipped with Prefect)."""
    from rich.progress import track

    return iter(track(items, description=label, transient=False))


def champion_version(params: Params, ws: Settings) -> str | None:
    client = registry.connect(ws)
    ref = registry.get_alias(client, params.train.model_name, registry.CHAMPION)
    return ref.version if ref else None


@task(name="ingest-step", cache_policy=NONE)
def ingest_step(params: Params, ws: Settings, until: str) -> str:
    """The rows that had arrived by `until` (event time) and the labels known by then (label
    time), through the same gates; what was quarantined ('' when nothing).

    A quarantined batch does not end the replay: as in the running loop, its good batches are
    stored, the step goes on with the data accepted so far, and the report names the batch.
    Versioned in bulk before each retrain and at the end, not at every step.
    """
    refused = []
    try:
        ingest.ingest_source(params, ws, None, until, version=False)
    except ValidationFailed as exc:
        refused.append(str(exc))
    if label_source := ingest.label_spec(params):
        try:
            ingest.ingest_label_source(params, ws, label_source, until, version=False)
        except ValidationFailed as exc:
            refused.append(f"labels: {exc}")
    return "; ".join(refused)


def to_step(
    outcome: dict[str, Any], batch_start: Any, champion: str | None, quarantined: str = ""
) -> replay.Step:
    """One timeline entry from a monitoring flow's summary."""
    retrain = outcome.get("retrain")
    drift = outcome.get("drift") or {}
    perf = outcome.get("performance") or {}
    signals = (outcome.get("triggers") or {}).get("signals") or []
    estimate = (outcome.get("triggers") or {}).get("estimate") or {}
    return replay.Step(
        as_of=outcome["as_of"],
        batch_start=batch_start.isoformat(),
        champion=champion,
        action=outcome["action"],
        reason=outcome["reason"],
        drifted_share=drift.get("drifted_share"),
        retrained=isinstance(retrain, dict),
        promoted=bool(isinstance(retrain, dict) and retrain.get("promoted")),
        n_labelled=int(perf.get("n_labelled") or 0),
        n_pending=int(perf.get("n_pending") or 0),
        signals_fired=", ".join(s["name"] for s in signals if s["state"] == "fired"),
        estimated_roc_auc=estimate.get("roc_auc"),
        estimated_accuracy=estimate.get("accuracy"),
        quarantined=quarantined,
    )


@task(name="push-data", cache_policy=NONE)
def push(ws: Settings, params: Params) -> str:
    """Version accepted data and monitoring outputs (one DVC push for the whole replay)."""
    monitoring.version_outputs(params, ws)
    return ingest.version_data(params, ws)


@task(name="compare-strategies", cache_policy=NONE)
def compare(params: Params, ws: Settings, steps: list[replay.Step]) -> dict[str, Any]:
    """The loop, its first model and every baseline on the same rows."""
    client = registry.connect(ws)
    versions = {str(s.champion) for s in steps}
    models = {
        v: registry.load_model(registry.get_version(client, params.train.model_name, v))
        for v in versions
    }
    return replay.compare(params, ws, steps, models)


@task(name="estimation-error", cache_policy=NONE)
def estimation(
    params: Params, ws: Settings, steps: list[replay.Step]
) -> tuple[list[replay.Step], dict[str, Any]]:
    """Each step's realised metrics once its labels landed, against its CBPE estimate."""
    client = registry.connect(ws)
    versions = {str(s.champion) for s in steps if s.champion is not None}
    models = {
        v: registry.load_model(registry.get_version(client, params.train.model_name, v))
        for v in versions
    }
    return replay.realised_by_step(params, ws, steps, models)


@task(name="report", cache_policy=NONE)
def report(
    out_dir: Path, steps: list[replay.Step], comparison: dict[str, Any], meta: dict[str, Any]
) -> tuple[Path, Path]:
    json_path, html_path = replay.write_report(out_dir, steps, comparison, meta)
    rows = "\n".join(
        f"| {r.get('label', name)} | {_num(r['roc_auc'])} | {_num(r['log_loss'])} | "
        f"{_num(r['accuracy'])} | {r['retrains']} |"
        for name, r in comparison.items()
    )
    create_markdown_artifact(
        key="replay",
        markdown=f"{baselines.verdict(comparison)['headline']}\n\n"
        "| strategy | ROC AUC | log loss | accuracy | retrains |\n|---|---|---|---|---|\n"
        + rows
        + f"\n\nReport: [{html_path.name}]({html_path.as_uri()})",
        description="Replay: the loop against its baselines",
    )
    return json_path, html_path


def _num(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


# -- online replay ------------------------------------------------------------------------------


@task(name="serve-step", cache_policy=NONE)
def serve_step(
    params: Params, ws: Settings, live: online.LiveService, as_of: dt.date
) -> online.StepTraffic:
    """The step's batch ingested and posted to the service; its landed labels sent back."""
    return online.serve_step(params, ws, live, as_of)


def to_online_step(
    arm: str,
    outcome: dict[str, Any],
    batch_start: dt.date,
    champion: str | None,
    traffic: online.StepTraffic,
    experiment: dict[str, Any] | None,
) -> online.OnlineStep:
    """One online timeline entry: the monitoring summary, the traffic, the experiment's look."""
    base = to_step(outcome, batch_start, champion)
    retrain = outcome.get("retrain")
    looked = experiment or {}
    promoted_online = looked.get("action") == "promote"
    verdict = f"{looked['action']}: {looked.get('reason', '')}" if "experiment" in looked else ""
    return online.OnlineStep(
        **{**asdict(base), "promoted": base.promoted or promoted_online},
        arm=arm,
        served=traffic.served.rows,
        refused=traffic.served.refused,
        answered=traffic.served.versions,
        labels_sent=traffic.labels_sent,
        source=str(outcome.get("source", "")),
        staged=bool(isinstance(retrain, dict) and retrain.get("experiment")),
        experiment=verdict,
    )


@task(name="judge-arm", cache_policy=NONE)
def judge_arm(
    params: Params, ws: Settings, steps: list[online.OnlineStep]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An arm's served answers judged on their labels, and its promotion decisions."""
    events = online.arm_events(ws, params.train.model_name)
    return online.arm_summary(params, ws, steps, events), events


@task(name="online-report", cache_policy=NONE)
def online_report(
    out_dir: Path,
    arms: dict[str, dict[str, Any]],
    timelines: dict[str, list[online.OnlineStep]],
    events: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any],
) -> tuple[Path, Path]:
    json_path, html_path = online.write_online_report(out_dir, arms, timelines, events, meta)
    rows = "\n".join(
        f"| {online.ARM_TITLES[arm]} | {r['roc_auc']:.4f} | {r['promotions']} | "
        f"{r['refused_online']} |"
        for arm, r in arms.items()
    )
    create_markdown_artifact(
        key="online-replay",
        markdown="| promotion policy | ROC AUC | promotions | refused online |\n|---|---|---|---|\n"
        + rows
        + f"\n\nReport: [{html_path.name}]({html_path.as_uri()})",
        description="Online replay: holdout gate vs online test",
    )
    return json_path, html_path
