"""Fitting and evaluating a candidate on a slice of the bundled Seattle data (real sklearn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Params, load_params
from driftloop.errors import TrainingError
from driftloop.features import Dataset, make_dataset, split_by_time
from driftloop.stages import Split, evaluate_fitted, flat_metrics, train
from driftloop.training import TrainedModel, evaluate
from tests.helpers import REPO_ROOT, write_fast_params
from tests.unit.test_features import flights_like

METRICS = {"roc_auc", "f1", "accuracy", "log_loss", "brier"}


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    file = tmp_path_factory.mktemp("params") / "params.yaml"
    file.write_text((REPO_ROOT / "params.yaml").read_text())
    write_fast_params(file)
    return load_params(file)


def train_model(params: Params, fit: Dataset, holdout: Dataset) -> TrainedModel:
    """The train and evaluate stages, as the pipeline runs them."""
    split = Split(fit, holdout)
    return evaluate_fitted(params, train(params, split), split)


def with_train(params: Params, **update: object) -> Params:
    """Params with train keys changed; a single `model`/`hyperparams` replaces the candidates."""
    if "model" in update or "hyperparams" in update:
        update = {"candidates": {}, **update}
    return params.model_copy(update={"train": params.train.model_copy(update=update)})


@pytest.fixture(scope="module")
def parts(params: Params) -> tuple[Dataset, Dataset]:
    from driftloop.sources import load_seattle

    seattle = load_seattle()
    frame = seattle[seattle["date"] <= "2013-06-30"]
    return split_by_time(make_dataset(frame, params), params.train.holdout_days)


@pytest.fixture(scope="module")
def trained(params: Params, parts: tuple[Dataset, Dataset]) -> TrainedModel:
    return train_model(params, *parts)


def test_same_data_and_params_give_identical_metrics(
    params: Params, parts: tuple[Dataset, Dataset], trained: TrainedModel
) -> None:
    again = train_model(params, *parts)
    assert again.holdout.metrics == trained.holdout.metrics
    assert again.holdout.segments == trained.holdout.segments
    assert again.cv == trained.cv
    assert flat_metrics(again) == flat_metrics(trained)


def test_a_different_seed_changes_the_model(params: Params, parts: tuple[Dataset, Dataset]) -> None:
    """Guards the test above: identical metrics are not just insensitivity to the fit."""
    other = with_train(
        params, model="random_forest", hyperparams={"n_estimators": 20, "max_depth": 4}
    )
    a = train_model(other, *parts)
    b = train_model(with_train(other, seed=7), *parts)
    assert a.holdout.metrics != b.holdout.metrics


def test_holdout_metrics_overall_and_per_season(
    params: Params, parts: tuple[Dataset, Dataset], trained: TrainedModel
) -> None:
    _, holdout = parts
    seasons = {"season/winter", "season/spring", "season/summer"}
    assert set(trained.holdout.metrics) == METRICS
    assert set(trained.holdout.segments) == {f"season/{s}" for s in holdout.segments["season"]}
    assert set(trained.holdout.segments) == seasons
    for metrics in trained.holdout.segments.values():
        assert set(metrics) == METRICS | {"n"}
    assert trained.holdout.n_rows == len(holdout)
    assert 0.6 < trained.holdout.metrics["roc_auc"] <= 1.0  # rain tomorrow is learnable


def test_flat_metrics_names(trained: TrainedModel) -> None:
    names = set(flat_metrics(trained))
    assert {f"holdout_{m}" for m in METRICS} <= names
    seasons = ("winter", "spring", "summer")
    assert {f"holdout_season/{s}_{m}" for s in seasons for m in METRICS} <= names
    assert {f"cv_{m}" for m in METRICS} <= names
    assert {"n_train", "n_holdout"} <= names


def test_segment_metrics_match_evaluating_the_segment_alone(
    parts: tuple[Dataset, Dataset], trained: TrainedModel
) -> None:
    _, holdout = parts
    summer = evaluate(trained.estimator, holdout.subset(holdout.segments["season"] == "summer"))
    expected = trained.holdout.segments["season/summer"]
    assert {**summer.metrics, "n": summer.n_rows} == expected


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
    fit, holdout = split_by_time(make_dataset(dry_days(120), params), 30)
    with pytest.raises(TrainingError, match="single class"):
        train_model(params, fit, holdout)


def test_too_little_data_is_a_training_error(
    params: Params, parts: tuple[Dataset, Dataset]
) -> None:
    fit, holdout = parts
    with pytest.raises(TrainingError, match="too little data"):
        train_model(params, fit.subset(np.arange(len(fit)) < 10), holdout)


def test_empty_holdout_is_a_training_error(params: Params, parts: tuple[Dataset, Dataset]) -> None:
    fit, holdout = parts
    with pytest.raises(TrainingError, match="holdout is empty"):
        train_model(params, fit, holdout.subset(np.zeros(len(holdout), dtype=bool)))


def test_unknown_hyperparameter_names_the_key(
    params: Params, parts: tuple[Dataset, Dataset]
) -> None:
    bad = with_train(params, hyperparams={"max_iterations": 10})
    with pytest.raises(TrainingError, match=r"train\.hyperparams"):
        train_model(bad, *parts)


# --- the model is one self-contained scikit-learn Pipeline ---------------------------------------


def event_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Flight-like events: the carrier matters, distance a little; several rows per timestamp."""
    rng = np.random.default_rng(seed)
    carrier = rng.choice(["UA", "AA", "DL", "B6"], n)
    distance = rng.uniform(100, 2500, n)
    late = rng.random(n) < np.where(carrier == "B6", 0.6, 0.15) + distance / 25_000
    return pd.DataFrame(
        {
            "id": [f"f{i}" for i in range(n)],
            "t": pd.Timestamp("2013-01-01")
            + pd.to_timedelta(np.sort(rng.integers(0, 60 * 24, n)), "h") // 6,
            "carrier": carrier,
            "distance": distance,
            "delay": np.where(late, 30.0, 0.0),
        }
    )


@pytest.mark.parametrize(
    "model", ["hist_gradient_boosting", "random_forest", "logistic_regression"]
)
def test_categorical_features_are_encoded_inside_the_model_and_unseen_ones_still_score(
    params: Params, model: str
) -> None:
    hp = {"logistic_regression": {}}.get(model, {"max_depth": 4})
    own = with_train(flights_like(params), model=model, hyperparams=hp, holdout_days=5)
    fit, holdout = split_by_time(make_dataset(event_rows(3000), own), 5)
    trained = train_model(own, fit, holdout)
    assert trained.holdout.metrics["roc_auc"] > 0.65  # the carrier signal is learned
    rows = holdout.X.head(3).copy()
    rows["carrier"] = ["ZZ", None, "UA"]  # an unseen category and a missing one
    proba = trained.estimator.predict_proba(rows)[:, 1]
    assert np.isfinite(proba).all() and ((proba >= 0) & (proba <= 1)).all()
    assert {"carrier/UA", "carrier/B6"} <= set(trained.holdout.segments)
