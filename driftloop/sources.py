"""Where raw batches come from: a bundled example (Seattle weather, NYC flights) or a user's file.

Readers never coerce values: a string in a numeric column stays a string so the validation gate
can see it. Columns declared `str`/`category` are read as text (an id `007` stays `007`), and the
timestamp columns are parsed (unparseable values become NaT, which the gate rejects).

A path that is not a readable file (a folder, a missing or unreadable path) raises IngestError:
there is nothing to quarantine. A file whose content cannot be parsed is returned with its
`read_error`, so the gate can refuse it and keep its bytes.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import CATEGORICAL_DTYPES, DataParams, Params
from driftloop.datastore import TimeBound, as_ns, label_columns, time_mask
from driftloop.errors import ConfigError, IngestError

SEATTLE = "seattle"
FLIGHTS = "flights"
READABLE_SUFFIXES = {".csv", ".parquet", ".pq"}

Window = Callable[[TimeBound | None, TimeBound | None], pd.DataFrame]


@dataclass(frozen=True)
class RawBatch:
    """A batch as read, before the gate: the frame, where it came from, and why it is unreadable."""

    frame: pd.DataFrame
    origin: str
    path: Path | None = None
    read_error: str | None = None
    bundled: bool = False  # from a bundled example: an empty frame means "nothing new"


# -- bundled examples ---------------------------------------------------------------------------


def load_seattle() -> pd.DataFrame:
    """Seattle daily weather 2012-2015 from the vega_datasets package (offline, bundled CSV)."""
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["date"] = as_ns(pd.to_datetime(frame["date"]))
    return frame


def window(
    frame: pd.DataFrame,
    time_column: str,
    after: TimeBound | None = None,
    until: TimeBound | None = None,
) -> pd.DataFrame:
    """Rows with after < time <= until (either bound optional; a date means the end of that day)."""
    return frame.loc[time_mask(frame[time_column], after, until)].reset_index(drop=True)


def _seattle_between(after: TimeBound | None, until: TimeBound | None) -> pd.DataFrame:
    return window(load_seattle(), "date", after, until)


def _flights_between(after: TimeBound | None, until: TimeBound | None) -> pd.DataFrame:
    from driftloop.flights import flights_between

    return flights_between(after, until)


def _flight_labels_between(after: TimeBound | None, until: TimeBound | None) -> pd.DataFrame:
    from driftloop.flights import labels_between

    return labels_between(after, until)


# name -> rows with after < time <= until. Its timestamp column must match params' data section.
BUNDLED_DATA: dict[str, Window] = {SEATTLE: _seattle_between, FLIGHTS: _flights_between}
# name -> label rows with after < label time <= until (sources whose labels arrive later).
BUNDLED_LABELS: dict[str, Window] = {FLIGHTS: _flight_labels_between}


def read_source(
    source: str, data: DataParams, after: TimeBound | None, until: TimeBound | None
) -> RawBatch:
    """The next batch of a source: a bundled example's rows in (after, until], or a file."""
    if source in BUNDLED_DATA:
        frame = BUNDLED_DATA[source](after, until)
        return RawBatch(frame, origin=f"bundled:{source}", bundled=True)
    return read_batch_file(Path(source), data)


def read_label_source(
    source: str, params: Params, after: TimeBound | None, until: TimeBound | None
) -> RawBatch:
    """The next label batch: a bundled example's labels in (after, until], or a file."""
    if source in BUNDLED_LABELS:
        frame = BUNDLED_LABELS[source](after, until)
        return RawBatch(frame, origin=f"bundled:{source}:labels", bundled=True)
    if source in BUNDLED_DATA:
        raise ConfigError(f"source {source!r}: its labels are computed, not ingested")
    return read_label_file(Path(source), params)


# -- files --------------------------------------------------------------------------------------


def check_readable(path: Path) -> None:
    """Raise IngestError unless path is a readable CSV/Parquet file (nothing to quarantine)."""
    if path.is_dir():
        raise IngestError(f"{path}: is a folder, not a batch file")
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if not path.is_file():
        raise IngestError(f"{path}: not a regular file")
    if path.suffix.lower() not in READABLE_SUFFIXES:
        raise IngestError(f"{path}: unsupported file type (use .csv or .parquet)")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise IngestError(
            f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})"
        ) from None
    if not os.access(path, os.R_OK):
        raise IngestError(f"{path}: cannot read (permission denied)")


def read_table(path: Path, text_columns: Iterable[str], time_columns: Iterable[str]) -> RawBatch:
    """Read a CSV/Parquet file: text columns as str, time columns parsed; bad content reported."""
    check_readable(path)
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype={c: str for c in text_columns})
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types for garbled input
        reason = f"unreadable {path.suffix.lstrip('.')} ({exc.__class__.__name__}: {exc})"
        return RawBatch(pd.DataFrame(), origin=str(path), path=path, read_error=reason)
    for column in time_columns:
        frame = parse_times(frame, column)
    return RawBatch(frame, origin=str(path), path=path)


def read_batch_file(path: Path, data: DataParams) -> RawBatch:
    """Read a data batch file. Unreadable content is reported, not raised: the gate decides."""
    text = [n for n, spec in data.columns.items() if spec.dtype in CATEGORICAL_DTYPES]
    return read_table(path, text, [data.timestamp_column])


def read_label_file(path: Path, params: Params) -> RawBatch:
    """Read a label batch file: the join column, the label column, optionally the label time."""
    join, label = label_columns(params)
    columns = params.data.columns
    text = [c for c in (join, label) if c in columns and columns[c].dtype in CATEGORICAL_DTYPES]
    times = [params.labels.time_column] if params.labels.time_column else []
    return read_table(path, text, times)


def parse_times(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Parse a time column into naive datetime64[ns]; bad or out-of-range values become NaT."""
    if column not in frame.columns:
        return frame
    values = frame[column]
    if not (
        pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.DatetimeTZDtype)
    ):
        values = pd.to_datetime(values, errors="coerce", format="mixed", utc=_has_zone(values))
    return frame.assign(**{column: as_ns(values)})


def _has_zone(values: pd.Series) -> bool:
    """Whether text times carry a UTC offset (then all are converted to naive UTC)."""
    sample = values.dropna().astype(str).head(100)
    return bool(sample.str.contains(r"(?:[+-]\d\d:?\d\d|Z)$", regex=True).any())


def as_date(value: str | dt.date | None) -> dt.date | None:
    """A YYYY-MM-DD string as a date (None stays None)."""
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)
