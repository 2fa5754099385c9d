"""Replay history as it would have arrived, and compare retraining strategies honestly.

The drift-triggered strategy is the real loop (ingest, monitor, retrain, promote through the
flows); this module holds the plain parts: the workspace, the step calendar, the two baselines
(a static first model, and scheduled retraining that always deploys) and the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from driftloop import datastore, pipeline
from driftloop.config import Params, Settings
from driftloop.features import make_dataset
from driftloop.training import score

ENV_KEYS = ("DRIFTLOOP_PROJECT", "DRIFTLOOP_HOME", "DRIFTLOOP_TRACKING_URI")


@dataclass(frozen=True)
class Step:
    """One replay step: the new batch's days and who was champion when they were predicted."""

    as_of: str
    batch_start: str
    champion: str | None
    action: str
    reason: str
    drifted_share: float | None
    retrained: bool
    promoted: bool


def step_dates(params: Params) -> list[dt.date]:
    """The dates at which a new batch arrives: every step_days after initial_until up to end."""
    start = dt.date.fromisoformat(params.replay.initial_until)
    end = dt.date.fromisoformat(params.replay.end)
    step = dt.timedelta(days=params.replay.step_days)
    dates: list[dt.date] = []
    while start + step * (len(dates) + 1) <= end:
        dates.append(start + step * (len(dates) + 1))
    if not dates or dates[-1] < end:
        dates.append(end)
    return dates


def workspace_params(params: Params, stamp: str) -> dict[str, Any]:
    """The replay's params: the project's, with its own registered model and experiments."""
    raw = params.model_dump(mode="json")
    raw["train"]["model_name"] = f"{params.train.model_name}_replay_{stamp}"
    raw["train"]["experiment"] = f"{params.train.experiment}-replay"
    raw["monitor"]["experiment"] = f"{params.monitor.experiment}-replay"
    raw["data"]["until"] = params.replay.initial_until
    raw["train"]["holdout_days"] = params.replay.holdout_days
    raw["monitor"]["html_report"] = "on_action"  # ~190 steps: HTML where the loop acted
    return raw


def prepare_workspace(params: Params, settings: Settings, name: str | None = None) -> Settings:
    """A new project folder (git + DVC + local remote) for one replay; MLflow store shared."""
    from dvc.repo import Repo

    stamp = name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = settings.state_dir / "replay" / stamp
    root.mkdir(parents=True, exist_ok=False)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text(
        yaml.safe_dump(workspace_params(params, stamp), sort_keys=False)
    )
    with contextlib.closing(Repo.init(str(root))) as repo, repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["remote"] = "local"
        conf["remote"]["local"] = {"url": str(root / ".driftloop" / "dvc-remote")}
    return Settings(project=root, home=root / ".driftloop", tracking_uri=settings.mlflow_uri)


@contextlib.contextmanager
def workspace_env(ws: Settings) -> Iterator[None]:
    """Point Settings() at the workspace for the flows run inside (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ["DRIFTLOOP_PROJECT"] = str(ws.project)
    os.environ["DRIFTLOOP_HOME"] = str(ws.state_dir)
    os.environ["DRIFTLOOP_TRACKING_URI"] = ws.mlflow_uri
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- predictions of each strategy ---------------------------------------------------------------


def _features(params: Params, frame: pd.DataFrame) -> pd.DataFrame:
    """Backward-looking features for every day (same as computing them day by day)."""
    data = make_dataset(frame, params, labelled_only=False)
    out = data.X.copy()
    out["date"] = data.dates.to_numpy()
    out["label"] = data.y.where(data.y >= 0).to_numpy()
    return out


def _assign(dates: pd.Series, starts: list[dt.date]) -> np.ndarray:
    """Index of the latest start <= each date (which model was live that day)."""
    edges = np.array([np.datetime64(s) for s in starts])
    return np.searchsorted(edges, dates.to_numpy().astype("datetime64[D]"), side="right") - 1


def predict_with(models: list[Any], starts: list[dt.date], feats: pd.DataFrame) -> np.ndarray:
    """Predicted probability of each row by the model live on that day."""
    which = _assign(feats["date"], starts)
    proba = np.full(len(feats), np.nan)
    columns = [c for c in feats.columns if c not in ("date", "label")]
    for i, model in enumerate(models):
        mask = which == i
        if mask.any():
            proba[mask] = model.predict_proba(feats.loc[mask, columns])[:, 1]
    return proba


def scheduled_models(
    params: Params, ws: Settings, last: dt.date
) -> tuple[list[Any], list[dt.date]]:
    """Retrain every `retrain.schedule_every_days` on the retrain window and always deploy.

    Each model is fitted exactly as a retrain's candidate is (same window, same training part),
    without the cross-validation and holdout scoring that only the promotion gate reads.
    """
    first = dt.date.fromisoformat(params.replay.initial_until)
    every = dt.timedelta(days=params.retrain.schedule_every_days)
    starts = [first]
    while starts[-1] + every < last:
        starts.append(starts[-1] + every)
    models = []
    for i, start in enumerate(starts):
        window = None if i == 0 else params.retrain.window_days
        data = pipeline.training_data(params, ws, window_days=window, until=start.isoformat())
        models.append(pipeline.train_candidate(params, data, cv=False)[0])
    return models, starts


def strategy_metrics(frame: pd.DataFrame, proba: np.ndarray) -> dict[str, Any]:
    """Accuracy and ROC AUC overall and per month over all labelled predictions."""
    ok = frame["label"].notna().to_numpy() & ~np.isnan(proba)
    y, p = frame["label"].to_numpy()[ok].astype(int), proba[ok]
    months = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m").to_numpy()[ok]
    overall = score(y, p)
    monthly = {
        m: {k: score(y[months == m], p[months == m])[k] for k in ("accuracy", "roc_auc")}
        for m in sorted(set(months))
    }
    return {
        "n_predictions": int(ok.sum()),
        "accuracy": overall["accuracy"],
        "roc_auc": overall["roc_auc"],
        "monthly": monthly,
    }


def compare(
    params: Params, ws: Settings, steps: list[Step], loop_models: dict[str, Any]
) -> dict[str, Any]:
    """Static vs scheduled vs drift-triggered on the same days (after the first model)."""
    first = dt.date.fromisoformat(params.replay.initial_until)
    frame = datastore.load_accepted(ws.path(params.data.raw_dir), params)
    feats = _features(params, frame)
    feats = feats[feats["date"] > pd.Timestamp(first)].reset_index(drop=True)
    last = dt.date.fromisoformat(steps[-1].as_of) if steps else first
    static_versions = [steps[0].champion] if steps else []
    # The loop: the champion live when each batch arrived predicts that batch.
    loop_starts = [dt.date.fromisoformat(s.batch_start) for s in steps]
    loop = predict_with([loop_models[str(s.champion)] for s in steps], loop_starts, feats)
    static = predict_with([loop_models[str(v)] for v in static_versions], [first], feats)
    sched_models, sched_starts = scheduled_models(params, ws, last)
    scheduled = predict_with(sched_models, [d + dt.timedelta(days=1) for d in sched_starts], feats)
    retrains = sum(s.retrained for s in steps)
    return {
        "static": {**strategy_metrics(feats, static), "retrains": 0},
        "scheduled": {**strategy_metrics(feats, scheduled), "retrains": len(sched_models) - 1},
        "drift_triggered": {
            **strategy_metrics(feats, loop),
            "retrains": retrains,
            "promotions": sum(s.promoted for s in steps),
        },
    }


# -- report -------------------------------------------------------------------------------------


def write_report(
    out_dir: Path, steps: list[Step], comparison: dict[str, Any], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """reports/replay/report.json and report.html (plots: drift timeline, monthly accuracy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "comparison": comparison, "timeline": [s.__dict__ for s in steps]}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(steps, comparison, meta))
    return json_path, html_path


def _html(steps: list[Step], comparison: dict[str, Any], meta: dict[str, Any]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        subplot_titles=(
            "Drifted share of monitored features per step (retrains and promotions marked)",
            "Monthly accuracy of each strategy's predictions",
        ),
        vertical_spacing=0.12,
    )
    x = [s.as_of for s in steps]
    fig.add_trace(
        go.Scatter(
            x=x, y=[s.drifted_share for s in steps], mode="lines+markers", name="drifted share"
        ),
        row=1,
        col=1,
    )
    for label, pick, symbol in (
        ("retrain", "retrained", "triangle-up"),
        ("promotion", "promoted", "star"),
    ):
        chosen = [s for s in steps if getattr(s, pick)]
        fig.add_trace(
            go.Scatter(
                x=[s.as_of for s in chosen],
                y=[s.drifted_share or 0 for s in chosen],
                mode="markers",
                marker={"symbol": symbol, "size": 14},
                name=label,
            ),
            row=1,
            col=1,
        )
    for name, result in comparison.items():
        months = list(result["monthly"])
        fig.add_trace(
            go.Scatter(
                x=months,
                y=[result["monthly"][m]["accuracy"] for m in months],
                mode="lines",
                name=f"{name} accuracy",
            ),
            row=2,
            col=1,
        )
    fig.update_layout(height=800, title="driftloop replay: Seattle 2012-2015")
    rows = "".join(
        f"<tr><td>{name}</td><td>{r['n_predictions']}</td><td>{r['accuracy']:.4f}</td>"
        f"<td>{r['roc_auc']:.4f}</td><td>{r['retrains']}</td>"
        f"<td>{r.get('promotions', '-')}</td></tr>"
        for name, r in comparison.items()
    )
    table = (
        "<table border=1 cellpadding=4><tr><th>strategy</th><th>predictions</th><th>accuracy</th>"
        f"<th>ROC AUC</th><th>retrains</th><th>promotions</th></tr>{rows}</table>"
    )
    notes = "".join(f"<li>{k}: {v}</li>" for k, v in meta.items())
    return (
        "<html><head><meta charset='utf-8'><title>driftloop replay</title></head><body>"
        f"<h1>driftloop replay</h1><ul>{notes}</ul>{table}"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + "</body></html>"
    )
