"""driftloop.drift.decide_retrain: the pure decision, as a table (no Evidently needed)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from driftloop.config import MonitorParams
from driftloop.drift import (
    ColumnDrift,
    DriftSummary,
    PerformanceCheck,
    RetrainDecision,
    decide_retrain,
    judge_performance,
)

FEATURES = ["precipitation", "temp_max", "temp_min", "wind"]
POLICY = MonitorParams(
    drift_share=0.5, max_metric_drop=0.10, min_labelled_rows=14, cooldown_days=14
)
TODAY = dt.date(2014, 6, 30)
NAN = float("nan")


def summary(drifted: list[str], prediction_drifted: bool = False) -> DriftSummary:
    columns = tuple(
        ColumnDrift(c, "ks", 0.01 if c in drifted else 0.5, 0.05, c in drifted) for c in FEATURES
    )
    prediction = ColumnDrift("prediction", "ks", 0.01, 0.05, prediction_drifted)
    return DriftSummary(columns, len(drifted) / len(FEATURES), 400, 28, 400, 28, prediction)


CALM = summary(["wind"])
HALF = summary(["temp_max", "temp_min"])
DRIFTED = summary(["temp_max", "temp_min", "wind"], prediction_drifted=True)


def perf(
    current: float | None,
    reference: float = 0.80,
    n: int = 28,
    metric: str = "roc_auc",
    pending: int = 0,
) -> PerformanceCheck:
    """The primary metric alone; `current=None`: no label has arrived."""
    now = {} if current is None else {metric: current}
    return PerformanceCheck(metric, {metric: reference}, now, n, pending)


HOLDOUT = {"roc_auc": 0.80, "brier": 0.18, "log_loss": 0.52}


def one_class(brier: float, log_loss: float = 0.60, n: int = 28) -> PerformanceCheck:
    """All labelled window rows in one class: ROC AUC is undefined there, brier and log loss not."""
    window = {"roc_auc": NAN, "brier": brier, "log_loss": log_loss}
    return PerformanceCheck("roc_auc", HOLDOUT, window, n, 12)


DECISIONS = [
    # id, drift, performance, last_retrain, cannot_evaluate_reason, action, words in the reason
    (
        "reason-given",
        DRIFTED,
        None,
        None,
        "column 'wind' is\nmissing",
        "cannot_evaluate",
        ["drift not judged: column 'wind' is missing", "no performance check"],
    ),
    (
        "nothing-to-judge",
        None,
        perf(NAN),
        None,
        None,
        "cannot_evaluate",
        ["drift not judged: no drift summary", "performance not judged", "roc_auc undefined"],
    ),
    (
        "no-drift-too-few-labels",
        None,
        perf(0.5, n=5),
        None,
        "column 'wind' is missing",
        "cannot_evaluate",
        ["column 'wind' is missing", "5 labelled rows < 14"],
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
        "labels-pending",
        CALM,
        perf(0.78, pending=12),
        None,
        None,
        "no_action",
        ["roc_auc 0.800 -> 0.780", "28 labelled rows, 12 labels pending"],
    ),
    (
        "none-arrived-some-pending",
        CALM,
        perf(None, n=0, pending=1),
        None,
        None,
        "no_action",
        ["labels not arrived yet (1 label pending)"],
    ),
    (
        "drift-retrain-mentions-pending",
        DRIFTED,
        perf(0.79, pending=12),
        None,
        None,
        "retrain",
        ["drift:", "12 labels pending"],
    ),
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
    # The primary metric undefined: another metric defined on both sides is judged instead.
    (
        "one-class-judged-on-brier",
        CALM,
        one_class(brier=0.35),
        None,
        None,
        "retrain",
        [
            "performance: roc_auc undefined on the window, judged on brier instead",
            "brier 0.180 -> 0.350 (drop +0.170 > 0.100",
            "12 labels pending",
        ],
    ),
    (
        "one-class-brier-fine",
        CALM,
        one_class(brier=0.20),
        None,
        None,
        "no_action",
        ["judged on brier instead", "brier 0.180 -> 0.200 (drop +0.020 <= 0.100"],
    ),
    (
        "one-class-brier-nan-log-loss",
        CALM,
        one_class(brier=NAN, log_loss=0.90),
        None,
        None,
        "retrain",
        ["judged on log_loss instead", "log_loss 0.520 -> 0.900"],
    ),
    (
        "no-holdout-primary",
        CALM,
        PerformanceCheck("roc_auc", {"brier": 0.18}, {"roc_auc": 0.7, "brier": 0.19}, 28),
        None,
        None,
        "no_action",
        ["roc_auc undefined on the holdout, judged on brier instead"],
    ),
    (
        "no-metric-drift-decides",
        DRIFTED,
        perf(NAN),
        None,
        None,
        "retrain",
        ["drift:", "performance not judged: roc_auc undefined on the window"],
    ),
    (
        "no-metric-calm",
        CALM,
        perf(0.7, reference=NAN),
        None,
        None,
        "no_action",
        ["0.25 < 0.50", "roc_auc undefined on the holdout", "brier undefined on the holdout"],
    ),
    # Drift not judged: the metric alone decides.
    (
        "drift-error-metric-drop",
        None,
        perf(0.60),
        None,
        "column 'wind' is missing",
        "retrain",
        ["performance: roc_auc 0.800 -> 0.600", "drift not judged: column 'wind' is missing"],
    ),
    (
        "drift-error-metric-fine",
        DRIFTED,
        perf(0.78),
        None,
        "column 'wind' is missing",
        "no_action",
        ["drift not judged: column 'wind' is missing", "roc_auc 0.800 -> 0.780"],
    ),
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
        assert word in decision.reason, decision.reason


def test_no_cooldown_when_cooldown_days_is_zero() -> None:
    policy = POLICY.model_copy(update={"cooldown_days": 0})
    decision = decide_retrain(DRIFTED, None, policy, last_retrain=TODAY, today=TODAY)
    assert decision.action == "retrain"


def test_judge_performance_names_the_metric_and_why() -> None:
    judged = judge_performance(one_class(brier=0.35), POLICY)
    assert judged is not None
    assert (judged.metric, judged.reference, judged.current) == ("brier", 0.18, 0.35)
    assert judged.drop == pytest.approx(0.17)
    assert judged.instead_of == "roc_auc undefined on the window"
    assert judge_performance(perf(0.7), POLICY).instead_of is None  # type: ignore[union-attr]
    assert judge_performance(one_class(brier=0.35, n=13), POLICY) is None  # too few labels


def test_performance_check_to_dict_is_strict_json() -> None:
    as_dict = json.loads(json.dumps(one_class(brier=0.35).to_dict(), allow_nan=False))
    assert as_dict["current"]["roc_auc"] == "nan"
    assert (as_dict["n_labelled"], as_dict["n_pending"], as_dict["metric"]) == (28, 12, "roc_auc")


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
            None,
            None,
            "window fails",
            "retrain",
            ["unseen season", "drift not judged: window fails"],
            id="with-drift-error",
        ),
        pytest.param(
            perf(NAN),
            None,
            None,
            "retrain",
            ["unseen season", "performance not judged"],
            id="with-undefined-metric",
        ),
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
        assert word in decision.reason, decision.reason
