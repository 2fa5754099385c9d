"""Online monitoring: the monitoring loop judges the champion on what the service served.

Seattle (lags and rolling means: the service computes them from its history): a champion trained
on 2012-2014 serves January 2015 day by day; monitoring takes the served inputs and probabilities
as the current data (labels: the next served day), and the monitor flow retrains from that traffic.
Loans (explicit labels): performance is judged on exactly the predictions whose feedback arrived.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from driftloop import monitoring, registry
from driftloop.config import Params, Settings, load_context
from driftloop.monitoring import MonitorResult
from driftloop.serving.app import _validate, create_app, predict_batch
from driftloop.sources import load_seattle
from tests.helpers import Project, cli
from tests.integration.conftest_loop import AS_OF, TRAIN_UNTIL, retrain_claims, with_champion
from tests.integration.test_event_tables import trained_loans

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SEATTLE_INPUTS = ["precipitation", "temp_max", "temp_min", "wind"]


@pytest.fixture(scope="module")
def january(module_project: Project) -> tuple[Project, list[dict[str, Any]]]:
    """The champion (2012-2014) served January 2015, one request a day; then January ingested."""
    project = with_champion(module_project, until=TRAIN_UNTIL, eager=True)
    days = load_seattle().set_index("date").loc["2015-01-01":AS_OF]
    params, settings = load_context()
    answers = []
    with TestClient(create_app(params, settings)) as client:
        for day, row in days.iterrows():
            body = {"date": day.isoformat(), **{c: float(row[c]) for c in SEATTLE_INPUTS}}
            answer = client.post("/predict", json={"records": [body]})
            assert answer.status_code == 200, answer.text
            answers += answer.json()["predictions"]
    assert cli("ingest", "--until", AS_OF).exit_code == 0  # the same days land as a batch too
    return project, answers


@pytest.fixture(scope="module")
def online(january: tuple[Project, list[dict[str, Any]]]) -> MonitorResult:
    params, settings = load_context()
    return monitoring.monitor(params, settings, log=False)


def test_monitoring_takes_the_served_traffic_as_current_data(
    january: tuple[Project, list[dict[str, Any]]], online: MonitorResult
) -> None:
    _, answers = january
    assert online.extra["source"] == "prediction_log"
    assert (online.as_of, online.window_start) == (AS_OF, "2015-01-04")  # 28 days
    assert online.out_dir is not None
    current = pd.read_parquet(online.out_dir / "predictions.parquet")
    served = {a["prediction_id"]: a["probability"] for a in answers}
    assert len(current) == 28 and set(current["prediction_id"]) <= served.keys()
    assert np.allclose(current["proba"], current["prediction_id"].map(served))  # not re-scored
    assert online.drift is not None and online.drift.n_current == 28


def test_served_probabilities_equal_the_batch_feature_step_with_history(
    january: tuple[Project, list[dict[str, Any]]], online: MonitorResult
) -> None:
    """The service's lags and rolling means (from its history) match scoring the accepted data."""
    params, settings = load_context()
    champion = registry.get_alias(registry.connect(settings), params.train.model_name, "champion")
    assert champion is not None
    after, until = pd.Timestamp("2015-01-03 23:59:59.999999999"), pd.Timestamp("2015-02-01")
    batch = monitoring.accepted_frame(
        params, settings, champion, registry.load_model(champion), (after, until), None
    )
    assert online.out_dir is not None
    current = pd.read_parquet(online.out_dir / "predictions.parquet")
    assert np.allclose(current["proba"].to_numpy(), batch["proba"].to_numpy())
    moved = current["proba"].to_numpy() - 0.02  # negative control: a shift is caught
    assert not np.allclose(moved, batch["proba"].to_numpy())


def test_performance_is_judged_on_the_served_rows_whose_label_arrived(
    online: MonitorResult,
) -> None:
    """A forecast's label is the next served day: every day but the last is labelled."""
    perf = online.performance
    assert perf is not None
    assert (perf.n_labelled, perf.n_pending) == (27, 1)
    assert perf.metric in perf.current


def test_the_monitor_flow_retrains_from_served_traffic(
    prefect_harness: None, january: tuple[Project, list[dict[str, Any]]], online: MonitorResult
) -> None:
    from flows.monitoring import monitor_flow

    project, _ = january
    summary = monitor_flow(retrain="subflow")
    assert summary["source"] == "prediction_log"
    assert summary["action"] == "retrain", summary["reason"]
    assert isinstance(summary["retrain"], dict) and summary["retrain"]["version"] == "2"
    assert project.versions() == ["1", "2"]
    assert len(retrain_claims(project)) == 1


def test_coalesced_requests_see_the_history_they_see_one_by_one(
    january: tuple[Project, list[dict[str, Any]]],
) -> None:
    """A batch of requests gets the lags and rolling means each gets when they come one by one,
    in arrival order (here out of date order: a later request carries earlier days)."""
    days = load_seattle().set_index("date").loc["2015-02-01":"2015-02-10"]
    rows = [
        {"date": day.isoformat(), **{c: float(r[c]) for c in SEATTLE_INPUTS}}
        for day, r in days.iterrows()
    ]
    requests = [rows[5:10], rows[0:1], rows[1:4], rows[4:5]]
    params, settings = load_context()

    def served(batches: list[list[list[dict[str, Any]]]]) -> list[float]:
        with TestClient(create_app(params, settings)) as client:  # history: the accepted data
            service = client.app.state.service  # type: ignore[attr-defined]
            champion = service.holder.current.champion
            out = []
            for batch in batches:
                answers = predict_batch(service, [_validate(r, champion.rows) for r in batch])
                out += [a["probability"] for answer in answers for a in answer]  # type: ignore[union-attr]
        return out

    one_by_one = served([[r] for r in requests])
    together = served([requests])
    assert together == pytest.approx(one_by_one, rel=1e-9)  # the same history; BLAS rounding aside
    in_date_order = served([[rows]])  # negative control: Feb 6-10 then see Feb 1-5 as history
    assert in_date_order[5:] != one_by_one[:5]


# -- explicit labels: feedback ------------------------------------------------------------------


@pytest.fixture
def loan_context(project: Project) -> Iterator[tuple[Params, Settings, pd.DataFrame]]:
    params_file, table, _ = trained_loans(project, seed=5, labelled=1000)
    params, settings = load_context(params_file=params_file)
    yield params, settings, table


def test_performance_counts_exactly_the_predictions_whose_feedback_arrived(
    loan_context: tuple[Params, Settings, pd.DataFrame],
) -> None:
    params, settings, table = loan_context
    new = table.iloc[1000:]  # applications after the training data: served only
    rows = [
        {"loan_id": r.loan_id, "applied_at": r.applied_at.isoformat(), "region": r.region}
        | {"amount": float(r.amount)}
        for r in new.itertuples()
    ]
    with TestClient(create_app(params, settings)) as client:
        answers = client.post("/predict", json={"records": rows}).json()["predictions"]
        by_pid = [
            {"prediction_id": a["prediction_id"], "label": int(y)}
            for a, y in zip(answers[:40], new["defaulted"][:40], strict=True)
        ]
        by_id = [{"id": r.loan_id, "label": int(r.defaulted)} for r in new.iloc[40:60].itertuples()]
        done = client.post("/feedback", json={"records": by_pid + by_id}).json()["feedback"]
        assert all(d["recorded"] for d in done) and len(done) == 60

    result = monitoring.monitor(params, settings, log=False)

    assert result.extra["source"] == "prediction_log"
    assert result.as_of == max(new["applied_at"]).date().isoformat()
    perf = result.performance
    assert perf is not None and (perf.n_labelled, perf.n_pending) == (60, len(new) - 60)
    assert result.out_dir is not None
    current = pd.read_parquet(result.out_dir / "predictions.parquet")
    labelled = current[current["label"].notna()].set_index("loan_id")["label"]
    truth = new.set_index("loan_id")["defaulted"]
    assert (labelled == truth[labelled.index]).all()


def test_without_served_traffic_monitoring_reads_the_accepted_data(
    loan_context: tuple[Params, Settings, pd.DataFrame],
) -> None:
    params, settings, table = loan_context
    last = table["applied_at"].iloc[999].date()  # the newest accepted application
    result = monitoring.monitor(params, settings, last, log=False)
    assert result.extra["source"] == "accepted_data", result.decision
    assert result.decision.action != "cannot_evaluate", result.decision.reason
    assert result.drift is not None and result.drift.n_current > 0
