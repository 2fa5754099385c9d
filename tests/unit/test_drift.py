"""driftloop.drift: real Evidently on Seattle weather windows, and the retrain decision table."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import FeatureDrift, MonitorParams
from driftloop.drift import (
    CannotEvaluate,
    ColumnDrift,
    DriftSummary,
    PerformanceCheck,
    RetrainDecision,
    _parse_snapshot,
    compute_drift,
    decide_retrain,
)
from driftloop.errors import ConfigError, DriftloopError

FEATURES = ["precipitation", "temp_max", "temp_min", "wind"]
KS = MonitorParams(method="ks", threshold=0.05, min_rows=14)


@pytest.fixture(scope="module")
def evidently() -> None:
    """Pay Evidently's import (several seconds) once per module, not per test."""
    import evidently  # noqa: F401


@pytest.fixture(scope="module")
def seattle() -> pd.DataFrame:
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["date"] = pd.to_datetime(frame["date"])
    # A stand-in model output: "rain probability" falling with temperature; it drifts by season.
    frame["prediction"] = 1.0 / (1.0 + np.exp((frame["temp_max"] - 12.0) / 4.0))
    return frame


def window(frame: pd.DataFrame, months: list[int], years: list[int]) -> pd.DataFrame:
    dates = frame["date"].dt
    return frame[dates.month.isin(months) & dates.year.isin(years)].reset_index(drop=True)


SUMMER, WINTER, SPRING = [6, 7, 8], [12, 1, 2], [3, 4, 5]
ALL_YEARS = [2012, 2013, 2014, 2015]


@pytest.fixture(scope="module")
def season_report(
    evidently: None, seattle: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DriftSummary, Path]:
    """Summer vs winter, with the prediction and both report files: computed once, read by many."""
    out = tmp_path_factory.mktemp("drift")
    summary = compute_drift(
        window(seattle, SUMMER, ALL_YEARS),
        window(seattle, WINTER, ALL_YEARS),
        FEATURES,
        KS,
        prediction_column="prediction",
        html_path=out / "drift.html",
        json_path=out / "sub" / "drift.json",
    )
    return summary, out


# --- compute_drift on real data -----------------------------------------------------------------


def test_summer_vs_winter_drifts_on_temperatures(season_report: tuple[DriftSummary, Path]) -> None:
    summary, _ = season_report
    by_column = {c.column: c for c in summary.columns}
    assert [c.column for c in summary.columns] == FEATURES
    assert by_column["temp_max"].drifted and by_column["temp_min"].drifted
    assert by_column["temp_max"].method == "ks"
    assert by_column["temp_max"].threshold == 0.05
    assert by_column["temp_max"].score < 1e-10  # a p-value: tiny means drift
    assert summary.drifted_share >= 0.5
    assert set(summary.drifted_columns) >= {"temp_max", "temp_min"}
    assert summary.n_reference == 368 and summary.n_current == 361


def test_prediction_drift_is_reported_but_not_counted(
    season_report: tuple[DriftSummary, Path],
) -> None:
    summary, _ = season_report
    assert summary.prediction is not None
    assert summary.prediction.column == "prediction"
    assert summary.prediction.drifted
    assert "prediction" not in summary.drifted_columns
    assert summary.drifted_share == len(summary.drifted_columns) / len(FEATURES)


def test_reports_are_written_and_summary_is_json_safe(
    season_report: tuple[DriftSummary, Path],
) -> None:
    summary, out = season_report
    html = (out / "drift.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "temp_max" in html
    saved = json.loads((out / "sub" / "drift.json").read_text())
    assert {m["config"]["column"] for m in saved["metrics"]} == {*FEATURES, "prediction"}
    as_dict = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert as_dict["drifted_columns"] == list(summary.drifted_columns)
    assert as_dict["prediction"]["drifted"] is True


def test_without_html_the_same_verdicts_come_without_figures(
    season_report: tuple[DriftSummary, Path], seattle: pd.DataFrame, tmp_path: Path
) -> None:
    """No HTML wanted: Evidently's calculation without plotly, the very same scores and tests."""
    with_html, out = season_report
    summary = compute_drift(
        window(seattle, SUMMER, ALL_YEARS),
        window(seattle, WINTER, ALL_YEARS),
        FEATURES,
        KS,
        prediction_column="prediction",
        json_path=tmp_path / "drift.json",
    )
    assert summary == with_html
    plain = json.loads((tmp_path / "drift.json").read_text())
    rendered = json.loads((out / "sub" / "drift.json").read_text())
    assert {m["config"]["type"].split(":")[-1] for m in plain["metrics"]} == {"ValueDriftScore"}
    assert {m["config"]["type"].split(":")[-1] for m in rendered["metrics"]} == {"ValueDrift"}
    assert [m["value"] for m in plain["metrics"]] == [m["value"] for m in rendered["metrics"]]
    assert [t["status"] for t in plain["tests"]] == [t["status"] for t in rendered["tests"]]


def test_same_season_in_other_years_mostly_does_not_drift(
    evidently: None, seattle: pd.DataFrame
) -> None:
    summary = compute_drift(
        window(seattle, SPRING, [2012]), window(seattle, SPRING, [2013]), FEATURES, KS
    )
    assert summary.drifted_share < KS.drift_share
    assert "temp_max" not in summary.drifted_columns


def test_interleaved_days_do_not_drift(evidently: None, seattle: pd.DataFrame) -> None:
    year = window(seattle, list(range(1, 13)), [2014])
    even = year["date"].dt.day % 2 == 0
    summary = compute_drift(year[even], year[~even], FEATURES, KS, prediction_column="prediction")
    assert summary.drifted_columns == ()
    assert summary.drifted_share == 0.0
    assert summary.prediction is not None and not summary.prediction.drifted


def test_distance_method_uses_evidently_direction_and_default_threshold(
    evidently: None, seattle: pd.DataFrame
) -> None:
    monitor = KS.model_copy(update={"per_feature": {"wind": FeatureDrift(method="wasserstein")}})
    summer, winter = window(seattle, SUMMER, ALL_YEARS), window(seattle, WINTER, ALL_YEARS)
    drifted = {c.column: c for c in compute_drift(summer, winter, FEATURES, monitor).columns}
    assert drifted["wind"].method == "wasserstein"
    assert drifted["wind"].threshold == 0.1  # Evidently's default for the method, not 0.05
    assert drifted["wind"].drifted and drifted["wind"].score >= 0.1  # a distance: large = drift
    assert drifted["temp_max"].method == "ks"

    year = window(seattle, list(range(1, 13)), [2014])
    even = year["date"].dt.day % 2 == 0
    calm = {c.column: c for c in compute_drift(year[even], year[~even], FEATURES, monitor).columns}
    assert not calm["wind"].drifted and calm["wind"].score < 0.1


# --- fail closed ----------------------------------------------------------------------------


def _with(frame: pd.DataFrame, **columns: object) -> pd.DataFrame:
    return frame.assign(**columns)


@pytest.mark.parametrize(
    ("make_reference", "make_current", "message"),
    [
        pytest.param(
            lambda f: f,
            lambda f: f.head(5),
            "current has 5 rows, fewer than min_rows=14",
            id="too-few-rows",
        ),
        pytest.param(
            lambda f: f,
            lambda f: f.drop(columns=["wind"]),
            "column 'wind' is missing from current",
            id="missing-column",
        ),
        pytest.param(
            lambda f: _with(f, temp_min=np.nan),
            lambda f: f,
            "column 'temp_min' is entirely NaN in reference",
            id="all-nan",
        ),
        pytest.param(
            lambda f: f,
            lambda f: _with(f, wind=np.r_[[1.0] * 10, [np.nan] * (len(f) - 10)]),
            "column 'wind' has 10 non-missing values in current",
            id="mostly-nan",
        ),
        pytest.param(
            lambda f: f,
            lambda f: _with(f, temp_max=21.5),
            "column 'temp_max' is constant in current",
            id="constant-current",
        ),
        pytest.param(
            lambda f: _with(f, wind=3.0),
            lambda f: _with(f, wind=3.0),
            "column 'wind' is constant in both",
            id="constant-both",
        ),
        pytest.param(
            lambda f: f,
            lambda f: f.drop(columns=["prediction"]),
            "column 'prediction' is missing from current",
            id="missing-prediction",
        ),
    ],
)
def test_cannot_evaluate(seattle: pd.DataFrame, make_reference, make_current, message: str) -> None:
    spring = window(seattle, SPRING, [2013])
    with pytest.raises(CannotEvaluate, match=message) as caught:
        compute_drift(
            make_reference(spring),
            make_current(spring),
            FEATURES,
            KS,
            prediction_column="prediction",
        )
    assert isinstance(caught.value, DriftloopError)
    assert "\n" not in str(caught.value)


def test_dry_month_is_constant_precipitation(evidently: None, seattle: pd.DataFrame) -> None:
    """July 2013 had no rain at all: that window cannot be judged, it is not "no drift"."""
    with pytest.raises(CannotEvaluate, match="'precipitation' is constant in current"):
        compute_drift(window(seattle, [7], [2012]), window(seattle, [7], [2013]), FEATURES, KS)


def test_nan_score_cannot_be_evaluated(season_report: tuple[DriftSummary, Path]) -> None:
    _, out = season_report
    raw = json.loads((out / "sub" / "drift.json").read_text())
    assert {c.column for c in _parse_snapshot(raw)} == {*FEATURES, "prediction"}
    raw["metrics"][1]["value"] = float("nan")
    with pytest.raises(CannotEvaluate, match=r"column 'temp_max': drift score \(ks\) is NaN"):
        _parse_snapshot(raw)


@pytest.mark.parametrize(
    ("monitor", "key"),
    [
        (MonitorParams(method="no_such_test"), "monitor.method"),
        (
            MonitorParams(per_feature={"weather": FeatureDrift(method="ks")}),
            "monitor.per_feature.weather.method",
        ),
    ],
)
def test_unknown_or_misfit_method_is_a_config_error(
    evidently: None, seattle: pd.DataFrame, monitor: MonitorParams, key: str
) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        compute_drift(seattle[:700], seattle[700:], ["temp_max", "weather"], monitor)


# --- decide_retrain -------------------------------------------------------------------------

POLICY = MonitorParams(
    drift_share=0.5, max_metric_drop=0.10, min_labelled_rows=14, cooldown_days=14
)
TODAY = dt.date(2014, 6, 30)


def summary(drifted: list[str], prediction_drifted: bool = False) -> DriftSummary:
    columns = tuple(
        ColumnDrift(c, "ks", 0.01 if c in drifted else 0.5, 0.05, c in drifted) for c in FEATURES
    )
    prediction = ColumnDrift("prediction", "ks", 0.01, 0.05, prediction_drifted)
    return DriftSummary(columns, len(drifted) / len(FEATURES), 400, 28, prediction)


CALM = summary(["wind"])
HALF = summary(["temp_max", "temp_min"])
DRIFTED = summary(["temp_max", "temp_min", "wind"], prediction_drifted=True)


def perf(current: float | None, reference: float = 0.80, n: int = 28, metric: str = "roc_auc"):
    return PerformanceCheck(metric=metric, reference=reference, current=current, n_labelled=n)


NAN = float("nan")
DECISIONS = [
    # id, drift, performance, last_retrain, cannot_evaluate_reason, action, words in the reason
    (
        "reason-given",
        DRIFTED,
        None,
        None,
        "column 'wind' is\nmissing",
        "cannot_evaluate",
        ["column 'wind' is missing"],
    ),
    ("no-drift-summary", None, perf(0.5), None, None, "cannot_evaluate", ["no drift summary"]),
    ("nan-reference", CALM, perf(0.7, reference=NAN), None, None, "cannot_evaluate", ["NaN"]),
    (
        "nan-current-beats-drift",
        DRIFTED,
        perf(NAN),
        None,
        None,
        "cannot_evaluate",
        ["roc_auc is NaN"],
    ),
    ("calm", CALM, None, None, None, "no_action", ["0.25 < 0.50", "wind"]),
    (
        "drift",
        DRIFTED,
        None,
        None,
        None,
        "retrain",
        ["0.75 >= 0.50", "temp_max, temp_min, wind", "prediction 'prediction' drifted"],
    ),
    ("drift-share-boundary", HALF, None, None, None, "retrain", ["0.50 >= 0.50"]),
    (
        "metric-drop",
        CALM,
        perf(0.65),
        None,
        None,
        "retrain",
        ["performance", "roc_auc 0.800 -> 0.650", "drop +0.150 > 0.100"],
    ),
    ("metric-drop-boundary", CALM, perf(0.70), None, None, "no_action", ["<= 0.100"]),
    ("small-drop", CALM, perf(0.75), None, None, "no_action", ["0.25 < 0.50", "drop +0.050"]),
    ("metric-improves", CALM, perf(0.95), None, None, "no_action", ["drop -0.150"]),
    ("too-few-labels", CALM, perf(0.30, n=13), None, None, "no_action", ["13 labelled rows < 14"]),
    ("labels-not-arrived", CALM, perf(None, n=0), None, None, "no_action", ["labels not arrived"]),
    (
        "log-loss-worse",
        CALM,
        perf(0.55, 0.40, metric="log_loss"),
        None,
        None,
        "retrain",
        ["log_loss 0.400 -> 0.550"],
    ),
    (
        "log-loss-better",
        CALM,
        perf(0.25, 0.40, metric="log_loss"),
        None,
        None,
        "no_action",
        ["drop -0.150"],
    ),
    ("brier-worse", CALM, perf(0.35, 0.20, metric="brier"), None, None, "retrain", ["brier"]),
    ("drift-and-drop", DRIFTED, perf(0.60), None, None, "retrain", ["drift:", "performance:"]),
    (
        "cooldown",
        DRIFTED,
        None,
        TODAY - dt.timedelta(days=5),
        None,
        "no_action",
        ["cooldown", "2014-06-25", "5 days ago", "would retrain for drift"],
    ),
    (
        "cooldown-on-metric-drop",
        CALM,
        perf(0.5),
        TODAY - dt.timedelta(days=13),
        None,
        "no_action",
        ["cooldown", "performance"],
    ),
    ("cooldown-over", DRIFTED, None, TODAY - dt.timedelta(days=14), None, "retrain", ["drift"]),
    (
        "cooldown-not-needed",
        CALM,
        None,
        TODAY - dt.timedelta(days=1),
        None,
        "no_action",
        ["0.25 < 0.50"],
    ),
]


@pytest.mark.parametrize(
    ("drift", "performance", "last_retrain", "ce_reason", "action", "words"),
    [pytest.param(*row[1:], id=row[0]) for row in DECISIONS],
)
def test_decide_retrain(
    drift: DriftSummary | None,
    performance: PerformanceCheck | None,
    last_retrain: dt.date | None,
    ce_reason: str | None,
    action: str,
    words: list[str],
) -> None:
    decision = decide_retrain(
        drift,
        performance,
        POLICY,
        last_retrain=last_retrain,
        today=TODAY,
        cannot_evaluate_reason=ce_reason,
    )
    assert isinstance(decision, RetrainDecision)
    assert decision.action == action, decision.reason
    assert "\n" not in decision.reason and decision.reason
    for word in words:
        assert word in decision.reason


def test_no_cooldown_when_cooldown_days_is_zero() -> None:
    policy = POLICY.model_copy(update={"cooldown_days": 0})
    decision = decide_retrain(DRIFTED, None, policy, last_retrain=TODAY, today=TODAY)
    assert decision.action == "retrain"


def test_column_drift_to_dict_keeps_infinite_scores_json_safe() -> None:
    column = ColumnDrift("wind", "kl_div", math.inf, 0.1, True)
    assert json.loads(json.dumps(column.to_dict(), allow_nan=False))["score"] == "inf"


# --- the unseen-season trigger -------------------------------------------------------------------

UNSEEN = "the champion's training data has 3 rows from Jul 16 to Sep 12"


@pytest.mark.parametrize(
    ("performance", "last_retrain", "ce_reason", "action", "words"),
    [
        pytest.param(None, None, None, "retrain", ["unseen season: the champion's"], id="alone"),
        pytest.param(
            perf(0.6), None, None, "retrain", ["unseen season", "performance:"], id="and-drop"
        ),
        pytest.param(
            None,
            TODAY - dt.timedelta(days=5),
            None,
            "no_action",
            ["cooldown", "would retrain for unseen season"],
            id="in-cooldown",
        ),
        pytest.param(
            None, None, "window fails", "cannot_evaluate", ["window fails"], id="cannot-first"
        ),
        pytest.param(perf(NAN), None, None, "cannot_evaluate", ["NaN"], id="nan-first"),
    ],
)
def test_an_unseen_season_is_a_trigger_without_a_drift_summary(
    performance: PerformanceCheck | None,
    last_retrain: dt.date | None,
    ce_reason: str | None,
    action: str,
    words: list[str],
) -> None:
    decision = decide_retrain(
        None,
        performance,
        POLICY,
        last_retrain=last_retrain,
        today=TODAY,
        cannot_evaluate_reason=ce_reason,
        unseen_season=UNSEEN,
    )
    assert decision.action == action, decision.reason
    for word in words:
        assert word in decision.reason
