"""Where raw batches come from: the bundled Seattle weather, or a user's CSV/Parquet file.

Readers never coerce values: a string in a numeric column stays a string so the validation gate
can see it. Only the date column is parsed (unparseable dates become NaT, which the gate rejects).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import DataParams
from driftloop.errors import IngestError

SEATTLE = "seattle"
READABLE_SUFFIXES = {".csv", ".parquet", ".pq"}


@dataclass(frozen=True)
class RawBatch:
    """A batch as read, before the gate: the frame, where it came from, and why it is unreadable."""

    frame: pd.DataFrame
    origin: str
    path: Path | None = None
    read_error: str | None = None


def load_seattle() -> pd.DataFrame:
    """Seattle daily weather 2012-2015 from the vega_datasets package (offline, bundled CSV)."""
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def window(
    frame: pd.DataFrame,
    date_column: str,
    after: dt.date | None = None,
    until: dt.date | None = None,
) -> pd.DataFrame:
    """Rows with after < date <= until (either bound optional)."""
    dates = pd.to_datetime(frame[date_column])
    keep = pd.Series(True, index=frame.index)
    if after is not None:
        keep &= dates > pd.Timestamp(after)
    if until is not None:
        keep &= dates <= pd.Timestamp(until)
    return frame.loc[keep].reset_index(drop=True)


def read_batch_file(path: Path, data: DataParams) -> RawBatch:
    """Read a user's batch file. Unreadable content is reported, not raised: the gate decides."""
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.suffix.lower() not in READABLE_SUFFIXES:
        raise IngestError(f"{path}: unsupported file type (use .csv or .parquet)")
    try:
        is_csv = path.suffix.lower() == ".csv"
        frame = pd.read_csv(path) if is_csv else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types for garbled input
        reason = f"unreadable {path.suffix.lstrip('.')} ({exc.__class__.__name__}: {exc})"
        return RawBatch(pd.DataFrame(), origin=str(path), path=path, read_error=reason)
    return RawBatch(parse_dates(frame, data.date_column), origin=str(path), path=path)


def parse_dates(frame: pd.DataFrame, date_column: str) -> pd.DataFrame:
    """Parse the date column in place of the raw strings; bad dates become NaT."""
    if date_column in frame.columns and not pd.api.types.is_datetime64_any_dtype(
        frame[date_column]
    ):
        frame = frame.copy()
        frame[date_column] = pd.to_datetime(frame[date_column], errors="coerce", format="mixed")
    return frame


def read_source(
    source: str, data: DataParams, after: dt.date | None, until: dt.date | None
) -> RawBatch:
    """The next batch of a source: rows after the last accepted date, up to `until`."""
    if source == SEATTLE:
        return RawBatch(
            window(load_seattle(), "date", after, until), origin="vega_datasets:seattle"
        )
    return read_batch_file(Path(source), data)
