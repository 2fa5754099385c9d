"""Monitoring: score the newest window with the champion and judge drift and performance.

The current data is what the champion served, when the prediction service logged it for the
window (online: the served inputs and probabilities, labelled by feedback), else the accepted
data of the window scored with the champion. The reference is the champion's own training data,
found through lineage (the training window recorded on the model version), never a copy kept by
hand. The signals (realised and estimated performance, calibrated and importance-weighted drift,
a domain classifier) are measured by `triggers.assess`; the decision is `policy.decide_retrain`;
`claim_retrain` makes sure that several monitors firing at once start one retrain.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from driftloop import datastore, jsonio, policy, registry, stages, triggers, versioning
from driftloop.config import Params, Settings
from driftloop.drift import CannotEvaluate, DriftSummary, PerformanceCheck, compute_drift
from driftloop.features import attach_labels, label, make_dataset, sort_rows
from driftloop.lineage import MonitorRun
from driftloop.memo import Memo
from driftloop.policy import RetrainDecision
from driftloop.thresholds import Calibration
from driftloop.training import predict_proba, score

PREDICTION = "proba"
# Log variants whose answers are the champion's own: served online or scored from a file.
SERVED_VARIANTS = ("champion", "batch")
Source = Literal["prediction_log", "accepted_data"]


@dataclass(frozen=True)
class MonitorResult:
    """One monitoring run: the window, what was measured, and the decision."""

    as_of: str
    window_start: str
    champion: str | None
    decision: RetrainDecision
    drift: DriftSummary | None = None
    performance: PerformanceCheck | None = None
    out_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    assessment: triggers.Assessment | None = None

    def to_dict(self) -> dict[str, Any]:
        perf, assessment = self.performance, self.assessment
        return jsonio.to_jsonable(
            {
                "as_of": self.as_of,
                "window_start": self.window_start,
                "champion": self.champion,
                "action": self.decision.action,
                "reason": self.decision.reason,
                "drift": self.drift.to_dict() if self.drift else None,
                "performance": perf.to_dict() if perf else None,
                "out_dir": str(self.out_dir) if self.out_dir else None,
                "triggers": assessment.to_dict() if assessment else None,
                **self.extra,
            }
        )


def _history(params: Params) -> pd.Timedelta:
    """How far before a window its history features look back."""
    step = pd.Timedelta(days=1)
    if params.data.frequency:
        with contextlib.suppress(ValueError):  # a non-fixed frequency (e.g. month starts)
            offset = pd.tseries.frequencies.to_offset(params.data.frequency)
            step = pd.Timedelta(offset.nanos, "ns")
    lags = max(params.features.lags.periods, default=0) * step
    windows = [pd.Timedelta(w) for w in params.features.rolling.windows]
    return max([lags, *windows, pd.Timedelta(0)]) + step


def reference_frame(
    params: Params, settings: Settings, champion: registry.ModelRef
) -> pd.DataFrame:
    """The rows the champion was trained on, from its recorded training window."""
    lineage = champion.lineage
    raw_dir = settings.path(params.data.raw_dir)
    return datastore.load_accepted(raw_dir, params, since=lineage.since, until=lineage.until)


def window_frame(
    params: Params, settings: Settings, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Accepted rows from `start` to `end` plus the history their features need."""
    raw_dir = settings.path(params.data.raw_dir)
    return datastore.load_accepted(raw_dir, params, since=start - _history(params), until=end)


# The champion's scored training rows per (project, model, version): computed once.
REFERENCES: Memo[tuple[str, str, str], pd.DataFrame] = Memo()


def scored_reference(
    params: Params, settings: Settings, champion: registry.ModelRef, model: Any
) -> pd.DataFrame:
    """The champion's training rows with its predictions (immutable: computed once per process)."""
    key = (str(settings.project), champion.name, champion.version)
    return REFERENCES.get(
        key,
        lambda: score_frame(
            params, settings, champion, model, reference_frame(params, settings, champion), None
        ),
    )


def seasonal_reference(
    reference: pd.DataFrame, params: Params, start: dt.date, end: dt.date
) -> tuple[pd.DataFrame, str | None]:
    """The reference rows of the window's time of year, and why there are too few, if so.

    Rows whose calendar day (month and day, in any year) falls from `season_margin_days`
    before the window's first day to as many after its last, wrapping at New Year. With
    `monitor.reference: training`, every reference row. The reason is set when fewer than
    `monitor.min_rows` rows are left: the champion has not seen this time of year.
    """
    monitor = params.monitor
    margin = dt.timedelta(days=monitor.season_margin_days)
    since, until = start - margin, end + margin
    if monitor.reference == "training" or (until - since).days >= 365:
        return reference, None
    stamps = pd.to_datetime(reference[params.data.timestamp_column])
    first = _calendar_day(np.array([since.month]), np.array([since.day]))[0]
    last = _calendar_day(np.array([until.month]), np.array([until.day]))[0]
    day = _calendar_day(stamps.dt.month.to_numpy(), stamps.dt.day.to_numpy())
    inside = (day - first) % 366 <= (last - first) % 366
    seasonal = reference[inside].reset_index(drop=True)
    if len(seasonal) >= monitor.min_rows:
        return seasonal, None
    return seasonal, (
        f"the champion's training data has {len(seasonal)} rows from {since:%b %d} to "
        f"{until:%b %d} (fewer than min_rows={monitor.min_rows}): it has not seen this season"
    )


_MONTH_STARTS = np.cumsum([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30])


def _calendar_day(month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Day of a 366-day calendar (Feb 29 = 60, Mar 1 = 61 in every year): same date, same day."""
    return np.asarray(_MONTH_STARTS[month - 1] + day)


def score_frame(
    params: Params,
    settings: Settings,
    champion: registry.ModelRef,
    model: Any,
    frame: pd.DataFrame,
    as_of: pd.Timestamp | None,
) -> pd.DataFrame:
    """Champion predictions for every row (sorted), with the label where it has arrived by as_of.

    Rows without a label yet are still scored: they are monitored for data and prediction drift.
    """
    own = stages.params_of(params, champion)
    if own.target.column is not None:
        labels = datastore.load_labels(settings.path(params.data.labels_dir), params, as_of=as_of)
        frame = attach_labels(frame, labels, own)
    data = make_dataset(frame, own, labelled_only=False)
    proba = predict_proba(model, data.X)
    out = sort_rows(frame, params.data).copy()
    out[PREDICTION] = proba
    out["prediction"] = (proba >= params.evaluation.threshold).astype(int)
    out["label"] = data.y.where(data.y >= 0).to_numpy()
    return out


def served_rows(params: Params, settings: Settings, champion: registry.ModelRef) -> pd.DataFrame:
    """The champion version's own logged answers (variant champion or batch), all data times.

    A data row served more than once (a retry, a file scored again) counts once: its last answer.
    A row is known by its id, or, at a fixed frequency, by its time and entity; event rows
    without an id cannot be told from a repeat and are all kept.
    """
    from driftloop.serving.predlog import read_prediction_log

    log = read_prediction_log(params, settings)
    ts = params.data.timestamp_column
    if log.empty or ts not in log:
        return log.iloc[0:0]
    mine = log["variant"].isin(SERVED_VARIANTS) & (
        log["model_version"].astype(str) == champion.version
    )
    data, served = params.data, log[mine & log[ts].notna()]
    key = [data.id_column] if data.id_column else [ts, *data.entity_columns]
    if data.id_column in served or (data.id_column is None and data.frequency):
        served = served.drop_duplicates(key, keep="last")
    return served.reset_index(drop=True)


def served_frame(
    params: Params,
    settings: Settings,
    champion: registry.ModelRef,
    served: pd.DataFrame,
    window: tuple[pd.Timestamp, pd.Timestamp],
) -> pd.DataFrame:
    """The window's served rows as monitoring's current data: served inputs and probabilities
    (never re-scored), and the true label where it has arrived (NaN: pending)."""
    after, until = window
    ts = params.data.timestamp_column
    rows = served[(served[ts] > after) & (served[ts] <= until)]
    out = sort_rows(rows, params.data).rename(columns={"label": "prediction"})
    out[PREDICTION] = out.pop("probability").astype(float)
    out["prediction"] = out["prediction"].astype(int)
    out["label"] = served_labels(params, settings, champion, out.drop(columns="key")).to_numpy()
    return out.drop(columns=["key"]).reset_index(drop=True)


def served_labels(
    params: Params, settings: Settings, champion: registry.ModelRef, served: pd.DataFrame
) -> pd.Series:
    """Binary labels of served rows (sorted): feedback by data id, then accepted label batches.

    A forecast target's label is a later row: here, a later served row of the same entity.
    """
    own = stages.params_of(params, champion)
    column, join = own.target.column, own.join_column
    if column is None or join is None or join not in served:
        return label(served, own.target, own.data)
    from driftloop.serving.feedback import read_feedback

    fed = read_feedback(params, settings)
    accepted = datastore.load_labels(settings.path(params.data.labels_dir), params)
    arrived = pd.concat(
        [
            pd.Series(fed["label"].to_numpy(), index=fed["key"].astype(str).to_numpy()),
            pd.Series(accepted[column].to_numpy(), index=accepted[join].astype(str).to_numpy()),
        ]
    )
    arrived = arrived[~arrived.index.duplicated(keep="first")]  # the first recorded label wins
    known = served.assign(**{column: served[join].astype(str).map(arrived).to_numpy()})
    return label(known, own.target, own.data)


def performance(
    params: Params, client: Any, champion: registry.ModelRef, scored: pd.DataFrame
) -> PerformanceCheck:
    """Metrics on window rows whose label has arrived, against the champion's holdout metrics."""
    run = registry.run_metrics(client, champion.run_id)
    reference = {
        k.removeprefix("holdout_"): v
        for k, v in run.items()
        if k.startswith("holdout_") and "/" not in k and k != "holdout_n"
    }
    labelled = scored[scored["label"].notna()]
    current: dict[str, float] = {}
    if not labelled.empty:
        y = labelled["label"].to_numpy(dtype=int)
        current = score(y, labelled[PREDICTION].to_numpy(), params.evaluation.threshold)
    return PerformanceCheck(
        metric=params.promote.primary_metric,
        reference={k: float(v) for k, v in reference.items()},
        current=current,
        n_labelled=len(labelled),
        n_pending=int(scored["label"].isna().sum()),
    )


def _retrain_state(settings: Settings, model_name: str) -> Path:
    return settings.state_dir / f"retrain-{model_name}.json"


def last_retrain(settings: Settings, model_name: str = "") -> dt.date | None:
    """The data date of the model's last claimed retrain (for the cooldown)."""
    path = _retrain_state(settings, model_name)
    if not path.exists():
        return None
    return dt.date.fromisoformat(json.loads(path.read_text())["as_of"])


def _last_trained(settings: Settings, champion: registry.ModelRef) -> dt.date | None:
    """The later of the last claimed retrain and the champion's own training end."""
    until = champion.lineage.until_date
    dates = [d for d in (last_retrain(settings, champion.name), until) if d]
    return max(dates) if dates else None


def claim_retrain(
    settings: Settings, as_of: dt.date, reason: str, cooldown_days: int, model_name: str = ""
) -> bool:
    """Atomically claim the model's next retrain: False if one was claimed within the cooldown."""
    path = _retrain_state(settings, model_name)
    with versioning.project_lock(settings.lock_dir, f"retrain-{model_name}"):
        previous = last_retrain(settings, model_name)
        if previous is not None and (as_of - previous).days < max(cooldown_days, 1):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"as_of": as_of.isoformat(), "reason": reason}) + "\n")
    registry.append_audit(
        settings,
        {"event": "retrain", "model": model_name, "as_of": as_of.isoformat(), "reason": reason},
    )
    return True


def _not_evaluable(
    as_of: dt.date, start: dt.date, champion: str | None, reason: str, source: Source | None = None
) -> MonitorResult:
    decision = RetrainDecision("cannot_evaluate", reason)
    extra: dict[str, Any] = {"source": source} if source else {}
    return MonitorResult(as_of.isoformat(), start.isoformat(), champion, decision, extra=extra)


def _window_bounds(end: dt.date, days: int) -> tuple[dt.date, pd.Timestamp, pd.Timestamp]:
    """The window's first day, and its bounds as (exclusive start, inclusive end) instants."""
    start = end - dt.timedelta(days=days - 1)
    after = pd.Timestamp(start) - pd.Timedelta(1, "ns")
    until = stages.end_of(end)
    assert until is not None
    return start, after, until


def accepted_frame(
    params: Params,
    settings: Settings,
    champion: registry.ModelRef,
    model: Any,
    window: tuple[pd.Timestamp, pd.Timestamp],
    as_of: dt.date | None,
) -> pd.DataFrame:
    """The window's accepted rows scored with the champion (CannotEvaluate: fails validation)."""
    from driftloop.validation import validate_batch

    after, until = window
    frame = window_frame(params, settings, after, until)
    ts = params.data.timestamp_column
    report = validate_batch(frame[frame[ts] > after].reset_index(drop=True), params)
    if not report.success:
        raise CannotEvaluate(f"window fails validation: {report.summary()}")
    # Labels known at the decision time: the end of an explicit as_of (a replay, a backfill),
    # else now, whatever day the newest data is from.
    labels_as_of = until if as_of is not None else None
    current = score_frame(params, settings, champion, model, frame, labels_as_of)
    return current[current[ts] > after].reset_index(drop=True)


def monitor(
    params: Params, settings: Settings, as_of: dt.date | None = None, *, log: bool = True
) -> MonitorResult:
    """Judge the champion on the newest window, measure drift and performance, decide.

    The current data is the champion's served traffic when the prediction log holds some for the
    window (`source: prediction_log`), else the window's accepted data scored with the champion.
    """
    client = registry.connect(settings)
    raw_dir = settings.path(params.data.raw_dir)
    last = datastore.last_accepted_date(raw_dir)
    if last is None:
        raise CannotEvaluate(f"{raw_dir}: no accepted data to monitor")
    champion = registry.get_alias(client, params.train.model_name, registry.CHAMPION)
    version = champion.version if champion else None
    ts = params.data.timestamp_column
    served = served_rows(params, settings, champion) if champion else pd.DataFrame()
    newest = served[ts].max().date() if len(served) else last
    end = as_of or max(last, newest)
    start, after, until = _window_bounds(end, params.monitor.window_days)

    def finish(result: MonitorResult) -> MonitorResult:
        if log:
            log_monitoring(params, settings, result)
        return result

    if champion is None:
        return finish(_not_evaluable(end, start, None, "no champion model to monitor"))
    model = registry.load_model(champion)
    current = (
        served_frame(params, settings, champion, served, (after, until)) if len(served) else None
    )
    source: Source = "prediction_log" if current is not None and len(current) else "accepted_data"
    if source == "accepted_data":
        if end > last:
            reason = f"no accepted data after {last}: the window ending {end} cannot be judged"
            return finish(_not_evaluable(end, start, version, reason, source))
        try:
            current = accepted_frame(params, settings, champion, model, (after, until), as_of)
        except CannotEvaluate as exc:
            return finish(_not_evaluable(end, start, version, str(exc), source))
    assert current is not None
    training = scored_reference(params, settings, champion, model)
    reference, unseen = seasonal_reference(training, params, start, end)
    out_dir = settings.path(params.data.monitoring_dir) / end.isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    current.to_parquet(out_dir / "predictions.parquet", index=False)
    perf = performance(params, client, champion, current)
    html = params.monitor.html_report
    own = triggers.Champion(
        (str(settings.project), champion.name, champion.version),
        model,
        stages.params_of(params, champion),
        training,
        settings.state_dir,
    )
    calibration, calibration_note = (None, None) if unseen else _calibrate(params, own, reference)

    def drift_report(html: bool) -> tuple[DriftSummary | None, str | None]:
        try:
            summary = compute_drift(
                reference,
                current,
                list(params.features.numerical),
                list(params.features.categorical),
                params.monitor,
                prediction_column=PREDICTION if params.monitor.prediction_drift else None,
                html_path=out_dir / "drift.html" if html else None,
                json_path=out_dir / "drift.json",
                thresholds=calibration.thresholds() if calibration else None,
            )
        except CannotEvaluate as exc:
            return None, str(exc)
        return summary, None

    drift, drift_error = (
        (None, "not judged: unseen season") if unseen else drift_report(html=html == "always")
    )
    assessment = triggers.assess(
        params,
        own,
        current,
        perf.reference,
        drift=drift,
        drift_error=drift_error,
        calibration=calibration,
        unseen_season=unseen,
    )
    decision = policy.decide_retrain(
        assessment.signals,
        params.monitor,
        last_retrain=_last_trained(settings, champion),
        today=end,
    )
    if html == "on_action" and decision.action != "no_action" and drift is not None:
        drift_report(html=True)  # the HTML only where a person will look: retrain or alert
    result = MonitorResult(
        end.isoformat(),
        start.isoformat(),
        champion.version,
        decision,
        drift,
        perf,
        out_dir,
        extra={
            "source": source,
            "reference": {"mode": params.monitor.reference, "rows": len(reference)},
            "drift_thresholds": "not judged: unseen season"
            if unseen
            else calibration_note or "calibrated",
        },
        assessment=assessment,
    )
    jsonio.write_json(out_dir / "decision.json", result.to_dict())
    return finish(result)


def _calibrate(
    params: Params, own: triggers.Champion, reference: pd.DataFrame
) -> tuple[Calibration | None, str | None]:
    """Drift thresholds calibrated on the reference; None with the reason when the params ask
    for fixed ones or the reference is too small to calibrate (the fixed ones then apply)."""
    if params.monitor.drift_thresholds != "calibrated":
        return None, "fixed (monitor.drift_thresholds)"
    try:
        calibration = triggers.drift_calibration(
            own, params, reference, params.monitor.prediction_drift
        )
    except CannotEvaluate as exc:
        return None, f"fixed: {exc}"
    return calibration, None


def log_monitoring(params: Params, settings: Settings, result: MonitorResult) -> str:
    """The monitoring figures as an MLflow run in the monitoring experiment."""
    import mlflow

    registry.ensure_experiment(settings, params.monitor.experiment)
    mlflow.set_experiment(params.monitor.experiment)
    metrics: dict[str, float] = {}
    if result.drift is not None:
        metrics["drifted_share"] = result.drift.drifted_share
        metrics.update(
            {f"drift_{c.column}": c.score for c in result.drift.columns if c.score is not None}
        )
        prediction = result.drift.prediction
        if prediction is not None and prediction.score is not None:
            metrics["drift_prediction"] = prediction.score
    perf = result.performance
    if perf is not None:
        metrics.update({f"current_{k}": v for k, v in perf.current.items()})
        metrics["n_labelled"] = float(perf.n_labelled)
        metrics["n_pending"] = float(perf.n_pending)
    if result.assessment is not None:
        metrics.update(result.assessment.metrics())
    with mlflow.start_run(run_name=f"monitor-{result.as_of}") as run:
        registry.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        tags = MonitorRun(
            as_of=result.as_of,
            action=result.decision.action,
            reason=result.decision.reason[:4000],
            champion=str(result.champion),
            model=params.train.model_name,
        )
        mlflow.set_tags(tags.to_tags())
        if result.out_dir is not None:  # the HTML (4 MB) stays in data/monitoring, under DVC
            for name in ("drift.json", "decision.json"):
                if (result.out_dir / name).exists():
                    mlflow.log_artifact(str(result.out_dir / name))
    return str(run.info.run_id)


def version_outputs(params: Params, settings: Settings) -> str:
    """Version the monitoring folder (predictions, Evidently reports, decisions) with DVC."""
    folder = settings.path(params.data.monitoring_dir)
    if not folder.exists():
        return ""
    with versioning.project_lock(settings.lock_dir, "data"):
        return versioning.track(settings.project, folder)
