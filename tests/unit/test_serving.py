"""The service's pure parts on tiny frames: request schema, history features, the log files."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from driftloop.config import Params, load_params
from driftloop.features import feature_frame, sort_rows
from driftloop.serving.models import History
from driftloop.serving.predlog import WAL_SUFFIX, PredictionLog, read_wal, records
from driftloop.serving.schema import input_columns, needs_history, rows_adapter
from tests.helpers import REPO_ROOT
from tests.unit.test_features import daily, stocks, stocks_params


@pytest.fixture(scope="module")
def seattle() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def flights() -> Params:
    return load_params(REPO_ROOT / "examples" / "flights" / "params.yaml")


def test_a_request_row_carries_the_feature_steps_raw_inputs(
    seattle: Params, flights: Params
) -> None:
    assert needs_history(seattle) and not needs_history(flights)
    assert input_columns(seattle)[0] == "date"
    assert {"precipitation", "temp_max", "temp_min", "wind"} <= set(input_columns(seattle))
    assert {"carrier", "origin", "dest", "distance"} <= set(input_columns(flights))


def test_the_row_schema_names_the_bad_field(seattle: Params) -> None:
    adapter = rows_adapter(seattle)
    good = {"date": "2015-01-02", "precipitation": 0.0, "temp_max": 9, "temp_min": 2, "wind": 3}
    assert adapter.validate_python([good])[0].model_dump()["date"] == dt.datetime(2015, 1, 2)
    for bad, field in (
        ({**good, "wind": float("nan")}, "wind"),
        ({**good, "wind": "breezy"}, "wind"),
        ({k: v for k, v in good.items() if k != "temp_max"}, "temp_max"),
        ({**good, "temp_max": 99.0}, "temp_max"),  # above data.columns.temp_max.max
    ):
        with pytest.raises(ValidationError) as err:
            adapter.validate_python([bad])
        assert err.value.errors()[0]["loc"] == (0, field)


def test_times_with_an_offset_become_naive_utc(seattle: Params) -> None:
    row = {"date": "2015-01-02T01:00:00+02:00", "precipitation": 0, "temp_max": 9}
    row |= {"temp_min": 2, "wind": 3}
    parsed = rows_adapter(seattle).validate_python([row])[0].model_dump()
    assert parsed["date"] == dt.datetime(2015, 1, 1, 23, 0)


def test_history_features_of_served_rows_equal_the_batch_feature_step(seattle: Params) -> None:
    days = daily(60)
    history = History(seattle, days.iloc[:50])
    served = [history.features(days.iloc[i : i + 1].reset_index(drop=True)) for i in range(50, 60)]
    online = pd.concat(served, ignore_index=True)
    batch = feature_frame(days, seattle.features, seattle.data).iloc[50:].reset_index(drop=True)
    pd.testing.assert_frame_equal(online[batch.columns], batch)


def test_without_history_the_lags_are_missing_a_negative_control(seattle: Params) -> None:
    days = daily(60)
    alone = History(seattle, days.iloc[:0]).features(days.iloc[55:56].reset_index(drop=True))
    assert np.isnan(alone["precipitation_lag1"].iloc[0])


def _records(n: int) -> list[dict[str, object]]:
    ids = [f"p{i}" for i in range(n)]
    at = dt.datetime(2026, 1, 1, 12, 0)
    inputs = [{"amount": float(i), "region": "west"} for i in range(n)]
    return records(ids, at, "3", "champion", np.full(n, 0.25), np.zeros(n, int), inputs)


def test_a_torn_last_line_of_the_write_ahead_file_is_skipped(tmp_path: Path) -> None:
    wal = tmp_path / f"x{WAL_SUFFIX}"
    wal.write_text("\n".join(json.dumps(r) for r in _records(3)) + '\n{"prediction_id": "p3", "ti')
    frame = read_wal(wal)
    assert frame["prediction_id"].tolist() == ["p0", "p1", "p2"]
    assert frame["amount"].tolist() == [0.0, 1.0, 2.0] and frame["time"].dtype.kind == "M"


def test_rolls_are_immutable_parquet_and_a_restart_rolls_what_was_left(tmp_path: Path) -> None:
    rolled: list[Path] = []
    log = PredictionLog(
        tmp_path / "wal", tmp_path / "log", 60.0, dt.timedelta(days=1), rolled.append
    )
    log.start()
    log.append(_records(4))
    log.flush()  # durable, not rolled: as a kill -9 would leave it
    left = list((tmp_path / "wal").glob(f"*{WAL_SUFFIX}"))
    assert len(left) == 1 and not (tmp_path / "log").exists()
    log._stop.set()  # the writer stops; its file stays (no clean close)
    log._file.close()  # type: ignore[union-attr]

    again = PredictionLog(
        tmp_path / "wal", tmp_path / "log", 60.0, dt.timedelta(days=1), rolled.append
    )
    again.start()
    again.append(_records(2))
    again.close()

    files = sorted((tmp_path / "log").glob("*.parquet"))
    assert len(files) == 2 and rolled  # versioned after each roll
    frame = pd.concat(pd.read_parquet(p) for p in files)
    assert len(frame) == 6 and not list((tmp_path / "wal").glob(f"*{WAL_SUFFIX}"))


def test_the_writer_rolls_every_roll_every_while_serving(tmp_path: Path) -> None:
    versioned: list[Path] = []
    log = PredictionLog(
        tmp_path / "wal", tmp_path / "log", 0.05, dt.timedelta(seconds=0.2), versioned.append
    )
    log.start()
    try:
        for _ in range(10):
            log.append(_records(3))
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while len(list((tmp_path / "log").glob("*.parquet"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list((tmp_path / "log").glob("*.parquet"))) >= 2 and versioned
        assert log.healthy
    finally:
        log.close()
    frame = pd.concat(pd.read_parquet(p) for p in (tmp_path / "log").glob("*.parquet"))
    assert len(frame) == 30


def test_history_is_kept_per_entity(seattle: Params) -> None:
    params = stocks_params(seattle)
    table = sort_rows(stocks(), params.data)
    history = History(params, table.iloc[:4])  # two months of A and B
    online = pd.concat(
        [history.features(table.iloc[i : i + 1].reset_index(drop=True)) for i in range(4, 8)],
        ignore_index=True,
    )
    batch = feature_frame(table, params.features, params.data).iloc[4:].reset_index(drop=True)
    pd.testing.assert_frame_equal(online[batch.columns], batch)
