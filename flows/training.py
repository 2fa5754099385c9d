"""The training pipeline: ingest -> validate -> train -> evaluate -> register -> promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from driftloop import pipeline
from driftloop.config import Settings, apply_env_defaults, load_params
from tasks import training as t


@flow(name="training", log_prints=True)
def training_flow(
    source: str | None = None,
    until: str | None = None,
    trigger: str = "manual",
    window_days: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and promote on all accepted data (after ingesting the next batch)."""
    settings = Settings()
    apply_env_defaults(settings)
    params = load_params(settings.project / "params.yaml")
    batch = t.ingest(params, settings, source, until or params.data.until)
    validation = t.validate(params, settings)
    if not force and (version := pipeline.already_trained(params, settings, batch.data_md5)):
        return {
            "message": f"v{version} is already trained on data {batch.data_md5} with these "
            "params; nothing to do (force=True retrains)",
            "version": version,
            "promoted": False,
        }
    data = t.load_training_data(params, settings, window_days)
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
