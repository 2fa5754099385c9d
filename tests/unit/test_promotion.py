"""The promotion policy as a table: candidate, champion, policy -> promote?, reason."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.config import PromoteParams, load_params
from driftloop.features import Dataset
from driftloop.promotion import Decision, Paired, decide_promotion
from driftloop.stages import HoldoutScores, paired_gain
from driftloop.training import Evaluation
from tests.helpers import REPO_ROOT

NAN = math.nan


def ev(value: float, metric: str = "roc_auc", n: int = 90, **segments: float) -> Evaluation:
    """An evaluation with one overall metric value and per-season values of the same metric.

    Segments are keyed `column/value` and carry their row count `n`, as `training.evaluate`
    writes them.
    """
    per_segment = {f"season/{s}": {metric: v, "n": float(n)} for s, v in segments.items()}
    return Evaluation({metric: value}, per_segment, 4 * n)


AUC = PromoteParams(primary_metric="roc_auc", min_delta=0.01, max_segment_drop=0.05, floor=0.6)
# Binary fractions, so "exactly min_delta" is exact in floating point.
EXACT = PromoteParams(primary_metric="roc_auc", min_delta=0.125, max_segment_drop=0.05, floor=0.5)
LOGLOSS = PromoteParams(
    primary_metric="log_loss", min_delta=0.01, max_segment_drop=0.05, floor=0.65
)

CASES = [
    # first model: only the absolute floor applies
    ("first above floor", ev(0.70), None, AUC, True, "clears floor"),
    ("first exactly at floor", ev(0.60), None, AUC, True, "clears floor"),
    ("first below floor", ev(0.59), None, AUC, False, "below floor"),
    ("first NaN", ev(NAN), None, AUC, False, "missing or NaN"),
    ("first metric missing", Evaluation({"f1": 0.9}), None, AUC, False, "missing or NaN"),
    # challenger against champion: gain vs min_delta
    ("gain above min_delta", ev(0.75), ev(0.70), AUC, True, "beats champion"),
    ("gain exactly min_delta", ev(0.875), ev(0.75), EXACT, True, "by +0.1250"),
    ("gain just below min_delta", ev(0.875), ev(0.7500001), EXACT, False, "< min_delta"),
    ("gain below min_delta", ev(0.705), ev(0.70), AUC, False, "< min_delta"),
    ("equal", ev(0.70), ev(0.70), AUC, False, "< min_delta"),
    ("worse", ev(0.65), ev(0.70), AUC, False, "gain -0.0500"),
    # segments: no season may fall more than max_segment_drop behind
    (
        "segment drop beyond limit",
        ev(0.80, winter=0.60, summer=0.90),
        ev(0.70, winter=0.70, summer=0.70),
        AUC,
        False,
        "season/winter 0.7000->0.6000",
    ),
    (
        "segment drop within limit",
        ev(0.80, winter=0.66, summer=0.90),
        ev(0.70, winter=0.70, summer=0.70),
        AUC,
        True,
        "no segment drop",
    ),
    (
        "segment below min_segment_rows is not judged",
        ev(0.80, n=AUC.min_segment_rows - 1, winter=0.40, summer=0.90),
        ev(0.70, n=AUC.min_segment_rows - 1, winter=0.70, summer=0.70),
        AUC,
        True,
        "no segment drop",
    ),
    (
        "segment of exactly min_segment_rows is judged",
        ev(0.80, n=AUC.min_segment_rows, winter=0.40, summer=0.90),
        ev(0.70, n=AUC.min_segment_rows, winter=0.70, summer=0.70),
        AUC,
        False,
        "season/winter 0.7000->0.4000",
    ),
    (
        "segment NaN is not a drop",
        ev(0.80, winter=NAN, summer=0.90),
        ev(0.70, winter=0.70, summer=0.70),
        AUC,
        True,
        "no segment drop",
    ),
    # fail closed on NaN
    ("candidate NaN vs champion", ev(NAN), ev(0.70), AUC, False, "candidate roc_auc is missing"),
    ("champion NaN", ev(0.90), ev(NAN), AUC, False, "champion roc_auc is missing or NaN"),
    # lower is better
    ("log_loss first below floor value", ev(0.60, "log_loss"), None, LOGLOSS, True, "clears"),
    ("log_loss first above floor value", ev(0.70, "log_loss"), None, LOGLOSS, False, "below floor"),
    ("log_loss lower wins", ev(0.55, "log_loss"), ev(0.60, "log_loss"), LOGLOSS, True, "+0.0500"),
    (
        "log_loss higher loses",
        ev(0.62, "log_loss"),
        ev(0.60, "log_loss"),
        LOGLOSS,
        False,
        "-0.0200",
    ),
    (
        "log_loss tiny gain",
        ev(0.595, "log_loss"),
        ev(0.60, "log_loss"),
        LOGLOSS,
        False,
        "min_delta",
    ),
    (
        "log_loss segment rises beyond limit",
        ev(0.50, "log_loss", winter=0.70),
        ev(0.60, "log_loss", winter=0.60),
        LOGLOSS,
        False,
        "season/winter 0.6000->0.7000",
    ),
    ("log_loss NaN", ev(NAN, "log_loss"), ev(0.60, "log_loss"), LOGLOSS, False, "missing or NaN"),
]


@pytest.mark.parametrize(
    ("candidate", "champion", "policy", "promote", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decide_promotion(
    candidate: Evaluation,
    champion: Evaluation | None,
    policy: PromoteParams,
    promote: bool,
    reason: str,
) -> None:
    decision = decide_promotion(candidate, champion, policy)
    assert isinstance(decision, Decision)
    assert decision.promote is promote
    assert reason in decision.reason
    assert "\n" not in decision.reason


def test_decision_is_pure() -> None:
    candidate, champion = ev(0.8, winter=0.7), ev(0.7, winter=0.7)
    before = (candidate.to_dict(), champion.to_dict())
    first = decide_promotion(candidate, champion, AUC)
    assert decide_promotion(candidate, champion, AUC) == first
    assert (candidate.to_dict(), champion.to_dict()) == before


# -- rule not_worse: the paired test on the same rows decides -------------------------------------

NOT_WORSE = PromoteParams(
    primary_metric="roc_auc",
    rule="not_worse",
    min_delta=0.01,
    max_segment_drop=0.05,
    floor=0.6,
    min_segment_rows=10,
)


def paired(gain: float, low: float, high: float, n: int = 30, **segments: Paired) -> Paired:
    return Paired(
        gain, low, high, n, "delong", 0.95, {f"season/{k}": v for k, v in segments.items()}
    )


NOT_WORSE_CASES = [
    # a point loss inside the noise: the newer model wins
    ("loss within noise", ev(0.70), ev(0.745), paired(-0.045, -0.20, 0.11), True, "not signif"),
    ("equal", ev(0.70), ev(0.70), paired(0.0, 0.0, 0.0), True, "not significantly worse"),
    ("gain", ev(0.80), ev(0.70), paired(0.10, 0.02, 0.18), True, "not significantly worse"),
    ("significantly worse", ev(0.28), ev(0.86), paired(-0.58, -0.97, -0.20), False, "signif"),
    (
        "segment significantly worse beyond max_segment_drop",
        ev(0.75),
        ev(0.74),
        paired(0.01, -0.05, 0.07, winter=paired(-0.3, -0.5, -0.1, n=12)),
        False,
        "season/winter gain -0.3000",
    ),
    (
        "segment significantly worse within max_segment_drop",
        ev(0.75),
        ev(0.74),
        paired(0.01, -0.05, 0.07, winter=paired(-0.04, -0.045, -0.03, n=12)),
        True,
        "no segment significantly worse",
    ),
    (
        "segment below min_segment_rows is not judged",
        ev(0.75),
        ev(0.74),
        paired(0.01, -0.05, 0.07, winter=paired(-0.3, -0.5, -0.1, n=9)),
        True,
        "no segment significantly worse",
    ),
    # no usable paired test: min_delta decides (fails closed as rule better does)
    ("no paired test, equal", ev(0.70), ev(0.70), None, False, "< min_delta"),
    ("no paired test, gain", ev(0.75), ev(0.70), None, True, "beats champion"),
    ("NaN interval", ev(0.70), ev(0.70), paired(NAN, NAN, NAN), False, "< min_delta"),
    ("candidate NaN", ev(NAN), ev(0.70), paired(0.0, -0.1, 0.1), False, "missing or NaN"),
    ("first model: floor", ev(0.59), None, None, False, "below floor"),
]


@pytest.mark.parametrize(
    ("candidate", "champion", "pair", "promote", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in NOT_WORSE_CASES],
)
def test_not_worse_rule(
    candidate: Evaluation,
    champion: Evaluation | None,
    pair: Paired | None,
    promote: bool,
    reason: str,
) -> None:
    decision = decide_promotion(candidate, champion, NOT_WORSE, pair)
    assert decision.promote is promote
    assert reason in decision.reason
    assert "\n" not in decision.reason


def test_rule_better_ignores_the_paired_test() -> None:
    """Under rule better a loss inside the noise still refuses: min_delta decides."""
    decision = decide_promotion(ev(0.70), ev(0.745), AUC, paired(-0.045, -0.20, 0.11))
    assert not decision.promote and "< min_delta" in decision.reason


def holdout(times: pd.DatetimeIndex, y: np.ndarray, proba: np.ndarray) -> HoldoutScores:
    """One model's scores on holdout rows (season segments: winter, then summer)."""
    n = len(y)
    season = np.where(np.arange(n) < n // 2, "winter", "summer")
    data = Dataset(
        pd.DataFrame({"x": np.zeros(n)}),
        pd.Series(y),
        pd.Series(times),
        pd.DataFrame({"season": season}),
    )
    return HoldoutScores(Evaluation({}), data, proba, 0.5)


def test_paired_gain_pairs_the_same_rows_overall_and_per_segment() -> None:
    from sklearn.metrics import roc_auc_score

    params = load_params(REPO_ROOT / "params.yaml")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    good, noisy = y + rng.normal(size=60), y + rng.normal(scale=3.0, size=60)
    times = pd.date_range("2015-01-01", periods=60, freq="D")
    pair = paired_gain(params, holdout(times, y, good), holdout(times, y, noisy))
    assert pair is not None and pair.method == "delong" and pair.n_rows == 60
    assert pair.gain == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, noisy))
    assert pair.low < pair.gain < pair.high
    assert set(pair.segments) == {"season/winter", "season/summer"}
    assert all(s.n_rows == 30 for s in pair.segments.values())

    other_rows = holdout(times + pd.Timedelta(days=1), y, noisy)
    assert paired_gain(params, holdout(times, y, good), other_rows) is None


def test_status_says_when_the_challenger_is_the_champion() -> None:
    from driftloop.report import status_text

    def ref(version: str) -> dict[str, Any]:
        return {
            "version": version,
            "metrics": {"holdout_roc_auc": 0.81},
            "primary_metric": "roc_auc",
            "data_md5": "abc.dir",
            "run_id": "r1",
        }

    payload = {"model": "m", "tracking_uri": "sqlite:///x", "last_decision": None}
    same = status_text({**payload, "champion": ref("4"), "challenger": ref("4")})
    assert "challenger: v4, the champion (no candidate waits)" in same
    waiting = status_text({**payload, "champion": ref("4"), "challenger": ref("5")})
    assert "challenger: v5 holdout roc_auc=0.8100" in waiting
