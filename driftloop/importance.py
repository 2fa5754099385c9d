"""What the champion uses: permutation importance of each monitored column on its holdout.

A monitored column feeds several model inputs (its lags and rolling means): they are permuted
together, rows shuffled as one block, so the importance is the column's whole contribution.
Importance is the mean drop of the holdout ROC AUC; drift weights are the importances clipped
at zero, so drift in a column the model ignores weighs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Importance:
    """The champion's holdout ROC AUC and its mean drop when each column is permuted."""

    baseline: float
    by_column: dict[str, float]
    n_rows: int
    n_repeats: int

    def weights(self) -> dict[str, float]:
        """Each column's share of the positive importance (equal shares when none is positive)."""
        positive = {c: max(v, 0.0) for c, v in self.by_column.items()}
        total = sum(positive.values())
        if total <= 0:
            return {c: 1.0 / len(positive) for c in positive} if positive else {}
        return {c: v / total for c, v in positive.items()}

    def used(self, min_weight: float) -> list[str]:
        """Columns with a weight above `min_weight`, in their given order."""
        return [c for c, w in self.weights().items() if w > min_weight]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": "roc_auc",
            "baseline": self.baseline,
            "by_column": {c: round(v, 6) for c, v in self.by_column.items()},
            "weights": {c: round(v, 6) for c, v in self.weights().items()},
            "n_rows": self.n_rows,
            "n_repeats": self.n_repeats,
        }


def input_groups(inputs: Sequence[str], monitored: Sequence[str]) -> dict[str, list[str]]:
    """The model inputs made from each monitored column: itself, its lags and rolling means."""
    groups: dict[str, list[str]] = {}
    for column in monitored:
        groups[column] = [
            name
            for name in inputs
            if name == column
            or name.startswith(f"{column}_lag")
            or name.startswith(f"{column}_mean")
        ]
    return groups


def permutation_importance(
    model: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    monitored: Sequence[str],
    *,
    n_repeats: int = 5,
    seed: int = 0,
) -> Importance | None:
    """Mean ROC AUC drop per monitored column (its inputs permuted together); None when the
    holdout has a single class."""
    from sklearn.metrics import roc_auc_score

    from driftloop.training import predict_proba

    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        return None
    baseline = float(roc_auc_score(y, predict_proba(model, X)))
    rng = np.random.default_rng(seed)
    by_column: dict[str, float] = {}
    for column, inputs in input_groups(list(X.columns), monitored).items():
        if not inputs:
            by_column[column] = 0.0  # not an input: the model cannot use it
            continue
        drops = []
        for _ in range(n_repeats):
            shuffled = X.copy()
            order = rng.permutation(len(X))
            shuffled[inputs] = X[inputs].iloc[order].to_numpy()
            drops.append(baseline - float(roc_auc_score(y, predict_proba(model, shuffled))))
        by_column[column] = float(np.mean(drops))
    return Importance(baseline, by_column, len(y), n_repeats)


def weighted_share(drifted: Sequence[str], weights: dict[str, float]) -> float:
    """The importance-weighted share of drifted columns (0 to 1)."""
    total = sum(weights.values())
    if total <= 0 or not math.isfinite(total):
        return 0.0
    return sum(weights.get(c, 0.0) for c in drifted) / total
