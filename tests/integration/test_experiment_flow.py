"""The experiment evaluation flow for real: an ephemeral Prefect server, MLflow on a temp SQLite
file, the service's prediction log (Parquet roll) and feedback files. A shadow experiment whose
challenger is clearly better is promoted by the flow, which publishes its markdown artifact."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from driftloop import experiments as x
from driftloop.config import flow_target
from tests.helpers import Project
from tests.integration.conftest_loop import artifacts_of
from tests.unit.test_experiments import register_two_models, set_experiment, world


def serve_log(project: Project, state: x.ExperimentState, n: int) -> None:
    """n requests answered by the champion and scored in shadow, and their labels sent back."""
    from driftloop.serving.feedback import FeedbackLog
    from driftloop.serving.predlog import log_dir

    y, good, poor = world(n, seed=11)
    start = state.started_at.replace(tzinfo=None)
    rows = []
    for i in range(n):
        base = {
            "prediction_id": f"p{i}",
            "time": pd.Timestamp(start + dt.timedelta(seconds=i + 1)),
            "key": f"r{i}",
            "row_id": f"r{i}",
        }
        rows.append({**base, "variant": "champion", "model_version": "1", "probability": poor[i]})
        rows.append({**base, "variant": "shadow", "model_version": "2", "probability": good[i]})
    frame = pd.DataFrame(rows).assign(label=lambda f: (f["probability"] >= 0.5).astype(int))
    folder = log_dir(project.params, project.settings)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "roll-1.parquet")
    feedback = FeedbackLog(project.settings.path(project.params.serve.feedback_dir))
    for i in range(n):
        feedback.record(f"r{i}", 2.5 if y[i] else 0.0, None)  # raw rain amount: > 0 is rain


def test_the_flow_promotes_a_clear_winner_and_publishes_its_decision(
    prefect_harness: None, project: Project
) -> None:
    from flows.experiments import evaluate_experiment_flow

    register_two_models(project)
    set_experiment(project, kind="shadow", metric="log_loss", min_effect=0.05)
    assert evaluate_experiment_flow(**flow_target(project.settings))["action"] == "none"
    state = x.start_experiment(project.params, project.settings)
    serve_log(project, state, 1200)

    run = evaluate_experiment_flow(**flow_target(project.settings), return_state=True)
    summary = run.result()
    assert summary["action"] == "promote", summary["reason"]
    assert project.champion() == "2"
    last = x.read_state(project.settings, project.model_name)
    assert last is not None and last.outcome == "promoted"
    artifact = artifacts_of(run.state_details.flow_run_id)["experiment"]
    text = str(artifact.data)
    assert "**promote**" in text and "paired t-test" in text
    assert "| champion | 1200 | 1200 |" in text and "| challenger | 1200 | 1200 |" in text
