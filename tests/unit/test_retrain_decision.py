"""driftloop.policy: the pure retrain decision from signals, and each signal from its measurement.

Tables of signals in, a decision and the words of its reason out (no Evidently, no model).
"""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from driftloop.config import MonitorParams
from driftloop.domain import DomainDrift
from driftloop.drift import ColumnDrift, DriftSummary, PerformanceCheck
from driftloop.estimation import Estimate
from driftloop.performance import PerformanceTest
from driftloop.policy import (
    RetrainDecision,
    Signal,
    decide_retrain,
    drift_signal,
    estimated_signal,
    multivariate_signal,
    performance_signal,
    season_signal,
)

FEATURES = ["precipitation", "temp_max", "temp_min", "wind"]
POLICY = MonitorParams(
    drift_share=0.5, max_metric_drop=0.10, min_labelled_rows=14, cooldown_days=14
)
TODAY = dt.date(2014, 6, 30)
NAN = float("nan")


def fired(name: str, detail: str = "x") -> Signal:
    return Signal(name, "fired", detail)  # type: ignore[arg-type]


def quiet(name: str, detail: str = "calm") -> Signal:
    return Signal(name, "quiet", detail)  # type: ignore[arg-type]


def unknown(name: str, detail: str = "too few rows") -> Signal:
    return Signal(name, "cannot_tell", detail)  # type: ignore[arg-type]


ALL_QUIET = [quiet("performance"), quiet("drift"), quiet("multivariate"), quiet("season")]

DECISIONS = [
    # id, signals, last_retrain, action, words in the reason
    ("all-quiet", ALL_QUIET, None, "no_action", ["performance quiet: calm", "drift quiet"]),
    (
        "drift-fired",
        [quiet("performance"), fired("drift", "share 0.75"), quiet("multivariate")],
        None,
        "retrain",
        ["signals fired: drift;", "drift fired: share 0.75", "performance quiet"],
    ),
    (
        "two-fired",
        [fired("performance", "auc down"), fired("multivariate", "auc 0.9")],
        None,
        "retrain",
        ["signals fired: performance, multivariate"],
    ),
    (
        "cooldown",
        [fired("drift", "share 0.75"), quiet("performance")],
        TODAY - dt.timedelta(days=5),
        "no_action",
        ["cooldown: last retrain 2014-06-25 is 5 days ago (< 14)", "would retrain for"],
    ),
    (
        "cooldown-over",
        [fired("drift")],
        TODAY - dt.timedelta(days=14),
        "retrain",
        ["signals fired: drift"],
    ),
    (
        "nothing-judged",
        [unknown("performance", "3 labelled rows"), unknown("drift", "column 'wind' missing")],
        None,
        "cannot_evaluate",
        ["nothing could be judged", "3 labelled rows", "column 'wind' missing"],
    ),
    (
        "a-seen-season-judges-nothing",
        [unknown("performance"), unknown("drift"), quiet("season")],
        None,
        "cannot_evaluate",
        ["nothing could be judged"],
    ),
    (
        "one-judged-is-enough",
        [unknown("performance"), quiet("drift")],
        None,
        "no_action",
        ["performance cannot tell: too few rows", "drift quiet"],
    ),
    ("unseen-season", [unknown("drift"), fired("season", "3 rows")], None, "retrain", ["season"]),
    (
        "not-a-trigger",  # "estimated" is not in the default triggers: context only
        [fired("estimated", "auc 0.6"), quiet("drift")],
        None,
        "no_action",
        ["drift quiet", "(not a trigger) estimated: auc 0.6"],
    ),
    ("no-signals", [], None, "cannot_evaluate", ["no signal"]),
]


@pytest.mark.parametrize(
    ("signals", "last_retrain", "action", "words"),
    [pytest.param(*row[1:], id=row[0]) for row in DECISIONS],
)
def test_decide_retrain(
    signals: list[Signal], last_retrain: dt.date | None, action: str, words: list[str]
) -> None:
    decision = decide_retrain(signals, POLICY, last_retrain=last_retrain, today=TODAY)
    assert isinstance(decision, RetrainDecision)
    assert decision.action == action, decision.reason
    assert decision.retrain is (action == "retrain")
    assert "\n" not in decision.reason and decision.reason
    for word in words:
        assert word in decision.reason, decision.reason


def test_no_cooldown_when_cooldown_days_is_zero() -> None:
    policy = POLICY.model_copy(update={"cooldown_days": 0})
    decision = decide_retrain([fired("drift")], policy, last_retrain=TODAY, today=TODAY)
    assert decision.action == "retrain"


def test_a_signal_left_out_of_the_triggers_is_context_not_a_retrain() -> None:
    policy = POLICY.model_copy(update={"triggers": ["performance"]})
    signals = [quiet("performance"), fired("drift", "share 1.0")]
    decision = decide_retrain(signals, policy, last_retrain=None, today=TODAY)
    assert decision.action == "no_action"
    assert "(not a trigger) drift: share 1.0" in decision.reason
    with_drift = POLICY.model_copy(update={"triggers": ["performance", "drift"]})
    assert decide_retrain(signals, with_drift, last_retrain=None, today=TODAY).retrain


# --- each signal from its measurement ------------------------------------------------------------


def summary(drifted: list[str], prediction_drifted: bool = False) -> DriftSummary:
    columns = tuple(
        ColumnDrift(c, "ks", 0.01 if c in drifted else 0.5, 0.05, c in drifted) for c in FEATURES
    )
    prediction = ColumnDrift("proba", "ks", 0.01, 0.05, prediction_drifted)
    return DriftSummary(columns, len(drifted) / len(FEATURES), 400, 28, 400, 28, prediction)


WEIGHTS = {"precipitation": 0.8, "temp_max": 0.2, "temp_min": 0.0, "wind": 0.0}


def test_drift_in_features_the_model_ignores_weighs_nothing() -> None:
    ignored = drift_signal(summary(["temp_min", "wind"]), 0.5, WEIGHTS)
    assert ignored.state == "quiet", ignored  # half the columns, none the model uses
    assert "importance-weighted drifted share 0.00 < 0.50" in ignored.detail
    used = drift_signal(summary(["precipitation"]), 0.5, WEIGHTS)
    assert used.state == "fired", used  # one column of four, but 80 % of what the model uses
    assert "precipitation (weight 0.80)" in used.detail
    unweighted = drift_signal(summary(["temp_min", "wind"]), 0.5, None)
    assert unweighted.state == "fired" and "drifted share 0.50 >= 0.50" in unweighted.detail


def test_drift_signal_cannot_tell_without_a_summary_and_notes_the_prediction() -> None:
    signal = drift_signal(None, 0.5, WEIGHTS, "column 'wind' is\nmissing")
    assert (signal.state, signal.detail) == ("cannot_tell", "column 'wind' is missing")
    noted = drift_signal(summary([], prediction_drifted=True), 0.5, WEIGHTS)
    assert noted.state == "quiet" and "prediction 'proba' drifted" in noted.detail


def perf_test(verdict: str) -> PerformanceTest:
    return PerformanceTest(
        "roc_auc",
        0.8,
        0.6,
        0.5,
        0.7,
        100,
        "delong",
        verdict,
        f"{verdict} reason",  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("verdict", "state"), [("drop", "fired"), ("no_drop", "quiet"), ("cannot_tell", "cannot_tell")]
)
def test_performance_signal_follows_the_test(verdict: str, state: str) -> None:
    signal = performance_signal(perf_test(verdict))
    assert (signal.name, signal.state, signal.detail) == ("performance", state, f"{verdict} reason")
    assert performance_signal(None).state == "cannot_tell"


def estimate(roc_auc: float, accuracy: float = 0.7, n: int = 100) -> Estimate:
    return Estimate(n, accuracy, roc_auc, 0, 0, 0, 0, False)


def test_estimated_signal_compares_with_the_holdout_minus_tolerance() -> None:
    holdout = {"roc_auc": 0.80, "accuracy": 0.75}
    assert estimated_signal(estimate(0.65), holdout, 0.1, 14).state == "fired"
    assert estimated_signal(estimate(0.75), holdout, 0.1, 14).state == "quiet"
    by_accuracy = estimated_signal(estimate(NAN, accuracy=0.5), holdout, 0.1, 14)
    assert by_accuracy.state == "fired" and "estimated accuracy 0.500" in by_accuracy.detail
    assert estimated_signal(estimate(0.5, n=10), holdout, 0.1, 14).state == "cannot_tell"


def test_multivariate_and_season_signals() -> None:
    drifted = DomainDrift(0.93, 0.9, ("a", "b"), 1000, 100)
    calm = DomainDrift(0.6, 0.9, ("a", "b"), 1000, 100)
    assert multivariate_signal(drifted).state == "fired"
    assert multivariate_signal(calm).state == "quiet"
    assert multivariate_signal(None, "too few rows").detail == "too few rows"
    assert multivariate_signal(DomainDrift(math.nan, 0.9, (), 1, 1)).state == "cannot_tell"
    assert season_signal("3 rows from Jul 16").state == "fired"
    assert season_signal(None).state == "quiet"


def test_performance_check_to_dict_is_strict_json() -> None:
    window = {"roc_auc": NAN, "brier": 0.35, "log_loss": 0.6}
    check = PerformanceCheck("roc_auc", {"roc_auc": 0.8}, window, 28, 12)
    as_dict = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    assert as_dict["current"]["roc_auc"] == "nan"
    assert (as_dict["n_labelled"], as_dict["n_pending"], as_dict["metric"]) == (28, 12, "roc_auc")
