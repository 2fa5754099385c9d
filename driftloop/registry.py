"""MLflow at the edge: tracking runs, the model registry and aliases.

Everything that talks to MLflow lives here. Embedded default: a local SQLite file (WAL mode,
schema created once under a lock) with a local artifact folder; any tracking URI by env var.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import re
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.config import Settings
from driftloop.errors import RegistryError
from driftloop.lineage import COMPLETE_TAG, Lineage, Verdict
from driftloop.memo import Memo
from driftloop.versioning import project_lock

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and what it was built from."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def lineage(self) -> Lineage:
        """What this version was trained on (read from its tags)."""
        return Lineage.from_tags(self.tags)

    @property
    def verdict(self) -> Verdict:
        """The promotion decision recorded on this version."""
        return Verdict.from_tags(self.tags)


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


class ReadyStores:
    """Tracking stores whose schema this process has already checked (tests may clear it)."""

    def __init__(self) -> None:
        self._uris: set[str] = set()

    def __contains__(self, uri: object) -> bool:
        return uri in self._uris

    def add(self, uri: str) -> None:
        self._uris.add(uri)

    def clear(self) -> None:
        self._uris.clear()


READY = ReadyStores()


MODELS: Memo[str, Any] = Memo()  # versions are immutable: each loaded once; tests clear()


def connect(settings: Settings, read_only: bool = False) -> Any:
    """Point MLflow at the configured store and return a client (schema ready, WAL on).

    `read_only` (status, lineage): no lock, schema creation or WAL switch, and None when the
    embedded SQLite store does not exist yet, since a read never creates it. A store that cannot
    be used raises a one-line RegistryError naming its URI (a server that does not answer fails
    within MLFLOW_HTTP_REQUEST_TIMEOUT and _MAX_RETRIES, set by `apply_env_defaults`).
    """
    uri = settings.mlflow_uri
    db = _sqlite_path(uri)
    if read_only and db is not None and not db.exists():
        return None
    import mlflow
    from mlflow import MlflowClient

    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)  # "no pip in venv"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri in READY:
        return MlflowClient(uri)
    try:
        if db is None:
            client = _call(MlflowClient, uri)
            _call(client.search_experiments, max_results=1)  # is the server there?
        elif read_only:
            return _call(MlflowClient, uri)  # its store checks the schema version
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            # Concurrent first use breaks MLflow's migrations: create the schema once, locked.
            with project_lock(settings.lock_dir, "mlflow-init"):
                client = _call(MlflowClient, uri)
                _call(client.search_experiments, max_results=1)
                with sqlite3.connect(db) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
    except RegistryError as exc:
        raise RegistryError(f"MLflow store {uri}: {str(exc).removeprefix('MLflow: ')}") from exc
    READY.add(uri)
    return client


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call MLflow; turn connection failures into a one-line RegistryError."""
    try:
        return fn(*args, **kwargs)
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(f"MLflow: {failure(exc)}") from exc


_GAVE_UP = re.compile(r"too many (\d{3}) error responses")


def failure(exc: BaseException) -> str:
    """Why a call to MLflow failed, in one line: a server that kept answering 5xx or could not
    be reached is named as such (after the client's bounded retries), not as the HTTP library's
    nested exception text."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 20:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain)
    tries = f"{_retries() + 1} tries"
    if gave_up := _GAVE_UP.search(text):
        return f"the tracking server answered HTTP {gave_up.group(1)} to {tries}; giving up"
    for inner in reversed(chain):
        if isinstance(inner, OSError) and not isinstance(inner, FileNotFoundError):
            why = inner.strerror or str(inner).split(": ")[-1] or type(inner).__name__
            return f"not reachable ({why[:200]}, {tries})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {first[:300]}"


def _retries() -> int:
    import os

    try:
        return int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"))
    except ValueError:
        return 7


def ensure_experiment(settings: Settings, name: str) -> str:
    """The experiment's id, creating it with the project's artifact root."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    artifact_root = None if settings.tracking_uri_is_server else settings.mlflow_artifacts
    try:
        exp_id = mlflow.create_experiment(
            name, artifact_location=f"{artifact_root}/{name}" if artifact_root else None
        )
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        exp_id = exp.experiment_id
    return str(exp_id)


def trusted_types(model: Any) -> list[str]:
    """The scikit-learn types skops must trust to load this model (and nothing else)."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=sio.dumps(model))
    # functools.partial wraps scikit-learn's own check_array inside HistGradientBoosting's
    # categorical preprocessor; skops still checks the wrapped function against this list.
    # driftloop's own: the DecisionModel around the pipeline (calibration and threshold).
    return [
        t for t in untrusted if t.startswith(("sklearn.", "numpy.", "driftloop.")) or t in _WRAPPERS
    ]


_WRAPPERS = frozenset({"functools.partial"})


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of a logged model (skips MLflow's slow inference)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("scikit-learn", "pandas", "numpy", "skops")]


def _dataset(record: RunRecord) -> Any:
    """The training data as an MLflow dataset input: DVC md5 as digest, schema from a sample.

    (`from_pandas` infers the schema value by value: ~1 s per 100k rows for nothing new.)
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature

    with warnings.catch_warnings():  # "source can be interpreted in multiple ways"
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(record.dataset_name)
    sample = record.dataset.head(1000)  # integers as doubles, as in the model's signature
    schema = infer_signature(
        sample.astype({c: "float64" for c in sample.select_dtypes("integer")})
    ).inputs
    return MetaDataset(  # type: ignore[abstract]
        source, name=record.dataset_name, digest=record.dataset_digest, schema=schema
    )


@dataclass(frozen=True)
class RunRecord:
    """What the training run logs besides the model."""

    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: dict[str, Any]
    files: tuple[Path, ...]
    dataset: pd.DataFrame
    dataset_name: str
    dataset_digest: str


_REFUSED = re.compile(r"[^\w\-. :/]")  # MLflow takes word characters, - . space : and /


def metric_name(raw: str) -> str:
    """A metric (or param) name MLflow accepts, readable and unique per raw name.

    Characters MLflow refuses (`€`, `%`, `+`, `(`, `#`, ...) become `_`, as does a `/` that
    would make an unnormalised path; a name that changed gets a short hash of the raw name, so
    two segment values never share a metric.
    """
    clean = _REFUSED.sub("_", raw)
    if posixpath.normpath(clean) != clean or clean.startswith("/"):
        clean = clean.replace("/", "_")
    if clean == raw:
        return raw[:250]
    digest = hashlib.sha256(raw.encode()).hexdigest()[:6]
    return f"{clean[:240]}-{digest}"


def log_metrics(metrics: dict[str, float], model_id: str | None = None) -> None:
    """Log metrics under names MLflow accepts (linked to a logged model when given, in one
    batch); the raw names are kept in `metric_names.json`."""
    import mlflow

    names = {raw: metric_name(raw) for raw in metrics}
    mlflow.log_metrics({names[k]: float(v) for k, v in metrics.items()}, model_id=model_id)
    renamed = {clean: raw for raw, clean in names.items() if clean != raw}
    if renamed:
        mlflow.log_dict(renamed, "metric_names.json")


def log_training_run(
    settings: Settings,
    experiment: str,
    run_name: str,
    model: Any,
    example: pd.DataFrame,
    record: RunRecord,
) -> tuple[str, str]:
    """Log params, metrics, lineage and the model; mark the run complete last.

    Returns (run_id, model_uri). A tracking server that fails on the way (5xx after its retries,
    e.g. its artifact disk full) is a one-line RegistryError; the run, never marked complete,
    is ended FAILED and is never registered.
    """
    from mlflow.exceptions import MlflowException

    try:
        return _log_training_run(settings, experiment, run_name, model, example, record)
    except MlflowException as exc:
        raise RegistryError(f"MLflow: logging the training run failed: {failure(exc)}") from exc


def _log_training_run(
    settings: Settings,
    experiment: str,
    run_name: str,
    model: Any,
    example: pd.DataFrame,
    record: RunRecord,
) -> tuple[str, str]:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    ensure_experiment(settings, experiment)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({metric_name(k): v for k, v in record.params.items()})
        mlflow.set_tags(record.tags)
        mlflow.log_input(_dataset(record), context="training")
        for name, payload in record.artifacts.items():
            mlflow.log_dict(payload, name)
        for file in record.files:
            if file.exists():
                mlflow.log_artifact(str(file), artifact_path="lineage")
        # integer inputs declared as doubles: a missing value at serving time would otherwise
        # break the schema (MLflow warns about it at every log)
        example = example.astype({c: "float64" for c in example.select_dtypes("integer")})
        proba = model.predict_proba(example)[:, 1]
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, proba),
            input_example=example.head(3),
            pip_requirements=pip_requirements(),
            skops_trusted_types=trusted_types(model),
            pyfunc_predict_fn="predict_proba",  # `mlflow models serve` answers probabilities
        )
        # after the model: logging them before makes log_model read each metric's history
        # back (one request per metric: minutes against a tracking server for hundreds)
        log_metrics(record.metrics, model_id=info.model_id)
        mlflow.set_tag(COMPLETE_TAG, "true")  # last: nothing without it is promoted
    return run.info.run_id, str(info.model_uri)


def register(client: Any, name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> ModelRef:
    """Register a completed run's model as a new version with alias `challenger`."""
    run = _call(client.get_run, run_id)
    if run.data.tags.get(COMPLETE_TAG) != "true":
        raise RegistryError(f"run {run_id} has no '{COMPLETE_TAG}' marker; refusing to register")
    with contextlib.suppress(Exception):  # it exists already (or was created concurrently)
        client.create_registered_model(name)
    # a LoggedModel source names its model (a tracking server refuses it otherwise)
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    try:
        mv = _call(
            client.create_model_version,
            name,
            model_uri,
            run_id=run_id,
            tags=tags,
            model_id=model_id,
            await_creation_for=30,
        )
    except RegistryError:
        remove_orphans(client, name, run_id, keep=None)
        raise
    remove_orphans(client, name, run_id, keep=str(mv.version))
    _call(client.set_registered_model_alias, name, CHALLENGER, mv.version)
    return get_version(client, name, str(mv.version))


def remove_orphans(client: Any, name: str, run_id: str, keep: str | None) -> list[str]:
    """Delete the versions of one run other than `keep`: a tracking server that created a
    version but whose answer was lost makes the client retry and create another, each one an
    orphan no decision refers to. Returns the versions deleted."""
    with contextlib.suppress(Exception):
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        orphans = [str(mv.version) for mv in found if str(mv.version) != keep]
        for version in orphans:
            client.delete_model_version(name, version)
        return orphans
    return []


def _ref(mv: Any) -> ModelRef:
    return ModelRef(mv.name, str(mv.version), mv.run_id, dict(mv.tags), tuple(mv.aliases))


def get_version(client: Any, name: str, version: str) -> ModelRef:
    return _ref(_call(client.get_model_version, name, version))


def get_alias(client: Any, name: str, alias: str) -> ModelRef | None:
    """The version behind an alias, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _ref(client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        if "Permission denied" in str(exc) and not _model_exists(client, name):
            return None  # the basic-auth app denies reading an alias of a model not made yet
        raise RegistryError(f"MLflow: {str(exc).splitlines()[0]}") from exc


def _model_exists(client: Any, name: str) -> bool:
    escaped = name.replace("'", "\\'")
    return bool(_call(client.search_registered_models, filter_string=f"name = '{escaped}'"))


def set_alias(client: Any, name: str, alias: str, version: str) -> None:
    _call(client.set_registered_model_alias, name, alias, version)


def tag_version(client: Any, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        _call(client.set_model_version_tag, name, version, key, value)


def load_model(ref: ModelRef) -> Any:
    """The scikit-learn model of a registered version (with predict_proba)."""
    import mlflow
    import mlflow.sklearn

    key = f"{mlflow.get_tracking_uri()}|{ref.uri}"
    return MODELS.get(key, lambda: _call(mlflow.sklearn.load_model, ref.uri))


def run_json(run_id: str, name: str) -> dict[str, Any] | None:
    """A JSON artifact of a run (None when it has none of that name)."""
    import mlflow

    try:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")
    except Exception:
        return None
    return loaded if isinstance(loaded, dict) else None


def run_metrics(client: Any, run_id: str) -> dict[str, float]:
    return dict(_call(client.get_run, run_id).data.metrics)
