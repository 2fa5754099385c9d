"""The models behind the service: loaded once per version, swapped atomically on an alias move.

A background thread reads the `champion` (and, during an experiment, `challenger`) alias every
`serve.reload_seconds`. A new version is loaded and checked on its logged input example before one
reference assignment (under a lock) makes it current: a request sees the old pair or the new one,
never a half-loaded model. While the registry store is down the loaded models keep answering.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, TypeAdapter

from driftloop import registry, stages
from driftloop.config import Params, Settings
from driftloop.errors import RegistryError
from driftloop.features import feature_frame, sort_rows
from driftloop.registry import CHALLENGER, CHAMPION, ModelRef
from driftloop.serving.schema import needs_history, rows_adapter
from driftloop.training import predict_proba, threshold_of

log = logging.getLogger("driftloop.serving")


@dataclass(frozen=True)
class Loaded:
    """One registered version, ready to score raw rows."""

    ref: ModelRef
    model: Any
    params: Params  # the params it was trained with (its feature step)
    rows: TypeAdapter[list[BaseModel]]  # validates request rows (the feature step's inputs)
    columns: list[str]  # its input signature (feature columns, in order)

    @property
    def version(self) -> str:
        return self.ref.version

    def threshold(self, default: float) -> float:
        """The decision threshold its answers use: the model's own (chosen on its CV folds),
        else `default` (evaluation.threshold) for a model that carries none."""
        return threshold_of(self.model, default)


@dataclass(frozen=True)
class Current:
    """What answers now: the champion, the challenger and the experiment (one immutable value)."""

    champion: Loaded | None = None
    challenger: Loaded | None = None
    experiment: Any = None  # experiments.ExperimentState while one runs


class History:
    """Recent raw rows per entity, for models whose features read earlier rows (lags, rolling).

    Seeded from the accepted data, extended with every served row; trimmed to what the longest
    lag and the widest window can reach.
    """

    def __init__(self, params: Params, seed: pd.DataFrame) -> None:
        self._params = params
        self._lock = threading.Lock()
        self._frame = self._trim(seed)

    def _trim(self, frame: pd.DataFrame) -> pd.DataFrame:
        data, features = self._params.data, self._params.features
        if frame.empty:
            return frame
        frame = sort_rows(frame, data)
        keys = list(data.entity_columns)
        depth = max(features.lags.periods or [0]) + 1
        widths = [pd.Timedelta(w) for w in features.rolling.windows] or [pd.Timedelta(0)]
        ts = pd.to_datetime(frame[data.timestamp_column])
        newest = ts.groupby([frame[k] for k in keys]).transform("max") if keys else ts.max()
        recent = ts > newest - max(widths)
        rank = frame.groupby(keys).cumcount(ascending=False) if keys else frame.index[::-1]
        tail = pd.Series(np.asarray(rank) < depth, index=frame.index)
        return frame.loc[recent | tail].reset_index(drop=True)

    def features(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Feature rows for `rows` (in their order), with history before them; remembers them."""
        data = self._params.data
        with self._lock:
            context = self._frame
            for key in data.entity_columns:  # only the request's entities' history
                context = context[context[key].isin(rows[key])]
            marked = rows.assign(_served=np.arange(len(rows)))
            both = pd.concat([context.assign(_served=-1), marked], ignore_index=True)
            ordered = sort_rows(both, data)
            X = feature_frame(ordered, self._params.features, data)
            mine = ordered["_served"].to_numpy() >= 0
            out = X.loc[mine].set_axis(ordered.loc[mine, "_served"].to_numpy()).sort_index()
            self._frame = self._trim(pd.concat([self._frame, rows], ignore_index=True))
        return out.reset_index(drop=True)


def features_for(loaded: Loaded, rows: pd.DataFrame, history: History | None) -> pd.DataFrame:
    """The model's input frame for raw rows (the training feature step)."""
    if history is not None and needs_history(loaded.params):
        X = history.features(rows)
    else:
        X = feature_frame(rows, loaded.params.features, loaded.params.data)
    return X[loaded.columns]


def score(loaded: Loaded, rows: pd.DataFrame, history: History | None) -> np.ndarray:
    """Probabilities of the positive class for raw rows.

    No per-call thread-pool limit (threadpoolctl costs ~5 ms a call): the service process sets
    one limit at start (`limit_threads`); requests are small batches.
    """
    return predict(loaded, features_for(loaded, rows, history))


def predict(loaded: Loaded, X: pd.DataFrame) -> np.ndarray:
    """Probabilities of the positive class for the model's input rows."""
    return np.asarray(loaded.model.predict_proba(X)[:, 1], dtype=float)


def limit_threads() -> None:
    """One OpenMP/BLAS thread for the whole process (small batches: no thread spin-up)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _signature_and_example(ref: ModelRef) -> tuple[list[str], pd.DataFrame | None]:
    import mlflow
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(artifact_uri=ref.uri)
    logged = Model.load(local)
    if logged.signature is None:
        raise RegistryError(f"{ref.uri}: no input signature logged; refusing to serve it")
    columns = list(logged.signature.inputs.input_names())
    example = logged.load_input_example(local)
    return columns, example if isinstance(example, pd.DataFrame) else None


def load_version(params: Params, ref: ModelRef) -> Loaded:
    """Load a version from the project's registry and check it on its logged input example."""
    model = registry.load_model(ref)
    trained = stages.params_of(params, ref)
    columns, example = _signature_and_example(ref)
    produced = set(feature_frame(_empty_rows(trained), trained.features, trained.data).columns)
    missing = [c for c in columns if c not in produced]
    if missing:
        raise RegistryError(f"{ref.uri}: inputs {missing} are not made by its feature step")
    if example is not None:
        proba = predict_proba(model, example[columns])
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in proba):
            raise RegistryError(f"{ref.uri}: its input example gives no valid probabilities")
    return Loaded(ref, model, trained, rows_adapter(trained), columns)


def _empty_rows(params: Params) -> pd.DataFrame:
    data = params.data
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in data.columns})
    frame[data.timestamp_column] = pd.Series(dtype="datetime64[ns]")
    return frame


def _experiments() -> Any:
    """The experiments module (issue 8), or None while it does not exist: champion only."""
    import importlib

    try:  # by module name: sys.modules decides (not an attribute of the package)
        return importlib.import_module("driftloop.experiments")
    except ImportError:
        return None


@dataclass
class StoreStatus:
    """Whether the registry store answered at the last poll."""

    ok: bool = False
    error: str | None = None
    checked_at: float = field(default_factory=time.time)


class ModelHolder:
    """The current models, refreshed from the registry aliases by a background thread."""

    def __init__(self, params: Params, settings: Settings, history: History | None) -> None:
        self.params, self.settings, self.history = params, settings, history
        self.name = params.train.model_name
        self.store = StoreStatus()
        self._current = Current()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: set[str] = set()  # versions that failed their check: not retried
        self.swaps = 0

    @property
    def current(self) -> Current:
        return self._current  # one reference read: a consistent pair

    def refresh(self) -> None:
        """Read the aliases (and the experiment); load and swap in what moved."""
        try:
            client = registry.connect(self.settings)
            champion = registry.get_alias(client, self.name, CHAMPION)
            experiment = self._experiment_state()
            challenger = registry.get_alias(client, self.name, CHALLENGER) if experiment else None
        except Exception as exc:  # the store is down: keep serving what is loaded
            self.store = StoreStatus(False, f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        self.store = StoreStatus(True)
        now = self._current
        new_champion = self._load_if_moved(champion, now.champion)
        new_challenger = self._load_if_moved(challenger, now.challenger) if challenger else None
        self.swap(Current(new_champion, new_challenger, experiment))

    def swap(self, new: Current) -> None:
        with self._lock:
            old = self._current
            if (old.champion and old.champion.version) != (new.champion and new.champion.version):
                self.swaps += 1
                log.warning(
                    "champion %s -> %s",
                    old.champion and old.champion.version,
                    new.champion and new.champion.version,
                )
            self._current = new

    def end_experiment(self) -> None:
        """Traffic back to the champion at once (a guardrail tripped)."""
        with self._lock:
            self._current = Current(self._current.champion, None, None)

    def _experiment_state(self) -> Any:
        module = _experiments()
        return module.load_state(self.settings, self.name) if module is not None else None

    def _load_if_moved(self, ref: ModelRef | None, loaded: Loaded | None) -> Loaded | None:
        if ref is None:
            return loaded  # an alias deleted: keep answering with what we have
        if loaded is not None and loaded.version == ref.version:
            return loaded
        if ref.version in self._failed:
            return loaded
        try:
            return load_version(self.params, ref)
        except Exception as exc:
            self._failed.add(ref.version)
            log.error("version %s not served: %s", ref.version, exc)
            return loaded

    def start(self) -> None:
        """Load now, then poll in the background."""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="alias-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.params.serve.reload_seconds):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
