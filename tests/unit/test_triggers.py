"""The measurements behind the retrain signals, each against a case with a known answer and a
negative control: the realised performance test, CBPE, calibrated drift thresholds, importance
weighting and the domain classifier (real scikit-learn, scipy and Evidently stat tests)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from driftloop.config import MonitorParams
from driftloop.domain import calibrate_domain, domain_auc
from driftloop.drift import compute_drift
from driftloop.estimation import (
    estimate_performance,
    estimation_error,
    expected_confusion,
    expected_roc_auc,
    fit_calibrator,
    holdout_calibrator,
)
from driftloop.importance import input_groups, permutation_importance
from driftloop.performance import (
    bootstrap_interval,
    delong_interval,
    paired_delong,
    paired_interval,
    realised_performance,
)
from driftloop.policy import drift_signal
from driftloop.sources import load_seattle
from driftloop.thresholds import calibrate, chunk_starts, stat_direction, window_rows


def scores(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of a model whose ROC AUC grows with `separation`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = separation * (y - 0.5) + rng.normal(size=n)
    return y, 1 / (1 + np.exp(-logit))


def judged(y: np.ndarray, p: np.ndarray, reference: float = 0.80, min_rows: int = 14) -> str:
    test = realised_performance(
        y,
        p,
        {"roc_auc": reference, "brier": 0.18, "log_loss": 0.5},
        "roc_auc",
        threshold=0.5,
        tolerance=0.02,
        confidence=0.95,
        min_rows=min_rows,
    )
    return test.verdict


# --- realised performance ------------------------------------------------------------------------


def test_delong_matches_the_roc_auc_and_its_interval_covers_the_bootstrap() -> None:
    y, p = scores(600, 1.7, seed=1)
    auc, low, high = delong_interval(y, p, 0.95)
    assert auc == pytest.approx(roc_auc_score(y, p))

    def metric(a: np.ndarray, b: np.ndarray) -> float:
        return float(roc_auc_score(a, b)) if len(np.unique(a)) == 2 else math.nan

    _, b_low, b_high = bootstrap_interval(y, p, metric, 0.95, seed=3)
    assert low < auc < high
    assert low == pytest.approx(b_low, abs=0.02) and high == pytest.approx(b_high, abs=0.02)


def test_paired_delong_is_the_difference_of_the_two_roc_aucs() -> None:
    y, p = scores(2000, 1.7, seed=5)
    rng = np.random.default_rng(6)
    worse = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + rng.normal(scale=2.0, size=len(p)))))
    gain, low, high = paired_delong(y, p, worse, 0.95)
    assert gain == pytest.approx(roc_auc_score(y, p) - roc_auc_score(y, worse))
    assert 0 < low < gain < high  # on 2000 rows the noisier model is significantly worse
    assert paired_delong(y, p, p, 0.95) == (0.0, 0.0, 0.0)


def test_paired_difference_on_a_few_rows_is_not_significant() -> None:
    """Two models of the same quality on 30 rows: the interval of their difference covers 0,
    though their ROC AUCs differ by chance."""
    y, p = scores(30, 1.7, seed=7)
    rng = np.random.default_rng(8)
    other = np.clip(p + rng.normal(scale=0.1, size=len(p)), 0.01, 0.99)
    gain, low, high = paired_delong(y, p, other, 0.95)
    assert gain != 0 and low < 0 < high


def test_paired_interval_turns_a_lower_is_better_metric() -> None:
    y, p = scores(400, 1.7, seed=9)
    flat = np.full(len(p), 0.5)
    gain, low, high, method = paired_interval("log_loss", y, (p, 0.5), (flat, 0.5), 0.95, seed=1)
    assert method == "bootstrap"
    assert 0 < low < gain < high  # the informative model's log loss is lower: positive gain
    auc_gain, *_, auc_method = paired_interval("roc_auc", y, (p, 0.5), (flat, 0.5), 0.95)
    assert auc_method == "delong" and auc_gain == pytest.approx(roc_auc_score(y, p) - 0.5)


def test_a_real_drop_on_many_rows_is_significant() -> None:
    y, p = scores(2000, 0.8, seed=2)  # ROC AUC about 0.71 against a holdout of 0.80
    assert roc_auc_score(y, p) < 0.75
    assert judged(y, p) == "drop"


def test_noise_on_a_few_rows_is_not_a_drop() -> None:
    y, p = scores(2000, 1.7, seed=4)  # the same model as the holdout's (about 0.80)
    # Among 25-row windows of the unchanged model, some score far below 0.80 by chance alone:
    # a fixed drop would fire on them; the interval does not.
    windows = [(y[i : i + 25], p[i : i + 25]) for i in range(0, 2000, 25)]
    low_scores = [(a, b) for a, b in windows if roc_auc_score(a, b) < 0.70]
    assert low_scores, "the draw should hold some unlucky windows"
    assert all(judged(a, b) == "no_drop" for a, b in low_scores)


def test_too_few_labels_cannot_tell_and_one_class_falls_back_to_brier() -> None:
    y, p = scores(10, 0.8, seed=5)
    assert judged(y, p) == "cannot_tell"
    ones = np.ones(40, dtype=int)
    test = realised_performance(
        ones,
        np.full(40, 0.1),  # confidently wrong: brier 0.81 against 0.18
        {"roc_auc": 0.8, "brier": 0.18},
        "roc_auc",
        threshold=0.5,
        tolerance=0.02,
        confidence=0.95,
        min_rows=14,
    )
    assert (test.metric, test.method, test.verdict) == ("brier", "bootstrap", "drop")
    assert test.reason.startswith("roc_auc undefined, judged on brier")


# --- estimated performance (CBPE) ----------------------------------------------------------------


def test_cbpe_on_calibrated_probabilities_matches_the_realised_metrics() -> None:
    rng = np.random.default_rng(6)
    p = rng.beta(2, 3, size=20_000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # perfectly calibrated by construction
    estimate = estimate_performance(p, 0.5)
    assert estimate.accuracy == pytest.approx(np.mean((p >= 0.5) == y), abs=0.01)
    assert estimate.roc_auc == pytest.approx(roc_auc_score(y, p), abs=0.01)
    tp, fp, fn, tn = expected_confusion(p, 0.5)
    assert tp + fp + fn + tn == pytest.approx(p.size)
    assert tp == pytest.approx(np.sum((p >= 0.5) & (y == 1)), rel=0.05)


def test_cbpe_on_miscalibrated_probabilities_is_off_until_recalibrated() -> None:
    rng = np.random.default_rng(7)
    truth = rng.beta(2, 3, size=40_000)
    y = (rng.uniform(size=truth.size) < truth).astype(int)
    p = truth**3  # the same ranking, far too low: the negative control
    realised = roc_auc_score(y[20_000:], p[20_000:])
    assert abs(expected_roc_auc(p[20_000:]) - realised) > 0.05
    calibrator = fit_calibrator(p[:20_000], y[:20_000])  # the champion's holdout
    assert calibrator is not None
    fixed = estimate_performance(p[20_000:], 0.5, calibrator)
    assert fixed.calibrated and fixed.roc_auc == pytest.approx(realised, abs=0.01)
    positives = p[20_000:] >= 0.5
    assert fixed.tp + fixed.fp == pytest.approx(positives.sum())  # the champion's own predictions


def test_a_calibrator_learnt_in_sample_overstates_the_estimate() -> None:
    """A model refitted on its holdout scores it in-sample: an isotonic map learnt there makes
    the estimate optimistic on new rows; learnt on rows outside the fit, it is right."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(24_000, 5))
    truth = 1 / (1 + np.exp(-(X[:, 0] + 0.5 * X[:, 1] - 0.5)))  # the known answer
    y = (rng.uniform(size=truth.size) < truth).astype(int)
    fit, unseen, new = slice(0, 8_000), slice(8_000, 16_000), slice(16_000, None)
    model = HistGradientBoostingClassifier(max_iter=300, min_samples_leaf=5, random_state=0)
    model.fit(X[fit], y[fit])  # overfits: in-sample probabilities far sharper than on new rows
    p = model.predict_proba(X)[:, 1]
    realised = roc_auc_score(y[new], p[new])
    held_in = holdout_calibrator(p[fit], y[fit], in_fit=False)  # as if they were a holdout
    assert held_in is not None
    optimistic = estimate_performance(p[new], 0.5, held_in).roc_auc
    assert optimistic - realised > 0.05
    held_out = holdout_calibrator(p[unseen], y[unseen], in_fit=False)
    assert held_out is not None
    assert estimate_performance(p[new], 0.5, held_out).roc_auc == pytest.approx(realised, abs=0.01)
    assert holdout_calibrator(p[fit], y[fit], in_fit=True) is None


def test_estimation_error_counts_steps_within_the_tolerance() -> None:
    error = estimation_error([0.70, 0.80, None, 0.60], [0.72, 0.70, 0.75, math.nan])
    assert (error.n_steps, error.share_within) == (2, 0.5)
    assert error.mean_abs_error == pytest.approx(0.06)
    assert math.isnan(error.share_in_interval)
    spans = [(0.69, 0.75), (0.76, 0.80), (0.70, 0.80), (None, None)]
    error = estimation_error([0.70, 0.75, None, 0.60], [0.72, 0.78, 0.75, 0.65], intervals=spans)
    assert (error.n_steps, error.share_in_interval) == (3, 0.5)  # 0.70 inside, 0.75 not
    assert error.mean_interval_width == pytest.approx(0.05)


# --- drift thresholds calibrated on the reference ------------------------------------------------


def iid_frame(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": (rng.normal(size=n) + shift) * scale,
            "c": rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2]),
        }
    )


SPECS = [("x", "numerical", "wasserstein"), ("c", "categorical", "jensenshannon")]


def test_no_drift_alerts_at_the_stated_rate_and_a_shift_alerts() -> None:
    reference = iid_frame(4000, seed=8)
    calibration = calibrate(reference, SPECS, 100, quantile=0.95, n_chunks=100, min_rows=14)
    x_threshold = calibration.thresholds()["x"]
    # 300 fresh windows of the same process: about 5 % alert on x (binomial spread allowed).
    from driftloop.thresholds import statistic

    fresh = iid_frame(30_000, seed=9)
    rates = []
    for i in range(300):
        window = fresh["x"].to_numpy()[i * 100 : (i + 1) * 100]
        rates.append(statistic(reference["x"].to_numpy(), window, "numerical", "wasserstein"))
    alert_rate = np.mean(np.array(rates) >= x_threshold)
    assert 0.01 <= alert_rate <= 0.10, alert_rate
    shifted = iid_frame(100, seed=10, shift=0.8)["x"].to_numpy()
    assert statistic(reference["x"].to_numpy(), shifted, "numerical", "wasserstein") > x_threshold


def test_calibrated_thresholds_follow_the_scale_and_drive_evidently() -> None:
    reference = iid_frame(2000, seed=11)
    kilo = reference.assign(x=reference["x"] * 1000)  # another unit: same normed thresholds
    one = calibrate(reference, SPECS, 100, quantile=0.99, n_chunks=50, min_rows=14)
    other = calibrate(kilo, SPECS, 100, quantile=0.99, n_chunks=50, min_rows=14)
    assert one.thresholds()["x"] == pytest.approx(other.thresholds()["x"], rel=1e-6)
    monitor = MonitorParams(method="wasserstein", min_rows=14)
    same = compute_drift(
        reference, iid_frame(100, seed=12), ["x"], ["c"], monitor, thresholds=one.thresholds()
    )
    assert same.drifted_columns == ()
    moved = iid_frame(100, seed=13, shift=1.0)
    drifted = compute_drift(reference, moved, ["x"], ["c"], monitor, thresholds=one.thresholds())
    assert drifted.drifted_columns == ("x",)
    assert {c.column: c.threshold for c in drifted.columns} == pytest.approx(one.thresholds())


def test_a_p_value_test_alerts_below_and_chunks_follow_the_window() -> None:
    assert stat_direction("ks", "numerical") == "below"
    assert stat_direction("wasserstein", "numerical") == "above"
    assert stat_direction("jensenshannon", "categorical") == "above"
    seattle = load_seattle()
    assert window_rows(seattle["date"], 28, 14) == 28  # a row a day
    assert chunk_starts(100, 28, 5) == [0, 18, 36, 54, 72]
    assert chunk_starts(20, 28, 5) == []


def test_seattle_calibrated_ks_thresholds_flag_a_summer_against_winters() -> None:
    seattle = load_seattle()
    winters = seattle[seattle["date"].dt.month.isin([12, 1, 2])].reset_index(drop=True)
    specs = [("temp_max", "numerical", "ks")]
    calibration = calibrate(winters, specs, 28, quantile=0.99, n_chunks=100, min_rows=14)
    threshold = calibration.thresholds()["temp_max"]
    assert threshold < 0.05  # weather comes in spells: stricter than the textbook p-value
    july = seattle[(seattle["date"] >= "2014-07-01") & (seattle["date"] <= "2014-07-28")]
    monitor = MonitorParams(min_rows=14)
    summary = compute_drift(
        winters, july, ["temp_max"], [], monitor, thresholds={"temp_max": threshold}
    )
    assert summary.drifted_columns == ("temp_max",)
    february = seattle[(seattle["date"] >= "2015-02-01") & (seattle["date"] <= "2015-02-28")]
    calm = compute_drift(
        winters, february, ["temp_max"], [], monitor, thresholds={"temp_max": threshold}
    )
    assert calm.drifted_columns == ()


# --- importance weighting ------------------------------------------------------------------------


def test_drift_in_an_ignored_feature_does_not_trigger_in_a_used_one_does() -> None:
    rng = np.random.default_rng(14)
    n = 3000
    X = pd.DataFrame({"used": rng.normal(size=n), "ignored": rng.normal(size=n)})
    y = (X["used"] + 0.5 * rng.normal(size=n) > 0).astype(int).to_numpy()
    model = HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(X[:2000], y[:2000])
    importance = permutation_importance(model, X[2000:], y[2000:], ["used", "ignored"])
    assert importance is not None
    weights = importance.weights()
    assert importance.by_column["used"] > 0.2 and weights["ignored"] < 0.02
    monitor = MonitorParams(method="wasserstein", min_rows=14)
    reference = X[:2000]
    calibration = calibrate(
        reference,
        [("used", "numerical", "wasserstein"), ("ignored", "numerical", "wasserstein")],
        300,
        quantile=0.99,
        n_chunks=50,
        min_rows=14,
    )
    for moved, expected in (("ignored", "quiet"), ("used", "fired")):
        current = X[2000:2300].assign(**{moved: X[moved][2000:2300] + 1.5})
        summary = compute_drift(
            reference,
            current,
            ["used", "ignored"],
            [],
            monitor,
            thresholds=calibration.thresholds(),
        )
        assert summary.drifted_columns == (moved,)
        assert drift_signal(summary, 0.5, weights).state == expected
        assert drift_signal(summary, 0.5, None).state == "fired"  # unweighted: both alike


def test_a_column_groups_its_lags_and_rolling_means() -> None:
    inputs = ["wind", "wind_lag1", "wind_mean7D", "windchill", "temp", "day_of_year_sin"]
    groups = input_groups(inputs, ["wind", "temp", "pressure"])
    assert groups == {
        "wind": ["wind", "wind_lag1", "wind_mean7D"],
        "temp": ["temp"],
        "pressure": [],
    }


# --- the domain classifier -----------------------------------------------------------------------


def test_domain_classifier_is_chance_on_one_distribution_and_high_on_a_shift() -> None:
    reference = iid_frame(3000, seed=15)
    same = iid_frame(500, seed=16)
    assert domain_auc(reference, same, ["x"], ["c"], max_rows=4000) == pytest.approx(0.5, abs=0.07)
    rng = np.random.default_rng(17)
    moved = same.assign(c=rng.choice(["a", "b", "c"], size=500, p=[0.1, 0.3, 0.6]))
    assert domain_auc(reference, moved, ["x"], ["c"], max_rows=4000) > 0.7


def test_domain_classifier_sees_a_joint_change_no_single_column_shows() -> None:
    rng = np.random.default_rng(18)
    a = rng.normal(size=3000)
    reference = pd.DataFrame({"a": a, "b": a + 0.3 * rng.normal(size=3000)})
    a_now = rng.normal(size=500)
    current = pd.DataFrame({"a": a_now, "b": -a_now + 0.3 * rng.normal(size=500)})
    null = calibrate_domain(
        reference, ["a", "b"], [], 500, quantile=0.99, n_chunks=5, max_rows=4000
    )
    assert null is not None and null.threshold < 0.7
    auc = domain_auc(reference, current, ["a", "b"], [], max_rows=4000)
    assert auc > 0.9 > null.threshold  # the marginals are unchanged; their relation flipped
