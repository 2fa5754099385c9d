"""Tasks of the monitoring loop: the monitoring steps (each wraps one step function of
`driftloop.monitoring` and publishes its artifact; those that read or write the tracking store
are retried when it is down), then claim a retrain, start it, raise an alert. No ML logic here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import FlowRun

from driftloop import monitoring
from driftloop.config import Params, Settings
from driftloop.drift import DriftSummary
from driftloop.monitoring import (
    DriftCheck,
    Findings,
    MonitorResult,
    Performance,
    Reference,
    Window,
)
from driftloop.policy import RetrainDecision
from tasks import alerts
from tasks.common import REGISTRY_RETRIES, table


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
        lines += _drift_lines(result.drift)
    perf = result.performance
    if perf is not None:
        lines += ["", f"Labelled rows: {perf.n_labelled}; labels pending: {perf.n_pending}"]
    if result.assessment is not None:
        lines += ["", "| signal | state | detail |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.state} | {s.detail} |" for s in result.assessment.signals]
    if result.out_dir is not None and (result.out_dir / "drift.html").exists():
        lines += ["", f"Evidently report: [drift.html]({(result.out_dir / 'drift.html').as_uri()})"]
    return "\n".join(lines)


def _drift_lines(summary: DriftSummary) -> list[str]:
    lines = [
        f"Drifted share: **{summary.drifted_share:.2f}** "
        f"({summary.n_current} current vs {summary.n_reference} reference rows)",
        "",
        "| column | method | score | threshold | drifted |",
        "|---|---|---|---|---|",
    ]
    cols = list(summary.columns)
    if summary.prediction is not None:
        cols.append(summary.prediction)
    return lines + [
        f"| {c.column} | {c.method} | {_score(c.score)} | {c.threshold:.4g} | {c.drifted} |"
        for c in cols
    ]


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# -- the monitoring steps, each a task with its artifact -------------------------------------------


@task(name="current-window", cache_policy=NONE, **REGISTRY_RETRIES)
def current_window(params: Params, settings: Settings, as_of: dt.date | None) -> Window:
    """The window and the champion's answers on it (retried if the tracking store is down)."""
    window = monitoring.current_window(params, settings, as_of)
    create_markdown_artifact(
        key="monitoring-window", markdown=window_markdown(window), description="Current window"
    )
    return window


@task(name="reference", cache_policy=NONE)
def reference(params: Params, settings: Settings, window: Window) -> Reference:
    """The champion's scored training rows of the window's season."""
    ref = monitoring.reference(params, settings, window)
    create_markdown_artifact(
        key="monitoring-reference", markdown=reference_markdown(ref), description="Reference"
    )
    return ref


@task(name="drift", cache_policy=NONE)
def drift(params: Params, window: Window, ref: Reference) -> DriftCheck:
    """Evidently drift per feature and of the prediction; a table artifact."""
    checked = monitoring.drift(params, window, ref)
    create_markdown_artifact(
        key="monitoring-drift", markdown=drift_markdown(checked), description="Drift"
    )
    return checked


@task(name="performance", cache_policy=NONE, **REGISTRY_RETRIES)
def performance(
    params: Params, settings: Settings, window: Window, ref: Reference, checked: DriftCheck
) -> Performance:
    """Realised and estimated performance and the signals (retried: reads MLflow)."""
    perf = monitoring.performance(params, settings, window, ref, checked)
    realised = perf.realised
    create_table_artifact(
        key="monitoring-performance",
        table=table(
            {"current": dict(realised.current), "reference (holdout)": dict(realised.reference)}
        ),
        description=f"{realised.n_labelled} labelled rows, {realised.n_pending} pending",
    )
    return perf


@task(name="decision", cache_policy=NONE)
def decide(
    params: Params,
    settings: Settings,
    window: Window,
    ref: Reference,
    checked: DriftCheck,
    perf: Performance,
) -> RetrainDecision:
    """Retrain, alert or nothing, and why."""
    decision = monitoring.decide(params, settings, window, ref, checked, perf)
    create_markdown_artifact(
        key="monitoring-decision",
        markdown=f"### {decision.action}\n\n{decision.reason}",
        description="Retrain decision",
    )
    return decision


@task(name="record", cache_policy=NONE, **REGISTRY_RETRIES)
def record(
    params: Params, settings: Settings, findings: Findings, *, log: bool = True
) -> MonitorResult:
    """Files in the window's folder and the MLflow run; the summary artifact."""
    result = monitoring.record(params, settings, findings, log=log)
    create_markdown_artifact(
        key="monitoring", markdown=_markdown(result), description="Drift and decision"
    )
    return result


STEPS = monitoring.Steps(current_window, reference, drift, performance, decide, record)


def window_markdown(window: Window) -> str:
    """The window, its current data and labels (or why it cannot be judged)."""
    head = f"### Window {window.start}..{window.end}"
    if window.problem is not None:
        return f"{head}: cannot be judged\n\n{window.problem}"
    assert window.current is not None
    labelled = int(window.current["label"].notna().sum())
    champion = window.champion.version if window.champion else "-"
    return (
        f"{head}: champion v{champion}\n\nCurrent data: {window.source}, "
        f"{len(window.current)} rows ({labelled} labelled)"
    )


def reference_markdown(ref: Reference) -> str:
    """How many reference rows, of which mode, and whether the season is unseen."""
    text = f"### Reference: {ref.mode}, {len(ref.frame)} rows"
    return text if ref.unseen is None else f"{text}\n\nUnseen season: {ref.unseen}"


def drift_markdown(checked: DriftCheck) -> str:
    """The drift table (or why drift was not judged)."""
    if checked.summary is None:
        return f"### Drift not judged\n\n{checked.error or 'unseen season'}"
    return "\n".join(_drift_lines(checked.summary))


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
        result.champion,
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
def alert(result: MonitorResult, model: str) -> None:
    """Cannot evaluate: never a silent 'no drift'. Logged, published, and emitted as an event."""
    get_run_logger().warning("monitoring cannot evaluate: %s", result.decision.reason)
    create_markdown_artifact(
        key="alert",
        markdown=f"### ALERT: cannot evaluate\n\n{result.decision.reason}",
        description="Monitoring could not judge drift",
    )
    alerts.publish(
        "driftloop.monitor.cannot-evaluate",
        model,
        {"reason": result.decision.reason, "as_of": result.as_of},
    )


@task(name="publish-decision", cache_policy=NONE)
def publish_decision(params: Params, result: MonitorResult) -> list[str]:
    """Drift found and a retrain decided reach whoever listens (Prefect events, automations)."""
    name, sent = params.train.model_name, []
    drift = result.drift
    if drift is not None and drift.drifted_columns:
        payload = {
            "as_of": result.as_of,
            "columns": drift.drifted_columns,
            "champion": result.champion,
        }
        if alerts.publish("driftloop.drift.detected", name, payload):
            sent.append("driftloop.drift.detected")
    if result.decision.action == "retrain":
        payload = {"as_of": result.as_of, "reason": result.decision.reason}
        if alerts.publish("driftloop.retrain.decided", name, payload):
            sent.append("driftloop.retrain.decided")
    return sent
