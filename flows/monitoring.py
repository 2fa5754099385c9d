"""Monitoring and retraining flows: watch the champion, retrain when the loop decides to."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from driftloop import experiments, monitoring, stages, windows
from driftloop.config import flow_target
from flows.training import context
from tasks import monitoring as m
from tasks import training as t

RETRAIN_DEPLOYMENT = "retrain/retrain"


@flow(name="retrain", log_prints=True)
def retrain_flow(
    reason: str = "manual",
    until: str | None = None,
    window_days: int | None = None,
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Validate accepted data, then train on the retrain window and run the promotion gate."""
    params, settings = context(project, params_file, home, tracking_uri)
    t.version_data(params, settings)
    validation = t.validate(params, settings)
    window = window_days if window_days is not None else windows.of(params.retrain)
    request = stages.TrainRequest(f"retrain: {reason}", window, until, validation=validation)
    return stages.train_and_promote(params, settings, request, t.STEPS).to_dict()


@flow(name="monitor", log_prints=True)
def monitor_flow(
    as_of: str | None = None,
    retrain: Literal["deployment", "subflow", "off"] = "deployment",
    wait: bool = False,
    version: bool = True,
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Drift and performance of the champion on the newest window; retrain when decided.

    Monitoring's named steps (current window, reference, drift, performance, decision, record)
    run as tasks, in the sequence `driftloop.monitoring.monitor` writes once.
    """
    params, settings = context(project, params_file, home, tracking_uri)
    where = flow_target(settings)  # the retrain runs on this project and model, whoever starts it
    result = monitoring.monitor(params, settings, monitoring.day(as_of), steps=m.STEPS)
    if version:
        m.version_outputs(params, settings)
    summary = result.to_dict()
    m.publish_decision(params, result)
    if result.decision.action == "cannot_evaluate":
        m.alert(result, params.train.model_name)
    elif result.decision.action == "retrain" and retrain != "off":
        if blocked := experiments.retrain_blocked(params, settings):
            summary["retrain"] = blocked
        elif not m.claim_retrain(params, settings, result):
            summary["retrain"] = "already claimed within the cooldown"
        elif retrain == "subflow":
            summary["retrain"] = retrain_flow(
                reason=result.decision.reason, until=result.as_of, **where
            )
        else:
            parameters: dict[str, Any] = {
                "reason": result.decision.reason,
                "until": result.as_of,
                **where,
            }
            summary["retrain"] = m.start_retrain(RETRAIN_DEPLOYMENT, parameters, wait)
    return summary
