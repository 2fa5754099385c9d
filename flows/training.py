"""The training pipeline: ingest -> validate -> train -> evaluate -> register -> promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from driftloop import ingest, stages
from driftloop.config import Params, Settings, load_context
from tasks import training as t


def context(
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[Params, Settings]:
    """Params and settings of the flow run: explicit parameters, else the environment."""
    return load_context(project, params_file, home, tracking_uri)


@flow(name="training", log_prints=True)
def training_flow(
    source: str | None = None,
    until: str | None = None,
    trigger: str = "manual",
    window_days: int | None = None,
    force: bool = False,
    labels: str | None = None,
    project: str | None = None,
    params_file: str | None = None,
    home: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Ingest the next batch (and labels), validate, then train and promote on accepted data."""
    params, settings = context(project, params_file, home, tracking_uri)
    batch = t.ingest(params, settings, source, until or params.data.until)
    if label_source := ingest.label_spec(params, source, labels):
        t.ingest_labels(params, settings, label_source, until or params.data.until)
    validation = t.validate(params, settings)
    if not force and (version := stages.already_trained(params, settings, batch.data_md5)):
        return {
            "message": f"v{version} is already trained on data {batch.data_md5} with these "
            "params; nothing to do (force=True retrains)",
            "version": version,
            "promoted": False,
            "reason": "already trained",
        }
    request = stages.TrainRequest(trigger, window_days, until, validation=validation)
    return stages.train_and_promote(params, settings, request, t.STEPS).to_dict()
