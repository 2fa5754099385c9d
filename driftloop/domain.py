"""Multivariate drift: can a classifier tell the window's rows from the reference's?

A gradient-boosted domain classifier (reference = 0, window = 1) is scored by cross-validated
ROC AUC: 0.5 when the two are the same distribution, towards 1 as they part, whatever the
columns' joint shape. Its alert threshold is calibrated like the per-column ones: the AUC of
contiguous reference chunks of the window's size against the rest of the reference, at a high
quantile. The reference is the champion's whole training window (not the seasonal subset), so
the null is computed once per champion: a window alerts when it stands out from the training
data more than any time of that data stood out from the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftloop.thresholds import chunk_starts

FOLDS = 3


@dataclass(frozen=True)
class DomainNull:
    """The domain AUC's distribution over reference chunks: the alert threshold."""

    threshold: float
    median: float
    n_chunks: int
    chunk_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "null_median": self.median,
            "n_chunks": self.n_chunks,
            "chunk_rows": self.chunk_rows,
        }


@dataclass(frozen=True)
class DomainDrift:
    """The window's domain-classifier AUC against its calibrated threshold."""

    auc: float
    threshold: float
    columns: tuple[str, ...]
    n_reference: int
    n_current: int

    @property
    def drifted(self) -> bool:
        return math.isfinite(self.auc) and self.auc >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc if math.isfinite(self.auc) else None,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "columns": list(self.columns),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
        }


def _inputs(
    frames: Sequence[pd.DataFrame], numerical: Sequence[str], categorical: Sequence[str]
) -> list[pd.DataFrame]:
    """Numbers as floats, categories as shared integer codes (NaN: missing)."""
    out = [pd.DataFrame(index=f.index) for f in frames]
    for name in numerical:
        for frame, target in zip(frames, out, strict=True):
            values = pd.to_numeric(frame[name], errors="coerce").astype(float)
            target[name] = values.to_numpy()
    for name in categorical:
        levels = pd.unique(pd.concat([f[name].astype("string") for f in frames]).dropna())
        for frame, target in zip(frames, out, strict=True):
            codes = pd.Categorical(frame[name].astype("string"), categories=levels).codes
            target[name] = np.where(codes < 0, np.nan, codes).astype(float)
    return out


def domain_auc(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: Sequence[str],
    categorical: Sequence[str],
    *,
    max_rows: int,
    seed: int = 0,
) -> float:
    """Cross-validated ROC AUC of a classifier telling current rows from reference rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    n_cur = min(len(current), max_rows // 2)
    n_ref = min(len(reference), max_rows - n_cur)
    cur = current.iloc[np.sort(rng.choice(len(current), n_cur, replace=False))]
    ref = reference.iloc[np.sort(rng.choice(len(reference), n_ref, replace=False))]
    if min(n_cur, n_ref) < FOLDS * 2:
        return math.nan
    x_ref, x_cur = _inputs([ref, cur], numerical, categorical)
    X = pd.concat([x_ref, x_cur], ignore_index=True)
    y = np.r_[np.zeros(n_ref, dtype=int), np.ones(n_cur, dtype=int)]
    leaf = int(min(20, max(2, len(X) // 20)))
    classifier = HistGradientBoostingClassifier(
        max_iter=30,
        learning_rate=0.2,
        max_leaf_nodes=15,
        min_samples_leaf=leaf,
        categorical_features=[name in categorical for name in X.columns] or None,
        early_stopping=False,
        random_state=seed,
    )
    from threadpoolctl import threadpool_limits

    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):  # small fits: OpenMP start-up costs more than it saves
        proba = cross_val_predict(classifier, X, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def calibrate_domain(
    reference: pd.DataFrame,
    numerical: Sequence[str],
    categorical: Sequence[str],
    chunk_rows: int,
    *,
    quantile: float,
    n_chunks: int,
    max_rows: int,
    seed: int = 0,
) -> DomainNull | None:
    """The domain AUC's null: contiguous reference chunks against the rest (None: too few rows)."""
    chunk_rows = min(chunk_rows, len(reference) // 2)
    starts = chunk_starts(len(reference), chunk_rows, n_chunks)
    aucs = []
    for start in starts:
        inside = reference.iloc[start : start + chunk_rows]
        outside = pd.concat([reference.iloc[:start], reference.iloc[start + chunk_rows :]])
        auc = domain_auc(outside, inside, numerical, categorical, max_rows=max_rows, seed=seed)
        if math.isfinite(auc):
            aucs.append(auc)
    if not aucs:
        return None
    null = np.array(aucs)
    return DomainNull(
        float(np.quantile(null, quantile)), float(np.median(null)), len(null), chunk_rows
    )
