"""The prediction log: every prediction, appended in memory, made durable by a writer thread.

Requests append to an in-memory queue (no disk work on the request path). A writer thread writes
the queue to a write-ahead file (JSON lines) and `os.fsync`s it every `serve.flush_seconds`, so a
`kill -9` loses at most that much. Every `serve.roll_every` (and at a clean stop, and at the next
start for what a killed process left) a write-ahead file becomes an immutable Parquet file under
`serve.log_dir`, versioned with DVC. `read_prediction_log` reads both, rolled and not yet rolled.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from driftloop import jsonio, versioning
from driftloop.config import Params, Settings

log = logging.getLogger("driftloop.serving")

WAL_SUFFIX = ".wal.jsonl"
META = ("prediction_id", "time", "model_version", "variant", "probability", "label", "key")


def wal_dir(params: Params, settings: Settings) -> Path:
    """Where the write-ahead files live (state, not data: never versioned)."""
    return settings.state_dir / "serve" / params.train.model_name / "wal"


def log_dir(params: Params, settings: Settings) -> Path:
    return settings.path(params.serve.log_dir)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def records(
    ids: list[str],
    at: dt.datetime,
    version: str,
    variant: str,
    proba: Iterable[float],
    labels: Iterable[int],
    inputs: list[dict[str, Any]],
    keys: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Log records of one scored request (`keys`: the experiment's sticky key of each row)."""
    time = at.isoformat(timespec="microseconds")  # one format, whatever the clock
    return [
        {
            "prediction_id": pid,
            "time": time,
            "model_version": version,
            "variant": variant,
            "probability": float(p),
            "label": int(lab),
            "key": key,
            "inputs": row,
        }
        for pid, p, lab, row, key in zip(ids, proba, labels, inputs, keys or ids, strict=True)
    ]


def _plain(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date):  # a pandas Timestamp
        return obj.isoformat()
    return jsonio.to_jsonable(obj)  # numpy scalars ...


def record_line(record: dict[str, Any]) -> str:
    """One record as a JSON line: the values `jsonio.dumps` writes (NaN, inf: null), by orjson
    (the writer thread's JSON is most of what the log costs the service: ~10x faster)."""
    import orjson

    try:
        return orjson.dumps(record, default=_plain).decode()
    except TypeError:  # e.g. a key that is not a string
        return jsonio.dumps(record)


def track_rolls(params: Params, settings: Settings) -> Callable[[Path], None]:
    """Version the rolled log folder with DVC (under the project's data lock)."""
    from driftloop.ingest import DATA_LOCK

    def track(folder: Path) -> None:
        with versioning.project_lock(settings.lock_dir, DATA_LOCK):
            versioning.track(settings.project, folder)

    return track


class PredictionLog:
    """An append-only prediction log with a write-ahead file and periodic Parquet rolls."""

    def __init__(
        self,
        wal: Path,
        rolled: Path,
        flush_seconds: float,
        roll_every: dt.timedelta,
        on_roll: Callable[[Path], None] | None = None,
    ) -> None:
        self.wal, self.rolled = wal, rolled
        self.flush_seconds, self.roll_every = flush_seconds, roll_every
        self.on_roll = on_roll
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: TextIO | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._io = threading.Lock()
        self.error: str | None = None
        self.written = 0

    @classmethod
    def for_model(
        cls, params: Params, settings: Settings, *, version: bool = True
    ) -> PredictionLog:
        serve = params.serve
        return cls(
            wal_dir(params, settings),
            log_dir(params, settings),
            serve.flush_seconds,
            pd.Timedelta(serve.roll_every).to_pytimedelta(),
            track_rolls(params, settings) if version else None,
        )

    def append(self, batch: list[dict[str, Any]]) -> None:
        """Queue records (cheap: no disk work; the writer thread makes them durable)."""
        self._queue.extend(batch)

    @property
    def healthy(self) -> bool:
        return self.error is None and (self._thread is None or self._thread.is_alive())

    def start(self) -> None:
        """Roll what an earlier process left, open a new write-ahead file, start the writer."""
        self.recover()
        self._open()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def recover(self) -> list[Path]:
        """Roll every write-ahead file no live process holds."""
        self.wal.mkdir(parents=True, exist_ok=True)
        done = [self._roll_file(p) for p in sorted(self.wal.glob(f"*{WAL_SUFFIX}"))]
        out = [p for p in done if p is not None]
        if out and self.on_roll is not None:
            self._version()
        return out

    def _open(self) -> None:
        self.wal.mkdir(parents=True, exist_ok=True)
        stamp = utc_now().strftime("%Y%m%dT%H%M%S")
        self._path = self.wal / f"{stamp}-{uuid.uuid4().hex[:8]}{WAL_SUFFIX}"
        self._file = self._path.open("a", encoding="utf-8")
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
        self._opened = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
                if time.monotonic() - self._opened >= self.roll_every.total_seconds():
                    self.roll()
            except Exception as exc:  # reported by /health; the next tick tries again
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("prediction log: %s", self.error)
            else:
                self.error = None

    def flush(self) -> int:
        """Write the queued records to the write-ahead file and fsync it."""
        with self._io:
            if self._file is None:
                return 0
            lines = []
            while self._queue:
                lines.append(record_line(self._queue.popleft()))
            if lines:
                self._file.write("\n".join(lines) + "\n")
                self._file.flush()
                os.fsync(self._file.fileno())
                self.written += len(lines)
            return len(lines)

    def roll(self) -> Path | None:
        """Close the current write-ahead file into Parquet (versioned) and open a new one."""
        with self._io:
            path, file = self._path, self._file
            self._file = None
            if file is not None:
                file.close()
            self._open()
        rolled = self._roll_file(path) if path is not None else None
        if rolled is not None and self.on_roll is not None:
            self._version()
        return rolled

    def _version(self) -> None:
        assert self.on_roll is not None
        try:
            self.on_roll(self.rolled)
        except Exception as exc:
            self.error = f"versioning the log: {type(exc).__name__}: {exc}"
            log.error("prediction log: %s", self.error)

    def _roll_file(self, path: Path) -> Path | None:
        """A write-ahead file as an immutable Parquet file (idempotent), then removed."""
        with path.open("a") as probe:
            try:
                fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another live service writes it
            frame = read_wal(path)
            target = self.rolled / f"predictions-{path.name.removesuffix(WAL_SUFFIX)}.parquet"
            if len(frame) and not target.exists():
                self.rolled.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp")
                frame.to_parquet(tmp, index=False)
                os.replace(tmp, target)
            path.unlink()
        return target if len(frame) else None

    def close(self) -> None:
        """Stop the writer, write what is queued and roll it (a clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
        with self._io:
            path, file = self._path, self._file
            self._file = self._path = None
            if file is not None:
                file.close()
        if path is not None and self._roll_file(path) is not None and self.on_roll is not None:
            self._version()


def _flatten(raw: list[dict[str, Any]]) -> pd.DataFrame:
    if not raw:
        return pd.DataFrame({c: [] for c in META})
    meta = pd.DataFrame([{k: r.get(k) for k in META} for r in raw])
    inputs = pd.DataFrame([r.get("inputs") or {} for r in raw])
    inputs = inputs.drop(columns=[c for c in inputs.columns if c in META])
    frame = pd.concat([meta, inputs], axis=1)
    frame["time"] = pd.to_datetime(frame["time"], format="ISO8601").astype("datetime64[ns]")
    return frame


def read_wal(path: Path) -> pd.DataFrame:
    """The records of a write-ahead file (a torn last line from a crash is skipped)."""
    raw = []
    with contextlib.suppress(FileNotFoundError), path.open(encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(json.JSONDecodeError):
                raw.append(json.loads(line))
    return _flatten(raw)


def read_prediction_log(
    params: Params,
    settings: Settings,
    since: dt.datetime | pd.Timestamp | None = None,
    until: dt.datetime | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Served predictions with since <= time < until (naive UTC), rolled and not yet rolled.

    Columns: prediction_id, time, model_version, variant, probability, label, key (the sticky
    key), then the raw input columns as posted. A shadow prediction carries the prediction_id
    of the champion's answer to the same row (paired); (prediction_id, variant) is unique.
    """
    folder = wal_dir(params, settings)  # first: a roll in between then shows up twice, not never
    parts = [read_wal(p) for p in sorted(folder.glob(f"*{WAL_SUFFIX}"))] if folder.is_dir() else []
    parts += [pd.read_parquet(p) for p in sorted(log_dir(params, settings).glob("*.parquet"))]
    parts = [p for p in parts if len(p)]
    if not parts:
        return _flatten([])
    frame = pd.concat(parts, ignore_index=True).drop_duplicates(["prediction_id", "variant"])
    ts = params.data.timestamp_column
    if ts in frame:
        frame[ts] = pd.to_datetime(frame[ts], errors="coerce")
    keep = pd.Series(True, index=frame.index)
    if since is not None:
        keep &= frame["time"] >= pd.Timestamp(since)
    if until is not None:
        keep &= frame["time"] < pd.Timestamp(until)
    return frame.loc[keep].sort_values("time", kind="stable").reset_index(drop=True)
