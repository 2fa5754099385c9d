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
import glob
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import CATEGORICAL_DTYPES, DataParams, Params, Settings, SourceSpec
from driftloop.datastore import TimeBound, as_ns, label_columns, time_mask
from driftloop.errors import ConfigError, IngestError

SEATTLE = "seattle"
FLIGHTS = "flights"
READABLE_SUFFIXES = {".csv", ".parquet", ".pq"}
HASH_CHUNK = 1 << 22

Window = Callable[[TimeBound | None, TimeBound | None], pd.DataFrame]


@dataclass(frozen=True)
class Receipt:
    """What the source ledger remembers once a batch is taken: a file's fingerprint and how far
    it was read, a drop's content hash, or a table's watermark. Recorded only after the gate."""

    key: str
    value: dict[str, Any]


@dataclass(frozen=True)
class RawBatch:
    """A batch as read, before the gate: the frame, where it came from, and why it is unreadable."""

    frame: pd.DataFrame
    origin: str
    path: Path | None = None
    read_error: str | None = None
    bundled: bool = False  # from a bundled example: an empty frame means "nothing new"
    receipt: Receipt | None = None  # recorded in the source ledger once the batch is taken
    held_back: int = 0  # rows read but later than `until` (left for a later ingest)
    incremental: bool = False  # only what was added since the last read: empty means nothing new


@dataclass(frozen=True)
class Role:
    """What a source is read for: data batches or label batches (their time and text columns)."""

    name: str  # "data" or "labels"
    time_column: str | None
    text_columns: tuple[str, ...]
    key: str  # the params key of the source, for messages
    bool_columns: tuple[str, ...] = ()

    @classmethod
    def data(cls, params: Params) -> Role:
        columns = params.data.columns
        text = tuple(n for n, s in columns.items() if s.dtype in CATEGORICAL_DTYPES)
        flags = tuple(n for n, s in columns.items() if s.dtype == "bool")
        return cls("data", params.data.timestamp_column, text, "data.source", flags)

    @classmethod
    def labels(cls, params: Params) -> Role:
        join, label = label_columns(params)
        columns = params.data.columns
        mine = [c for c in (join, label) if c in columns]
        text = tuple(c for c in mine if columns[c].dtype in CATEGORICAL_DTYPES)
        flags = tuple(c for c in mine if columns[c].dtype == "bool")
        return cls("labels", params.labels.time_column, text, "labels.source", flags)


@dataclass(frozen=True)
class SourceRead:
    """What one look at a source found: batches to gate, and notes on what it skipped."""

    batches: list[RawBatch]
    notes: list[str] = field(default_factory=list)


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


# -- reading a source ----------------------------------------------------------------------------


def read_source(
    spec: SourceSpec,
    role: Role,
    settings: Settings,
    ledger: SourceLedger,
    *,
    after: TimeBound | None = None,
    until: TimeBound | None = None,
) -> SourceRead:
    """What is new at a source, as batches to gate (each new rows or rows read again).

    Args:
        spec: the source (bundled, file, folder or sql).
        role: data or labels: which time column `until` applies to, which columns are text.
        settings: the project (relative paths) and environment.
        ledger: what earlier ingests took from this source (files read, drops taken, watermark).
        after: the newest accepted time, minus the declared lateness: where a bundled source or a
            table read by its time column starts (None: from the beginning).
        until: rows later than this (a date: the end of that day) are left for a later ingest.
    """
    if spec.kind == "bundled":
        return SourceRead([read_bundled(str(spec.name), role, after, until)])
    if spec.kind == "file":
        batch = read_growing_file(_where(settings.project, str(spec.path)), role, ledger, until)
        return SourceRead([] if batch is None else [batch])
    if spec.kind == "folder":
        return read_folder(settings.project, str(spec.path), role, ledger, until)
    return SourceRead([read_table_source(spec, role, ledger, after, until)])


def _where(project: Path, path: str) -> Path:
    """A source path as given (absolute), or relative to the project; links are not followed,
    so messages name the path the user wrote."""
    given = Path(path)
    return given if given.is_absolute() else project / given


def read_bundled(
    name: str, role: Role, after: TimeBound | None, until: TimeBound | None
) -> RawBatch:
    """A bundled example's rows (or labels) in (after, until]."""
    if role.name == "labels":
        if name not in BUNDLED_LABELS:
            raise ConfigError(f"{role.key}: bundled source {name!r} has no label batches")
        frame = BUNDLED_LABELS[name](after, until)
        return RawBatch(frame, origin=f"bundled:{name}:labels", bundled=True)
    frame = BUNDLED_DATA[name](after, until)
    return RawBatch(frame, origin=f"bundled:{name}", bundled=True)


def _until_mask(frame: pd.DataFrame, role: Role, until: TimeBound | None) -> np.ndarray:
    """Rows to keep now: time <= until, or no usable time (the gate judges those)."""
    column = role.time_column
    if until is None or column is None or column not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    times = frame[column]
    if not pd.api.types.is_datetime64_any_dtype(times):
        return np.ones(len(frame), dtype=bool)
    return time_mask(times, None, until) | times.isna().to_numpy()


def _held_back(batch: RawBatch, role: Role, until: TimeBound | None) -> RawBatch:
    """The batch without its rows later than `until`, counting them."""
    if batch.read_error is not None:
        return batch
    keep = _until_mask(batch.frame, role, until)
    if keep.all():
        return batch
    frame = batch.frame.loc[keep].reset_index(drop=True)
    return replace(batch, frame=frame, held_back=int((~keep).sum()))


def _fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"file_size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_growing_file(
    path: Path, role: Role, ledger: SourceLedger, until: TimeBound | None
) -> RawBatch | None:
    """A CSV/Parquet file that may have grown since the last ingest; None when unchanged.

    A CSV whose bytes up to the last read offset are unchanged is read from that offset only
    (rows appended); any other change reads the whole file again, and the gate's key check
    keeps what is new. The offset advances only when no row was held back by `until`.
    """
    check_readable(path)
    key = f"file:{path.resolve()}"
    seen = ledger.get(key) or {}
    stamp = _fingerprint(path)
    if seen.get("complete") and all(seen.get(k) == v for k, v in stamp.items()):
        return None  # unchanged since it was read in full
    if path.suffix.lower() != ".csv":
        batch = _held_back(read_table(path, role.text_columns, _times(role)), role, until)
        whole = {**stamp, "complete": batch.held_back == 0}
        return replace(batch, receipt=Receipt(key, whole))
    content = path.read_bytes()
    end = len(content)  # a last line without a newline counts as whole (read again next time)
    start, prefix = _unchanged_offset(content, seen)
    header_end = content.find(b"\n") + 1
    if start > 0 and header_end > 0 and end <= start:
        batch = RawBatch(pd.DataFrame(), origin=str(path), path=path, incremental=True)
    elif start > 0 and header_end > 0:
        body = content[:header_end] + content[start:end]
        batch = parse_csv_bytes(body, path, role.text_columns, _times(role))
        batch = replace(batch, incremental=True)
    else:
        batch = parse_csv_bytes(content, path, role.text_columns, _times(role))
        start, prefix = 0, hashlib.sha256()
    batch = _held_back(batch, role, until)
    done = batch.held_back == 0 and batch.read_error is None
    offset = end if done else start
    if done:
        prefix.update(memoryview(content)[start:end])  # the prefix's hash goes on, not again
    value: dict[str, Any] = {
        **stamp,
        "offset": offset,
        "prefix_sha256": prefix.hexdigest(),
        "complete": done,
    }
    return replace(batch, receipt=Receipt(key, value))


def _unchanged_offset(content: bytes, seen: dict[str, Any]) -> tuple[int, Any]:
    """The offset read up to last time, if the bytes before it are unchanged (else 0), and the
    running sha256 of the bytes before that offset."""
    offset = int(seen.get("offset") or 0)
    if offset <= 0 or offset > len(content) or content[offset - 1 : offset] != b"\n":
        return 0, hashlib.sha256()
    prefix = hashlib.sha256(memoryview(content)[:offset])
    if prefix.hexdigest() != seen.get("prefix_sha256"):
        return 0, hashlib.sha256()
    return offset, prefix


def parse_csv_bytes(
    content: bytes, path: Path, text_columns: Iterable[str], time_columns: Iterable[str]
) -> RawBatch:
    """CSV bytes as a batch: text columns as str, time columns parsed; bad content reported."""
    try:
        frame = pd.read_csv(io.BytesIO(content), dtype={c: str for c in text_columns})
    except Exception as exc:  # pandas raises many types for garbled input
        reason = f"unreadable csv ({exc.__class__.__name__}: {exc})"
        return RawBatch(pd.DataFrame(), origin=str(path), path=path, read_error=reason)
    for column in time_columns:
        frame = parse_times(frame, column)
    return RawBatch(frame, origin=str(path), path=path)


def _times(role: Role) -> list[str]:
    return [role.time_column] if role.time_column else []


def folder_files(root: Path, pattern: str) -> list[Path]:
    """The files of a folder source, by name: a folder's CSV/Parquet files, or a glob's matches."""
    where = root / pattern
    if where.is_dir():
        found = [p for p in where.iterdir() if p.suffix.lower() in READABLE_SUFFIXES]
    elif glob.has_magic(pattern):
        found = [Path(p) for p in glob.glob(str(where), recursive=True)]
    else:
        raise IngestError(f"{where}: folder not found")
    return sorted((p for p in found if p.is_file()), key=lambda p: p.name)


def read_folder(
    root: Path, pattern: str, role: Role, ledger: SourceLedger, until: TimeBound | None
) -> SourceRead:
    """Each new file of a folder (or glob) is a batch; a file already taken (same content) is
    skipped, and one quarantined before is skipped until its content changes."""
    taken = ledger.hashes("taken")
    refused = ledger.hashes("quarantined")
    batches: list[RawBatch] = []
    notes: list[str] = []
    for path in folder_files(root, pattern):
        key = f"drop:{path.resolve()}"
        seen = ledger.get(key) or {}
        stamp = _fingerprint(path)
        unchanged = all(seen.get(k) == v for k, v in stamp.items())
        if unchanged and _not_yet(seen, until):
            continue  # read before: every row later than `until`
        if unchanged and seen.get("status") in ("taken", "quarantined"):
            digest = str(seen.get("sha256"))
        else:
            digest = sha256_of(path)
        if digest in taken:
            continue
        if digest in refused:
            notes.append(f"{path.name}: still quarantined (fix or remove the file to retry)")
            continue
        whole = read_table(path, role.text_columns, _times(role))
        batch = _held_back(whole, role, until)
        if batch.frame.empty and batch.held_back and batch.read_error is None:
            first = first_time(whole.frame, role)  # not arrived yet: remember when it starts
            ledger.record(Receipt(key, {**stamp, "status": "future", "first": first}))
            continue
        status = "taken" if batch.held_back == 0 else "partial"
        receipt = Receipt(key, {**stamp, "sha256": digest, "status": status})
        batches.append(replace(batch, receipt=receipt))
    return SourceRead(batches, notes)


def first_time(frame: pd.DataFrame, role: Role) -> str | None:
    """The earliest time of a batch (ISO), or None when it has no time column."""
    column = role.time_column
    if column is None or column not in frame.columns or frame.empty:
        return None
    first = frame[column].min()
    return None if pd.isna(first) else pd.Timestamp(first).isoformat()


def _not_yet(seen: dict[str, Any], until: TimeBound | None) -> bool:
    """A drop read before whose every row is later than `until`."""
    first = seen.get("first")
    if seen.get("status") != "future" or first is None or until is None:
        return False
    return bool(not time_mask(pd.Series([pd.Timestamp(first)]), None, until)[0])


# -- SQL ------------------------------------------------------------------------------------------


class Engines:
    """SQLAlchemy engines per URL, created once per process (their pools are reused)."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> Any:
        import sqlalchemy as sa

        with self._lock:
            if url not in self._engines:
                self._engines[url] = sa.create_engine(url, pool_pre_ping=True)
            return self._engines[url]

    def clear(self) -> None:
        """Dispose of every engine (tests; a process about to fork)."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


ENGINES = Engines()


def source_url(spec: SourceSpec, role: Role) -> str:
    """The SQLAlchemy URL of a SQL source, from its environment variable."""
    url = os.environ.get(spec.url_env, "").strip()
    if not url:
        raise ConfigError(
            f"{role.key}: environment variable {spec.url_env} is not set "
            "(the SQLAlchemy URL of the source, e.g. postgresql://user@host/db)"
        )
    return url


def read_table_source(
    spec: SourceSpec,
    role: Role,
    ledger: SourceLedger,
    after: TimeBound | None,
    until: TimeBound | None,
) -> RawBatch:
    """Rows of a SQL table or query whose watermark is at or after the last one read.

    The watermark is the time column (then `after`, the newest accepted time minus the
    lateness, is where reading starts) or another column such as an insertion time (then the
    ledger keeps the newest value read). Rows at the boundary are read again; the gate's key
    check skips what was already accepted.
    """
    watermark = spec.watermark_column or role.time_column
    own_mark = watermark is not None and watermark != role.time_column
    what = spec.table or hashlib.sha256(str(spec.query).encode()).hexdigest()[:12]
    key = f"sql:{spec.url_env}:{what}"
    start = (ledger.get(key) or {}).get("watermark") if own_mark else after
    frame = _select(spec, role, watermark, start, until)
    origin = f"sql:{spec.table or 'query'}"
    for column in _times(role):
        frame = parse_times(frame, column)
    frame = _bool_columns(_text_columns(frame, role.text_columns), role.bool_columns)
    batch = _held_back(RawBatch(frame, origin=origin, incremental=True), role, until)
    if not own_mark or watermark is None or watermark not in frame.columns or frame.empty:
        return batch
    mark = _next_mark(frame, batch, role, until, watermark, start)
    return replace(batch, receipt=Receipt(key, {"watermark": mark}))


def _next_mark(
    read: pd.DataFrame,
    batch: RawBatch,
    role: Role,
    until: TimeBound | None,
    watermark: str,
    start: Any,
) -> Any:
    """The watermark to read from next time: the newest read, but never past a held-back row."""
    marks = read[watermark]
    if batch.held_back:
        held = ~_until_mask(read, role, until)
        first_held = marks[held].min()
        marks = marks[marks < first_held]
    if marks.empty or pd.isna(marks.max()):
        return start
    value = marks.max()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def _select(
    spec: SourceSpec, role: Role, watermark: str | None, start: Any, until: TimeBound | None
) -> pd.DataFrame:
    """Run the source's SELECT with the watermark and `until` bounds."""
    import sqlalchemy as sa

    url = source_url(spec, role)
    if spec.table is not None:
        schema, _, name = spec.table.rpartition(".")
        source: Any = sa.table(name, schema=schema or None)
    else:
        source = sa.text(str(spec.query)).columns().subquery("source")
    stmt: Any = sa.select(sa.literal_column("*")).select_from(source)
    if watermark is not None and start is not None:
        stmt = stmt.where(sa.column(watermark) >= sa.bindparam("start", _bound(start)))
    if until is not None and role.time_column is not None:
        stmt = stmt.where(sa.column(role.time_column) <= sa.bindparam("until", _end(until)))
    try:
        with ENGINES.get(url).connect() as conn:
            return pd.read_sql(stmt, conn)
    except ConfigError:
        raise
    except Exception as exc:  # driver and SQL errors: one line naming the source
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        raise IngestError(f"{role.key} ({spec.label}): {exc.__class__.__name__}: {first}") from None


def _bound(value: Any) -> Any:
    """A watermark as a bind value (timestamps as naive datetimes)."""
    if isinstance(value, str):
        try:
            return pd.Timestamp(value).to_pydatetime()
        except ValueError:
            return value
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _end(until: TimeBound) -> dt.datetime:
    """The last instant `until` includes (a date: the end of that day)."""
    if isinstance(until, dt.datetime):
        return until
    return dt.datetime.combine(until, dt.time.max)


def _text_columns(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Declared text columns as str (a database may hand back ints), nulls kept."""
    changes = {
        c: frame[c].astype(object).where(frame[c].isna(), frame[c].astype(str))
        for c in columns
        if c in frame.columns and not pd.api.types.is_string_dtype(frame[c])
    }
    return frame.assign(**changes) if changes else frame


def _bool_columns(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Declared bool columns that a database without a boolean type hands back as 0/1."""
    changes = {}
    for name in columns:
        values = frame.get(name)
        if values is None or pd.api.types.is_bool_dtype(values):
            continue
        if pd.api.types.is_integer_dtype(values) and values.isin([0, 1]).all():
            changes[name] = values.astype(bool)
    return frame.assign(**changes) if changes else frame


# -- the source ledger ----------------------------------------------------------------------------


class SourceLedger:
    """What earlier ingests took from a model's sources, per role: files read and how far,
    drops taken or quarantined (by content hash), a table's watermark.

    A cache of progress, not of truth: losing it only means reading more, since the gate's key
    check skips rows already accepted. Written atomically; callers hold the data lock.
    """

    def __init__(self, path: Path, role: str) -> None:
        self.path = path
        self.role = role
        self._all: dict[str, dict[str, dict[str, Any]]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    @classmethod
    def of(cls, settings: Settings, model_name: str, role: str) -> SourceLedger:
        return cls(settings.state_dir / "sources" / f"{model_name}.json", role)

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return self._all.setdefault(self.role, {})

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def hashes(self, status: str) -> set[str]:
        """Content hashes of drops with this status (taken, quarantined)."""
        return {str(v["sha256"]) for v in self.entries.values() if v.get("status") == status}

    def record(self, receipt: Receipt | None, **changes: Any) -> None:
        """Remember a receipt (with `changes` on top, e.g. status="quarantined") and save."""
        if receipt is None:
            return
        self.entries[receipt.key] = {**receipt.value, **changes}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._all, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.path)
