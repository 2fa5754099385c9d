"""The training stages, one typed function each, and the one place that sequences them.

load training data -> build features -> train -> evaluate -> register -> promote; plus rollback.
The CLI and `dvc repro` run the sequence with plain calls (`PLAIN`); the Prefect flow runs the
very same sequence with each stage wrapped as a task (`tasks.training.STEPS`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop import datastore, jsonio, versioning
from driftloop.config import Params, Settings
from driftloop.errors import RegistryError, TrainingError
from driftloop.features import Dataset, attach_labels, make_dataset, split_by_time
from driftloop.lineage import Lineage, Verdict
from driftloop.memo import LastBuilt
from driftloop.promotion import Decision, decide_promotion
from driftloop.registry import ModelRef
from driftloop.training import Evaluation, TrainedModel, evaluate, fit_candidate

# -- the data a model is trained on --------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """Accepted rows (labels joined as known at `labels_as_of`) and their lineage."""

    frame: pd.DataFrame
    data_md5: str
    labels_md5: str
    timestamp_column: str
    since: pd.Timestamp | None = None
    labels_as_of: pd.Timestamp | None = None

    @property
    def until(self) -> pd.Timestamp:
        """The last timestamp of the training data."""
        return pd.Timestamp(self.frame[self.timestamp_column].max())


@dataclass(frozen=True)
class Split:
    """Model-ready rows in time order: the training part and the most recent holdout."""

    fit: Dataset
    holdout: Dataset


@dataclass(frozen=True)
class Fitted:
    """A fitted pipeline and its cross-validation metrics."""

    estimator: Any
    cv: dict[str, float]
    n_train: int


def end_of(day: str | dt.date | None) -> pd.Timestamp | None:
    """The last instant of a day (a date `until` includes the whole day)."""
    if day is None:
        return None
    date = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return pd.Timestamp(date) + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")


def load_training_data(
    params: Params,
    settings: Settings,
    window_days: int | None = None,
    until: str | None = None,
) -> TrainingData:
    """Accepted rows up to `until` (all, or the most recent `window_days`), labels as of then."""
    data = params.data
    stop = end_of(until)
    frame = datastore.load_accepted(settings.path(data.raw_dir), params, until=stop)
    as_of = stop if stop is not None else pd.Timestamp.now()
    labels_dir = settings.path(data.labels_dir)
    if params.target.column is not None:
        labels = datastore.load_labels(labels_dir, params, as_of=as_of)
        frame = attach_labels(frame, labels, params)
    since = None
    if window_days is not None and len(frame):
        since = frame[data.timestamp_column].max() - pd.Timedelta(days=window_days)
        frame = frame[frame[data.timestamp_column] > since].reset_index(drop=True)
    return TrainingData(
        frame,
        versioning.recorded_md5(settings.project, settings.path(data.raw_dir)),
        versioning.recorded_md5(settings.project, labels_dir),
        data.timestamp_column,
        since,
        as_of if params.target.column is not None else None,
    )


# The split of the frame just trained on: the promotion gate evaluates the candidate (and a
# champion with the same features) on the same holdout without building the features again.
SPLITS: LastBuilt[pd.DataFrame, Split] = LastBuilt()


def split_of(params: Params, frame: pd.DataFrame) -> Split:
    """Model-ready rows of a frame split in time (rows of the last `holdout_days` are the
    holdout); built once per frame and feature params (`SPLITS`)."""
    key = json.dumps(
        [
            model_params(params),
            params.train.holdout_days,
            params.data.model_dump(mode="json", include={"timestamp_column", "entity_columns"}),
        ],
        sort_keys=True,
    )
    build = partial(_split, params, frame)
    return SPLITS.get(frame, key, build)


def _split(params: Params, frame: pd.DataFrame) -> Split:
    return Split(*split_by_time(make_dataset(frame, params), params.train.holdout_days))


def build_features(params: Params, data: TrainingData) -> Split:
    """Inputs and labels, split in time: rows of the last `holdout_days` are the holdout."""
    return split_of(params, data.frame)


def train(params: Params, split: Split, *, cv: bool = True) -> Fitted:
    """Time-series CV (folds cut on timestamps) and the fit on the whole training part."""
    estimator, cv_metrics = fit_candidate(params.train, params.features, split.fit, cv=cv)
    return Fitted(estimator, cv_metrics, len(split.fit))


def evaluate_fitted(params: Params, fitted: Fitted, split: Split) -> TrainedModel:
    """Holdout metrics overall and per evaluation segment."""
    if len(split.holdout) == 0:
        raise TrainingError("holdout is empty: lower train.holdout_days or ingest more data")
    holdout = evaluate(fitted.estimator, split.holdout, params.evaluation.threshold)
    return TrainedModel(
        fitted.estimator,
        fitted.cv,
        holdout,
        fitted.n_train,
        list(split.fit.X.columns),
        split.fit.X.tail(5).reset_index(drop=True),
    )


# -- register --------------------------------------------------------------------------------------


def model_params(params: Params) -> str:
    """What a model needs to be re-scored later: its feature step and target, as JSON."""
    return json.dumps(
        {
            "features": params.features.model_dump(mode="json"),
            "target": params.target.model_dump(mode="json"),
            "evaluation": params.evaluation.model_dump(mode="json"),
        },
        sort_keys=True,
    )


def params_of(params: Params, ref: ModelRef) -> Params:
    """The params a registered model was trained with (features, target), over the current."""
    raw = ref.lineage.model_params
    if not raw:
        return params
    stored = json.loads(raw)
    merged = params.model_dump(mode="json")
    merged.update({k: stored[k] for k in ("features", "target") if k in stored})
    return Params.model_validate(merged)


def flat_metrics(trained: TrainedModel) -> dict[str, float]:
    """Holdout, per-segment and CV metrics as flat MLflow metric names (finite values only)."""
    out = {f"holdout_{k}": v for k, v in trained.holdout.metrics.items()}
    for segment, metrics in trained.holdout.segments.items():
        out.update({f"holdout_{segment}_{k}": v for k, v in metrics.items() if k != "n"})
    out.update(trained.cv)
    out["n_train"] = float(trained.n_train)
    out["n_holdout"] = float(trained.holdout.n_rows)
    return {k: float(v) for k, v in out.items() if pd.notna(v)}


def register(
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
    lineage = Lineage(
        data_md5=data.data_md5,
        labels_md5=data.labels_md5,
        git_commit=versioning.git_commit(settings.project),
        params_file=_relative(settings.params, settings.project),
        trigger=trigger,
        triggered_by=settings.triggered_by,
        validation="passed" if validation is None or validation.get("success") else "failed",
        model_params=model_params(params),
        train_params=params.train.model_dump_json(),
        train_since=data.since.isoformat() if data.since is not None else "all",
        train_until=data.until.isoformat(),
        labels_as_of=data.labels_as_of.isoformat() if data.labels_as_of is not None else "",
    )
    run_tags = {k: v for k, v in lineage.to_tags().items() if k != Lineage.tag("model_params")}
    record = registry.RunRecord(
        params={
            **{f"train.{k}": v for k, v in params.train.model_dump().items() if k != "hyperparams"},
            **{f"hp.{k}": v for k, v in params.train.hyperparams.items()},
            "features": params.features.model_dump_json(),
            "train_since": lineage.train_since,
            "rows": len(data.frame),
        },
        metrics=flat_metrics(trained),
        tags=run_tags,
        artifacts={
            "evaluation.json": jsonio.to_jsonable(trained.holdout.to_dict()),
            "validation.json": jsonio.to_jsonable(validation or {}),
            "lineage.json": {**lineage.to_tags(), "params": params.model_dump(mode="json")},
        },
        files=(settings.params, settings.project / "uv.lock"),
        dataset=data.frame,
        dataset_name=params.data.raw_dir,
        dataset_digest=data.data_md5,
    )
    if trained.example is None:
        raise TrainingError("the trained model carries no input example")
    run_id, model_uri = registry.log_training_run(
        settings,
        params.train.experiment,
        f"train-{trigger}"[:250],
        trained.estimator,
        trained.example,
        record,
    )
    tags = Lineage(**{**lineage.__dict__, "run_id": run_id}).to_tags()
    return registry.register(client, params.train.model_name, run_id, model_uri, tags)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def already_trained(params: Params, settings: Settings, data_md5: str) -> str | None:
    """The champion or challenger version already trained on exactly this data and params."""
    from driftloop import registry

    if not data_md5:
        return None
    client = registry.connect(settings)
    labels_md5 = versioning.recorded_md5(settings.project, settings.path(params.data.labels_dir))
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        ref = registry.get_alias(client, params.train.model_name, alias)
        if ref is None:
            continue
        seen = ref.lineage
        if (
            seen.data_md5 == data_md5
            and seen.labels_md5 == labels_md5
            and seen.model_params == model_params(params)
            and seen.train_params == params.train.model_dump_json()
        ):
            return ref.version
    return None


# -- promote ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionResult:
    """The decision for a candidate, against which champion it was taken, and what was applied."""

    candidate: str
    champion_before: str | None
    decision: Decision
    candidate_eval: Evaluation
    champion_eval: Evaluation | None
    applied: bool = False
    experiment: str | None = None  # promote.via experiment: the online test it is now in


def evaluate_on_holdout(
    params: Params, ref: ModelRef, frame: pd.DataFrame, after: pd.Timestamp | None = None
) -> Evaluation:
    """Score a registered model on the holdout of `frame` (rows after `after`), own features."""
    from driftloop import registry

    own = params_of(params, ref)
    holdout = split_of(own, frame).holdout
    if after is not None:
        holdout = holdout.subset(holdout.timestamps > after)
    if len(holdout) == 0:
        return Evaluation({}, {}, 0)
    return evaluate(registry.load_model(ref), holdout, params.evaluation.threshold)


def comparable_after(champion: ModelRef | None, candidate: ModelRef) -> pd.Timestamp | None:
    """Compare only on rows after the champion's training data (the candidate never saw them)."""
    if champion is None or champion.version == candidate.version:
        return None
    return champion.lineage.until


def _decide(
    params: Params,
    champion: ModelRef | None,
    candidate: ModelRef,
    cand_eval: Evaluation,
    champ_eval: Evaluation | None,
) -> Decision:
    if champion is not None and champion.version == candidate.version:
        return Decision(False, f"version {candidate.version} is already champion")
    if champ_eval is not None and cand_eval.n_rows < params.promote.min_holdout_rows:
        return Decision(
            False,
            f"only {cand_eval.n_rows} holdout rows after v{champion.version if champion else '-'}"
            f"'s training data (< promote.min_holdout_rows {params.promote.min_holdout_rows}); "
            "not comparable",
        )
    return decide_promotion(cand_eval, champ_eval, params.promote)


def promote_lock(settings: Settings, name: str) -> Any:
    """The one lock under which any move of a model's `champion` alias is decided and applied."""
    return versioning.project_lock(settings.lock_dir, f"promote-{name}")


def set_champion_if_unchanged(
    client: Any, name: str, version: str, basis: str | None
) -> str | None:
    """Compare-and-set: move `champion` to `version` only if it still is `basis` (the version the
    decision was based on). Call under `promote_lock`. Returns None when applied, else why not.
    """
    from driftloop import registry

    now = registry.get_alias(client, name, registry.CHAMPION)
    if (now.version if now else None) != basis:
        return (
            f"champion moved to v{now.version if now else None} "
            f"during the decision (based on v{basis}); not applied"
        )
    registry.set_alias(client, name, registry.CHAMPION, version)
    return None


def promote(
    params: Params, settings: Settings, candidate: ModelRef, data: TrainingData, trigger: str
) -> PromotionResult:
    """Decide and apply promotion as a compare-and-set against the champion it was based on."""
    from driftloop import registry

    client = registry.connect(settings)
    name = params.train.model_name
    with promote_lock(settings, name):
        champion = registry.get_alias(client, name, registry.CHAMPION)
        after = comparable_after(champion, candidate)
        basis = champion.version if champion else None
        cand_eval = evaluate_on_holdout(params, candidate, data.frame, after)
        champ_eval = None
        if champion is not None and champion.version != candidate.version:
            champ_eval = evaluate_on_holdout(params, champion, data.frame, after)
        decision = _decide(params, champion, candidate, cand_eval, champ_eval)
        staged = decision.promote and champion is not None and params.promote.via == "experiment"
        if not staged:
            applied = False
            if decision.promote:
                refused = set_champion_if_unchanged(client, name, candidate.version, basis)
                if refused is not None:
                    decision = Decision(False, refused)
                applied = refused is None
            result = PromotionResult(
                candidate.version, basis, decision, cand_eval, champ_eval, applied
            )
            _record_decision(params, settings, client, candidate, result, trigger, data)
            return result
    # Outside the promotion lock: an experiment's verdict takes its own lock, then this one.
    decision, experiment = stage_challenger(params, settings, candidate, data, decision)
    result = PromotionResult(
        candidate.version, basis, decision, cand_eval, champ_eval, False, experiment
    )
    _record_decision(params, settings, client, candidate, result, trigger, data)
    return result


def stage_challenger(
    params: Params, settings: Settings, candidate: ModelRef, data: TrainingData, gate: Decision
) -> tuple[Decision, str | None]:
    """promote.via experiment: the candidate that passed the gate becomes `challenger` and
    `serve.experiment` starts; the experiment's verdict, on served traffic, may promote it.

    The experiment starts at the candidate's decision time: now, or the end of the day it was
    trained `until` when that is earlier (a replay or a backfill lives in the past).
    """
    from driftloop.experiments import ExperimentError, start_experiment

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if data.labels_as_of is not None:
        now = min(now, data.labels_as_of.floor("us").to_pydatetime())
    try:
        state = start_experiment(params, settings, now, stage=candidate.version)
    except ExperimentError as exc:
        return Decision(False, f"passed the gate but not staged: {exc}"), None
    kind = params.serve.experiment.kind
    return Decision(False, f"{gate.reason}; challenger in {kind} experiment {state.id}"), state.id


def _record_decision(
    params: Params,
    settings: Settings,
    client: Any,
    candidate: ModelRef,
    result: PromotionResult,
    trigger: str,
    data: TrainingData,
) -> None:
    """Tags on the version, one line in the audit log, and the DVC stage's report."""
    from driftloop import registry

    verdict = "promoted" if result.applied else "challenger" if result.experiment else "rejected"
    registry.tag_version(
        client,
        candidate.name,
        candidate.version,
        {
            Verdict.tag("decision"): verdict,
            Verdict.tag("reason"): result.decision.reason,
            Verdict.tag("champion_before"): str(result.champion_before),
        },
    )
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
            "labels_md5": data.labels_md5,
            "champion_before": result.champion_before,
            "metric": params.promote.primary_metric,
            "candidate_metrics": result.candidate_eval.metrics,
            "champion_metrics": result.champion_eval.metrics if result.champion_eval else None,
        },
    )
    jsonio.write_json(
        settings.path(params.reports.promotion),
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
    with promote_lock(settings, name):
        current = registry.get_alias(client, name, registry.CHAMPION)
        target = to_version or previous_champion(
            settings, name, current.version if current else None
        )
        if target is None:
            raise RegistryError(f"{name}: no previous champion to roll back to; pass --to VERSION")
        ref = registry.get_version(client, name, target)
        registry.set_alias(client, name, registry.CHAMPION, ref.version)
        registry.tag_version(client, name, ref.version, {Verdict.tag("rollback_reason"): reason})
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
                "data_md5": ref.lineage.data_md5,
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
    params: Params, settings: Settings, candidate: ModelRef, trained: TrainedModel
) -> None:
    """The DVC `train` stage's metrics output (stable content: no timestamps)."""
    jsonio.write_json(
        settings.path(params.reports.train),
        {
            "model": candidate.name,
            "version": candidate.version,
            "run_id": candidate.run_id,
            "data_md5": candidate.lineage.data_md5,
            "holdout": trained.holdout.metrics,
            "cv": trained.cv,
            "segments": trained.holdout.segments,
        },
    )


# -- the sequence, written once ------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRequest:
    """Why and on what to train: the trigger, the data window and whether to run the gate."""

    trigger: str = "manual"
    window_days: int | None = None
    until: str | None = None
    promote: bool = True
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run produced: the registered version and the gate's verdict."""

    version: str
    run_id: str
    data_md5: str
    holdout: dict[str, float]
    promoted: bool = False
    reason: str = "not evaluated (--no-promote)"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        verdict = (
            "promoted to champion"
            if self.promoted
            else "challenger, tested online"
            if self.extra.get("experiment")
            else "not promoted"
        )
        return f"v{self.version} {verdict}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "version": self.version,
            "run_id": self.run_id,
            "data_md5": self.data_md5,
            "holdout": self.holdout,
            "promoted": self.promoted,
            "reason": self.reason,
            **self.extra,
        }


@dataclass(frozen=True)
class Steps:
    """The stage functions the sequence calls: plain, or wrapped as Prefect tasks."""

    load_training_data: Callable[..., TrainingData]
    build_features: Callable[..., Split]
    train: Callable[..., Fitted]
    evaluate: Callable[..., TrainedModel]
    register: Callable[..., ModelRef]
    promote: Callable[..., PromotionResult]


PLAIN = Steps(load_training_data, build_features, train, evaluate_fitted, register, promote)


def train_and_promote(
    params: Params, settings: Settings, request: TrainRequest, steps: Steps = PLAIN
) -> TrainOutcome:
    """The training sequence: data, features, fit, holdout metrics, register, promotion gate."""
    data = steps.load_training_data(params, settings, request.window_days, request.until)
    split = steps.build_features(params, data)
    fitted = steps.train(params, split)
    trained = steps.evaluate(params, fitted, split)
    candidate = steps.register(params, settings, trained, data, request.trigger, request.validation)
    write_train_report(params, settings, candidate, trained)
    outcome = TrainOutcome(
        candidate.version, candidate.run_id, data.data_md5, trained.holdout.metrics
    )
    if not request.promote:
        return outcome
    result = steps.promote(params, settings, candidate, data, request.trigger)
    return TrainOutcome(
        outcome.version,
        outcome.run_id,
        outcome.data_md5,
        outcome.holdout,
        result.applied,
        result.decision.reason,
        {"experiment": result.experiment} if result.experiment else {},
    )
