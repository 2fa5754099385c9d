"""The bundled flights example through the real loop: a first model on January-February 2013,
then weekly flights and their label batches, monitoring on the labels that have landed, a retrain
and the promotion gate, and the replay report comparing the strategies.

The example's own params, with a monitoring policy that always wants to retrain (every numeric
column counts as drifted) and a smaller model, so that two weekly steps exercise the whole loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.lineage import Lineage, Verdict
from tests.helpers import Project, write_eager_flights_params
from tests.integration.conftest_loop import fired_signals

pytestmark = pytest.mark.slow

STEPS = 2


@pytest.fixture(scope="module")
def flights_params(module_project: Project) -> Path:
    return write_eager_flights_params(module_project.root, "flights", "2013-03-14")


@pytest.fixture(scope="module")
def replayed(
    prefect_harness: None, module_project: Project, flights_params: Path
) -> dict[str, Any]:
    from flows.replay import replay_flow

    return replay_flow(
        steps=STEPS,
        name="flights",
        project=str(module_project.root),
        params_file=str(flights_params),
    )


@pytest.fixture(scope="module")
def workspace(replayed: dict[str, Any]) -> Path:
    return Path(replayed["meta"]["workspace"])


def test_the_report_compares_the_strategies_on_the_same_flights(
    module_project: Project, replayed: dict[str, Any]
) -> None:
    out = module_project.root / "reports" / "flights-replay"
    report = json.loads((out / "report.json").read_text())
    assert "NYC flights" in (out / "report.html").read_text()
    comparison = report["comparison"]
    # labels arrive by flight, not as a later row of a series: no persistence baseline
    assert {"drift_triggered", "static", "base_rate", "reference", "random"} <= set(comparison)
    assert "persistence" not in comparison
    assert {"every_7d", "every_91d", "window_rolling", "window_seasonal"} <= set(comparison)
    judged = {name: r["n_predictions"] for name, r in comparison.items()}
    assert (
        len(set(judged.values())) == 1 and judged["static"] > 10_000
    )  # two weeks of landed flights
    assert [s["as_of"] for s in report["timeline"]] == ["2013-03-07", "2013-03-14"]


def test_label_batches_arrive_with_each_week_and_are_versioned(workspace: Path) -> None:
    labels = sorted((workspace / "data" / "flights" / "labels").glob("*.parquet"))
    assert len(labels) >= 1 + STEPS  # the first model's labels, then one batch per step
    assert (workspace / "data" / "flights" / "labels.dvc").is_file()
    assert (workspace / "data" / "flights" / "raw.dvc").is_file()


def test_monitoring_judges_landed_flights_and_counts_the_rest_pending(
    replayed: dict[str, Any], module_project: Project
) -> None:
    report = json.loads(
        (module_project.root / "reports" / "flights-replay" / "report.json").read_text()
    )
    first = report["timeline"][0]
    assert first["n_labelled"] > 5000  # a week of flights, nearly all landed by the step's end
    assert 0 < first["n_pending"] < 1000  # the last hours' flights have not landed yet
    assert first["action"] == "retrain" and first["retrained"] is True


def test_the_retrain_went_through_the_gate_with_its_lineage(
    module_project: Project, replayed: dict[str, Any], workspace: Path
) -> None:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    name = raw["train"]["model_name"]
    client = module_project.mlflow_client()
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    gated = [v for v in versions if not v.tags.get(Lineage.tag("refit_of"))]
    assert len(gated) >= 2  # the first model and a retrain (a winner's refit is a version too)
    retrain = gated[1]
    assert "drift" in fired_signals(retrain.tags[Lineage.tag("trigger")])
    assert retrain.tags[Lineage.tag("labels_md5")]
    assert retrain.tags[Lineage.tag("labels_as_of")].startswith("2013-03-07")
    assert retrain.tags[Verdict.tag("decision")] in {"promoted", "rejected"}
