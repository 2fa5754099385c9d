"""Performance estimated before labels arrive: confidence-based performance estimation (CBPE).

With calibrated probabilities p, a row predicted positive is a true positive with probability p
and a false positive with probability 1 - p: summed over the window, the expected confusion
matrix and so the expected accuracy. The expected ROC AUC counts each row once as a positive
with weight p and once as a negative with weight 1 - p. The champion's probabilities are first
recalibrated (isotonic) on its own holdout when it holds enough rows of both classes and the
champion was not fitted on them (a refit on its whole window is scored in-sample there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_CALIBRATION_ROWS = 100  # per class, for the isotonic recalibration


@dataclass(frozen=True)
class Estimate:
    """Expected performance of a window from its probabilities alone."""

    n_rows: int
    accuracy: float
    roc_auc: float
    tp: float
    fp: float
    fn: float
    tn: float
    calibrated: bool  # probabilities recalibrated on the champion's holdout

    def to_dict(self) -> dict[str, Any]:
        def num(value: float) -> float | None:
            return round(value, 6) if math.isfinite(value) else None

        return {
            "n_rows": self.n_rows,
            "accuracy": num(self.accuracy),
            "roc_auc": num(self.roc_auc),
            "confusion": {k: num(getattr(self, k)) for k in ("tp", "fp", "fn", "tn")},
            "calibrated": self.calibrated,
        }


@dataclass(frozen=True)
class Calibrator:
    """Isotonic map from the champion's probabilities to observed frequencies on its holdout."""

    model: Any

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(self.model.predict(np.asarray(p, dtype=float))), 0.0, 1.0)


def fit_calibrator(p: np.ndarray, y: np.ndarray) -> Calibrator | None:
    """An isotonic calibrator from holdout (probability, label) pairs; None when too few."""
    from sklearn.isotonic import IsotonicRegression

    y = np.asarray(y, dtype=int)
    if min((y == 1).sum(), (y == 0).sum()) < MIN_CALIBRATION_ROWS:
        return None
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    model.fit(np.asarray(p, dtype=float), y)
    return Calibrator(model)


def holdout_calibrator(p: np.ndarray, y: np.ndarray, in_fit: bool) -> Calibrator | None:
    """The isotonic calibrator of a champion's holdout, or None when the champion was fitted on
    those rows too (a gate winner refitted on its whole window): its predictions there are
    in-sample, sharper than on rows it has not seen, and a map learnt from them makes every
    estimate optimistic. The model's own calibration, chosen on out-of-fold predictions, stands."""
    return None if in_fit else fit_calibrator(p, y)


def expected_confusion(
    p: np.ndarray, threshold: float, predicted: np.ndarray | None = None
) -> tuple[float, float, float, float]:
    """Expected (tp, fp, fn, tn) of the predictions `p >= threshold` (or `predicted`, the
    champion's own, when `p` is recalibrated)."""
    p = np.asarray(p, dtype=float)
    positive = p >= threshold if predicted is None else np.asarray(predicted, dtype=bool)
    tp, fp = float(p[positive].sum()), float((1 - p[positive]).sum())
    fn, tn = float(p[~positive].sum()), float((1 - p[~positive]).sum())
    return tp, fp, fn, tn


def expected_roc_auc(p: np.ndarray) -> float:
    """ROC AUC expected from calibrated probabilities (NaN for fewer than two rows)."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(p, dtype=float)
    if len(p) < 2 or np.all(p == p[0]):
        return math.nan
    y = np.r_[np.ones(len(p)), np.zeros(len(p))]
    return float(roc_auc_score(y, np.r_[p, p], sample_weight=np.r_[p, 1 - p]))


def estimate_performance(
    p: np.ndarray, threshold: float, calibrator: Calibrator | None = None
) -> Estimate:
    """The window's expected confusion matrix, accuracy and ROC AUC.

    The predictions judged are the champion's own (`p >= threshold`); their probability of
    being right comes from the recalibrated scale when a calibrator is given.
    """
    p = np.asarray(p, dtype=float)
    q = calibrator(p) if calibrator is not None else p
    tp, fp, fn, tn = expected_confusion(q, threshold, predicted=p >= threshold)
    n = len(q)
    accuracy = (tp + tn) / n if n else math.nan
    return Estimate(n, accuracy, expected_roc_auc(q), tp, fp, fn, tn, calibrator is not None)


@dataclass(frozen=True)
class EstimationError:
    """How close the estimates came to the realised values, step by step."""

    metric: str
    n_steps: int
    share_within: float  # share of steps with |estimate - realised| <= tolerance
    mean_abs_error: float
    tolerance: float
    # share of steps whose estimate lies inside the realised value's own confidence interval
    # (sampling error of the realised metric on the window's labelled rows); NaN: none given
    share_in_interval: float = math.nan
    mean_interval_width: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        def num(value: float) -> float | None:
            return round(value, 4) if math.isfinite(value) else None

        return {
            "metric": self.metric,
            "n_steps": self.n_steps,
            "share_within": num(self.share_within),
            "mean_abs_error": num(self.mean_abs_error),
            "tolerance": self.tolerance,
            "share_in_interval": num(self.share_in_interval),
            "mean_interval_width": num(self.mean_interval_width),
        }


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _number(value: float | None) -> float:
    return float(value) if value is not None else math.nan


def estimation_error(
    estimated: Sequence[float | None],
    realised: Sequence[float | None],
    metric: str = "roc_auc",
    tolerance: float = 0.03,
    intervals: Sequence[tuple[float | None, float | None]] | None = None,
) -> EstimationError:
    """Compare estimates with realised values where both are known (NaN/None: skipped), and
    with the realised values' (low, high) `intervals` where those are known too."""
    bounds = intervals if intervals is not None else [(None, None)] * len(estimated)
    rows = np.array(
        [
            [_number(e), _number(r), _number(lo), _number(hi)]
            for e, r, (lo, hi) in zip(estimated, realised, bounds, strict=True)
            if _known(e) and _known(r)
        ]
    ).reshape(-1, 4)
    if not len(rows):
        return EstimationError(metric, 0, math.nan, math.nan, tolerance)
    errors = np.abs(rows[:, 0] - rows[:, 1])
    within = float(np.mean(errors <= tolerance + 1e-12))
    spans = rows[np.isfinite(rows[:, 2]) & np.isfinite(rows[:, 3])]
    est, low, high = spans[:, 0], spans[:, 2], spans[:, 3]
    inside = float(np.mean((low <= est) & (est <= high))) if len(spans) else math.nan
    width = float(np.mean(high - low)) if len(spans) else math.nan
    return EstimationError(
        metric, len(rows), within, float(errors.mean()), tolerance, inside, width
    )
