"""Data drift with Evidently, and the pure retrain decision.

`compute_drift` is the only place that talks to Evidently: one explicit `ValueDrift` metric per
column (method and threshold from params.yaml, never Evidently's size-dependent auto choice), the
drift flag read from Evidently's own test, and the raw snapshot parsed once in
`_parse_snapshot`. Anything that would make the answer meaningless (too few rows, a missing,
empty or constant column, a NaN score) raises `CannotEvaluate` instead of reporting "no drift".

`decide_retrain` is pure: drift summary + performance check + policy in, `RetrainDecision` out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from driftloop.config import MonitorParams
from driftloop.errors import ConfigError, DriftloopError

LOWER_IS_BETTER = frozenset({"log_loss", "brier"})
_VALUE_DRIFT_TYPES = (":ValueDrift", ":ValueDriftScore")
_FLOAT_NOISE = 1e-9


class CannotEvaluate(DriftloopError):
    """Drift cannot be judged on this data; the reason names the column."""

    exit_code = 7


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's verdict on one column; `score` means what `method` says (p-value, distance)."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "method": self.method,
            "score": _json_float(self.score),
            "threshold": _json_float(self.threshold),
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class DriftSummary:
    """Per-column drift of the monitored features, plus the prediction's (not in the share)."""

    columns: tuple[ColumnDrift, ...]
    drifted_share: float
    n_reference: int
    n_current: int
    prediction: ColumnDrift | None = None

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns if c.drifted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [c.to_dict() for c in self.columns],
            "drifted_columns": list(self.drifted_columns),
            "drifted_share": self.drifted_share,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }


def _json_float(value: float) -> float | str:
    """Finite floats as is; inf as a string, since strict JSON has no Infinity."""
    return value if math.isfinite(value) else str(value)


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    monitor: MonitorParams,
    *,
    prediction_column: str | None = None,
    html_path: Path | None = None,
    json_path: Path | None = None,
) -> DriftSummary:
    """Evidently drift of `columns` (and the prediction) between reference and current.

    Args:
        reference, current: the frames to compare (other columns are ignored).
        columns: the monitored features; `drifted_share` is over these.
        monitor: method/threshold per column (`per_feature` entry, else `method`/`threshold`),
            and `min_rows`.
        prediction_column: also test this column; returned as `prediction`, not in the share.
        html_path, json_path: where to save Evidently's report, if given.

    Raises:
        CannotEvaluate: too few rows, or a column missing, empty, constant, or with a NaN score.
        ConfigError: a method Evidently does not know, or one that does not fit the column type.
    """
    if not columns:
        raise CannotEvaluate("no columns to monitor")
    tested = list(dict.fromkeys([*columns, *([prediction_column] if prediction_column else [])]))
    _check_inputs(reference, current, tested, monitor.min_rows)
    figures = html_path is not None  # plotly widgets only for an HTML report
    snapshot = _run_report(
        _only(reference, tested), _only(current, tested), tested, monitor, figures=figures
    )
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_json(str(json_path))
    by_column = {c.column: c for c in _parse_snapshot(json.loads(snapshot.json()))}
    results = tuple(_result_for(by_column, name) for name in columns)
    return DriftSummary(
        columns=results,
        drifted_share=sum(c.drifted for c in results) / len(results),
        n_reference=len(reference),
        n_current=len(current),
        prediction=_result_for(by_column, prediction_column) if prediction_column else None,
    )


def _check_inputs(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], min_rows: int
) -> None:
    """Fail closed before Evidently sees data it would summarise as a quiet "no drift"."""
    for side, frame in (("reference", reference), ("current", current)):
        if len(frame) < min_rows:
            raise CannotEvaluate(f"{side} has {len(frame)} rows, fewer than min_rows={min_rows}")
        for name in columns:
            if name not in frame.columns:
                raise CannotEvaluate(f"column {name!r} is missing from {side}")
    for name in columns:
        ref_values, cur_values = _usable_values(reference[name]), _usable_values(current[name])
        for side, values in (("reference", ref_values), ("current", cur_values)):
            if len(values) == 0:
                raise CannotEvaluate(f"column {name!r} is entirely NaN in {side}")
            if len(values) < min_rows:
                raise CannotEvaluate(
                    f"column {name!r} has {len(values)} non-missing values in {side}, "
                    f"fewer than min_rows={min_rows}"
                )
        ref_const, cur_const = _is_constant(ref_values), _is_constant(cur_values)
        if ref_const or cur_const:
            where = "both" if ref_const and cur_const else "reference" if ref_const else "current"
            raise CannotEvaluate(f"column {name!r} is constant in {where}: no distribution to test")


def _only(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The tested columns alone (Evidently copies and profiles every column it is given)."""
    return frame if list(frame.columns) == columns else frame[columns]


def _usable_values(series: pd.Series) -> pd.Series:
    """The values Evidently tests: without NaN and, for numbers, without +-inf."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        finite = np.isfinite(values)
        return series if finite.all() else series[finite]
    return series.dropna()


def _is_constant(values: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return bool(values.min() == values.max())  # O(n), unlike nunique
    return values.nunique() <= 1


def stattest_for(column: str, monitor: MonitorParams) -> tuple[str, float | None]:
    """Method and threshold for a column: its `per_feature` entry as a whole, else the defaults.

    A per-feature entry without a threshold gets Evidently's default for *its* method, not
    `monitor.threshold`: thresholds mean different things for p-values and distances.
    """
    spec = monitor.per_feature.get(column)
    if spec is not None:
        return spec.method, spec.threshold
    return monitor.method, monitor.threshold


def _run_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    monitor: MonitorParams,
    *,
    figures: bool = True,
) -> Any:
    """One explicit Evidently ValueDrift metric per column, with Evidently's tests.

    Without `figures` (no HTML wanted), `ValueDriftScore`: the same calculation, no plotly.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    from driftloop.evidently_metrics import ValueDriftScore

    numeric = [c for c in columns if _is_numeric(reference[c]) and _is_numeric(current[c])]
    categorical = [c for c in columns if c not in numeric]
    _check_methods(columns, numeric, monitor)
    definition = DataDefinition(
        numerical_columns=numeric,
        categorical_columns=categorical,
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    metric_type = ValueDrift if figures else ValueDriftScore
    metrics = []
    for name in columns:
        method, threshold = stattest_for(name, monitor)
        metrics.append(metric_type(column=name, method=method, threshold=threshold))
    return Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _check_methods(columns: list[str], numeric: list[str], monitor: MonitorParams) -> None:
    """A method Evidently does not know, or not for this column type, is a params.yaml error."""
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    for name in columns:
        method, _ = stattest_for(name, monitor)
        key = (
            f"monitor.per_feature.{name}.method"
            if name in monitor.per_feature
            else "monitor.method"
        )
        kind = ColumnType.Numerical if name in numeric else ColumnType.Categorical
        try:
            get_registered_stattest(method, kind)
        except ValueError as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"params.yaml: key '{key}': {reason} (column {name!r})") from None


def _parse_snapshot(raw: dict[str, Any]) -> list[ColumnDrift]:
    """The one place that indexes Evidently's snapshot JSON: ValueDrift metrics and their tests."""
    status_by_metric = {t["metric_config"]["metric_id"]: t["status"] for t in raw["tests"]}
    results = []
    for metric in raw["metrics"]:
        config = metric["config"]
        if not config["type"].endswith(_VALUE_DRIFT_TYPES):
            continue
        column, status = config["column"], status_by_metric.get(metric["id"])
        if status not in ("FAIL", "SUCCESS"):
            raise CannotEvaluate(f"column {column!r}: Evidently drift test status is {status}")
        score = float(metric["value"])
        if math.isnan(score):
            raise CannotEvaluate(f"column {column!r}: drift score ({config['method']}) is NaN")
        results.append(
            ColumnDrift(
                column=column,
                method=config["method"],
                score=score,
                threshold=float(config["threshold"]),
                drifted=status == "FAIL",  # Evidently's verdict: it knows p-value vs distance
            )
        )
    return results


def _result_for(by_column: dict[str, ColumnDrift], column: str) -> ColumnDrift:
    try:
        return by_column[column]
    except KeyError:
        raise CannotEvaluate(f"column {column!r}: Evidently returned no drift result") from None


# --- the retrain decision (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class PerformanceCheck:
    """The primary metric on the holdout (reference) and on labelled current rows."""

    metric: str
    reference: float
    current: float | None  # None: labels have not arrived yet
    n_labelled: int


@dataclass(frozen=True)
class RetrainDecision:
    """What to do, and a one-line reason why."""

    action: Literal["retrain", "no_action", "cannot_evaluate"]
    reason: str


def decide_retrain(
    drift: DriftSummary | None,
    performance: PerformanceCheck | None,
    monitor: MonitorParams,
    *,
    last_retrain: dt.date | None,
    today: dt.date,
    cannot_evaluate_reason: str | None = None,
    unseen_season: str | None = None,
) -> RetrainDecision:
    """Retrain on enough drift or a large enough metric drop, unless in cooldown; fail closed.

    `unseen_season` (the champion's training data holds too few rows of this time of year to
    be a reference) is a trigger of its own: the model is out of what it has seen.
    """
    if cannot_evaluate_reason is not None:
        return RetrainDecision("cannot_evaluate", _one_line(cannot_evaluate_reason))
    if drift is None and unseen_season is None:
        return RetrainDecision("cannot_evaluate", "no drift summary")
    if performance is not None and _has_nan(performance):
        return RetrainDecision(
            "cannot_evaluate",
            f"{performance.metric} is NaN (reference {performance.reference}, "
            f"current {performance.current})",
        )
    drift_trigger = _drift_trigger(drift, monitor) if drift is not None else None
    season_trigger = f"unseen season: {_one_line(unseen_season)}" if unseen_season else None
    triggers = [
        t for t in (season_trigger, drift_trigger, _metric_trigger(performance, monitor)) if t
    ]
    if not triggers and drift is not None:  # (no drift summary: unseen_season is a trigger)
        status = "; ".join([_drift_status(drift, monitor), _metric_status(performance, monitor)])
        return RetrainDecision("no_action", status)
    wanted = "; ".join(triggers)
    if last_retrain is not None and (today - last_retrain).days < monitor.cooldown_days:
        return RetrainDecision(
            "no_action",
            f"cooldown: last retrain {last_retrain.isoformat()} is {(today - last_retrain).days} "
            f"days ago (< {monitor.cooldown_days}); would retrain for {wanted}",
        )
    return RetrainDecision("retrain", wanted)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "cannot evaluate"


def _has_nan(perf: PerformanceCheck) -> bool:
    return math.isnan(perf.reference) or (perf.current is not None and math.isnan(perf.current))


def _drift_trigger(drift: DriftSummary, monitor: MonitorParams) -> str | None:
    if drift.drifted_share < monitor.drift_share:
        return None
    return f"drift: {_drift_status(drift, monitor)}"


def _drift_status(drift: DriftSummary, monitor: MonitorParams) -> str:
    n, drifted = len(drift.columns), drift.drifted_columns
    cmp = ">=" if drift.drifted_share >= monitor.drift_share else "<"
    names = ", ".join(drifted) if drifted else "none"
    text = (
        f"drifted share {drift.drifted_share:.2f} {cmp} {monitor.drift_share:.2f} "
        f"({len(drifted)}/{n} columns: {names})"
    )
    if drift.prediction is not None and drift.prediction.drifted:
        text += f"; prediction {drift.prediction.column!r} drifted"
    return text


def metric_drop(perf: PerformanceCheck) -> float | None:
    """How much worse current is than reference (positive = worse); None without labels."""
    if perf.current is None:
        return None
    if perf.metric in LOWER_IS_BETTER:
        return perf.current - perf.reference
    return perf.reference - perf.current


def _exceeds(drop: float, limit: float) -> bool:
    """drop > limit, ignoring float noise: 0.80 -> 0.70 is a drop of 0.10, not 0.1000000001."""
    return drop - limit > _FLOAT_NOISE


def _metric_trigger(perf: PerformanceCheck | None, monitor: MonitorParams) -> str | None:
    if perf is None or perf.n_labelled < monitor.min_labelled_rows:
        return None
    drop = metric_drop(perf)
    if drop is None or not _exceeds(drop, monitor.max_metric_drop):
        return None
    return f"performance: {_metric_status(perf, monitor)}"


def _metric_status(perf: PerformanceCheck | None, monitor: MonitorParams) -> str:
    if perf is None:
        return "no performance check"
    drop = metric_drop(perf)
    if drop is None or perf.current is None:
        return f"{perf.metric}: labels not arrived yet"
    if perf.n_labelled < monitor.min_labelled_rows:
        return (
            f"{perf.metric}: {perf.n_labelled} labelled rows < {monitor.min_labelled_rows}, "
            "not judged"
        )
    cmp = ">" if _exceeds(drop, monitor.max_metric_drop) else "<="
    return (
        f"{perf.metric} {perf.reference:.3f} -> {perf.current:.3f} "
        f"(drop {drop:+.3f} {cmp} {monitor.max_metric_drop:.3f}, {perf.n_labelled} labelled rows)"
    )
