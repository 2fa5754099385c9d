"""Drift thresholds calibrated from the reference data itself.

For each monitored column, the drift statistic is computed between many contiguous chunks of
the reference (of the monitoring window's size, in time order) and the rest of the reference:
how far a window drifts when nothing has changed. The alert threshold is a high quantile of that
distribution (`monitor.calibration_quantile`), so a dataset of any scale works with the defaults.

The statistic is Evidently's own: the registered stat test that `drift.compute_drift` runs in
its report, called directly on each chunk (the same function and numbers, without building a
report per chunk). A p-value test alerts below the low quantile, a distance above the high one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from driftloop.drift import CannotEvaluate, ColumnKind

Direction = Literal["above", "below"]
_SMALLEST = 1e-12  # a distance threshold above an all-zero null: identical data never alerts


@dataclass(frozen=True)
class ColumnThreshold:
    """One column's calibrated threshold and the null distribution it came from."""

    column: str
    kind: ColumnKind
    method: str
    threshold: float
    direction: Direction  # "above": a distance alerts at or above; "below": a p-value below
    null_median: float
    n_chunks: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "threshold": self.threshold,
            "direction": self.direction,
            "null_median": self.null_median,
            "n_chunks": self.n_chunks,
        }


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds of every column for windows of `chunk_rows` rows."""

    chunk_rows: int
    quantile: float
    columns: tuple[ColumnThreshold, ...]

    def thresholds(self) -> dict[str, float]:
        return {c.column: c.threshold for c in self.columns}

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_rows": self.chunk_rows,
            "quantile": self.quantile,
            "columns": [c.to_dict() for c in self.columns],
        }


def window_rows(timestamps: pd.Series, window_days: int, min_rows: int) -> int:
    """The rows a window of `window_days` holds at the reference's own rate (rows per day)."""
    days = pd.to_datetime(timestamps).dt.normalize().nunique()
    if days == 0:
        return 0
    return max(min_rows, round(len(timestamps) / days * window_days))


def chunk_starts(n_rows: int, chunk_rows: int, n_chunks: int) -> list[int]:
    """Start rows of up to `n_chunks` contiguous chunks spread evenly over the reference."""
    last = n_rows - chunk_rows
    if last < 0:
        return []
    return sorted({round(float(x)) for x in np.linspace(0, last, num=min(n_chunks, last + 1))})


def calibrate(
    reference: pd.DataFrame,
    specs: Sequence[tuple[str, ColumnKind, str]],
    chunk_rows: int,
    *,
    quantile: float,
    n_chunks: int,
    min_rows: int,
) -> Calibration:
    """Thresholds for (column, kind, method) from reference chunks of `chunk_rows` (time order).

    Each chunk is compared with the reference rows outside it; the reference must hold at least
    `min_rows` rows on both sides (CannotEvaluate otherwise).
    """
    chunk_rows = min(chunk_rows, len(reference) // 2)
    if chunk_rows < min_rows:
        raise CannotEvaluate(
            f"reference has {len(reference)} rows: too few to calibrate drift thresholds for "
            f"windows of {min_rows} rows or more"
        )
    starts = chunk_starts(len(reference), chunk_rows, n_chunks)
    columns = tuple(
        _calibrate_column(reference[column], column, kind, method, starts, chunk_rows, quantile)
        for column, kind, method in specs
    )
    return Calibration(chunk_rows, quantile, columns)


def _calibrate_column(
    series: pd.Series,
    column: str,
    kind: ColumnKind,
    method: str,
    starts: list[int],
    chunk_rows: int,
    quantile: float,
) -> ColumnThreshold:
    values = series.to_numpy()
    if kind == "numerical":
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    scores = []
    for start in starts:
        inside = values[start : start + chunk_rows]
        outside = np.concatenate([values[:start], values[start + chunk_rows :]])
        scores.append(statistic(outside, inside, kind, method))
    null = np.array([s for s in scores if math.isfinite(s)])
    if len(null) == 0:
        raise CannotEvaluate(f"column {column!r}: no valid {method} score on reference chunks")
    direction = stat_direction(method, kind)
    if direction == "above":
        threshold = max(float(np.quantile(null, quantile)), _SMALLEST)
    else:
        threshold = float(np.quantile(null, 1 - quantile))
    return ColumnThreshold(
        column, kind, method, threshold, direction, float(np.median(null)), len(null)
    )


def _stattest(method: str, kind: ColumnKind) -> Any:
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest

    from driftloop.drift import _evidently_kind

    return get_registered_stattest(method, _evidently_kind(kind))


def statistic(reference: np.ndarray, current: np.ndarray, kind: ColumnKind, method: str) -> float:
    """Evidently's drift score of one column (NaN when the test gives no valid result)."""
    from driftloop.drift import _evidently_kind

    ref, cur = _usable(reference, kind), _usable(current, kind)
    if len(ref) == 0 or len(cur) == 0:
        return math.nan
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = _stattest(method, kind)(ref, cur, _evidently_kind(kind), None)
    except Exception:  # a degenerate chunk (constant values): no valid score
        return math.nan
    return float(result.drift_score)


def _usable(values: np.ndarray, kind: ColumnKind) -> pd.Series:
    if kind == "numerical":
        arr = np.asarray(values, dtype=float)
        return pd.Series(arr[np.isfinite(arr)])
    return pd.Series(values).dropna()


def stat_direction(method: str, kind: ColumnKind) -> Direction:
    """Whether the method's drift score alerts above its threshold (a distance) or below it
    (a p-value), read from Evidently's own verdict on two probe samples."""
    from driftloop.drift import _evidently_kind

    rng = np.random.default_rng(0)
    if kind == "numerical":
        ref, cur = pd.Series(rng.normal(size=200)), pd.Series(rng.normal(size=200))
    else:
        ref = pd.Series(rng.choice(["a", "b", "c"], size=200))
        cur = pd.Series(rng.choice(["a", "b", "c"], size=200))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        test = _stattest(method, kind)
        score = float(test(ref, cur, _evidently_kind(kind), None).drift_score)
        above = test(ref, cur, _evidently_kind(kind), score * 1.5 + 1e-9).drifted
    # With the threshold above the score, a p-value test alerts (score < threshold).
    return "below" if above else "above"
