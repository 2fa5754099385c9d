"""Fit and evaluate the model: a self-contained scikit-learn Pipeline from input rows to a
probability (categorical encoding inside it), time-series CV on the past, metrics on the holdout.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import Candidate, FeatureParams, TrainParams
from driftloop.errors import TrainingError
from driftloop.features import Dataset, time_folds

LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier"})
MIN_TRAIN_ROWS = 30
SMALL_BATCH = 20_000
ISOTONIC_MIN_ROWS = 1000  # fewer out-of-fold rows: isotonic calibration overfits, sigmoid only
QUANTILES = 50  # of each number, for `numbers: quantile` (fewer rows: one per row)
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)  # decision thresholds tried


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
    selection: Selection | None = None  # the candidate, calibration and threshold chosen


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


def make_estimator(
    candidate: Candidate, train: TrainParams, columns: list[str], categorical: list[str], key: str
) -> Any:
    """The scikit-learn Pipeline of one candidate (preprocessing + estimator), seeded.

    `key` names the candidate's hyperparameters in params.yaml for an error.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import QuantileTransformer, StandardScaler

    numeric = [c for c in columns if c not in categorical]
    cats = [c for c in columns if c in categorical]
    hp = dict(candidate.hyperparams)
    try:
        if candidate.model == "hist_gradient_boosting":
            steps: list[tuple[str, Any, list[str]]] = [("num", "passthrough", numeric)]
            steps += [("cat", _encoder("ordinal", train), cats)] if cats else []
            model: Any = HistGradientBoostingClassifier(
                random_state=train.seed,
                categorical_features=[False] * len(numeric) + [True] * len(cats) if cats else None,
                **hp,
            )
        elif candidate.model == "random_forest":
            steps = [("num", SimpleImputer(keep_empty_features=True), numeric)]
            cat = make_pipeline(_encoder("ordinal", train), SimpleImputer(fill_value=-1.0))
            steps += [("cat", cat, cats)] if cats else []
            model = RandomForestClassifier(random_state=train.seed, n_jobs=1, **hp)
        else:
            scale: Any = StandardScaler()
            if candidate.numbers == "quantile":
                scale = QuantileTransformer(n_quantiles=QUANTILES, output_distribution="normal")
            num = make_pipeline(SimpleImputer(keep_empty_features=True), scale)
            cat = make_pipeline(
                SimpleImputer(strategy="constant", fill_value="missing"), _encoder("onehot", train)
            )
            steps = [("num", num, numeric)] + ([("cat", cat, cats)] if cats else [])
            model = LogisticRegression(random_state=train.seed, max_iter=1000, **hp)
    except TypeError as exc:
        raise TrainingError(f"params.yaml: key '{key}': {exc}") from None
    prep = ColumnTransformer(steps, verbose_feature_names_out=False, remainder="drop")
    return Pipeline([("prepare", prep), ("model", model)])


def hyperparams_key(train: TrainParams, name: str) -> str:
    """Where a candidate's hyperparameters are written in params.yaml."""
    return f"train.candidates.{name}.hyperparams" if train.candidates else "train.hyperparams"


def score(
    y_true: np.ndarray, proba: np.ndarray, threshold: float | np.ndarray = 0.5
) -> dict[str, float]:
    """Classification metrics at the decision threshold (one, or one per row: each row's model's
    own); NaN where a metric is undefined."""
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
    """Metrics overall and per segment value (`column/value`, with its row count `n`), at the
    model's own decision threshold (`threshold` for a model that carries none)."""
    if len(data) == 0:
        raise TrainingError("evaluation set is empty")
    proba = predict_proba(model, data.X)
    return evaluate_predictions(
        data.y.to_numpy(), proba, data.segments, threshold_of(model, threshold)
    )


def evaluate_predictions(
    y: np.ndarray, proba: np.ndarray, segments: pd.DataFrame, threshold: float | np.ndarray = 0.5
) -> Evaluation:
    """Metrics of given predictions overall and per segment value."""
    out: dict[str, dict[str, float]] = {}
    per_row = np.broadcast_to(np.asarray(threshold, dtype=float), proba.shape)
    for column in segments.columns:
        values = segments[column].to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            n = float(mask.sum())
            out[f"{column}/{value}"] = {**score(y[mask], proba[mask], per_row[mask]), "n": n}
    return Evaluation(score(y, proba, threshold), out, len(y))


def threshold_of(model: Any, default: float) -> float:
    """The decision threshold a model carries (chosen on its CV folds), else `default`."""
    own = getattr(model, "threshold", None)
    return float(own) if isinstance(own, int | float) and 0.0 < own < 1.0 else float(default)


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped)).reshape(-1, 1)


def calibrate(calibrator: Any, raw: np.ndarray) -> np.ndarray:
    """Map raw probabilities through a fitted calibrator (None: unchanged)."""
    if calibrator is None or len(raw) == 0:
        return raw
    if hasattr(calibrator, "predict_proba"):  # sigmoid (Platt): a logistic fit on the logit
        mapped = calibrator.predict_proba(_logit(raw))[:, 1]
    else:
        mapped = calibrator.predict(raw)
    # never certain: a map fitted on a narrow range must not send new rows to 0 or 1
    return np.clip(np.asarray(mapped, dtype=float), 1e-3, 1 - 1e-3)


def fit_calibrator(method: str, raw: np.ndarray, y: np.ndarray) -> Any:
    """A sigmoid or isotonic map from raw probability to calibrated probability; None (leave
    the probabilities as they are) for a sigmoid that does not rise with the model's score:
    fitted on a few poor folds, it would reverse the model's ranking for good."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if method == "isotonic":
        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
    sigmoid = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(raw), y)
    return sigmoid if float(sigmoid.coef_[0, 0]) > 0 else None


class DecisionModel:
    """A fitted pipeline, the calibration of its probability (or none) and the decision threshold
    of its answers: what serving, scoring, monitoring and evaluation all use."""

    def __init__(
        self,
        pipeline: Any,
        calibrator: Any = None,
        threshold: float = 0.5,
        candidate: str = "",
        calibration: str = "none",
    ) -> None:
        self.pipeline = pipeline
        self.calibrator = calibrator
        self.threshold = float(threshold)
        self.candidate = candidate
        self.calibration = calibration  # the calibrator's method: none, sigmoid or isotonic
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        raw = np.asarray(self.pipeline.predict_proba(X)[:, 1], dtype=float)
        p = calibrate(self.calibrator, raw)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= self.threshold).astype(int)

    def refitted(self, X: pd.DataFrame, y: pd.Series) -> DecisionModel:
        """The same candidate, calibration and threshold, its pipeline fitted anew on (X, y)."""
        from sklearn.base import clone

        pipeline = _fit(clone(self.pipeline), X, y, "train.candidates")
        return DecisionModel(
            pipeline, self.calibrator, self.threshold, self.candidate, self.calibration
        )

    def selection(self, threshold_for: str) -> Selection:
        """What it was chosen as (without the CV scores, which its training run holds)."""
        return Selection(
            self.candidate, {}, self.calibration, {}, self.threshold, threshold_for, {}, 0
        )


@dataclass(frozen=True)
class Selection:
    """What the training part chose: the candidate, its calibration and decision threshold.

    `scores` are each candidate's mean metrics over the time-series CV folds (label metrics at
    0.5, raw probabilities); `calibration_log_loss` the forward-chained CV log loss of each
    calibration tried (`none`: raw); `cv` the chosen model's fold-mean metrics, calibrated and at
    its threshold (both fitted on these same out-of-fold rows: the holdout is the honest check).
    """

    chosen: str
    scores: dict[str, dict[str, float]]
    calibration: str
    calibration_log_loss: dict[str, float]
    threshold: float
    threshold_for: str
    cv: dict[str, float]
    n_cv_rows: int

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: the chosen model's `cv_*` and every candidate's CV score."""
        out = {f"cv_{k}": v for k, v in self.cv.items()}
        for name, scores in self.scores.items():
            out.update({f"candidate.{name}.cv_{k}": v for k, v in scores.items()})
        for method, loss in self.calibration_log_loss.items():
            out[f"calibration.{method}.cv_log_loss"] = loss
        out["threshold"] = self.threshold
        out["n_cv_rows"] = float(self.n_cv_rows)
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def params(self) -> dict[str, str]:
        """What was chosen, as run params."""
        return {
            "chosen_candidate": self.chosen,
            "calibration": self.calibration,
            "threshold": f"{self.threshold:.2f}",
            "threshold_for": self.threshold_for,
        }


@dataclass(frozen=True)
class _Folds:
    """Out-of-fold predictions of one candidate: per fold, the rows' labels and probabilities."""

    y: list[np.ndarray]
    proba: list[np.ndarray]

    def mean_scores(self) -> dict[str, float]:
        return mean_metrics([score(y, p) for y, p in zip(self.y, self.proba, strict=True)])


def mean_metrics(folds: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over folds, NaN folds left out (finite means only)."""
    if not folds:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a metric NaN in every fold
        means = {k: float(np.nanmean([f[k] for f in folds])) for k in folds[0]}
    return {k: v for k, v in means.items() if math.isfinite(v)}


def _cv_rows(train: TrainParams, data: Dataset) -> Dataset:
    """At most `train.cv_max_rows` rows, sampled evenly over time (order kept)."""
    cap = train.cv_max_rows
    if cap is None or len(data) <= cap:
        return data
    rng = np.random.default_rng(train.seed)
    keep = np.zeros(len(data), dtype=bool)
    keep[rng.choice(len(data), cap, replace=False)] = True
    return data.subset(keep)


def _fit(pipeline: Any, X: pd.DataFrame, y: pd.Series, key: str) -> Any:
    """Fit; single-threaded on small data (OpenMP threads cost more than they save there, and
    far more on a busy machine). A hyperparameter value sklearn refuses names its key."""
    from sklearn.utils._param_validation import InvalidParameterError
    from threadpoolctl import threadpool_limits

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "n_quantiles .* is greater than", UserWarning)
            if len(X) > SMALL_BATCH:
                return pipeline.fit(X, y)
            with threadpool_limits(limits=1):
                return pipeline.fit(X, y)
    except InvalidParameterError as exc:
        raise TrainingError(f"params.yaml: key '{key}': {str(exc).splitlines()[0]}") from None


def out_of_fold(train: TrainParams, data: Dataset, categorical: list[str]) -> dict[str, _Folds]:
    """Each candidate's predictions on time-series CV folds cut on timestamps (each fold is
    predicted by a model fitted on the past only)."""
    splits = min(train.cv_splits, max(2, len(data) // MIN_TRAIN_ROWS - 1))
    folds = [
        (fit_idx, val_idx)
        for fit_idx, val_idx in time_folds(data.timestamps, splits)
        if len(val_idx) and data.y.iloc[fit_idx].nunique() == 2
    ]
    columns = list(data.X.columns)
    out: dict[str, _Folds] = {}
    for name, candidate in train.family().items():
        key = hyperparams_key(train, name)
        ys, probas = [], []
        for fit_idx, val_idx in folds:
            est = make_estimator(candidate, train, columns, categorical, key)
            est = _fit(est, data.X.iloc[fit_idx], data.y.iloc[fit_idx], key)
            probas.append(predict_proba(est, data.X.iloc[val_idx]))
            ys.append(data.y.iloc[val_idx].to_numpy())
        out[name] = _Folds(ys, probas)
    return out


def select(scores: dict[str, dict[str, float]], metric: str) -> str:
    """The candidate with the best mean CV `metric` (the first listed on a tie or no score)."""
    names = list(scores)
    best = names[0]
    for name in names[1:]:
        value, incumbent = scores[name].get(metric, math.nan), scores[best].get(metric, math.nan)
        if math.isfinite(value) and (
            not math.isfinite(incumbent) or better(metric, value, incumbent) > 0
        ):
            best = name
    return best


def calibration_losses(folds: _Folds, methods: list[str]) -> dict[str, float]:
    """Forward-chained CV log loss of each calibration: fold k is calibrated by a map fitted on
    the out-of-fold predictions of folds before it (`none`: raw probabilities)."""
    if len(folds.y) < 2:
        return {}
    losses: dict[str, list[float]] = {m: [] for m in ["none", *methods]}
    for k in range(1, len(folds.y)):
        past_y, past_p = np.concatenate(folds.y[:k]), np.concatenate(folds.proba[:k])
        y, raw = folds.y[k], folds.proba[k]
        losses["none"].append(score(y, raw)["log_loss"] * len(y))
        for method in methods:
            if len(np.unique(past_y)) < 2:
                losses[method].append(math.inf)
                continue
            fitted = fit_calibrator(method, past_p, past_y)
            if fitted is None:  # it would reverse the model in this fold: not to be trusted
                losses[method].append(math.inf)
                continue
            losses[method].append(score(y, calibrate(fitted, raw))["log_loss"] * len(y))
    n = sum(len(y) for y in folds.y[1:])
    return {m: float(sum(v) / n) for m, v in losses.items()}


def choose_calibration(train: TrainParams, folds: _Folds) -> tuple[str, dict[str, float]]:
    """The calibration to apply: the forced one, or under `auto` the one with the lowest
    forward-chained CV log loss when it beats the raw probabilities (else none)."""
    n_rows = sum(len(y) for y in folds.y)
    if train.calibration == "none" or not folds.y:
        return "none", {}
    methods = ["sigmoid"] + (["isotonic"] if n_rows >= ISOTONIC_MIN_ROWS else [])
    if train.calibration != "auto":
        methods = [train.calibration]
    losses = calibration_losses(folds, methods)
    if train.calibration != "auto":
        return train.calibration, losses
    best = min(methods, key=lambda m: losses.get(m, math.inf))
    if losses and losses[best] < losses["none"] - 1e-4:
        return best, losses
    return "none", losses


def choose_threshold(y: np.ndarray, proba: np.ndarray, metric: str) -> float:
    """The threshold in THRESHOLDS that maximises accuracy or F1 on these predictions (the one
    nearest 0.5 among equals)."""
    from sklearn.metrics import accuracy_score, f1_score

    def value(t: float) -> float:
        pred = (proba >= t).astype(int)
        if metric == "f1":
            return float(f1_score(y, pred, zero_division=0))
        return float(accuracy_score(y, pred))

    values = np.array([value(t) for t in THRESHOLDS])
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(THRESHOLDS[best[np.argmin(np.abs(THRESHOLDS[best] - 0.5))]])


def choose(
    train: TrainParams, data: Dataset, categorical: list[str], fixed_threshold: float
) -> tuple[Selection, Any]:
    """Model selection on the training part: the candidate, its calibrator and threshold."""
    cv_data = _cv_rows(train, data)
    oof = out_of_fold(train, cv_data, categorical)
    scores = {name: folds.mean_scores() for name, folds in oof.items()}
    chosen = select(scores, train.select_by)
    folds = oof[chosen]
    method, losses = choose_calibration(train, folds)
    calibrator = None
    y = np.concatenate(folds.y) if folds.y else np.zeros(0)
    raw = np.concatenate(folds.proba) if folds.proba else np.zeros(0)
    if method != "none":
        calibrator = fit_calibrator(method, raw, y)
        method = method if calibrator is not None else "none"
    threshold = fixed_threshold
    if train.threshold_for != "fixed" and len(y) and len(np.unique(y)) == 2:
        threshold = choose_threshold(y, calibrate(calibrator, raw), train.threshold_for)
    fold_scores = [
        score(fy, calibrate(calibrator, fp), threshold)
        for fy, fp in zip(folds.y, folds.proba, strict=True)
    ]
    selection = Selection(
        chosen,
        {n: s for n, s in scores.items() if s},
        method,
        losses,
        threshold,
        train.threshold_for,
        mean_metrics(fold_scores),
        len(y),
    )
    return selection, calibrator


def fit_candidate(
    train: TrainParams,
    features: FeatureParams,
    fit_data: Dataset,
    *,
    cv: bool = True,
    fixed_threshold: float = 0.5,
) -> tuple[DecisionModel, Selection]:
    """Choose among `train.candidates` by time-series CV on the training part, calibrate where
    that helps, choose the decision threshold, then fit the chosen one on all of it.

    Without `cv`: the first candidate, uncalibrated, at `fixed_threshold`.
    """
    if len(fit_data) < MIN_TRAIN_ROWS:
        raise TrainingError(f"too little data to train: {len(fit_data)} rows < {MIN_TRAIN_ROWS}")
    if fit_data.y.nunique() < 2:
        raise TrainingError("training data holds a single class; cannot train a classifier")
    categorical = list(features.categorical)
    family = train.family()
    if cv:
        selection, calibrator = choose(train, fit_data, categorical, fixed_threshold)
    else:
        first = next(iter(family))
        selection = Selection(first, {}, "none", {}, fixed_threshold, "fixed", {}, 0)
        calibrator = None
    key = hyperparams_key(train, selection.chosen)
    estimator = make_estimator(
        family[selection.chosen], train, list(fit_data.X.columns), categorical, key
    )
    pipeline = _fit(estimator, fit_data.X, fit_data.y, key)
    model = DecisionModel(
        pipeline, calibrator, selection.threshold, selection.chosen, selection.calibration
    )
    return model, selection
