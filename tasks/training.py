"""Tasks of the training pipeline. Each calls one core function and publishes an artifact."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from driftloop import pipeline
from driftloop.config import Params, Settings
from driftloop.pipeline import IngestResult, PromotionResult, TrainingData
from driftloop.registry import ModelRef
from driftloop.training import Evaluation, TrainedModel
from tasks.common import REGISTRY_RETRIES, table


@task(name="ingest", cache_policy=NONE)
def ingest(
    params: Params, settings: Settings, source: str | None, until: str | None
) -> IngestResult:
    """Read the next batch and gate it (no retry: bad data stays bad)."""
    raw = pipeline.read_next_batch(params, settings, source, until)
    result = pipeline.ingest(params, settings, raw)
    create_markdown_artifact(
        key="ingest",
        markdown=(
            f"**{result.origin}**: nothing new"
            if result.nothing_new
            else f"**{result.origin}**: accepted {result.rows} rows {result.first}..{result.last}"
        )
        + f"\n\nDVC md5 of accepted data: `{result.data_md5}`",
        description="Ingested batch",
    )
    return result


@task(name="version-data", cache_policy=NONE)
def version_data(params: Params, settings: Settings) -> str:
    """Make sure every accepted batch is versioned with DVC before training on it."""
    return pipeline.version_data(params, settings)


@task(name="validate", cache_policy=NONE)
def validate(params: Params, settings: Settings) -> dict[str, Any]:
    """Great Expectations over all accepted data; fails the flow (no retry) on any failure."""
    report = pipeline.validate_dataset(params, settings)
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
    params: Params, settings: Settings, window_days: int | None, until: str | None = None
) -> TrainingData:
    """Accepted rows to train on (the retrain window policy applies here)."""
    return pipeline.training_data(params, settings, window_days=window_days, until=until)


@task(name="train", cache_policy=NONE)
def train(params: Params, data: TrainingData) -> tuple[Any, dict[str, float], int]:
    """Time-series CV and fit."""
    return pipeline.train_candidate(params, data)


@task(name="evaluate", cache_policy=NONE)
def evaluate(
    params: Params, fitted: tuple[Any, dict[str, float], int], data: TrainingData
) -> TrainedModel:
    """Holdout metrics overall and per segment; a metrics table artifact."""
    estimator, cv, n_train = fitted
    holdout: Evaluation = pipeline.evaluate_candidate(params, estimator, data)
    create_table_artifact(
        key="metrics",
        table=table({"holdout": holdout.metrics, **holdout.segments}),
        description=f"Holdout metrics ({holdout.n_rows} rows); CV: "
        + ", ".join(f"{k}={v:.3f}" for k, v in cv.items()),
    )
    return TrainedModel(estimator, cv, holdout, n_train, list(estimator.feature_names_in_))


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
    candidate = pipeline.log_and_register(params, settings, trained, data, trigger, validation)
    pipeline.write_train_report(settings, candidate, trained, data.data_md5)
    return candidate


@task(name="promote", cache_policy=NONE, **REGISTRY_RETRIES)
def promote(
    params: Params, settings: Settings, candidate: ModelRef, data: TrainingData, trigger: str
) -> PromotionResult:
    """The promotion gate (compare-and-set); a markdown artifact with the decision."""
    result = pipeline.promote(params, settings, candidate, data, trigger)
    verdict = "PROMOTED to champion" if result.applied else "not promoted"
    metric = params.promote.primary_metric
    champ = result.champion_eval.metrics.get(metric) if result.champion_eval else None
    link = f"{settings.mlflow_ui}/#/experiments/0/runs/{candidate.run_id}"
    create_markdown_artifact(
        key="promotion",
        markdown=f"### v{candidate.version}: {verdict}\n\n{result.decision.reason}\n\n"
        f"| | {metric} |\n|---|---|\n| candidate v{candidate.version} | "
        f"{result.candidate_eval.metrics.get(metric, float('nan')):.4f} |\n"
        f"| champion v{result.champion_before} | {champ if champ is None else f'{champ:.4f}'} |\n\n"
        f"MLflow run: [{candidate.run_id}]({link})",
        description="Promotion decision",
    )
    return result
