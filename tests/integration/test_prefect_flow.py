"""The Prefect training flow on an ephemeral Prefect server (prefect_test_harness), real tasks.

The first run (a module fixture) ingests, trains and promotes; later tests run the flow again on
that project and check what the Prefect API recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from driftloop.errors import ValidationFailed
from tests.helpers import Project, poll

pytestmark = pytest.mark.slow

UNTIL = "2014-06-30"
TRAINING_STEPS = {
    "load-training-data",
    "build-features",
    "train",
    "evaluate",
    "register",
    "promote",
}
PIPELINE_TASKS = {"ingest", "validate", *TRAINING_STEPS}  # one task per stage of stages.Steps
ARTIFACTS = {"validation", "metrics", "promotion"}


@dataclass(frozen=True)
class FlowRun:
    id: UUID
    state: Any
    result: Any


def run_flow(**kwargs: Any) -> FlowRun:
    from flows.training import training_flow

    state = training_flow(**kwargs, return_state=True)
    result = state.result(raise_on_failure=False)
    return FlowRun(state.state_details.flow_run_id, state, result)


def task_states(flow_run_id: UUID) -> dict[str, str]:
    """Task run base name (without Prefect's random suffix) -> final state type."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.state_type.value for run in runs if run.state_type}


def completed(states: dict[str, str]) -> set[str]:
    return {name for name, state in states.items() if state == "COMPLETED"}


def artifact_keys(flow_run_id: UUID) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in artifacts if a.key}


def flow_run_state(flow_run_id: UUID) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state_type.value


@pytest.fixture(scope="module")
def first_run(prefect_harness: None, module_project: Project) -> FlowRun:
    return run_flow(until=UNTIL)


def test_first_run_ingests_trains_and_promotes(module_project: Project, first_run: FlowRun) -> None:
    assert first_run.state.is_completed(), first_run.result
    summary = first_run.result
    assert summary["promoted"] is True
    assert summary["version"] == "1"
    assert summary["data_md5"] == module_project.raw_dvc_md5()
    assert module_project.champion() == "1"


def test_prefect_records_the_run_its_tasks_and_artifacts(first_run: FlowRun) -> None:
    assert flow_run_state(first_run.id) == "COMPLETED"
    states = poll(lambda: task_states(first_run.id), lambda s: completed(s) >= PIPELINE_TASKS)
    assert completed(states) >= PIPELINE_TASKS, states
    keys = poll(lambda: artifact_keys(first_run.id), lambda k: k >= ARTIFACTS)
    assert keys >= ARTIFACTS, keys


def test_second_run_with_nothing_new_registers_nothing(
    module_project: Project, first_run: FlowRun
) -> None:
    versions = module_project.versions()

    again = run_flow(until=UNTIL)

    assert again.state.is_completed(), again.result
    assert again.result["promoted"] is False
    assert again.result["version"] == module_project.champion() == "1"
    assert "already trained" in again.result["message"]
    assert module_project.versions() == versions
    states = poll(lambda: task_states(again.id), lambda s: {"ingest", "validate"} <= completed(s))
    assert {"ingest", "validate"} <= completed(states), states
    assert not TRAINING_STEPS & set(states)


def test_bad_file_fails_the_flow_and_leaves_the_registry(
    module_project: Project, first_run: FlowRun, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("date,precipitation,temp_max,temp_min\n2014-07-01,0.0,20.1,11.0\n")
    versions, champion = module_project.versions(), module_project.champion()
    raw = module_project.raw_snapshot()

    failed = run_flow(source=str(bad))

    assert failed.state.is_failed()
    assert isinstance(failed.result, ValidationFailed)
    assert "expect_column_to_exist(wind)" in str(failed.result)
    with pytest.raises(ValidationFailed):
        failed.state.result()
    assert flow_run_state(failed.id) == "FAILED"
    states = poll(lambda: task_states(failed.id), lambda s: s.get("ingest") == "FAILED")
    assert states == {"ingest": "FAILED"}
    assert module_project.versions() == versions
    assert module_project.champion() == champion
    assert module_project.raw_snapshot() == raw
