"""`monitoring.monitor` on a real champion: Evidently drift per feature, files, an MLflow run, and
the "cannot evaluate" cases that must never read as "no_action" (plus the CLI's exit code 7).

Drift thresholds are calibrated on the champion's own reference. A constant column is drift
evidence, not a reason to give up; too few rows for drift leaves the decision to the labelled
rows' metric, and only when that cannot be judged either is the answer "cannot evaluate"."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator

import pandas as pd
import pytest

from driftloop import datastore, monitoring
from driftloop.lineage import MonitorRun
from driftloop.monitoring import MonitorResult
from driftloop.sources import load_seattle
from tests.helpers import Project, cli
from tests.integration.conftest_loop import AS_OF, read_json, with_champion

pytestmark = pytest.mark.slow

FLAT_WIND_FROM, FLAT_WIND_UNTIL = "2015-02-01", "2015-02-28"  # exactly one 28-day window


@pytest.fixture(scope="module")
def champion(module_project: Project) -> Project:
    return with_champion(module_project)


@pytest.fixture(scope="module")
def january(champion: Project) -> MonitorResult:
    return monitoring.monitor(champion.params, champion.settings, dt.date.fromisoformat(AS_OF))


@pytest.fixture(scope="module")
def flat_wind(champion: Project, january: MonitorResult) -> Project:
    """February ingested from a user's file where wind is 3.0 every day (inside its GE bounds)."""
    frame = load_seattle()
    days = frame[(frame["date"] >= FLAT_WIND_FROM) & (frame["date"] <= FLAT_WIND_UNTIL)]
    batch = champion.root.parent / "flat-wind.csv"
    days.assign(wind=3.0, date=days["date"].dt.strftime("%Y-%m-%d")).to_csv(batch, index=False)
    accepted = cli("ingest", str(batch))
    assert accepted.exit_code == 0, accepted.stderr  # the gate lets it through
    return champion


@contextlib.contextmanager
def edited_params(project: Project, **sections: dict[str, object]) -> Iterator[None]:
    """params.yaml with some keys changed, restored afterwards (the project is shared)."""
    file = project.root / "params.yaml"
    original = file.read_text()
    project.edit_params(**sections)
    try:
        yield
    finally:
        file.write_text(original)
        project.edit_params()


def assert_cannot_evaluate(result: MonitorResult, *words: str) -> None:
    assert result.decision.action == "cannot_evaluate", result.decision
    for word in words:
        assert word in result.decision.reason


# --- a month with a champion ---------------------------------------------------------------------


def test_monitor_decides_from_drift_of_every_feature(
    champion: Project, january: MonitorResult
) -> None:
    assert january.as_of == AS_OF
    assert january.window_start == "2015-01-04"  # 28 days
    assert january.champion == "1"
    assert january.drift is not None
    features = champion.params.features.raw
    assert features == ["precipitation", "temp_max", "temp_min", "wind"]
    assert [c.column for c in january.drift.columns] == features
    assert all(c.method == "ks" and 0.0 <= c.score <= 1.0 for c in january.drift.columns)
    assert january.drift.n_current == 28
    # The reference is the champion's own winters (Dec 20 to Feb 15 of 2012-2014: 3 x 58 days),
    # and January 2015 was warmer and windier than those: the temperatures drift.
    assert january.drift.n_reference == 174
    assert january.to_dict()["reference"] == {"mode": "seasonal", "rows": 174}
    # Thresholds calibrated on the reference: each column's KS p-value is judged against the 1 %
    # quantile of p-values of 28-day reference chunks against the rest of the reference.
    assert january.assessment is not None and january.assessment.calibration is not None
    calibrated = january.assessment.calibration.thresholds()
    for column in january.drift.columns:
        assert column.threshold == pytest.approx(calibrated[column.column])
        assert column.threshold < 0.05  # weather comes in spells: stricter than the textbook 0.05
    # A warm, windy January is within what the champion's own winters varied by.
    assert january.drift.drifted_columns == ()
    signals = {s.name: s.state for s in january.assessment.signals}
    assert signals["drift"] == signals["multivariate"] == signals["performance"] == "quiet"
    assert january.decision.action == "no_action"
    assert "importance-weighted drifted share 0.00 < 0.50" in january.decision.reason
    importance = january.assessment.importance
    assert importance is not None
    assert max(importance.by_column, key=importance.by_column.__getitem__) == "precipitation"


def test_monitor_writes_predictions_reports_and_decision(january: MonitorResult) -> None:
    out, drift = january.out_dir, january.drift
    assert out is not None and drift is not None
    assert out.name == AS_OF and out.parent.name == "monitoring"
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == 28
    assert predictions["proba"].between(0, 1).all()
    assert "<html" in (out / "drift.html").read_text()[:2000].lower()
    assert (out / "drift.json").stat().st_size > 0
    decision = read_json(out / "decision.json")
    assert decision["action"] == january.decision.action
    assert decision["reason"] == january.decision.reason
    assert [s["name"] for s in decision["triggers"]["signals"]] == [
        "performance",
        "estimated",
        "drift",
        "multivariate",
        "season",
    ]
    assert 0.0 <= decision["triggers"]["estimate"]["roc_auc"] <= 1.0
    assert decision["drift"] == drift.to_dict()


def test_monitor_logs_a_run_in_the_monitoring_experiment(
    champion: Project, january: MonitorResult
) -> None:
    client = champion.mlflow_client()
    experiment = client.get_experiment_by_name(champion.params.monitor.experiment)
    assert experiment is not None
    as_of = MonitorRun.tag("as_of")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{as_of}` = '{AS_OF}'")
    assert len(runs) == 1
    run = runs[0]
    assert MonitorRun.from_tags(run.data.tags) == MonitorRun(
        as_of=AS_OF,
        action=january.decision.action,
        reason=january.decision.reason,
        champion="1",
        model=champion.model_name,
    )
    assert january.drift is not None
    for column in january.drift.columns:
        assert run.data.metrics[f"drift_{column.column}"] == pytest.approx(column.score)
    assert january.assessment is not None and january.assessment.estimate is not None
    estimated = january.assessment.estimate.roc_auc
    assert run.data.metrics["estimated_roc_auc"] == pytest.approx(estimated)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"drift.json", "decision.json"} <= artifacts


# --- cannot evaluate -----------------------------------------------------------------------------


def test_no_champion_cannot_evaluate(project: Project) -> None:
    assert cli("ingest", "--until", AS_OF).exit_code == 0
    result = monitoring.monitor(project.params, project.settings, dt.date.fromisoformat(AS_OF))
    assert_cannot_evaluate(result, "no champion")
    assert result.drift is None


def test_too_few_rows_for_drift_leaves_the_decision_to_the_labelled_rows(
    champion: Project,
) -> None:
    with edited_params(champion, monitor={"min_rows": 40}):  # the window has 28
        result = monitoring.monitor(
            champion.params, champion.settings, dt.date.fromisoformat(AS_OF), log=False
        )
    assert result.drift is None
    assert result.decision.action != "cannot_evaluate", result.decision
    assert "drift cannot tell" in result.decision.reason
    assert "28 rows" in result.decision.reason and "min_rows=40" in result.decision.reason
    perf = result.performance
    assert perf is not None and perf.n_labelled == 27 and perf.n_pending == 1  # Jan 31: tomorrow
    assert "performance quiet" in result.decision.reason
    assert f"{perf.n_labelled} rows)" in result.decision.reason


def test_too_few_rows_and_too_few_labels_cannot_evaluate(champion: Project) -> None:
    with edited_params(champion, monitor={"min_rows": 40, "min_labelled_rows": 40}):
        result = monitoring.monitor(
            champion.params, champion.settings, dt.date.fromisoformat(AS_OF), log=False
        )
    assert_cannot_evaluate(result, "28 rows", "min_rows=40", "27 labelled rows < 40: cannot tell")
    assert result.out_dir is not None
    assert read_json(result.out_dir / "decision.json")["action"] == "cannot_evaluate"


@pytest.mark.parametrize("days", [1, 10, 90])
def test_an_as_of_past_the_data_never_judges_a_truncated_window(
    champion: Project, days: int
) -> None:
    last = datastore.last_accepted_date(champion.raw_dir)
    assert last is not None
    result = monitoring.monitor(
        champion.params, champion.settings, last + dt.timedelta(days=days), log=False
    )
    assert_cannot_evaluate(result, f"no accepted data after {last.isoformat()}")
    assert result.drift is None and result.performance is None


def test_a_constant_column_in_the_window_is_drift_evidence(flat_wind: Project) -> None:
    result = monitoring.monitor(
        flat_wind.params, flat_wind.settings, dt.date.fromisoformat(FLAT_WIND_UNTIL)
    )
    assert result.decision.action != "cannot_evaluate", result.decision
    assert result.drift is not None
    assert result.drift.n_current == 28
    wind = {c.column: c for c in result.drift.columns}["wind"]
    assert wind.drifted is True, wind  # 3.0 every day against the champion's varied winters
    assert "wind" in result.drift.drifted_columns


def test_cli_monitor_exits_7_when_it_cannot_evaluate(
    prefect_harness: None, flat_wind: Project
) -> None:
    last = datastore.last_accepted_date(flat_wind.raw_dir)
    assert last is not None and last.isoformat() == FLAT_WIND_UNTIL
    as_of = (last + dt.timedelta(days=30)).isoformat()
    done = cli("monitor", "--as-of", as_of, "--retrain", "off", "--json")
    assert done.exit_code == 7, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["action"] == "cannot_evaluate"
    assert summary["as_of"] == as_of
    assert f"no accepted data after {FLAT_WIND_UNTIL}" in summary["reason"]


def test_cli_monitor_without_prefect_runs_the_same_steps(flat_wind: Project) -> None:
    plain = monitoring.monitor(
        flat_wind.params, flat_wind.settings, dt.date.fromisoformat(FLAT_WIND_UNTIL), log=False
    ).to_dict()
    summary = cli("monitor", "--as-of", FLAT_WIND_UNTIL, "--no-flow", "--json").json()
    assert {k: summary[k] for k in ("action", "reason", "drift", "performance", "source")} == {
        k: plain[k] for k in ("action", "reason", "drift", "performance", "source")
    }
    assert "retrain" not in summary  # reported, not acted on
    past = (dt.date.fromisoformat(FLAT_WIND_UNTIL) + dt.timedelta(days=30)).isoformat()
    done = cli("monitor", "--as-of", past, "--no-flow", "--json")
    assert done.exit_code == 7, done.stdout + done.stderr
    assert json.loads(done.stdout)["action"] == "cannot_evaluate"
