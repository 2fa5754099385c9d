"""The ingest stage: read what is new at a source, gate it with Great Expectations, accept it
(an immutable file + DVC) or quarantine it.

What is new: a source is read again as a whole or from where the last ingest stopped (a file's
offset, a folder's untaken drops, a table's watermark); then each row is judged by its key
(`data.key_columns`) against accepted data:

- a key never accepted: a new row, gated and accepted with its batch;
- an exact repeat of an accepted row (same key, same values, the label aside): skipped silently.
  A batch of nothing but repeats is "nothing new" (exit 0, nothing quarantined), so any ingest
  can simply be run again;
- an accepted key with other values: refused, named, and quarantined with its batch;
- a new row older than the newest accepted timestamp minus `data.lateness`: refused likewise
  (no lateness declared: late rows are always accepted).

Data batches and label batches (ground truth that arrives later) take the same road. Every
write happens under the project's "data" lock, so concurrent ingests are serialized.

Label batches: an exact repeat of an accepted label (same id, same label) is dropped, so
re-sending a label file is idempotent; a different label for an accepted id is refused.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop import datastore, jsonio, labels, profiles, versioning
from driftloop.config import Params, Settings, SourceSpec, source_spec
from driftloop.datastore import LABEL_TIME, label_columns
from driftloop.errors import ConfigError, IngestError, ValidationFailed
from driftloop.sources import (
    BUNDLED_LABELS,
    RawBatch,
    Role,
    SourceLedger,
    as_date,
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
    repeats: int = 0  # rows skipped as exact repeats of accepted ones

    @property
    def nothing_new(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class IngestSummary:
    """One ingest of a source: the batches accepted, repeats skipped, rows left for later."""

    origin: str
    accepted: list[IngestResult]
    data_md5: str
    repeats: int = 0
    held_back: int = 0  # rows later than `until`
    notes: list[str] = field(default_factory=list)
    frames: list[pd.DataFrame] = field(default_factory=list, repr=False, compare=False)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.accepted)

    @property
    def nothing_new(self) -> bool:
        return not self.accepted

    @property
    def first(self) -> str | None:
        return min((r.first for r in self.accepted if r.first), default=None)

    @property
    def last(self) -> str | None:
        return max((r.last for r in self.accepted if r.last), default=None)

    @property
    def path(self) -> Path | None:
        return self.accepted[-1].path if self.accepted else None

    @property
    def frame(self) -> pd.DataFrame:
        """The rows accepted (empty when nothing was new)."""
        if not self.frames:
            return pd.DataFrame()
        return pd.concat(self.frames, ignore_index=True) if len(self.frames) > 1 else self.frames[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "rows": self.rows,
            "data_md5": self.data_md5,
            "path": str(self.path) if self.path else None,
            "paths": [str(r.path) for r in self.accepted],
            "first": self.first,
            "last": self.last,
            "repeats": self.repeats,
            "held_back": self.held_back,
            "notes": self.notes,
        }

    def message(self, kind: str = "rows") -> str:
        """One line for the terminal."""
        extra = [f"{self.repeats} repeated rows skipped"] if self.repeats else []
        extra += [f"{self.held_back} rows after `until` left for later"] if self.held_back else []
        extra += self.notes
        tail = f"; {'; '.join(extra)}" if extra else ""
        if self.nothing_new:
            return f"{self.origin}: nothing new to ingest (md5 {self.data_md5 or '-'}){tail}"
        files = f"{len(self.accepted)} batches" if len(self.accepted) > 1 else str(self.path)
        return (
            f"accepted {self.rows} {kind} {self.first}..{self.last} -> {files} "
            f"(md5 {self.data_md5}){tail}"
        )


def batch_id_for(raw: RawBatch) -> str:
    """A readable id for a batch: its file stem or its origin, plus a content hash."""
    stem = raw.path.stem if raw.path is not None else raw.origin.split(":")[-1]
    return f"{stem}-{datastore.content_id(raw.frame) if len(raw.frame.columns) else 'empty'}"


def _result(
    raw: RawBatch, stored: pd.DataFrame, md5: str, path: Path, column: str, repeats: int = 0
) -> IngestResult:
    times = stored[column]
    first, last = str(times.min().date()), str(times.max().date())
    return IngestResult(raw.origin, len(stored), md5, path, first, last, repeats)


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


def _nothing_to_gate(raw: RawBatch) -> bool:
    """An empty read of a bundled example or of what a source added since the last read:
    nothing new. (An empty file is gated: the row count rule refuses it.)"""
    nothing = raw.read_error is None and raw.frame.empty
    return nothing and (raw.bundled or raw.incremental or raw.held_back > 0)


# -- data batches -----------------------------------------------------------------------------


def data_source(params: Params, source: str | SourceSpec | None) -> SourceSpec:
    """The source of a command: a given one (a string as in params), else `data.source`."""
    if source is None:
        return params.data.source
    if isinstance(source, SourceSpec):
        return source
    try:
        return SourceSpec.model_validate(source_spec(source))
    except ValueError as exc:
        raise ConfigError(f"--source {source!r}: {exc}") from None


def start_of_new(params: Params, newest: pd.Timestamp | None) -> pd.Timestamp | None:
    """Where an incremental read starts: the newest accepted time minus the declared lateness."""
    if newest is None or params.data.lateness is None:
        return newest
    return newest - pd.Timedelta(params.data.lateness)


def ingest_source(
    params: Params,
    settings: Settings,
    source: str | SourceSpec | None = None,
    until: str | dt.date | dt.datetime | None = None,
    *,
    push: bool = True,
    version: bool = True,
    now: dt.datetime | None = None,
) -> IngestSummary:
    """Ingest what is new at a source (default `data.source`) up to `until`.

    Each batch is gated on its own: a folder's good drops are accepted even when one of them is
    quarantined. Raises ValidationFailed (exit 4) after the others are stored when any batch
    failed the gate.
    """
    spec = data_source(params, source)
    role = Role.data(params)
    raw_dir = settings.path(params.data.raw_dir)
    if version:
        versioning.require_repo(settings.project)
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        ledger = SourceLedger.of(settings, params.train.model_name, role.name)
        newest = datastore.last_accepted_time(raw_dir, params)
        after = newest if spec.kind == "bundled" else start_of_new(params, newest)
        read = read_source(spec, role, settings, ledger, after=after, until=as_bound(until))
        accepted: list[IngestResult] = []
        frames: list[pd.DataFrame] = []
        failures: list[str] = []
        repeats = held = 0
        for raw in read.batches:
            held += raw.held_back
            try:
                result, frame = _gate_and_store(params, settings, raw, now)
            except ValidationFailed as exc:
                if spec.kind == "folder":  # skipped until its content changes
                    ledger.record(raw.receipt, status="quarantined")
                failures.append(str(exc))
                continue
            ledger.record(raw.receipt)
            repeats += result.repeats
            if not result.nothing_new:
                accepted.append(result)
                frames.append(frame)
        md5 = _version_data(params, settings, bool(accepted) and version, push)
        if failures:
            raise ValidationFailed(_failed_batches(failures, len(accepted)))
        versioned = [IngestResult(**{**r.__dict__, "data_md5": md5}) for r in accepted]
        return IngestSummary(spec.label, versioned, md5, repeats, held, read.notes, frames)


def _failed_batches(failures: list[str], accepted: int, kind: str = "batches") -> str:
    """One line for the batches a source ingest quarantined: the first in full, then a count."""
    line = failures[0]
    if len(failures) > 1:
        line += f"; and {len(failures) - 1} more {kind} quarantined"
    if accepted:
        line += f" ({accepted} other {kind} accepted)"
    return line


def as_bound(until: str | dt.date | dt.datetime | None) -> dt.date | dt.datetime | None:
    """`until` as a time bound (a YYYY-MM-DD string: the end of that day)."""
    if isinstance(until, str):
        return as_date(until)
    return until


def _version_data(params: Params, settings: Settings, changed: bool, push: bool) -> str:
    """`dvc add` the data folder when something was accepted; the md5 it records."""
    raw_dir = settings.path(params.data.raw_dir)
    manifest = settings.path(params.reports.ingest)
    if not changed:
        md5 = versioning.recorded_md5(settings.project, raw_dir)
        if md5 and not manifest.exists():  # e.g. data ingested by a flow, then `dvc repro`
            datastore.write_manifest(raw_dir, manifest, md5)
        return md5
    md5 = versioning.track(settings.project, raw_dir, push=push)
    datastore.write_manifest(raw_dir, manifest, md5)
    return md5


def load_history(params: Params, settings: Settings) -> History:
    """The accepted data's profile that a new batch is checked against (cached summaries)."""
    from driftloop.validation import history_of

    raw_dir = settings.path(params.data.raw_dir)
    return history_of(profiles.accepted_profile(raw_dir, params, settings.state_dir), params)


def drop_repeats(
    frame: pd.DataFrame, params: Params, history: History
) -> tuple[pd.DataFrame, int, profiles.RowHashes | None]:
    """The batch without exact repeats of accepted rows, the number dropped, and the kept rows'
    hashes (taken once here, reused by the gate and the batch summary). A row twice in one
    batch is not a repeat of anything accepted: the key uniqueness rule judges it."""
    if frame.empty or not set(params.data.key_columns) <= set(frame.columns):
        return frame, 0, None
    hashes = profiles.RowHashes.of(frame, profiles.ProfileSpec.of(params))
    repeat, _ = history.classify(frame, params, hashes)
    if not repeat.any():
        return frame, 0, hashes
    kept = hashes.subset(~repeat) if hashes is not None else None
    return frame.loc[~repeat].reset_index(drop=True), int(repeat.sum()), kept


def ingest(
    params: Params,
    settings: Settings,
    raw: RawBatch,
    *,
    push: bool = True,
    version: bool = True,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Gate one batch with Great Expectations; accept its new rows (immutable file + DVC) or
    quarantine it.

    Raises ValidationFailed (after quarantining) when the gate fails; nothing is deleted.
    `now` is the clock for the future-timestamp rule (default: the current time).
    """
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        result, _ = _gate_and_store(params, settings, raw, now)
        if result.nothing_new or not version:  # a replay versions in bulk before it trains
            return result
        md5 = _version_data(params, settings, True, push)
        return IngestResult(**{**result.__dict__, "data_md5": md5})


def _gate_and_store(
    params: Params, settings: Settings, raw: RawBatch, now: dt.datetime | None
) -> tuple[IngestResult, pd.DataFrame]:
    """Under the data lock: skip repeats, gate the rest, write the new rows (not versioned).

    The gate's verdict answers for the whole-dataset suite too (`validation.without_history`):
    it is recorded for the new file, so `validate_dataset` does not run it again.
    """
    from driftloop.validation import validate_batch, without_history

    raw_dir = settings.path(params.data.raw_dir)
    if _nothing_to_gate(raw):
        return _nothing_new(params, settings, raw), raw.frame
    history = load_history(params, settings)
    frame, repeats, hashes = drop_repeats(raw.frame, params, history)
    if raw.read_error is None and frame.empty and repeats:
        return _nothing_new(params, settings, raw, repeats), frame
    report = validate_batch(
        frame, params, history=history, now=now, read_error=raw.read_error, hashes=hashes
    )
    if not report.success:
        _reject(params, settings, raw, report)
    column = params.data.timestamp_column
    path = datastore.write_batch(frame, raw_dir, column)
    stored = datastore.read_batch(path)
    profiles.remember(path, stored, params, settings.state_dir, hashes)  # rows in stored order
    verdict = without_history(report, params)
    if verdict is not None:
        validated = ValidatedBatches(settings.state_dir, raw_dir, suite_fingerprint(params))
        validated.record(path, verdict.to_dict())
    return _result(raw, stored, "", path, column, repeats), stored


def _nothing_new(
    params: Params, settings: Settings, raw: RawBatch, repeats: int = 0
) -> IngestResult:
    """Nothing new at the source: accept nothing, report the recorded md5."""
    raw_dir = settings.path(params.data.raw_dir)
    md5 = versioning.recorded_md5(settings.project, raw_dir)
    return IngestResult(raw.origin, 0, md5, repeats=repeats)


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

    Batch files are immutable, so each is validated once per suite (its verdict is cached in
    the state dir, keyed by the suite's fingerprint): a batch gated by `ingest` brings its
    verdict along (read off the gate's report), any other costs one batch's validation, never
    all data's. What spans batches (the row count, keys unique across batches) is checked
    on the merged batch summaries. Writes a stable report (a DVC output) and fails closed with
    ValidationFailed.
    """
    raw_dir = settings.path(params.data.raw_dir)
    if not versioning.is_in_sync(settings.project, raw_dir):
        raise IngestError(
            f"{raw_dir}: differs from {raw_dir.name}.dvc (changed outside `driftloop ingest`)"
        )
    files = datastore.batch_files(raw_dir)
    if not files:
        raise IngestError(f"{raw_dir}: no accepted data yet; run `driftloop ingest` first")
    verdicts = ValidatedBatches(settings.state_dir, raw_dir, suite_fingerprint(params))
    reports = {b.path.name: verdicts.report_of(b.path, params) for b in files}
    profile = profiles.accepted_profile(raw_dir, params, settings.state_dir)
    payload = {
        "data_md5": versioning.recorded_md5(settings.project, raw_dir),
        "rows": profile.rows,
        "batches": len(files),
        **dataset_report(reports, profile.rows, _doubled_keys(params, raw_dir, profile), params),
    }
    jsonio.write_json(settings.path(params.reports.validation), payload)
    if not payload["success"]:
        raise ValidationFailed(f"{raw_dir}: {payload['summary']}")
    return payload


def suite_fingerprint(params: Params) -> str:
    """What the whole-dataset suite depends on: the data contract and the validation bounds."""
    import hashlib

    contract = params.data.model_dump(
        mode="json",
        include={"timestamp_column", "id_column", "entity_columns", "frequency", "columns"},
    )
    text = json.dumps([2, contract, params.validation.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ValidatedBatches:
    """Each batch file's verdict under one suite, cached beside the project's state: one small
    JSON file per batch, so recording a new batch's verdict costs the same after 10 batches or
    after 200 (verdicts kept in one file by an earlier version are still read)."""

    def __init__(self, state_dir: Path, raw_dir: Path, fingerprint: str) -> None:
        self.folder = (
            state_dir / "validated" / f"{profiles.folder_tag(state_dir, raw_dir)}-{fingerprint}"
        )
        self._legacy_path = self.folder.with_name(f"{self.folder.name}.json")
        self._legacy: dict[str, Any] | None = None

    def report_of(self, path: Path, params: Params) -> dict[str, Any]:
        """The batch's report: cached, or validated now (without the rules against history)."""
        from driftloop.validation import validate_batch

        report = self.known(path)
        if report is None:
            report = validate_batch(datastore.read_batch(path), params).to_dict()
            self.record(path, report)
        return report

    def known(self, path: Path) -> dict[str, Any] | None:
        """The batch's recorded verdict, or None when it was never validated under this suite."""
        own = self.folder / f"{path.name}.json"
        if own.exists():
            report: dict[str, Any] = json.loads(own.read_text())
            return report
        if self._legacy is None:
            legacy = self._legacy_path
            self._legacy = json.loads(legacy.read_text()) if legacy.exists() else {}
        return self._legacy.get(path.name)

    def record(self, path: Path, report: dict[str, Any]) -> None:
        """Keep a batch's verdict under this suite (known when it was gated)."""
        jsonio.write_json(self.folder / f"{path.name}.json", report, indent=0)


def _doubled_keys(params: Params, raw_dir: Path, profile: Any) -> list[str]:
    """Keys stored in more than one row across batches (only data written outside driftloop);
    the accepted rows are read only when there are any."""
    keys = profile.keys
    if len(keys) < 2 or not (keys[1:] == keys[:-1]).any():
        return []
    frame = datastore.load_accepted(raw_dir, params)
    columns = params.data.key_columns
    doubled = frame[frame.duplicated(subset=columns, keep=False)]
    return sorted({", ".join(map(str, row)) for row in doubled[columns].itertuples(index=False)})


def dataset_report(
    reports: dict[str, dict[str, Any]], rows: int, doubled: list[str], params: Params
) -> dict[str, Any]:
    """The batches' reports as one: an expectation passes when it passed on every batch (the
    first failing batch is named), plus the row count and key uniqueness of the whole."""
    from driftloop.validation import SUITE_NAME

    merged: dict[tuple[str, str | None], dict[str, Any]] = {}
    for name, report in reports.items():
        for outcome in report["outcomes"]:
            label = (outcome["expectation"], outcome["column"])
            entry = merged.setdefault(
                label, {**outcome, "success": True, "observed": None, "unexpected_percent": None}
            )
            if not outcome["success"] and entry["success"]:
                entry.update({k: outcome[k] for k in ("success", "observed", "unexpected_percent")})
                entry["batch"] = name
    bounds = params.validation
    for label, entry in merged.items():
        if label[0] == "expect_table_row_count_to_be_between":
            entry.update(success=entry["success"] and bounds.min_rows <= rows, observed=rows)
        if label[0].endswith("to_be_unique") and doubled:
            entry.update(success=False, observed=doubled[:5], batch="across batches")
    outcomes = list(merged.values())
    failed = [o for o in outcomes if not o["success"]]
    causes = ", ".join(
        f"{o['expectation']}({o['column']}) in {o.get('batch', 'the data')}" for o in failed
    )
    summary = (
        f"{len(failed)} of {len(outcomes)} expectations failed: {causes}"
        if failed
        else f"all {len(outcomes)} expectations passed on {len(reports)} batches"
    )
    return {
        "suite": SUITE_NAME,
        "success": not failed,
        "evaluated": len(outcomes),
        "failed": len(failed),
        "read_error": None,
        "outcomes": outcomes,
        "summary": summary,
    }


def validation_for(params: Params, settings: Settings, data_md5: str) -> dict[str, Any]:
    """The validation report of exactly this data: reuse the stage's report, else validate now."""
    path = settings.path(params.reports.validation)
    if path.exists():
        report: dict[str, Any] = json.loads(path.read_text())
        if report.get("data_md5") == data_md5 and report.get("success"):
            return report
    return validate_dataset(params, settings)


# -- label batches ----------------------------------------------------------------------------


def label_spec(
    params: Params, source: str | SourceSpec | None = None, labels: str | None = None
) -> SourceSpec | None:
    """Where a run's label batches come from: a given file, `labels.source`, or the bundled
    example's own labels. None when there is nothing to ingest (a forecast target derives its
    labels; a source whose rows carry their labels has none apart)."""
    if params.target.column is None:
        return None
    if labels is not None:
        return SourceSpec(kind="file", path=labels)
    if params.labels.source is not None:
        return params.labels.source
    spec = data_source(params, source)
    if spec.kind == "bundled" and spec.name in BUNDLED_LABELS:
        return spec
    return None


def ingest_label_source(
    params: Params,
    settings: Settings,
    source: SourceSpec | None,
    until: str | dt.date | dt.datetime | None = None,
    *,
    push: bool = True,
    version: bool = True,
    now: dt.datetime | None = None,
) -> IngestSummary:
    """Ingest the labels known by `until` (label time) that are new at a label source."""
    label_columns(params)  # a forecast target has no label batches: ConfigError
    spec = source or label_spec(params)
    if spec is None:
        raise ConfigError(
            "labels.source: not set; give a label file (`ingest --labels FILE`) or declare "
            "labels.source"
        )
    role = Role.labels(params)
    labels_dir = settings.path(params.data.labels_dir)
    if version:
        versioning.require_repo(settings.project)
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        ledger = SourceLedger.of(settings, params.train.model_name, role.name)
        known = labels.accepted(labels_dir, params)
        newest = known[LABEL_TIME].max() if len(known) else None
        after = newest if spec.kind == "bundled" else start_of_new(params, newest)
        read = read_source(spec, role, settings, ledger, after=after, until=as_bound(until))
        accepted: list[IngestResult] = []
        failures: list[str] = []
        repeats = held = 0
        for raw in read.batches:
            held += raw.held_back
            try:
                result = _gate_and_store_labels(params, settings, raw, now)
            except ValidationFailed as exc:
                if spec.kind == "folder":
                    ledger.record(raw.receipt, status="quarantined")
                failures.append(str(exc))
                continue
            ledger.record(raw.receipt)
            repeats += result.repeats
            if not result.nothing_new:
                accepted.append(result)
        md5 = versioning.recorded_md5(settings.project, labels_dir)
        if accepted and version:
            md5 = versioning.track(settings.project, labels_dir, push=push)
        if failures:
            raise ValidationFailed(_failed_batches(failures, len(accepted), "label batches"))
        versioned = [IngestResult(**{**r.__dict__, "data_md5": md5}) for r in accepted]
        return IngestSummary(f"{spec.label} (labels)", versioned, md5, repeats, held, read.notes)


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
    """Gate one label batch; store its new labels (immutable file + DVC) or quarantine it.

    With `version=False` (a replay) the labels folder is versioned later, in bulk.

    Only for an explicit `target.column` (ConfigError otherwise). Labels must join accepted rows
    and agree with accepted labels; exact repeats are dropped (re-sending a file is a no-op).
    """
    label_columns(params)
    labels_dir = settings.path(params.data.labels_dir)
    with versioning.project_lock(settings.lock_dir, DATA_LOCK):
        result = _gate_and_store_labels(params, settings, raw, now)
        if result.nothing_new or not version:
            return result
        md5 = versioning.track(settings.project, labels_dir, push=push)
        return IngestResult(**{**result.__dict__, "data_md5": md5})


def _gate_and_store_labels(
    params: Params, settings: Settings, raw: RawBatch, now: dt.datetime | None
) -> IngestResult:
    """Under the data lock: gate a label batch and write its new labels (not versioned)."""
    from driftloop.validation import build_label_history, validate_labels

    labels_dir = settings.path(params.data.labels_dir)
    recorded = versioning.recorded_md5(settings.project, labels_dir)
    if _nothing_to_gate(raw):
        return IngestResult(raw.origin, 0, recorded)
    clock = pd.Timestamp(now if now is not None else dt.datetime.now()).floor("s")
    accepted = _accepted_keys(params, settings)
    history = build_label_history(accepted, labels.accepted(labels_dir, params), params)
    report = validate_labels(raw.frame, params, history=history, now=now, read_error=raw.read_error)
    if not report.success:
        _reject(params, settings, raw, report)
    rows = label_rows(raw.frame, params, history.labels, clock)
    repeats = len(raw.frame) - len(rows)
    if rows.empty:  # every label was already accepted
        return IngestResult(raw.origin, 0, recorded, repeats=repeats)
    path = datastore.write_batch(rows, labels_dir, LABEL_TIME)
    return _result(raw, datastore.read_batch(path), "", path, LABEL_TIME, repeats)


def _accepted_keys(params: Params, settings: Settings) -> pd.DataFrame | None:
    """The join column of all accepted rows (what label batches may refer to)."""
    raw_dir = settings.path(params.data.raw_dir)
    if not datastore.batch_files(raw_dir):
        return None
    join, _ = label_columns(params)
    return datastore.load_accepted(raw_dir, params)[[join]]
