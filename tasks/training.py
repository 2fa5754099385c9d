"""Prefect tasks of the training pipeline: each wraps one stage function, adds retries where a
failure is transient, and publishes an artifact. No ML logic here."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from driftloop import ingest as ingest_stage
from driftloop import stages
from driftloop.config import Params, Settings, SourceSpec
from driftloop.registry import ModelRef
from driftloop.stages import Fitted, PromotionResult, Split, TrainingData
from driftloop.training import TrainedModel
from driftloop.windows import Window
from tasks import alerts
from tasks.common import REGISTRY_RETRIES, table


@task(name="ingest", cache_policy=NONE)
def ingest(
    params: Params, settings: Settings, source: str | None, until: str | None
) -> ingest_stage.IngestSummary:
    """Ingest what is new at the source and gate it (no retry: bad data stays bad)."""
    result = ingest_stage.ingest_source(params, settings, source, until)
    create_markdown_artifact(
        key="ingest",
        markdown=f"**{result.origin}**: {result.message()}"
        + f"\n\nDVC md5 of accepted data: `{result.data_md5}`",
        description="Ingested batch",
    )
    return result


@task(name="ingest-labels", cache_policy=NONE)
def ingest_labels(
    params: Params, settings: Settings, source: SourceSpec, until: str | None
) -> ingest_stage.IngestSummary:
    """Ingest the labels that arrived and gate them like a data batch."""
    return ingest_stage.ingest_label_source(params, settings, source, until)


@task(name="version-data", cache_policy=NONE)
def version_data(params: Params, settings: Settings) -> str:
    """Make sure every accepted batch is versioned with DVC before training on it."""
    return ingest_stage.version_data(params, settings)


@task(name="validate", cache_policy=NONE)
def validate(params: Params, settings: Settings) -> dict[str, Any]:
    """Great Expectations over all accepted data; fails the flow (no retry) on any failure."""
    report = ingest_stage.validate_dataset(params, settings)
    failed = [
        f"- {o['expectation']}({o['column']})" for o in report["outcomes"] if not o["success"]
    ]
    create_markdown_artifact(
        key="validation",
        markdown=f"### Validation: {'passed' if report['success'] else 'FAILED'}\n\n"
        f"{report['rows']} rows, {report['evaluated']} expectations, {report['failed']} failed\n\n"
        + "\n".join(failed),
        description="Great Expectations summary",
    )
    return report


@task(name="load-training-data", cache_policy=NONE)
def load_training_data(
    params: Params, settings: Settings, window: int | Window | None, until: str | None = None
) -> TrainingData:
    """Accepted rows to train on (the retrain window policy applies here)."""
    return stages.load_training_data(params, settings, window, until)


@task(name="build-features", cache_policy=NONE)
def build_features(params: Params, data: TrainingData) -> Split:
    """The feature step and the time-ordered holdout split."""
    return stages.build_features(params, data)


@task(name="train", cache_policy=NONE)
def train(params: Params, split: Split) -> Fitted:
    """Time-series CV and fit."""
    return stages.train(params, split)


@task(name="evaluate", cache_policy=NONE)
def evaluate(params: Params, fitted: Fitted, split: Split) -> TrainedModel:
    """Holdout metrics overall and per segment; a metrics table artifact."""
    trained = stages.evaluate_fitted(params, fitted, split)
    holdout = trained.holdout
    create_table_artifact(
        key="metrics",
        table=table({"holdout": holdout.metrics, **holdout.segments}),
        description=f"Holdout metrics ({holdout.n_rows} rows); CV: "
        + ", ".join(f"{k}={v:.3f}" for k, v in fitted.cv.items()),
    )
    return trained


@task(name="register", cache_policy=NONE, **REGISTRY_RETRIES)
def register(
    params: Params,
    settings: Settings,
    trained: TrainedModel,
    data: TrainingData,
    trigger: str,
    validation: dict[str, Any] | None,
) -> ModelRef:
    """Log the run to MLflow and register it as `challenger` (retried if the store is down)."""
    return stages.register(params, settings, trained, data, trigger, validation)


@task(name="promote", cache_policy=NONE, **REGISTRY_RETRIES)
def promote(
    params: Params, settings: Settings, candidate: ModelRef, data: TrainingData, trigger: str
) -> PromotionResult:
    """The promotion gate (compare-and-set); a markdown artifact with the decision."""
    result = stages.promote(params, settings, candidate, data, trigger)
    alerts.publish(
        "driftloop.promotion",
        candidate.name,
        {
            "version": candidate.version,
            "decision": "promoted" if result.applied else "not promoted",
            "reason": result.decision.reason,
            "champion_before": result.champion_before,
            "trigger": trigger,
        },
    )
    verdict = "PROMOTED to champion" if result.applied else "not promoted"
    metric = params.promote.primary_metric
    champ = result.champion_eval.metrics.get(metric) if result.champion_eval else None
    cand = result.candidate_eval.metrics.get(metric)
    link = f"{settings.mlflow_ui}/#/experiments/0/runs/{candidate.run_id}"
    create_markdown_artifact(
        key="promotion",
        markdown=f"### v{candidate.version}: {verdict}\n\n{result.decision.reason}\n\n"
        f"| | {metric} |\n|---|---|\n| candidate v{candidate.version} | {_fmt(cand)} |\n"
        f"| champion v{result.champion_before} | {_fmt(champ)} |\n\n"
        f"MLflow run: [{candidate.run_id}]({link})",
        description="Promotion decision",
    )
    return result


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


STEPS = stages.Steps(load_training_data, build_features, train, evaluate, register, promote)
