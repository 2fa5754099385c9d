"""Shared setup of the monitoring-loop tests (imported by their modules; not a pytest conftest).

A champion trained on 2012-2014, then January 2015 ingested: monitoring that month finds drift and
decides to retrain (the cooldown counts from the champion's training end, 31 days earlier).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from tests.helpers import Project, cli

TRAIN_UNTIL = "2014-12-31"
AS_OF = "2015-01-31"
RETRAIN_FLOW = "retrain"

T = TypeVar("T")


# A policy that retrains on January 2015 (warmer than the champion's winters): the textbook K-S
# p-value of 0.05 and every column counting alike, instead of thresholds calibrated on the
# reference and the champion's importance (under which that January is calm).
EAGER_MONITOR = {"drift_thresholds": "fixed", "threshold": 0.05, "importance_weighting": False}


def with_champion(project: Project, until: str = AS_OF, *, eager: bool = False) -> Project:
    """Ingest 2012-2014 and train the champion (v1), then ingest the days up to `until`;
    `eager`: with a monitoring policy that retrains on January 2015 (EAGER_MONITOR)."""
    if eager:
        project.edit_params(monitor=EAGER_MONITOR)
    first = cli("ingest", "--until", TRAIN_UNTIL)
    assert first.exit_code == 0, first.stderr
    trained = cli("train", "--json").json()
    assert trained["promoted"] is True, trained
    more = cli("ingest", "--until", until)
    assert more.exit_code == 0, more.stderr
    assert project.champion() == "1"
    return project


def fired_signals(reason: str) -> list[str]:
    """The signals a retrain reason names ("[retrain: ]signals fired: a, b; ...")."""
    head = reason.removeprefix("retrain: ").split(";")[0]
    assert head.startswith("signals fired: "), reason
    return head.removeprefix("signals fired: ").split(", ")


def retrain_claims(project: Project) -> list[dict[str, Any]]:
    return [e for e in project.audit() if e.get("kind") == "retrain_claim"]


def promotions(project: Project) -> list[dict[str, Any]]:
    return [e for e in project.audit() if e.get("decision") == "promoted"]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def wait_until(probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Poll until probe() returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:.0f} s (last: {value!r})")
        time.sleep(every)


# -- the Prefect API (whichever server the current settings point at) ---------------------------


def child_flow_runs(parent_flow_run_ids: list[UUID], flow_name: str = RETRAIN_FLOW) -> list[Any]:
    """Runs of `flow_name` whose parent task run belongs to one of the given flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), limit=200
        )
        parents = {
            run.id: client.read_task_run(run.parent_task_run_id).flow_run_id
            for run in runs
            if run.parent_task_run_id is not None
        }
    wanted = set(parent_flow_run_ids)
    return [run for run in runs if parents.get(run.id) in wanted]


def artifacts_of(flow_run_id: UUID) -> dict[str, Any]:
    """Keyed artifacts of one flow run, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}
