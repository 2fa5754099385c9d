"""Fitting and evaluating a candidate on a slice of the bundled Seattle data (real sklearn)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Params, load_params
from driftloop.errors import TrainingError
from driftloop.features import Dataset, make_dataset, split_by_date
from driftloop.pipeline import flat_metrics
from driftloop.sources import load_seattle, window
from driftloop.training import TrainedModel, evaluate, train_model
from tests.helpers import REPO_ROOT, write_fast_params

METRICS = {"roc_auc", "f1", "accuracy", "log_loss", "brier"}


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    file = tmp_path_factory.mktemp("params") / "params.yaml"
    file.write_text((REPO_ROOT / "params.yaml").read_text())
    write_fast_params(file)
    return load_params(file)


@pytest.fixture(scope="module")
def parts(params: Params) -> tuple[Dataset, Dataset]:
    frame = window(load_seattle(), "date", until=dt.date(2013, 6, 30))
    return split_by_date(make_dataset(frame, params), params.train.holdout_days)


@pytest.fixture(scope="module")
def trained(params: Params, parts: tuple[Dataset, Dataset]) -> TrainedModel:
    return train_model(params.train, *parts)


def test_same_data_and_params_give_identical_metrics(
    params: Params, parts: tuple[Dataset, Dataset], trained: TrainedModel
) -> None:
    again = train_model(params.train, *parts)
    assert again.holdout.metrics == trained.holdout.metrics
    assert again.holdout.segments == trained.holdout.segments
    assert again.cv == trained.cv
    assert flat_metrics(again) == flat_metrics(trained)


def test_a_different_seed_changes_the_model(params: Params, parts: tuple[Dataset, Dataset]) -> None:
    """Guards the test above: identical metrics are not just insensitivity to the fit."""
    other = params.train.model_copy(
        update={"model": "random_forest", "hyperparams": {"n_estimators": 20, "max_depth": 4}}
    )
    a = train_model(other, *parts)
    b = train_model(other.model_copy(update={"seed": 7}), *parts)
    assert a.holdout.metrics != b.holdout.metrics


def test_holdout_metrics_overall_and_per_season(
    params: Params, parts: tuple[Dataset, Dataset], trained: TrainedModel
) -> None:
    _, holdout = parts
    assert set(trained.holdout.metrics) == METRICS
    assert set(trained.holdout.segments) == set(holdout.segments) == {"winter", "spring", "summer"}
    for metrics in trained.holdout.segments.values():
        assert set(metrics) == METRICS
    assert trained.holdout.n_rows == len(holdout)
    assert 0.6 < trained.holdout.metrics["roc_auc"] <= 1.0  # rain tomorrow is learnable


def test_flat_metrics_names(trained: TrainedModel) -> None:
    names = set(flat_metrics(trained))
    assert {f"holdout_{m}" for m in METRICS} <= names
    assert {f"holdout_{s}_{m}" for s in ("winter", "spring", "summer") for m in METRICS} <= names
    assert {f"cv_{m}" for m in METRICS} <= names
    assert {"n_train", "n_holdout"} <= names


def test_segment_metrics_match_evaluating_the_segment_alone(
    parts: tuple[Dataset, Dataset], trained: TrainedModel
) -> None:
    _, holdout = parts
    summer = evaluate(trained.estimator, holdout.subset(holdout.segments == "summer"))
    assert summer.metrics == trained.holdout.segments["summer"]


def dry_days(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "date": pd.date_range("2013-01-01", periods=n, freq="D"),
            "precipitation": np.zeros(n),
            "temp_max": rng.normal(15, 5, n),
            "temp_min": rng.normal(7, 3, n),
            "wind": rng.gamma(2.0, 1.5, n),
        }
    )


def test_single_class_data_is_a_training_error(params: Params) -> None:
    fit, holdout = split_by_date(make_dataset(dry_days(120), params), 30)
    with pytest.raises(TrainingError, match="single class"):
        train_model(params.train, fit, holdout)


def test_too_little_data_is_a_training_error(
    params: Params, parts: tuple[Dataset, Dataset]
) -> None:
    fit, holdout = parts
    with pytest.raises(TrainingError, match="too little data"):
        train_model(params.train, fit.subset(np.arange(len(fit)) < 10), holdout)


def test_empty_holdout_is_a_training_error(params: Params, parts: tuple[Dataset, Dataset]) -> None:
    fit, holdout = parts
    with pytest.raises(TrainingError, match="holdout is empty"):
        train_model(params.train, fit, holdout.subset(np.zeros(len(holdout), dtype=bool)))


def test_unknown_hyperparameter_names_the_key(
    params: Params, parts: tuple[Dataset, Dataset]
) -> None:
    bad = params.train.model_copy(update={"hyperparams": {"max_iterations": 10}})
    with pytest.raises(TrainingError, match=r"train\.hyperparams"):
        train_model(bad, *parts)
