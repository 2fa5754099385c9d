"""Replay history as it would have arrived, and compare retraining strategies honestly.

The drift-triggered strategy is the real loop (ingest, monitor, retrain, promote through the
flows); this module holds the plain parts: the workspace, the step calendar, the two baselines
(a static first model, and scheduled retraining that always deploys) and the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from driftloop import datastore, jsonio, labels, stages
from driftloop.config import Params, Settings
from driftloop.features import make_dataset
from driftloop.training import score, threshold_of

INITIAL_TRIGGER = "replay: initial model"


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
    n_labelled: int = 0
    n_pending: int = 0
    signals_fired: str = ""  # the retrain signals that fired (comma-separated)
    estimated_roc_auc: float | None = None  # CBPE at the step, before labels
    estimated_accuracy: float | None = None
    realised_roc_auc: float | None = None  # the same window once every label has landed
    realised_accuracy: float | None = None


def step_dates(params: Params) -> list[dt.date]:
    """The dates at which a new batch arrives: every step_days after initial_until up to end."""
    spec = params.replay
    start, end = dt.date.fromisoformat(spec.initial_until), dt.date.fromisoformat(spec.end)
    return step_calendar(start, end, spec.step_days)


def step_calendar(start: dt.date, end: dt.date, step_days: int) -> list[dt.date]:
    """Every step_days after start up to end, and end itself (the last step may be shorter)."""
    step = dt.timedelta(days=step_days)
    dates: list[dt.date] = []
    while start + step * (len(dates) + 1) <= end:
        dates.append(start + step * (len(dates) + 1))
    if not dates or dates[-1] < end:
        dates.append(end)
    return dates


def workspace_params(
    params: Params,
    stamp: str,
    changes: dict[str, dict[str, Any]] | None = None,
    project: Path | None = None,
) -> dict[str, Any]:
    """The replay's params: the project's, with its own registered model and experiments
    (`changes`: sections updated on top, e.g. {"promote": {"via": "experiment"}}); file and
    folder sources made absolute against the `project` they were written for."""
    raw = params.model_dump(mode="json")
    for section in ("data", "labels"):
        source = raw[section].get("source")
        if project is not None and source and source.get("kind") in ("file", "folder"):
            source["path"] = str((project / source["path"]).resolve())
    for section, values in (changes or {}).items():
        raw[section] = _merged(raw.get(section) or {}, values)
    raw["train"]["model_name"] = f"{params.train.model_name}_replay_{stamp}"
    raw["train"]["experiment"] = f"{params.train.experiment}-replay"
    raw["monitor"]["experiment"] = f"{params.monitor.experiment}-replay"
    raw["data"]["until"] = params.replay.initial_until
    raw["train"]["holdout_days"] = params.replay.holdout_days
    raw["monitor"]["html_report"] = "on_action"  # hundreds of steps: HTML where the loop acted
    return raw


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if nested else value
    return out


def prepare_workspace(
    params: Params,
    settings: Settings,
    name: str | None = None,
    changes: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """A new project folder (git + DVC + local remote) for one replay; MLflow store shared."""
    from dvc.repo import Repo

    stamp = name or dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = settings.state_dir / "replay" / stamp
    root.mkdir(parents=True, exist_ok=False)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            workspace_params(params, stamp, changes, settings.project),
            sort_keys=False,
            allow_unicode=True,
        )
    )
    with contextlib.redirect_stdout(sys.stderr):  # "Initialized DVC repository." is chatter
        repo = Repo.init(str(root))
    with contextlib.closing(repo), repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["remote"] = "local"
        conf["remote"]["local"] = {"url": str(root / ".driftloop" / "dvc-remote")}
    return Settings(
        project=root,
        home=root / ".driftloop",
        tracking_uri=settings.mlflow_uri,
        DRIFTLOOP_PARAMS=root / "params.yaml",
    )


# -- predictions of each strategy ---------------------------------------------------------------


def all_rows(params: Params, ws: Settings) -> pd.DataFrame:
    """Every accepted row with every label that ever arrived: what the strategies are judged on."""
    frame = datastore.load_accepted(ws.path(params.data.raw_dir), params)
    if params.target.column is not None:
        known = labels.known_labels(params, ws, None, feedback=False)
        frame = labels.attach(frame, known, params)
    return frame


def _features(params: Params, frame: pd.DataFrame) -> pd.DataFrame:
    """Model inputs for every row (backward-looking, same as computing them step by step)."""
    data = make_dataset(frame, params, labelled_only=False)
    out = data.X.copy()
    out["__time"] = data.timestamps.to_numpy()
    out["__label"] = data.y.where(data.y >= 0).to_numpy()
    return out


def _assign(times: pd.Series, starts: list[dt.date]) -> np.ndarray:
    """Index of the latest start <= each row's day (which model was live then)."""
    edges = np.array([np.datetime64(s) for s in starts])
    return np.searchsorted(edges, times.to_numpy().astype("datetime64[D]"), side="right") - 1


def predict_with(models: list[Any], starts: list[dt.date], feats: pd.DataFrame) -> np.ndarray:
    """Predicted probability of each row by the model live on that day."""
    which = _assign(feats["__time"], starts)
    proba = np.full(len(feats), np.nan)
    columns = [c for c in feats.columns if not c.startswith("__")]
    for i, model in enumerate(models):
        mask = which == i
        if mask.any():
            proba[mask] = model.predict_proba(feats.loc[mask, columns])[:, 1]
    return proba


def thresholds_with(
    models: list[Any], starts: list[dt.date], feats: pd.DataFrame, default: float
) -> np.ndarray:
    """The decision threshold of the model live on each row's day (its own, else `default`)."""
    which = _assign(feats["__time"], starts)
    cuts = np.array([threshold_of(m, default) for m in models] + [default])
    return cuts[np.where(which >= 0, which, len(models))]


def scheduled_models(
    params: Params, ws: Settings, last: dt.date
) -> tuple[list[Any], list[dt.date]]:
    """Retrain every `retrain.schedule_every_days` on the retrain window and always deploy.

    Each model is fitted exactly as a retrain's candidate is (same window, labels known then,
    same training part, same model selection, calibration and threshold), without the holdout
    scoring that only the promotion gate reads.
    """
    first = dt.date.fromisoformat(params.replay.initial_until)
    every = dt.timedelta(days=params.retrain.schedule_every_days)
    starts = [first]
    while starts[-1] + every < last:
        starts.append(starts[-1] + every)
    models = []
    for i, start in enumerate(starts):
        window = None if i == 0 else params.retrain.window_days
        data = stages.load_training_data(params, ws, window, start.isoformat())
        split = stages.build_features(params, data)
        model = stages.train(params, split).estimator
        if params.train.refit:  # always deployed: refitted on the whole window, as a winner is
            model = stages.refit_on_window(model, make_dataset(data.frame, params))
        models.append(model)
    return models, starts


def strategy_metrics(
    frame: pd.DataFrame, proba: np.ndarray, threshold: float | np.ndarray = 0.5
) -> dict[str, Any]:
    """Accuracy and ROC AUC overall and per month over all labelled predictions (labels at
    `threshold`: one, or each row's model's own).

    `frame` has the row time in its first column and the label (NaN: never arrived) in `label`.
    """
    times = frame.iloc[:, 0]
    ok = frame["label"].notna().to_numpy() & ~np.isnan(proba)
    y, p = frame["label"].to_numpy()[ok].astype(int), proba[ok]
    cut = np.broadcast_to(np.asarray(threshold, dtype=float), proba.shape)[ok]
    months = pd.to_datetime(times).dt.strftime("%Y-%m").to_numpy()[ok]
    overall = score(y, p, cut)
    monthly = {
        m: {
            k: score(y[months == m], p[months == m], cut[months == m])[k]
            for k in ("accuracy", "roc_auc")
        }
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
    """Static vs scheduled vs drift-triggered on the same rows (after the first model)."""
    first = dt.date.fromisoformat(params.replay.initial_until)
    feats = _features(params, all_rows(params, ws))
    feats = feats[feats["__time"] >= pd.Timestamp(first + dt.timedelta(days=1))]
    feats = feats.reset_index(drop=True)
    last = dt.date.fromisoformat(steps[-1].as_of) if steps else first
    # The loop: the champion live when each batch arrived predicts that batch.
    loop_starts = [dt.date.fromisoformat(s.batch_start) for s in steps]
    live = [loop_models[str(s.champion)] for s in steps]
    loop = predict_with(live, loop_starts, feats)
    static_version = steps[0].champion if steps else None
    static = predict_with([loop_models[str(static_version)]], [first], feats)
    sched_models, sched_starts = scheduled_models(params, ws, last)
    sched_days = [d + dt.timedelta(days=1) for d in sched_starts]
    scheduled = predict_with(sched_models, sched_days, feats)
    judged = pd.DataFrame({"time": feats["__time"], "label": feats["__label"]})
    default = params.evaluation.threshold
    static_cut = thresholds_with([loop_models[str(static_version)]], [first], feats, default)
    return {
        "static": {**strategy_metrics(judged, static, static_cut), "retrains": 0},
        "scheduled": {
            **strategy_metrics(
                judged, scheduled, thresholds_with(sched_models, sched_days, feats, default)
            ),
            "retrains": len(sched_models) - 1,
        },
        "drift_triggered": {
            **strategy_metrics(judged, loop, thresholds_with(live, loop_starts, feats, default)),
            "retrains": sum(s.retrained for s in steps),
            "promotions": sum(s.promoted for s in steps),
        },
    }


def realised_by_step(
    params: Params, ws: Settings, steps: list[Step], loop_models: dict[str, Any]
) -> tuple[list[Step], dict[str, Any]]:
    """Each step's monitoring window scored, once every label has landed, by the champion that
    was monitored then; and how close the step's CBPE estimate came (share within +-0.03)."""
    from driftloop.estimation import estimation_error

    feats = _features(params, all_rows(params, ws))
    columns = [c for c in feats.columns if not c.startswith("__")]
    days = params.monitor.window_days
    out = []
    for step in steps:
        end = pd.Timestamp(dt.date.fromisoformat(step.as_of)) + pd.Timedelta(days=1)
        inside = (feats["__time"] >= end - pd.Timedelta(days=days)) & (feats["__time"] < end)
        rows = feats[inside & feats["__label"].notna()]
        if rows.empty or str(step.champion) not in loop_models:
            out.append(step)
            continue
        proba = loop_models[str(step.champion)].predict_proba(rows[columns])[:, 1]
        metrics = score(rows["__label"].to_numpy(dtype=int), proba, params.evaluation.threshold)
        out.append(
            replace(
                step,
                realised_roc_auc=_finite(metrics["roc_auc"]),
                realised_accuracy=_finite(metrics["accuracy"]),
            )
        )
    summary = {
        metric: estimation_error(
            [getattr(s, f"estimated_{metric}") for s in out],
            [getattr(s, f"realised_{metric}") for s in out],
            metric,
        ).to_dict()
        for metric in ("roc_auc", "accuracy")
    }
    return out, summary


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


# -- report -------------------------------------------------------------------------------------


def write_report(
    out_dir: Path, steps: list[Step], comparison: dict[str, Any], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """report.json and report.html (plots: drift timeline, monthly ROC AUC per strategy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "comparison": comparison, "timeline": [asdict(s) for s in steps]}
    json_path = out_dir / "report.json"
    jsonio.write_json(json_path, payload)
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
            "Monthly ROC AUC of each strategy's predictions (the promotion metric)",
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
                y=[result["monthly"][m]["roc_auc"] for m in months],
                mode="lines",
                name=f"{name} ROC AUC",
            ),
            row=2,
            col=1,
        )
    title = str(meta.get("title", "driftloop replay"))
    fig.update_layout(height=800)
    rows = "".join(
        f"<tr><td>{name}</td><td>{r['n_predictions']}</td><td>{_num(r['accuracy'])}</td>"
        f"<td>{_num(r['roc_auc'])}</td><td>{r['retrains']}</td>"
        f"<td>{r.get('promotions', '-')}</td></tr>"
        for name, r in comparison.items()
    )
    table = (
        "<table><tr><th>strategy</th><th>predictions judged</th><th>accuracy</th>"
        f"<th>ROC AUC</th><th>retrains</th><th>promotions</th></tr>{rows}</table>"
    )
    notes = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in meta.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='verdict'>{html.escape(_verdict(comparison))}</p>"
        f"{table}"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + f"<h2>Run</h2><ul>{notes}</ul></body></html>"
    )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}"
    ".verdict{font-size:1.2em;background:#f3f6fa;padding:.6em 1em;border-left:4px solid #36c}"
)


def _num(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _verdict(comparison: dict[str, Any]) -> str:
    """One sentence: which strategy predicted best, and at how many retrains."""
    ranked = sorted(
        comparison.items(),
        key=lambda item: -(item[1]["roc_auc"] if item[1]["roc_auc"] == item[1]["roc_auc"] else 0),
    )
    best, result = ranked[0]
    others = ", ".join(f"{n} {_num(r['roc_auc'])}" for n, r in ranked[1:])
    return (
        f"Best ROC AUC: {best.replace('_', '-')} {_num(result['roc_auc'])} with "
        f"{result['retrains']} retrains (vs {others})."
    )
