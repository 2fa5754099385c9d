"""The retrain signals of one monitoring window, measured and turned into `policy.Signal`s.

What depends only on the champion and its reference is computed once and cached, in the
process and on disk under the state folder (keyed by project, model, version and reference):
the calibrated drift thresholds, the domain classifier's null distribution, the permutation
importance and the probability calibrator of the champion's holdout. A monitoring run then
costs its window's own measurements.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from driftloop import jsonio, policy
from driftloop.config import Params
from driftloop.domain import DomainDrift, DomainNull, calibrate_domain, domain_auc
from driftloop.drift import CannotEvaluate, DriftSummary, column_methods
from driftloop.estimation import Calibrator, Estimate, estimate_performance, holdout_calibrator
from driftloop.features import make_dataset, split_by_time
from driftloop.importance import Importance, permutation_importance
from driftloop.memo import Memo
from driftloop.performance import PerformanceTest, realised_performance
from driftloop.thresholds import Calibration, ColumnThreshold, calibrate, window_rows

PREDICTION = "proba"
MIN_WEIGHT = 0.01  # a column with less of the importance is not used by the champion

T = TypeVar("T")


@dataclass(frozen=True)
class Champion:
    """The champion as the signals need it: its cache key, model, own params and training rows
    (scored: `proba`, and `label` where known)."""

    key: tuple[str, str, str]  # project, model name, version
    model: Any
    params: Params
    training: pd.DataFrame
    state_dir: Path
    holdout_in_fit: bool = False  # fitted on its holdout too (a refit on the whole window)


@dataclass(frozen=True)
class Assessment:
    """Every signal of the window and the measurements behind them."""

    signals: tuple[policy.Signal, ...]
    performance: PerformanceTest | None = None
    estimate: Estimate | None = None
    calibration: Calibration | None = None
    importance: Importance | None = None
    domain: DomainDrift | None = None

    def to_dict(self) -> dict[str, Any]:
        def of(part: Any) -> Any:
            return None if part is None else part.to_dict()

        return {
            "signals": [s.to_dict() for s in self.signals],
            "performance_test": of(self.performance),
            "estimate": of(self.estimate),
            "calibration": of(self.calibration),
            "importance": of(self.importance),
            "domain": of(self.domain),
        }

    def metrics(self) -> dict[str, float]:
        """Numbers for the monitoring run in MLflow (finite ones only)."""
        out: dict[str, float] = {}
        if self.estimate is not None:
            out["estimated_roc_auc"] = self.estimate.roc_auc
            out["estimated_accuracy"] = self.estimate.accuracy
        if self.performance is not None:
            test = self.performance
            out.update(realised_current=test.current, realised_low=test.low)
            out["realised_high"] = test.high
        if self.domain is not None:
            out.update(domain_auc=self.domain.auc, domain_threshold=self.domain.threshold)
        if self.importance is not None:
            out.update({f"weight_{c}": w for c, w in self.importance.weights().items()})
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}


# -- champion-level measurements, cached -------------------------------------------------------

_CACHE: Memo[tuple[Any, ...], Any] = Memo()


def clear() -> None:
    """Forget the in-process cache (the disk cache stays: it is keyed by version)."""
    _CACHE.clear()


def _cached(
    champion: Champion,
    kind: str,
    parts: tuple[Any, ...],
    compute: Callable[[], T | None],
    load: Callable[[dict[str, Any]], T],
    dump: Callable[[T], dict[str, Any]],
) -> T | None:
    """A champion-level value, computed once: in the process, then on disk."""
    key = (*champion.key, kind, *parts)
    digest = hashlib.sha256(json.dumps([str(p) for p in key]).encode()).hexdigest()[:16]
    path = (
        champion.state_dir
        / "triggers"
        / f"{champion.key[1]}-v{champion.key[2]}-{kind}-{digest}.json"
    )

    def from_disk_or_compute() -> T | None:
        if path.exists():
            return load(json.loads(path.read_text()))
        value = compute()
        if value is not None:
            jsonio.write_json(path, dump(value))
        return value

    return _CACHE.get(key, from_disk_or_compute)


def _holdout(champion: Champion) -> tuple[pd.DataFrame, pd.Series]:
    """The champion's holdout rows (labelled) as model inputs and labels."""
    frame = champion.training.drop(columns=[PREDICTION, "prediction", "label"], errors="ignore")
    data = make_dataset(frame, champion.params)
    _, holdout = split_by_time(data, champion.params.train.holdout_days)
    return holdout.X, holdout.y


def importance(champion: Champion, monitored: list[str]) -> Importance | None:
    """Permutation importance of the monitored columns on the champion's holdout."""

    def compute() -> Importance | None:
        X, y = _holdout(champion)
        return permutation_importance(champion.model, X, y.to_numpy(), monitored)

    return _cached(
        champion,
        "importance",
        tuple(monitored),
        compute,
        lambda d: Importance(d["baseline"], d["by_column"], d["n_rows"], d["n_repeats"]),
        lambda v: {
            "baseline": v.baseline,
            "by_column": v.by_column,
            "n_rows": v.n_rows,
            "n_repeats": v.n_repeats,
        },
    )


def calibrator(champion: Champion, threshold_days: int) -> Calibrator | None:
    """An isotonic calibrator of the champion's probabilities on its holdout (in process); None
    for a champion fitted on its holdout too (`estimation.holdout_calibrator`)."""

    def compute() -> Calibrator | None:
        rows = champion.training
        ts = pd.to_datetime(rows[champion.params.data.timestamp_column])
        holdout = rows[(ts > ts.max() - pd.Timedelta(days=threshold_days)).to_numpy()]
        holdout = holdout[holdout["label"].notna()]
        return holdout_calibrator(
            holdout[PREDICTION].to_numpy(), holdout["label"].to_numpy(), champion.holdout_in_fit
        )

    return _CACHE.get((*champion.key, "calibrator", threshold_days), compute)


def drift_calibration(
    champion: Champion, params: Params, reference: pd.DataFrame, prediction: bool
) -> Calibration:
    """Calibrated drift thresholds for this reference (CannotEvaluate: too few rows)."""
    monitor = params.monitor
    specs = column_methods(
        list(params.features.numerical),
        list(params.features.categorical),
        PREDICTION if prediction else None,
        monitor,
    )
    ts = reference[params.data.timestamp_column]
    chunk = window_rows(ts, monitor.window_days, monitor.min_rows)
    parts = (
        _identity(reference, ts),
        chunk,
        tuple(specs),
        monitor.calibration_quantile,
        monitor.calibration_chunks,
    )
    value = _cached(
        champion,
        "thresholds",
        parts,
        lambda: calibrate(
            reference,
            specs,
            chunk,
            quantile=monitor.calibration_quantile,
            n_chunks=monitor.calibration_chunks,
            min_rows=monitor.min_rows,
        ),
        lambda d: Calibration(
            d["chunk_rows"], d["quantile"], tuple(ColumnThreshold(**c) for c in d["columns"])
        ),
        lambda v: v.to_dict(),
    )
    assert value is not None
    return value


def _identity(reference: pd.DataFrame, ts: pd.Series) -> str:
    """Which reference: its size and time span (the seasonal one moves with the window)."""
    if len(ts) == 0:
        return "empty"
    first, last = pd.Timestamp(ts.min()).isoformat(), pd.Timestamp(ts.max()).isoformat()
    return f"{len(reference)}:{first}:{last}"


def domain_drift(
    champion: Champion,
    params: Params,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
) -> tuple[DomainDrift | None, str | None]:
    """The window's domain classifier AUC against its reference-calibrated threshold."""
    monitor = params.monitor
    if not columns:
        return None, "the champion uses none of the monitored columns"
    numerical = [c for c in params.features.numerical if c in columns]
    categorical = [c for c in params.features.categorical if c in columns]
    ts = reference[params.data.timestamp_column]
    chunk = window_rows(ts, monitor.window_days, monitor.min_rows)
    parts = (
        _identity(reference, ts),
        chunk,
        tuple(columns),
        monitor.calibration_quantile,
        monitor.domain_chunks,
        monitor.domain_max_rows,
    )
    null = _cached(
        champion,
        "domain",
        parts,
        lambda: calibrate_domain(
            reference,
            numerical,
            categorical,
            chunk,
            quantile=monitor.calibration_quantile,
            n_chunks=monitor.domain_chunks,
            max_rows=monitor.domain_max_rows,
        ),
        lambda d: DomainNull(d["threshold"], d["null_median"], d["n_chunks"], d["chunk_rows"]),
        lambda v: v.to_dict(),
    )
    if null is None:
        return None, "too few reference rows to calibrate the domain classifier"
    auc = domain_auc(reference, current, numerical, categorical, max_rows=monitor.domain_max_rows)
    return DomainDrift(auc, null.threshold, tuple(columns), len(reference), len(current)), None


# -- the window's signals ----------------------------------------------------------------------


def assess(
    params: Params,
    champion: Champion,
    current: pd.DataFrame,
    holdout_metrics: Mapping[str, float],
    *,
    drift: DriftSummary | None,
    drift_error: str | None,
    calibration: Calibration | None,
    unseen_season: str | None,
    threshold: float | None = None,
) -> Assessment:
    """Every signal of the window: realised and estimated performance, weighted drift,
    multivariate drift and an unseen season. Label metrics at `threshold` (the champion's own;
    default evaluation.threshold)."""
    monitor = params.monitor
    threshold = params.evaluation.threshold if threshold is None else threshold
    labelled = current[current["label"].notna()]
    test = realised_performance(
        labelled["label"].to_numpy(dtype=int),
        labelled[PREDICTION].to_numpy(dtype=float),
        holdout_metrics,
        params.promote.primary_metric,
        threshold=threshold,
        tolerance=monitor.max_metric_drop,
        confidence=monitor.confidence,
        min_rows=monitor.min_labelled_rows,
    )
    scale = calibrator(champion, champion.params.train.holdout_days)
    estimate = estimate_performance(current[PREDICTION].to_numpy(dtype=float), threshold, scale)
    monitored = [*params.features.numerical, *params.features.categorical]
    weights_of = importance(champion, monitored) if monitor.importance_weighting else None
    weights = weights_of.weights() if weights_of is not None else None
    used = weights_of.used(MIN_WEIGHT) if weights_of is not None else monitored
    domain: DomainDrift | None = None
    why_not: str | None = "not asked (monitor.domain_classifier: false)"
    if unseen_season is not None:
        why_not = "not judged: unseen season"
    elif monitor.domain_classifier and len(current) >= monitor.min_rows:
        try:
            domain, why_not = domain_drift(champion, params, champion.training, current, used)
        except (CannotEvaluate, ValueError) as exc:
            why_not = str(exc)
    elif monitor.domain_classifier:
        why_not = f"{len(current)} window rows < min_rows={monitor.min_rows}"
    signals = (
        policy.performance_signal(test),
        policy.estimated_signal(
            estimate, holdout_metrics, monitor.max_metric_drop, monitor.min_rows
        ),
        policy.drift_signal(drift, monitor.drift_share, weights, drift_error),
        policy.multivariate_signal(domain, why_not),
        policy.season_signal(unseen_season),
    )
    return Assessment(signals, test, estimate, calibration, weights_of, domain)
