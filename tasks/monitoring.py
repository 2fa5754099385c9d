"""Tasks of the monitoring loop: monitor, claim a retrain, start it, raise an alert."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event

from driftloop import monitoring
from driftloop.config import Params, Settings
from driftloop.monitoring import MonitorResult


def _markdown(result: MonitorResult) -> str:
    lines = [
        f"### Monitoring {result.window_start}..{result.as_of}: **{result.decision.action}**",
        "",
        result.decision.reason,
        "",
        f"Current data: {result.extra.get('source', '-')}",
        "",
    ]
    if result.drift is not None:
        lines += [
            f"Drifted share: **{result.drift.drifted_share:.2f}** "
            f"({result.drift.n_current} current vs {result.drift.n_reference} reference rows)",
            "",
            "| column | method | score | threshold | drifted |",
            "|---|---|---|---|---|",
        ]
        cols = list(result.drift.columns)
        if result.drift.prediction is not None:
            cols.append(result.drift.prediction)
        lines += [
            f"| {c.column} | {c.method} | {_score(c.score)} | {c.threshold:.4g} | {c.drifted} |"
            for c in cols
        ]
    perf = result.performance
    if perf is not None:
        lines += ["", f"Labelled rows: {perf.n_labelled}; labels pending: {perf.n_pending}"]
    if result.assessment is not None:
        lines += ["", "| signal | state | detail |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.state} | {s.detail} |" for s in result.assessment.signals]
    if result.out_dir is not None and (result.out_dir / "drift.html").exists():
        lines += ["", f"Evidently report: [drift.html]({(result.out_dir / 'drift.html').as_uri()})"]
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@task(name="monitor", cache_policy=NONE)
def monitor(params: Params, settings: Settings, as_of: str | None) -> MonitorResult:
    """Score the newest window with the champion; drift, performance and the decision."""
    day = dt.date.fromisoformat(as_of) if as_of else None
    result = monitoring.monitor(params, settings, day)
    create_markdown_artifact(
        key="monitoring", markdown=_markdown(result), description="Drift and decision"
    )
    return result


@task(name="version-outputs", cache_policy=NONE)
def version_outputs(params: Params, settings: Settings) -> str:
    """DVC-version the predictions and reports of monitoring."""
    return monitoring.version_outputs(params, settings)


@task(name="claim-retrain", cache_policy=NONE)
def claim_retrain(params: Params, settings: Settings, result: MonitorResult) -> bool:
    """One retrain per cooldown, however many monitors fire at once."""
    return monitoring.claim_retrain(
        settings,
        dt.date.fromisoformat(result.as_of),
        result.decision.reason,
        params.monitor.cooldown_days,
        params.train.model_name,
    )


@task(name="start-retrain", cache_policy=NONE)
def start_retrain(deployment: str, parameters: dict[str, Any], wait: bool) -> str:
    """Start the retraining deployment (linked to this run in the UI)."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, timeout=None if wait else 0)
    assert isinstance(run, FlowRun)  # sync context: run_deployment returns the run itself
    state = run.state.name if run.state else "scheduled"
    get_run_logger().info("retrain flow run %s: %s", run.id, state)
    return str(run.id)


@task(name="alert", cache_policy=NONE)
def alert(result: MonitorResult) -> None:
    """Cannot evaluate: never a silent 'no drift'. Logged, published, and emitted as an event."""
    get_run_logger().warning("monitoring cannot evaluate: %s", result.decision.reason)
    create_markdown_artifact(
        key="alert",
        markdown=f"### ALERT: cannot evaluate\n\n{result.decision.reason}",
        description="Monitoring could not judge drift",
    )
    emit_event(
        event="driftloop.monitor.cannot-evaluate",
        resource={"prefect.resource.id": "driftloop.monitor"},
        payload={"reason": result.decision.reason, "as_of": result.as_of},
    )
