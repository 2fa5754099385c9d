"""A four-step replay through the real loop (training, ingest, monitor and retrain flows) on the
Prefect test harness: the report compares the three strategies over a timeline of four steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from driftloop import replay
from tests.helpers import Project
from tests.integration.conftest_loop import read_json

pytestmark = pytest.mark.slow

STEPS = 4
STRATEGIES = {"static", "scheduled", "drift_triggered"}


@pytest.fixture(scope="module")
def replayed(prefect_harness: None, module_project: Project) -> dict[str, Any]:
    from flows.replay import replay_flow

    return replay_flow(steps=STEPS, name="test")


@pytest.fixture(scope="module")
def report(module_project: Project, replayed: dict[str, Any]) -> dict[str, Any]:
    return dict(read_json(module_project.root / "reports" / "replay" / "report.json"))


def test_replay_writes_the_json_and_html_report(
    module_project: Project, replayed: dict[str, Any]
) -> None:
    out = module_project.root / "reports" / "replay"
    assert sorted(replayed["report"]) == [str(out / "report.html"), str(out / "report.json")]
    html = (out / "report.html").read_text()
    assert "<title>driftloop replay</title>" in html
    assert all(f"<td>{name}</td>" in html for name in STRATEGIES)


def test_report_compares_three_strategies(report: dict[str, Any]) -> None:
    comparison = report["comparison"]
    assert set(comparison) == STRATEGIES
    for name, result in comparison.items():
        assert 0.0 <= result["accuracy"] <= 1.0, name
        assert 0.0 <= result["roc_auc"] <= 1.0, name
        assert isinstance(result["retrains"], int), name
        assert result["n_predictions"] == comparison["static"]["n_predictions"] > 0
    assert comparison["static"]["retrains"] == 0
    steps = report["timeline"]
    assert comparison["drift_triggered"]["retrains"] == sum(s["retrained"] for s in steps)


def test_timeline_has_one_entry_per_step(module_project: Project, report: dict[str, Any]) -> None:
    expected = [d.isoformat() for d in replay.step_dates(module_project.params)[:STEPS]]
    steps = report["timeline"]
    assert [s["as_of"] for s in steps] == expected
    assert steps[0]["batch_start"] == "2012-05-01"
    assert all(s["action"] in {"retrain", "no_action", "cannot_evaluate"} for s in steps)
    assert steps[0]["champion"] == "1"
    assert report["meta"]["steps"] == STEPS


def test_the_replay_workspace_versions_its_data_with_dvc(report: dict[str, Any]) -> None:
    workspace = Path(report["meta"]["workspace"])
    assert workspace.name == "test"
    assert (workspace / "data" / "raw.dvc").is_file()
    assert "md5:" in (workspace / "data" / "raw.dvc").read_text()
