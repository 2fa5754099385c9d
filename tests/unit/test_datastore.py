"""Accepted batches on disk: immutable files, read in date order, each read once per process."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pytest

from driftloop import datastore
from driftloop.config import Params, load_params
from driftloop.errors import IngestError
from driftloop.sources import load_seattle
from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """Three monthly batches of 2013, written as ingest writes them (out of order on purpose)."""
    frame = load_seattle()
    folder = tmp_path / "raw"
    for month in (3, 1, 2):
        batch = frame[(frame["date"].dt.year == 2013) & (frame["date"].dt.month == month)]
        datastore.write_batch(batch.reset_index(drop=True), folder, "date")
    return folder


def test_batches_load_in_date_order_and_filter_by_window(raw_dir: Path, params: Params) -> None:
    everything = datastore.load_accepted(raw_dir, params)
    assert len(everything) == 31 + 28 + 31
    assert everything["date"].is_monotonic_increasing
    february = datastore.load_accepted(
        raw_dir, params, since=dt.date(2013, 1, 31), until=dt.date(2013, 2, 28)
    )
    assert february["date"].dt.month.unique().tolist() == [2]
    assert datastore.last_accepted_date(raw_dir) == dt.date(2013, 3, 31)


def test_a_batch_is_never_rewritten(raw_dir: Path) -> None:
    first = datastore.batch_files(raw_dir)[0]
    again = pd.read_parquet(first.path)
    with pytest.raises(IngestError, match="already accepted"):
        datastore.write_batch(again, raw_dir, "date")


def test_loaded_frames_are_copies_of_the_cached_batches(raw_dir: Path, params: Params) -> None:
    loaded = datastore.load_accepted(raw_dir, params)
    loaded["temp_max"] = -99.0
    assert (datastore.load_accepted(raw_dir, params)["temp_max"] != -99.0).all()


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
