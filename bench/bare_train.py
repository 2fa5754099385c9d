"""The honest baseline: the pipeline's training work in plain pandas + scikit-learn.

It reads the same params file and Parquet file (`data.source`) as the pipeline and does the same
ML work: rows in time order; the numerical columns, calendar features (day of year as sin/cos,
weekday, hour, month) and the categorical columns ordinal-encoded inside the model (rare ones
grouped, unseen ones missing); the explicit label (`target.column`, with `above`/`at_least`);
the last `train.holdout_days` as the holdout; `train.cv_splits` expanding-window CV folds cut on
distinct timestamps; HistGradientBoosting with the params' hyperparameters; the same metrics at
`evaluation.threshold`, overall and per evaluation segment. No driftloop, Prefect, MLflow, Great
Expectations or DVC.

    python bench/bare_train.py PARAMS.yaml OUT_DIR

Writes OUT_DIR/model.pkl and OUT_DIR/result.json (holdout metrics, CV metrics, phase seconds).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import TimeSeriesSplit  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OrdinalEncoder  # noqa: E402

SEASONS = ("winter", "spring", "summer", "autumn")
MAX_CATEGORIES = 250  # driftloop's train.max_categories default
MIN_TRAIN_ROWS = 30


def features(frame: pd.DataFrame, p: dict[str, Any]) -> pd.DataFrame:
    """Numerical, calendar, then categorical columns (the pipeline's order)."""
    feats, ts = p["features"], frame[p["data"]["timestamp_column"]].dt
    out = {col: frame[col].astype(float) for col in feats.get("numerical", [])}
    calendar = feats.get("calendar", [])
    if "day_of_year" in calendar:
        day = ts.dayofyear.to_numpy(float)
        out["doy_sin"], out["doy_cos"] = (
            np.sin(2 * np.pi * day / 365.25),
            np.cos(2 * np.pi * day / 365.25),
        )
    for name in ("weekday", "hour", "month"):
        if name in calendar:
            out[name] = getattr(ts, name).astype(float)
    out |= {col: frame[col] for col in feats.get("categorical", [])}
    return pd.DataFrame(out, index=frame.index)


def label(frame: pd.DataFrame, target: dict[str, Any]) -> pd.Series:
    """The explicit binary label (NaN: not known)."""
    values = frame[target["column"]].astype(float)
    if target.get("above") is not None:
        return (values > target["above"]).astype(float).where(values.notna())
    if target.get("at_least") is not None:
        return (values >= target["at_least"]).astype(float).where(values.notna())
    return values.where(values.isin([0.0, 1.0]))


def segments(frame: pd.DataFrame, names: list[str], ts: pd.Series) -> dict[str, np.ndarray]:
    derived = {
        "season": lambda: ((ts.dt.month % 12) // 3).map(dict(enumerate(SEASONS))),
        "month": lambda: ts.dt.month,
        "weekday": lambda: ts.dt.weekday,
        "hour": lambda: ts.dt.hour,
    }
    return {
        n: (frame[n] if n in frame.columns else derived[n]()).astype(str).to_numpy() for n in names
    }


def model(train: dict[str, Any], numerical: list[str], categorical: list[str]) -> Pipeline:
    if train["model"] != "hist_gradient_boosting":
        sys.exit(f"bare_train.py: only hist_gradient_boosting, not {train['model']}")
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=train.get("max_categories", MAX_CATEGORIES),
    )
    steps = [("num", "passthrough", numerical)] + (
        [("cat", encoder, categorical)] if categorical else []
    )
    hgb = HistGradientBoostingClassifier(
        random_state=train["seed"],
        categorical_features=[False] * len(numerical) + [True] * len(categorical)
        if categorical
        else None,
        **train.get("hyperparams", {}),
    )
    prep = ColumnTransformer(steps, verbose_feature_names_out=False, remainder="drop")
    return Pipeline([("prepare", prep), ("model", hgb)])


def score(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float | None]:
    """The pipeline's metrics (None where undefined: strict JSON)."""
    pred = (proba >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else None,
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(y, proba, pos_label=1)),
    }


def time_folds(ts: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds over distinct timestamps (rows of one timestamp stay together)."""
    unique = np.unique(ts)
    folds = []
    for fit_idx, val_idx in TimeSeriesSplit(n_splits=n_splits).split(unique):
        fit = np.flatnonzero(ts <= unique[fit_idx[-1]])
        val = np.flatnonzero((ts >= unique[val_idx[0]]) & (ts <= unique[val_idx[-1]]))
        folds.append((fit, val))
    return folds


def main(params_path: str, out_dir: str) -> dict[str, Any]:
    p = yaml.safe_load(Path(params_path).read_text())
    data, train, threshold = p["data"], p["train"], p.get("evaluation", {}).get("threshold", 0.5)
    ts_col = data["timestamp_column"]
    marks = {"imports": time.perf_counter() - T_START}

    began = time.perf_counter()
    frame = pd.read_parquet(data["source"])
    frame = frame.sort_values([ts_col, *data.get("entity_columns", [])], kind="stable")
    frame = frame.reset_index(drop=True)
    marks["read"] = time.perf_counter() - began

    began = time.perf_counter()
    y_all = label(frame, p["target"])
    keep = y_all.notna().to_numpy()
    frame = frame.loc[keep].reset_index(drop=True)
    X, y = features(frame, p), y_all[keep].astype(int).to_numpy()
    ts = frame[ts_col].to_numpy()
    segs = segments(frame, p.get("evaluation", {}).get("segments", []), frame[ts_col])
    holdout = ts > ts.max() - np.timedelta64(train["holdout_days"], "D")
    X_fit, y_fit, ts_fit = X.loc[~holdout], y[~holdout], ts[~holdout]
    categorical = list(p["features"].get("categorical", []))
    numerical = [c for c in X.columns if c not in categorical]
    marks["features"] = time.perf_counter() - began

    began = time.perf_counter()
    n_splits = min(train["cv_splits"], max(2, len(X_fit) // MIN_TRAIN_ROWS - 1))
    folds = []
    for fit, val in time_folds(ts_fit, n_splits):
        if len(np.unique(y_fit[fit])) < 2 or len(val) == 0:
            continue
        est = model(train, numerical, categorical).fit(X_fit.iloc[fit], y_fit[fit])
        folds.append(score(y_fit[val], est.predict_proba(X_fit.iloc[val])[:, 1], threshold))
    cv = {
        f"cv_{k}": float(np.mean(values))
        for k in (folds[0] if folds else {})
        if (values := [v for f in folds if (v := f[k]) is not None])
    }
    marks["cv"] = time.perf_counter() - began

    began = time.perf_counter()
    est = model(train, numerical, categorical).fit(X_fit, y_fit)
    marks["fit"] = time.perf_counter() - began

    began = time.perf_counter()
    proba, y_ho = est.predict_proba(X.loc[holdout])[:, 1], y[holdout]
    by_segment = {
        f"{name}/{value}": score(
            y_ho[values[holdout] == value], proba[values[holdout] == value], threshold
        )
        for name, values in segs.items()
        for value in sorted(set(values[holdout]))
    }
    metrics = score(y_ho, proba, threshold)
    marks["evaluate"] = time.perf_counter() - began

    began = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "model.pkl").open("wb") as fh:
        pickle.dump(est, fh)
    marks["save"] = time.perf_counter() - began
    result = {
        "rows": int(keep.size),
        "labelled": int(keep.sum()),
        "n_train": int((~holdout).sum()),
        "n_holdout": int(holdout.sum()),
        "holdout": metrics,
        "cv": cv,
        "segments": by_segment,
        "seconds": marks,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bare_train.py PARAMS.yaml OUT_DIR")
    main(*sys.argv[1:])
