"""Accepted batches on disk: immutable files under data/raw, one per batch, DVC-versioned.

A batch file is named `<first-date>_<last-date>_<sha8>.parquet`; it is written once and never
rewritten. The dataset is the concatenation of all accepted batches in date order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import Params
from driftloop.errors import IngestError

SUFFIX = ".parquet"


@dataclass(frozen=True)
class BatchFile:
    path: Path
    first: dt.date
    last: dt.date

    @classmethod
    def parse(cls, path: Path) -> BatchFile:
        try:
            first, last, _ = path.stem.split("_")
            return cls(path, dt.date.fromisoformat(first), dt.date.fromisoformat(last))
        except ValueError:
            raise IngestError(
                f"{path}: not a batch file name (<first>_<last>_<sha8>.parquet)"
            ) from None


def batch_files(raw_dir: Path) -> list[BatchFile]:
    """Accepted batches, oldest first."""
    if not raw_dir.exists():
        return []
    return sorted((BatchFile.parse(p) for p in raw_dir.glob(f"*{SUFFIX}")), key=lambda b: b.first)


def last_accepted_date(raw_dir: Path) -> dt.date | None:
    """The newest date already accepted (None when there is no data yet)."""
    files = batch_files(raw_dir)
    return files[-1].last if files else None


def content_id(frame: pd.DataFrame) -> str:
    """A short content hash of a frame (stable across runs)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(hashed).hexdigest()[:8]


def write_batch(frame: pd.DataFrame, raw_dir: Path, date_column: str) -> Path:
    """Write an accepted batch as a new immutable file; never overwrite."""
    dates = pd.to_datetime(frame[date_column])
    name = f"{dates.min().date()}_{dates.max().date()}_{content_id(frame)}{SUFFIX}"
    path = raw_dir / name
    if path.exists():
        raise IngestError(f"{path}: batch already accepted (raw data is never rewritten)")
    raw_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.rename(path)
    path.chmod(0o444)
    return path


_BATCHES: OrderedDict[tuple[str, int, int], pd.DataFrame] = OrderedDict()
_BATCH_CACHE_ROWS = 5_000_000
_BATCHES_LOCK = threading.Lock()


def read_batch(path: Path) -> pd.DataFrame:
    """One accepted batch file, read once per process (batch files are never rewritten).

    Keyed by path, size and mtime, so a file replaced behind driftloop's back is read again.
    The cache holds up to `_BATCH_CACHE_ROWS` rows, least recently used first out.
    """
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _BATCHES_LOCK:
        frame = _BATCHES.get(key)
        if frame is not None:
            _BATCHES.move_to_end(key)
            return frame
    frame = pd.read_parquet(path)
    with _BATCHES_LOCK:
        _BATCHES[key] = frame
        while sum(len(f) for f in _BATCHES.values()) > _BATCH_CACHE_ROWS and len(_BATCHES) > 1:
            _BATCHES.popitem(last=False)
    return frame


def load_accepted(
    raw_dir: Path, params: Params, *, since: dt.date | None = None, until: dt.date | None = None
) -> pd.DataFrame:
    """All accepted rows (optionally since < date <= until), sorted by date."""
    date_col = params.data.date_column
    files = [
        b.path
        for b in batch_files(raw_dir)
        if (since is None or b.last > since) and (until is None or b.first <= until)
    ]
    if not files:
        raise IngestError(f"{raw_dir}: no accepted data yet; run `driftloop ingest` first")
    frame = pd.concat([read_batch(p) for p in files], ignore_index=True)  # a new frame
    frame[date_col] = pd.to_datetime(frame[date_col])
    if since is not None:
        frame = frame[frame[date_col] > pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame[date_col] <= pd.Timestamp(until)]
    return frame.sort_values(date_col).reset_index(drop=True)


def write_manifest(raw_dir: Path, manifest: Path, data_md5: str) -> None:
    """A stable summary of what is accepted (a DVC output: no timestamps)."""
    batches = [
        {"file": b.path.name, "first": str(b.first), "last": str(b.last)}
        for b in batch_files(raw_dir)
    ]
    manifest.parent.mkdir(parents=True, exist_ok=True)
    payload = {"data_md5": data_md5, "n_batches": len(batches), "batches": batches}
    manifest.write_text(json.dumps(payload, indent=2) + "\n")
