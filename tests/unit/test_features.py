"""Target, features, seasons and the time split on tiny inline frames."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from driftloop import labels
from driftloop.config import Params, load_params
from driftloop.features import (
    SEASONS,
    feature_frame,
    label,
    make_dataset,
    season_of,
    split_by_time,
    time_folds,
)
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


def daily(n: int, start: str = "2013-01-01", seed: int = 0) -> pd.DataFrame:
    """n consecutive days of plausible weather (a few dry days guaranteed)."""
    rng = np.random.default_rng(seed)
    rain = rng.gamma(0.6, 4.0, n) * (rng.random(n) < 0.5)
    return pd.DataFrame(
        {
            "date": pd.date_range(start, periods=n, freq="D"),
            "precipitation": rain.round(1),
            "temp_max": rng.normal(15, 6, n).round(1),
            "temp_min": rng.normal(7, 4, n).round(1),
            "wind": rng.gamma(2.0, 1.5, n).round(1),
            "weather": rng.choice(["sun", "rain", "fog"], n),
        }
    )


def test_target_is_next_days_precipitation_above_zero(params: Params) -> None:
    frame = daily(6)
    frame["precipitation"] = [0.0, 1.2, 0.0, 0.0, 3.0, 0.5]

    data = make_dataset(frame, params)

    assert data.y.tolist() == [1, 0, 0, 1, 1]  # day t labelled by day t+1; the last is unknown
    assert data.timestamps.tolist() == frame["date"].iloc[:5].tolist()
    assert "rain_tomorrow" not in data.X.columns and "weather" not in data.X.columns


def test_target_threshold_is_strict_and_unknown_future_is_nan(params: Params) -> None:
    frame = daily(4)
    frame["precipitation"] = [5.0, 0.0, 0.0001, 7.0]

    labels = label(frame, params.target, params.data)

    assert labels.iloc[:3].tolist() == [0.0, 1.0, 1.0]
    assert np.isnan(labels.iloc[3])


def test_unlabelled_rows_are_kept_apart(params: Params) -> None:
    frame = daily(10)
    assert len(make_dataset(frame, params)) == 9
    assert len(make_dataset(frame, params, labelled_only=False)) == 10


def test_rows_are_ordered_by_date_whatever_the_input_order(params: Params) -> None:
    frame = daily(20)
    shuffled = frame.sample(frac=1.0, random_state=3)

    a, b = make_dataset(frame, params), make_dataset(shuffled, params)

    pd.testing.assert_frame_equal(a.X, b.X)
    pd.testing.assert_series_equal(a.y, b.y)


def test_feature_columns_follow_params(params: Params) -> None:
    X = feature_frame(daily(10), params.features, params.data)
    expected = {"doy_sin", "doy_cos"}
    for col in params.features.numerical:
        expected |= {col} | {f"{col}_lag{k}" for k in params.features.lags.periods}
        expected |= {f"{col}_mean{w}" for w in params.features.rolling.windows}
    assert set(X.columns) == expected
    assert X["precipitation_lag1"].iloc[1:].tolist() == X["precipitation"].iloc[:-1].tolist()


Builder = Callable[[pd.DataFrame], pd.DataFrame]


def leaking_days(
    build: Builder, frame: pd.DataFrame, numeric: list[str], alteration: str
) -> list[int]:
    """Days t whose feature row changes when the rows after t are altered or removed."""
    full = build(frame)
    rng = np.random.default_rng(7)
    leaks: list[int] = []
    for t in range(len(frame) - 1):
        later = frame.copy()
        if alteration == "change":
            noise = rng.normal(0, 50, (len(frame) - t - 1, len(numeric)))
            later.loc[t + 1 :, numeric] = later.loc[t + 1 :, numeric].to_numpy() + noise
        else:
            later = later.iloc[: t + 1]
        if not build(later).iloc[t].equals(full.iloc[t]):
            leaks.append(t)
    return leaks


@pytest.mark.parametrize("alteration", ["change", "remove"])
def test_features_of_day_t_do_not_depend_on_later_rows(params: Params, alteration: str) -> None:
    """No leakage: for every t, altering or dropping the rows after t leaves row t's features."""

    def ours(frame: pd.DataFrame) -> pd.DataFrame:
        return make_dataset(frame, params, labelled_only=False).X

    frame = daily(40, seed=1)
    assert leaking_days(ours, frame, params.features.numerical, alteration) == []


@pytest.mark.parametrize("alteration", ["change", "remove"])
def test_the_leakage_check_catches_a_feature_that_peeks_ahead(
    params: Params, alteration: str
) -> None:
    """The check above can fail: add a centred rolling mean (it reads day t+1) and it does."""

    def peeking(frame: pd.DataFrame) -> pd.DataFrame:
        X = make_dataset(frame, params, labelled_only=False).X
        centred = frame["temp_max"].rolling(3, center=True, min_periods=1).mean()
        return X.assign(temp_max_centred=centred.to_numpy())

    frame = daily(40, seed=1)
    assert len(leaking_days(peeking, frame, params.features.numerical, alteration)) == 39


@pytest.mark.parametrize(
    ("day", "season"),
    [
        ("2013-12-01", "winter"),
        ("2014-01-15", "winter"),
        ("2014-02-28", "winter"),
        ("2014-03-01", "spring"),
        ("2014-05-31", "spring"),
        ("2014-06-01", "summer"),
        ("2014-08-31", "summer"),
        ("2014-09-01", "autumn"),
        ("2014-11-30", "autumn"),
    ],
)
def test_season_labels(day: str, season: str) -> None:
    assert season_of(pd.Series(pd.to_datetime([day]))).tolist() == [season]


def test_dataset_segments_are_the_seasons_of_its_dates(params: Params) -> None:
    data = make_dataset(daily(400, start="2013-01-01"), params)
    assert set(data.segments["season"]) == set(SEASONS)
    assert data.segments["season"].tolist() == season_of(data.timestamps).tolist()


def test_split_by_date_holds_out_the_most_recent_period(params: Params) -> None:
    data = make_dataset(daily(60, start="2013-03-01").sample(frac=1.0, random_state=5), params)

    train, holdout = split_by_time(data, holdout_days=14)

    assert len(train) + len(holdout) == len(data)
    assert len(holdout) == 14
    assert train.timestamps.max() < holdout.timestamps.min()
    assert holdout.timestamps.max() == data.timestamps.max()
    assert (holdout.timestamps.max() - holdout.timestamps.min()).days == 13
    assert train.y.tolist() == data.y.iloc[: len(train)].tolist()  # aligned after the split


def test_split_by_date_with_a_holdout_longer_than_the_data(params: Params) -> None:
    data = make_dataset(daily(10), params)
    train, holdout = split_by_time(data, holdout_days=180)
    assert len(train) == 0 and len(holdout) == len(data)


# --- event-level tables: entities, categories, explicit and late labels --------------------------


def stocks_params(params: Params) -> Params:
    """A stocks-style contract: several symbols per date, "price rises next month" per symbol."""
    raw = params.model_dump(mode="json")
    raw["data"].update(
        timestamp_column="date",
        entity_columns=["symbol"],
        frequency=None,
        columns={
            "symbol": {"dtype": "category", "allowed": ["A", "B"]},
            "price": {"dtype": "float", "min": 0.0},
        },
    )
    raw["target"] = {"name": "rises", "forecast": {"column": "price", "horizon": 1, "rises": True}}
    raw["features"] = {
        "numerical": ["price"],
        "categorical": ["symbol"],
        "lags": {"periods": [1]},
        "rolling": {"windows": ["45D"]},
        "calendar": ["month"],
    }
    raw["evaluation"] = {"segments": ["symbol"]}
    return Params.model_validate(raw)


def stocks() -> pd.DataFrame:
    dates = pd.date_range("2010-01-01", periods=4, freq="MS")
    rows = [("A", d, p) for d, p in zip(dates, [10, 12, 11, 15], strict=True)]
    rows += [("B", d, p) for d, p in zip(dates, [100, 90, 95, 94], strict=True)]
    return pd.DataFrame(rows, columns=["symbol", "date", "price"]).sample(frac=1, random_state=1)


def test_lags_and_forecast_targets_are_computed_per_entity(params: Params) -> None:
    own = stocks_params(params)
    data = make_dataset(stocks(), own, labelled_only=False)
    by_symbol = {
        sym: (data.X[data.X["symbol"] == sym], data.y[(data.X["symbol"] == sym).to_numpy()])
        for sym in ("A", "B")
    }
    a_x, a_y = by_symbol["A"]
    b_x, b_y = by_symbol["B"]
    assert a_x["price_lag1"].tolist()[1:] == [10.0, 12.0, 11.0]  # never B's price
    assert np.isnan(a_x["price_lag1"].iloc[0]) and np.isnan(b_x["price_lag1"].iloc[0])
    assert a_y.tolist() == [1, 0, 1, -1]  # rises next month; the last month is unknown
    assert b_y.tolist() == [0, 1, 0, -1]
    assert a_x["price_mean45D"].tolist() == [10.0, 11.0, 11.5, 13.0]  # time window, per symbol
    assert set(data.segments["symbol"]) == {"A", "B"}


def test_rows_sharing_a_timestamp_never_straddle_a_split_or_a_fold(params: Params) -> None:
    own = stocks_params(params)
    frame = pd.concat(
        [stocks().assign(date=lambda f, k=k: f["date"] + pd.DateOffset(years=k)) for k in range(4)]
    )
    data = make_dataset(frame, own)
    fit, holdout = split_by_time(data, holdout_days=100)
    assert not set(fit.timestamps) & set(holdout.timestamps)
    for fit_idx, val_idx in time_folds(data.timestamps, 3):
        assert data.timestamps.iloc[fit_idx].max() < data.timestamps.iloc[val_idx].min()
        assert len(fit_idx) % 2 == 0 and len(val_idx) % 2 == 0  # both symbols of each date


def flights_like(params: Params) -> Params:
    raw = params.model_dump(mode="json")
    raw["data"].update(
        timestamp_column="t",
        id_column="id",
        frequency=None,
        columns={
            "id": {"dtype": "str"},
            "carrier": {"dtype": "str"},
            "delay": {"dtype": "float", "required": False},
            "distance": {"dtype": "float"},
        },
    )
    raw["target"] = {"name": "late", "column": "delay", "at_least": 15}
    raw["features"] = {"numerical": ["distance"], "categorical": ["carrier"], "calendar": ["hour"]}
    raw["evaluation"] = {"segments": ["carrier"]}
    return Params.model_validate(raw)


def test_explicit_labels_arrive_later_and_join_on_the_id(params: Params) -> None:
    own = flights_like(params)
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "t": pd.to_datetime(["2013-01-01 05:00", "2013-01-01 05:00", "2013-01-01 06:30"]),
            "carrier": ["UA", "AA", "UA"],
            "distance": [100.0, 200.0, 300.0],
        }
    )
    times = pd.to_datetime(["2013-01-02", "2013-01-02"])
    known = labels.candidates(pd.Series(["c", "a"]), pd.Series([15.0, 14.0]), times, "batch")
    data = make_dataset(labels.attach(frame, known, own), own, labelled_only=False)
    assert data.y.tolist() == [0, -1, 1]  # 14 < 15; b has no label yet; 15 >= 15
    assert data.X["carrier"].tolist() == ["UA", "AA", "UA"]  # strings: encoded inside the model
    assert data.X["hour"].tolist() == [5.0, 5.0, 6.0]
    assert len(make_dataset(labels.attach(frame, known, own), own)) == 2


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        (["AA", None, "UA"], object, ["AA", None, "UA"]),
        ([None, None], object, [None, None]),
        ([7, None, 9], object, ["7", None, "9"]),
        ([1.0, float("nan")], float, ["1.0", None]),
        (["AA", 3], object, ["AA", "3"]),
        (["AA", None], "string", ["AA", None]),
    ],
)
def test_categorical_values_become_strings_and_missing_stays_missing(
    values: list[object], dtype: object, expected: list[object]
) -> None:
    from driftloop.features import _categorical

    out = _categorical(pd.Series(values, dtype=dtype))  # type: ignore[call-overload]
    assert out.dtype == object
    assert [None if v is None or v != v else v for v in out] == expected


def test_the_split_is_built_once_per_frame_and_rebuilt_when_the_data_changes(
    params: Params,
) -> None:
    """The promotion gate evaluates on the split training built; new data or other feature
    params build it again."""
    from driftloop import stages

    stages.SPLITS.clear()
    frame = daily(200)
    first = stages.split_of(params, frame)
    assert stages.split_of(params, frame) is first

    changed = frame.copy()
    changed.loc[190, "temp_max"] = 40.0
    other = stages.split_of(params, changed)
    assert other is not first
    assert other.holdout.X["temp_max"].max() == 40.0
    assert first.holdout.X["temp_max"].max() < 40.0

    fewer = params.model_copy(
        update={"features": params.features.model_copy(update={"calendar": []})}
    )
    assert "doy_sin" not in stages.split_of(fewer, changed).fit.X.columns
    assert stages.split_of(params, changed) is not other  # replaced by the last one built
    stages.SPLITS.clear()
