"""Accepted batches on disk: immutable files, one per batch, DVC-versioned.

A batch file is named `<first-date>_<last-date>_<sha8>.parquet` (dates of its earliest and latest
timestamp); it is written once and never rewritten. The dataset is all accepted rows, sorted by
(timestamp, *entity columns) whatever order the batches arrived in. Label batches (ground truth
that arrives later) are stored the same way under `data.labels_dir`, timed by `label_time`.

Times are naive `datetime64[ns]`. Bounds are compared as integer nanoseconds, so a far-away bound
(year 9999, `dt.date.max`) filters correctly instead of overflowing a `pd.Timestamp`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import Params
from driftloop.errors import ConfigError, IngestError

SUFFIX = ".parquet"
LABEL_TIME = "label_time"  # when a label became known (a column of every stored label batch)
NS_DTYPE = "datetime64[ns]"
_DAY_NS = 86_400 * 10**9
_EPOCH = dt.datetime(1970, 1, 1)
_INT64 = np.iinfo(np.int64)
# What datetime64[ns] can hold (either side of 1970 by ~292 years), in any coarser unit.
_NS_FIRST, _NS_LAST = np.datetime64("1677-09-22"), np.datetime64("2262-04-11")

TimeBound = dt.date | dt.datetime  # a date stands for the end of that day


# -- times ------------------------------------------------------------------------------------


def as_ns(values: pd.Series) -> pd.Series:
    """A datetime column as naive datetime64[ns] (UTC if it had a zone); out-of-range -> NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if values.dtype == NS_DTYPE or not pd.api.types.is_datetime64_dtype(values.dtype):
        return values
    raw = values.to_numpy()
    inside = (raw >= _NS_FIRST) & (raw < _NS_LAST)
    fitted = np.where(inside, raw, np.datetime64("NaT")).astype(NS_DTYPE)
    return pd.Series(fitted, index=values.index, name=values.name)


def _ns(moment: dt.datetime) -> int:
    """Nanoseconds since 1970 as a Python int (no overflow; naive, or converted to UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    micros = (moment - _EPOCH) // dt.timedelta(microseconds=1)
    return int(micros) * 1000 + getattr(moment, "nanosecond", 0)


def _after_ns(bound: TimeBound) -> int:
    """The first instant after a bound: past a datetime, or the next day's midnight after a date."""
    if isinstance(bound, dt.datetime):
        return _ns(bound) + 1
    return _ns(dt.datetime.combine(bound, dt.time())) + _DAY_NS


def _clip(value: int) -> int:
    return max(int(_INT64.min) + 1, min(int(_INT64.max), value))


def time_mask(
    times: pd.Series, since: TimeBound | None = None, until: TimeBound | None = None
) -> np.ndarray:
    """since < time <= until as booleans (a date bound means the end of that day; NaT is out)."""
    ticks = as_ns(times).to_numpy(dtype=NS_DTYPE).view("i8")
    keep = ticks != np.iinfo(np.int64).min  # NaT
    if since is not None:
        keep &= ticks >= _clip(_after_ns(since))
    if until is not None:
        keep &= ticks < _clip(_after_ns(until))
    return keep


def _day(bound: TimeBound) -> dt.date:
    return bound.date() if isinstance(bound, dt.datetime) else bound


# -- batch files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFile:
    """An accepted batch file and the dates of its first and last timestamp (from its name)."""

    path: Path
    first: dt.date
    last: dt.date

    @classmethod
    def parse(cls, path: Path) -> BatchFile:
        """Read the dates from `<first>_<last>_<sha8>.parquet`."""
        try:
            first, last, _ = path.stem.split("_")
            return cls(path, dt.date.fromisoformat(first), dt.date.fromisoformat(last))
        except ValueError:
            raise IngestError(
                f"{path}: not a batch file name (<first>_<last>_<sha8>.parquet)"
            ) from None

    def overlaps(self, since: TimeBound | None, until: TimeBound | None) -> bool:
        """Whether the file may hold rows with since < time <= until (by its name's dates)."""
        after = since is None or self.last >= _day(since)
        return after and (until is None or self.first <= _day(until))


def batch_files(folder: Path) -> list[BatchFile]:
    """Accepted batch files, by first date, then last date, then name."""
    if not folder.exists():
        return []
    found = (BatchFile.parse(p) for p in folder.glob(f"*{SUFFIX}"))
    return sorted(found, key=lambda b: (b.first, b.last, b.path.name))


def last_accepted_date(raw_dir: Path) -> dt.date | None:
    """The date of the newest accepted timestamp (None when there is no data yet)."""
    files = batch_files(raw_dir)
    return max(b.last for b in files) if files else None


def last_accepted_time(raw_dir: Path, params: Params) -> pd.Timestamp | None:
    """The newest accepted timestamp (reads only the files of the newest date)."""
    newest = last_accepted_date(raw_dir)
    if newest is None:
        return None
    column = params.data.timestamp_column
    frames = [CACHE.read(b.path) for b in batch_files(raw_dir) if b.last == newest]
    return max(as_ns(f[column]).max() for f in frames)


def content_id(frame: pd.DataFrame) -> str:
    """A short content hash of a frame (stable across runs)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(hashed).hexdigest()[:8]


def write_batch(frame: pd.DataFrame, folder: Path, time_column: str) -> Path:
    """Write an accepted batch as a new immutable file named by its time range; never overwrite."""
    frame = frame.reset_index(drop=True)
    frame = frame.assign(**{time_column: as_ns(frame[time_column])})
    times = frame[time_column]
    if times.isna().all():
        raise IngestError(f"{time_column}: no valid timestamp, cannot name the batch file")
    first, last = times.min().date(), times.max().date()
    path = folder / f"{first}_{last}_{content_id(frame)}{SUFFIX}"
    if path.exists():
        raise IngestError(f"{path}: batch already accepted (raw data is never rewritten)")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.rename(path)
    path.chmod(0o444)
    return path


# -- reading, cached per process ---------------------------------------------------------------


class BatchCache:
    """Batch files read once per process (they are never rewritten), least recently used out.

    Keyed by path, size and mtime, so a file replaced behind driftloop's back is read again.
    """

    def __init__(self, max_rows: int = 5_000_000) -> None:
        self.max_rows = max_rows
        self._frames: OrderedDict[tuple[str, int, int], pd.DataFrame] = OrderedDict()
        self._lock = threading.Lock()

    def read(
        self, path: Path, reader: Callable[[Path], pd.DataFrame] | None = None
    ) -> pd.DataFrame:
        """The file's frame (shared: callers must not modify it)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
                return frame
        frame = (reader or pd.read_parquet)(path)
        with self._lock:
            self._frames[key] = frame
            self._evict()
        return frame

    def _evict(self) -> None:
        """Drop the least recently used frames above max_rows (always keep the newest)."""
        while sum(len(f) for f in self._frames.values()) > self.max_rows and len(self._frames) > 1:
            self._frames.popitem(last=False)

    def clear(self) -> None:
        """Forget every cached frame."""
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)


CACHE = BatchCache()


def read_batch(path: Path) -> pd.DataFrame:
    """One accepted batch file, through the per-process cache (do not modify the result)."""
    return CACHE.read(path)


def _concat(folder: Path, since: TimeBound | None, until: TimeBound | None) -> pd.DataFrame | None:
    """The batch files that may hold rows in (since, until], concatenated (None: no files)."""
    files = [b.path for b in batch_files(folder) if b.overlaps(since, until)]
    if not files:
        return None
    return pd.concat([CACHE.read(p) for p in files], ignore_index=True)  # always a new frame


def load_accepted(
    raw_dir: Path,
    params: Params,
    *,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
) -> pd.DataFrame:
    """All accepted rows with since < timestamp <= until, sorted by (timestamp, *entities).

    A date bound means the end of that day (`until=date` includes the whole day). The sort is
    stable, so rows are in the same order whatever order their batches arrived in.
    """
    if not batch_files(raw_dir):
        raise IngestError(f"{raw_dir}: no accepted data yet; run `driftloop ingest` first")
    column = params.data.timestamp_column
    frame = _concat(raw_dir, since, until)
    if frame is None:
        return CACHE.read(batch_files(raw_dir)[0].path).iloc[0:0].copy()
    frame[column] = as_ns(frame[column])
    frame = frame.loc[time_mask(frame[column], since, until)]
    entities = [c for c in params.data.entity_columns if c in frame.columns]
    return frame.take(sort_order(frame, column, entities)).reset_index(drop=True)


def _codes(values: pd.Series) -> np.ndarray:
    """Integer codes that sort like the values (nulls last)."""
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:  # mixed types cannot be ordered: order by text
        codes, uniques = pd.factorize(values.astype(str), sort=True)
    return np.where(codes < 0, len(uniques), codes)


def sort_order(frame: pd.DataFrame, time_column: str, entities: list[str]) -> np.ndarray:
    """Row positions sorted by (time, *entities), stable (fast for millions of rows)."""
    ticks = frame[time_column].to_numpy(dtype=NS_DTYPE).view("i8")
    if not entities:
        return np.argsort(ticks, kind="stable")
    keys = [_codes(frame[c]) for c in reversed(entities)]
    return np.lexsort([*keys, ticks])  # the last key sorts first; lexsort is stable


def label_columns(params: Params) -> tuple[str, str]:
    """(join column, label column) of label batches; ConfigError when labels do not apply."""
    if params.target.column is None:
        raise ConfigError(
            "target: a forecast target is computed from later rows; there are no label batches "
            "(set target.column to ingest labels)"
        )
    if params.join_column is None:
        raise ConfigError("labels need a join column: set data.id_column or labels.join_column")
    return params.join_column, params.target.column


def read_label_rows(
    labels_dir: Path, params: Params, *, as_of: TimeBound | None = None
) -> pd.DataFrame:
    """Every stored label row with label_time <= as_of, as written (`labels.accepted` picks one
    per join value).

    Returns:
        Columns [join column, target.column, label_time], in batch-file order.
    """
    join, label = label_columns(params)
    frame = _concat(labels_dir, None, as_of)
    if frame is None:
        return pd.DataFrame({join: [], label: [], LABEL_TIME: pd.Series([], dtype=NS_DTYPE)})
    frame = frame[[join, label, LABEL_TIME]].assign(**{LABEL_TIME: as_ns(frame[LABEL_TIME])})
    return frame.loc[time_mask(frame[LABEL_TIME], None, as_of)].reset_index(drop=True)


def write_manifest(raw_dir: Path, manifest: Path, data_md5: str) -> None:
    """A stable summary of what is accepted (a DVC output: no timestamps)."""
    batches = [
        {"file": b.path.name, "first": str(b.first), "last": str(b.last)}
        for b in batch_files(raw_dir)
    ]
    manifest.parent.mkdir(parents=True, exist_ok=True)
    payload = {"data_md5": data_md5, "n_batches": len(batches), "batches": batches}
    manifest.write_text(json.dumps(payload, indent=2) + "\n")
