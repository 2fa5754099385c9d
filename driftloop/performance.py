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
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        return math.nan, math.nan, math.nan
    auc, v01, v10 = _midrank_components(y, np.asarray(p, dtype=float))
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
    return (value, *_percentile_interval(values, rounds, confidence))


def _midrank_components(y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """ROC AUC and DeLong's structural components (per positive, per negative)."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    tx, ty = stats.rankdata(pos), stats.rankdata(neg)
    tz = stats.rankdata(np.concatenate([pos, neg]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    return auc, (tz[:m] - tx) / n, 1.0 - (tz[m:] - ty) / m


def paired_delong(
    y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    """ROC AUC of `p_a` minus that of `p_b` on the same rows, and its DeLong interval (the
    two AUCs' covariance counted); NaN with fewer than two rows of either class."""
    y = np.asarray(y, dtype=int)
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return math.nan, math.nan, math.nan
    auc_a, v01_a, v10_a = _midrank_components(y, np.asarray(p_a, dtype=float))
    auc_b, v01_b, v10_b = _midrank_components(y, np.asarray(p_b, dtype=float))
    s01, s10 = np.cov(np.vstack([v01_a, v01_b])), np.cov(np.vstack([v10_a, v10_b]))
    var = (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / len(v01_a)
    var += (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / len(v10_a)
    diff, se = auc_a - auc_b, math.sqrt(max(float(var), 0.0))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return diff, diff - z * se, diff + z * se


def paired_bootstrap(
    y: np.ndarray,
    metric_a: Callable[[np.ndarray, np.ndarray], float],
    p_a: np.ndarray,
    metric_b: Callable[[np.ndarray, np.ndarray], float],
    p_b: np.ndarray,
    confidence: float,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> tuple[float, float, float]:
    """metric_a(p_a) minus metric_b(p_b) on the same rows, and its percentile bootstrap
    interval (the same rows resampled for both, seeded)."""
    value = metric_a(y, p_a) - metric_b(y, p_b)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(rounds, len(y)))
    values = np.array([metric_a(y[i], p_a[i]) - metric_b(y[i], p_b[i]) for i in draws])
    return (value, *_percentile_interval(values, rounds, confidence))


def paired_interval(
    metric: str,
    y: np.ndarray,
    a: tuple[np.ndarray, float],
    b: tuple[np.ndarray, float],
    confidence: float,
    seed: int = 0,
) -> tuple[float, float, float, str]:
    """How much better model a is than model b on the same rows (each as its probabilities
    and decision threshold), with its interval and method: DeLong's for ROC AUC, a paired
    bootstrap for the others (a lower-is-better metric is turned so that positive is better)."""
    if metric == "roc_auc":
        return (*paired_delong(y, a[0], b[0], confidence), "delong")
    gain, low, high = paired_bootstrap(
        y,
        metric_function(metric, a[1]),
        a[0],
        metric_function(metric, b[1]),
        b[0],
        confidence,
        seed=seed,
    )
    if metric in LOWER_IS_BETTER:
        gain, low, high = -gain, -high, -low
    return gain, low, high, "bootstrap"


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


def _percentile_interval(values: np.ndarray, rounds: int, confidence: float) -> tuple[float, float]:
    """The percentile interval of bootstrap draws (NaN when fewer than half were finite)."""
    values = values[np.isfinite(values)]
    if len(values) < rounds // 2:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)
