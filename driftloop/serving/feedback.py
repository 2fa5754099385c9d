"""Feedback: labels sent back for served predictions, recorded once, in an append-only log.

Each label lands as one JSON line (fsynced) in `serve.feedback_dir`; a data id is labelled once
(a second label for it, concurrent or later, is not recorded). Which label a row or prediction
gets, feedback or label batch, is `driftloop.labels`' rule. `flush_feedback` turns what has
arrived into a label batch through `ingest.ingest_labels`: the label suite, quarantine and DVC.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.config import CATEGORICAL_DTYPES, Params, Settings
from driftloop.datastore import label_columns

FEEDBACK_GLOB = "feedback-*.jsonl"


@dataclass(frozen=True)
class Outcome:
    """What happened to one feedback item."""

    key: str
    recorded: bool
    reason: str = ""


def label_problem(params: Params, value: Any) -> str | None:
    """Why a label value is not allowed for the label column (None: fine)."""
    _, column = label_columns(params)
    spec = params.data.columns[column]
    if value is None or isinstance(value, (dict, list)):
        return "must be a single value"
    if spec.dtype in CATEGORICAL_DTYPES:
        ok = isinstance(value, str)
    elif spec.dtype == "bool":
        ok = isinstance(value, bool)
    elif spec.dtype == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok:
        return f"must be of dtype {spec.dtype}, got {value!r}"
    if spec.allowed is not None and value not in spec.allowed:
        return f"must be one of {spec.allowed}, got {value!r}"
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        return f"must be within [{spec.min}, {spec.max}], got {value!r}"
    return None


class FeedbackLog:
    """Labels by data id, each recorded once, appended (fsynced) to this process's own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._seen = {str(r["key"]) for r in read_feedback_records(folder)}
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self._path = folder / f"feedback-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"

    def record(
        self, key: str, label: Any, prediction_id: str | None, at: dt.datetime | None = None
    ) -> Outcome:
        """Record a label for a data id unless one is already recorded."""
        return self.record_many([(key, label, prediction_id)], at)[0]

    def record_many(
        self, items: list[tuple[str, Any, str | None]], at: dt.datetime | None = None
    ) -> list[Outcome]:
        """Record (key, label, prediction_id) items, each data id once, with one fsync for all
        (received `at`, naive UTC: now by default). A key repeated within `items` counts once."""
        when = at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        received = when.isoformat(timespec="microseconds")  # one format, whatever the clock
        out: list[Outcome] = []
        lines: list[str] = []
        with self._lock:
            fresh: set[str] = set()
            for key, label, pid in items:
                if key in self._seen or key in fresh:
                    out.append(Outcome(key, False, "already recorded"))
                    continue
                fresh.add(key)
                entry = {"key": key, "label": label, "prediction_id": pid, "received_at": received}
                lines.append(json.dumps(entry))
                out.append(Outcome(key, True))
            if lines:
                self.folder.mkdir(parents=True, exist_ok=True)
                with self._path.open("a", encoding="utf-8") as fh:
                    fh.write("\n".join(lines) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                self._seen |= fresh
        return out


def read_feedback_records(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob(FEEDBACK_GLOB)) if folder.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
    return out


def read_feedback(params: Params, settings: Settings) -> pd.DataFrame:
    """Every label sent back: key (the data id), label, prediction_id, received_at."""
    rows = read_feedback_records(settings.path(params.serve.feedback_dir))
    frame = pd.DataFrame(rows, columns=["key", "label", "prediction_id", "received_at"])
    frame["received_at"] = pd.to_datetime(frame["received_at"], format="ISO8601")
    return frame


@dataclass(frozen=True)
class FlushResult:
    """A feedback flush: labels sent through the label gate, and those still waiting."""

    sent: int
    pending: int
    labels_md5: str
    path: str | None


def flush_feedback(params: Params, settings: Settings, *, push: bool = True) -> FlushResult:
    """Turn feedback not yet in accepted labels into one label batch (the label gate decides).

    Labels whose data row is not accepted yet stay pending (they join later). A batch that fails
    the gate is quarantined (ValidationFailed, exit 4) and nothing is stored.
    """
    from driftloop import datastore, labels
    from driftloop.ingest import ingest_labels
    from driftloop.sources import RawBatch

    join, column = label_columns(params)
    fed = labels.first_known(labels.from_feedback(read_feedback(params, settings)))
    accepted = labels.accepted(settings.path(params.data.labels_dir), params)
    fed = fed[~fed[labels.KEY].isin(labels.as_keys(accepted[join]))]
    rows = datastore.load_accepted(settings.path(params.data.raw_dir), params)
    known = set(labels.as_keys(rows[join])) if join in rows else set()
    ready = fed[fed[labels.KEY].isin(known)]
    if ready.empty:
        md5 = _labels_md5(params, settings)
        return FlushResult(0, len(fed), md5, None)
    keys, values = ready[labels.KEY], ready[labels.VALUE].infer_objects()
    batch = pd.DataFrame({join: _as_join_dtype(keys, rows[join]), column: values})
    if params.labels.time_column:
        batch[params.labels.time_column] = ready[datastore.LABEL_TIME].to_numpy()
    raw = RawBatch(batch.reset_index(drop=True), origin="feedback")
    result = ingest_labels(params, settings, raw, push=push)
    path = str(result.path) if result.path else None
    return FlushResult(len(ready), len(fed) - len(ready), result.data_md5, path)


def _as_join_dtype(keys: pd.Series, column: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(column):
        return keys.astype("int64")
    return keys.astype(str)


def _labels_md5(params: Params, settings: Settings) -> str:
    from driftloop import versioning

    return versioning.recorded_md5(settings.project, settings.path(params.data.labels_dir))
