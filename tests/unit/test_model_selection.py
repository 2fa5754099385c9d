"""Model selection on the training part: the candidate by time-series CV, calibration only where
it lowers the CV log loss, the decision threshold chosen on out-of-fold predictions (real sklearn,
small synthetic problems whose answer is known)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.config import FeatureParams, TrainParams, parse_params
from driftloop.errors import ConfigError, TrainingError
from driftloop.features import Dataset
from driftloop.training import (
    DecisionModel,
    choose_threshold,
    evaluate,
    fit_calibrator,
    fit_candidate,
    score,
    threshold_of,
)
from tests.helpers import REPO_ROOT

LOGISTIC = {"model": "logistic_regression", "hyperparams": {"C": 1.0}}
BOOSTING = {
    "model": "hist_gradient_boosting",
    "hyperparams": {"max_iter": 60, "max_depth": 3, "learning_rate": 0.1, "min_samples_leaf": 20},
}
FEATURES = FeatureParams(numerical=[f"x{i}" for i in range(8)])


def dataset(X: pd.DataFrame, y: np.ndarray) -> Dataset:
    """Rows one day apart, in time order."""
    n = len(X)
    return Dataset(
        X.reset_index(drop=True),
        pd.Series(y.astype(int)),
        pd.Series(pd.date_range("2013-01-01", periods=n, freq="D")),
        pd.DataFrame(index=range(n)),
    )


def inputs(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"x{i}" for i in range(8)])


def linear_problem(n: int = 600, seed: int = 0) -> Dataset:
    """The log-odds are a sum of all eight inputs: a logistic regression is the true model."""
    X = inputs(n, seed)
    logit = 0.6 * X.sum(axis=1).to_numpy()
    y = np.random.default_rng(seed + 1).random(n) < 1 / (1 + np.exp(-logit))
    return dataset(X, y)


def step_problem(n: int = 600, seed: int = 0) -> Dataset:
    """Positive inside a band of one input: no line separates it, a tree finds it."""
    X = inputs(n, seed)
    band = (X["x0"].abs() < 0.7).to_numpy()
    y = np.where(np.random.default_rng(seed + 1).random(n) < 0.9, band, ~band)
    return dataset(X, y)


def train_params(**update: Any) -> TrainParams:
    raw: dict[str, Any] = {
        "candidates": {"logistic": LOGISTIC, "boosting": BOOSTING},
        "cv_splits": 4,
    }
    return TrainParams.model_validate({**raw, **update})


@pytest.mark.parametrize(
    ("problem", "winner", "loser"),
    [(linear_problem, "logistic", "boosting"), (step_problem, "boosting", "logistic")],
)
def test_selection_picks_the_candidate_with_the_better_cv_score(
    problem: Any, winner: str, loser: str
) -> None:
    model, selection = fit_candidate(train_params(), FEATURES, problem())
    assert selection.chosen == winner
    assert selection.scores[winner]["roc_auc"] > selection.scores[loser]["roc_auc"] + 0.03
    assert isinstance(model, DecisionModel) and model.candidate == winner
    metrics = selection.metrics()
    assert {f"candidate.{n}.cv_roc_auc" for n in ("logistic", "boosting")} <= set(metrics)
    assert metrics["cv_roc_auc"] == pytest.approx(selection.scores[winner]["roc_auc"])
    assert selection.params()["chosen_candidate"] == winner


def test_selection_follows_select_by() -> None:
    """The same family judged on another metric: every candidate's score is the same either way,
    and the chosen one is the best on the metric asked for."""
    data = step_problem()
    _, by_auc = fit_candidate(train_params(), FEATURES, data)
    _, by_loss = fit_candidate(train_params(select_by="log_loss"), FEATURES, data)
    assert by_loss.scores == by_auc.scores
    best = min(by_loss.scores, key=lambda n: by_loss.scores[n]["log_loss"])
    assert by_loss.chosen == best


def test_a_single_model_without_candidates_is_still_a_decision_model() -> None:
    model, selection = fit_candidate(
        TrainParams(model="logistic_regression"), FEATURES, linear_problem()
    )
    assert selection.chosen == "logistic_regression"
    assert list(selection.scores) == ["logistic_regression"]
    assert 0.0 < model.threshold < 1.0


def test_choose_threshold_on_predictions_whose_best_cut_is_far_from_one_half() -> None:
    """Negatives score 0-0.25, positives 0.2-0.4: at 0.5 nothing is positive."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(300), np.ones(100)].astype(int)
    proba = np.r_[rng.uniform(0.0, 0.25, 300), rng.uniform(0.2, 0.4, 100)]
    for metric in ("accuracy", "f1"):
        cut = choose_threshold(y, proba, metric)
        assert 0.18 <= cut <= 0.27
        assert score(y, proba, cut)[metric] > score(y, proba, 0.5)[metric] + 0.15


def rare_positives(n: int = 1500, seed: int = 0) -> Dataset:
    """About 8 % positives: the F1-best threshold lies well below 0.5."""
    X = inputs(n, seed)
    logit = -3.2 + 1.2 * X["x0"].to_numpy()
    y = np.random.default_rng(seed + 1).random(n) < 1 / (1 + np.exp(-logit))
    return dataset(X, y)


def test_the_f1_threshold_is_chosen_on_the_folds_and_used_by_evaluate() -> None:
    params = train_params(candidates={"logistic": LOGISTIC}, threshold_for="f1")
    model, selection = fit_candidate(params, FEATURES, rare_positives())
    assert selection.threshold == model.threshold
    assert model.threshold < 0.35
    holdout = rare_positives(seed=5)
    proba = model.predict_proba(holdout.X)[:, 1]
    y = holdout.y.to_numpy()
    evaluated = evaluate(model, holdout)
    assert evaluated.metrics == score(y, proba, model.threshold)
    assert evaluated.metrics["f1"] > score(y, proba, 0.5)["f1"] + 0.1
    assert (model.predict(holdout.X) == (proba >= model.threshold)).all()


def test_fixed_threshold_keeps_evaluation_threshold() -> None:
    params = train_params(candidates={"logistic": LOGISTIC}, threshold_for="fixed")
    model, selection = fit_candidate(params, FEATURES, rare_positives(), fixed_threshold=0.3)
    assert model.threshold == selection.threshold == 0.3
    assert threshold_of(model, 0.5) == 0.3
    assert threshold_of(object(), 0.4) == 0.4  # a model without one: the params' threshold


OVERCONFIDENT = {
    "model": "hist_gradient_boosting",
    "hyperparams": {
        "max_iter": 150,
        "learning_rate": 0.3,
        "max_depth": None,
        "min_samples_leaf": 5,
        "early_stopping": False,
    },
}


def test_calibration_is_applied_where_it_lowers_cv_log_loss() -> None:
    """Boosting run long and deep on noisy rows is overconfident: a calibration map lowers its
    CV log loss and is applied. A well-specified logistic regression stays uncalibrated."""
    data = linear_problem(n=1200)
    model, selection = fit_candidate(
        train_params(candidates={"deep": OVERCONFIDENT}), FEATURES, data
    )
    assert selection.calibration in ("sigmoid", "isotonic")
    losses = selection.calibration_log_loss
    assert losses[selection.calibration] < losses["none"] - 0.05
    assert model.calibrator is not None and model.calibration == selection.calibration
    assert selection.params()["calibration"] == selection.calibration
    raw = model.pipeline.predict_proba(data.X)[:, 1]
    assert not np.allclose(model.predict_proba(data.X)[:, 1], raw)

    model, selection = fit_candidate(train_params(candidates={"lr": LOGISTIC}), FEATURES, data)
    assert selection.calibration == "none"
    assert model.calibrator is None
    losses = selection.calibration_log_loss
    assert set(losses) >= {"none", "sigmoid"}
    assert min(losses.values()) >= losses["none"] - 1e-4


def test_calibration_none_never_calibrates() -> None:
    model, selection = fit_candidate(
        train_params(candidates={"deep": OVERCONFIDENT}, calibration="none"),
        FEATURES,
        linear_problem(n=1200),
    )
    assert selection.calibration == "none" and model.calibrator is None
    assert selection.calibration_log_loss == {}


def test_cv_rows_are_capped() -> None:
    _, selection = fit_candidate(
        train_params(candidates={"lr": LOGISTIC}, cv_max_rows=300), FEATURES, linear_problem()
    )
    assert selection.n_cv_rows < 300


def test_refitted_keeps_candidate_calibration_and_threshold() -> None:
    data = linear_problem()
    model, _ = fit_candidate(train_params(), FEATURES, data.subset(np.arange(len(data)) < 400))
    again = model.refitted(data.X, data.y)
    assert (again.candidate, again.calibrator, again.threshold) == (
        model.candidate,
        model.calibrator,
        model.threshold,
    )
    assert again.pipeline is not model.pipeline
    assert not np.allclose(again.predict_proba(data.X), model.predict_proba(data.X))


def test_a_bad_candidate_hyperparameter_names_its_key() -> None:
    bad = train_params(
        candidates={
            "boosting": {"model": "hist_gradient_boosting", "hyperparams": {"max_iterations": 5}}
        }
    )
    with pytest.raises(TrainingError, match=r"train\.candidates\.boosting\.hyperparams"):
        fit_candidate(bad, FEATURES, linear_problem())
    bad = train_params(
        candidates={"lr": {"model": "logistic_regression", "hyperparams": {"C": -1}}}
    )
    with pytest.raises(TrainingError, match=r"train\.candidates\.lr\.hyperparams"):
        fit_candidate(bad, FEATURES, linear_problem())


@pytest.mark.parametrize(
    ("candidates", "key"),
    [
        ({"fast": {"model": "xgboost"}}, "train.candidates.fast.model"),
        (["logistic_regression", "gradient_boost"], "train.candidates.gradient_boost.model"),
        ({"fast": {"model": "logistic_regression", "c": 1}}, "train.candidates.fast.c"),
    ],
)
def test_a_wrong_candidate_is_a_one_line_config_error_naming_the_key(
    candidates: Any, key: str
) -> None:
    import yaml

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["train"]["candidates"] = candidates
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert f"key '{key}'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_sigmoid_that_would_reverse_the_ranking_is_not_applied() -> None:
    """The relation turns round after the first third: the folds' models, fitted on the past,
    score the later rows backwards, and a Platt map fitted on them slopes down. Applied to the
    final model (fitted on every row, mostly the new relation) it would reverse its ranking:
    it is refused and the model stays uncalibrated."""
    rng = np.random.default_rng(3)
    n = 300
    X = pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"x{i}" for i in range(8)])
    sign = np.where(np.arange(n) < n // 3, 1.0, -1.0)
    y = (sign * X["x0"].to_numpy() + 0.3 * rng.normal(size=n) > 0).astype(int)
    model, selection = fit_candidate(
        train_params(candidates={"lr": LOGISTIC}, calibration="sigmoid"), FEATURES, dataset(X, y)
    )
    assert selection.calibration == "none" and model.calibrator is None
    assert selection.calibration_log_loss["sigmoid"] == float("inf")  # it fell in a fold
    recent = X.iloc[n // 3 :]
    assert score(y[n // 3 :], model.predict_proba(recent)[:, 1])["roc_auc"] > 0.8


def test_fit_calibrator_refuses_a_falling_sigmoid() -> None:
    rng = np.random.default_rng(4)
    raw = rng.uniform(0.05, 0.95, 500)
    y = (rng.uniform(size=500) < raw).astype(int)
    assert fit_calibrator("sigmoid", raw, y).coef_[0, 0] > 0
    assert fit_calibrator("sigmoid", raw, 1 - y) is None
