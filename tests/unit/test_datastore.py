"""Accepted batches on disk: immutable files, read in time order, each read once per process."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop import datastore, labels
from driftloop.config import Params, load_params, parse_params
from driftloop.errors import ConfigError, IngestError
from driftloop.sources import load_seattle
from tests.helpers import REPO_ROOT

EVENTS: dict[str, Any] = {
    "data": {
        "source": "events.csv",
        "timestamp_column": "ts",
        "id_column": "event_id",
        "entity_columns": ["store"],
        "columns": {
            "event_id": {"dtype": "str"},
            "store": {"dtype": "str"},
            "amount": {"dtype": "float"},
            "returned": {"dtype": "int", "allowed": [0, 1], "required": False},
        },
    },
    "target": {"column": "returned"},
    "labels": {"time_column": "known_at"},
    "features": {"numerical": ["amount"]},
}


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Every test starts and ends with an empty read cache."""
    datastore.CACHE.clear()
    yield
    datastore.CACHE.clear()


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def events() -> Params:
    return parse_params(EVENTS)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """Three monthly batches of 2013, written as ingest writes them (out of order on purpose)."""
    frame = load_seattle()
    folder = tmp_path / "raw"
    for month in (3, 1, 2):
        batch = frame[(frame["date"].dt.year == 2013) & (frame["date"].dt.month == month)]
        datastore.write_batch(batch.reset_index(drop=True), folder, "date")
    return folder


def test_batches_load_in_time_order_and_filter_by_window(raw_dir: Path, params: Params) -> None:
    everything = datastore.load_accepted(raw_dir, params)
    assert len(everything) == 31 + 28 + 31
    assert everything["date"].is_monotonic_increasing
    assert everything["date"].dtype == "datetime64[ns]"
    february = datastore.load_accepted(
        raw_dir, params, since=dt.date(2013, 1, 31), until=dt.date(2013, 2, 28)
    )
    assert february["date"].dt.month.unique().tolist() == [2]
    assert len(february) == 28
    assert datastore.last_accepted_date(raw_dir) == dt.date(2013, 3, 31)
    assert datastore.last_accepted_time(raw_dir, params) == pd.Timestamp("2013-03-31")


@pytest.mark.parametrize(
    ("since", "until", "rows"),
    [
        (dt.datetime(2013, 1, 31, 12), dt.datetime(2013, 2, 1), 1),  # datetimes are exact
        (dt.datetime(2013, 1, 31), None, 59),  # since is exclusive
        (None, dt.date(2013, 1, 1), 1),  # a date until includes that day
        (dt.date.min, dt.date.max, 90),  # far bounds neither overflow nor drop rows
        (dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59), 90),
        (dt.datetime(9000, 1, 1), None, 0),
        (None, dt.date(1000, 1, 1), 0),
        (pd.Timestamp("2013-03-30 00:00", tz="UTC"), None, 1),  # zoned bounds are UTC
    ],
)
def test_bounds_are_dates_or_datetimes_of_any_range(
    raw_dir: Path, params: Params, since: Any, until: Any, rows: int
) -> None:
    loaded = datastore.load_accepted(raw_dir, params, since=since, until=until)
    assert len(loaded) == rows
    assert list(loaded.columns) == list(load_seattle().columns)


def test_no_accepted_data_is_an_ingest_error(tmp_path: Path, params: Params) -> None:
    with pytest.raises(IngestError, match="no accepted data yet"):
        datastore.load_accepted(tmp_path / "raw", params)
    assert datastore.last_accepted_date(tmp_path / "raw") is None
    assert datastore.last_accepted_time(tmp_path / "raw", params) is None


def test_a_batch_is_never_rewritten(raw_dir: Path) -> None:
    first = datastore.batch_files(raw_dir)[0]
    again = pd.read_parquet(first.path)
    with pytest.raises(IngestError, match="already accepted"):
        datastore.write_batch(again, raw_dir, "date")
    assert oct(first.path.stat().st_mode)[-3:] == "444"


def event_batch(times: list[str], stores: list[str], start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(times),
            "event_id": [f"e{start + i}" for i in range(len(times))],
            "store": stores,
            "amount": np.arange(len(times), dtype=float),
        }
    )


def test_intra_day_batches_are_named_by_dates_and_sorted_stably(
    tmp_path: Path, events: Params
) -> None:
    """Late batches land in time order; equal (timestamp, store) keep their arrival order."""
    folder = tmp_path / "raw"
    late = event_batch(["2024-01-02 09:30", "2024-01-01 23:15"], ["b", "a"], start=10)
    early = event_batch(["2024-01-03 08:00", "2024-01-02 09:30", "2024-01-02 09:30"], ["a"] * 3)
    datastore.write_batch(early, folder, "ts")
    path = datastore.write_batch(late, folder, "ts")
    assert path.name.startswith("2024-01-01_2024-01-02_")

    loaded = datastore.load_accepted(folder, events)

    assert loaded["event_id"].tolist() == ["e11", "e1", "e2", "e10", "e0"]
    assert loaded["ts"].dtype == "datetime64[ns]"
    assert datastore.last_accepted_time(folder, events) == pd.Timestamp("2024-01-03 08:00")
    until_noon = datastore.load_accepted(folder, events, until=dt.datetime(2024, 1, 2, 9, 30))
    assert until_noon["event_id"].tolist() == ["e11", "e1", "e2", "e10"]


def test_timestamps_in_other_units_or_zones_are_stored_as_naive_ns(tmp_path: Path) -> None:
    frame = event_batch(["2024-01-01 10:00", "2024-01-01 11:00"], ["a", "b"])
    frame["ts"] = frame["ts"].dt.tz_localize("Europe/Paris").astype("datetime64[us, Europe/Paris]")
    path = datastore.write_batch(frame, tmp_path / "raw", "ts")
    stored = pd.read_parquet(path)
    assert stored["ts"].dtype == "datetime64[ns]"
    assert stored["ts"].tolist() == [
        pd.Timestamp("2024-01-01 09:00"),
        pd.Timestamp("2024-01-01 10:00"),
    ]


def test_out_of_range_times_become_nat_instead_of_overflowing() -> None:
    far = pd.Series(np.array(["2020-01-01", "3000-01-01", "1000-01-01"], dtype="datetime64[us]"))
    assert datastore.as_ns(far).tolist()[0] == pd.Timestamp("2020-01-01")
    assert datastore.as_ns(far).isna().tolist() == [False, True, True]


def test_loaded_frames_are_copies_of_the_cached_batches(raw_dir: Path, params: Params) -> None:
    loaded = datastore.load_accepted(raw_dir, params)
    loaded["temp_max"] = -99.0
    assert (datastore.load_accepted(raw_dir, params)["temp_max"] != -99.0).all()


def test_the_cache_reads_each_file_once_and_can_be_cleared(raw_dir: Path, params: Params) -> None:
    datastore.load_accepted(raw_dir, params)
    assert len(datastore.CACHE) == 3
    first = datastore.read_batch(datastore.batch_files(raw_dir)[0].path)
    assert datastore.read_batch(datastore.batch_files(raw_dir)[0].path) is first
    datastore.CACHE.clear()
    assert len(datastore.CACHE) == 0
    assert datastore.read_batch(datastore.batch_files(raw_dir)[0].path) is not first


def test_the_cache_drops_the_least_recently_used_above_its_row_budget(raw_dir: Path) -> None:
    cache = datastore.BatchCache(max_rows=60)
    paths = [b.path for b in datastore.batch_files(raw_dir)]  # 31, 28, 31 rows
    for path in paths:
        cache.read(path)
    assert len(cache) == 2  # January went out when March came in


def test_a_file_changed_behind_driftloop_is_read_again(raw_dir: Path, params: Params) -> None:
    """The cache is keyed by size and mtime too: it never serves what is no longer on disk."""
    before = datastore.load_accepted(raw_dir, params)
    path = datastore.batch_files(raw_dir)[0].path
    changed = pd.read_parquet(path).assign(wind=0.5)
    path.chmod(0o644)
    changed.to_parquet(path, index=False)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = datastore.load_accepted(raw_dir, params)
    assert (after["wind"][:31] == 0.5).all()
    assert not (before["wind"][:31] == 0.5).all()


def test_two_million_rows_load_sorted(tmp_path: Path, events: Params) -> None:
    """Large tables: batches of a million rows arrive newest first and load in time order."""
    folder = tmp_path / "raw"
    n = 1_000_000
    for start in (pd.Timestamp("2024-02-01"), pd.Timestamp("2024-01-01")):
        times = start + pd.to_timedelta(np.arange(n)[::-1], unit="s")
        frame = pd.DataFrame(
            {
                "ts": times,
                "event_id": np.arange(n),
                "store": "a",
                "amount": 1.0,
            }
        )
        datastore.write_batch(frame, folder, "ts")
    loaded = datastore.load_accepted(folder, events, since=dt.date(2024, 1, 1))
    assert len(loaded) == 2 * n - 86_400  # Jan 1 itself is not after since
    assert loaded["ts"].is_monotonic_increasing


def write_labels(folder: Path, rows: list[tuple[str, int, str]]) -> Path:
    frame = pd.DataFrame(rows, columns=["event_id", "returned", datastore.LABEL_TIME])
    frame[datastore.LABEL_TIME] = pd.to_datetime(frame[datastore.LABEL_TIME], format="ISO8601")
    return datastore.write_batch(frame, folder, datastore.LABEL_TIME)


def test_labels_load_as_of_a_time_one_per_id(tmp_path: Path, events: Params) -> None:
    folder = tmp_path / "labels"
    write_labels(folder, [("e2", 1, "2024-01-05 10:00"), ("e1", 0, "2024-01-03")])
    path = write_labels(folder, [("e1", 0, "2024-01-07"), ("e3", 1, "2024-01-06")])
    assert path.name.startswith("2024-01-06_2024-01-07_")

    everything = labels.accepted(folder, events)
    assert list(everything.columns) == ["event_id", "returned", "label_time"]
    assert everything["event_id"].tolist() == ["e1", "e2", "e3"]  # e1 once, its first label
    assert everything["label_time"].iloc[0] == pd.Timestamp("2024-01-03")
    as_of = labels.accepted(folder, events, as_of=dt.datetime(2024, 1, 5, 9))
    assert as_of["event_id"].tolist() == ["e1"]
    assert labels.accepted(folder, events, as_of=dt.date(2024, 1, 5))["event_id"].tolist() == [
        "e1",
        "e2",
    ]


def test_no_labels_yet_is_an_empty_frame(tmp_path: Path, events: Params) -> None:
    empty = labels.accepted(tmp_path / "labels", events)
    assert empty.empty
    assert list(empty.columns) == ["event_id", "returned", "label_time"]


def test_a_forecast_target_has_no_labels(tmp_path: Path, params: Params) -> None:
    with pytest.raises(ConfigError, match="forecast target"):
        labels.accepted(tmp_path, params)
