"""Data drift with Evidently, and the pure retrain decision.

`compute_drift` is the only place that talks to Evidently: one explicit `ValueDrift` metric per
column, its method and threshold chosen by the column's kind (numerical, categorical, the
prediction) or its `per_feature` entry in params.yaml, never by Evidently's size-dependent auto
choice. The drift flag is read from Evidently's own test; the raw snapshot is parsed once, in
`_parse_snapshot`. Frames above `monitor.max_rows` are sampled (seeded) first.

Only data with nothing to judge raises `CannotEvaluate` (too few rows, a missing or all-NaN
column). A column that is constant on one side is evidence, not an error: constant in the
current window while the reference varies is tested as usual when the test gives a valid result,
else marked drifted; two different constants, or a constant reference and a varying current, are
drifted; the same constant on both sides is not.

The retrain decision lives in `driftloop.policy`; drift thresholds calibrated from the reference
in `driftloop.thresholds` (passed in as `thresholds`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from driftloop.config import MonitorParams
from driftloop.errors import ConfigError, DriftloopError

_VALUE_DRIFT_TYPES = (":ValueDrift", ":ValueDriftScore")

ColumnKind = Literal["numerical", "categorical"]


class CannotEvaluate(DriftloopError):
    """Drift cannot be judged on this data; the reason names the column."""

    exit_code = 7


@dataclass(frozen=True)
class ColumnDrift:
    """The verdict on one column; `score` means what `method` says (p-value, distance).

    `score` is None when the verdict needed no statistical test, or the test gave no valid
    result (a constant column); `note` then says why.
    """

    column: str
    method: str
    score: float | None
    threshold: float
    drifted: bool
    kind: ColumnKind = "numerical"
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "score": None if self.score is None else _json_float(self.score),
            "threshold": _json_float(self.threshold),
            "drifted": self.drifted,
            "note": self.note,
        }


@dataclass(frozen=True)
class DriftSummary:
    """Per-column drift of the monitored features, plus the prediction's (not in the share).

    `n_reference`/`n_current` are the rows given; `*_sampled` the rows tested (<= max_rows).
    """

    columns: tuple[ColumnDrift, ...]
    drifted_share: float
    n_reference: int
    n_current: int
    n_reference_sampled: int
    n_current_sampled: int
    prediction: ColumnDrift | None = None

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns if c.drifted)

    @property
    def sampled(self) -> bool:
        return (self.n_reference_sampled, self.n_current_sampled) != (
            self.n_reference,
            self.n_current,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [c.to_dict() for c in self.columns],
            "drifted_columns": list(self.drifted_columns),
            "drifted_share": _json_float(self.drifted_share),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "n_reference_sampled": self.n_reference_sampled,
            "n_current_sampled": self.n_current_sampled,
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }


def _json_float(value: float) -> float | str:
    """Finite floats as is; NaN and inf as strings, since strict JSON has neither."""
    return value if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class _Spec:
    """How one column is tested, and the params.yaml key that chose its method."""

    column: str
    kind: ColumnKind
    method: str
    threshold: float | None
    key: str


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    monitor: MonitorParams,
    *,
    prediction_column: str | None = None,
    html_path: Path | None = None,
    json_path: Path | None = None,
    seed: int = 0,
    thresholds: Mapping[str, float] | None = None,
) -> DriftSummary:
    """Evidently drift of the features (and the prediction) between reference and current.

    Args:
        reference, current: the frames to compare (other columns are ignored).
        numerical, categorical: the monitored features; `drifted_share` is over these.
            Categorical columns are declared categorical to Evidently whatever their dtype.
        monitor: methods and thresholds (`method`, `categorical_method`, `prediction_method`,
            a `per_feature` entry overriding them), `min_rows`, `max_rows`.
        prediction_column: a predicted probability, also tested; returned as `prediction`,
            not in the share.
        html_path, json_path: where to save Evidently's report, if given (not written when
            every column was decided without a test).
        seed: for sampling frames above `monitor.max_rows`.
        thresholds: per-column thresholds (calibrated ones) that replace the params' own.

    Raises:
        CannotEvaluate: too few rows; a column missing, entirely NaN, with fewer than
            `min_rows` values, or declared numerical without numbers; a NaN score.
        ConfigError: a method Evidently does not know, or one that does not fit the column kind.
    """
    specs = _column_specs(numerical, categorical, prediction_column, monitor, thresholds)
    resolved = _resolve_thresholds(specs)
    names = [s.column for s in specs]
    _check_frames(reference, current, names, monitor.min_rows)
    ref = _prepare(sample_rows(reference, monitor.max_rows, seed)[names], specs)
    cur = _prepare(sample_rows(current, monitor.max_rows, seed)[names], specs)
    decided, notes = _constant_verdicts(ref, cur, specs, resolved, monitor.min_rows)
    tested = [s for s in specs if s.column not in decided]
    if tested:
        by_column = _run_evidently(ref, cur, tested, html_path=html_path, json_path=json_path)
        decided.update(
            {
                s.column: dataclasses.replace(by_column[s.column], note=notes.get(s.column))
                for s in tested
            }
        )
    results = tuple(decided[name] for name in [*numerical, *categorical])
    return DriftSummary(
        columns=results,
        drifted_share=sum(c.drifted for c in results) / len(results),
        n_reference=len(reference),
        n_current=len(current),
        n_reference_sampled=len(ref),
        n_current_sampled=len(cur),
        prediction=decided[prediction_column] if prediction_column else None,
    )


def _column_specs(
    numerical: list[str],
    categorical: list[str],
    prediction_column: str | None,
    monitor: MonitorParams,
    thresholds: Mapping[str, float] | None = None,
) -> list[_Spec]:
    """Method and threshold per column: its kind's defaults, unless `per_feature` names it;
    a threshold in `thresholds` (calibrated) wins over both.

    A per-feature entry without a threshold gets Evidently's default for *its* method, not the
    kind's threshold: thresholds mean different things for p-values and distances.
    """
    if not numerical and not categorical:
        raise CannotEvaluate("no columns to monitor")
    roles: list[tuple[str, ColumnKind, str]] = [  # column, kind, the MonitorParams method field
        *((name, "numerical", "method") for name in numerical),
        *((name, "categorical", "categorical_method") for name in categorical),
    ]
    if prediction_column is not None:
        roles.append((prediction_column, "numerical", "prediction_method"))
    names = [name for name, _, _ in roles]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"columns given more than one role (numerical/categorical/prediction): {repeated}"
        )
    specs = []
    for name, kind, method_field in roles:
        own = monitor.per_feature.get(name)
        if own is not None and own.method is not None:
            key = f"monitor.per_feature.{name}.method"
            specs.append(_Spec(name, kind, own.method, own.threshold, key))
        elif own is not None:  # a threshold alone: the kind's default method
            method = getattr(monitor, method_field)
            specs.append(_Spec(name, kind, method, own.threshold, f"monitor.{method_field}"))
        else:
            method = getattr(monitor, method_field)
            threshold = getattr(monitor, method_field.replace("method", "threshold"))
            specs.append(_Spec(name, kind, method, threshold, f"monitor.{method_field}"))
    if thresholds:
        specs = [
            dataclasses.replace(s, threshold=thresholds[s.column]) if s.column in thresholds else s
            for s in specs
        ]
    return specs


def column_methods(
    numerical: list[str],
    categorical: list[str],
    prediction_column: str | None,
    monitor: MonitorParams,
) -> list[tuple[str, ColumnKind, str]]:
    """(column, kind, method) of every tested column, as `compute_drift` tests them."""
    specs = _column_specs(numerical, categorical, prediction_column, monitor)
    return [(s.column, s.kind, s.method) for s in specs]


def _resolve_thresholds(specs: list[_Spec]) -> dict[str, float]:
    """Each column's threshold (Evidently's default for the method when unset).

    A method Evidently does not know, or not for this column kind, is a params.yaml error.
    """
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest

    thresholds = {}
    for spec in specs:
        try:
            stattest = get_registered_stattest(spec.method, _evidently_kind(spec.kind))
        except ValueError as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(
                f"params.yaml: key '{spec.key}': {reason} (column {spec.column!r}, {spec.kind})"
            ) from None
        default = stattest.default_threshold
        thresholds[spec.column] = default if spec.threshold is None else spec.threshold
    return thresholds


def _evidently_kind(kind: ColumnKind) -> Any:
    from evidently.legacy.core import ColumnType

    return ColumnType.Numerical if kind == "numerical" else ColumnType.Categorical


def _check_frames(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], min_rows: int
) -> None:
    """Fail closed on frames too short, or without a tested column."""
    for side, frame in (("reference", reference), ("current", current)):
        if len(frame) < min_rows:
            raise CannotEvaluate(f"{side} has {len(frame)} rows, fewer than min_rows={min_rows}")
        for name in columns:
            if name not in frame.columns:
                raise CannotEvaluate(f"column {name!r} is missing from {side}")


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, drawn without replacement with `seed`, in their original order."""
    if len(frame) <= max_rows:
        return frame
    keep = np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False)
    return frame.iloc[np.sort(keep)]


def _prepare(frame: pd.DataFrame, specs: list[_Spec]) -> pd.DataFrame:
    """Numerical columns as numbers (bools as 0/1); categorical ones untouched."""
    for spec in specs:
        if spec.kind != "numerical":
            continue
        values = frame[spec.column]
        if pd.api.types.is_bool_dtype(values):
            frame = frame.assign(**{spec.column: values.astype(float)})
        elif not pd.api.types.is_numeric_dtype(values):
            raise CannotEvaluate(
                f"column {spec.column!r} is declared numerical but holds {values.dtype} values"
            )
    return frame


def _usable_values(series: pd.Series, kind: ColumnKind) -> pd.Series:
    """The values Evidently tests: without NaN and, for numbers, without +-inf."""
    if kind == "numerical":
        values = series.to_numpy(dtype=float, na_value=np.nan)
        finite = np.isfinite(values)
        return series if finite.all() else series[finite]
    return series.dropna()


def _constant_value(values: pd.Series, kind: ColumnKind) -> tuple[bool, Any]:
    """(True, the value) for a column with a single distinct value, else (False, None)."""
    if kind == "numerical":
        low, high = values.min(), values.max()  # O(n), unlike nunique
        return (bool(low == high), _plain(low) if low == high else None)
    uniques = values.unique()
    return (len(uniques) == 1, _plain(uniques[0]) if len(uniques) == 1 else None)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _constant_verdicts(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    specs: list[_Spec],
    thresholds: dict[str, float],
    min_rows: int,
) -> tuple[dict[str, ColumnDrift], dict[str, str]]:
    """Verdicts that need no Evidently run, and notes for constant columns it will test."""
    decided: dict[str, ColumnDrift] = {}
    notes: dict[str, str] = {}
    for spec in specs:
        ref_values = _values_to_judge(ref[spec.column], spec, "reference", min_rows)
        cur_values = _values_to_judge(cur[spec.column], spec, "current", min_rows)
        threshold = thresholds[spec.column]
        drifted, note = _constant_verdict(spec, threshold, ref_values, cur_values)
        if drifted is not None and note is not None:
            decided[spec.column] = ColumnDrift(
                spec.column, spec.method, None, threshold, drifted, spec.kind, note
            )
        elif note is not None:
            notes[spec.column] = note
    return decided, notes


def _values_to_judge(series: pd.Series, spec: _Spec, side: str, min_rows: int) -> pd.Series:
    """The column's usable values; CannotEvaluate when there are none or too few to judge."""
    values = _usable_values(series, spec.kind)
    if len(values) == 0:
        raise CannotEvaluate(f"column {spec.column!r} is entirely NaN in {side}")
    if len(values) < min_rows:
        raise CannotEvaluate(
            f"column {spec.column!r} has {len(values)} non-missing values in {side}, "
            f"fewer than min_rows={min_rows}"
        )
    return values


def _constant_verdict(
    spec: _Spec, threshold: float, ref_values: pd.Series, cur_values: pd.Series
) -> tuple[bool | None, str | None]:
    """(drifted, note) for a column constant on a side; drifted None: let Evidently test it.

    A constant is evidence: the same one on both sides is no drift, two different ones or a
    reference that never varied are drift, and a constant window against a varying reference
    is tested as usual when the test gives a valid result (else drifted).
    """
    ref_const, ref_value = _constant_value(ref_values, spec.kind)
    cur_const, cur_value = _constant_value(cur_values, spec.kind)
    if ref_const and cur_const:
        if ref_value == cur_value:
            return False, f"constant {ref_value!r} in both reference and current"
        return True, f"constant {ref_value!r} in reference, {cur_value!r} in current"
    if ref_const:
        return True, f"constant {ref_value!r} in reference, varies in current"
    if not cur_const:
        return None, None
    note = f"constant {cur_value!r} in current, varies in reference"
    problem = _invalid_test(spec, threshold, ref_values, cur_values)
    if problem is None:
        return None, note
    return True, f"{note}; {spec.method} gives no valid result ({problem}): drifted"


def _invalid_test(
    spec: _Spec, threshold: float, ref_values: pd.Series, cur_values: pd.Series
) -> str | None:
    """Why Evidently's stat test gives no valid result on these values (None: it does).

    Evidently runs the very same registered test; probing first keeps one degenerate column
    from failing the whole report.
    """
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest

    stattest = get_registered_stattest(spec.method, _evidently_kind(spec.kind))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = stattest(ref_values, cur_values, _evidently_kind(spec.kind), threshold)
    except Exception as exc:  # any failure of a third-party test means "no valid result"
        first_sentence = " ".join(str(exc).split()).split(". ")[0].rstrip(".")
        return f"{type(exc).__name__}: {first_sentence}"[:200]
    score = float(result.drift_score)
    return None if math.isfinite(score) else f"score {score}"


def _run_evidently(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    specs: list[_Spec],
    *,
    html_path: Path | None,
    json_path: Path | None,
) -> dict[str, ColumnDrift]:
    """Run the report on the tested columns, save it if asked, parse it once."""
    snapshot = _run_report(ref, cur, specs, figures=html_path is not None)
    for path, save in ((html_path, snapshot.save_html), (json_path, snapshot.save_json)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(str(path))
    kinds = {s.column: s.kind for s in specs}
    by_column = {c.column: c for c in _parse_snapshot(json.loads(snapshot.json()), kinds)}
    missing = [s.column for s in specs if s.column not in by_column]
    if missing:
        raise CannotEvaluate(f"column {missing[0]!r}: Evidently returned no drift result")
    return by_column


def _run_report(
    reference: pd.DataFrame, current: pd.DataFrame, specs: list[_Spec], *, figures: bool
) -> Any:
    """One explicit Evidently ValueDrift metric per column, with Evidently's tests.

    Without `figures` (no HTML wanted), `ValueDriftScore`: the same calculation, no plotly.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    from driftloop.evidently_metrics import ValueDriftScore

    columns = [s.column for s in specs]
    definition = DataDefinition(
        numerical_columns=[s.column for s in specs if s.kind == "numerical"],
        categorical_columns=[s.column for s in specs if s.kind == "categorical"],
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    metric_type = ValueDrift if figures else ValueDriftScore
    metrics = [metric_type(column=s.column, method=s.method, threshold=s.threshold) for s in specs]
    return Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(_only(current, columns), data_definition=definition),
        reference_data=Dataset.from_pandas(_only(reference, columns), data_definition=definition),
    )


def _only(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The tested columns alone (Evidently copies and profiles every column it is given)."""
    return frame if list(frame.columns) == columns else frame[columns]


def _parse_snapshot(raw: dict[str, Any], kinds: Mapping[str, ColumnKind]) -> list[ColumnDrift]:
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
                kind=kinds[column],
            )
        )
    return results


# --- performance on labelled window rows -------------------------------------------------------


@dataclass(frozen=True)
class PerformanceCheck:
    """The champion's holdout metrics (reference) and the same metrics on labelled window rows.

    `metric` is the primary metric. `current` is empty when no window row has its label yet;
    a metric may be NaN on the window (ROC AUC with one label class).
    """

    metric: str
    reference: Mapping[str, float]
    current: Mapping[str, float]
    n_labelled: int
    n_pending: int = 0  # window rows whose label has not arrived

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "reference": {k: _json_float(v) for k, v in self.reference.items()},
            "current": {k: _json_float(v) for k, v in self.current.items()},
            "n_labelled": self.n_labelled,
            "n_pending": self.n_pending,
        }
