"""`driftloop init`: propose a commented params file from a user's own table.

From the rows (a file, a folder of drops or a SQL table), the names of the timestamp, id and
target columns, and optionally a separate source of label batches, it infers the data contract
(each column's dtype, a range with a margin, the allowed values of closed text columns, which
columns may be null), chooses features, refuses unusable columns with a reason, and sizes the
training, monitoring and replay sections to the data's rate. The gate's tolerances (null share,
unseen categories, the distribution margin) are found by running the gate's own rules over the
batches the replay will ingest, so the file runs `run` and `replay` unchanged on the data it was
made from.

`propose` is pure (frames in, a `Proposal` out); `read_rows`, `write_params` and `scaffold`
(read, propose, render, write) are the edges. The rules are stated once, as the constants
below; the file's comments repeat them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from driftloop.config import SourceSpec, parse_params
from driftloop.errors import ConfigError, IngestError

# -- the rules -------------------------------------------------------------------------------------

RANGE_MARGIN = 0.5  # min/max: the observed range widened by this share of its width each side
ALLOWED_MAX = 20  # text columns with at most this many values get `allowed` (if the set is closed)
OPTIONAL_NULL_SHARE = 0.05  # a column null in more rows than this is `required: false`
OPTIONAL_BATCH_NULL_SHARE = 0.10  # ... or null in more than this in any one replayed batch
ID_LIKE_SHARE = 0.9  # a text column with distinct values in this share of its rows is an id
TOO_MANY_SHARE = 0.5  # a text column with more distinct values than this share of its rows ...
TOO_MANY_VALUES = 1000  # ... or more than this many is free text, not a category
CALENDAR_MATCH = 0.75  # an int column equal to a part of the timestamp this often (another zone)
TREND_CORRELATION = 0.98  # |rank correlation with time| above this: a counter or a running total
LEAK_AUC = 0.99  # a numeric column that alone separates the label this well copies it
LEAK_ACCURACY = 0.99  # a categorical column whose values give the label this often copies it
LEAK_SUSPECT_AUC = 0.85  # a numeric column separating the label this well alone is worth a look
SEGMENT_MAX_VALUES = 12  # a segment column has 2 to this many values
INITIAL_SHARES = (0.25, 0.3, 0.35, 0.4, 0.5, 0.6)  # replay: first model's share of the time span
MIN_FIT_ROWS = 100  # labelled rows the first model trains on (at least)
MIN_HOLDOUT_ROWS = 30  # labelled rows in its holdout (at least), both classes present
MONITOR_WINDOWS = (7, 14, 28, 56, 91)  # days; the shortest holding WINDOW_ROWS rows is chosen
WINDOW_ROWS = 200
MIN_MONITOR_ROWS = 14  # monitor.min_rows at least; a feature needs twice this in most windows
RETRAIN_ROWS = 100_000  # retrain on at most about this many rows (else 365 days)
STEPS_MAX = 104  # replay steps at most (longer histories take longer steps)
SAFETY = 1.5  # gate tolerances found on the replayed batches are widened by this factor
DISTRIBUTION_MARGIN_MIN, DISTRIBUTION_MARGIN_MAX = 0.25, 2.0
UNKNOWN_SHARE_MIN, UNKNOWN_SHARE_MAX = 0.02, 0.5
NULL_SHARE_MAX = 0.15

# a date with its year (2024-01-31, 31/01/2024) or a clock time (08:15): version strings such as
# 2.1.0 are not times
TIME_LIKE = r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}|\d{1,2}:\d{2}"
GRAINS = ("D", "h", "30min", "15min", "10min", "5min", "min")
CALENDAR_PARTS = {
    "year": "year",
    "month": "month",
    "day": "day",
    "hour": "hour",
    "minute": "minute",
    "weekday": "weekday",
    "day of year": "dayofyear",
}


@dataclass(frozen=True)
class InitRequest:
    """What the user gave: the rows' source, the column roles, the label rule, the model name."""

    source: SourceSpec
    time: str
    target: str
    id: str | None = None
    labels: SourceSpec | None = None
    label_time: str | None = None
    above: float | None = None
    at_least: float | None = None
    name: str | None = None


@dataclass(frozen=True)
class Column:
    """What init decided about one column: its role, its spec in data.columns and why."""

    name: str
    role: str  # timestamp, id, target, label_time, numerical, categorical, refused
    spec: dict[str, Any] | None  # the data.columns entry (None: not declared)
    note: str  # what was observed, or why the column is refused

    @property
    def refused(self) -> bool:
        return self.role == "refused"


@dataclass
class Proposal:
    """A params mapping with a comment per key, the header, and the decision on each column."""

    params: dict[str, Any]
    columns: list[Column]
    header: list[str]
    notes: dict[str, str] = field(default_factory=dict)  # "section.key" -> a trailing comment
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The `--json` document (without the path)."""
        features = self.params["features"]
        return {
            "name": self.params["train"]["model_name"],
            **self.facts,
            "features": {
                "numerical": features["numerical"],
                "categorical": features["categorical"],
                "calendar": features["calendar"],
            },
            "refused": {
                c.name: ROLE_REASONS.get(c.role, c.note)
                for c in self.columns
                if c.role not in ("numerical", "categorical")
            },
            "columns": {
                c.name: c.spec for c in self.columns if c.spec is not None and not c.refused
            },
            "target": self.params["target"],
            "labels": self.params.get("labels"),
            "segments": self.params["evaluation"]["segments"],
            "replay": {k: self.params["replay"][k] for k in REPLAY_KEYS},
            "monitor": {k: self.params["monitor"][k] for k in ("window_days", "min_rows")},
            "warnings": self.warnings,
        }


REPLAY_KEYS = ("initial_until", "end", "step_days", "holdout_days")
ROLE_REASONS = {
    "timestamp": "the timestamp: event time (features.calendar derives from it)",
    "id": "the id: a row key",
    "target": "the target",
    "label_time": "the label time: when each label became known",
}


# -- reading the rows ------------------------------------------------------------------------------


def read_rows(spec: SourceSpec, project: Path, time_columns: list[str], key: str) -> pd.DataFrame:
    """Every row of a file, a folder (or glob) of drops, or a SQL table or query, as driftloop
    reads them (no type hints: a column's dtype is what the reader makes of it)."""
    from driftloop import sources

    if spec.kind == "sql":
        role = sources.Role("data", None, (), key)
        frame = sources._select(spec, role, None, None, None)
        for column in time_columns:
            frame = sources.parse_times(frame, column)
        return frame
    if spec.kind == "file":
        paths = [_where(project, str(spec.path))]
    elif spec.kind == "folder":
        paths = sources.folder_files(project, str(spec.path))
        if not paths:
            raise IngestError(f"{spec.path}: no CSV or Parquet files")
    else:
        raise ConfigError(f"{key}: init reads a file, a folder or a SQL table, not {spec.kind}")
    frames = []
    for path in paths:
        batch = sources.read_table(path, [], time_columns)
        if batch.read_error is not None:
            raise IngestError(f"{path}: {batch.read_error}")
        frames.append(batch.frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _where(project: Path, path: str) -> Path:
    given = Path(path)
    return given if given.is_absolute() else project / given


def source_value(spec: SourceSpec) -> Any:
    """A source as params write it: a path as text, a SQL source as a mapping."""
    if spec.kind in ("file", "folder"):
        return str(spec.path)
    return spec.model_dump(exclude_defaults=True, exclude={"name"}) | {"kind": spec.kind}


def model_name(request: InitRequest) -> str:
    """`--name`, else the source's file, folder or table name, as a folder-safe identifier."""
    if request.name:
        raw = request.name
    elif request.source.kind == "sql":
        raw = (request.source.table or "model").rpartition(".")[2]
    else:
        path = str(request.source.path)
        parts = [p for p in re.split(r"[\\/]", path) if p and not set(p) & set("*?[")]
        raw = Path(parts[-1]).stem if parts else "model"
    text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "model"
    return f"m_{name}" if name[0].isdigit() else name


# -- what one column holds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """One column as read: its dtype for params (None: not declarable), nulls, values."""

    dtype: str | None
    kind: str  # bool, int, float, text, time, empty
    rows: int
    nulls: int
    distinct: int
    low: float | None = None
    high: float | None = None

    @property
    def present(self) -> int:
        return self.rows - self.nulls

    @property
    def null_share(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0


def column_facts(values: pd.Series) -> Facts:
    """The dtype driftloop will see (an int column with nulls reads as float), nulls, range."""
    present = values.dropna()
    rows, nulls = len(values), int(values.isna().sum())
    distinct = int(present.nunique())
    if present.empty:
        return Facts(None, "empty", rows, nulls, 0)
    if pd.api.types.is_datetime64_any_dtype(values):
        return Facts(None, "time", rows, nulls, distinct)
    if pd.api.types.is_bool_dtype(values) or _all_bool(present):
        return Facts("bool", "bool", rows, nulls, distinct)
    if pd.api.types.is_numeric_dtype(values):
        dtype = "int" if pd.api.types.is_integer_dtype(values) else "float"
        low, high = float(present.min()), float(present.max())
        return Facts(dtype, dtype, rows, nulls, distinct, low, high)
    dtype = "category" if isinstance(values.dtype, pd.CategoricalDtype) else "str"
    return Facts(dtype, "text", rows, nulls, distinct)


def _all_bool(present: pd.Series) -> bool:
    return present.dtype == object and all(isinstance(v, bool | np.bool_) for v in present)


def padded_range(low: float, high: float, integer: bool) -> tuple[float, float]:
    """The observed range widened by RANGE_MARGIN x its width on each side, floored at 0 for
    non-negative data (capped at 0 for non-positive), rounded outwards to a readable step."""
    width = high - low
    lo, hi = low - RANGE_MARGIN * width, high + RANGE_MARGIN * width
    if low >= 0:
        lo = max(lo, 0.0)
    if high <= 0:
        hi = min(hi, 0.0)
    span = hi - lo
    step = 10.0 ** (math.floor(math.log10(span)) - 1) if span > 0 else 1.0
    if integer:
        step = max(step, 1.0)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if integer:
        return int(lo), int(hi)
    return float(f"{lo:.12g}"), float(f"{hi:.12g}")


def closed_values(values: pd.Series) -> list[Any] | None:
    """The values of a text column in time order, if few (ALLOWED_MAX) and all already seen in
    the first half of the rows; None for a set that is large or grew over the data."""
    present = values.dropna()
    every = set(present.unique())
    if not every or len(every) > ALLOWED_MAX:
        return None
    if not every <= set(present.iloc[: max(1, len(present) // 2)].unique()):
        return None
    return sorted((_plain(v) for v in every), key=str)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- refusals --------------------------------------------------------------------------------------


def refusal(
    name: str, values: pd.Series, facts: Facts, times: pd.Series, y: pd.Series | None
) -> str | None:
    """Why a column cannot be a feature (None: it can). `values` and `times` are in time order;
    `y` is the 0/1 label where known (NaN elsewhere), or None without labels."""
    if facts.kind == "empty":
        return "all null: its type cannot be inferred"
    if facts.kind == "time":
        return "a second time column: only data.timestamp_column is read as a time"
    if facts.distinct == 1:
        return f"constant (always {_plain(values.dropna().iloc[0])!r})"
    if facts.kind == "text":
        reason = _text_refusal(values, facts)
    elif facts.kind in ("int", "float"):
        reason = _numeric_refusal(values, facts, times)
    else:
        reason = None
    leak = _leak(values, facts, y) if y is not None else None
    return leak or reason  # a copy of the label is the reason that matters most


def _text_refusal(values: pd.Series, facts: Facts) -> str | None:
    if facts.present >= 20 and facts.distinct >= ID_LIKE_SHARE * facts.present:
        return f"id-like: {facts.distinct:,} distinct values in {facts.present:,} rows"
    if facts.distinct > TOO_MANY_VALUES or facts.distinct > TOO_MANY_SHARE * facts.present:
        return (
            f"too many values for a category ({facts.distinct:,} distinct in "
            f"{facts.present:,} rows): free text?"
        )
    if _looks_like_times(values):
        return "holds times as text: only data.timestamp_column is read as a time"
    return None


def _looks_like_times(values: pd.Series) -> bool:
    sample = values.dropna().astype(str).head(200)
    if sample.empty or not sample.str.contains(TIME_LIKE, regex=True).all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().all())


def _numeric_refusal(values: pd.Series, facts: Facts, times: pd.Series) -> str | None:
    present = values.notna().to_numpy()
    if facts.kind == "int":
        for part, attribute in CALENDAR_PARTS.items():
            derived = getattr(times.dt, attribute).to_numpy()
            if len(np.unique(derived[present])) < 2:
                continue  # a part that never changes (the hour of daily data) matches anything
            same = (values.to_numpy()[present] == derived[present]).mean() if present.any() else 0
            if same >= CALENDAR_MATCH:
                return f"the timestamp's {part} (in {same:.0%} of rows): a calendar feature"
        if facts.present >= 20 and facts.distinct >= 0.99 * facts.present:
            rho = _rank_correlation(values, times)
            if abs(rho) < TREND_CORRELATION:
                return f"id-like: {facts.distinct:,} distinct integers in {facts.present:,} rows"
    if facts.distinct > 2:
        rho = _rank_correlation(values, times)
        if abs(rho) >= TREND_CORRELATION:
            return (
                f"follows the time (rank correlation {rho:+.3f}): a counter or running total; "
                "a model trained on the past never sees its later values"
            )
    return None


def _rank_correlation(values: pd.Series, times: pd.Series) -> float:
    both = values.notna().to_numpy() & times.notna().to_numpy()
    if both.sum() < 3:
        return 0.0
    a = pd.Series(values.to_numpy()[both]).rank().to_numpy()
    b = pd.Series(times.to_numpy()[both]).rank().to_numpy()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _leak(values: pd.Series, facts: Facts, y: pd.Series) -> str | None:
    """A near-copy of the label: alone it separates the labelled rows almost perfectly."""
    known = y.notna().to_numpy() & values.notna().to_numpy()
    if known.sum() < 30:
        return None
    labels = y.to_numpy()[known].astype(int)
    if labels.min() == labels.max():
        return None
    x = pd.Series(values.to_numpy()[known])
    if facts.kind in ("int", "float"):
        auc = _auc(x.to_numpy(dtype=float), labels)
        if max(auc, 1 - auc) >= LEAK_AUC:
            return f"a near-copy of the target (alone it separates the label: ROC AUC {auc:.3f})"
        return None
    if x.nunique() > 0.5 * len(x):
        return None  # nearly a value per row "gives" any label: that is an id, not a copy
    table = pd.crosstab(x.astype(str), labels)
    accuracy = float(table.max(axis=1).sum() / len(labels))
    base = max(labels.mean(), 1 - labels.mean())
    if accuracy >= LEAK_ACCURACY and (1 - accuracy) <= 0.1 * (1 - base):
        return f"a near-copy of the target (its value gives the label in {accuracy:.1%} of rows)"
    return None


def suspected_leak(values: pd.Series, facts: Facts, y: pd.Series | None) -> str | None:
    """A numeric feature that alone separates the label well: often a value filled in after the
    outcome (a repair cost, a refund). Kept, with a warning to check when it is known."""
    if y is None or facts.kind not in ("int", "float"):
        return None
    known = y.notna().to_numpy() & values.notna().to_numpy()
    labels = y.to_numpy()[known].astype(int)
    if known.sum() < 30 or labels.min() == labels.max():
        return None
    auc = _auc(values.to_numpy()[known].astype(float), labels)
    if max(auc, 1 - auc) < LEAK_SUSPECT_AUC:
        return None
    return None if max(auc, 1 - auc) >= LEAK_AUC else f"ROC AUC {max(auc, 1 - auc):.3f}"


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = pd.Series(scores).rank().to_numpy()
    positives = labels == 1
    n1, n0 = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# -- the target ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The binary label per row (NaN: unknown), its params, and the label column's spec."""

    y: pd.Series
    params: dict[str, Any]
    spec: dict[str, Any]
    note: str


def binary_target(
    values: pd.Series, name: str, above: float | None, at_least: float | None
) -> Target:
    """0/1 or bool as is; a number with --above/--at-least; anything else is a clear error."""
    facts = column_facts(values)
    params: dict[str, Any] = {"name": _identifier(name), "column": name}
    if facts.kind == "empty":
        raise ConfigError(f"--target {name!r}: the column holds no values")
    if above is not None or at_least is not None:
        return _thresholded(values, facts, name, params, above, at_least)
    if facts.kind == "bool":
        y = values.map(lambda v: float(bool(v)) if pd.notna(v) else np.nan).astype(float)
        return Target(y, params, {"dtype": "bool", "required": False}, "the label (true/false)")
    present = values.dropna()
    if facts.kind in ("int", "float") and set(present.unique()) <= {0, 1}:
        spec: dict[str, Any] = (
            {"dtype": "int", "allowed": [0, 1]}
            if facts.dtype == "int"
            else {"dtype": "float", "min": 0.0, "max": 1.0}
        )
        y = pd.to_numeric(values, errors="coerce").astype(float)
        return Target(y, params, {**spec, "required": False}, "the label (0/1)")
    if facts.kind in ("int", "float"):
        raise ConfigError(
            f"--target {name!r} is numeric ({facts.distinct:,} values from {facts.low:g} to "
            f"{facts.high:g}): say which rows are positive with --above X (label = value > X) "
            "or --at-least X (label = value >= X)"
        )
    shown = ", ".join(repr(_plain(v)) for v in sorted(present.unique(), key=str)[:3])
    if facts.distinct == 2:
        raise ConfigError(
            f"--target {name!r} is text with two values ({shown}): driftloop learns a 0/1 or "
            "true/false label; write the positive value as 1 (or true) and the other as 0 in the "
            "source, then run init again"
        )
    raise ConfigError(
        f"--target {name!r} is text with {facts.distinct:,} values ({shown}, ...): driftloop "
        "learns a binary label (0/1, true/false, or a number with --above/--at-least)"
    )


def _thresholded(
    values: pd.Series,
    facts: Facts,
    name: str,
    params: dict[str, Any],
    above: float | None,
    at_least: float | None,
) -> Target:
    if above is not None and at_least is not None:
        raise ConfigError("give one of --above and --at-least, not both")
    if facts.kind not in ("int", "float") or facts.low is None or facts.high is None:
        raise ConfigError(f"--above/--at-least: target {name!r} is not numeric ({facts.kind})")
    number = pd.to_numeric(values, errors="coerce")
    hit = number > above if above is not None else number >= at_least
    y = hit.astype(float).where(number.notna())
    rule = f"> {above:g}" if above is not None else f">= {at_least:g}"
    if y.dropna().nunique() < 2:
        raise ConfigError(
            f"--target {name!r} {rule}: every row gets the same label ({facts.low:g} to "
            f"{facts.high:g} observed); choose a threshold inside the range"
        )
    params |= {"above": above} if above is not None else {"at_least": at_least}
    low, high = padded_range(facts.low, facts.high, facts.dtype == "int")
    spec = {"dtype": "float", "min": low, "max": high, "required": False}
    note = f"the label: 1 when {rule} ({y.mean():.1%} of labelled rows)"
    return Target(y, params, spec, note)


def _identifier(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "target"


# -- time ------------------------------------------------------------------------------------------


def grain(times: pd.Series) -> str | None:
    """The coarsest regular grain every timestamp sits on (midnight: D, whole hours: h, ...),
    if rows are not closer together than it; None for event-level or irregular times."""
    distinct = np.unique(times.dropna().to_numpy(dtype="datetime64[ns]"))
    if len(distinct) < 3:
        return None
    ticks = distinct.view("i8")
    median_gap = float(np.median(np.diff(ticks)))
    for alias in GRAINS:
        unit = _length(alias).value
        if median_gap >= unit and not (ticks % unit).any():
            return alias
    return None


def _length(alias: str) -> pd.Timedelta:
    return pd.Timedelta(alias if alias[0].isdigit() else f"1{alias}")


def calendar_features(times: pd.Series, every: str | None, span_days: float) -> list[str]:
    """hour when rows carry a time of day, weekday when the grain is at most a day and the data
    spans two weeks, day_of_year when it spans two years (so the first model saw a year)."""
    chosen = []
    day = pd.Timedelta("1D")
    finer_than_day = every is None or _length(every) < day
    if finer_than_day and times.dt.hour.nunique() >= 2:
        chosen.append("hour")
    distinct = np.unique(times.dropna().to_numpy(dtype="datetime64[ns]"))
    gap = pd.Timedelta(int(np.median(np.diff(distinct.view("i8"))))) if len(distinct) > 1 else day
    if gap <= day and span_days >= 14 and times.dt.weekday.nunique() >= 2:
        chosen.append("weekday")
    if span_days >= 730:
        chosen.append("day_of_year")
    return chosen


def _end_of(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(day) + pd.Timedelta("1D")


def window_counts(
    times: pd.Series, present: np.ndarray, days: Iterable[dt.date], window: int
) -> np.ndarray:
    """How many `present` rows each `window`-day window ending on each day holds (rows in
    time order): what a monitoring window at each replay step has to judge a column on."""
    ends = np.array([_end_of(day) for day in days], dtype="datetime64[ns]")
    if not len(ends):
        return np.zeros(0, dtype=int)
    ticks = times.to_numpy(dtype="datetime64[ns]")
    total = np.concatenate([[0], np.cumsum(present.astype(int))])
    stop = np.searchsorted(ticks, ends, side="left")
    start = np.searchsorted(ticks, ends - np.timedelta64(window, "D"), side="left")
    return np.asarray(total[stop] - total[start])


# -- the replay plan and the gate's tolerances -----------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """The rows in time order with what is known of their labels (for planning)."""

    times: pd.Series  # event time
    y: pd.Series  # 0/1 or NaN
    known_at: pd.Series  # when each label became known (NaT: never)

    def as_of(self, day: dt.date) -> tuple[pd.Series, pd.Series]:
        """(times, labels) of rows with a label known by the end of `day`, event by then too."""
        end = _end_of(day)
        mask = (self.times < end) & (self.known_at < end) & self.y.notna()
        return self.times[mask], self.y[mask]


def trainable(labelled: Labelled, day: dt.date, holdout_days: int) -> bool:
    """Whether a model trained as of `day` has enough labelled rows, of both classes, to fit
    and to be judged on its last `holdout_days`."""
    times, y = labelled.as_of(day)
    if len(times) == 0:
        return False
    cutoff = times.max() - pd.Timedelta(days=holdout_days)
    fit, hold = y[times <= cutoff], y[times > cutoff]
    return (
        len(fit) >= MIN_FIT_ROWS
        and len(hold) >= MIN_HOLDOUT_ROWS
        and min(fit.sum(), len(fit) - fit.sum()) >= 5
        and min(hold.sum(), len(hold) - hold.sum()) >= 3
    )


def holdout_for(labelled: Labelled, day: dt.date, days: float) -> int | None:
    """The shortest holdout (20 to 40 % of `days`) that makes a model as of `day` trainable."""
    for share in (0.2, 0.25, 0.3, 0.4):
        holdout = max(1, round(share * days))
        if trainable(labelled, day, holdout):
            return holdout
    return None


@dataclass(frozen=True)
class ReplayPlan:
    initial_until: dt.date
    end: dt.date
    step_days: int
    holdout_days: int
    steps: list[dt.date]
    share: float  # of the time span the first model sees
    trainable: bool


def plan_replay(labelled: Labelled, rows_per_day: float) -> ReplayPlan:
    """The first model's cut (the first INITIAL_SHARES of the span that trains and is judged),
    the last day, and a step that holds a few dozen rows and keeps the replay to STEPS_MAX."""
    from driftloop.replay import step_calendar

    first, last = labelled.times.min(), labelled.times.max()
    end = last.date()
    span = (last - first) / pd.Timedelta("1D")
    cut, holdout, share, ok = None, None, INITIAL_SHARES[0], False
    for share in INITIAL_SHARES:
        day = (first + pd.Timedelta(days=share * span)).date()
        if day >= end:
            break
        holdout = holdout_for(labelled, day, (day - first.date()).days + 1)
        if holdout is not None:
            cut, ok = day, True
            break
    if cut is None:
        share = 0.5
        cut = min((first + pd.Timedelta(days=share * span)).date(), end - dt.timedelta(days=1))
        holdout = max(1, round(0.25 * ((cut - first.date()).days + 1)))
    remaining = max(1, (end - cut).days)
    step = 7 if rows_per_day * 7 >= 20 else 14 if rows_per_day * 14 >= 20 else 28
    step = max(1, min(step, remaining // 4 or 1))
    if remaining / step > STEPS_MAX:
        step = math.ceil(remaining / STEPS_MAX / 7) * 7
    steps = step_calendar(cut, end, step) if end > cut else []
    return ReplayPlan(cut, end, step, int(holdout or 1), steps, share, ok)


@dataclass(frozen=True)
class Tolerances:
    """The worst each gate rule met on the replayed batches: (value, where) per column."""

    nulls: dict[str, tuple[float, str]]
    unknown: dict[str, tuple[float, str]]
    margin: dict[str, tuple[float, str]]


def replay_batches(times: pd.Series, plan: ReplayPlan) -> list[tuple[int, int, str]]:
    """(start, stop, label) row ranges of the batches a replay ingests (rows in time order):
    the first model's, then one per step; and `run`'s single batch of everything."""
    ends = [_end_of(plan.initial_until), *(_end_of(day) for day in plan.steps)]
    ticks = times.to_numpy(dtype="datetime64[ns]")
    bounds = np.searchsorted(ticks, np.array(ends, dtype="datetime64[ns]"), side="left")
    labels = [f"up to {plan.initial_until}", *(f"the step to {day}" for day in plan.steps)]
    batches, start = [], 0
    for stop, label in zip(bounds, labels, strict=True):
        if stop > start:
            batches.append((start, int(stop), label))
        start = int(stop)
    return batches


def gate_tolerances(
    frame: pd.DataFrame,
    batches: list[tuple[int, int, str]],
    required: Iterable[str],
    open_categories: Iterable[str],
    numeric: Iterable[str],
    min_history: int = 60,
) -> Tolerances:
    """Run the gate's batch rules over the replayed batches (rows in time order): the null
    share of each required column, the share of unseen values of each open categorical column,
    and the distribution margin each numeric column's mean and median need (the accepted
    quantile range merged from per-batch sketches, as `profiles` does)."""
    from driftloop.profiles import GRID, merged_quantiles

    nulls: dict[str, tuple[float, str]] = {}
    unknown: dict[str, tuple[float, str]] = {}
    margin: dict[str, tuple[float, str]] = {}
    whole = [(0, len(frame), "the whole data (run)")]
    for name in required:
        isnull = frame[name].isna().to_numpy()
        for start, stop, where in [*whole, *batches]:
            _worst(nulls, name, float(isnull[start:stop].mean()), where)
    for name in open_categories:
        values = frame[name]
        for start, stop, where in batches:
            batch = values.iloc[start:stop].dropna()
            if start > 0 and len(batch):
                seen = set(values.iloc[:start].dropna().unique())
                _worst(unknown, name, float((~batch.isin(seen)).mean()), where)
    for name in numeric:
        numbers = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        sketches: list[tuple[int, list[float]]] = []
        for start, stop, where in batches:
            part = numbers[start:stop]
            part = part[~np.isnan(part)]
            if sketches and start >= min_history and len(part):
                low, high = merged_quantiles(sketches, (0.01, 0.99))
                need = _margin_needed(low, high, (float(part.mean()), float(np.median(part))))
                _worst(margin, name, need, where)
            if len(part):
                sketches.append((len(part), np.quantile(part, GRID).tolist()))
    return Tolerances(nulls, unknown, margin)


def _margin_needed(low: float, high: float, stats: Iterable[float]) -> float:
    width = high - low
    outside = max(max(low - s, s - high, 0.0) for s in stats)
    if outside == 0.0:
        return 0.0
    return outside / width if width > 0 else math.inf


def _worst(table: dict[str, tuple[float, str]], name: str, value: float, where: str) -> None:
    if name not in table or value > table[name][0]:
        table[name] = (value, where)


def _ceil(value: float, step: float) -> float:
    return float(f"{math.ceil(value / step - 1e-9) * step:.6g}")


# -- the proposal ----------------------------------------------------------------------------------


def propose(
    frame: pd.DataFrame,
    request: InitRequest,
    labels: pd.DataFrame | None = None,
    *,
    now: pd.Timestamp | None = None,
) -> Proposal:
    """The params of a model of these rows (and label batches), with a comment on each choice.

    Args:
        frame: every row of the data source, as driftloop reads it.
        request: the source, the column roles, the label rule, the model name.
        labels: every row of the label source (when labels arrive in batches of their own).
        now: the present, for `validation.max_future_skew` (default: the clock).
    """
    _check_columns(frame, request, labels)
    rows = _in_time_order(frame, request.time)
    times = rows[request.time]
    _check_keys(rows, request)
    target, known_at = _target_of(rows, request, labels)
    labelled = Labelled(times, target.y, known_at)
    span_days = max((times.max() - times.min()) / pd.Timedelta("1D"), 1.0)
    rate = len(rows) / span_days
    plan = plan_replay(labelled, rate)
    builder = _Builder(rows, request, target, labelled, plan, rate, span_days)
    return builder.build(labels, now or pd.Timestamp.now())


def _check_columns(frame: pd.DataFrame, request: InitRequest, labels: pd.DataFrame | None) -> None:
    """Every named column exists (one line naming the source and what it has)."""
    names = list(frame.columns)
    wanted = {"--time": request.time, "--id": request.id}
    if labels is None:
        wanted["--target"] = request.target
    for option, column in wanted.items():
        if column is not None and column not in frame.columns:
            raise ConfigError(
                f"{request.source.label}: {option} {column!r} is not a column "
                f"(columns: {', '.join(map(repr, names))})"
            )
    if labels is None:
        return
    if request.id is None or request.label_time is None:
        raise ConfigError("--labels needs --id (the join column) and --label-time")
    assert request.labels is not None
    for option, column in (
        ("--id", request.id),
        ("--target", request.target),
        ("--label-time", request.label_time),
    ):
        if column not in labels.columns:
            raise ConfigError(
                f"{request.labels.label}: {option} {column!r} is not a column of the labels "
                f"(columns: {', '.join(map(repr, labels.columns))})"
            )


def _in_time_order(frame: pd.DataFrame, time: str) -> pd.DataFrame:
    from driftloop.sources import parse_times

    rows = parse_times(frame, time)
    if not pd.api.types.is_datetime64_any_dtype(rows[time]):
        raise IngestError(f"--time {time!r}: its values are not times")
    bad = rows[time].isna()
    if bad.all():
        raise IngestError(f"--time {time!r}: no value parses as a time")
    if bad.any():
        example = frame.loc[bad, time].iloc[0]
        raise IngestError(
            f"--time {time!r}: {int(bad.sum()):,} rows have no time (e.g. {example!r}); "
            "the gate refuses them"
        )
    return rows.sort_values(time, kind="stable").reset_index(drop=True)


def _check_keys(rows: pd.DataFrame, request: InitRequest) -> None:
    if request.id is None:
        doubled = rows[request.time].duplicated().sum()
        if doubled:
            raise ConfigError(
                f"--time {request.time!r}: {doubled:,} rows share a timestamp with another; "
                "give --id COLUMN (a unique row key)"
            )
        return
    ids = rows[request.id]
    if ids.isna().any():
        raise IngestError(f"--id {request.id!r}: {int(ids.isna().sum()):,} rows have no id")
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise IngestError(
            f"--id {request.id!r} is not unique: {len(repeated):,} repeated values "
            f"(e.g. {_plain(repeated.iloc[0])!r})"
        )


def _target_of(
    rows: pd.DataFrame, request: InitRequest, labels: pd.DataFrame | None
) -> tuple[Target, pd.Series]:
    """The label per row and when it became known (the event time when rows carry it)."""
    times = rows[request.time]
    if labels is None:
        target = binary_target(
            rows[request.target], request.target, request.above, request.at_least
        )
        return target, times.where(target.y.notna())
    from driftloop.sources import parse_times

    assert request.label_time is not None and request.id is not None
    where = request.labels.label if request.labels else "labels"
    table = parse_times(labels, request.label_time)
    _check_labels(table, rows, request, where)
    target = binary_target(table[request.target], request.target, request.above, request.at_least)
    by_id = pd.DataFrame({"y": target.y.to_numpy(), "at": table[request.label_time].to_numpy()})
    by_id.index = table[request.id].to_numpy()
    by_id = by_id[~by_id.index.duplicated(keep="last")]
    joined = by_id.reindex(rows[request.id].to_numpy())
    y = pd.Series(joined["y"].to_numpy(dtype=float), index=rows.index)
    known_at = pd.Series(pd.to_datetime(joined["at"].to_numpy()), index=rows.index)
    late = known_at < times
    if late.any():
        example = rows.loc[late, request.id].iloc[0]
        raise IngestError(
            f"{where}: {int(late.sum()):,} labels are known before their row's time "
            f"(e.g. id {_plain(example)!r}); a replay would find them for rows not yet ingested"
        )
    return Target(y, target.params, target.spec, target.note), known_at


def _check_labels(
    table: pd.DataFrame, rows: pd.DataFrame, request: InitRequest, where: str
) -> None:
    """Label batches the label gate would refuse: no time, no label, unknown ids, conflicts."""
    assert request.label_time is not None and request.id is not None
    problems = {
        f"rows without a time in {request.label_time!r}": table[request.label_time].isna(),
        f"rows without a label in {request.target!r}": table[request.target].isna(),
        f"labels for ids not in the data ({request.id!r})": ~table[request.id].isin(
            rows[request.id]
        ),
    }
    for what, mask in problems.items():
        if mask.any():
            example = _plain(table.loc[mask, request.id].iloc[0])
            raise IngestError(f"{where}: {int(mask.sum()):,} {what} (e.g. id {example!r})")
    pairs = table[[request.id, request.target]].drop_duplicates()
    conflicting = pairs[request.id][pairs[request.id].duplicated()]
    if len(conflicting):
        raise IngestError(
            f"{where}: {len(conflicting):,} ids have two different labels "
            f"(e.g. {_plain(conflicting.iloc[0])!r})"
        )


class _Builder:
    """Assembles the params section by section, noting why each non-obvious value was chosen."""

    def __init__(
        self,
        rows: pd.DataFrame,
        request: InitRequest,
        target: Target,
        labelled: Labelled,
        plan: ReplayPlan,
        rate: float,
        span_days: float,
    ) -> None:
        self.rows, self.request, self.target = rows, request, target
        self.labelled, self.plan, self.rate, self.span_days = labelled, plan, rate, span_days
        self.name = model_name(request)
        self.notes: dict[str, str] = {}
        self.warnings: list[str] = []
        self.times = rows[request.time]
        self.every = grain(self.times)
        self.window = self._monitor_window()
        self.sparsest: tuple[str, float] | None = None  # feature with fewest values a window

    # -- columns and features

    def columns(self) -> list[Column]:
        request, out = self.request, []
        y = self.target.y if self.target.y.notna().any() else None
        out.append(Column(request.time, "timestamp", None, "event time (implicit, not a feature)"))
        for name in self.rows.columns:
            if name == request.time:
                continue
            values = self.rows[name]
            facts = column_facts(values)
            if name == request.target:
                if request.labels is None:  # else the label batches are the label's source
                    out.append(Column(name, "target", self.target.spec, self.target.note))
            elif name == request.id:
                spec = {"dtype": facts.dtype or "str"}
                out.append(Column(name, "id", spec, "the id: a unique row key, not a feature"))
            else:
                out.append(self._feature(name, values, facts, y))
        if request.labels is not None:
            out.append(Column(request.target, "target", self.target.spec, self._label_note()))
            out.append(
                Column(str(request.label_time), "label_time", None, "when each label was known")
            )
        return out

    def _feature(self, name: str, values: pd.Series, facts: Facts, y: pd.Series | None) -> Column:
        reason = refusal(name, values, facts, self.times, y)
        spec = self._spec(values, facts)
        if reason is not None or spec is None:
            return Column(name, "refused", spec, reason or "no dtype")
        if facts.nulls and (sparse := self._too_sparse(name, values, facts)) is not None:
            return Column(name, "refused", spec, sparse)
        role = "numerical" if facts.kind in ("int", "float") else "categorical"
        if (suspect := suspected_leak(values, facts, y)) is not None:
            self.warnings.append(
                f"{name!r} alone separates the label ({suspect}): make sure it is known when "
                "the prediction is made (a value filled in after the outcome leaks it)"
            )
        return Column(name, role, spec, self._observed(values, facts, spec))

    def _too_sparse(self, name: str, values: pd.Series, facts: Facts) -> str | None:
        """A column with too few values in a monitoring window to judge its drift (the
        monitor judges no drift at all then); else remember the sparsest for monitor.min_rows."""
        counts = window_counts(self.times, values.notna().to_numpy(), self.plan.steps, self.window)
        if not len(counts):
            return None
        median, low = float(np.median(counts)), float(np.quantile(counts, 0.1))
        if median < 2 * MIN_MONITOR_ROWS:
            return (
                f"mostly null ({facts.null_share:.0%}): a {self.window}-day monitoring window "
                f"holds a median of {median:.0f} values, too few to judge its drift"
            )
        if self.sparsest is None or low < self.sparsest[1]:
            self.sparsest = (name, low)
        return None

    def _spec(self, values: pd.Series, facts: Facts) -> dict[str, Any] | None:
        if facts.dtype is None:
            return None
        spec: dict[str, Any] = {"dtype": facts.dtype}
        low, high = facts.low, facts.high
        if facts.kind in ("int", "float") and low is not None and high is not None and high > low:
            spec["min"], spec["max"] = padded_range(low, high, facts.kind == "int")
        if facts.kind == "text" and (allowed := closed_values(values)) is not None:
            spec["allowed"] = allowed
        if facts.null_share > OPTIONAL_NULL_SHARE:
            spec["required"] = False
        return spec

    def _observed(self, values: pd.Series, facts: Facts, spec: dict[str, Any]) -> str:
        parts = []
        if facts.kind in ("int", "float"):
            parts.append(f"{facts.low:.4g} to {facts.high:.4g} observed")
        elif facts.kind == "bool":
            parts.append(f"{values.dropna().astype(bool).mean():.0%} true")
        elif "allowed" in spec:
            parts.append(f"{facts.distinct} values")
        else:
            parts.append(f"{facts.distinct} values, open: {self._why_open(values, facts)}")
        if facts.nulls:
            parts.append(f"{facts.nulls:,} null ({facts.null_share:.1%})")
        return "; ".join(parts)

    @staticmethod
    def _why_open(values: pd.Series, facts: Facts) -> str:
        if facts.distinct > ALLOWED_MAX:
            return f"more than {ALLOWED_MAX}"
        present = values.dropna()
        early = set(present.iloc[: max(1, len(present) // 2)].unique())
        newer = [v for v in present.unique() if v not in early]
        return f"{_plain(newer[0])!r} first appears in the second half"

    def _label_note(self) -> str:
        delay = (self.labelled.known_at - self.times).dt.total_seconds() / 86400
        known = delay.dropna()
        share = len(known) / len(self.times)
        if known.empty:
            return f"{self.target.note}: no row has a label yet"
        return (
            f"{self.target.note}, in label batches: {share:.0%} of rows labelled, 80% of them "
            f"{known.quantile(0.1):.1f} to {known.quantile(0.9):.1f} days after the event"
        )

    # -- sections

    def build(self, labels: pd.DataFrame | None, now: pd.Timestamp) -> Proposal:
        columns = self.columns()
        numerical = [c.name for c in columns if c.role == "numerical"]
        categorical = [c.name for c in columns if c.role == "categorical"]
        if not numerical and not categorical:
            refused = "; ".join(f"{c.name!r}: {c.note}" for c in columns if c.refused)
            raise ConfigError(f"no column can be a feature ({refused or 'no other columns'})")
        calendar = calendar_features(self.times, self.every, self.span_days)
        tolerances, columns = self._tolerances(columns, numerical, categorical)
        params: dict[str, Any] = {
            "data": self._data(columns),
            "target": self.target.params,
        }
        if self.request.labels is not None:
            params["labels"] = self._labels()
        params["validation"] = self._validation(tolerances, now)
        params["features"] = self._features(numerical, categorical, calendar)
        params["train"] = self._train()
        params["evaluation"] = self._evaluation(columns, categorical)
        params["promote"] = self._promote()
        params["monitor"] = self._monitor()
        params["retrain"] = self._retrain()
        params["replay"] = self._replay()
        params["reports"] = {
            key: f"reports/{self.name}/{key}.json"
            for key in ("ingest", "validation", "train", "promotion")
        }
        params["serve"] = {
            "log_dir": f"data/{self.name}/predictions",
            "feedback_dir": f"data/{self.name}/feedback",
        }
        parse_params(params, origin="the proposed params")  # fails loudly if a rule is wrong
        proposal = Proposal(params, columns, [], self.notes, self.warnings, self._facts())
        proposal.header = self._header(proposal)
        return proposal

    def _tolerances(
        self, columns: list[Column], numerical: list[str], categorical: list[str]
    ) -> tuple[Tolerances, list[Column]]:
        """The gate rules replayed on this data; columns too often null become optional."""
        batches = replay_batches(self.times, self.plan)
        specs = {c.name: c.spec for c in columns if c.spec is not None and not c.refused}
        present = {n: s for n, s in specs.items() if n in self.rows.columns}
        required = [n for n, s in present.items() if s.get("required", True)]
        open_categories = [
            n for n in categorical if specs[n]["dtype"] != "bool" and "allowed" not in specs[n]
        ]
        numeric = [
            n for n, s in present.items() if s["dtype"] in ("int", "float") and n != self.request.id
        ]
        found = gate_tolerances(self.rows, batches, required, open_categories, numeric)
        optional = {n for n, (share, _) in found.nulls.items() if share > OPTIONAL_BATCH_NULL_SHARE}
        if optional:
            columns = [self._optional(c, found) if c.name in optional else c for c in columns]
            kept = {n: v for n, v in found.nulls.items() if n not in optional}
            found = Tolerances(kept, found.unknown, found.margin)
        return found, columns

    @staticmethod
    def _optional(column: Column, found: Tolerances) -> Column:
        share, where = found.nulls[column.name]
        spec = {**(column.spec or {}), "required": False}
        return Column(column.name, column.role, spec, f"{column.note}; {share:.0%} null in {where}")

    def _data(self, columns: list[Column]) -> dict[str, Any]:
        request, name = self.request, self.name
        declared = {
            c.name: c.spec
            for c in columns
            if c.spec is not None and not c.refused and c.role != "timestamp"
        }
        self.notes["data.source"] = "read incrementally: what is new at each ingest"
        self.notes["data.timestamp_column"] = "event time; features.calendar derives from it"
        self.notes["data.until"] = "null: ingest everything there is; a date stops earlier"
        self.notes["data.lateness"] = (
            "null: a late row (older than the newest accepted) is always accepted; "
            "e.g. 7D refuses rows more than a week late"
        )
        if self.every is None:
            self.notes["data.frequency"] = "event-level or irregular times: no grain is enforced"
        else:
            self.notes["data.frequency"] = (
                "every timestamp sits on this grain: rows at a finer time are refused"
            )
        self.notes["data.raw_dir"] = "per model, so several models live in one project"
        return {
            "source": source_value(request.source),
            "until": None,
            "lateness": None,
            "timestamp_column": request.time,
            "id_column": request.id,
            "entity_columns": [],
            "frequency": self.every,
            "raw_dir": f"data/{name}/raw",
            "labels_dir": f"data/{name}/labels",
            "quarantine_dir": f"data/{name}/quarantine",
            "monitoring_dir": f"data/{name}/monitoring",
            "columns": declared,
        }

    def _labels(self) -> dict[str, Any]:
        assert self.request.labels is not None
        self.notes["labels.time_column"] = "when each label became known (replay joins by it)"
        return {
            "join_column": self.request.id,
            "time_column": self.request.label_time,
            "source": source_value(self.request.labels),
        }

    def _validation(self, found: Tolerances, now: pd.Timestamp) -> dict[str, Any]:
        out: dict[str, Any] = {"min_rows": 1}
        self.notes["validation.min_rows"] = "a growing file's tail or a short step may be small"
        worst_null = max(found.nulls.items(), key=lambda kv: kv[1][0], default=None)
        if worst_null is None or worst_null[1][0] == 0.0:
            out["max_null_share"] = 0.0
            self.notes["validation.max_null_share"] = "no required column was ever null"
        else:
            column, (share, where) = worst_null
            out["max_null_share"] = min(NULL_SHARE_MAX, _ceil(share * SAFETY, 0.01))
            self.notes["validation.max_null_share"] = (
                f"per required column; the worst batch: {column!r} {share:.1%} null in {where}"
            )
        newest = self.times.max()
        if self.labelled.known_at.notna().any():
            newest = max(newest, self.labelled.known_at.max())
        ahead = (newest - now) / pd.Timedelta("1D")
        out["max_future_skew"] = f"{math.ceil(ahead) + 1}D" if ahead > 0 else "1D"
        if ahead > 0:
            self.warnings.append(f"the data holds times {ahead:.1f} days in the future")
            self.notes["validation.max_future_skew"] = "the data holds future times"
        else:
            self.notes["validation.max_future_skew"] = "timestamps beyond now + this are refused"
        out["max_unknown_category_share"] = self._unknown_share(found)
        out.update(self._distribution(found))
        return out

    def _unknown_share(self, found: Tolerances) -> float:
        key = "validation.max_unknown_category_share"
        worst = max(found.unknown.items(), key=lambda kv: kv[1][0], default=None)
        if worst is None:
            self.notes[key] = "every categorical column has `allowed`: no open set to limit"
            return 0.0
        column, (share, where) = worst
        value = min(UNKNOWN_SHARE_MAX, max(UNKNOWN_SHARE_MIN, _ceil(share * SAFETY, 0.01)))
        self.notes[key] = (
            f"open categorical columns (no `allowed`); the worst batch: {column!r} "
            f"{share:.1%} unseen in {where}"
        )
        if share * SAFETY > UNKNOWN_SHARE_MAX:
            self.warnings.append(
                f"{column!r}: {share:.0%} of its values in {where} were unseen before; "
                f"validation.max_unknown_category_share {value} refuses such a batch"
            )
        return value

    def _distribution(self, found: Tolerances) -> dict[str, Any]:
        key = "validation.distribution_margin"
        worst = max(found.margin.items(), key=lambda kv: kv[1][0], default=None)
        out: dict[str, Any] = {
            "distribution_check": True,
            "distribution_min_history": 60,
            "distribution_quantiles": [0.01, 0.99],
        }
        if worst is None or worst[1][0] == 0.0:
            out["distribution_margin"] = DISTRIBUTION_MARGIN_MIN
            self.notes[key] = (
                "of the quantile range; every replayed batch's mean and median stayed inside it"
            )
            return out
        column, (need, where) = worst
        margin = (
            math.inf
            if math.isinf(need)
            else max(DISTRIBUTION_MARGIN_MIN, _ceil(need * SAFETY, 0.05))
        )
        if margin > DISTRIBUTION_MARGIN_MAX:
            out["distribution_check"] = False
            out["distribution_margin"] = DISTRIBUTION_MARGIN_MIN
            self.notes["validation.distribution_check"] = (
                f"off: {column!r} in {where} lies {need:.1f} quantile ranges outside the "
                "accepted data; a check that loose would catch nothing"
                if math.isfinite(need)
                else f"off: {column!r} is almost always one value (its 1-99% range is a point), "
                f"and {where} moves off it"
            )
            self.warnings.append(f"distribution check off: {column!r} moves too far ({where})")
            return out
        out["distribution_margin"] = margin
        self.notes[key] = (
            f"of the quantile range; the worst replayed batch: {column!r} in {where} "
            f"needed {need:.2f}"
        )
        return out

    def _features(
        self, numerical: list[str], categorical: list[str], calendar: list[str]
    ) -> dict[str, Any]:
        self.notes["features.calendar"] = (
            f"from the timestamp: {', '.join(calendar)}" if calendar else "none fits this span"
        )
        self.notes["features.lags"] = "event-level rows: no per-entity history"
        return {
            "numerical": numerical,
            "categorical": categorical,
            "lags": {"periods": []},
            "rolling": {"windows": []},
            "calendar": calendar,
        }

    def _retrain_window(self) -> int:
        if self.rate * 365 <= RETRAIN_ROWS:
            return 365
        return max(28, math.ceil(RETRAIN_ROWS / self.rate))

    def _train(self) -> dict[str, Any]:
        window = self._retrain_window()
        end = self.plan.end
        days = min(self.span_days, window)
        holdout = holdout_for(self.labelled, end, days) or max(1, round(0.25 * days))
        holdout = min(holdout, 180)
        big = len(self.rows) >= 50_000
        self.notes["train.holdout_days"] = (
            f"the most recent ~20 % of the training span ({holdout} of {days:.0f} days), "
            f"with at least {MIN_HOLDOUT_ROWS} labelled rows of both classes"
        )
        self.notes["train.candidates"] = (
            "each training picks one by its mean time-series CV ROC AUC (every candidate's "
            f"score is logged); boosting sized for {len(self.rows):,} rows"
        )
        self.notes["train.calibration"] = "only where it lowers the CV log loss"
        return {
            "experiment": f"{self.name}-train",
            "model_name": self.name,
            "holdout_days": holdout,
            "cv_splits": 3,
            "seed": 42,
            "candidates": {
                "logistic": {"model": "logistic_regression", "hyperparams": {"C": 0.1}},
                "boosting": {
                    "model": "hist_gradient_boosting",
                    "hyperparams": {
                        "max_iter": 200 if big else 100,
                        "learning_rate": 0.1,
                        "max_depth": 6 if big else 3,
                        "min_samples_leaf": 40 if big else 20,
                        "l2_regularization": 1.0,
                    },
                },
            },
            "select_by": "roc_auc",
            "calibration": "auto",
            "threshold_for": "accuracy",
            **({"cv_max_rows": 20_000} if big else {}),
        }

    def _evaluation(self, columns: list[Column], categorical: list[str]) -> dict[str, Any]:
        by_name = {c.name: c for c in columns}
        candidates = []
        for name in categorical:
            counts = self.rows[name].value_counts(normalize=True)
            if 2 <= len(counts) <= SEGMENT_MAX_VALUES:
                text = (by_name[name].spec or {}).get("dtype") in ("str", "category")
                candidates.append((text, len(counts), float(counts.min()), name))
        candidates.sort(reverse=True)
        segments = [candidates[0][3]] if candidates else []
        others = [c[3] for c in candidates[1:]]
        if segments:
            self.notes["evaluation.segments"] = (
                f"a categorical column with 2-{SEGMENT_MAX_VALUES} values"
                + (f" (also possible: {', '.join(map(repr, others))})" if others else "")
            )
        else:
            self.notes["evaluation.segments"] = (
                f"no categorical column has 2-{SEGMENT_MAX_VALUES} values; e.g. [weekday]"
            )
        base = float(self.labelled.y.mean())
        threshold = 0.5 if 0.35 <= base <= 0.65 else min(0.95, max(0.05, round(base, 2)))
        self.notes["evaluation.threshold"] = f"{base:.1%} of labelled rows are positive" + (
            "" if threshold == 0.5 else ": at 0.5 the model would call too few (f1, accuracy)"
        )
        return {"segments": segments, "threshold": threshold}

    def _replay_labelled(self) -> int:
        times, _ = self.labelled.as_of(self.plan.initial_until)
        if times.empty:
            return 0
        return int((times > times.max() - pd.Timedelta(days=self.plan.holdout_days)).sum())

    def _promote(self) -> dict[str, Any]:
        holdout_rows = self._replay_labelled()
        min_rows = max(21, min(500, holdout_rows // 3))
        segment_rows = max(10, min(200, holdout_rows // 20))
        self.notes["promote.floor"] = (
            "a first model must beat a coin toss; raise it once you know what a useful model scores"
        )
        self.notes["promote.rule"] = (
            "the retrained model wins unless it is significantly worse on the rows neither has "
            "seen (few between retrains: requiring a gain there keeps a stale champion on noise)"
        )
        self.notes["promote.min_holdout_rows"] = (
            f"a third of the replay's first holdout ({holdout_rows} labelled rows)"
        )
        return {
            "primary_metric": "roc_auc",
            "rule": "not_worse",
            "confidence": 0.95,
            "min_delta": 0.005,
            "max_segment_drop": 0.05,
            "floor": 0.5,
            "min_holdout_rows": min_rows,
            "min_segment_rows": segment_rows,
            "via": "gate",
        }

    def _monitor_window(self) -> int:
        for days in MONITOR_WINDOWS:
            if self.rate * days >= WINDOW_ROWS:
                return days
        return MONITOR_WINDOWS[-1]

    def _labelled_per_window(self, window: int) -> float:
        """The median number of window rows whose label is known at each replay step."""
        counts = []
        for day in self.plan.steps:
            end = _end_of(day)
            inside = (self.times >= end - pd.Timedelta(days=window)) & (self.times < end)
            counts.append(int((inside & (self.labelled.known_at < end)).sum()))
        return float(np.median(counts)) if counts else 0.0

    def _min_rows(self, expected: float) -> int:
        """A quarter of a typical window, but no more than the sparsest feature's values in
        nine windows of ten (each feature needs min_rows values for drift to be judged)."""
        quarter = min(500, int(0.25 * expected))
        self.notes["monitor.min_rows"] = "a quarter of a typical window"
        if self.sparsest is not None and self.sparsest[1] < quarter:
            name, low = self.sparsest
            quarter = int(low)
            self.notes["monitor.min_rows"] = (
                f"every feature needs this many values in a window: {name!r} has at least "
                f"{low:.0f} in nine windows of ten"
            )
        return max(MIN_MONITOR_ROWS, quarter)

    def _monitor(self) -> dict[str, Any]:
        window = self.window
        expected = self.rate * window
        min_rows = self._min_rows(expected)
        labelled = self._labelled_per_window(window)
        min_labelled = max(14, min(200, int(0.5 * labelled)))
        large = expected >= 1000
        seasonal = self.span_days >= 730
        self.notes["monitor.window_days"] = (
            f"~{expected:,.0f} rows at {self.rate:,.1f} rows a day "
            f"(the shortest of {list(MONITOR_WINDOWS)} days holding {WINDOW_ROWS})"
        )
        self.notes["monitor.min_labelled_rows"] = (
            f"half the labelled rows a window held at the replay's steps (median {labelled:.0f})"
        )
        self.notes["monitor.method"] = (
            "a distance: at this many rows a K-S p-value flags differences too small to matter"
            if large
            else "K-S test on the window's rows against the reference"
        )
        self.notes["monitor.drift_thresholds"] = (
            "each statistic's alert threshold comes from the champion's own reference: its "
            "distribution over reference chunks of the window's size, at this quantile"
        )
        self.notes["monitor.reference"] = (
            "the champion's training rows of the window's time of year (two years or more)"
            if seasonal
            else "all of the champion's training rows (less than two years: no season repeats)"
        )
        replayed = (self.plan.end - self.plan.initial_until).days
        cooldown = 28 if replayed >= 4 * 28 else max(self.plan.step_days, replayed // 4)
        self.notes["monitor.cooldown_days"] = (
            "at most one drift-triggered retrain in this many days: a week of real data often "
            "differs from the training rows in some column"
        )
        return {
            "experiment": f"{self.name}-monitor",
            "window_days": window,
            "min_rows": min_rows,
            "drift_share": 0.5,
            "method": "wasserstein" if large else "ks",
            "categorical_method": "jensenshannon",
            "drift_thresholds": "calibrated",
            "calibration_quantile": 0.99,
            "prediction_drift": True,
            "max_metric_drop": 0.1,
            "min_labelled_rows": min_labelled,
            "html_report": "always",
            "cooldown_days": cooldown,
            "reference": "seasonal" if seasonal else "training",
        }

    def _retrain(self) -> dict[str, Any]:
        window = self._retrain_window()
        every = max(self.plan.step_days, min(28, 4 * self.plan.step_days))
        if self.rate * 365 <= RETRAIN_ROWS:
            self.notes["retrain.window"] = (
                f"all history: a year holds ~{self.rate * 365:,.0f} rows, every one counts "
                "(rolling with window_days, or seasonal, forgets the oldest; the replay "
                "compares them)"
            )
            return {"window": "growing", "window_days": None, "schedule_every_days": every}
        self.notes["retrain.window_days"] = f"about {RETRAIN_ROWS:,} rows at this rate"
        return {"window": "rolling", "window_days": window, "schedule_every_days": every}

    def _replay(self) -> dict[str, Any]:
        plan = self.plan
        self.notes["replay.initial_until"] = (
            f"the first model sees the first {plan.share:.0%} of the time span"
            + (
                ""
                if plan.trainable
                else " (too few labelled rows for a first model anywhere: see the header)"
            )
        )
        if not plan.trainable:
            self.warnings.append(
                f"no first {', '.join(f'{s:.0%}' for s in INITIAL_SHARES)} of the span holds "
                f"{MIN_FIT_ROWS} labelled rows to train on and {MIN_HOLDOUT_ROWS} to judge "
                "(both classes): replay may stop at its first model"
            )
        self.notes["replay.end"] = "the last day of the data"
        self.notes["replay.step_days"] = (
            f"{len(plan.steps)} steps of ~{self.rate * plan.step_days:,.0f} rows"
        )
        self.notes["replay.holdout_days"] = "the first model's holdout: its last ~20-40 %"
        return {
            "initial_until": plan.initial_until.isoformat(),
            "end": plan.end.isoformat(),
            "step_days": plan.step_days,
            "holdout_days": plan.holdout_days,
            "report_dir": f"reports/{self.name}-replay",
            "title": f"driftloop replay: {self.name}",
        }

    # -- what is said about it

    def _facts(self) -> dict[str, Any]:
        return {
            "rows": len(self.rows),
            "first": self.times.min().isoformat(),
            "last": self.times.max().isoformat(),
            "rows_per_day": round(self.rate, 2),
            "labelled_rows": int(self.labelled.y.notna().sum()),
            "positive_share": round(float(self.labelled.y.mean()), 4),
        }

    def _header(self, proposal: Proposal) -> list[str]:
        """Paragraphs (a leading "- " is a bullet) saying what was inferred and what to check."""
        request, facts = self.request, proposal.facts
        refused = sum(c.refused for c in proposal.columns)
        labels = f"; labels from {request.labels.label}" if request.labels else ""
        paragraphs = [
            f"driftloop params of model `{self.name}`, proposed by `driftloop init` from "
            f"{request.source.label}: {facts['rows']:,} rows from "
            f"{self.times.min():%Y-%m-%d %H:%M} to {self.times.max():%Y-%m-%d %H:%M} "
            f"({self.span_days:,.0f} days, ~{self.rate:,.1f} rows a day), "
            f"{facts['labelled_rows']:,} labelled ({facts['positive_share']:.1%} positive)"
            f"{labels}.",
            "",
            "Inferred from the data (the rules are constants in driftloop/scaffold.py):",
            "- dtype: what driftloop's reader makes of each column (an int column with nulls "
            "reads as float);",
            f"- min/max: the observed range widened by {RANGE_MARGIN:.0%} of its width on each "
            "side (a unit switch or a -999 sentinel fails the gate, normal variation does "
            "not), floored at 0 for non-negative data, rounded outwards;",
            f"- allowed: text columns with at most {ALLOWED_MAX} values, all seen in the first "
            "half of the rows (a set that grew over the data is left open: new values are "
            "limited by validation.max_unknown_category_share);",
            f"- required: false for a column null in more than {OPTIONAL_NULL_SHARE:.0%} of "
            f"the rows or {OPTIONAL_BATCH_NULL_SHARE:.0%} of a replayed batch;",
            "- the gate's tolerances (null share, unseen categories, distribution margin): the "
            f"worst that the replay's batches of this data meet, x{SAFETY:g}, so `run` and "
            "`replay` pass on it unchanged;",
            "- features: every usable column"
            + (
                f"; {refused} refused, each listed with its reason at the end of data.columns;"
                if refused
                else " (none was refused);"
            ),
            "- sizes (monitor window, replay steps, holdouts): from the rate of rows a day.",
            "",
            "Check before you rely on it:",
            "- ranges and allowed values are this data's, not the world's: widen them where you "
            "know more;",
            "- the features: a column filled in only after the outcome leaks the label even "
            "when it is not a near-copy;",
            f"- the target ({self._target_words()}), evaluation.segments, promote.floor, "
            "data.lateness.",
        ]
        paragraphs += [f"WARNING: {w}" for w in self.warnings]
        return paragraphs

    def _target_words(self) -> str:
        params = self.target.params
        column = params["column"]
        if "above" in params:
            return f"1 when {column!r} > {params['above']:g}"
        if "at_least" in params:
            return f"1 when {column!r} >= {params['at_least']:g}"
        return f"{column!r} as it is"


# -- writing the file ------------------------------------------------------------------------------


class _Quoted(str):
    """A column name or category value: always written double-quoted."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Quoted, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, '"')
)


def _flow(value: Any) -> str:
    text = yaml.dump(
        value,
        Dumper=_Dumper,
        default_flow_style=True,
        allow_unicode=True,
        sort_keys=False,
        width=1 << 30,
    )
    return text.removesuffix("\n...\n").rstrip("\n")


def _quoted(value: Any) -> Any:
    """Text marked for double quotes (column names, category values): readable, and safe for
    names with spaces, punctuation or words YAML would read as something else."""
    if isinstance(value, str):
        return _Quoted(value)
    if isinstance(value, list):
        return [_quoted(v) for v in value]
    if isinstance(value, dict):
        return {_quoted(k): _quoted(v) for k, v in value.items()}
    return value


# keys whose values name columns: quoted
NAME_KEYS = frozenset(
    {
        "data.timestamp_column",
        "data.id_column",
        "target.column",
        "labels.join_column",
        "labels.time_column",
        "features.numerical",
        "features.categorical",
        "evaluation.segments",
    }
)


NOTE_COLUMN = 40


WIDTH = 100


def _comment(paragraph: str, indent: int = 0) -> list[str]:
    """A paragraph as comment lines of at most WIDTH characters ("- " starts a bullet)."""
    import textwrap

    pad = " " * indent
    if not paragraph:
        return [f"{pad}#"]
    hang = "  " if paragraph.startswith("- ") else ""
    wrapped = textwrap.wrap(paragraph, WIDTH - indent - 2, subsequent_indent=hang)
    return [f"{pad}# {line}" for line in wrapped]


def _line(key: str, value: str, note: str | None, indent: int) -> list[str]:
    """`key: value`, its note beside it when it fits in WIDTH, else above it."""
    text = f"{' ' * indent}{key}: {value}".rstrip()
    if not note:
        return [text]
    beside = f"{text.ljust(max(NOTE_COLUMN, len(text) + 1))} # {note}"
    if len(beside) <= WIDTH:
        return [beside]
    return [*_comment(note, indent), text]


SECTION_NOTES = {
    "data": "The data contract: what one row is and where rows come from.",
    "target": "The binary label.",
    "labels": "Labels arrive later, in label batches of their own, joined on the id.",
    "validation": "The gate every batch passes (Great Expectations); a failing batch is "
    "quarantined.",
    "features": "Model inputs.",
    "train": "Training (time-ordered holdout and CV).",
    "evaluation": "How candidates are scored.",
    "promote": "The promotion gate.",
    "monitor": "Drift and performance of the champion on the newest window.",
    "retrain": "What a retrain trains on.",
    "replay": "History replayed as it arrived (driftloop replay): a first model, then a batch "
    "a step.",
    "reports": "The DVC stages' stable outputs, per model.",
    "serve": "The prediction service's logs, per model.",
}


def render(proposal: Proposal) -> str:
    """The params file: header, then each section with a comment per non-obvious key.
    Checked to load back as exactly the proposed mapping."""
    out = [line for paragraph in proposal.header for line in _comment(paragraph)]
    for section, values in proposal.params.items():
        out += ["", f"# {SECTION_NOTES[section]}", f"{section}:"]
        for key, value in values.items():
            note = proposal.notes.get(f"{section}.{key}")
            if section == "data" and key == "columns":
                out += _line(key, "", "raw schema of a batch (besides the timestamp)", 2)
                out += _column_lines(proposal)
                continue
            shown = _quoted(value) if f"{section}.{key}" in NAME_KEYS else value
            out += _entry(key, shown, note)
    text = "\n".join(out) + "\n"
    if yaml.safe_load(text) != proposal.params:
        raise RuntimeError("the rendered params do not load back as proposed")
    return text


def _entry(key: str, value: Any, note: str | None) -> list[str]:
    """One key of a section: a long list as a block list, a long mapping as one line per key,
    anything else on one line."""
    lines = _line(_flow(key), _flow(value), note, 2)
    if len(lines[-1]) <= WIDTH:
        return lines
    if isinstance(value, dict):
        inner = (f"    {_flow(k)}: {_flow(v)}" for k, v in value.items())
        return [*_line(_flow(key), "", note, 2), *inner]
    if not isinstance(value, list):
        return lines
    return [*_line(_flow(key), "", note, 2), *(f"    - {_flow(v)}" for v in value)]


def _column_lines(proposal: Proposal) -> list[str]:
    lines = []
    for column in proposal.columns:
        if column.spec is None or column.refused or column.role == "timestamp":
            continue
        spec = _flow(_spec_shown(column.spec))
        lines += _line(_flow(_Quoted(column.name)), spec, column.note, 4)
    refused = [c for c in proposal.columns if c.refused]
    if refused:
        lines.append(
            "    # refused as features, not declared (kept in the batch files, unchecked):"
        )
    for column in refused:
        spec = _flow(_spec_shown(column.spec)) if column.spec else "null"
        lines += _comment(f"{_flow(_Quoted(column.name))}: {spec}  -- {column.note}", 4)
    return lines


def _spec_shown(spec: dict[str, Any]) -> dict[str, Any]:
    if "allowed" not in spec:
        return spec
    return {**spec, "allowed": _quoted(spec["allowed"])}


def write_params(path: Path, text: str, force: bool) -> None:
    """Write the file (refusing to overwrite unless `force`), atomically."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --out names the params file to write")
    if path.exists() and not force:
        raise ConfigError(f"{path}: exists; pass --force to overwrite it, or --out another file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# -- the command -----------------------------------------------------------------------------------


def given_source(
    path: str | None, url_env: str | None, table: str | None, query: str | None, project: Path
) -> SourceSpec:
    """The data source named on the command line: a path (file, folder or glob; written
    relative to the project when inside it) or a SQL table or query with --url-env."""
    if url_env is not None or table is not None or query is not None:
        if path is not None:
            raise ConfigError("give a file or folder, or --table/--query with --url-env, not both")
        if url_env is None:
            raise ConfigError("--table/--query need --url-env VAR (the variable holding the URL)")
        return _sql(url_env, table, query, "data.source")
    if path is None:
        raise ConfigError("init needs a data file, folder or glob (or --url-env with --table)")
    return _path_source(path, project)


def given_labels(labels: str | None, url_env: str | None, project: Path) -> SourceSpec | None:
    """--labels: a path, or (with --url-env) a table, or a query when it starts with SELECT."""
    if labels is None:
        return None
    if url_env is None:
        return _path_source(labels, project)
    is_query = labels.lstrip().lower().startswith(("select ", "with "))
    return _sql(url_env, None if is_query else labels, labels if is_query else None, "labels")


def _sql(url_env: str, table: str | None, query: str | None, key: str) -> SourceSpec:
    from pydantic import ValidationError

    try:
        return SourceSpec(kind="sql", url_env=url_env, table=table, query=query)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{key}: {message}") from None


def _path_source(text: str, project: Path) -> SourceSpec:
    from driftloop.config import source_spec

    absolute = Path(text).absolute()
    try:
        shown = absolute.relative_to(project.resolve()).as_posix()
    except ValueError:
        shown = absolute.as_posix()
    if Path(text).is_dir():
        return SourceSpec(kind="folder", path=shown)
    spec = source_spec(shown)
    if spec.get("kind") == "bundled":  # a file named like a bundled example
        spec = {"kind": "folder" if Path(text).is_dir() else "file", "path": shown}
    return SourceSpec(**spec)


def scaffold(request: InitRequest, project: Path, out: Path, force: bool) -> tuple[Path, Proposal]:
    """Read the rows (and labels), propose params, write them to `out`; nothing is written
    when anything fails."""
    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; pass --force to overwrite it, or --out another file")
    frame = read_rows(request.source, project, [request.time], "data.source")
    labels = None
    if request.labels is not None:
        times = [request.label_time] if request.label_time else []
        labels = read_rows(request.labels, project, times, "labels.source")
    proposal = propose(frame, request, labels)
    write_params(out, render(proposal), force)
    return out, proposal
