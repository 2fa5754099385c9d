"""The ingest stage: read a batch, gate it with Great Expectations, accept (DVC) or quarantine it.

Data batches and label batches (ground truth that arrives later) take the same road:
read -> validate against accepted data -> write an immutable file + `dvc add` (+ push), or keep
the rejected batch in quarantine and raise `ValidationFailed` (exit 4). Every write happens under
the project's "data" lock, so concurrent ingests are serialized; a batch older than accepted data
is accepted when its keys are new.

Label batches: an exact repeat of an accepted label (same id, same label) is dropped, so
re-sending a label file is idempotent; a different label for an accepted id is refused.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop import datastore, jsonio, versioning
from driftloop.config import Params, Settings
from driftloop.datastore import LABEL_TIME, label_columns
from driftloop.errors import IngestError, ValidationFailed
from driftloop.sources import (
    BUNDLED_LABELS,
    RawBatch,
    as_date,
    read_label_source,
    read_source,
)
from driftloop.validation import History, ValidationReport

DATA_LOCK = "data"


@dataclass(frozen=True)
class IngestResult:
    """An accepted batch (or nothing new), with the DVC md5 of all accepted data (or labels)."""

    origin: str
    rows: int
    data_md5: str
    path: Path | None = None
    first: str | None = None
    last: str | None = None

    @property
    def nothing_new(self) -> bool:
        return self.path is None


def batch_id_for(raw: RawBatch) -> str:
    """A readable id for a batch: its file stem or its origin, plus a content hash."""
    stem = raw.path.stem if raw.path is not None else raw.origin.split(":")[-1]
    return f"{stem}-{datastore.content_id(raw.frame) if len(raw.frame.columns) else 'empty'}"


def _result(raw: RawBatch, stored: pd.DataFrame, md5: str, path: Path, column: str) -> IngestResult:
    times = stored[column]
    first, last = str(times.min().date()), str(times.max().date())
    return IngestResult(raw.origin, len(stored), md5, path, first, last)


def _reject(params: Params, settings: Settings, raw: RawBatch, report: ValidationReport) -> None:
    """Quarantine a rejected batch (bytes, report, Data Docs), version it, raise."""
    from driftloop.validation import quarantine

    qdir = settings.path(params.data.quarantine_dir)
    folder = quarantine(
        report,
        qdir,
        batch_id_for(raw),
        source_path=raw.path,
        frame=raw.frame if raw.path is None else None,
        origin=raw.origin,
    )
    versioning.track(settings.project, qdir, push=False)
    raise ValidationFailed(f"{raw.origin}: {report.summary()} (kept in {folder})")


# -- data batches -----------------------------------------------------------------------------


def read_next_batch(
    params: Params, settings: Settings, source: str | None, until: str | None
) -> RawBatch:
    """The next batch: a bundled source's rows after the newest accepted timestamp, or a file."""
    raw_dir = settings.path(params.data.raw_dir)
    after = datastore.last_accepted_time(raw_dir, params)
    return read_source(source or params.data.source, params.data, after, as_date(until))


def accepted_or_none(raw_dir: Path, params: Params) -> pd.DataFrame | None:
    """All accepted rows, or None when nothing is accepted yet."""
    if not datastore.batch_files(raw_dir):
        return None
    return datastore.load_accepted(raw_dir, params)


def load_history(params: Params, settings: Settings) -> History:
    """The accepted data's profile that a new batch is checked against."""
    from driftloop.validation import build_history

    accepted = accepted_or_none(settings.path(params.data.raw_dir), params)
    return build_history(accepted, params)


def ingest(
    params: Params,
    settings: Settings,
    raw: RawBatch,
    *,
    push: bool = True,
    version: bool = True,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Gate a batch with Great Expectations; accept it (immutable file + DVC) or quarantine it.

    Raises ValidationFailed (after quarantining) when the gate fails; nothing is deleted.
    `now` is the clock for the future-timestamp rule (default: the current time).
    """
    from driftloop.validation import validate_batch

    raw_dir = settings.path(params.data.raw_dir)
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        if raw.bundled and raw.read_error is None and raw.frame.empty:
            return _nothing_new(params, settings, raw)
        history = load_history(params, settings)
        report = validate_batch(
            raw.frame, params, history=history, now=now, read_error=raw.read_error
        )
        if not report.success:
            _reject(params, settings, raw, report)
        column = params.data.timestamp_column
        path = datastore.write_batch(raw.frame, raw_dir, column)
        stored = datastore.read_batch(path)
        if not version:  # a replay versions in bulk (version_data) before it trains
            return _result(raw, stored, "", path, column)
        md5 = versioning.track(settings.project, raw_dir, push=push)
        datastore.write_manifest(raw_dir, settings.path(params.reports.ingest), md5)
        return _result(raw, stored, md5, path, column)


def _nothing_new(params: Params, settings: Settings, raw: RawBatch) -> IngestResult:
    """A bundled source with no new rows: refresh the manifest, accept nothing."""
    raw_dir = settings.path(params.data.raw_dir)
    md5 = versioning.recorded_md5(settings.project, raw_dir)
    if md5:
        datastore.write_manifest(raw_dir, settings.path(params.reports.ingest), md5)
    return IngestResult(raw.origin, 0, md5)


def version_data(params: Params, settings: Settings) -> str:
    """`dvc add` (and push) all accepted data and labels not versioned yet; the data's md5."""
    raw_dir = settings.path(params.data.raw_dir)
    labels_dir = settings.path(params.data.labels_dir)
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        md5 = versioning.track(settings.project, raw_dir)
        if labels_dir.is_dir() and any(labels_dir.iterdir()):
            versioning.track(settings.project, labels_dir)
        datastore.write_manifest(raw_dir, settings.path(params.reports.ingest), md5)
    return md5


# -- the whole dataset ------------------------------------------------------------------------


def validate_dataset(params: Params, settings: Settings) -> dict[str, Any]:
    """Re-check all accepted data with the batch suite minus the rules against history.

    Writes a stable report (a DVC output) and fails closed with ValidationFailed.
    """
    from driftloop.validation import validate_batch

    raw_dir = settings.path(params.data.raw_dir)
    if not versioning.is_in_sync(settings.project, raw_dir):
        raise IngestError(
            f"{raw_dir}: differs from {raw_dir.name}.dvc (changed outside `driftloop ingest`)"
        )
    frame = datastore.load_accepted(raw_dir, params)
    report = validate_batch(frame, params)
    payload = {
        "data_md5": versioning.recorded_md5(settings.project, raw_dir),
        "rows": len(frame),
        **report.to_dict(),
    }
    jsonio.write_json(settings.path(params.reports.validation), payload)
    if not report.success:
        raise ValidationFailed(f"{raw_dir}: {report.summary()}")
    return payload


def validation_for(params: Params, settings: Settings, data_md5: str) -> dict[str, Any]:
    """The validation report of exactly this data: reuse the stage's report, else validate now."""
    path = settings.path(params.reports.validation)
    if path.exists():
        report: dict[str, Any] = json.loads(path.read_text())
        if report.get("data_md5") == data_md5 and report.get("success"):
            return report
    return validate_dataset(params, settings)


# -- label batches ----------------------------------------------------------------------------


def label_source_for(params: Params, source: str | None, labels: str | None) -> str | None:
    """Where a run's label batch comes from: a given file, or a bundled source's own labels.

    None when there is nothing to ingest: a forecast target derives its labels, and a data file
    that carries the label column has its labels in its rows already.
    """
    if params.target.column is None:
        return None
    if labels is not None:
        return labels
    chosen = source or params.data.source
    return chosen if chosen in BUNDLED_LABELS else None


def read_next_labels(
    params: Params, settings: Settings, source: str | None, until: str | None
) -> RawBatch:
    """The next label batch: a bundled source's labels after the newest accepted, or a file."""
    label_columns(params)  # a forecast target has no label batches: ConfigError
    labels = datastore.load_labels(settings.path(params.data.labels_dir), params)
    after = labels[LABEL_TIME].max() if len(labels) else None
    return read_label_source(source or params.data.source, params, after, as_date(until))


def label_rows(
    frame: pd.DataFrame, params: Params, accepted: pd.Series, ingested_at: pd.Timestamp
) -> pd.DataFrame:
    """The labels to store: [join, label, label_time], without exact repeats of accepted ones.

    Args:
        frame: a label batch that passed the gate.
        params: the join column, target.column and labels.time_column.
        accepted: the accepted label per join value (`LabelHistory.labels`).
        ingested_at: the label time when the batch has no time column.
    """
    join, label = label_columns(params)
    time_column = params.labels.time_column
    times = frame[time_column] if time_column else pd.Series(ingested_at, index=frame.index)
    rows = pd.DataFrame({join: frame[join], label: frame[label], LABEL_TIME: times})
    rows = rows.sort_values(LABEL_TIME, kind="stable").drop_duplicates(subset=[join, label])
    repeat = rows[join].map(accepted).astype(object) == rows[label].astype(object)
    return rows.loc[~repeat.to_numpy()].reset_index(drop=True)


def ingest_labels(
    params: Params,
    settings: Settings,
    raw: RawBatch,
    *,
    push: bool = True,
    version: bool = True,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Gate a label batch; store its new labels (immutable file + DVC) or quarantine it.

    With `version=False` (a replay) the labels folder is versioned later, in bulk.

    Only for an explicit `target.column` (ConfigError otherwise). Labels must join accepted rows
    and agree with accepted labels; exact repeats are dropped (re-sending a file is a no-op).
    """
    from driftloop.validation import build_label_history, validate_labels

    label_columns(params)
    labels_dir = settings.path(params.data.labels_dir)
    clock = pd.Timestamp(now if now is not None else dt.datetime.now()).floor("s")
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        if raw.bundled and raw.read_error is None and raw.frame.empty:
            md5 = versioning.recorded_md5(settings.project, labels_dir)
            return IngestResult(raw.origin, 0, md5)
        accepted = accepted_or_none(settings.path(params.data.raw_dir), params)
        history = build_label_history(accepted, datastore.load_labels(labels_dir, params), params)
        report = validate_labels(
            raw.frame, params, history=history, now=now, read_error=raw.read_error
        )
        if not report.success:
            _reject(params, settings, raw, report)
        rows = label_rows(raw.frame, params, history.labels, clock)
        return _store_labels(params, settings, raw, rows, push, version)


def _store_labels(
    params: Params,
    settings: Settings,
    raw: RawBatch,
    rows: pd.DataFrame,
    push: bool,
    version: bool = True,
) -> IngestResult:
    """Write new labels as an immutable batch and version the labels folder."""
    labels_dir = settings.path(params.data.labels_dir)
    if rows.empty:  # every label was already accepted
        return IngestResult(raw.origin, 0, versioning.recorded_md5(settings.project, labels_dir))
    path = datastore.write_batch(rows, labels_dir, LABEL_TIME)
    if not version:
        return _result(raw, datastore.read_batch(path), "", path, LABEL_TIME)
    md5 = versioning.track(settings.project, labels_dir, push=push)
    return _result(raw, datastore.read_batch(path), md5, path, LABEL_TIME)
