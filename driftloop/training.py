"""Fit and evaluate a scikit-learn pipeline: time-series CV on the past, metrics on the holdout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import Metric, TrainParams
from driftloop.errors import TrainingError
from driftloop.features import Dataset

LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier"})
MIN_TRAIN_ROWS = 30


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model on one dataset, overall and per segment."""

    metrics: dict[str, float]
    segments: dict[str, dict[str, float]] = field(default_factory=dict)
    n_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "segments": self.segments, "n_rows": self.n_rows}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Evaluation:
        return cls(dict(raw["metrics"]), dict(raw.get("segments", {})), int(raw.get("n_rows", 0)))


@dataclass(frozen=True)
class TrainedModel:
    """A fitted estimator with its cross-validation and holdout results."""

    estimator: Any
    cv: dict[str, float]
    holdout: Evaluation
    n_train: int
    feature_columns: list[str]


def better(metric: str, a: float, b: float) -> float:
    """How much `a` improves on `b` for this metric (positive is better)."""
    return b - a if metric in LOWER_IS_BETTER else a - b


def make_estimator(train: TrainParams) -> Any:
    """The scikit-learn pipeline named in params, seeded."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    hp = dict(train.hyperparams)
    try:
        if train.model == "hist_gradient_boosting":
            return HistGradientBoostingClassifier(random_state=train.seed, **hp)
        if train.model == "random_forest":
            rf = RandomForestClassifier(random_state=train.seed, n_jobs=1, **hp)
            return make_pipeline(SimpleImputer(), rf)
        lr = LogisticRegression(random_state=train.seed, max_iter=1000, **hp)
        return make_pipeline(SimpleImputer(), StandardScaler(), lr)
    except TypeError as exc:
        raise TrainingError(f"params.yaml: key 'train.hyperparams': {exc}") from None


def score(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Classification metrics at threshold 0.5; NaN where a metric is undefined."""
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

    pred = (proba >= 0.5).astype(int)
    two_classes = len(np.unique(y_true)) == 2
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)) if two_classes else math.nan,
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba)),
    }


SMALL_BATCH = 20_000


def predict_proba(model: Any, X: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (single-threaded for small batches: no OpenMP spin-up)."""
    from threadpoolctl import threadpool_limits

    if len(X) > SMALL_BATCH:
        return np.asarray(model.predict_proba(X)[:, 1], dtype=float)
    with threadpool_limits(limits=1):
        return np.asarray(model.predict_proba(X)[:, 1], dtype=float)


def evaluate(model: Any, data: Dataset) -> Evaluation:
    """Metrics overall and per segment."""
    if len(data) == 0:
        raise TrainingError("evaluation set is empty")
    proba = predict_proba(model, data.X)
    y = data.y.to_numpy()
    segments = {
        str(seg): score(y[mask], proba[mask])
        for seg in sorted(data.segments.unique())
        if (mask := (data.segments == seg).to_numpy()).sum() > 0
    }
    return Evaluation(score(y, proba), segments, len(data))


def cross_validate(train: TrainParams, data: Dataset) -> dict[str, float]:
    """Mean metrics over time-series CV folds (each fold trains on the past only)."""
    from sklearn.model_selection import TimeSeriesSplit

    splits = min(train.cv_splits, max(2, len(data) // MIN_TRAIN_ROWS - 1))
    folds: list[dict[str, float]] = []
    for fit_idx, val_idx in TimeSeriesSplit(n_splits=splits).split(data.X):
        y_fit = data.y.iloc[fit_idx]
        if y_fit.nunique() < 2:
            continue
        est = make_estimator(train).fit(data.X.iloc[fit_idx], y_fit)
        folds.append(
            score(data.y.iloc[val_idx].to_numpy(), predict_proba(est, data.X.iloc[val_idx]))
        )
    if not folds:
        return {}
    return {f"cv_{k}": float(np.nanmean([f[k] for f in folds])) for k in folds[0]}


def fit_candidate(
    train: TrainParams, fit_data: Dataset, *, cv: bool = True
) -> tuple[Any, dict[str, float]]:
    """Cross-validate on the training part (unless `cv` is off), then fit on all of it.

    Returns (estimator, cv metrics); the metrics are empty without cross-validation.
    """
    if len(fit_data) < MIN_TRAIN_ROWS:
        raise TrainingError(f"too little data to train: {len(fit_data)} rows < {MIN_TRAIN_ROWS}")
    if fit_data.y.nunique() < 2:
        raise TrainingError("training data holds a single class; cannot train a classifier")
    cv_metrics = cross_validate(train, fit_data) if cv else {}
    return make_estimator(train).fit(fit_data.X, fit_data.y), cv_metrics


def train_model(train: TrainParams, fit_data: Dataset, holdout: Dataset) -> TrainedModel:
    """Fit a candidate and evaluate it on the holdout."""
    if len(holdout) == 0:
        raise TrainingError("holdout is empty: lower train.holdout_days or ingest more data")
    estimator, cv = fit_candidate(train, fit_data)
    return TrainedModel(
        estimator, cv, evaluate(estimator, holdout), len(fit_data), list(fit_data.X.columns)
    )


def metric_value(evaluation: Evaluation, metric: Metric) -> float:
    """One metric of an evaluation (NaN if absent)."""
    return float(evaluation.metrics.get(metric, math.nan))
