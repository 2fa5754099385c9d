"""The training pipeline: ingest -> validate -> train -> evaluate -> register -> promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from driftloop import pipeline
from driftloop.config import Params, Settings, apply_env_defaults, load_params
from tasks import training as t


def context() -> tuple[Params, Settings]:
    """Settings from the environment and the project's params.yaml (read once per flow run)."""
    settings = Settings()
    apply_env_defaults(settings)
    return load_params(settings.project / "params.yaml"), settings


def train_and_promote(
    params: Params,
    settings: Settings,
    validation: dict[str, Any],
    trigger: str,
    window_days: int | None,
    until: str | None = None,
) -> dict[str, Any]:
    """train -> evaluate -> register -> promote, shared by the training and retrain flows."""
    data = t.load_training_data(params, settings, window_days, until)
    trained = t.evaluate(params, t.train(params, data), data)
    candidate = t.register(params, settings, trained, data, trigger, validation)
    result = t.promote(params, settings, candidate, data, trigger)
    verdict = "promoted to champion" if result.applied else "not promoted"
    return {
        "message": f"v{candidate.version} {verdict}: {result.decision.reason}",
        "version": candidate.version,
        "run_id": candidate.run_id,
        "promoted": result.applied,
        "reason": result.decision.reason,
        "data_md5": data.data_md5,
        "holdout": trained.holdout.metrics,
    }


@flow(name="training", log_prints=True)
def training_flow(
    source: str | None = None,
    until: str | None = None,
    trigger: str = "manual",
    window_days: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Ingest the next batch, then train, evaluate and promote on all accepted data."""
    params, settings = context()
    batch = t.ingest(params, settings, source, until or params.data.until)
    validation = t.validate(params, settings)
    if not force and (version := pipeline.already_trained(params, settings, batch.data_md5)):
        return {
            "message": f"v{version} is already trained on data {batch.data_md5} with these "
            "params; nothing to do (force=True retrains)",
            "version": version,
            "promoted": False,
        }
    return train_and_promote(params, settings, validation, trigger, window_days)
