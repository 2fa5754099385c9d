"""Online experiment evaluation: judge the running experiment on served traffic and its labels."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.training import context
from tasks import experiments as e


@flow(name="experiment", log_prints=True)
def evaluate_experiment_flow(
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluate the model's running experiment; promote the challenger or end it with why."""
    params, settings = context(project, params_file, home, tracking_uri)
    found = e.evaluate(params, settings)
    if found is None:
        return {"action": "none", "reason": "no experiment is running"}
    state, verdict = found
    e.publish(state, verdict)
    if verdict.action != "continue":
        e.apply(settings, state, verdict)
    return {"experiment": state.id, **verdict.to_dict()}
