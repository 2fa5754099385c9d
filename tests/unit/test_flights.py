"""The bundled flights example: unique ids, late labels only for landed flights, weather joined,
consistent landing times, window bounds, and a params file whose schema accepts every real row."""

from __future__ import annotations

import datetime as dt
import itertools
import sys

import numpy as np
import pandas as pd
import pytest

from driftloop import flights as fl
from driftloop.config import Params, load_params
from tests.helpers import REPO_ROOT

PARAMS_FILE = REPO_ROOT / "examples" / "flights" / "params.yaml"


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return fl.load_flights()


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return fl.load_flight_labels()


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


# -- flights ---------------------------------------------------------------------------------------


def test_one_row_per_flight_with_the_documented_columns(flights: pd.DataFrame) -> None:
    assert len(flights) == 336_776
    assert list(flights.columns) == [*fl.FLIGHT_COLUMNS, *fl.WEATHER_COLUMNS]
    assert flights["sched_dep"].dtype == "datetime64[ns]"
    assert all(flights[c].dtype == object for c in ("flight_id", "carrier", "origin", "dest"))
    assert all(flights[c].dtype == "float64" for c in ("distance", *fl.WEATHER_COLUMNS))
    assert "arr_delay" not in flights.columns  # labels arrive later


def test_ids_are_unique_and_spell_out_the_flight(flights: pd.DataFrame) -> None:
    assert flights["flight_id"].is_unique
    assert flights["flight_id"].iloc[0] == "2013-01-01_UA1545_EWR_0515"
    sample = flights.iloc[::17]  # every part of 20k ids against the row's own columns
    parts = sample["flight_id"].str.split("_", expand=True)
    assert (parts[0] == sample["sched_dep"].dt.strftime("%Y-%m-%d")).all()
    assert (parts[1].str[:2] == sample["carrier"]).all()
    assert (parts[2] == sample["origin"]).all()
    assert (parts[3] == sample["sched_dep"].dt.strftime("%H%M")).all()


def test_sorted_by_departure_then_id(flights: pd.DataFrame) -> None:
    order = flights.sort_values(["sched_dep", "flight_id"]).index
    assert (order == flights.index).all()


def test_weather_joined_for_nearly_every_flight(flights: pd.DataFrame) -> None:
    present = flights[list(fl.WEATHER_COLUMNS)].notna().mean()
    assert present.drop("pressure").min() > 0.995  # 99.72%: weather.csv ends 2013-12-30 18:00
    assert present["pressure"] > 0.97  # 98.09% (88.5% before gaps are filled)
    assert flights["wind_speed"].max() <= fl.MAX_WIND_SPEED  # the 1048 mph reading is dropped


def test_weather_gaps_take_the_last_reading_up_to_three_hours_old() -> None:
    hours = pd.to_datetime(["2013-01-01 01:00", "2013-01-01 06:00"])
    readings = pd.DataFrame(
        {"origin": "EWR", "at": hours, **dict.fromkeys(fl.WEATHER_COLUMNS, 0.0)}
    )
    readings["temp"] = [30.0, 40.0]
    grid = fl.hourly_grid(readings).set_index("at")["temp"]
    assert np.isnan(grid["2013-01-01 00:00"])  # never filled backwards
    assert grid["2013-01-01 01:00":"2013-01-01 04:00"].tolist() == [30.0] * 4
    assert np.isnan(grid["2013-01-01 05:00"])  # four hours old: too old
    assert grid["2013-01-01 06:00"] == 40.0


# -- labels ----------------------------------------------------------------------------------------


def test_labels_only_for_flights_that_landed(flights: pd.DataFrame, labels: pd.DataFrame) -> None:
    raw = fl.read_raw_flights()
    assert len(labels) == raw["arr_delay"].notna().sum() == 327_346
    assert labels["flight_id"].is_unique
    assert labels["flight_id"].isin(flights["flight_id"]).all()
    cancelled = fl.flight_ids(raw)[raw["arr_delay"].isna()]
    assert not cancelled.isin(labels["flight_id"]).any()
    assert labels["arr_delay"].notna().all()


def test_landed_after_takeoff_plus_air_time(flights: pd.DataFrame, labels: pd.DataFrame) -> None:
    """landed_at spans time zones correctly: never before wheels-off + time in the air."""
    raw = fl.read_raw_flights()
    actual = pd.read_csv(fl.data_dir() / "flights.csv.zip", usecols=["dep_delay", "air_time"])
    flown = pd.DataFrame(
        {"flight_id": fl.flight_ids(raw), "sched_dep": fl.scheduled_departure(raw)}
    )
    flown["airborne"] = pd.to_timedelta(actual["dep_delay"] + actual["air_time"], unit="min")
    joined = labels.merge(flown, on="flight_id")  # both keys unique (tested above)
    assert (joined["landed_at"] > joined["sched_dep"]).all()
    taxi = joined["landed_at"] - joined["sched_dep"] - joined["airborne"]
    assert taxi.min() >= pd.Timedelta(0)
    assert pd.Timedelta(minutes=15) < taxi.median() < pd.Timedelta(minutes=45)


@pytest.mark.parametrize(
    ("dest", "dep", "sched_arr", "block"),
    [
        ("LAX", "2013-01-15 06:00", 900, "6h"),  # three hours behind New York
        ("SJU", "2013-01-15 23:30", 410, "3h40min"),  # one hour ahead in winter, next day
        ("SJU", "2013-07-15 20:00", 2345, "3h45min"),  # same clock in summer (no DST there)
        ("BOS", "2013-03-10 23:59", 105, "66min"),  # same zone, past midnight
    ],
)
def test_scheduled_block_crosses_zones_and_midnight(
    dest: str, dep: str, sched_arr: int, block: str
) -> None:
    raw = pd.DataFrame({"dest": [dest], "sched_arr_time": [sched_arr]})
    departure = pd.Series(pd.to_datetime([dep]))
    got = fl.scheduled_block(raw, departure, fl.read_timezones())
    assert got.iloc[0] == pd.Timedelta(block)


# -- windows ---------------------------------------------------------------------------------------

TIMES = pd.to_datetime(
    ["2013-01-01 00:00", "2013-01-01 23:59", "2013-01-02 00:00", "2013-01-03 00:00"]
)


@pytest.mark.parametrize(
    ("after", "until", "kept"),
    [
        (None, dt.date(2013, 1, 1), [0, 1]),  # a date: the whole day, inclusive
        (dt.date(2013, 1, 1), None, [2, 3]),  # after a date: from the next midnight on
        (dt.date(2012, 12, 31), dt.date(2013, 1, 2), [0, 1, 2]),
        (dt.datetime(2013, 1, 1, 0, 0), dt.datetime(2013, 1, 2, 0, 0), [1, 2]),  # as given
        (pd.Timestamp("2013-01-01 23:59"), None, [2, 3]),
        (None, None, [0, 1, 2, 3]),
    ],
)
def test_rows_between_bounds(after: dt.date | None, until: dt.date | None, kept: list[int]) -> None:
    table = pd.DataFrame({"t": TIMES, "row": range(len(TIMES))})
    assert fl.rows_between(table, "t", after, until)["row"].tolist() == kept


def test_consecutive_windows_tile_the_year(flights: pd.DataFrame) -> None:
    edges = [dt.date(2013, 1, 1) + dt.timedelta(days=d) for d in range(0, 365, 30)]
    windows = [fl.flights_between(a, b) for a, b in itertools.pairwise(edges)]
    assert sum(map(len, windows)) == len(fl.flights_between(edges[0], edges[-1]))
    jan = fl.flights_between(None, dt.date(2013, 1, 31))
    assert jan["sched_dep"].dt.month.eq(1).all() and len(jan) == 27_004
    first = flights["sched_dep"].iloc[0]
    assert fl.flights_between(None, first.to_pydatetime())["sched_dep"].max() == first
    assert fl.flights_between(first.to_pydatetime(), None)["sched_dep"].min() > first


def test_labels_between_uses_landing_time(labels: pd.DataFrame) -> None:
    week = fl.labels_between(dt.date(2013, 6, 30), dt.date(2013, 7, 7))
    assert week["landed_at"].min() >= pd.Timestamp("2013-07-01")
    assert week["landed_at"].max() < pd.Timestamp("2013-07-08")
    assert len(week) == labels["landed_at"].between("2013-07-01", "2013-07-07 23:59:59").sum()


# -- cache and packaging ---------------------------------------------------------------------------


def test_cache_builds_once_until_cleared() -> None:
    cache, builds = fl.TableCache(), []

    def build() -> pd.DataFrame:
        builds.append(1)
        return pd.DataFrame({"x": [1]})

    cache.get("t", build)
    cache.get("t", build)
    assert len(builds) == 1
    cache.clear()
    cache.get("t", build)
    assert len(builds) == 2


def test_loaders_return_copies(flights: pd.DataFrame) -> None:
    mine = fl.load_flights()
    mine.loc[0, "carrier"] = "XX"
    assert fl.load_flights().loc[0, "carrier"] == flights.loc[0, "carrier"] != "XX"


def test_package_is_read_by_path_never_imported(flights: pd.DataFrame) -> None:
    assert fl.PACKAGE not in sys.modules


# -- the example's params --------------------------------------------------------------------------


def test_params_file_validates(params: Params) -> None:
    assert params.data.source.kind == "bundled" and params.data.source.name == "flights"
    assert params.data.timestamp_column == "sched_dep"
    assert params.data.key_columns == ["flight_id"]
    assert params.join_column == "flight_id" and params.labels.time_column == "landed_at"
    assert params.train.model_name == "flight_delay"
    assert params.data.raw_dir.startswith("data/flights/")


def test_params_schema_accepts_every_real_row(
    params: Params, flights: pd.DataFrame, labels: pd.DataFrame
) -> None:
    table = flights.merge(labels[["flight_id", "arr_delay"]], on="flight_id", how="left")
    assert set(params.data.columns) == set(table.columns) - {params.data.timestamp_column}
    for name, spec in params.data.columns.items():
        values = table[name].dropna()
        if spec.min is not None:
            assert values.min() >= spec.min, name
        if spec.max is not None:
            assert values.max() <= spec.max, name
        if spec.allowed is not None:
            assert set(values) <= set(spec.allowed), name
    until = fl.flights_between(None, dt.date.fromisoformat(str(params.data.until)))
    required = [c for c in params.data.required_columns if c in fl.WEATHER_COLUMNS]
    daily_nulls = until[required].isna().groupby(until["sched_dep"].dt.date).mean()
    assert daily_nulls.max().max() <= params.validation.max_null_share  # any batch of >= 1 day
