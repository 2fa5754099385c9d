"""Online experiment evaluation: judge the running experiment on served traffic and its labels."""

from __future__ import annotations

from typing import Any

from prefect import flow

from driftloop import stages
from flows.training import context
from tasks import experiments as e


@flow(name="experiment", log_prints=True)
def evaluate_experiment_flow(
    as_of: str | None = None,
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluate the model's running experiment; promote the challenger or end it with why.

    `as_of` (a date): judge at the end of that day instead of now (a replay of history).
    """
    params, settings = context(project, params_file, home, tracking_uri)
    now = stages.end_of(as_of)
    when = now.floor("us").to_pydatetime() if now is not None else None
    found = e.evaluate(params, settings, when)
    if found is None:
        return {"action": "none", "reason": "no experiment is running"}
    state, verdict = found
    e.publish(state, verdict)
    if verdict.action != "continue":
        e.apply(settings, state, verdict, when)
    return {"experiment": state.id, **verdict.to_dict()}
