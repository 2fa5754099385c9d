"""The Great Expectations gate: a suite built from params, a typed report, and quarantine.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from driftloop.config import ColumnSpec, Params
from driftloop.errors import IngestError
from driftloop.sources import read_batch_file

SUITE_NAME = "driftloop_batch"
MAX_EXAMPLES = 5  # unexpected values kept per expectation in the report
RESERVED_NAMES = {"validation.json", "docs", "batch.csv"}
COLUMN_EXISTS = "expect_column_to_exist"

_INT_TYPES = ["int", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8"]
_INT_TYPES += ["Int64Dtype", "Int32Dtype"]
_FLOAT_TYPES = ["float", "float64", "float32", "float16", "Float64Dtype", "Float32Dtype"]
# Whole numbers in a CSV read as int64, so a float column accepts integer types too.
TYPE_LISTS = {
    "float": _FLOAT_TYPES + _INT_TYPES,
    "int": _INT_TYPES,
    "str": ["str", "string", "StringDtype"],
}
DATE_TYPES = ["datetime64", "datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]


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


@dataclass(frozen=True)
class ValidationReport:
    """The gate's verdict on one batch, free of GE objects."""

    success: bool
    evaluated: int
    failed: int
    outcomes: tuple[ExpectationOutcome, ...]
    read_error: str | None = None
    # The gate's inputs, so quarantine can render the same suite's Data Docs; not serialised.
    params: Params | None = field(default=None, repr=False, compare=False)
    after: dt.date | None = field(default=None, repr=False, compare=False)

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
        """Failed labels, leaving out the follow-on failures on columns that do not exist."""
        missing = {o.column for o in self.failures if o.expectation == COLUMN_EXISTS}
        shown = [
            o for o in self.failures if o.expectation == COLUMN_EXISTS or o.column not in missing
        ]
        hidden = len(self.failures) - len(shown)
        more = f" (+{hidden} more on missing columns)" if hidden else ""
        return ", ".join(o.label for o in shown) + more

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict whose content depends only on the data and the params."""
        return {
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": self.failed,
            "read_error": self.read_error,
            "outcomes": [asdict(o) for o in self.outcomes],
        }


def validate_batch(
    frame: pd.DataFrame,
    params: Params,
    *,
    after: dt.date | None = None,
    read_error: str | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the params-built suite on a batch; with docs_dir, also write GE Data Docs there.

    Args:
        frame: the batch as read (dates parsed; an empty frame when the file was unreadable).
        params: data.columns, data.date_column and validation bounds build the suite.
        after: the last accepted date; every date of the batch must be later.
        read_error: why the file could not be parsed; the report then fails and carries it.
        docs_dir: where to write the Data Docs site (index.html at its top); None skips docs.
    """
    expectations = build_expectations(frame, params, after)
    if docs_dir is None:
        result, ids = _run_ephemeral(frame, expectations)
    else:
        result, ids = _run_with_docs(frame, expectations, docs_dir)
    report = _report(result, ids, read_error)
    return replace(report, params=params, after=after)


def build_expectations(frame: pd.DataFrame, params: Params, after: dt.date | None) -> list[Any]:
    """GE expectations for a batch: row count, the date column, then each declared column."""
    import great_expectations.expectations as gxe

    bounds = params.validation
    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=bounds.min_rows, max_value=bounds.max_rows)
    ]
    expectations += _date_expectations(params.data.date_column, after)
    for name, spec in params.data.columns.items():
        if spec.required or name in frame.columns:  # optional columns only when present
            expectations += _column_expectations(name, spec, bounds.max_null_share)
    return expectations


def _date_expectations(column: str, after: dt.date | None) -> list[Any]:
    """The date column exists, is datetime, non-null, unique, strictly increasing, after `after`."""
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectColumnToExist(column=column),
        gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=DATE_TYPES),
        gxe.ExpectColumnValuesToNotBeNull(column=column),
        gxe.ExpectColumnValuesToBeUnique(column=column),
        gxe.ExpectColumnValuesToBeIncreasing(column=column, strictly=True),
    ]
    if after is not None:
        bound = pd.Timestamp(after).to_pydatetime()  # same rule as sources.window: date > after
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=column, min_value=bound, strict_min=True)
        )
    return expectations


def _column_expectations(name: str, spec: ColumnSpec, max_null_share: float) -> list[Any]:
    """Existence and null share (required columns only), type and range of one column."""
    import great_expectations.expectations as gxe

    expectations: list[Any] = []
    if spec.required:
        expectations.append(gxe.ExpectColumnToExist(column=name))
    expectations.append(
        gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=TYPE_LISTS[spec.dtype])
    )
    if spec.min is not None or spec.max is not None:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(column=name, min_value=spec.min, max_value=spec.max)
        )
    if spec.required:
        mostly = 1.0 - max_null_share
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=mostly))
    return expectations


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


def _suite_and_batch(ctx: Any, expectations: list[Any]) -> tuple[Any, Any]:
    """Register the suite and a whole-dataframe batch definition in a context."""
    import great_expectations as gx

    asset = ctx.data_sources.add_pandas("driftloop").add_dataframe_asset("batch")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))
    return suite, batch_definition


def _run_ephemeral(frame: pd.DataFrame, expectations: list[Any]) -> tuple[Any, list[str]]:
    """Validate in memory (the fast path): GE's suite result and the suite's expectation ids."""
    suite, batch_definition = _suite_and_batch(_context(), expectations)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(suite, result_format="BASIC"), _ids(suite)


def _run_with_docs(
    frame: pd.DataFrame, expectations: list[Any], docs_dir: Path
) -> tuple[Any, list[str]]:
    """Validate in a throwaway file context that renders Data Docs, then copy the site out."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    with tempfile.TemporaryDirectory(prefix="driftloop-gx-") as tmp:
        ctx = _context(Path(tmp))
        suite, batch_definition = _suite_and_batch(ctx, expectations)
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=SUITE_NAME, data=batch_definition, suite=suite)
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=SUITE_NAME,
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "BASIC"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
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


def _report(result: Any, ids: list[str], read_error: str | None) -> ValidationReport:
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
    )


def _outcome(result: Any) -> ExpectationOutcome:
    """One GE expectation result as an ExpectationOutcome with plain values."""
    config = result.expectation_config
    details = dict(result.result or {})
    column = config.kwargs.get("column")
    return ExpectationOutcome(
        expectation=str(config.type),
        column=None if column is None else str(column),
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
        report: the gate's verdict from validate_batch (its params render the docs).
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
    if report.params is None:
        raise ValueError("quarantine needs a report made by validate_batch (it carries params)")
    folder = _new_folder(quarantine_root, batch_id)
    _keep_batch(folder, source_path, frame)
    where = origin or (str(source_path) if source_path is not None else "dataframe")
    payload = {**report.to_dict(), "batch_id": batch_id, "origin": where}
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    (folder / "validation.json").write_text(text + "\n")
    validate_batch(
        _docs_frame(report.params, source_path, frame),
        report.params,
        after=report.after,
        read_error=report.read_error,
        docs_dir=folder / "docs",
    )
    return folder


def _docs_frame(
    params: Params, source_path: Path | None, frame: pd.DataFrame | None
) -> pd.DataFrame:
    """The frame to render docs for: the one given, else the source re-read (empty if bad)."""
    if frame is not None:
        return frame
    if source_path is None:
        return pd.DataFrame()
    try:
        return read_batch_file(source_path, params.data).frame
    except IngestError:
        return pd.DataFrame()


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
