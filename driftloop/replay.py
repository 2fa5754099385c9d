"""Replay history as it would have arrived, and compare retraining strategies honestly.

The drift-triggered strategy is the real loop (ingest, monitor, retrain, promote through the
flows); this module holds the plain parts: the workspace, the step calendar, the two baselines
(a static first model, and scheduled retraining that always deploys) and the report.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from driftloop import baselines, datastore, jsonio, labels, versioning, windows
from driftloop.config import Params, Settings
from driftloop.training import score

INITIAL_TRIGGER = "replay: initial model"
FIT_WORKERS = 2  # the baselines' direct fits at once (threads)
REALISED_CONFIDENCE = 0.95  # of the interval around each step's realised ROC AUC


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
    realised_roc_auc_low: float | None = None  # its 95 % DeLong interval (sampling error)
    realised_roc_auc_high: float | None = None
    quarantined: str = ""  # what the step's ingest quarantined (the replay went on without it)


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
    versioning.set_up(root, root / ".driftloop" / "dvc-remote", own=True)
    return Settings(
        project=root,
        home=root / ".driftloop",
        tracking_uri=settings.mlflow_uri,
        DRIFTLOOP_PARAMS=root / "params.yaml",
    )


# -- predictions of each strategy ---------------------------------------------------------------


def load_history(params: Params, ws: Settings) -> baselines.History:
    """Every accepted row with every label that ever arrived, and when each label arrived:
    what the strategies are judged on, and what the baselines are fitted from."""
    frame = datastore.load_accepted(ws.path(params.data.raw_dir), params)
    label_times = None
    column, join = params.target.column, params.join_column
    if column is not None and join is not None:
        known = labels.first_known(labels.known_labels(params, ws, None, feedback=False), None)
        own = frame[column].notna() if column in frame else pd.Series(False, index=frame.index)
        frame = labels.attach(frame, known, params)
        wanted, have = labels.comparable(frame[join], known[labels.KEY])
        arrived = pd.Series(known[datastore.LABEL_TIME].to_numpy(), index=have.to_numpy())
        label_times = pd.Series(wanted.map(arrived).to_numpy(), index=frame.index).where(~own)
    return baselines.history(frame, params, label_times)


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


def plan_of(params: Params, steps: list[Step]) -> baselines.Plan:
    """The baselines' settings for a replay of `steps` (params: the replay workspace's)."""
    spec, retrain = params.replay, params.retrain
    persistence = spec.persistence == "last_label" or (
        spec.persistence == "auto" and params.target.forecast is not None
    )
    first = dt.date.fromisoformat(spec.initial_until)
    calendar = [dt.date.fromisoformat(s.as_of) for s in steps]
    return baselines.Plan(
        first=first,
        calendar=calendar,
        loop_retrains=[dt.date.fromisoformat(s.as_of) for s in steps if s.retrained],
        window=windows.of(retrain),
        holdout_days=params.train.holdout_days,
        refit=params.train.refit,  # as a gate winner, the candidate is refitted on its window
        threshold=params.evaluation.threshold,
        cadences=baselines.distinct_cadences(calendar, first, list(spec.cadences)),
        random_seeds=spec.random_seeds,
        persistence=persistence,
        windows=windows.compared(retrain, spec.windows),
        schedule_every_days=retrain.schedule_every_days,
        workers=min(FIT_WORKERS, os.cpu_count() or 1),
    )


def compare(
    params: Params, ws: Settings, steps: list[Step], loop_models: dict[str, Any]
) -> dict[str, Any]:
    """The loop, its first model and every baseline on the same rows (after the first model).

    The loop's figures are its champions' predictions (the champion live when each batch
    arrived predicts that batch); the baselines are fitted directly (see `baselines`).
    """
    if not steps:
        return {}
    started = time.monotonic()
    hist = load_history(params, ws)
    extra = {
        "retrains": sum(s.retrained for s in steps),
        "promotions": sum(s.promoted for s in steps),
    }
    comparison = baselines.compare(
        hist,
        plan_of(params, steps),
        params.train,
        list(params.features.categorical),
        [str(s.champion) for s in steps],
        loop_models.__getitem__,
        extra,
    )
    comparison[baselines.LOOP]["baseline_seconds"] = round(time.monotonic() - started, 1)
    return comparison


def realised_by_step(
    params: Params, ws: Settings, steps: list[Step], loop_models: dict[str, Any]
) -> tuple[list[Step], dict[str, Any]]:
    """Each step's monitoring window scored, once every label has landed, by the champion that
    was monitored then, with its DeLong interval; and how close the step's CBPE estimate came
    (share within +-0.03, and inside the realised value's interval)."""
    from driftloop.estimation import estimation_error
    from driftloop.performance import delong_interval
    from driftloop.training import predict_proba, threshold_of

    hist = load_history(params, ws)
    times = pd.Series(hist.times)
    days = params.monitor.window_days
    out = []
    for step in steps:
        end = pd.Timestamp(dt.date.fromisoformat(step.as_of)) + pd.Timedelta(days=1)
        inside = (times >= end - pd.Timedelta(days=days)) & (times < end)
        rows = np.flatnonzero(inside.to_numpy() & ~np.isnan(hist.y))
        if not len(rows) or str(step.champion) not in loop_models:
            out.append(step)
            continue
        model = loop_models[str(step.champion)]
        proba = predict_proba(model, hist.X.iloc[rows])
        cut = threshold_of(model, params.evaluation.threshold)
        y = hist.y[rows].astype(int)
        metrics = score(y, proba, cut)
        _, low, high = delong_interval(y, proba, REALISED_CONFIDENCE)
        out.append(
            replace(
                step,
                realised_roc_auc=_finite(metrics["roc_auc"]),
                realised_accuracy=_finite(metrics["accuracy"]),
                realised_roc_auc_low=_finite(low),
                realised_roc_auc_high=_finite(high),
            )
        )
    summary = {
        "roc_auc": estimation_error(
            [s.estimated_roc_auc for s in out],
            [s.realised_roc_auc for s in out],
            "roc_auc",
            intervals=[(s.realised_roc_auc_low, s.realised_roc_auc_high) for s in out],
        ).to_dict(),
        "accuracy": estimation_error(
            [s.estimated_accuracy for s in out], [s.realised_accuracy for s in out], "accuracy"
        ).to_dict(),
    }
    return out, summary


# -- report -------------------------------------------------------------------------------------


def write_report(
    out_dir: Path, steps: list[Step], comparison: dict[str, Any], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """report.json and report.html: the verdict, every strategy and baseline, ROC AUC and log loss
    against retrains, the drift timeline and monthly ROC AUC."""
    out_dir.mkdir(parents=True, exist_ok=True)
    judged = baselines.verdict(comparison)
    payload = {
        "meta": meta,
        "verdict": judged,
        "comparison": comparison,
        "timeline": [asdict(s) for s in steps],
    }
    json_path = out_dir / "report.json"
    jsonio.write_json(json_path, payload)
    html_path = out_dir / "report.html"
    html_path.write_text(_html(steps, comparison, meta, judged))
    return json_path, html_path


_KIND_NAMES = {
    "loop": "the loop",
    "no_model": "no model",
    "reference": "reference model",
    "cadence": "fixed schedule",
    "random": "random trigger",
    "window": "retrain window",
}
_SYMBOLS = {"cadence": "circle", "reference": "diamond", "window": "triangle-up", "loop": "star"}


def _html(
    steps: list[Step],
    comparison: dict[str, Any],
    meta: dict[str, Any],
    judged: dict[str, Any] | None = None,
) -> str:
    judged = judged or baselines.verdict(comparison)
    title = str(meta.get("title", "driftloop replay"))
    notes = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in meta.items()
    )
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in judged["sentences"])
    charts = (
        _retrains_figure(comparison).to_html(full_html=False, include_plotlyjs=True)
        + _timeline_figure(steps, comparison).to_html(full_html=False, include_plotlyjs=False)
        if comparison
        else ""
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='verdict'>{html.escape(judged['headline'])}</p>"
        f"<ul class='sentences'>{sentences}</ul>"
        f"<h2>Every strategy and baseline, on the same {_judged_rows(comparison)} rows</h2>"
        f"{_table(comparison)}<p class='note'>{html.escape(_NOTE)}</p>"
        f"{charts}{_quarantined(steps)}<h2>Run</h2><ul>{notes}</ul></body></html>"
    )


def _quarantined(steps: list[Step]) -> str:
    """The steps whose batches the gate refused (kept in quarantine; the replay went on)."""
    refused = [s for s in steps if s.quarantined]
    if not refused:
        return ""
    items = "".join(
        f"<li><b>{html.escape(s.as_of)}</b>: {html.escape(s.quarantined)}</li>" for s in refused
    )
    return (
        f"<h2>Quarantined batches ({len(refused)} of {len(steps)} steps)</h2>"
        "<p class='note'>The gate refused these batches; each step went on with the data "
        f"accepted so far, as the running loop does.</p><ul>{items}</ul>"
    )


_NOTE = (
    "The loop's figures are its champions' predictions, each batch predicted by the champion "
    "live when it arrived. Baselines are fitted directly with scikit-learn (never registered, "
    "never through the gates) on the rows the loop's candidate would learn from at the same "
    "day: the retrain window, labels known that day, less the gate's holdout. Cadences, random "
    "triggers and windows refit the loop's own candidate model; the reference model is a "
    "regularised logistic regression (scaled, one-hot). Base rate and persistence use the first "
    "model's training rows for their constants. Random trigger: mean +- standard deviation over "
    "seeds [10th-90th percentile]."
)


def _judged_rows(comparison: dict[str, Any]) -> str:
    counts = {r.get("n_predictions") for r in comparison.values()}
    return str(counts.pop()) if len(counts) == 1 else "judged"


def _table(comparison: dict[str, Any]) -> str:
    head = (
        "<tr><th>strategy</th><th>kind</th><th>ROC AUC</th><th>log loss</th><th>accuracy</th>"
        "<th>retrains</th><th>promotions</th><th>loop beat it</th></tr>"
    )
    beaten = baselines.verdict(comparison).get("beaten", {})
    rows = []
    for key, r in comparison.items():
        spread = key == "random"
        cells = [
            _spread(r, "roc_auc") if spread else _num(r.get("roc_auc")),
            _spread(r, "log_loss") if spread else _num(r.get("log_loss")),
            _num(r.get("accuracy")),
        ]
        won = beaten.get(key)
        mark = "" if won is None else ("yes" if won else "no")
        css = " class='loop'" if key == baselines.LOOP else ""
        promotions = r.get("promotions")
        rows.append(
            f"<tr{css}><td>{html.escape(str(r.get('label', key)))}</td>"
            f"<td>{_KIND_NAMES.get(r.get('kind', ''), '')}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td>{r.get('retrains', '-')}</td>"
            f"<td>{'-' if promotions is None else promotions}</td><td>{mark}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _spread(result: dict[str, Any], name: str) -> str:
    return (
        f"{_num(result.get(name))} +- {_num(result.get(name + '_sd'))} "
        f"[{_num(result.get(name + '_p10'))}-{_num(result.get(name + '_p90'))}]"
    )


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


def _retrains_figure(comparison: dict[str, Any]) -> Any:
    """ROC AUC and log loss against the number of retrains, one marker per strategy."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("ROC AUC (higher is better)", "log loss (lower is better)"),
        horizontal_spacing=0.08,
    )
    most = max([int(r.get("retrains") or 0) for r in comparison.values()] + [1])
    for col, name in ((1, "roc_auc"), (2, "log_loss")):
        first = col == 1
        cadences = [r for r in comparison.values() if r.get("kind") == "cadence"]
        fig.add_trace(
            go.Scatter(
                x=[r["retrains"] for r in cadences],
                y=[_finite(r.get(name)) for r in cadences],
                text=[f"{r['every_days']}d" for r in cadences],
                mode="lines+markers+text",
                textposition="top center",
                name="fixed cadences",
                legendgroup="cadence",
                showlegend=first,
                line={"color": "#888"},
            ),
            row=1,
            col=col,
        )
        for key, r in comparison.items():
            kind = r.get("kind")
            if kind == "cadence":
                continue
            label = str(r.get("label", key))
            common = {"name": label, "legendgroup": key, "showlegend": first}
            if kind == "no_model" or key == "static":
                value = _finite(r.get(name))
                dash = "dot" if key == "static" else "dash"
                fig.add_trace(
                    go.Scatter(
                        x=[0, most],
                        y=[value, value],
                        mode="lines",
                        line={"dash": dash},
                        **common,
                    ),
                    row=1,
                    col=col,
                )
            elif kind == "random":
                fig.add_trace(
                    go.Scatter(
                        x=[r["retrains"]],
                        y=[_finite(r.get(name))],
                        error_y={"type": "data", "array": [_finite(r.get(name + "_sd")) or 0.0]},
                        mode="markers",
                        marker={"symbol": "x", "size": 12},
                        **common,
                    ),
                    row=1,
                    col=col,
                )
            else:
                fig.add_trace(
                    go.Scatter(
                        x=[r.get("retrains")],
                        y=[_finite(r.get(name))],
                        mode="markers",
                        marker={
                            "symbol": _SYMBOLS.get(str(kind), "circle"),
                            "size": 18 if key == baselines.LOOP else 11,
                        },
                        **common,
                    ),
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text="retrains", row=1, col=col)
    fig.update_layout(
        height=560,
        title="Accuracy of each strategy against what it cost (retrains)",
        legend={"orientation": "h", "y": -0.18},
        margin={"t": 80},
    )
    return fig


def _timeline_figure(steps: list[Step], comparison: dict[str, Any]) -> Any:
    """Drift timeline with retrains and promotions, and monthly ROC AUC of the main strategies."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        subplot_titles=(
            "Drifted share of monitored features per step (retrains and promotions marked)",
            "Monthly ROC AUC of each strategy's predictions (click the legend for the others)",
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
    shown = {baselines.LOOP, "static", "persistence", "reference", _best_cadence(comparison)}
    for name, result in comparison.items():
        months = list(result.get("monthly", {}))
        fig.add_trace(
            go.Scatter(
                x=months,
                y=[_finite(result["monthly"][m]["roc_auc"]) for m in months],
                mode="lines",
                name=f"{result.get('label', name)}",
                visible=True if name in shown else "legendonly",
            ),
            row=2,
            col=1,
        )
    fig.update_layout(height=800)
    return fig


def _best_cadence(comparison: dict[str, Any]) -> str | None:
    scored = [
        (r["roc_auc"], k)
        for k, r in comparison.items()
        if r.get("kind") == "cadence" and _finite(r.get("roc_auc")) is not None
    ]
    return max(scored)[1] if scored else None


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}"
    "tr.loop{background:#eef5ff;font-weight:600}"
    ".verdict{font-size:1.2em;background:#f3f6fa;padding:.6em 1em;border-left:4px solid #36c}"
    ".sentences li{margin:.25em 0}.note{color:#555;font-size:.9em;max-width:1100px}"
)


def _num(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"
