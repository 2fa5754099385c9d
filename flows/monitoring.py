"""Monitoring and retraining flows: watch the champion, retrain when the loop decides to."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.training import context, train_and_promote
from tasks import monitoring as m
from tasks import training as t

RETRAIN_DEPLOYMENT = "retrain/retrain"


@flow(name="retrain", log_prints=True)
def retrain_flow(
    reason: str = "manual", until: str | None = None, window_days: int | None = None
) -> dict[str, Any]:
    """Validate accepted data, then train on the retrain window and run the promotion gate."""
    params, settings = context()
    t.version_data(params, settings)
    validation = t.validate(params, settings)
    days = window_days if window_days is not None else params.retrain.window_days
    return train_and_promote(params, settings, validation, f"retrain: {reason}", days, until)


@flow(name="monitor", log_prints=True)
def monitor_flow(
    as_of: str | None = None,
    retrain: Literal["deployment", "subflow", "off"] = "deployment",
    wait: bool = False,
    version: bool = True,
) -> dict[str, Any]:
    """Drift and performance of the champion on the newest window; retrain when decided."""
    params, settings = context()
    result = m.monitor(params, settings, as_of)
    if version:
        m.version_outputs(settings)
    summary = result.to_dict()
    if result.decision.action == "cannot_evaluate":
        m.alert(result)
    elif result.decision.action == "retrain" and retrain != "off":
        if not m.claim_retrain(params, settings, result):
            summary["retrain"] = "already claimed within the cooldown"
        elif retrain == "subflow":
            summary["retrain"] = retrain_flow(reason=result.decision.reason, until=result.as_of)
        else:
            parameters = {"reason": result.decision.reason, "until": result.as_of}
            summary["retrain"] = m.start_retrain(RETRAIN_DEPLOYMENT, parameters, wait)
    return summary
