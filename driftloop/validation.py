"""The Great Expectations gate: suites built from params, a typed report, and quarantine.

Two suites: one for data batches (`validate_batch`), one for label batches (`validate_labels`).
Rules that compare a batch with accepted data (keys already accepted, unseen categories,
distribution) read a `History`, a small profile built once from accepted data by
`build_history`. Lookups GE cannot do (is this key already accepted? is this timestamp finer
than the frequency?) are computed here in pandas as derived columns, named `<rule>:<column>`,
that hold the offending value or null; the verdict stays with GE (expect ... to be null).

great_expectations is imported inside functions only (its import takes seconds). Its results
are parsed here, once, into `ValidationReport`; nothing else reads GE result objects.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from driftloop.config import ColumnSpec, Params
from driftloop.datastore import as_ns, label_columns

if TYPE_CHECKING:
    from driftloop.profiles import RowHashes

SUITE_NAME = "driftloop_batch"
LABEL_SUITE_NAME = "driftloop_labels"
MAX_EXAMPLES = 5  # unexpected values kept per expectation in the report
RESERVED_NAMES = {"validation.json", "docs", "batch.csv"}
COLUMN_EXISTS = "expect_column_to_exist"

_INT_TYPES = ["int", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8"]
_INT_TYPES += ["Int64Dtype", "Int32Dtype", "Int16Dtype", "Int8Dtype"]
_FLOAT_TYPES = ["float", "float64", "float32", "float16", "Float64Dtype", "Float32Dtype"]
_STR_TYPES = ["str", "string", "StringDtype"]
# Whole numbers in a CSV read as int64, so a float column accepts integer types too. GE cannot
# type-check pandas categoricals, so the gate checks their values (see `_decategorize`): a
# `category` column is text, whether read from a CSV or stored as a pandas category.
TYPE_LISTS = {
    "float": _FLOAT_TYPES + _INT_TYPES,
    "int": _INT_TYPES,
    "str": _STR_TYPES,
    "category": _STR_TYPES,
    "bool": ["bool", "boolean", "BooleanDtype"],
}
NUMERIC_DTYPES = frozenset({"float", "int"})
DATE_TYPES = ["datetime64", "datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationOutcome:
    """One evaluated expectation: its name, column, result and what was observed."""

    expectation: str
    column: str | None
    success: bool
    observed: Any
    unexpected_percent: float | None

    @property
    def label(self) -> str:
        """The expectation with its column, e.g. `expect_column_to_exist(wind)`."""
        return f"{self.expectation}({self.column})" if self.column else self.expectation


@dataclass(frozen=True, eq=False)
class Gate:
    """What a suite ran on: the checked frame (derived columns included) and its expectations."""

    suite: str
    frame: pd.DataFrame
    expectations: Callable[[], list[Any]]


@dataclass(frozen=True)
class ValidationReport:
    """The gate's verdict on one batch, free of GE objects."""

    success: bool
    evaluated: int
    failed: int
    outcomes: tuple[ExpectationOutcome, ...]
    read_error: str | None = None
    suite: str = SUITE_NAME
    # The suite and frame, so quarantine can render the same suite's Data Docs; not serialised.
    gate: Gate | None = field(default=None, repr=False, compare=False)

    @property
    def failures(self) -> tuple[ExpectationOutcome, ...]:
        """The outcomes that failed, in suite order."""
        return tuple(o for o in self.outcomes if not o.success)

    def summary(self) -> str:
        """One line: the read error (if any) and the failed expectations with their columns."""
        parts = [self.read_error] if self.read_error else []
        if self.failed:
            parts.append(f"{self.failed} of {self.evaluated} expectations failed: {self._causes()}")
        elif self.success:
            parts.append(f"all {self.evaluated} expectations passed")
        return " ".join("; ".join(parts).split())

    def _causes(self) -> str:
        """Failed labels, leaving out the follow-on failures on columns that do not exist; the
        rows a derived rule flags are named (e.g. the keys accepted with other values)."""
        missing = {o.column for o in self.failures if o.expectation == COLUMN_EXISTS}
        shown = [
            o for o in self.failures if o.expectation == COLUMN_EXISTS or o.column not in missing
        ]
        hidden = len(self.failures) - len(shown)
        more = f" (+{hidden} more on missing columns)" if hidden else ""
        return ", ".join(_with_examples(o) for o in shown) + more

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict whose content depends only on the data and the params."""
        return {
            "suite": self.suite,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": self.failed,
            "read_error": self.read_error,
            "outcomes": [asdict(o) for o in self.outcomes],
        }


def _with_examples(outcome: ExpectationOutcome) -> str:
    """An outcome's label, with the rows it flags when it is one of the derived rules."""
    derived = outcome.column is not None and ":" in outcome.column
    if not derived or not isinstance(outcome.observed, list) or not outcome.observed:
        return outcome.label
    shown = ", ".join(str(v) for v in outcome.observed[:3])
    more = ", ..." if len(outcome.observed) > 3 else ""
    return f"{outcome.label} [{shown}{more}]"


# -- what accepted data looks like ------------------------------------------------------------


def _empty_hashes() -> np.ndarray:
    return np.zeros(0, dtype="uint64")


@dataclass(frozen=True, eq=False)
class History:
    """A profile of accepted data, for the rules that compare a batch with it.

    Attributes:
        rows: accepted rows.
        keys: hashes of the accepted row keys (`data.key_columns`), sorted (`profiles.key_hashes`).
        categories: values seen per categorical feature column without `allowed`.
        quantiles: (lower, upper) `validation.distribution_quantiles` per numeric column.
        identities: hashes of the accepted rows' values, aligned with `keys`.
        newest: the newest accepted timestamp (None: nothing accepted).
    """

    rows: int = 0
    keys: np.ndarray = field(default_factory=_empty_hashes)
    categories: Mapping[str, frozenset[Any]] = field(default_factory=dict)
    quantiles: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    identities: np.ndarray = field(default_factory=_empty_hashes)
    newest: pd.Timestamp | None = None

    def classify(
        self, frame: pd.DataFrame, params: Params, hashes: RowHashes | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row: (an exact repeat of an accepted row, an accepted key with other values).

        `hashes`: the frame's row hashes when already known (`profiles.RowHashes`).
        """
        from driftloop.profiles import AcceptedProfile, ProfileSpec, RowHashes

        spec = ProfileSpec.of(params)
        if not set(spec.keys) <= set(frame.columns) or frame.empty:
            none = np.zeros(len(frame), dtype=bool)
            return none, none.copy()
        if hashes is None or not hashes.fits(frame):
            hashes = RowHashes.of(frame, spec)
        assert hashes is not None  # the key columns are there
        accepted = AcceptedProfile(self.rows, self.keys, self.identities)
        return accepted.classify(hashes.keys, hashes.identities)


def category_columns(params: Params) -> list[str]:
    """Categorical feature columns (str/category) without `allowed`: unseen values are limited."""
    from driftloop.profiles import category_columns as columns

    return columns(params)


def numeric_columns(params: Params) -> list[str]:
    """float/int columns that are neither the id nor an entity: their distribution is checked."""
    data = params.data
    keys = {data.id_column, *data.entity_columns}
    return [n for n, s in data.columns.items() if s.dtype in NUMERIC_DTYPES and n not in keys]


def history_of(profile: Any, params: Params) -> History:
    """The History of a `profiles.AcceptedProfile` (merged batch summaries)."""
    if profile.rows == 0:
        return History()
    low, high = params.validation.distribution_quantiles
    return History(
        profile.rows,
        profile.keys,
        profile.categories,
        profile.quantiles(low, high),
        profile.identities,
        profile.newest,
    )


def build_history(accepted: pd.DataFrame | None, params: Params) -> History:
    """Profile a frame of accepted rows (ingest merges cached per-batch summaries instead)."""
    from driftloop.profiles import AcceptedProfile, ProfileSpec, profile_frame

    if accepted is None or accepted.empty:
        return History()
    summary = profile_frame(accepted, ProfileSpec.of(params))
    return history_of(AcceptedProfile.merge([summary]), params)


def distribution_bounds(quantiles: tuple[float, float], margin: float) -> tuple[float, float]:
    """The accepted quantile range widened by `margin` x its width on both sides."""
    low, high = quantiles
    width = high - low
    return low - margin * width, high + margin * width


@dataclass(frozen=True, eq=False)
class LabelHistory:
    """What a label batch is checked against: the ids in accepted data and the accepted labels."""

    known_ids: pd.Index
    labels: pd.Series  # the accepted label per join value (unique index)


def build_label_history(
    accepted: pd.DataFrame | None, labels: pd.DataFrame, params: Params
) -> LabelHistory:
    """Known ids from accepted data and accepted labels (as `labels.accepted` returns)."""
    join, label = label_columns(params)
    known = (
        pd.Index(accepted[join].dropna().unique())
        if accepted is not None and join in accepted.columns
        else pd.Index([])
    )
    return LabelHistory(known, labels.set_index(join)[label])


# -- derived columns (pandas lookups, judged by GE) ---------------------------------------------


def conflicting_repeat_column(params: Params) -> str:
    return "accepted_with_other_values:" + "+".join(params.data.key_columns)


def too_late_column(params: Params) -> str:
    return f"older_than_lateness_{params.data.lateness}:{params.data.timestamp_column}"


def too_late(times: pd.Series, newest: pd.Timestamp | None, lateness: str | None) -> np.ndarray:
    """Rows older than the newest accepted time minus the declared lateness (NaT: not flagged)."""
    if newest is None or lateness is None:
        return np.zeros(len(times), dtype=bool)
    return np.asarray(times.notna() & (times < newest - pd.Timedelta(lateness)), dtype=bool)


def off_frequency_column(params: Params) -> str:
    return f"finer_than_{params.data.frequency}:{params.data.timestamp_column}"


def unknown_id_column(join: str) -> str:
    return f"unknown_id:{join}"


def conflicting_label_column(join: str) -> str:
    return f"conflicting_label:{join}"


def _flagged(frame: pd.DataFrame, mask: np.ndarray | pd.Series, columns: list[str]) -> pd.Series:
    """The key of each flagged row as text, null elsewhere."""
    out = pd.Series(None, index=frame.index, dtype=object)
    flagged = np.asarray(mask, dtype=bool)
    if flagged.any():
        picked = frame.loc[flagged, columns].astype(str)
        out.loc[flagged] = picked.agg(", ".join, axis=1).to_numpy()
    return out


def off_frequency(times: pd.Series, frequency: str) -> np.ndarray:
    """Which timestamps are finer than the frequency (not on its grid); NaT is not flagged."""
    try:
        aligned = times.dt.floor(frequency) == times
    except ValueError:  # calendar frequencies (MS, W-SUN...) have no fixed length
        offset = pd.tseries.frequencies.to_offset(frequency)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rolled = times + offset - offset
        aligned = (rolled == times) & (times.dt.normalize() == times)
    return np.asarray(times.notna() & ~aligned, dtype=bool)


def _decategorize(frame: pd.DataFrame) -> pd.DataFrame:
    """Pandas categorical columns as their plain values (object), which GE can type-check."""
    stored = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    return frame.astype({c: object for c in stored}) if stored else frame


def prepare_batch(
    frame: pd.DataFrame,
    params: Params,
    history: History | None,
    hashes: RowHashes | None = None,
) -> pd.DataFrame:
    """The batch with its timestamps as datetime64[ns] and the derived columns the suite needs
    (`hashes`: the batch's row hashes, when known)."""
    data = params.data
    frame = _decategorize(frame)
    column = data.timestamp_column
    if column not in frame.columns or not pd.api.types.is_datetime64_any_dtype(frame[column]):
        return frame  # the type expectation fails; nothing to derive from
    frame = frame.assign(**{column: as_ns(frame[column])})
    derived: dict[str, pd.Series] = {}
    if data.frequency:
        mask = off_frequency(frame[column], data.frequency)
        derived[off_frequency_column(params)] = _flagged(frame, mask, [column])
    if history is not None and set(data.key_columns) <= set(frame.columns):
        _, conflicts = history.classify(frame, params, hashes)
        derived[conflicting_repeat_column(params)] = _flagged(frame, conflicts, data.key_columns)
    if history is not None and data.lateness is not None:
        late = too_late(frame[column], history.newest, data.lateness)
        derived[too_late_column(params)] = _flagged(frame, late, [column])
    return frame.assign(**derived)


def prepare_labels(
    frame: pd.DataFrame, params: Params, history: LabelHistory | None
) -> pd.DataFrame:
    """The label batch with derived columns: ids not in accepted data, conflicting labels."""
    join, label = label_columns(params)
    frame = _decategorize(frame)
    if history is None or join not in frame.columns:
        return frame
    ids = frame[join]
    unknown = ids.notna() & ~ids.isin(history.known_ids)
    derived = {unknown_id_column(join): _flagged(frame, unknown, [join])}
    if label in frame.columns:
        derived[conflicting_label_column(join)] = _flagged(
            frame, label_conflicts(frame, join, label, history.labels), [join]
        )
    return frame.assign(**derived)


def label_conflicts(frame: pd.DataFrame, join: str, label: str, accepted: pd.Series) -> pd.Series:
    """Rows whose id has two labels in the batch, or a label other than the accepted one."""
    values = frame[label]
    within = frame.groupby(join, dropna=True)[label].transform("nunique").fillna(0) > 1
    prior = frame[join].map(accepted)
    differs = prior.notna() & values.notna() & (prior.astype(object) != values.astype(object))
    return within | differs


# -- suites ---------------------------------------------------------------------------------------


def _now(now: dt.datetime | None) -> pd.Timestamp:
    """`now` as a naive timestamp (UTC if it had a zone); the current local time by default."""
    moment = pd.Timestamp(now) if now is not None else pd.Timestamp.now()
    if moment.tzinfo is not None:
        moment = moment.tz_convert("UTC").tz_localize(None)
    return moment


def batch_expectations(
    frame: pd.DataFrame, params: Params, history: History | None, now: pd.Timestamp
) -> list[Any]:
    """The data-batch suite: row count, timestamp, keys, each declared column, then history."""
    import great_expectations.expectations as gxe

    bounds = params.validation
    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=bounds.min_rows, max_value=bounds.max_rows)
    ]
    expectations += _time_expectations(params.data.timestamp_column, now, bounds.max_future_skew)
    expectations += _key_expectations(params)
    for name, spec in params.data.columns.items():
        if spec.required or name in frame.columns:  # optional columns only when present
            expectations += _column_expectations(name, spec, bounds.max_null_share)
    derived = [off_frequency_column(params)] if params.data.frequency else []
    if history is not None:
        derived += [conflicting_repeat_column(params), too_late_column(params)]
        expectations += _category_expectations(frame, params, history)
        expectations += _distribution_expectations(frame, params, history)
    expectations += [_null(name) for name in derived if name in frame.columns]
    return expectations


def _null(column: str) -> Any:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeNull(column=column)


def _time_expectations(column: str, now: pd.Timestamp, skew: str) -> list[Any]:
    """A time column exists, is datetime, non-null and not later than now + skew."""
    import great_expectations.expectations as gxe

    latest = (now + pd.Timedelta(skew)).to_pydatetime()
    return [
        gxe.ExpectColumnToExist(column=column),
        gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=DATE_TYPES),
        gxe.ExpectColumnValuesToNotBeNull(column=column),
        gxe.ExpectColumnValuesToBeBetween(column=column, max_value=latest),
    ]


def _key_expectations(params: Params) -> list[Any]:
    """No two rows of the batch share a key: the id, else (timestamp, *entities)."""
    import great_expectations.expectations as gxe

    keys = params.data.key_columns
    if len(keys) == 1:
        return [gxe.ExpectColumnValuesToBeUnique(column=keys[0])]
    return [gxe.ExpectCompoundColumnsToBeUnique(column_list=keys)]


def _column_expectations(name: str, spec: ColumnSpec, max_null_share: float) -> list[Any]:
    """Existence and null share (required columns only), type, range and allowed values."""
    import great_expectations.expectations as gxe

    expectations: list[Any] = []
    if spec.required:
        expectations.append(gxe.ExpectColumnToExist(column=name))
    expectations += _value_expectations(name, spec, TYPE_LISTS[spec.dtype])
    if spec.required:
        mostly = 1.0 - max_null_share
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=mostly))
    return expectations


def _value_expectations(name: str, spec: ColumnSpec, types: list[str]) -> list[Any]:
    """Type, [min, max] and the allowed set of one column's non-null values."""
    import great_expectations.expectations as gxe

    expectations: list[Any] = [gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=types)]
    if spec.min is not None or spec.max is not None:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=name, min_value=spec.min, max_value=spec.max)
        )
    if spec.allowed is not None:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=spec.allowed))
    return expectations


def _category_expectations(frame: pd.DataFrame, params: Params, history: History) -> list[Any]:
    """At most `max_unknown_category_share` unseen values per categorical feature column."""
    import great_expectations.expectations as gxe

    share = params.validation.max_unknown_category_share
    if history.rows == 0 or share >= 1.0:
        return []
    return [
        gxe.ExpectColumnValuesToBeInSet(
            column=name, value_set=sorted(history.categories[name], key=str), mostly=1.0 - share
        )
        for name in category_columns(params)
        if name in frame.columns and name in history.categories
    ]


def _distribution_expectations(frame: pd.DataFrame, params: Params, history: History) -> list[Any]:
    """Mean and median of each numeric column within the accepted data's widened quantile range
    (a column with no value in the batch has neither: its nulls are the null share's to judge)."""
    import great_expectations.expectations as gxe

    rules = params.validation
    if not rules.distribution_check or history.rows < rules.distribution_min_history:
        return []
    expectations: list[Any] = []
    for name in numeric_columns(params):
        if name not in frame.columns or name not in history.quantiles:
            continue
        if not frame[name].notna().any():
            continue
        low, high = distribution_bounds(history.quantiles[name], rules.distribution_margin)
        expectations += [
            gxe.ExpectColumnMeanToBeBetween(column=name, min_value=low, max_value=high),
            gxe.ExpectColumnMedianToBeBetween(column=name, min_value=low, max_value=high),
        ]
    return expectations


def label_expectations(
    frame: pd.DataFrame, params: Params, history: LabelHistory | None, now: pd.Timestamp
) -> list[Any]:
    """The label-batch suite: join column, label values, label time, known ids, no conflicts."""
    import great_expectations.expectations as gxe

    join, label = label_columns(params)
    columns = params.data.columns
    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=params.validation.max_rows),
        gxe.ExpectColumnToExist(column=join),
        gxe.ExpectColumnValuesToNotBeNull(column=join),
    ]
    if join in columns:
        expectations.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=join, type_list=TYPE_LISTS[columns[join].dtype]
            )
        )
    spec = columns[label]
    numeric = params.target.above is not None or params.target.at_least is not None
    types = TYPE_LISTS["float"] if numeric else TYPE_LISTS[spec.dtype]
    expectations += [gxe.ExpectColumnToExist(column=label)]
    expectations += _value_expectations(label, spec, types)
    expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=label))
    if params.labels.time_column:
        skew = params.validation.max_future_skew
        expectations += _time_expectations(params.labels.time_column, now, skew)
    derived = [unknown_id_column(join), conflicting_label_column(join)]
    expectations += [_null(name) for name in derived if history and name in frame.columns]
    return expectations


# -- running GE -----------------------------------------------------------------------------------


def validate_batch(
    frame: pd.DataFrame,
    params: Params,
    *,
    history: History | None = None,
    now: dt.datetime | None = None,
    read_error: str | None = None,
    docs_dir: Path | None = None,
    hashes: RowHashes | None = None,
) -> ValidationReport:
    """Run the params-built suite on a data batch; with docs_dir, also write GE Data Docs there.

    Args:
        frame: the batch as read (timestamps parsed; empty when the file was unreadable).
        params: data.columns, the data contract and validation bounds build the suite.
        history: the accepted data's profile; None leaves out the rules that compare with it
            (keys already accepted, unseen categories, distribution), as for the whole dataset.
        now: the current time, for `validation.max_future_skew` (default: the clock).
        read_error: why the file could not be parsed; the report then fails and carries it.
        docs_dir: where to write the Data Docs site (index.html at its top); None skips docs.
        hashes: the batch's row hashes when the caller has them (`profiles.RowHashes`).
    """
    checked = prepare_batch(frame, params, history, hashes)
    build = partial(batch_expectations, checked, params, history, _now(now))
    return run_gate(Gate(SUITE_NAME, checked, build), read_error, docs_dir)


def without_history(report: ValidationReport, params: Params) -> ValidationReport | None:
    """The verdict of the suite without the rules against history (the whole dataset's suite,
    `validate_batch(frame, params)`), read off a gate's report on the same frame: every
    expectation of that suite is in the gate's, evaluated on the same rows. None when the
    report cannot answer for it (unreadable batch, no suite kept, an expectation missing).
    """
    if report.gate is None or report.read_error is not None:
        return None
    found: dict[tuple[str, str | None], deque[ExpectationOutcome]] = {}
    for outcome in report.outcomes:
        found.setdefault((outcome.expectation, outcome.column), deque()).append(outcome)
    outcomes = []
    for expectation in batch_expectations(report.gate.frame, params, None, _now(None)):
        config = expectation.configuration
        same = found.get((str(config.type), _column_of(config.kwargs)))
        if not same:
            return None
        outcomes.append(same.popleft())
    failed = sum(not o.success for o in outcomes)
    return ValidationReport(failed == 0, len(outcomes), failed, tuple(outcomes), suite=report.suite)


def validate_labels(
    frame: pd.DataFrame,
    params: Params,
    *,
    history: LabelHistory | None = None,
    now: dt.datetime | None = None,
    read_error: str | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the label suite on a label batch (arguments as in `validate_batch`)."""
    checked = prepare_labels(frame, params, history)
    build = partial(label_expectations, checked, params, history, _now(now))
    return run_gate(Gate(LABEL_SUITE_NAME, checked, build), read_error, docs_dir)


def run_gate(gate: Gate, read_error: str | None, docs_dir: Path | None) -> ValidationReport:
    """Validate the gate's frame with its suite (and render Data Docs into docs_dir if given)."""
    expectations = gate.expectations()
    if docs_dir is None:
        result, ids = _run_ephemeral(gate, expectations)
    else:
        result, ids = _run_with_docs(gate, expectations, docs_dir)
    return _report(result, ids, read_error, gate)


def _context(root: Path | None = None) -> Any:
    """A GE context with progress bars off: file mode under root, else ephemeral."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)  # per-call "temporary directory" notes
    ctx: Any = (
        gx.get_context(mode="ephemeral")
        if root is None
        else gx.get_context(mode="file", project_root_dir=str(root))
    )
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def _suite_and_batch(ctx: Any, name: str, expectations: list[Any]) -> tuple[Any, Any]:
    """Register the suite and a whole-dataframe batch definition in a context."""
    import great_expectations as gx

    asset = ctx.data_sources.add_pandas("driftloop").add_dataframe_asset("batch")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    return suite, batch_definition


def _run_ephemeral(gate: Gate, expectations: list[Any]) -> tuple[Any, list[str]]:
    """Validate in memory (the fast path): GE's suite result and the suite's expectation ids."""
    suite, batch_definition = _suite_and_batch(_context(), gate.suite, expectations)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": gate.frame})
    return batch.validate(suite, result_format="BASIC"), _ids(suite)


def _run_with_docs(gate: Gate, expectations: list[Any], docs_dir: Path) -> tuple[Any, list[str]]:
    """Validate in a throwaway file context that renders Data Docs, then copy the site out."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    with tempfile.TemporaryDirectory(prefix="driftloop-gx-") as tmp:
        ctx = _context(Path(tmp))
        suite, batch_definition = _suite_and_batch(ctx, gate.suite, expectations)
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=gate.suite, data=batch_definition, suite=suite)
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=gate.suite,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "BASIC"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": gate.frame})
        _copy_site(ctx, docs_dir)
    return next(iter(result.run_results.values())), _ids(suite)


def _copy_site(ctx: Any, docs_dir: Path) -> None:
    """Copy the rendered local Data Docs site into docs_dir; fail if it has no index.html."""
    index = Path(unquote(urlparse(ctx.get_docs_sites_urls()[0]["site_url"]).path))
    shutil.copytree(index.parent, docs_dir, dirs_exist_ok=True)
    if not (docs_dir / "index.html").is_file():
        raise RuntimeError(f"Great Expectations wrote no index.html to {docs_dir}")


def _ids(suite: Any) -> list[str]:
    """Expectation ids in suite order (GE returns results in its own order)."""
    return [str(expectation.id) for expectation in suite.expectations]


def _report(result: Any, ids: list[str], read_error: str | None, gate: Gate) -> ValidationReport:
    """Parse GE's suite validation result into a ValidationReport, in suite order."""
    rank = {expectation_id: i for i, expectation_id in enumerate(ids)}
    ordered = sorted(result.results, key=lambda r: rank.get(str(r.expectation_config.id), len(ids)))
    outcomes = tuple(_outcome(r) for r in ordered)
    failed = sum(not o.success for o in outcomes)
    return ValidationReport(
        success=failed == 0 and read_error is None,
        evaluated=len(outcomes),
        failed=failed,
        outcomes=outcomes,
        read_error=read_error,
        suite=gate.suite,
        gate=gate,
    )


def _column_of(kwargs: Mapping[str, Any]) -> str | None:
    """The column an expectation is about (`a+b` for a compound key), or None."""
    column = kwargs.get("column")
    if column is None and kwargs.get("column_list"):
        column = "+".join(str(c) for c in kwargs["column_list"])
    return None if column is None else str(column)


def _outcome(result: Any) -> ExpectationOutcome:
    """One GE expectation result as an ExpectationOutcome with plain values."""
    config = result.expectation_config
    details = dict(result.result or {})
    return ExpectationOutcome(
        expectation=str(config.type),
        column=_column_of(config.kwargs),
        success=bool(result.success),
        observed=_observed(details, _exception_message(result.exception_info)),
        unexpected_percent=_percent(details.get("unexpected_percent")),
    )


def _exception_message(info: Any) -> str | None:
    """The error GE caught while evaluating (e.g. a missing column), or None."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = {
        str(e.get("exception_message"))
        for e in entries
        if isinstance(e, dict) and e.get("raised_exception")
    }
    return "; ".join(sorted(messages)) or None


def _observed(details: dict[str, Any], error: str | None) -> Any:
    """The observed value, else a few unexpected values, else the evaluation error."""
    if error:
        return f"error: {error}"
    if "observed_value" in details:
        return plain(details["observed_value"])
    unexpected = list(details.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]
    return [plain(v) for v in unexpected] or None


def _percent(value: Any) -> float | None:
    """A finite percentage rounded for stable output, or None."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


def plain(value: Any) -> Any:
    """A JSON-ready copy of a value: numpy/pandas scalars unwrapped, NaN to None, dates to str."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or pd.isna(value):
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bool | int | str):
        return value
    return str(value)


# -- quarantine -----------------------------------------------------------------------------------


def quarantine(
    report: ValidationReport,
    quarantine_root: Path,
    batch_id: str,
    *,
    source_path: Path | None = None,
    frame: pd.DataFrame | None = None,
    origin: str | None = None,
) -> Path:
    """Keep a rejected batch in a new folder: original bytes, validation.json and Data Docs.

    Args:
        report: the gate's verdict from validate_batch/validate_labels (its gate renders docs).
        quarantine_root: the folder holding quarantined batches (created if missing).
        batch_id: the folder name; a taken name gets a `-1`, `-2`... suffix, never overwritten.
        source_path: the file as received; its bytes are copied unchanged.
        frame: the batch as read; written as batch.csv when there is no source file.
        origin: where the batch came from (default: source_path, else "dataframe").

    Returns:
        The new folder: the batch, validation.json and docs/index.html.
    """
    if source_path is None and frame is None:
        raise ValueError("quarantine needs the source file or the frame")
    if report.gate is None:
        raise ValueError("quarantine needs a report made by validate_batch (it carries its suite)")
    folder = _new_folder(quarantine_root, batch_id)
    _keep_batch(folder, source_path, frame)
    where = origin or (str(source_path) if source_path is not None else "dataframe")
    payload = {**report.to_dict(), "batch_id": batch_id, "origin": where}
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    (folder / "validation.json").write_text(text + "\n")
    run_gate(report.gate, report.read_error, folder / "docs")
    return folder


def _new_folder(root: Path, batch_id: str) -> Path:
    """Create root/batch_id, or root/batch_id-N when taken; never reuse an existing folder."""
    if not batch_id or batch_id in {".", ".."} or Path(batch_id).name != batch_id:
        raise ValueError(f"batch_id must be a plain folder name, got {batch_id!r}")
    root.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:
        candidate = root / (batch_id if suffix == 0 else f"{batch_id}-{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            suffix += 1
            continue
        return candidate


def _keep_batch(folder: Path, source_path: Path | None, frame: pd.DataFrame | None) -> None:
    """Copy the source file byte for byte, or write the frame as batch.csv."""
    if source_path is not None:
        name = source_path.name
        target = folder / (f"source_{name}" if name in RESERVED_NAMES else name)
        shutil.copyfile(source_path, target)
    elif frame is not None:
        frame.to_csv(folder / "batch.csv", index=False)
