"""Fit and evaluate the model: a self-contained scikit-learn Pipeline from input rows to a
probability (categorical encoding inside it), time-series CV on the past, metrics on the holdout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import FeatureParams, TrainParams
from driftloop.errors import TrainingError
from driftloop.features import Dataset, time_folds

LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier"})
MIN_TRAIN_ROWS = 30
SMALL_BATCH = 20_000


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model on one dataset, overall and per segment (`column/value`)."""

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
    """A fitted pipeline with its cross-validation and holdout results."""

    estimator: Any
    cv: dict[str, float]
    holdout: Evaluation
    n_train: int
    input_columns: list[str]
    example: pd.DataFrame | None = None  # a few input rows: the model's signature and example


def better(metric: str, a: float, b: float) -> float:
    """How much `a` improves on `b` for this metric (positive is better)."""
    return b - a if metric in LOWER_IS_BETTER else a - b


def _encoder(kind: str, train: TrainParams) -> Any:
    """Categorical encoding inside the model: unseen or rare categories never break scoring."""
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if kind == "onehot":
        return OneHotEncoder(
            handle_unknown="infrequent_if_exist",
            max_categories=train.max_categories,
            sparse_output=False,
        )
    return OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=train.max_categories,
    )


def make_estimator(train: TrainParams, columns: list[str], categorical: list[str]) -> Any:
    """The scikit-learn Pipeline named in params (preprocessing + estimator), seeded."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    numeric = [c for c in columns if c not in categorical]
    cats = [c for c in columns if c in categorical]
    hp = dict(train.hyperparams)
    try:
        if train.model == "hist_gradient_boosting":
            steps: list[tuple[str, Any, list[str]]] = [("num", "passthrough", numeric)]
            steps += [("cat", _encoder("ordinal", train), cats)] if cats else []
            model: Any = HistGradientBoostingClassifier(
                random_state=train.seed,
                categorical_features=[False] * len(numeric) + [True] * len(cats) if cats else None,
                **hp,
            )
        elif train.model == "random_forest":
            steps = [("num", SimpleImputer(keep_empty_features=True), numeric)]
            cat = make_pipeline(_encoder("ordinal", train), SimpleImputer(fill_value=-1.0))
            steps += [("cat", cat, cats)] if cats else []
            model = RandomForestClassifier(random_state=train.seed, n_jobs=1, **hp)
        else:
            num = make_pipeline(SimpleImputer(keep_empty_features=True), StandardScaler())
            cat = make_pipeline(
                SimpleImputer(strategy="constant", fill_value="missing"), _encoder("onehot", train)
            )
            steps = [("num", num, numeric)] + ([("cat", cat, cats)] if cats else [])
            model = LogisticRegression(random_state=train.seed, max_iter=1000, **hp)
    except TypeError as exc:
        raise TrainingError(f"params.yaml: key 'train.hyperparams': {exc}") from None
    prep = ColumnTransformer(steps, verbose_feature_names_out=False, remainder="drop")
    return Pipeline([("prepare", prep), ("model", model)])


def score(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Classification metrics at the decision threshold; NaN where a metric is undefined."""
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

    if len(y_true) == 0:
        return {k: math.nan for k in ("roc_auc", "f1", "accuracy", "log_loss", "brier")}
    pred = (proba >= threshold).astype(int)
    two_classes = len(np.unique(y_true)) == 2
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)) if two_classes else math.nan,
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba, pos_label=1)),
    }


def predict_proba(model: Any, X: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (single-threaded for small batches: no OpenMP spin-up)."""
    from threadpoolctl import threadpool_limits

    if len(X) == 0:
        return np.zeros(0, dtype=float)
    if len(X) > SMALL_BATCH:
        return np.asarray(model.predict_proba(X)[:, 1], dtype=float)
    with threadpool_limits(limits=1):
        return np.asarray(model.predict_proba(X)[:, 1], dtype=float)


def evaluate(model: Any, data: Dataset, threshold: float = 0.5) -> Evaluation:
    """Metrics overall and per segment value (`column/value`, with its row count `n`)."""
    if len(data) == 0:
        raise TrainingError("evaluation set is empty")
    proba = predict_proba(model, data.X)
    return evaluate_predictions(data.y.to_numpy(), proba, data.segments, threshold)


def evaluate_predictions(
    y: np.ndarray, proba: np.ndarray, segments: pd.DataFrame, threshold: float = 0.5
) -> Evaluation:
    """Metrics of given predictions overall and per segment value."""
    out: dict[str, dict[str, float]] = {}
    for column in segments.columns:
        values = segments[column].to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            n = float(mask.sum())
            out[f"{column}/{value}"] = {**score(y[mask], proba[mask], threshold), "n": n}
    return Evaluation(score(y, proba, threshold), out, len(y))


def cross_validate(
    train: TrainParams, data: Dataset, categorical: list[str], threshold: float = 0.5
) -> dict[str, float]:
    """Mean metrics over time-series CV folds cut on timestamps (each trains on the past only)."""
    splits = min(train.cv_splits, max(2, len(data) // MIN_TRAIN_ROWS - 1))
    folds: list[dict[str, float]] = []
    columns = list(data.X.columns)
    for fit_idx, val_idx in time_folds(data.timestamps, splits):
        y_fit = data.y.iloc[fit_idx]
        if y_fit.nunique() < 2 or len(val_idx) == 0:
            continue
        est = make_estimator(train, columns, categorical).fit(data.X.iloc[fit_idx], y_fit)
        proba = predict_proba(est, data.X.iloc[val_idx])
        folds.append(score(data.y.iloc[val_idx].to_numpy(), proba, threshold))
    if not folds:
        return {}
    with np.errstate(all="ignore"):
        means = {k: float(np.nanmean([f[k] for f in folds])) for k in folds[0]}
    return {f"cv_{k}": v for k, v in means.items() if math.isfinite(v)}


def fit_candidate(
    train: TrainParams, features: FeatureParams, fit_data: Dataset, *, cv: bool = True
) -> tuple[Any, dict[str, float]]:
    """Cross-validate on the training part (unless `cv` is off), then fit on all of it.

    Returns (pipeline, cv metrics); the metrics are empty without cross-validation.
    """
    if len(fit_data) < MIN_TRAIN_ROWS:
        raise TrainingError(f"too little data to train: {len(fit_data)} rows < {MIN_TRAIN_ROWS}")
    if fit_data.y.nunique() < 2:
        raise TrainingError("training data holds a single class; cannot train a classifier")
    categorical = list(features.categorical)
    cv_metrics = cross_validate(train, fit_data, categorical) if cv else {}
    estimator = make_estimator(train, list(fit_data.X.columns), categorical)
    return estimator.fit(fit_data.X, fit_data.y), cv_metrics
