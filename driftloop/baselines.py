"""Baselines the loop must beat, judged on exactly the rows its strategies are scored on.

- No model: the **base rate** (a constant score, the prevalence of the first model's training
  rows) and **persistence** ("tomorrow as today": each row scored with the last label known at
  its time in its own series, for a forecast target).
- Refitted directly with scikit-learn at chosen retrain days (never registered, never through
  the gates, fitted on the rows the loop's candidate would be: the retrain window, labels known
  that day, less the gate's holdout): the loop's own candidate model on **fixed cadences**, at
  **random days** (as many as the loop retrained, over several seeds) and with each **retrain
  window**; and a **reference model** (regularised logistic regression with scaling and one-hot
  encoding) at the loop's own retrain days. Differences between them come from *when* (and on
  which window) the model is refitted, not from the model.

A model fitted on day d serves the steps after d: a step's rows are those of the days
(previous step, step]. Every fit is cached by (day, window, model), so schedules that share a
day (every 7 days and every 14 days, a random draw) share the fit and its predictions.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop import windows
from driftloop.config import Candidate, FeatureParams, Params, TrainParams
from driftloop.features import Dataset, make_dataset, sort_rows
from driftloop.training import MIN_TRAIN_ROWS, fit_candidate, make_estimator, score, threshold_of
from driftloop.windows import Window

LOOP = "drift_triggered"
REFERENCE_C = 1.0  # inverse L2 strength of the reference logistic regression
METRICS = ("roc_auc", "log_loss", "accuracy", "brier")
NAT = np.datetime64("NaT", "ns")

# -- every row once, with when its label became known --------------------------------------------


@dataclass(frozen=True)
class History:
    """Every accepted row once, in time order: model inputs, label and when the label arrived."""

    X: pd.DataFrame
    y: np.ndarray  # 0/1 as float; NaN where the label never arrived
    times: np.ndarray  # datetime64[ns], ascending
    known: np.ndarray  # datetime64[ns]: when the label became known (NaT: never)
    series: np.ndarray  # int code of each row's entity (all 0 without entity columns)

    def __len__(self) -> int:
        return len(self.y)


def history(frame: pd.DataFrame, params: Params, label_times: pd.Series | None = None) -> History:
    """The rows of `frame` (labels already joined) as a History.

    A forecast label is known when the row it is computed from arrives (`horizon` rows later in
    the same entity); an explicit label when its label batch arrived (`label_times`, aligned with
    `frame`; a label already in the row is known with the row).
    """
    data = params.data
    ordered = sort_rows(frame, data)
    order = (
        sort_rows(frame.assign(__pos=np.arange(len(frame))), data)["__pos"].to_numpy()
        if label_times is not None
        else None
    )
    built = make_dataset(ordered, params, labelled_only=False)
    y = built.y.to_numpy().astype(float)
    y[y < 0] = np.nan
    times = pd.to_datetime(ordered[data.timestamp_column]).to_numpy().astype("datetime64[ns]")
    keys = [ordered[e] for e in data.entity_columns]
    series = (
        ordered.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()
        if keys
        else np.zeros(len(ordered), dtype=int)
    )
    if params.target.forecast is not None:
        stamps = pd.Series(times)
        ahead = -params.target.forecast.horizon
        later = stamps.groupby(series).shift(ahead) if keys else stamps.shift(ahead)
        known = later.to_numpy().astype("datetime64[ns]")
    elif label_times is not None and order is not None:
        arrived = pd.to_datetime(label_times).to_numpy().astype("datetime64[ns]")[order]
        known = np.where(np.isnat(arrived), times, arrived)
    else:
        known = times.copy()
    known = np.where(np.isnan(y), NAT, known)
    return History(built.X.reset_index(drop=True), y, times, known, series)


def end_of_day(day: dt.date) -> np.datetime64:
    """The last nanosecond of a day (data `until` a day includes the whole day)."""
    return np.datetime64(day + dt.timedelta(days=1), "ns") - np.timedelta64(1, "ns")


# -- the rows a model learns from ------------------------------------------------------------------


def training_rows(
    hist: History, day: dt.date, window: Window | None, holdout_days: int = 0
) -> np.ndarray:
    """Indices of the rows a model fitted at the end of `day` learns from.

    The rows up to that day inside the retrain window (anchored on the newest row, as the loop's
    training data is), whose label was known by then, less the last `holdout_days` of them (the
    loop's candidate leaves its holdout to the promotion gate).
    """
    end = end_of_day(day)
    upto = np.flatnonzero(hist.times <= end)
    if len(upto) == 0:
        return upto
    if window is not None:
        times = hist.times[upto]
        upto = upto[windows.select(times, pd.Timestamp(times.max()), window)]
    known = hist.known[upto]
    rows = upto[~np.isnat(known) & (known <= end)]
    if holdout_days and len(rows):
        cutoff = hist.times[rows].max() - np.timedelta64(holdout_days, "D")
        rows = rows[hist.times[rows] <= cutoff]
    return rows


# -- the no-model baselines ----------------------------------------------------------------------


def base_rate(y: np.ndarray) -> float:
    """The share of positive labels (the constant score of the base-rate baseline)."""
    labelled = y[~np.isnan(y)]
    return float(labelled.mean()) if len(labelled) else math.nan


def last_known_labels(hist: History) -> np.ndarray:
    """For each row, the label of the most recent earlier-or-same-time row of its series whose
    label was known at the row's time (NaN: none yet). For a one-day forecast on daily rows this
    is "today's outcome" for "tomorrow": persistence."""
    out = np.full(len(hist), np.nan)
    for code in np.unique(hist.series):
        rows = np.flatnonzero(hist.series == code)
        have = rows[~np.isnat(hist.known[rows])]
        if len(have) == 0:
            continue
        have = have[np.argsort(hist.known[have], kind="stable")]
        stamps = hist.times[have].view("i8")
        newest = np.maximum.accumulate(stamps)
        at = np.maximum.accumulate(np.where(stamps == newest, np.arange(len(have)), 0))
        seen = np.searchsorted(hist.known[have], hist.times[rows], side="right") - 1
        ok = seen >= 0
        out[rows[ok]] = hist.y[have[at[seen[ok]]]]
    return out


def persistence_scores(last: np.ndarray, y: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Persistence as a probability, for log loss: P(label = 1 | last known label), counted
    (+1 smoothing) on the `fit` rows; rows without a known label yet get the base rate of those
    rows. It ranks rows as "the last label again" does (same ROC AUC); accuracy is judged on
    that rule itself (`persistence_decisions`)."""
    rate = base_rate(y[fit])
    scores = np.full(len(last), rate)
    for value in (0.0, 1.0):
        prior = fit[last[fit] == value]
        positives = float(np.nansum(y[prior]))
        scores[last == value] = (positives + 1.0) / (len(prior) + 2.0)
    return scores


def persistence_decisions(last: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The rule's answer: the last known label again (no label yet: the score at the threshold)."""
    return np.where(np.isnan(last), scores >= threshold, last).astype(int)


# -- retrain days ----------------------------------------------------------------------------------


def cadence_days(calendar: Sequence[dt.date], first: dt.date, every_days: int) -> list[dt.date]:
    """Step days on which a fixed schedule retrains: the first step at least `every_days` after
    the previous fit (the schedule runs with the loop's steps). None on the last step: a model
    fitted then would serve nothing."""
    days: list[dt.date] = []
    last = first
    for day in calendar[:-1]:
        if (day - last).days >= every_days:
            days.append(day)
            last = day
    return days


def distinct_cadences(
    calendar: Sequence[dt.date], first: dt.date, cadences: list[int]
) -> list[int]:
    """The cadences whose retrain days differ: at 21-day steps, every 7 and every 14 days both
    retrain at every step, so only the first of them is kept (a replay too short for some
    cadence to retrain at all keeps each of them: none is a duplicate of a schedule)."""
    seen: set[tuple[dt.date, ...]] = set()
    kept = []
    for every in sorted(cadences):
        days = tuple(cadence_days(calendar, first, every))
        if not days or days not in seen:
            seen.add(days)
            kept.append(every)
    return kept


def cadence_label(calendar: Sequence[dt.date], first: dt.date, every: int) -> str:
    """`every N days`, and what the schedule really was when the steps are coarser than that."""
    days = [first, *cadence_days(calendar, first, every)]
    gaps = sorted((b - a).days for a, b in itertools.pairwise(days))
    typical = gaps[len(gaps) // 2] if gaps else every
    if typical == every or not gaps:
        return f"every {every} days"
    return f"every {every} days (at the replay's steps: every {typical})"


def random_days(calendar: Sequence[dt.date], count: int, seed: int) -> list[dt.date]:
    """`count` distinct step days drawn at random (not the last step), in time order."""
    pool = list(calendar[:-1])
    count = min(count, len(pool))
    picked = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(picked)]


# -- fitting and serving ---------------------------------------------------------------------------


REFERENCE = Candidate(model="logistic_regression", hyperparams={"C": REFERENCE_C})
"""The reference model: L2-regularised logistic regression on scaled, one-hot inputs."""


@dataclass(frozen=True)
class Plan:
    """What to compare: the steps, the loop's retrain days and the baselines' settings."""

    first: dt.date  # the first model's last day of data
    calendar: list[dt.date]  # each step's last day
    loop_retrains: list[dt.date]  # days the loop retrained (models from the next step on)
    window: Window  # the loop's retrain window
    holdout_days: int
    threshold: float = 0.5
    cadences: list[int] = field(default_factory=lambda: [7, 14, 28, 56, 91])
    random_seeds: int = 10
    persistence: bool = True
    windows: list[Window] = field(default_factory=list)  # compared at `schedule_every_days`
    schedule_every_days: int = 28
    workers: int = 1  # direct fits at once
    refit: bool = False  # candidates chosen on the window minus the holdout, then refitted on it


FitKey = tuple[dt.date, Window | None, str]


class Refits:
    """Models fitted directly at retrain days, each once, and their predictions per step."""

    def __init__(
        self, hist: History, train: TrainParams, categorical: list[str], plan: Plan
    ) -> None:
        self.hist, self.plan, self.train = hist, plan, train
        self.categorical = categorical
        self.models: dict[FitKey, Any] = {}
        self.skipped: set[FitKey] = set()
        self._pieces: dict[tuple[Any, int], np.ndarray] = {}

    def prefit(self, keys: Sequence[FitKey], workers: int = 1) -> None:
        """Fit every key not fitted yet, `workers` at a time (threads: scikit-learn's fits run
        outside the GIL, one OpenMP thread each)."""
        todo = list(dict.fromkeys(k for k in keys if k not in self.models))
        if workers <= 1 or len(todo) < 2:
            for key in todo:
                self.fit(key)
            return
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        # BLAS limits are process-wide: set (and restored) once here, not by racing threads
        with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=workers) as pool:
            for key, model in zip(todo, pool.map(self._fit, todo), strict=True):
                self.models[key] = model
                if model is None:
                    self.skipped.add(key)

    def fit(self, key: FitKey) -> Any:
        """The model of `key` (None when its rows cannot train one: too few, or one class)."""
        if key not in self.models:
            self.models[key] = self._fit(key)
            if self.models[key] is None:
                self.skipped.add(key)
        return self.models[key]

    def _fit(self, key: FitKey) -> Any:
        from threadpoolctl import threadpool_limits

        day, window, kind = key
        rows = training_rows(self.hist, day, window, self.plan.holdout_days)
        y = self.hist.y[rows]
        if len(rows) < MIN_TRAIN_ROWS or len(np.unique(y)) < 2:
            return None
        X = self.hist.X.iloc[rows].reset_index(drop=True)
        with threadpool_limits(limits=1):  # small fits: threads cost more than they save
            if kind == "candidate":  # as the loop fits one: selection, calibration, threshold
                data = Dataset(
                    X,
                    pd.Series(y.astype(int)),
                    pd.Series(self.hist.times[rows]),
                    pd.DataFrame(index=X.index),
                )
                features = FeatureParams.model_construct(categorical=list(self.categorical))
                model = fit_candidate(self.train, features, data)[0]
                if self.plan.refit:
                    whole = training_rows(self.hist, day, window, 0)
                    Xw = self.hist.X.iloc[whole].reset_index(drop=True)
                    model = model.refitted(Xw, pd.Series(self.hist.y[whole].astype(int)))
                return model
            cols, categorical = list(X.columns), self.categorical
            estimator = make_estimator(REFERENCE, self.train, cols, categorical, "reference")
            return estimator.fit(X, y.astype(int))

    def keys(
        self, days: Sequence[dt.date], window: Window | None, kind: str = "candidate"
    ) -> list[tuple[dt.date, FitKey]]:
        """The fits of a schedule: the first model on every row up to the first day, then one
        per day on the window."""
        fitted: list[tuple[dt.date, FitKey]] = [(self.plan.first, (self.plan.first, None, kind))]
        return fitted + [(d, (d, window, kind)) for d in days]

    def schedule(
        self, days: Sequence[dt.date], window: Window | None, kind: str = "candidate"
    ) -> tuple[list[Any], int]:
        """The model serving each step when refitting on `days`, and how many refits produced a
        model (a refit that cannot train keeps the previous model)."""
        fitted = self.keys(days, window, kind)
        live: list[Any] = []
        made, i, current = 0, 0, None
        previous = self.plan.first
        for step_day in self.plan.calendar:
            while i < len(fitted) and fitted[i][0] <= previous:
                if self.fit(fitted[i][1]) is not None:
                    made += i > 0
                    current = fitted[i][1]
                i += 1
            live.append(current)
            previous = step_day
        return live, made

    def predict(self, live: Sequence[Any], judged: Judged, models: Callable[[Any], Any]) -> Any:
        """Probabilities of the judged rows, each by the model live at its step (NaN: none)."""
        proba = np.full(len(judged.rows), np.nan)
        for step, key in enumerate(live):
            mask = judged.step == step
            if key is None or not mask.any():
                continue
            piece = self._pieces.get((key, step))
            if piece is None:
                from driftloop.training import predict_proba

                X = self.hist.X.iloc[judged.rows[mask]]
                piece = predict_proba(models(key), X)
                self._pieces[(key, step)] = piece
            proba[mask] = piece
        return proba

    def thresholds(
        self, live: Sequence[Any], judged: Judged, models: Callable[[Any], Any], default: float
    ) -> np.ndarray:
        """Each judged row's decision threshold: that of the model live at its step (its own,
        chosen on its folds), else `default`."""
        cuts = np.full(len(judged.rows), default)
        for step, key in enumerate(live):
            mask = judged.step == step
            if key is not None and mask.any():
                cuts[mask] = threshold_of(models(key), default)
        return cuts


@dataclass(frozen=True)
class Judged:
    """The rows every strategy is judged on: labelled rows after the first model's data, up to
    the last step, with the step that predicted each."""

    rows: np.ndarray  # indices into the history
    step: np.ndarray  # the step of each row (0-based)
    y: np.ndarray
    months: np.ndarray


def judged_rows(hist: History, first: dt.date, calendar: Sequence[dt.date]) -> Judged:
    """Every labelled row of the days after `first` up to the last step, with its step."""
    edges = np.array([end_of_day(d) for d in calendar], dtype="datetime64[ns]")
    inside = (hist.times > end_of_day(first)) & (hist.times <= edges[-1]) & ~np.isnan(hist.y)
    rows = np.flatnonzero(inside)
    step = np.searchsorted(edges, hist.times[rows], side="left")
    months = pd.to_datetime(hist.times[rows]).strftime("%Y-%m").to_numpy()
    return Judged(rows, step, hist.y[rows].astype(int), months)


# -- metrics ---------------------------------------------------------------------------------------


def metrics(
    judged: Judged,
    proba: np.ndarray,
    threshold: float | np.ndarray = 0.5,
    decisions: np.ndarray | None = None,
) -> dict[str, Any]:
    """ROC AUC, log loss, accuracy and Brier score overall and per month.

    Accuracy is that of `decisions` (0/1) where given, else of `proba` at the threshold.
    """

    def scored(at: np.ndarray | slice) -> dict[str, float]:
        cut = threshold[at] if isinstance(threshold, np.ndarray) else threshold
        got = score(judged.y[at], proba[at], cut)
        if decisions is not None and len(judged.y[at]):
            got["accuracy"] = float(np.mean(decisions[at] == judged.y[at]))
        return got

    overall = scored(slice(None))
    monthly = {}
    for month in sorted(set(judged.months)):
        got = scored(judged.months == month)
        monthly[str(month)] = {k: got[k] for k in ("roc_auc", "accuracy", "log_loss")}
    return {
        "n_predictions": len(judged.rows),
        **{k: overall[k] for k in METRICS},
        "monthly": monthly,
    }


def spread(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and 10th/90th percentiles of each metric over seeds."""
    out: dict[str, Any] = {}
    for name in METRICS:
        values = np.array([r[name] for r in results], dtype=float)
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            out.update({name: math.nan, f"{name}_sd": math.nan})
            out.update({f"{name}_p10": math.nan, f"{name}_p90": math.nan})
            continue
        out[name] = float(finite.mean())
        out[f"{name}_sd"] = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
        out[f"{name}_p10"] = float(np.percentile(finite, 10))
        out[f"{name}_p90"] = float(np.percentile(finite, 90))
    months = results[0]["monthly"] if results else {}
    out["monthly"] = {
        m: {
            k: float(np.nanmean([r["monthly"][m][k] for r in results]))
            if any(np.isfinite(r["monthly"][m][k]) for r in results)
            else math.nan
            for k in months[m]
        }
        for m in months
    }
    return out


# -- every strategy and baseline -------------------------------------------------------------------


def compare(
    hist: History,
    plan: Plan,
    train: TrainParams,
    categorical: list[str],
    loop_live: Sequence[Any],
    loop_models: Callable[[Any], Any],
    loop_extra: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Every strategy and baseline on the same rows, in the report's order.

    `loop_live`: the key of the model the loop served at each step (`loop_models(key)` loads it);
    the first step's model is the static strategy.
    """
    judged = judged_rows(hist, plan.first, plan.calendar)
    refits = Refits(hist, train, categorical, plan)
    fitted = refits.models.__getitem__
    out: dict[str, dict[str, Any]] = {}
    loop_days = [d for d in plan.loop_retrains if d < plan.calendar[-1]]
    schedules = refit_schedules(plan, loop_days)
    refits.prefit([k for s in schedules.values() for _, k in refits.keys(*s)], plan.workers)

    def judge(proba: np.ndarray, cut: float | np.ndarray | None = None) -> dict[str, Any]:
        return metrics(judged, proba, plan.threshold if cut is None else cut)

    def run(live: Sequence[Any], models: Callable[[Any], Any]) -> dict[str, Any]:
        """A schedule's models judged at their own thresholds."""
        proba = refits.predict(live, judged, models)
        return judge(proba, refits.thresholds(live, judged, models, plan.threshold))

    out[LOOP] = {"label": "driftloop policy", "kind": "loop", **run(loop_live, loop_models)}
    out[LOOP].update(loop_extra)
    static = [loop_live[0]] * len(plan.calendar)
    out["static"] = {
        "label": "the loop's first model, never retrained",
        "kind": "loop",
        **run(static, loop_models),
        "retrains": 0,
    }
    out.update(_no_model(hist, plan, judged))
    live, made = refits.schedule(*schedules["reference"])
    out["reference"] = {
        "label": "logistic regression refitted at the loop's retrains",
        "kind": "reference",
        **judge(refits.predict(live, judged, fitted)),
        "retrains": made,
    }
    for every in plan.cadences:
        live, made = refits.schedule(*schedules[f"every_{every}d"])
        out[f"every_{every}d"] = {
            "label": cadence_label(plan.calendar, plan.first, every),
            "kind": "cadence",
            "every_days": every,
            **run(live, fitted),
            "retrains": made,
        }
    draws = []
    for seed in range(plan.random_seeds):
        live, made = refits.schedule(*schedules[f"random_{seed}"])
        draws.append({"seed": seed, "retrains": made, **run(live, fitted)})
    out["random"] = {
        "label": f"random trigger ({len(loop_days)} retrains, {plan.random_seeds} seeds)",
        "kind": "random",
        **spread(draws),
        "n_predictions": len(judged.rows),
        "retrains": len(loop_days),
        "seeds": [{k: d[k] for k in ("seed", "retrains", *METRICS)} for d in draws],
    }
    every = plan.schedule_every_days
    for window in plan.windows:
        live, made = refits.schedule(*schedules[f"window_{window.kind}"])
        mark = " (the loop's)" if window == plan.window else ""
        out[f"window_{window.kind}"] = {
            "label": f"{window.label} window{mark}, every {every} days",
            "kind": "window",
            "window": window.label,
            **run(live, fitted),
            "retrains": made,
        }
    skipped = sorted(
        f"{d.isoformat()} {k} ({w.label if w else 'every row'})" for d, w, k in refits.skipped
    )
    for result in out.values():
        result.setdefault("promotions", None)
    out[LOOP]["fits"] = {"direct": len(refits.models), "skipped": skipped}
    return out


Schedule = tuple[list[dt.date], Window | None, str]


def refit_schedules(plan: Plan, loop_days: list[dt.date]) -> dict[str, Schedule]:
    """The refit days, window and model of every refitted baseline."""
    on = plan.window
    out: dict[str, Schedule] = {"reference": (loop_days, on, "reference")}
    for every in plan.cadences:
        out[f"every_{every}d"] = (cadence_days(plan.calendar, plan.first, every), on, "candidate")
    for seed in range(plan.random_seeds):
        days = random_days(plan.calendar, len(loop_days), seed)
        out[f"random_{seed}"] = (days, on, "candidate")
    due = cadence_days(plan.calendar, plan.first, plan.schedule_every_days)
    for window in plan.windows:
        out[f"window_{window.kind}"] = (due, window, "candidate")
    return out


def _no_model(hist: History, plan: Plan, judged: Judged) -> dict[str, dict[str, Any]]:
    """Base rate and (where it applies) persistence, from the first model's training rows."""
    fit = training_rows(hist, plan.first, None)
    rate = base_rate(hist.y[fit])
    out = {
        "base_rate": {
            "label": f"base rate (constant {rate:.3f}, no model)",
            "kind": "no_model",
            "constant": rate,
            **metrics(judged, np.full(len(judged.rows), rate), plan.threshold),
            "retrains": 0,
        }
    }
    if plan.persistence:
        last = last_known_labels(hist)
        scores = persistence_scores(last, hist.y, fit)
        answer = persistence_decisions(last, scores, plan.threshold)
        out["persistence"] = {
            "label": "persistence: the last known label of the series (no model)",
            "kind": "no_model",
            **metrics(judged, scores[judged.rows], plan.threshold, answer[judged.rows]),
            "retrains": 0,
        }
    return out


# -- the verdict -----------------------------------------------------------------------------------

TARGET_AUC_SLACK = 0.005  # the loop should reach the best cadence's ROC AUC less this ...
TARGET_RETRAIN_SHARE = 0.5  # ... with at most this share of that cadence's retrains


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _value(result: dict[str, Any], name: str) -> float | None:
    value: Any = result.get(name)
    return float(value) if _finite(value) else None


def _pair(name: str, loop: float, other: float) -> str:
    """`ROC AUC 0.712 vs 0.690 (+0.022)`: the loop's figure, the other's, and the difference."""
    return f"{name} {loop:.3f} vs {other:.3f} ({loop - other:+.3f})"


def _retrains(count: Any) -> str:
    return "1 retrain" if count == 1 else f"{count} retrains"


def beats(loop: dict[str, Any], other: dict[str, Any]) -> dict[str, bool | None]:
    """Whether the loop is better on ROC AUC (higher) and log loss (lower); None: not comparable."""
    out: dict[str, bool | None] = {}
    for name, lower in (("roc_auc", False), ("log_loss", True)):
        a, b = _value(loop, name), _value(other, name)
        out[name] = None if a is None or b is None else (a < b if lower else a > b)
    return out


def versus(loop: dict[str, Any], other: dict[str, Any]) -> str:
    """One sentence: did the loop beat this baseline, on which metric, and by how much."""
    won = beats(loop, other)
    parts = [
        _pair("ROC AUC", loop["roc_auc"], other["roc_auc"])
        if won["roc_auc"] is not None
        else "ROC AUC not defined",
        _pair("log loss", loop["log_loss"], other["log_loss"])
        if won["log_loss"] is not None
        else "log loss not defined",
    ]
    known = [v for v in won.values() if v is not None]
    if not known:
        head = "cannot be compared"
    elif all(known) and len(known) == 2:
        head = "the loop beat it"
    elif not any(known):
        head = "the loop did not beat it"
    elif won["roc_auc"]:
        head = "the loop beat it on ROC AUC, not on log loss"
    else:
        head = "the loop beat it on log loss, not on ROC AUC"
    cost = "" if other.get("kind") == "no_model" else f" ({_retrains(other.get('retrains'))})"
    return f"{other['label']}{cost}: {head}: {'; '.join(parts)}."


def versus_random(loop: dict[str, Any], random: dict[str, Any]) -> str:
    """The random trigger: beaten when the loop is above its 90th percentile of ROC AUC."""
    auc, p90 = _value(loop, "roc_auc"), _value(random, "roc_auc_p90")
    if auc is None or p90 is None:
        return f"{random['label']}: cannot be compared (ROC AUC not defined)."
    beaten = auc > p90
    return (
        f"{random['label']}: ROC AUC {random['roc_auc']:.3f} +- {random['roc_auc_sd']:.3f} "
        f"(90th percentile {p90:.3f}), log loss {random['log_loss']:.3f}; the loop's ROC AUC "
        f"{auc:.3f} is {'above' if beaten else 'not above'} that percentile "
        f"({auc - p90:+.3f}): {'beaten' if beaten else 'not beaten'}."
    )


def versus_best_cadence(loop: dict[str, Any], cadences: list[dict[str, Any]]) -> str | None:
    """The target: the best fixed cadence's ROC AUC less 0.005, with at most half its retrains."""
    scored = [c for c in cadences if _finite(c.get("roc_auc"))]
    if not scored or not _finite(loop.get("roc_auc")):
        return None
    best = max(scored, key=lambda c: c["roc_auc"])
    goal = best["roc_auc"] - TARGET_AUC_SLACK
    allowed = best["retrains"] * TARGET_RETRAIN_SHARE
    quality, economy = loop["roc_auc"] >= goal, loop["retrains"] <= allowed
    return (
        f"Best fixed cadence: {best['label']} (ROC AUC {best['roc_auc']:.3f}, "
        f"{_retrains(best['retrains'])}). The loop's {loop['roc_auc']:.3f} is "
        f"{'at least' if quality else 'below'} its ROC AUC - {TARGET_AUC_SLACK} "
        f"({loop['roc_auc'] - goal:+.3f}) with {_retrains(loop['retrains'])} "
        f"({'at most' if economy else 'more than'} half of its {best['retrains']}): "
        f"{'target met' if quality and economy else 'target missed'}."
    )


def versus_windows(rows: list[dict[str, Any]]) -> str | None:
    """Which retrain window did best at the same cadence."""
    scored = [r for r in rows if _finite(r.get("roc_auc"))]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["roc_auc"])
    listed = ", ".join(
        f"{r['window']} {r['roc_auc']:.3f} / {r['log_loss']:.3f}"
        if _finite(r.get("log_loss"))
        else f"{r['window']} {r['roc_auc']:.3f}"
        for r in scored
    )
    return (
        f"Retrain windows (ROC AUC / log loss at the same cadence): {listed}; "
        f"best: {best['window']}."
    )


def verdict(comparison: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A headline and one sentence per baseline: whether the loop beat it, and by how much."""
    loop = comparison.get(LOOP)
    if loop is None:
        return {"headline": "No step was replayed: nothing to compare.", "sentences": []}
    others = {k: v for k, v in comparison.items() if k != LOOP and v["kind"] != "window"}
    sentences = []
    beaten: dict[str, bool] = {}
    for key, other in others.items():
        if other["kind"] == "random":
            sentences.append(versus_random(loop, other))
            beaten[key] = _finite(loop["roc_auc"]) and loop["roc_auc"] > other["roc_auc_p90"]
        else:
            sentences.append(versus(loop, other))
            beaten[key] = all(v is True for v in beats(loop, other).values())
    cadences = [v for v in comparison.values() if v["kind"] == "cadence"]
    windows_rows = [v for v in comparison.values() if v["kind"] == "window"]
    sentences += [
        s for s in (versus_best_cadence(loop, cadences), versus_windows(windows_rows)) if s
    ]
    won = [k for k, v in beaten.items() if v]
    lost = [comparison[k]["label"] for k, v in beaten.items() if not v]
    headline = (
        f"The loop (ROC AUC {loop['roc_auc']:.3f}, log loss {loop['log_loss']:.3f}, "
        f"{loop['retrains']} retrains) beat {len(won)} of {len(beaten)} baselines on both ROC AUC "
        "and log loss (a random trigger only above its 90th percentile)"
        + (f"; not beaten: {', '.join(lost)}." if lost else ".")
        if _finite(loop.get("roc_auc")) and _finite(loop.get("log_loss"))
        else "The loop's ROC AUC or log loss is not defined on these rows: nothing is beaten."
    )
    return {"headline": headline, "sentences": sentences, "beaten": beaten}
