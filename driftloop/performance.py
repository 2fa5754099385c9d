"""Realised performance with a proper test: the window's metric against the champion's holdout.

The champion's metric on the window's labelled rows gets a confidence interval (DeLong's for
ROC AUC, a seeded bootstrap for the others). A drop is significant only when the whole interval
lies beyond the holdout value minus a tolerance; with too few labelled rows, or a metric
undefined on the window, the answer is "cannot tell yet", never a trigger.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

LOWER_IS_BETTER = frozenset({"log_loss", "brier"})
FALLBACK_METRICS = ("brier", "log_loss")  # judged when the primary metric is undefined
BOOTSTRAP_ROUNDS = 400

Verdict = Literal["drop", "no_drop", "cannot_tell"]


@dataclass(frozen=True)
class PerformanceTest:
    """The metric judged on the window, its interval, and the verdict against the holdout."""

    metric: str
    reference: float
    current: float
    low: float
    high: float
    n_labelled: int
    method: str  # "delong" or "bootstrap"; "" when not judged
    verdict: Verdict
    reason: str
    tolerance: float = 0.0
    confidence: float = 0.95

    @property
    def drop(self) -> float:
        """How much worse the window is than the holdout (positive = worse)."""
        if self.metric in LOWER_IS_BETTER:
            return self.current - self.reference
        return self.reference - self.current

    def to_dict(self) -> dict[str, Any]:
        def num(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "metric": self.metric,
            "reference": num(self.reference),
            "current": num(self.current),
            "interval": [num(self.low), num(self.high)],
            "confidence": self.confidence,
            "tolerance": self.tolerance,
            "method": self.method,
            "n_labelled": self.n_labelled,
            "verdict": self.verdict,
            "reason": self.reason,
        }


def delong_interval(y: np.ndarray, p: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """ROC AUC and its DeLong interval (fast midrank form, Sun & Xu 2014); NaN: one class."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return math.nan, math.nan, math.nan
    tx, ty = stats.rankdata(pos), stats.rankdata(neg)
    tz = stats.rankdata(np.concatenate([pos, neg]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    v01 = (tz[:m] - tx) / n  # each positive's share of negatives ranked below it
    v10 = 1.0 - (tz[m:] - ty) / m  # each negative's share of positives ranked above it
    se = math.sqrt(np.var(v01, ddof=1) / m + np.var(v10, ddof=1) / n)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def bootstrap_interval(
    y: np.ndarray,
    p: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    confidence: float,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The metric and its percentile bootstrap interval (rows resampled, seeded)."""
    value = metric(y, p)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(rounds, len(y)))
    values = np.array([metric(y[idx], p[idx]) for idx in draws])
    values = values[np.isfinite(values)]
    if len(values) < rounds // 2:
        return value, math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return value, float(low), float(high)


def metric_function(name: str, threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    """A metric of (labels, probabilities): NaN where it is undefined (one class for ROC AUC)."""
    from driftloop.training import score

    return lambda y, p: score(y, p, threshold)[name]


def realised_performance(
    y: np.ndarray,
    p: np.ndarray,
    reference: Mapping[str, float],
    primary: str,
    *,
    threshold: float,
    tolerance: float,
    confidence: float,
    min_rows: int,
    seed: int = 0,
) -> PerformanceTest:
    """Is the window's metric significantly worse than the holdout's, beyond `tolerance`?

    The primary metric when it is defined on the holdout and on the window, else the first
    fallback (brier, then log loss) that is; "cannot_tell" with fewer than `min_rows` labels.
    """
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    n = len(y)
    if n < min_rows:
        why = f"{n} labelled rows < {min_rows}: cannot tell yet"
        return _untested(primary, reference, n, why, tolerance, confidence)
    for name in dict.fromkeys([primary, *FALLBACK_METRICS]):
        ref = float(reference.get(name, math.nan))
        if not math.isfinite(ref):
            continue
        if name == "roc_auc":
            current, low, high = delong_interval(y, p, confidence)
            method = "delong"
        else:
            fn = metric_function(name, threshold)
            current, low, high = bootstrap_interval(y, p, fn, confidence, seed=seed)
            method = "bootstrap"
        if math.isfinite(current) and math.isfinite(low) and math.isfinite(high):
            instead = "" if name == primary else f"{primary} undefined, judged on {name}: "
            return _judged(name, ref, current, low, high, n, method, tolerance, confidence, instead)
    why = f"{primary} and its fallbacks undefined on the holdout or the window ({n} rows)"
    return _untested(primary, reference, n, why, tolerance, confidence)


def _untested(
    metric: str,
    reference: Mapping[str, float],
    n: int,
    reason: str,
    tolerance: float,
    confidence: float,
) -> PerformanceTest:
    ref = float(reference.get(metric, math.nan))
    nan = math.nan
    return PerformanceTest(
        metric, ref, nan, nan, nan, n, "", "cannot_tell", reason, tolerance, confidence
    )


def _judged(
    metric: str,
    reference: float,
    current: float,
    low: float,
    high: float,
    n: int,
    method: str,
    tolerance: float,
    confidence: float,
    prefix: str,
) -> PerformanceTest:
    if metric in LOWER_IS_BETTER:
        limit, dropped, side = reference + tolerance, low > reference + tolerance, "above"
    else:
        limit, dropped, side = reference - tolerance, high < reference - tolerance, "below"
    interval = f"[{low:.3f}, {high:.3f}]"
    where = "wholly" if dropped else "not wholly"
    reason = (
        f"{prefix}{metric} {current:.3f} {interval} ({method}, {confidence:.0%}, {n} rows) "
        f"{where} {side} holdout {reference:.3f} -/+ {tolerance:.3f} = {limit:.3f}"
    )
    verdict: Verdict = "drop" if dropped else "no_drop"
    return PerformanceTest(
        metric, reference, current, low, high, n, method, verdict, reason, tolerance, confidence
    )
