"""The lifecycle steps, each a plain function called by the CLI, `dvc repro` and the Prefect tasks.

ingest -> validate -> train (fit + evaluate) -> register -> promote; plus rollback.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop import datastore, versioning
from driftloop.config import FeatureParams, Params, Settings
from driftloop.errors import IngestError, RegistryError, TrainingError, ValidationFailed
from driftloop.features import Dataset, make_dataset, split_by_date
from driftloop.promotion import Decision, decide_promotion
from driftloop.registry import ModelRef
from driftloop.sources import SEATTLE, RawBatch, read_source
from driftloop.training import Evaluation, TrainedModel, evaluate, fit_candidate

INGEST_MANIFEST = "reports/ingest.json"
VALIDATION_REPORT = "reports/validation.json"
TRAIN_REPORT = "reports/train.json"
PROMOTION_REPORT = "reports/promotion.json"


@dataclass(frozen=True)
class IngestResult:
    """An accepted batch (or nothing new), with the DVC md5 of all accepted data."""

    origin: str
    rows: int
    data_md5: str
    path: Path | None = None
    first: str | None = None
    last: str | None = None

    @property
    def nothing_new(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class TrainingData:
    """The accepted rows a model is trained on, and their lineage."""

    frame: pd.DataFrame
    data_md5: str
    since: str | None = None

    def until(self, date_column: str) -> str:
        """The last date of the training data."""
        return str(pd.to_datetime(self.frame[date_column]).max().date())


@dataclass(frozen=True)
class PromotionResult:
    """The decision for a candidate, against which champion it was taken, and what was applied."""

    candidate: str
    champion_before: str | None
    decision: Decision
    candidate_eval: Evaluation
    champion_eval: Evaluation | None
    applied: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def batch_id_for(raw: RawBatch) -> str:
    """A readable id for a batch: its file stem or its origin, plus a content hash."""
    stem = raw.path.stem if raw.path is not None else raw.origin.split(":")[-1]
    return f"{stem}-{datastore.content_id(raw.frame) if len(raw.frame.columns) else 'empty'}"


# -- ingest -----------------------------------------------------------------------------------


def read_next_batch(
    params: Params, settings: Settings, source: str | None, until: str | None
) -> RawBatch:
    """The next batch from a source: new rows of the bundled data, or a user's file."""
    raw_dir = settings.path(params.data.raw_dir)
    after = datastore.last_accepted_date(raw_dir)
    stop = dt.date.fromisoformat(until) if until else None
    return read_source(source or params.data.source, params.data, after, stop)


def ingest(
    params: Params, settings: Settings, raw: RawBatch, *, push: bool = True, version: bool = True
) -> IngestResult:
    """Gate a batch with Great Expectations; accept it (immutable file + DVC) or quarantine it.

    Raises ValidationFailed (after quarantining) when the gate fails; nothing is deleted.
    """
    from driftloop.validation import quarantine, validate_batch

    raw_dir = settings.path(params.data.raw_dir)
    with versioning.project_lock(settings.lock_dir, "data"):
        if raw.origin.startswith("vega_datasets") and raw.read_error is None and raw.frame.empty:
            md5 = versioning.recorded_md5(settings.project, raw_dir)
            if md5:
                datastore.write_manifest(raw_dir, settings.path(INGEST_MANIFEST), md5)
            return IngestResult(raw.origin, 0, md5)
        after = datastore.last_accepted_date(raw_dir)
        report = validate_batch(raw.frame, params, after=after, read_error=raw.read_error)
        if not report.success:
            qdir = settings.path(params.data.quarantine_dir)
            folder = quarantine(
                report,
                qdir,
                batch_id_for(raw),
                source_path=raw.path,
                frame=raw.frame if raw.path is None else None,
            )
            versioning.track(settings.project, qdir)
            raise ValidationFailed(f"{raw.origin}: {report.summary()} (kept in {folder})")
        path = datastore.write_batch(raw.frame, raw_dir, params.data.date_column)
        if not version:  # a replay versions in bulk (version_data) before it trains
            return IngestResult(raw.origin, len(raw.frame), "", path)
        md5 = versioning.track(settings.project, raw_dir, push=push)
        datastore.write_manifest(raw_dir, settings.path(INGEST_MANIFEST), md5)
        dates = pd.to_datetime(raw.frame[params.data.date_column])
        return IngestResult(
            raw.origin, len(raw.frame), md5, path, str(dates.min().date()), str(dates.max().date())
        )


def version_data(params: Params, settings: Settings) -> str:
    """`dvc add` (and push) all accepted data if anything is not versioned yet; its md5."""
    raw_dir = settings.path(params.data.raw_dir)
    with versioning.project_lock(settings.lock_dir, "data"):
        md5 = versioning.track(settings.project, raw_dir)
        datastore.write_manifest(raw_dir, settings.path(INGEST_MANIFEST), md5)
    return md5


# -- validate the whole dataset ---------------------------------------------------------------


def validate_dataset(params: Params, settings: Settings) -> dict[str, Any]:
    """Re-check all accepted data with the same suite; write a stable report; fail closed."""
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
    _write_json(settings.path(VALIDATION_REPORT), payload)
    if not report.success:
        raise ValidationFailed(f"{raw_dir}: {report.summary()}")
    return payload


def validation_for(params: Params, settings: Settings, data_md5: str) -> dict[str, Any]:
    """The validation report of exactly this data: reuse the stage's report, else validate now."""
    path = settings.path(VALIDATION_REPORT)
    if path.exists():
        report: dict[str, Any] = json.loads(path.read_text())
        if report.get("data_md5") == data_md5 and report.get("success"):
            return report
    return validate_dataset(params, settings)


# -- train ------------------------------------------------------------------------------------


def training_data(
    params: Params, settings: Settings, *, window_days: int | None = None, until: str | None = None
) -> TrainingData:
    """Accepted rows to train on: all of them, or the most recent `window_days`."""
    raw_dir = settings.path(params.data.raw_dir)
    stop = dt.date.fromisoformat(until) if until else None
    frame = datastore.load_accepted(raw_dir, params, until=stop)
    since = None
    if window_days is not None:
        last = frame[params.data.date_column].max()
        cutoff = last - pd.Timedelta(days=window_days)
        frame = frame[frame[params.data.date_column] > cutoff].reset_index(drop=True)
        since = str(cutoff.date())
    return TrainingData(frame, versioning.recorded_md5(settings.project, raw_dir), since)


def split(params: Params, frame: pd.DataFrame) -> tuple[Dataset, Dataset]:
    """Features + target, split in time: the most recent `holdout_days` are the holdout."""
    return split_by_date(make_dataset(frame, params), params.train.holdout_days)


def train_candidate(
    params: Params, data: TrainingData, *, cv: bool = True
) -> tuple[Any, dict[str, float], int]:
    """Time-series CV and fit on the training part. Returns (estimator, cv metrics, n_train)."""
    fit_part, _ = split(params, data.frame)
    estimator, cv_metrics = fit_candidate(params.train, fit_part, cv=cv)
    return estimator, cv_metrics, len(fit_part)


def evaluate_candidate(params: Params, estimator: Any, data: TrainingData) -> Evaluation:
    """Metrics of a fitted estimator on the holdout (overall and per segment)."""
    _, holdout = split(params, data.frame)
    if len(holdout) == 0:
        raise TrainingError("holdout is empty: lower train.holdout_days or ingest more data")
    return evaluate(estimator, holdout)


def fit(params: Params, data: TrainingData) -> TrainedModel:
    """Train and evaluate (same data + params, same metrics)."""
    estimator, cv, n_train = train_candidate(params, data)
    holdout = evaluate_candidate(params, estimator, data)
    return TrainedModel(estimator, cv, holdout, n_train, list(estimator.feature_names_in_))


def already_trained(params: Params, settings: Settings, data_md5: str) -> str | None:
    """The champion or challenger version already trained on exactly this data and params."""
    from driftloop import registry

    client = registry.connect(settings)
    name = params.train.model_name
    wanted = json.dumps(_model_params(params))
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        ref = registry.get_alias(client, name, alias)
        if (
            ref is not None
            and data_md5
            and ref.tags.get(registry.DATA_TAG) == data_md5
            and ref.tags.get(registry.PARAMS_TAG) == wanted
            and ref.tags.get("driftloop.train_params") == params.train.model_dump_json()
        ):
            return ref.version
    return None


def flat_metrics(trained: TrainedModel) -> dict[str, float]:
    """Holdout, per-segment and CV metrics as flat MLflow metric names."""
    out = {f"holdout_{k}": v for k, v in trained.holdout.metrics.items()}
    for segment, metrics in trained.holdout.segments.items():
        out.update({f"holdout_{segment}_{k}": v for k, v in metrics.items()})
    out.update(trained.cv)
    out["n_train"] = float(trained.n_train)
    out["n_holdout"] = float(trained.holdout.n_rows)
    return {k: v for k, v in out.items() if v == v}  # MLflow rejects NaN only on some stores


def _model_params(params: Params) -> dict[str, str]:
    """What a model needs to be re-scored later: its features and target definition."""
    return {
        "features": params.features.model_dump_json(),
        "target": params.target.model_dump_json(),
        "date_column": params.data.date_column,
    }


def log_and_register(
    params: Params,
    settings: Settings,
    trained: TrainedModel,
    data: TrainingData,
    trigger: str,
    validation: dict[str, Any] | None = None,
) -> ModelRef:
    """Log the run to MLflow (lineage included) and register it as the new `challenger`."""
    from driftloop import registry

    client = registry.connect(settings)
    commit = versioning.git_commit(settings.project)
    lineage = {
        registry.DATA_TAG: data.data_md5,
        registry.COMMIT_TAG: commit,
        "driftloop.trigger": trigger,
        "driftloop.triggered_by": settings.triggered_by,
        "driftloop.validation": "passed"
        if validation is None or validation.get("success")
        else "failed",
    }
    record = registry.RunRecord(
        params={
            **{f"train.{k}": v for k, v in params.train.model_dump().items() if k != "hyperparams"},
            **{f"hp.{k}": v for k, v in params.train.hyperparams.items()},
            "features": params.features.model_dump_json(),
            "train_since": data.since or "all",
            "rows": len(data.frame),
        },
        metrics=flat_metrics(trained),
        tags=lineage,
        artifacts={
            "evaluation.json": trained.holdout.to_dict(),
            "validation.json": validation or {},
            "lineage.json": {**lineage, "params": params.model_dump(mode="json")},
        },
        files=(settings.project / "params.yaml", settings.project / "uv.lock"),
        dataset=data.frame,
        dataset_name=params.data.raw_dir,
        dataset_digest=data.data_md5,
    )
    example = trained_example(params, data)
    run_id, model_uri = registry.log_training_run(
        settings, params.train.experiment, f"train-{trigger}", trained.estimator, example, record
    )
    tags = {
        **lineage,
        "driftloop.run_id": run_id,
        registry.PARAMS_TAG: json.dumps(_model_params(params)),
        "driftloop.train_params": params.train.model_dump_json(),
        "driftloop.train_since": data.since or "all",
        "driftloop.train_until": data.until(params.data.date_column),
    }
    return registry.register(client, params.train.model_name, run_id, model_uri, tags)


def trained_example(params: Params, data: TrainingData) -> pd.DataFrame:
    """A few feature rows, for the model signature and input example."""
    return make_dataset(data.frame.tail(40), params).X.tail(5).reset_index(drop=True)


# -- promote ----------------------------------------------------------------------------------


def params_of(params: Params, ref: Any) -> Params:
    """The params a registered model was trained with (features/target), over the current ones."""
    from driftloop import registry

    raw = ref.tags.get(registry.PARAMS_TAG)
    if not raw:
        return params
    stored = json.loads(raw)
    return params.model_copy(
        update={"features": FeatureParams.model_validate_json(stored["features"])}
    )


def evaluate_on_holdout(
    params: Params, ref: Any, frame: pd.DataFrame, after: str | None = None
) -> Evaluation:
    """Score a registered model on the holdout of `frame` (dates > after), with its own features."""
    from driftloop import registry

    _, holdout = split(params_of(params, ref), frame)
    if after:
        holdout = holdout.subset(holdout.dates > pd.Timestamp(after))
    if len(holdout) == 0:
        return Evaluation({}, {}, 0)
    return evaluate(registry.load_model(ref), holdout)


def comparable_after(champion: Any, candidate: Any) -> str | None:
    """Compare only on days the champion has not trained on (the candidate never saw them)."""

    if champion is None or champion.version == candidate.version:
        return None
    return champion.tags.get("driftloop.train_until") or None


def promote(
    params: Params, settings: Settings, candidate: Any, data: TrainingData, trigger: str
) -> PromotionResult:
    """Decide and apply promotion as a compare-and-set against the champion it was based on."""
    from driftloop import registry

    client = registry.connect(settings)
    name = params.train.model_name
    with versioning.project_lock(settings.lock_dir, f"promote-{name}"):
        champion = registry.get_alias(client, name, registry.CHAMPION)
        after = comparable_after(champion, candidate)
        basis_version = champion.version if champion else None
        cand_eval = evaluate_on_holdout(params, candidate, data.frame, after)
        champ_eval = None
        if champion is not None and champion.version != candidate.version:
            champ_eval = evaluate_on_holdout(params, champion, data.frame, after)
        if champion is not None and champion.version == candidate.version:
            decision = Decision(False, f"version {candidate.version} is already champion")
        elif champ_eval is not None and cand_eval.n_rows < params.promote.min_holdout_rows:
            decision = Decision(
                False,
                f"only {cand_eval.n_rows} holdout rows after v{basis_version}'s training data "
                f"(< promote.min_holdout_rows {params.promote.min_holdout_rows}); not comparable",
            )
        else:
            decision = decide_promotion(cand_eval, champ_eval, params.promote)
        basis = champion.version if champion else None
        applied = False
        if decision.promote:
            now = registry.get_alias(client, name, registry.CHAMPION)
            if (now.version if now else None) != basis:
                decision = Decision(
                    False,
                    f"champion moved to v{now.version if now else None} "
                    f"during the decision (based on v{basis}); not applied",
                )
            else:
                registry.set_alias(client, name, registry.CHAMPION, candidate.version)
                applied = True
        result = PromotionResult(candidate.version, basis, decision, cand_eval, champ_eval, applied)
        _record_decision(params, settings, client, candidate, result, trigger, data)
    return result


def _record_decision(
    params: Params,
    settings: Settings,
    client: Any,
    candidate: Any,
    result: PromotionResult,
    trigger: str,
    data: TrainingData,
) -> None:
    """Tags on the version and one line in the audit log."""
    from driftloop import registry

    verdict = "promoted" if result.applied else "rejected"
    registry.tag_version(
        client,
        candidate.name,
        candidate.version,
        {
            registry.DECISION_TAG: verdict,
            registry.REASON_TAG: result.decision.reason,
            "driftloop.champion_before": str(result.champion_before),
        },
    )
    metric = params.promote.primary_metric
    registry.append_audit(
        settings,
        {
            "event": "promotion",
            "model": candidate.name,
            "version": candidate.version,
            "decision": verdict,
            "reason": result.decision.reason,
            "trigger": trigger,
            "triggered_by": settings.triggered_by,
            "data_md5": data.data_md5,
            "champion_before": result.champion_before,
            "metric": metric,
            "candidate_metrics": result.candidate_eval.metrics,
            "champion_metrics": result.champion_eval.metrics if result.champion_eval else None,
        },
    )
    _write_json(
        settings.path(PROMOTION_REPORT),
        {
            "model": candidate.name,
            "candidate": candidate.version,
            "decision": verdict,
            "reason": result.decision.reason,
            "champion_before": result.champion_before,
        },
    )


def rollback(
    params: Params, settings: Settings, reason: str, to_version: str | None = None
) -> tuple[str | None, str]:
    """Move `champion` back to a previous version (default: the one before it); record why."""
    from driftloop import registry

    client = registry.connect(settings)
    name = params.train.model_name
    with versioning.project_lock(settings.lock_dir, f"promote-{name}"):
        current = registry.get_alias(client, name, registry.CHAMPION)
        target = to_version or previous_champion(
            settings, name, current.version if current else None
        )
        if target is None:
            raise RegistryError(f"{name}: no previous champion to roll back to; pass --to VERSION")
        ref = registry.get_version(client, name, target)
        registry.set_alias(client, name, registry.CHAMPION, ref.version)
        registry.tag_version(client, name, ref.version, {"driftloop.rollback_reason": reason})
        registry.append_audit(
            settings,
            {
                "event": "rollback",
                "model": name,
                "version": ref.version,
                "decision": "rollback",
                "reason": reason,
                "triggered_by": settings.triggered_by,
                "champion_before": current.version if current else None,
                "data_md5": ref.tags.get(registry.DATA_TAG),
            },
        )
    return (current.version if current else None), ref.version


def previous_champion(settings: Settings, name: str, current: str | None) -> str | None:
    """The champion before the current one, from the audit log."""
    from driftloop import registry

    history = [
        e["version"]
        for e in registry.read_audit(settings)
        if e.get("model") == name and (e.get("decision") in {"promoted", "rollback"})
    ]
    for version in reversed(history):
        if version != current:
            return str(version)
    return None


def write_train_report(
    settings: Settings, candidate: Any, trained: TrainedModel, data_md5: str
) -> None:
    """The DVC `train` stage's metrics output."""
    _write_json(
        settings.path(TRAIN_REPORT),
        {
            "model": candidate.name,
            "version": candidate.version,
            "run_id": candidate.run_id,
            "data_md5": data_md5,
            "holdout": trained.holdout.metrics,
            "cv": trained.cv,
            "segments": trained.holdout.segments,
        },
    )


__all__ = [
    "SEATTLE",
    "IngestResult",
    "PromotionResult",
    "TrainingData",
    "fit",
    "ingest",
    "log_and_register",
    "promote",
    "read_next_batch",
    "rollback",
    "training_data",
    "validate_dataset",
]
