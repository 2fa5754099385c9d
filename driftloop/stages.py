"""The training stages, one typed function each, and the one place that sequences them.

load training data -> build features -> train -> evaluate -> register -> promote; plus rollback.
The CLI and `dvc repro` run the sequence with plain calls (`PLAIN`); the Prefect flow runs the
very same sequence with each stage wrapped as a task (`tasks.training.STEPS`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop import datastore, jsonio, labels, versioning, windows
from driftloop.config import Candidate, Params, Settings
from driftloop.errors import TrainingError
from driftloop.features import Dataset, make_dataset, split_by_time
from driftloop.ledger import Promotion
from driftloop.lineage import Lineage, Verdict
from driftloop.memo import LastBuilt
from driftloop.promotion import Decision, Paired, decide_promotion
from driftloop.registry import ModelRef
from driftloop.training import (
    Evaluation,
    Selection,
    TrainedModel,
    evaluate,
    evaluate_predictions,
    fit_candidate,
    predict_proba,
    threshold_of,
)
from driftloop.windows import Window

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
    """A fitted model, its cross-validation metrics and what model selection chose."""

    estimator: Any
    cv: dict[str, float]
    n_train: int
    selection: Selection | None = None


def end_of(day: str | dt.date | None) -> pd.Timestamp | None:
    """The last instant of a day (a date `until` includes the whole day)."""
    if day is None:
        return None
    date = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return pd.Timestamp(date) + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")


def load_training_data(
    params: Params,
    settings: Settings,
    window: int | Window | None = None,
    until: str | None = None,
) -> TrainingData:
    """Accepted rows up to `until` in the retrain `window` (a number: the most recent N days;
    None: all rows), labels as of then."""
    data = params.data
    stop = end_of(until)
    frame = datastore.load_accepted(settings.path(data.raw_dir), params, until=stop)
    as_of = stop if stop is not None else pd.Timestamp.now()
    labels_dir = settings.path(data.labels_dir)
    if params.target.column is not None:
        known = labels.known_labels(params, settings, as_of, feedback=False)
        frame = labels.attach(frame, known, params, as_of)
    since = None
    policy = windows.as_window(window)
    if policy is not None and len(frame):
        times = frame[data.timestamp_column]
        keep = windows.select(times, times.max(), policy)
        since = windows.since(times, times.max(), policy, keep)
        frame = frame.loc[keep].reset_index(drop=True)
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
    """Model selection by time-series CV (folds cut on timestamps), calibration and decision
    threshold, and the chosen candidate's fit on the whole training part."""
    model, selection = fit_candidate(
        params.train,
        params.features,
        split.fit,
        cv=cv,
        fixed_threshold=params.evaluation.threshold,
    )
    return Fitted(model, selection.metrics(), len(split.fit), selection)


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
        fitted.selection,
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
    refit_of: ModelRef | None = None,
) -> ModelRef:
    """Log the run to MLflow (lineage included) and register it as the new `challenger`.

    `refit_of`: this model is that gated version refitted on its whole window; the run records
    it, and its holdout metrics are the gated version's (this model has seen those rows).
    """
    from driftloop import registry

    client = registry.connect(settings)
    passed = validation is None or validation.get("success")
    lineage = Lineage(
        data_md5=data.data_md5,
        labels_md5=data.labels_md5,
        git_commit=versioning.git_commit(settings.project),
        params_file=_relative(settings.params, settings.project),
        trigger=trigger,
        triggered_by=settings.triggered_by,
        validation=refit_of.lineage.validation if refit_of else "passed" if passed else "failed",
        model_params=model_params(params),
        train_params=params.train.model_dump_json(),
        train_since=data.since.isoformat() if data.since is not None else "all",
        train_until=data.until.isoformat(),
        labels_as_of=data.labels_as_of.isoformat() if data.labels_as_of is not None else "",
        refit_of=refit_of.version if refit_of else "",
    )
    run_tags = {k: v for k, v in lineage.to_tags().items() if k != Lineage.tag("model_params")}
    record = registry.RunRecord(
        params={
            **run_params(params, trained),
            "features": params.features.model_dump_json(),
            "train_since": lineage.train_since,
            "rows": len(data.frame),
            **(
                {"refit_of": refit_of.version, "holdout_metrics_of": refit_of.version}
                if refit_of
                else {}
            ),
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
        f"train-{trigger}{f'-refit-v{refit_of.version}' if refit_of else ''}"[:250],
        trained.estimator,
        trained.example,
        record,
    )
    tags = Lineage(**{**lineage.__dict__, "run_id": run_id}).to_tags()
    return registry.register(client, params.train.model_name, run_id, model_uri, tags)


def run_params(params: Params, trained: TrainedModel) -> dict[str, Any]:
    """The training params as run params, with the chosen candidate's hyperparameters (`hp.*`)
    and what model selection chose."""
    train = params.train
    chosen = trained.selection.chosen if trained.selection else next(iter(train.family()))
    family = train.family()
    out: dict[str, Any] = {
        f"train.{k}": v
        for k, v in train.model_dump(mode="json").items()
        if k not in ("hyperparams", "candidates")
    }
    out["train.candidates"] = json.dumps(
        {n: c.model_dump(mode="json") for n, c in family.items()}, sort_keys=True
    )
    picked = family.get(chosen, Candidate(model=train.model, hyperparams=train.hyperparams))
    out["train.model"] = picked.model
    out.update({f"hp.{k}": v for k, v in picked.hyperparams.items()})
    if trained.selection is not None:
        out.update(trained.selection.params())
    return out


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
    refit: str | None = None  # the version refitted on the whole window that became champion


@dataclass(frozen=True)
class HoldoutScores:
    """One model's probabilities on the comparable holdout rows, and their metrics."""

    evaluation: Evaluation
    data: Dataset
    proba: np.ndarray
    threshold: float


def score_on_holdout(
    params: Params, ref: ModelRef, frame: pd.DataFrame, after: pd.Timestamp | None = None
) -> HoldoutScores:
    """Score a registered model on the holdout of `frame` (rows after `after`), own features."""
    from driftloop import registry

    own = params_of(params, ref)
    holdout = split_of(own, frame).holdout
    if after is not None:
        holdout = holdout.subset(holdout.timestamps > after)
    if len(holdout) == 0:
        return HoldoutScores(Evaluation({}, {}, 0), holdout, np.zeros(0), 0.5)
    model = registry.load_model(ref)
    proba = predict_proba(model, holdout.X)
    cut = threshold_of(model, params.evaluation.threshold)
    y = holdout.y.to_numpy()
    return HoldoutScores(evaluate_predictions(y, proba, holdout.segments, cut), holdout, proba, cut)


def evaluate_on_holdout(
    params: Params, ref: ModelRef, frame: pd.DataFrame, after: pd.Timestamp | None = None
) -> Evaluation:
    """Score a registered model on the holdout of `frame` (rows after `after`), own features."""
    return score_on_holdout(params, ref, frame, after).evaluation


def paired_gain(
    params: Params, cand: HoldoutScores, champ: HoldoutScores, seed: int = 0
) -> Paired | None:
    """The candidate's gain over the champion on the same holdout rows, with its interval,
    overall and per segment (None: the two were not scored on the same rows)."""
    a, b = cand.data, champ.data
    if (
        len(a) == 0
        or len(a) != len(b)
        or not (a.timestamps.equals(b.timestamps) and a.y.equals(b.y))
    ):
        return None
    from driftloop.performance import paired_interval  # scipy: only where a gate compares

    promote = params.promote
    y = a.y.to_numpy().astype(int)
    whole = np.ones(len(y), dtype=bool)
    segments = {
        f"{column}/{value}": mask
        for column in a.segments.columns
        for value in sorted(set(a.segments[column]))
        if (mask := (a.segments[column] == value).to_numpy()).sum() >= promote.min_segment_rows
    }

    def on(rows: np.ndarray) -> Paired:
        gain, low, high, method = paired_interval(
            promote.primary_metric,
            y[rows],
            (cand.proba[rows], cand.threshold),
            (champ.proba[rows], champ.threshold),
            promote.confidence,
            seed,
        )
        return Paired(gain, low, high, int(rows.sum()), method, promote.confidence)

    overall = on(whole)
    return dataclasses.replace(overall, segments={k: on(m) for k, m in segments.items()})


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
    paired: Paired | None = None,
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
    return decide_promotion(cand_eval, champ_eval, params.promote, paired)


def promote(
    params: Params, settings: Settings, candidate: ModelRef, data: TrainingData, trigger: str
) -> PromotionResult:
    """Decide and apply promotion as a compare-and-set against the champion it was based on.

    The champion is the decision ledger's (`driftloop.champion`): the move is applied only if
    the champion is still the one the decision was based on, on this machine or any other.
    """
    from driftloop import champion as champions
    from driftloop import registry

    client = registry.connect(settings)
    name = params.train.model_name
    basis = champions.current(settings, client, name)
    champion = registry.get_version(client, name, basis) if basis is not None else None
    after = comparable_after(champion, candidate)
    cand_scores = score_on_holdout(params, candidate, data.frame, after)
    cand_eval, champ_eval, paired = cand_scores.evaluation, None, None
    if champion is not None and champion.version != candidate.version:
        champ_scores = score_on_holdout(params, champion, data.frame, after)
        champ_eval = champ_scores.evaluation
        if params.promote.rule == "not_worse":
            paired = paired_gain(params, cand_scores, champ_scores, params.train.seed)
    decision = _decide(params, champion, candidate, cand_eval, champ_eval, paired)
    experiment = refit = None
    applied = False
    if decision.promote and champion is not None and params.promote.via == "experiment":
        decision, experiment = stage_challenger(params, settings, candidate, data, decision)
    elif decision.promote:
        winner = candidate
        if params.train.refit:
            winner = refit_winner(params, settings, candidate, data, trigger)
            refit = winner.version if winner.version != candidate.version else None
        event = _promotion_event(params, settings, candidate, trigger, data, basis, decision)
        event = dataclasses.replace(
            _with(event, cand_eval, champ_eval),
            version=winner.version,
            refit_of=refit and candidate.version,
        )
        refused = champions.move(settings, client, event, basis)
        applied = refused is None
        if refused is not None:
            decision = Decision(False, refused)
    result = PromotionResult(
        candidate.version, basis, decision, cand_eval, champ_eval, applied, experiment, refit
    )
    _record_decision(params, settings, client, candidate, result, trigger, data)
    return result


def _promotion_event(
    params: Params,
    settings: Settings,
    candidate: ModelRef,
    trigger: str,
    data: TrainingData,
    basis: str | None,
    decision: Decision,
    verdict: str = "promoted",
    experiment: str | None = None,
) -> Promotion:
    return Promotion(
        candidate.name,
        version=candidate.version,
        decision=verdict,
        reason=decision.reason,
        trigger=trigger,
        triggered_by=settings.triggered_by,
        champion_before=basis,
        data_md5=data.data_md5,
        labels_md5=data.labels_md5,
        metric=params.promote.primary_metric,
        experiment=experiment,
    )


def _with(event: Promotion, cand: Evaluation, champ: Evaluation | None) -> Promotion:
    """The event with both sides' holdout metrics (finite values only: the ledger is JSON)."""
    return dataclasses.replace(
        event,
        candidate_metrics=jsonio.to_jsonable(cand.metrics),
        champion_metrics=jsonio.to_jsonable(champ.metrics) if champ is not None else None,
    )


def refit_on_window(model: Any, whole: Dataset) -> Any:
    """The model's candidate, calibration and threshold, its pipeline fitted on every labelled
    row of the window (a model without `refitted` is returned as it is)."""
    return model.refitted(whole.X, whole.y) if hasattr(model, "refitted") else model


def refit_winner(
    params: Params, settings: Settings, candidate: ModelRef, data: TrainingData, trigger: str
) -> ModelRef:
    """The gate's winner fitted anew on its whole window, holdout included (same candidate,
    calibration and threshold), registered as a new version that names the gated one.

    The gate compared the gated version on the holdout; the refit adds the most recent rows,
    which a model serving tomorrow needs most. A model without `refitted` (trained by an
    earlier driftloop) is returned as it is.
    """
    from driftloop import registry

    gated = registry.load_model(candidate)
    if not hasattr(gated, "refitted"):
        return candidate
    own = params_of(params, candidate)
    split = build_features(own, data)
    whole = make_dataset(data.frame, own)
    model = refit_on_window(gated, whole)
    holdout = evaluate(gated, split.holdout, params.evaluation.threshold)
    client = registry.connect(settings)
    cv = {
        k: v
        for k, v in registry.run_metrics(client, candidate.run_id).items()
        if k.startswith(("cv_", "candidate.", "calibration.")) or k in ("threshold", "n_cv_rows")
    }
    trained = TrainedModel(
        model,
        cv,
        holdout,
        len(whole),
        list(whole.X.columns),
        whole.X.tail(5).reset_index(drop=True),
        gated.selection(params.train.threshold_for),
    )
    validation = registry.run_json(candidate.run_id, "validation.json")  # the same data's
    return register(params, settings, trained, data, trigger, validation, refit_of=candidate)


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
    """Tags on the version, the decision in the ledger, and the DVC stage's report."""
    from driftloop import champion as champions
    from driftloop import registry

    verdict = "promoted" if result.applied else "challenger" if result.experiment else "rejected"
    reason = result.decision.reason
    if result.refit is not None:
        reason = f"{reason}; refitted on the whole window (holdout included) as v{result.refit}"
    registry.tag_version(
        client,
        candidate.name,
        candidate.version,
        {
            Verdict.tag("decision"): verdict,
            Verdict.tag("reason"): reason,
            Verdict.tag("champion_before"): str(result.champion_before),
        },
    )
    if result.refit is not None:
        registry.tag_version(
            client,
            candidate.name,
            result.refit,
            {
                Verdict.tag("decision"): verdict,
                Verdict.tag("reason"): f"refit of v{candidate.version}, which passed the gate: "
                + result.decision.reason,
                Verdict.tag("champion_before"): str(result.champion_before),
            },
        )
    if not result.applied:  # an applied promotion was recorded with the champion's move
        event = _promotion_event(
            params,
            settings,
            candidate,
            trigger,
            data,
            result.champion_before,
            result.decision,
            verdict,
            result.experiment,
        )
        champions.record(settings, _with(event, result.candidate_eval, result.champion_eval))
    jsonio.write_json(
        settings.path(params.reports.promotion),
        {
            "model": candidate.name,
            "candidate": candidate.version,
            "refit": result.refit,
            "decision": verdict,
            "reason": reason,
            "champion_before": result.champion_before,
        },
    )


def rollback(
    params: Params, settings: Settings, reason: str, to_version: str | None = None
) -> tuple[str | None, str]:
    """Move `champion` back to a previous version (default: the one before it); recorded."""
    from driftloop import champion

    return champion.rollback(settings, params.train.model_name, reason, to_version)


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
    window: int | Window | None = None  # days of a rolling window, a policy, or None: all rows
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
        refit = self.extra.get("refit")
        verdict = (
            f"promoted to champion, refitted on the whole window as v{refit}"
            if self.promoted and refit
            else "promoted to champion"
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
    data = steps.load_training_data(params, settings, request.window, request.until)
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
        ({"experiment": result.experiment} if result.experiment else {})
        | ({"refit": result.refit} if result.refit else {}),
    )
