"""Monitoring: score the newest window with the champion and judge drift and performance.

The sequence is written once (`monitor`), as named steps: current window -> reference -> drift
-> performance -> decision -> record. `driftloop` runs it with plain calls (`PLAIN`); the
monitoring flow runs the very same sequence with each step wrapped as a Prefect task
(`tasks.monitoring.STEPS`), each with its artifact.

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
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from driftloop import datastore, jsonio, labels, policy, registry, stages, triggers, versioning
from driftloop.config import Params, Settings
from driftloop.drift import CannotEvaluate, DriftSummary, PerformanceCheck, compute_drift
from driftloop.features import label, make_dataset, sort_rows
from driftloop.lineage import MonitorRun
from driftloop.memo import Memo
from driftloop.policy import RetrainDecision
from driftloop.thresholds import Calibration
from driftloop.training import predict_proba, score, threshold_of

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
    frame = labels.attach(frame, labels.known_labels(params, settings, as_of), own, as_of)
    data = make_dataset(frame, own, labelled_only=False)
    proba = predict_proba(model, data.X)
    out = sort_rows(frame, params.data).copy()
    out[PREDICTION] = proba
    out["prediction"] = (proba >= threshold_of(model, params.evaluation.threshold)).astype(int)
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
    labels_as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The window's served rows as monitoring's current data: served inputs and probabilities
    (never re-scored), and the true label where it is known at `labels_as_of` (NaN: pending)."""
    after, until = window
    ts = params.data.timestamp_column
    rows = served[(served[ts] > after) & (served[ts] <= until)]
    out = sort_rows(rows, params.data).rename(columns={"label": "prediction"})
    out[PREDICTION] = out.pop("probability").astype(float)
    out["prediction"] = out["prediction"].astype(int)
    rows = out.drop(columns="key")
    out["label"] = served_labels(params, settings, champion, rows, labels_as_of).to_numpy()
    return out.drop(columns=["key"]).reset_index(drop=True)


def served_labels(
    params: Params,
    settings: Settings,
    champion: registry.ModelRef,
    served: pd.DataFrame,
    as_of: pd.Timestamp | None = None,
) -> pd.Series:
    """Binary labels of served rows (sorted), known at `as_of`: feedback and label batches by
    `driftloop.labels`' rule. A forecast target's label is a later row: here, a later served row
    of the same entity."""
    own = stages.params_of(params, champion)
    known = labels.known_labels(params, settings, as_of)
    return label(labels.attach(served, known, own, as_of), own.target, own.data)


def realised_performance(
    params: Params,
    client: Any,
    champion: registry.ModelRef,
    scored: pd.DataFrame,
    threshold: float | None = None,
) -> PerformanceCheck:
    """Metrics on window rows whose label has arrived, against the champion's holdout metrics
    (label metrics at the champion's own `threshold`; default evaluation.threshold)."""
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
        cut = params.evaluation.threshold if threshold is None else threshold
        current = score(y, labelled[PREDICTION].to_numpy(), cut)
    return PerformanceCheck(
        metric=params.promote.primary_metric,
        reference={k: float(v) for k, v in reference.items()},
        current=current,
        n_labelled=len(labelled),
        n_pending=int(scored["label"].isna().sum()),
    )


def last_retrain(settings: Settings, model_name: str = "") -> dt.date | None:
    """The data date of the model's last claimed retrain (for the cooldown), from the ledger."""
    from driftloop.champion import store_of

    days = store_of(settings).claims_of(model_name, "retrain")
    return max(dt.date.fromisoformat(d) for d in days) if days else None


def _last_trained(settings: Settings, champion: registry.ModelRef) -> dt.date | None:
    """The later of the last claimed retrain and the champion's own training end."""
    until = champion.lineage.until_date
    dates = [d for d in (last_retrain(settings, champion.name), until) if d]
    return max(dates) if dates else None


def claim_retrain(
    settings: Settings,
    as_of: dt.date,
    reason: str,
    cooldown_days: int,
    model_name: str = "",
    champion: str | None = None,
) -> bool:
    """Claim the model's next retrain in the ledger: False if any worker claimed one within the
    cooldown (one compare-and-set, so two monitors on the same trigger retrain once)."""
    from driftloop.champion import store_of
    from driftloop.ledger import RetrainClaim

    event = RetrainClaim(
        model_name,
        day=as_of.isoformat(),
        reason=reason,
        champion=champion,
    )
    return store_of(settings).claim_retrain(event, cooldown_days)


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
    current = score_frame(params, settings, champion, model, frame, _labels_as_of(until, as_of))
    return current[current[ts] > after].reset_index(drop=True)


def day(as_of: str | dt.date | None) -> dt.date | None:
    """A window's end day from an ISO date (None: the newest data)."""
    return dt.date.fromisoformat(as_of) if isinstance(as_of, str) else as_of


def _labels_as_of(until: pd.Timestamp, as_of: dt.date | None) -> pd.Timestamp | None:
    """Labels known at the decision time: the end of an explicit as_of (a replay, a backfill),
    else now (None), whatever day the newest data is from."""
    return until if as_of is not None else None


# -- the steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The window to judge and its current data: the champion's answers on the window's rows.

    `problem` says why the window cannot be judged (no champion, no data, fails validation);
    then there is no current data and monitoring goes straight to its record.
    """

    end: dt.date
    start: dt.date
    bounds: tuple[pd.Timestamp, pd.Timestamp]  # (exclusive start, inclusive end) instants
    champion: registry.ModelRef | None
    model: Any = None
    current: pd.DataFrame | None = None
    source: Source | None = None
    problem: str | None = None
    out_dir: Path | None = None


@dataclass(frozen=True)
class Reference:
    """What the window is compared with: the champion's scored training rows (of this season).

    `unseen` says why the champion has not seen this time of year (too few reference rows).
    """

    frame: pd.DataFrame
    mode: str
    unseen: str | None = None
    own: triggers.Champion | None = None  # the champion as the signals see it (cached per version)
    calibration: Calibration | None = None  # drift thresholds calibrated on the reference
    thresholds_note: str = "calibrated"


@dataclass(frozen=True)
class DriftCheck:
    """Drift of the window against the reference: the summary, or why it was not judged."""

    summary: DriftSummary | None
    error: str | None = None  # drift could not be judged (fails closed in the decision)


@dataclass(frozen=True)
class Performance:
    """The champion's performance on the window, realised on labelled rows and estimated from
    the predictions alone (before labels arrive), with the other signals the policy weighs
    (`triggers.assess`: the performance test, weighted drift, the domain classifier)."""

    realised: PerformanceCheck
    assessment: triggers.Assessment | None = None

    @property
    def estimated(self) -> Any:
        return self.assessment.estimate if self.assessment is not None else None


@dataclass(frozen=True)
class Findings:
    """Everything one monitoring run found, for the record."""

    window: Window
    decision: RetrainDecision
    reference: Reference | None = None
    drift: DriftCheck | None = None
    performance: Performance | None = None


def current_window(params: Params, settings: Settings, as_of: dt.date | None = None) -> Window:
    """The window ending at `as_of` (default: the newest data) and the champion's answers on it.

    The current data is the champion's served traffic when the prediction log holds some for the
    window (`source: prediction_log`), else the window's accepted data scored with the champion.
    CannotEvaluate when nothing is accepted at all.
    """
    client = registry.connect(settings)
    raw_dir = settings.path(params.data.raw_dir)
    last = datastore.last_accepted_date(raw_dir)
    if last is None:
        raise CannotEvaluate(f"{raw_dir}: no accepted data to monitor")
    champion = registry.get_alias(client, params.train.model_name, registry.CHAMPION)
    ts = params.data.timestamp_column
    served = served_rows(params, settings, champion) if champion else pd.DataFrame()
    newest = served[ts].max().date() if len(served) else last
    end = as_of or max(last, newest)
    start, after, until = _window_bounds(end, params.monitor.window_days)
    window = Window(end, start, (after, until), champion)
    if champion is None:
        return replace(window, problem="no champion model to monitor")
    model = registry.load_model(champion)
    labels_as_of = _labels_as_of(until, as_of)
    if len(served):
        current = served_frame(params, settings, champion, served, (after, until), labels_as_of)
        if len(current):
            return _judged(params, settings, window, model, current, "prediction_log")
    if end > last:
        reason = f"no accepted data after {last}: the window ending {end} cannot be judged"
        return replace(window, source="accepted_data", problem=reason)
    try:
        current = accepted_frame(params, settings, champion, model, (after, until), as_of)
    except CannotEvaluate as exc:
        return replace(window, source="accepted_data", problem=str(exc))
    return _judged(params, settings, window, model, current, "accepted_data")


def _judged(
    params: Params,
    settings: Settings,
    window: Window,
    model: Any,
    current: pd.DataFrame,
    source: Source,
) -> Window:
    out_dir = settings.path(params.data.monitoring_dir) / window.end.isoformat()
    return replace(window, model=model, current=current, source=source, out_dir=out_dir)


def reference(params: Params, settings: Settings, window: Window) -> Reference:
    """The champion's scored training rows, of the window's season (`monitor.reference`)."""
    assert window.champion is not None
    champion = window.champion
    scored = scored_reference(params, settings, champion, window.model)
    frame, unseen = seasonal_reference(scored, params, window.start, window.end)
    own = triggers.Champion(
        (str(settings.project), champion.name, champion.version),
        window.model,
        stages.params_of(params, champion),
        scored,
        settings.state_dir,
        holdout_in_fit=bool(champion.lineage.refit_of),
    )
    if unseen is not None:
        return Reference(frame, params.monitor.reference, unseen, own, None, "not judged")
    calibration, note = _calibrate(params, own, frame)
    return Reference(frame, params.monitor.reference, unseen, own, calibration, note)


def _calibrate(
    params: Params, own: triggers.Champion, reference: pd.DataFrame
) -> tuple[Calibration | None, str]:
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
    return calibration, "calibrated"


def drift(params: Params, window: Window, reference: Reference) -> DriftCheck:
    """Per-feature (and prediction) drift of the window against the reference (Evidently).

    Not judged on an unseen season: that is a trigger of its own. The HTML report is written
    here with `monitor.html_report: always`; with `on_action`, by `record` where the loop acts.
    """
    if reference.unseen is not None:
        return DriftCheck(None)
    return drift_report(params, window, reference, html=params.monitor.html_report == "always")


def drift_report(params: Params, window: Window, reference: Reference, *, html: bool) -> DriftCheck:
    """Evidently's drift report into the window's folder (drift.json, and drift.html if asked)."""
    assert window.current is not None and window.out_dir is not None
    window.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary = compute_drift(
            reference.frame,
            window.current,
            list(params.features.numerical),
            list(params.features.categorical),
            params.monitor,
            prediction_column=PREDICTION if params.monitor.prediction_drift else None,
            html_path=window.out_dir / "drift.html" if html else None,
            json_path=window.out_dir / "drift.json",
            thresholds=reference.calibration.thresholds() if reference.calibration else None,
        )
    except CannotEvaluate as exc:
        return DriftCheck(None, str(exc))
    return DriftCheck(summary)


def performance(
    params: Params, settings: Settings, window: Window, reference: Reference, drift: DriftCheck
) -> Performance:
    """Realised metrics on the window's labelled rows against the champion's holdout metrics,
    the estimate from the predictions, and the signals the policy weighs (`triggers.assess`)."""
    assert window.champion is not None and window.current is not None
    assert reference.own is not None
    client = registry.connect(settings)
    threshold = threshold_of(window.model, params.evaluation.threshold)
    realised = realised_performance(params, client, window.champion, window.current, threshold)
    unseen = reference.unseen
    assessment = triggers.assess(
        params,
        reference.own,
        window.current,
        realised.reference,
        drift=drift.summary,
        drift_error="not judged: unseen season" if unseen else drift.error,
        calibration=reference.calibration,
        unseen_season=unseen,
        threshold=threshold,
    )
    return Performance(realised, assessment)


def decide(
    params: Params,
    settings: Settings,
    window: Window,
    reference: Reference,
    drift: DriftCheck,
    performance: Performance,
) -> RetrainDecision:
    """Retrain, alert or nothing (`policy.decide_retrain` on the signals), with the cooldown
    since the last retrain of the champion's model."""
    assert window.champion is not None and performance.assessment is not None
    return policy.decide_retrain(
        performance.assessment.signals,
        params.monitor,
        last_retrain=_last_trained(settings, window.champion),
        today=window.end,
    )


def record(
    params: Params, settings: Settings, findings: Findings, *, log: bool = True
) -> MonitorResult:
    """The run's result: the window's predictions, the drift HTML where the loop acts
    (`html_report: on_action`) and decision.json in its folder, and an MLflow run (`log`)."""
    result = to_result(findings)
    window, ref = findings.window, findings.reference
    if window.current is not None and window.out_dir is not None:
        window.out_dir.mkdir(parents=True, exist_ok=True)
        window.current.to_parquet(window.out_dir / "predictions.parquet", index=False)
        acts = findings.decision.action != "no_action"
        if params.monitor.html_report == "on_action" and acts and ref and ref.unseen is None:
            drift_report(params, window, ref, html=True)  # HTML where a person will look
        jsonio.write_json(window.out_dir / "decision.json", result.to_dict())
    if log:
        log_monitoring(params, settings, result)
    return result


def to_result(findings: Findings) -> MonitorResult:
    """The typed result of a monitoring run, from its findings."""
    window, ref = findings.window, findings.reference
    extra: dict[str, Any] = {"source": window.source} if window.source else {}
    if window.problem is None and ref is not None:
        extra["reference"] = {"mode": ref.mode, "rows": len(ref.frame)}
        extra["drift_thresholds"] = ref.thresholds_note
    perf = findings.performance
    return MonitorResult(
        window.end.isoformat(),
        window.start.isoformat(),
        window.champion.version if window.champion else None,
        findings.decision,
        findings.drift.summary if findings.drift else None,
        findings.performance.realised if findings.performance else None,
        window.out_dir if window.problem is None else None,
        extra=extra,
        assessment=perf.assessment if perf else None,
    )


# -- the sequence, written once ------------------------------------------------------------------


@dataclass(frozen=True)
class Steps:
    """The monitoring step functions the sequence calls: plain, or wrapped as Prefect tasks."""

    current_window: Callable[..., Window]
    reference: Callable[..., Reference]
    drift: Callable[..., DriftCheck]
    performance: Callable[..., Performance]
    decide: Callable[..., RetrainDecision]
    record: Callable[..., MonitorResult]


PLAIN = Steps(current_window, reference, drift, performance, decide, record)


def monitor(
    params: Params,
    settings: Settings,
    as_of: dt.date | None = None,
    *,
    log: bool = True,
    steps: Steps = PLAIN,
) -> MonitorResult:
    """Judge the champion on the newest window: current window, reference, drift, performance,
    decision, record. A window that cannot be judged is recorded as `cannot_evaluate`."""
    window = steps.current_window(params, settings, as_of)
    if window.problem is not None:
        cannot = RetrainDecision("cannot_evaluate", window.problem)
        return steps.record(params, settings, Findings(window, cannot), log=log)
    ref = steps.reference(params, settings, window)
    drifted = steps.drift(params, window, ref)
    perf = steps.performance(params, settings, window, ref, drifted)
    decision = steps.decide(params, settings, window, ref, drifted, perf)
    return steps.record(params, settings, Findings(window, decision, ref, drifted, perf), log=log)


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
            flow_run=os.environ.get("PREFECT__FLOW_RUN_ID", ""),
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
