"""The monitor flow on a drifted month, on the Prefect test harness: it retrains in a subflow
(linked to it), registers a new version; three monitors at once start exactly one retrain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pandas as pd
import pytest

from driftloop.lineage import Lineage
from tests.helpers import Project
from tests.integration.conftest_loop import (
    AS_OF,
    artifacts_of,
    child_flow_runs,
    fired_signals,
    promotions,
    retrain_claims,
    with_champion,
)

pytestmark = pytest.mark.slow


def monitor(as_of: str = AS_OF) -> tuple[UUID, dict[str, Any]]:
    """One monitor flow run that retrains in a subflow: its run id and summary."""
    from flows.monitoring import monitor_flow

    state = monitor_flow(as_of=as_of, retrain="subflow", return_state=True)
    return state.state_details.flow_run_id, state.result()


@pytest.fixture(scope="module")
def drifted(prefect_harness: None, module_project: Project) -> tuple[Project, UUID, dict[str, Any]]:
    project = with_champion(module_project, eager=True)
    flow_run_id, summary = monitor()
    return project, flow_run_id, summary


def test_monitor_flow_retrains_in_a_subflow_and_registers_a_version(
    drifted: tuple[Project, UUID, dict[str, Any]],
) -> None:
    project, _, summary = drifted
    assert summary["action"] == "retrain"
    retrain = summary["retrain"]
    assert isinstance(retrain, dict), retrain
    assert retrain["version"] == "2"
    assert project.versions() == ["1", "2"]
    lineage = Lineage.from_tags(
        project.mlflow_client().get_model_version(project.model_name, "2").tags
    )
    assert "drift" in fired_signals(lineage.trigger)
    assert lineage.until == pd.Timestamp(AS_OF)  # trained up to the monitored day, no further
    retrain_window = project.params.retrain
    assert retrain_window.window == "growing"  # the shipped default
    assert lineage.since is None  # all accepted data when the window is growing
    assert len(retrain_claims(project)) == 1


def test_the_retrain_run_is_a_child_of_the_monitor_run(
    drifted: tuple[Project, UUID, dict[str, Any]],
) -> None:
    _, flow_run_id, _ = drifted
    children = child_flow_runs([flow_run_id])
    assert len(children) == 1
    assert children[0].state_type.value == "COMPLETED"


def test_the_monitor_run_publishes_its_decision_as_markdown(
    drifted: tuple[Project, UUID, dict[str, Any]],
) -> None:
    _, flow_run_id, summary = drifted
    artifact = artifacts_of(flow_run_id)["monitoring"]
    assert artifact.type == "markdown"
    assert f"**{summary['action']}**" in str(artifact.data)
    assert "| temp_max | ks |" in str(artifact.data)


def test_the_monitor_run_is_its_named_steps_each_with_its_artifact(
    drifted: tuple[Project, UUID, dict[str, Any]],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    _, flow_run_id, summary = drifted
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
    started = [r.name.rsplit("-", 1)[0] for r in sorted(runs, key=lambda r: r.expected_start_time)]
    steps = ["current-window", "reference", "drift", "performance", "decision", "record"]
    assert [name for name in started if name in steps] == steps
    assert all(r.state_type.value == "COMPLETED" for r in runs)
    artifacts = artifacts_of(flow_run_id)
    assert f"{summary['champion']}" in str(artifacts["monitoring-window"].data)
    assert "| temp_max | ks |" in str(artifacts["monitoring-drift"].data)
    assert artifacts["monitoring-performance"].type == "table"
    assert summary["reason"] in str(artifacts["monitoring-decision"].data)
    assert "rows" in str(artifacts["monitoring-reference"].data)


def test_three_monitors_at_once_start_exactly_one_retrain(
    prefect_harness: None, project: Project
) -> None:
    with_champion(project, eager=True)
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [f.result(timeout=600) for f in [pool.submit(monitor) for _ in range(3)]]

    retrained = [s for _, s in runs if isinstance(s.get("retrain"), dict)]
    assert len(retrained) == 1, [s.get("retrain", s["reason"]) for _, s in runs]
    assert len(child_flow_runs([run_id for run_id, _ in runs])) == 1
    assert len(retrain_claims(project)) == 1
    assert project.versions() == ["1", "2"]
    promoted = [e["version"] for e in promotions(project)]
    assert promoted in (["1"], ["1", "2"])  # v1 by `train`, at most one more by the loop
    assert project.champion() == promoted[-1]
