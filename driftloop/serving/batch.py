"""Batch inference: a CSV/Parquet file scored by the champion through the service's code and log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop import datastore, registry
from driftloop.config import Params, Settings
from driftloop.errors import IngestError, RegistryError
from driftloop.serving import predlog
from driftloop.serving.models import History, load_version, score
from driftloop.serving.schema import input_columns, needs_history, optional_columns
from driftloop.sources import read_batch_file

BATCH = "batch"


@dataclass(frozen=True)
class ScoreResult:
    """A scored file: where it went, how many rows, by which version."""

    source: str
    output: str
    rows: int
    model_version: str
    positive: int


def scored_path(source: Path, output: Path | None) -> Path:
    return output or source.with_name(f"{source.stem}.scored{source.suffix}")


def score_file(
    params: Params, settings: Settings, source: Path, output: Path | None = None
) -> ScoreResult:
    """Score every row of a file with the champion; write it with prediction_id, probability,
    label and model_version; log each prediction (variant "batch") in the prediction log."""
    raw = read_batch_file(source, params.data)
    if raw.read_error is not None:
        raise IngestError(f"{source}: {raw.read_error}")
    client = registry.connect(settings)
    ref = registry.get_alias(client, params.train.model_name, registry.CHAMPION)
    if ref is None:
        raise RegistryError(f"{params.train.model_name}: no champion to score with")
    loaded = load_version(params, ref)
    needed = input_columns(loaded.params)
    missing = [c for c in needed if c not in raw.frame.columns]
    if missing:
        raise IngestError(f"{source}: missing input columns {missing}")
    kept = [c for c in (*needed, *optional_columns(loaded.params)) if c in raw.frame.columns]
    rows = raw.frame[kept].reset_index(drop=True)
    history = None
    if needs_history(loaded.params):
        seed = datastore.load_accepted(settings.path(params.data.raw_dir), loaded.params)
        history = History(loaded.params, seed)
    proba = score(loaded, rows, history)
    labels = (proba >= loaded.threshold(params.evaluation.threshold)).astype(int)
    ids = [uuid.uuid4().hex for _ in range(len(rows))]
    _log(params, settings, ids, loaded.version, proba, labels, rows)
    out = raw.frame.assign(
        prediction_id=ids, probability=proba, label=labels, model_version=loaded.version
    )
    target = scored_path(source, output)
    if target.suffix.lower() == ".parquet":
        out.to_parquet(target, index=False)
    else:
        out.to_csv(target, index=False)
    return ScoreResult(str(source), str(target), len(out), loaded.version, int(labels.sum()))


def _log(
    params: Params,
    settings: Settings,
    ids: list[str],
    version: str,
    proba: np.ndarray,
    labels: np.ndarray,
    rows: pd.DataFrame,
) -> None:
    """The same prediction log as the service: a write-ahead file, rolled and versioned."""
    log = predlog.PredictionLog.for_model(params, settings)
    log.start()
    inputs = [{str(k): v for k, v in r.items()} for r in rows.to_dict("records")]  # NaN: null
    log.append(predlog.records(ids, predlog.utc_now(), version, BATCH, proba, labels, inputs))
    log.close()
