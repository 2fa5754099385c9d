"""Target, features, seasons and the time split on tiny inline frames."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Params, load_params
from driftloop.features import (
    SEASONS,
    add_target,
    feature_frame,
    make_dataset,
    season_of,
    split_by_date,
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
    assert data.dates.tolist() == frame["date"].iloc[:5].tolist()
    assert "rain_tomorrow" not in data.X.columns and "weather" not in data.X.columns


def test_target_threshold_is_strict_and_unknown_future_is_nan(params: Params) -> None:
    frame = daily(4)
    frame["precipitation"] = [5.0, 0.0, 0.0001, 7.0]

    label = add_target(frame, params.target)

    assert label.iloc[:3].tolist() == [0.0, 1.0, 1.0]
    assert np.isnan(label.iloc[3])


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
    X = feature_frame(daily(10), params.features, "date")
    expected = {"doy_sin", "doy_cos"}
    for col in params.features.numeric:
        expected |= {col} | {f"{col}_lag{k}" for k in params.features.lags}
        expected |= {f"{col}_mean{w}" for w in params.features.rolling_windows}
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
    assert leaking_days(ours, frame, params.features.numeric, alteration) == []


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
    assert len(leaking_days(peeking, frame, params.features.numeric, alteration)) == 39


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
    assert set(data.segments) == set(SEASONS)
    assert data.segments.tolist() == season_of(data.dates).tolist()


def test_split_by_date_holds_out_the_most_recent_period(params: Params) -> None:
    data = make_dataset(daily(60, start="2013-03-01").sample(frac=1.0, random_state=5), params)

    train, holdout = split_by_date(data, holdout_days=14)

    assert len(train) + len(holdout) == len(data)
    assert len(holdout) == 14
    assert train.dates.max() < holdout.dates.min()
    assert holdout.dates.max() == data.dates.max()
    assert (holdout.dates.max() - holdout.dates.min()).days == 13
    assert train.y.tolist() == data.y.iloc[: len(train)].tolist()  # aligned after the split


def test_split_by_date_with_a_holdout_longer_than_the_data(params: Params) -> None:
    data = make_dataset(daily(10), params)
    train, holdout = split_by_date(data, holdout_days=180)
    assert len(train) == 0 and len(holdout) == len(data)
