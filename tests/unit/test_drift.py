"""driftloop.drift.compute_drift: real Evidently on Seattle weather windows and tiny inline frames.

The retrain decision table is in test_retrain_decision.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import FeatureDrift, MonitorParams
from driftloop.drift import (
    CannotEvaluate,
    ColumnDrift,
    DriftSummary,
    _parse_snapshot,
    compute_drift,
    sample_rows,
)
from driftloop.errors import ConfigError, DriftloopError

FEATURES = ["precipitation", "temp_max", "temp_min", "wind"]
KS = MonitorParams(method="ks", threshold=0.05, min_rows=14)


@pytest.fixture(scope="module")
def evidently() -> None:
    """Pay Evidently's import (several seconds) once per module, not per test."""
    import evidently  # noqa: F401


@pytest.fixture(scope="module")
def seattle() -> pd.DataFrame:
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["date"] = pd.to_datetime(frame["date"])
    # A stand-in model output: "rain probability" falling with temperature; it drifts by season.
    frame["prediction"] = 1.0 / (1.0 + np.exp((frame["temp_max"] - 12.0) / 4.0))
    return frame


def window(frame: pd.DataFrame, months: list[int], years: list[int]) -> pd.DataFrame:
    dates = frame["date"].dt
    return frame[dates.month.isin(months) & dates.year.isin(years)].reset_index(drop=True)


SUMMER, WINTER, SPRING = [6, 7, 8], [12, 1, 2], [3, 4, 5]
ALL_YEARS = [2012, 2013, 2014, 2015]


@pytest.fixture(scope="module")
def season_report(
    evidently: None, seattle: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[DriftSummary, Path]:
    """Summer vs winter, with the prediction and both report files: computed once, read by many."""
    out = tmp_path_factory.mktemp("drift")
    summary = compute_drift(
        window(seattle, SUMMER, ALL_YEARS),
        window(seattle, WINTER, ALL_YEARS),
        FEATURES,
        ["weather"],
        KS,
        prediction_column="prediction",
        html_path=out / "drift.html",
        json_path=out / "sub" / "drift.json",
    )
    return summary, out


# --- compute_drift on real data -----------------------------------------------------------------


def test_summer_vs_winter_drifts_on_temperatures(season_report: tuple[DriftSummary, Path]) -> None:
    summary, _ = season_report
    by_column = {c.column: c for c in summary.columns}
    assert [c.column for c in summary.columns] == [*FEATURES, "weather"]
    assert by_column["temp_max"].drifted and by_column["temp_min"].drifted
    assert by_column["temp_max"].method == "ks" and by_column["temp_max"].kind == "numerical"
    assert by_column["temp_max"].threshold == 0.05
    assert by_column["temp_max"].score is not None and by_column["temp_max"].score < 1e-10
    assert by_column["weather"].method == "jensenshannon"
    assert by_column["weather"].kind == "categorical"
    assert summary.drifted_share >= 0.5
    assert set(summary.drifted_columns) >= {"temp_max", "temp_min"}
    assert summary.n_reference == summary.n_reference_sampled == 368
    assert summary.n_current == summary.n_current_sampled == 361
    assert not summary.sampled


def test_prediction_drift_is_reported_but_not_counted(
    season_report: tuple[DriftSummary, Path],
) -> None:
    summary, _ = season_report
    assert summary.prediction is not None
    assert summary.prediction.column == "prediction"
    assert summary.prediction.drifted
    assert "prediction" not in summary.drifted_columns
    assert summary.drifted_share == len(summary.drifted_columns) / (len(FEATURES) + 1)


def test_reports_are_written_and_summary_is_json_safe(
    season_report: tuple[DriftSummary, Path],
) -> None:
    summary, out = season_report
    html = (out / "drift.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "temp_max" in html
    saved = json.loads((out / "sub" / "drift.json").read_text())
    assert {m["config"]["column"] for m in saved["metrics"]} == {*FEATURES, "weather", "prediction"}
    as_dict = json.loads(json.dumps(summary.to_dict(), allow_nan=False))
    assert as_dict["drifted_columns"] == list(summary.drifted_columns)
    assert as_dict["prediction"]["drifted"] is True
    assert {c["column"]: c["kind"] for c in as_dict["columns"]}["weather"] == "categorical"


def test_without_html_the_same_verdicts_come_without_figures(
    season_report: tuple[DriftSummary, Path], seattle: pd.DataFrame, tmp_path: Path
) -> None:
    """No HTML wanted: Evidently's calculation without plotly, the very same scores and tests."""
    with_html, out = season_report
    summary = compute_drift(
        window(seattle, SUMMER, ALL_YEARS),
        window(seattle, WINTER, ALL_YEARS),
        FEATURES,
        ["weather"],
        KS,
        prediction_column="prediction",
        json_path=tmp_path / "drift.json",
    )
    assert summary == with_html
    plain = json.loads((tmp_path / "drift.json").read_text())
    rendered = json.loads((out / "sub" / "drift.json").read_text())
    assert {m["config"]["type"].split(":")[-1] for m in plain["metrics"]} == {"ValueDriftScore"}
    assert {m["config"]["type"].split(":")[-1] for m in rendered["metrics"]} == {"ValueDrift"}
    assert [m["value"] for m in plain["metrics"]] == [m["value"] for m in rendered["metrics"]]
    assert [t["status"] for t in plain["tests"]] == [t["status"] for t in rendered["tests"]]


def test_same_season_in_other_years_mostly_does_not_drift(
    evidently: None, seattle: pd.DataFrame
) -> None:
    summary = compute_drift(
        window(seattle, SPRING, [2012]), window(seattle, SPRING, [2013]), FEATURES, [], KS
    )
    assert summary.drifted_share < KS.drift_share
    assert "temp_max" not in summary.drifted_columns


def test_interleaved_days_do_not_drift(evidently: None, seattle: pd.DataFrame) -> None:
    year = window(seattle, list(range(1, 13)), [2014])
    even = year["date"].dt.day % 2 == 0
    summary = compute_drift(
        year[even], year[~even], FEATURES, [], KS, prediction_column="prediction"
    )
    assert summary.drifted_columns == ()
    assert summary.drifted_share == 0.0
    assert summary.prediction is not None and not summary.prediction.drifted


def test_distance_method_uses_evidently_direction_and_default_threshold(
    evidently: None, seattle: pd.DataFrame
) -> None:
    monitor = KS.model_copy(update={"per_feature": {"wind": FeatureDrift(method="wasserstein")}})
    summer, winter = window(seattle, SUMMER, ALL_YEARS), window(seattle, WINTER, ALL_YEARS)
    drifted = {c.column: c for c in compute_drift(summer, winter, FEATURES, [], monitor).columns}
    assert drifted["wind"].method == "wasserstein"
    assert drifted["wind"].threshold == 0.1  # Evidently's default for the method, not 0.05
    assert drifted["wind"].drifted and (drifted["wind"].score or 0) >= 0.1  # large = drift
    assert drifted["temp_max"].method == "ks"

    year = window(seattle, list(range(1, 13)), [2014])
    even = year["date"].dt.day % 2 == 0
    calm = compute_drift(year[even], year[~even], FEATURES, [], monitor).columns
    wind = {c.column: c for c in calm}["wind"]
    assert not wind.drifted and wind.score is not None and wind.score < 0.1


# --- categorical columns and the prediction, on tiny inline frames ----------------------------

CHI = MonitorParams(categorical_method="chisquare", categorical_threshold=0.05, min_rows=14)


def mix(counts: dict[object, int], seed: int = 0) -> pd.Series:
    """A category column with exactly these counts, shuffled (deterministic for the test)."""
    values = pd.Series([value for value, n in counts.items() for _ in range(n)])
    return values.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def category_frames(
    a: object, b: object, c: object
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reference 50/30/20, the same mix reshuffled, and a shifted mix 20/30/50 (100 rows each)."""
    reference = pd.DataFrame({"kind": mix({a: 50, b: 30, c: 20})})
    same = pd.DataFrame({"kind": mix({a: 50, b: 30, c: 20}, seed=1)})
    shifted = pd.DataFrame({"kind": mix({a: 20, b: 30, c: 50}, seed=2)})
    return reference, same, shifted


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        pytest.param(("bus", "car", "bike"), "object", id="strings"),
        pytest.param((1, 2, 3), "int64", id="ints"),
        pytest.param(("bus", "car", "bike"), "category", id="pandas-category"),
    ],
)
def test_categorical_drift_with_chisquare(evidently: None, values: tuple, dtype: str) -> None:
    reference, same, shifted = (f.astype({"kind": dtype}) for f in category_frames(*values))
    calm = compute_drift(reference, same, [], ["kind"], CHI).columns[0]
    moved = compute_drift(reference, shifted, [], ["kind"], CHI).columns[0]
    assert (calm.kind, calm.method, calm.threshold) == ("categorical", "chisquare", 0.05)
    assert not calm.drifted and calm.score == pytest.approx(1.0)  # the very same mix
    assert moved.drifted and moved.score is not None and moved.score < 1e-6
    assert moved.kind == "categorical" and moved.method == "chisquare"


def test_int_valued_categorical_is_declared_categorical_to_evidently(
    evidently: None, tmp_path: Path
) -> None:
    """Ints (or bools) in `categorical` are categories for Evidently, not numbers."""
    reference, _, shifted = category_frames(1, 2, 3)
    reference["flag"] = mix({True: 70, False: 30})
    shifted["flag"] = mix({True: 30, False: 70})
    summary = compute_drift(
        reference, shifted, [], ["kind", "flag"], CHI, json_path=tmp_path / "drift.json"
    )
    assert [(c.column, c.kind, c.method, c.drifted) for c in summary.columns] == [
        ("kind", "categorical", "chisquare", True),
        ("flag", "categorical", "chisquare", True),
    ]
    saved = json.loads((tmp_path / "drift.json").read_text())
    assert {m["config"]["method"] for m in saved["metrics"]} == {"chisquare"}
    # Declared numerical, the same ints get the numerical method instead.
    as_number = compute_drift(reference, shifted, ["kind"], [], CHI).columns[0]
    assert (as_number.kind, as_number.method) == ("numerical", "ks")


def probabilities(a: float, b: float, n: int = 300, seed: int = 0) -> pd.Series:
    return pd.Series(np.random.default_rng(seed).beta(a, b, n))


def test_prediction_drift_on_probabilities(evidently: None) -> None:
    """The prediction is tested with monitor.prediction_method, whatever the numerical method."""
    monitor = MonitorParams(
        method="ks", prediction_method="wasserstein", prediction_threshold=0.2, min_rows=14
    )
    low = pd.DataFrame({"x": probabilities(2, 2, seed=1), "proba": probabilities(2, 5, seed=2)})
    high = pd.DataFrame({"x": probabilities(2, 2, seed=3), "proba": probabilities(5, 2, seed=4)})
    shuffled = low.assign(proba=low["proba"].sample(frac=1.0, random_state=5).to_numpy())

    moved = compute_drift(low, high, ["x"], [], monitor, prediction_column="proba")
    calm = compute_drift(low, shuffled, ["x"], [], monitor, prediction_column="proba")
    assert moved.prediction is not None and calm.prediction is not None
    assert (moved.prediction.method, moved.prediction.threshold) == ("wasserstein", 0.2)
    assert moved.prediction.kind == "numerical"
    assert moved.prediction.drifted and (moved.prediction.score or 0) >= 0.2
    assert not calm.prediction.drifted and calm.prediction.score == pytest.approx(0.0)
    assert moved.columns[0].method == "ks" and moved.drifted_columns == ()


# --- constant columns are evidence, not errors ---------------------------------------------------


def test_dry_weeks_against_a_rainy_reference_drift(
    evidently: None, seattle: pd.DataFrame, tmp_path: Path
) -> None:
    """July 2013 had no rain at all: tested by KS as usual against rainy spring, and drifted."""
    summary = compute_drift(
        window(seattle, SPRING, [2013]),
        window(seattle, [7], [2013]),
        FEATURES,
        [],
        KS,
        html_path=tmp_path / "drift.html",
    )
    rain = summary.columns[0]
    assert rain.column == "precipitation" and rain.method == "ks"
    assert rain.drifted and rain.score is not None and rain.score < 0.05
    assert rain.note == "constant 0.0 in current, varies in reference"
    assert (tmp_path / "drift.html").exists()


def test_dry_month_against_a_nearly_dry_one_is_judged_as_usual(
    evidently: None, seattle: pd.DataFrame
) -> None:
    """July 2012 had 7 rainy days: KS cannot tell 31 dry days from it; a verdict, not an error."""
    summary = compute_drift(
        window(seattle, [7], [2012]), window(seattle, [7], [2013]), FEATURES, [], KS
    )
    rain = summary.columns[0]
    assert rain.score is not None and math.isfinite(rain.score) and rain.score > 0.05
    assert not rain.drifted and rain.note is not None and "constant 0.0 in current" in rain.note


def test_a_test_without_a_valid_result_on_a_constant_window_means_drifted(evidently: None) -> None:
    """Epps-Singleton needs a spread (IQR > 0) in the pooled values: none, so drifted, noted."""
    monitor = MonitorParams(method="es", min_rows=14)
    reference = pd.DataFrame({"rain": np.r_[np.zeros(80), np.linspace(0.5, 20.0, 20)]})
    current = pd.DataFrame({"rain": np.zeros(28)})
    column = compute_drift(reference, current, ["rain"], [], monitor).columns[0]
    assert column.drifted and column.score is None
    assert column.note is not None
    assert column.note.startswith("constant 0.0 in current, varies in reference; es gives no")
    assert column.note.endswith(": drifted")
    assert json.dumps(column.to_dict(), allow_nan=False)


RAIN = np.r_[np.zeros(20), np.linspace(0.5, 10.0, 20)]


@pytest.mark.parametrize(
    ("reference", "current", "kind", "drifted", "note"),
    [
        pytest.param([0.0] * 30, [0.0] * 20, "numerical", False, "constant 0.0 in both", id="same"),
        pytest.param(
            ["dry"] * 30,
            ["dry"] * 20,
            "categorical",
            False,
            "constant 'dry' in both",
            id="same-cat",
        ),
        pytest.param(
            [0.0] * 30,
            [1.5] * 20,
            "numerical",
            True,
            "constant 0.0 in reference, 1.5 in current",
            id="different",
        ),
        pytest.param(
            [0.0] * 30,
            list(RAIN),
            "numerical",
            True,
            "constant 0.0 in reference, varies in current",
            id="reference-only",
        ),
        pytest.param(
            [True] * 30,
            [True] * 10 + [False] * 10,
            "categorical",
            True,
            "constant True in reference, varies in current",
            id="reference-only-bool",
        ),
    ],
)
def test_constant_columns_are_judged(
    reference: list, current: list, kind: str, drifted: bool, note: str
) -> None:
    """No Evidently run needed: the constants themselves are the answer."""
    numerical, categorical = (["x"], []) if kind == "numerical" else ([], ["x"])
    summary = compute_drift(
        pd.DataFrame({"x": reference}), pd.DataFrame({"x": current}), numerical, categorical, KS
    )
    column = summary.columns[0]
    assert (column.drifted, column.kind, column.score) == (drifted, kind, None)
    assert column.note is not None and column.note.startswith(note)
    assert summary.drifted_share == float(drifted)
    json.dumps(summary.to_dict(), allow_nan=False)  # strict JSON: no NaN anywhere


# --- sampling -----------------------------------------------------------------------------------


def test_frames_above_max_rows_are_sampled_reproducibly(evidently: None) -> None:
    rng = np.random.default_rng(7)
    reference = pd.DataFrame({"x": rng.normal(0, 1, 5000), "c": rng.choice(list("abc"), 5000)})
    current = pd.DataFrame({"x": rng.normal(0.05, 1, 3000), "c": rng.choice(list("abc"), 3000)})
    monitor = KS.model_copy(update={"max_rows": 1000})

    first = compute_drift(reference, current, ["x"], ["c"], monitor, seed=3)
    again = compute_drift(reference, current, ["x"], ["c"], monitor, seed=3)
    other = compute_drift(reference, current, ["x"], ["c"], monitor, seed=4)
    assert first == again
    assert (first.n_reference, first.n_current) == (5000, 3000)
    assert (first.n_reference_sampled, first.n_current_sampled) == (1000, 1000)
    assert first.sampled and first.to_dict()["n_current_sampled"] == 1000
    assert [c.score for c in first.columns] != [c.score for c in other.columns]

    whole = compute_drift(reference, current, ["x"], ["c"], KS, seed=3)
    assert not whole.sampled and whole.n_reference_sampled == 5000


def test_sample_rows_keeps_order_and_small_frames() -> None:
    frame = pd.DataFrame({"x": range(10)})
    assert sample_rows(frame, 10, seed=0) is frame
    picked = sample_rows(frame, 4, seed=0)
    assert len(picked) == 4 and picked["x"].is_monotonic_increasing
    assert picked.equals(sample_rows(frame, 4, seed=0))


# --- fail closed ----------------------------------------------------------------------------


def _with(frame: pd.DataFrame, **columns: object) -> pd.DataFrame:
    return frame.assign(**columns)


@pytest.mark.parametrize(
    ("make_reference", "make_current", "message"),
    [
        pytest.param(
            lambda f: f,
            lambda f: f.head(5),
            "current has 5 rows, fewer than min_rows=14",
            id="too-few-rows",
        ),
        pytest.param(
            lambda f: f,
            lambda f: f.drop(columns=["wind"]),
            "column 'wind' is missing from current",
            id="missing-column",
        ),
        pytest.param(
            lambda f: _with(f, temp_min=np.nan),
            lambda f: f,
            "column 'temp_min' is entirely NaN in reference",
            id="all-nan",
        ),
        pytest.param(
            lambda f: f,
            lambda f: _with(f, weather=None),
            "column 'weather' is entirely NaN in current",
            id="all-nan-categorical",
        ),
        pytest.param(
            lambda f: f,
            lambda f: _with(f, wind=np.r_[[1.0] * 10, [np.nan] * (len(f) - 10)]),
            "column 'wind' has 10 non-missing values in current",
            id="mostly-nan",
        ),
        pytest.param(
            lambda f: f,
            lambda f: _with(f, wind="calm"),
            "column 'wind' is declared numerical but holds object values",
            id="text-in-numerical",
        ),
        pytest.param(
            lambda f: f,
            lambda f: f.drop(columns=["prediction"]),
            "column 'prediction' is missing from current",
            id="missing-prediction",
        ),
    ],
)
def test_cannot_evaluate(
    evidently: None, seattle: pd.DataFrame, make_reference, make_current, message: str
) -> None:
    spring = window(seattle, SPRING, [2013])
    with pytest.raises(CannotEvaluate, match=message) as caught:
        compute_drift(
            make_reference(spring),
            make_current(spring),
            FEATURES,
            ["weather"],
            KS,
            prediction_column="prediction",
        )
    assert isinstance(caught.value, DriftloopError)
    assert "\n" not in str(caught.value)


def test_nan_score_cannot_be_evaluated(season_report: tuple[DriftSummary, Path]) -> None:
    _, out = season_report
    raw = json.loads((out / "sub" / "drift.json").read_text())
    kinds = {**dict.fromkeys([*FEATURES, "prediction"], "numerical"), "weather": "categorical"}
    parsed = _parse_snapshot(raw, kinds)  # type: ignore[arg-type]
    assert {c.column: c.kind for c in parsed} == kinds
    raw["metrics"][1]["value"] = float("nan")
    with pytest.raises(CannotEvaluate, match=r"column 'temp_max': drift score \(ks\) is NaN"):
        _parse_snapshot(raw, kinds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("monitor", "key"),
    [
        (MonitorParams(method="no_such_test"), "monitor.method"),
        (MonitorParams(categorical_method="no_such_test"), "monitor.categorical_method"),
        (MonitorParams(categorical_method="ks"), "monitor.categorical_method"),  # numerical only
        (MonitorParams(prediction_method="chisquare"), "monitor.prediction_method"),
        (
            MonitorParams(per_feature={"weather": FeatureDrift(method="ks")}),
            "monitor.per_feature.weather.method",
        ),
    ],
)
def test_unknown_or_misfit_method_is_a_config_error(
    evidently: None, seattle: pd.DataFrame, monitor: MonitorParams, key: str
) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        compute_drift(
            seattle[:700],
            seattle[700:],
            ["temp_max"],
            ["weather"],
            monitor,
            prediction_column="prediction",
        )


def test_no_columns_or_a_column_in_two_roles_is_refused() -> None:
    frame = pd.DataFrame({"x": range(20)})
    with pytest.raises(CannotEvaluate, match="no columns to monitor"):
        compute_drift(frame, frame, [], [], KS)
    with pytest.raises(ValueError, match=r"more than one role.*\['x'\]"):
        compute_drift(frame, frame, ["x"], [], KS, prediction_column="x")


def test_column_drift_to_dict_keeps_infinite_and_missing_scores_json_safe() -> None:
    infinite = ColumnDrift("wind", "kl_div", math.inf, 0.1, True)
    assert json.loads(json.dumps(infinite.to_dict(), allow_nan=False))["score"] == "inf"
    untested = ColumnDrift("rain", "ks", None, 0.05, False, "numerical", "constant 0.0 in both")
    assert json.loads(json.dumps(untested.to_dict(), allow_nan=False))["score"] is None
