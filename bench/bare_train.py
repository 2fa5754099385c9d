"""The honest baseline: the training work of driftloop's pipeline in plain pandas + scikit-learn.

Same features (today's values, lags, rolling means, day-of-year sin/cos), same target (the target
column `horizon` rows ahead > threshold), same time split (the last `holdout_days` days are the
holdout), same time-series CV folds, same model and hyperparameters, same metrics (overall and per
season). No driftloop, Prefect, MLflow, Great Expectations or DVC: only pandas, scikit-learn (and
numpy under them) and the standard library. The settings come as a JSON file written by
bench_train.py from params.yaml, so this script needs no YAML parser.

    python bench/bare_train.py DATA.parquet CONFIG.json OUT_DIR

Writes OUT_DIR/model.pkl and OUT_DIR/result.json (metrics and phase timings).
"""

from __future__ import annotations

import json
import sys
import time

T_START = time.time()

import pickle  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import TimeSeriesSplit  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

SEASONS = ("winter", "spring", "summer", "autumn")
MIN_TRAIN_ROWS = 30


def features(frame: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    out = {}
    for col in cfg["numeric"]:
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        out[col] = values
        for lag in cfg["lags"]:
            out[f"{col}_lag{lag}"] = values.shift(lag)
        for window in cfg["rolling_windows"]:
            out[f"{col}_mean{window}"] = values.rolling(window, min_periods=1).mean()
    if cfg["season"]:
        day = frame[cfg["date_column"]].dt.dayofyear.astype(float)
        out["doy_sin"] = np.sin(2 * np.pi * day / 365.25)
        out["doy_cos"] = np.cos(2 * np.pi * day / 365.25)
    return pd.DataFrame(out, index=frame.index)


def estimator(cfg: dict):
    hp, seed = cfg["hyperparams"], cfg["seed"]
    if cfg["model"] == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(random_state=seed, **hp)
    if cfg["model"] == "random_forest":
        rf = RandomForestClassifier(random_state=seed, n_jobs=1, **hp)
        return make_pipeline(SimpleImputer(), rf)
    lr = LogisticRegression(random_state=seed, max_iter=1000, **hp)
    return make_pipeline(SimpleImputer(), StandardScaler(), lr)


def score(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    pred = (proba >= 0.5).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "log_loss": float(log_loss(y, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y, proba)),
    }


def main(data_path: str, config_path: str, out_dir: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    marks = {"start": T_START, "imported": time.time()}
    date_col = cfg["date_column"]

    frame = pd.read_parquet(data_path)
    frame[date_col] = pd.to_datetime(frame[date_col])
    frame = frame.sort_values(date_col).reset_index(drop=True)
    marks["read"] = time.time()

    X = features(frame, cfg)
    future = frame[cfg["target_column"]].shift(-cfg["horizon"])
    labelled = future.notna()
    X = X[labelled].reset_index(drop=True)
    y = (future[labelled] > cfg["threshold"]).astype(int).reset_index(drop=True)
    dates = frame.loc[labelled, date_col].reset_index(drop=True)
    season = ((dates.dt.month % 12) // 3).map(dict(enumerate(SEASONS)))
    holdout = (dates > dates.max() - pd.Timedelta(days=cfg["holdout_days"])).to_numpy()
    X_fit, y_fit = X[~holdout].reset_index(drop=True), y[~holdout].reset_index(drop=True)
    X_ho, y_ho, season_ho = X[holdout], y[holdout].to_numpy(), season[holdout].to_numpy()
    marks["features"] = time.time()

    n_splits = min(cfg["cv_splits"], max(2, len(X_fit) // MIN_TRAIN_ROWS - 1))
    folds = []
    for fit_idx, val_idx in TimeSeriesSplit(n_splits=n_splits).split(X_fit):
        if y_fit.iloc[fit_idx].nunique() < 2:
            continue
        model = estimator(cfg).fit(X_fit.iloc[fit_idx], y_fit.iloc[fit_idx])
        proba = model.predict_proba(X_fit.iloc[val_idx])[:, 1]
        folds.append(score(y_fit.iloc[val_idx].to_numpy(), proba))
    cv = {f"cv_{k}": float(np.nanmean([f[k] for f in folds])) for k in folds[0]} if folds else {}
    marks["cv"] = time.time()

    model = estimator(cfg).fit(X_fit, y_fit)
    marks["fit"] = time.time()

    proba = model.predict_proba(X_ho)[:, 1]
    segments = {
        str(s): score(y_ho[season_ho == s], proba[season_ho == s]) for s in sorted(set(season_ho))
    }
    metrics = score(y_ho, proba)
    marks["evaluate"] = time.time()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "model.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    marks["saved"] = marks["end"] = time.time()
    result = {
        "rows": len(frame),
        "n_train": len(X_fit),
        "n_holdout": int(holdout.sum()),
        "holdout": metrics,
        "segments": segments,
        "cv": cv,
        "marks": marks,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: bare_train.py DATA.parquet CONFIG.json OUT_DIR")
    main(*sys.argv[1:])
