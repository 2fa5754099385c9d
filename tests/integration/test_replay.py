"""A four-step replay through the real loop (training, ingest, monitor and retrain flows) on the
Prefect test harness: the report compares the loop with its first model and every baseline over a
timeline of four steps, with a chart of ROC AUC and log loss against retrains and a verdict.

The figures are checked against an oracle computed here, independently of `driftloop.replay`
and `driftloop.baselines`: the registered models loaded with mlflow.sklearn, the label recomputed
from the raw batches (tomorrow's precipitation > 0), persistence as "rain tomorrow if it rained
today", and scikit-learn's metrics."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop import replay
from driftloop.config import load_params
from driftloop.features import make_dataset
from tests.helpers import Project
from tests.integration.conftest_loop import read_json

pytestmark = pytest.mark.slow

STEPS = 4
CADENCES = {"every_7d", "every_14d", "every_28d", "every_56d", "every_91d"}
WINDOWS = {"window_rolling", "window_growing", "window_seasonal"}
STRATEGIES = {"drift_triggered", "static", "base_rate", "persistence", "reference", "random"}
STRATEGIES |= CADENCES | WINDOWS


@pytest.fixture(scope="module")
def replayed(prefect_harness: None, module_project: Project) -> dict[str, Any]:
    from flows.replay import replay_flow

    module_project.edit_params(train={"refit": True})
    module_project.git("commit", "-qam", "params: refit gate winners, as shipped")
    return replay_flow(steps=STEPS, name="test")


@pytest.fixture(scope="module")
def report(module_project: Project, replayed: dict[str, Any]) -> dict[str, Any]:
    return dict(read_json(module_project.root / "reports" / "replay" / "report.json"))


def test_replay_writes_the_json_and_html_report(
    module_project: Project, replayed: dict[str, Any]
) -> None:
    out = module_project.root / "reports" / "replay"
    assert sorted(replayed["report"]) == [str(out / "report.html"), str(out / "report.json")]
    page = (out / "report.html").read_text()
    assert f"<title>{html.escape(module_project.params.replay.title)}</title>" in page
    report = json.loads((out / "report.json").read_text())
    for result in report["comparison"].values():
        assert f"<td>{html.escape(result['label'])}</td>" in page


def test_the_json_report_is_strict(module_project: Project, replayed: dict[str, Any]) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in report.json")

    text = (module_project.root / "reports" / "replay" / "report.json").read_text()
    json.loads(text, parse_constant=refuse)


def test_the_html_report_has_the_verdict_and_the_chart_against_retrains(
    module_project: Project, report: dict[str, Any]
) -> None:
    page = (module_project.root / "reports" / "replay" / "report.html").read_text()
    verdict = report["verdict"]
    assert html.escape(verdict["headline"]) in page
    # one sentence per baseline (the loop's first model included), best cadence and windows
    baselines = set(report["comparison"]) - {"drift_triggered"} - WINDOWS
    assert set(verdict["beaten"]) == baselines
    assert len(verdict["sentences"]) == len(baselines) + 2
    for sentence in verdict["sentences"]:
        assert html.escape(sentence) in page
    assert "ROC AUC (higher is better)" in page and "log loss (lower is better)" in page
    assert "Accuracy of each strategy against what it cost (retrains)" in page
    assert not re.search(r"<script[^>]*\ssrc=", page)  # plotly.js inline: works offline
    assert not re.search(r"<link[^>]*\shref=", page)


@dataclass(frozen=True)
class Judged:
    """The rows every strategy is judged on, and where their models are registered."""

    rows: pd.DataFrame
    model_name: str
    tracking_uri: str


@pytest.fixture(scope="module")
def judged(module_project: Project, report: dict[str, Any]) -> Judged:
    """Every replayed day after the first model's data whose label arrived, with its inputs."""
    workspace = Path(report["meta"]["workspace"])
    wparams = load_params(workspace / "params.yaml")
    raw = pd.concat(
        [pd.read_parquet(f) for f in sorted((workspace / "data" / "raw").glob("*.parquet"))]
    )
    raw = raw.sort_values("date").reset_index(drop=True)
    assert raw["date"].is_unique
    tomorrow = raw["precipitation"].shift(-1)
    inputs = make_dataset(raw, wparams, labelled_only=False)
    assert (inputs.timestamps.to_numpy() == raw["date"].to_numpy()).all()
    rows = inputs.X.assign(date=raw["date"], label=(tomorrow > 0).astype(float))
    rows.loc[tomorrow.isna(), "label"] = np.nan
    first = pd.Timestamp(wparams.replay.initial_until) + pd.Timedelta(days=1)
    rows = rows[(rows["date"] >= first) & rows["label"].notna()].reset_index(drop=True)
    return Judged(rows, wparams.train.model_name, module_project.settings.mlflow_uri)


def oracle(judged: Judged, live: list[tuple[str, str]]) -> dict[str, float]:
    """Accuracy and ROC AUC when each (day, version) loaded from the registry predicts from then."""
    import mlflow
    import mlflow.sklearn
    from sklearn.metrics import accuracy_score, roc_auc_score

    mlflow.set_registry_uri(judged.tracking_uri)
    rows = judged.rows
    inputs = rows.drop(columns=["date", "label"])
    proba, cut = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for i, (since, version) in enumerate(live):
        until = live[i + 1][0] if i + 1 < len(live) else "9999-12-31"
        mask = ((rows["date"] >= since) & (rows["date"] < until)).to_numpy()
        model = mlflow.sklearn.load_model(f"models:/{judged.model_name}/{version}")
        proba[mask] = model.predict_proba(inputs[mask])[:, 1]
        cut[mask] = model.threshold  # each model's own decision threshold
    assert not np.isnan(proba).any()
    y = rows["label"].astype(int).to_numpy()
    return {
        "n_predictions": len(rows),
        "accuracy": float(accuracy_score(y, proba >= cut)),
        "roc_auc": float(roc_auc_score(y, proba)),
    }


def figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("n_predictions", "accuracy", "roc_auc")}


def test_report_compares_the_loop_with_every_baseline(report: dict[str, Any]) -> None:
    comparison = report["comparison"]
    assert set(comparison) == STRATEGIES
    assert comparison["static"]["retrains"] == 0
    steps = report["timeline"]
    loop = comparison["drift_triggered"]
    assert loop["retrains"] == sum(s["retrained"] for s in steps)
    assert loop["promotions"] == sum(s["promoted"] for s in steps)
    # weekly steps: every 7 days refits after each step but the last, 28 days and more never
    assert comparison["every_7d"]["retrains"] == STEPS - 1
    assert comparison["every_14d"]["retrains"] == 1
    assert all(comparison[c]["retrains"] == 0 for c in ("every_28d", "every_56d", "every_91d"))
    random = comparison["random"]
    retrained_before_the_end = sum(s["retrained"] for s in steps[:-1])
    assert random["retrains"] == retrained_before_the_end
    assert [s["seed"] for s in random["seeds"]] == list(range(10))
    tol = 1e-12  # equal draws: the mean and the percentiles differ in the last bit
    assert random["roc_auc_p10"] - tol <= random["roc_auc"] <= random["roc_auc_p90"] + tol
    judged = {r["n_predictions"] for r in comparison.values()}
    assert judged == {27}


def test_static_strategy_matches_the_first_champion_scored_independently(
    report: dict[str, Any], judged: Judged
) -> None:
    # May 1-27 2012: May 28 has no label yet (May 29 was not replayed)
    assert len(judged.rows) == 27
    expected = oracle(judged, [("2012-05-01", "2")])  # v1 passed the gate, its refit v2 serves
    assert figures(report["comparison"]["static"]) == pytest.approx(expected)


def test_a_schedule_without_a_retrain_is_the_first_model(
    report: dict[str, Any], judged: Judged
) -> None:
    """Its only model is fitted directly on the first model's rows with the same seed, chosen on
    its training part and refitted on all of them: the first champion's very predictions."""
    expected = oracle(judged, [("2012-05-01", "2")])
    for name in ("every_28d", "every_91d", "window_rolling"):
        assert figures(report["comparison"][name]) == pytest.approx(expected), name


def test_persistence_is_rain_tomorrow_if_it_rained_today(
    report: dict[str, Any], judged: Judged
) -> None:
    from sklearn.metrics import roc_auc_score

    rows = judged.rows
    today = (rows["precipitation"] > 0).astype(int).to_numpy()
    y = rows["label"].astype(int).to_numpy()
    got = report["comparison"]["persistence"]
    assert got["accuracy"] == pytest.approx(float((today == y).mean()))
    assert got["roc_auc"] == pytest.approx(float(roc_auc_score(y, today)))


def test_the_base_rate_is_a_constant_score(report: dict[str, Any], judged: Judged) -> None:
    from sklearn.metrics import log_loss

    y = judged.rows["label"].astype(int).to_numpy()
    got = report["comparison"]["base_rate"]
    rate = got["constant"]
    assert 0.0 < rate < 1.0
    assert got["roc_auc"] == 0.5
    assert got["accuracy"] == pytest.approx(float((y == int(rate >= 0.5)).mean()))
    assert got["log_loss"] == pytest.approx(log_loss(y, [rate] * len(y)))


def test_drift_triggered_strategy_matches_the_champion_live_at_each_step(
    report: dict[str, Any], judged: Judged
) -> None:
    live = [(s["batch_start"], s["champion"]) for s in report["timeline"]]
    assert all(version is not None for _, version in live)
    expected = oracle(judged, live)
    assert figures(report["comparison"]["drift_triggered"]) == pytest.approx(expected)


def test_monthly_figures_add_up_to_the_overall_accuracy(report: dict[str, Any]) -> None:
    for name, result in report["comparison"].items():
        assert list(result["monthly"]) == ["2012-05"], name  # every judged row is in May
        assert result["monthly"]["2012-05"]["accuracy"] == pytest.approx(result["accuracy"])


def test_timeline_has_one_entry_per_step(module_project: Project, report: dict[str, Any]) -> None:
    expected = [d.isoformat() for d in replay.step_dates(module_project.params)[:STEPS]]
    steps = report["timeline"]
    assert [s["as_of"] for s in steps] == expected
    assert steps[0]["batch_start"] == "2012-05-01"
    assert all(s["action"] in {"retrain", "no_action", "cannot_evaluate"} for s in steps)
    assert steps[0]["champion"] == "2"  # the refit of v1
    assert report["meta"]["steps"] == STEPS


def test_the_replay_workspace_versions_its_data_with_dvc(report: dict[str, Any]) -> None:
    workspace = Path(report["meta"]["workspace"])
    assert workspace.name == "test"
    assert (workspace / "data" / "raw.dvc").is_file()
    assert "md5:" in (workspace / "data" / "raw.dvc").read_text()
