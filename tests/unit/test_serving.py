"""The service's pure parts on tiny frames: request schema, history features, the log files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from driftloop import jsonio
from driftloop.config import LagParams, Params, RollingParams, load_params
from driftloop.features import feature_frame, sort_rows
from driftloop.registry import ModelRef
from driftloop.serving.coalesce import Coalescer
from driftloop.serving.models import History, Loaded, score
from driftloop.serving.predlog import WAL_SUFFIX, PredictionLog, read_wal, record_line, records
from driftloop.serving.schema import input_columns, needs_history, rows_adapter
from driftloop.serving.shadow import LogSpec, ShadowResult, ShadowScorer, ShadowWork
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


def test_column_names_with_unicode_spaces_and_punctuation_make_a_valid_schema() -> None:
    """Any column name works, including ones BaseModel uses itself or a leading underscore."""
    from driftloop.config import parse_params
    from tests import owndata

    raw = owndata.params("events.csv")
    raw["data"]["columns"] |= {"_id": {"dtype": "str"}, "json": {"dtype": "float"}}
    raw["features"]["numerical"] += ["json"]
    raw["serve"] = {"experiment": {"sticky_key": "_id"}}
    params = parse_params(raw)
    row = {owndata.AMOUNT: 12.5, owndata.STORE: "Café Zürich", owndata.CHANNEL: "web"}
    row |= {owndata.NEW: True, "json": 1.0, "_id": "c-1"}
    (parsed,) = rows_adapter(params).validate_python([row])
    assert parsed.model_dump(by_alias=True) == {**row, owndata.ID: None}  # the id: optional
    with pytest.raises(ValidationError) as err:
        rows_adapter(params).validate_python([{**row, owndata.AMOUNT: "lots"}])
    assert err.value.errors()[0]["loc"] == (0, owndata.AMOUNT)


def test_the_row_schema_names_the_bad_field(seattle: Params) -> None:
    adapter = rows_adapter(seattle)
    good = {"date": "2015-01-02", "precipitation": 0.0, "temp_max": 9, "temp_min": 2, "wind": 3}
    parsed = adapter.validate_python([good])[0].model_dump(by_alias=True)
    assert parsed["date"] == dt.datetime(2015, 1, 2)
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
    parsed = rows_adapter(seattle).validate_python([row])[0].model_dump(by_alias=True)
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


# -- coalescing: requests queued while a batch is scored are scored together ---------------------


def _double(calls: list[list[list[object]]], gate: threading.Event) -> Any:
    def handler(items: list[list[Any]]) -> list[object]:
        calls.append(items)
        if len(calls) == 1:
            assert gate.wait(10)  # the first batch holds the scorer while more requests queue
        return [ValueError(f"bad {i}") if "bad" in i else [2 * x for x in i] for i in items]

    return handler


async def _queued(coalescer: Coalescer[Any, Any], n: int) -> None:
    for _ in range(2000):  # a bound, not a timing assertion
        if coalescer.queued >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{coalescer.queued} requests queued, expected {n}")


def test_requests_queued_while_a_batch_is_scored_become_one_call_answered_each_in_order() -> None:
    calls: list[list[list[object]]] = []
    gate = threading.Event()
    coalescer: Coalescer[Any, Any] = Coalescer(_double(calls, gate), len, 100, "test")

    async def main() -> list[Any]:
        first = asyncio.ensure_future(coalescer.submit([1]))
        while not calls:
            await asyncio.sleep(0.005)
        later = [asyncio.ensure_future(coalescer.submit(x)) for x in ([2, 3], ["bad"], [4])]
        await _queued(coalescer, 3)
        gate.set()
        return await asyncio.gather(first, *later, return_exceptions=True)

    try:
        answers = asyncio.run(main())
    finally:
        coalescer.stop()
    assert calls == [[[1]], [[2, 3], ["bad"], [4]]]  # one call for the three queued requests
    assert answers[:2] == [[2], [4, 6]] and answers[3] == [8]
    assert isinstance(answers[2], ValueError)  # only that request fails


def test_a_batch_takes_whole_requests_up_to_the_row_cap() -> None:
    calls: list[list[list[object]]] = []
    gate = threading.Event()
    coalescer: Coalescer[Any, Any] = Coalescer(_double(calls, gate), len, 3, "test")

    async def main() -> list[Any]:
        first = asyncio.ensure_future(coalescer.submit([0]))
        while not calls:
            await asyncio.sleep(0.005)
        later = [asyncio.ensure_future(coalescer.submit(x)) for x in ([1, 2], [3], [4], [5, 6])]
        await _queued(coalescer, 4)
        gate.set()
        return await asyncio.gather(first, *later)

    try:
        answers = asyncio.run(main())
    finally:
        coalescer.stop()
    assert calls == [[[0]], [[1, 2], [3]], [[4], [5, 6]]]
    assert answers == [[0], [2, 4], [6], [8], [10, 12]]


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_is_served() -> None:
    def handler(items: list[list[int]]) -> list[list[int]]:
        if any(0 in i for i in items):
            raise RuntimeError("model broke")
        return items

    coalescer: Coalescer[Any, Any] = Coalescer(handler, len, 100, "test")

    async def main() -> list[Any]:
        failed = await asyncio.gather(coalescer.submit([0]), return_exceptions=True)
        return [*failed, await coalescer.submit([7])]

    try:
        answers = asyncio.run(main())
    finally:
        coalescer.stop()
    assert isinstance(answers[0], RuntimeError) and answers[1] == [7]


# -- the prediction log writer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        {"amount": 1.5, "region": "west", "n": 3, "ok": True, "gone": None},
        {"at": dt.datetime(2026, 1, 2, 3, 4, 5), "day": dt.date(2026, 1, 2)},
        {"amount": float("nan"), "big": float("inf")},
        {"np": np.float64(0.5), "i": np.int64(7), "t": pd.Timestamp("2026-01-01 10:00")},
        {3: "a key that is not a string", "nested": {"x": [1, 2.5, None]}},
    ],
)
def test_a_log_line_holds_the_values_jsonio_writes(inputs: dict[str, Any]) -> None:
    record = records(["p"], dt.datetime(2026, 1, 1), "3", "champion", [0.25], [0], [inputs])[0]
    line = record_line(record)
    assert "\n" not in line and json.loads(line) == json.loads(jsonio.dumps(record))
    assert json.loads(line)["inputs"] == json.loads(jsonio.dumps(inputs))


# -- shadow scoring in a worker process ----------------------------------------------------------


def _shadow_model(seattle: Params) -> tuple[Loaded, pd.DataFrame]:
    from sklearn.linear_model import LogisticRegression

    lag_free = seattle.features.model_copy(update={"lags": LagParams(), "rolling": RollingParams()})
    params = seattle.model_copy(update={"features": lag_free})
    raw = pd.DataFrame(
        {
            "date": pd.date_range("2015-01-01", periods=40, freq="D"),
            "precipitation": np.linspace(0, 5, 40),
            "temp_max": np.linspace(5, 15, 40),
            "temp_min": np.linspace(-2, 8, 40),
            "wind": np.linspace(1, 6, 40),
        }
    )
    X = feature_frame(raw, params.features, params.data)
    model = LogisticRegression().fit(X, np.arange(40) % 3 == 0)
    ref = ModelRef("m", "7", "run", {})
    return Loaded(ref, model, params, rows_adapter(params), list(X.columns)), raw


def test_the_shadow_worker_answers_and_logs_each_request_with_its_rows_probabilities(
    seattle: Params, tmp_path: Path
) -> None:
    loaded, raw = _shadow_model(seattle)
    rows = raw.to_dict("records")
    results: list[ShadowResult] = []
    done = threading.Event()

    def on_result(result: ShadowResult) -> None:
        results.append(result)
        if len(results) == 3:
            done.set()

    spec = LogSpec(tmp_path / "wal", tmp_path / "log", 0.1, dt.timedelta(days=1), 0.5)
    scorer = ShadowScorer(10, on_result, lambda n: None, log_spec=spec)
    at = dt.datetime(2026, 3, 1, 12, 30)
    works = [
        ShadowWork(
            loaded, rows[a:b], [f"p{i}" for i in range(a, b)], [f"k{i}" for i in range(a, b)], at
        )
        for a, b in ((0, 5), (5, 6), (6, 40))
    ]
    try:
        assert all(scorer.submit(w) for w in works)
        assert done.wait(120)
    finally:
        scorer.stop()
    assert scorer.started == 1
    expected = score(loaded, raw, None)
    for result in results:
        first = int(result.work.ids[0][1:])
        assert result.error is None and result.proba is not None
        # charged its rows' share of the batch it was scored in, never the whole batch
        assert len(result.work.rows) <= result.batch_rows <= 40
        share = len(result.work.rows) / result.batch_rows
        assert result.cost == pytest.approx(result.seconds * share)
        assert np.array_equal(result.proba, expected[first : first + len(result.work.rows)])
    logged = pd.concat(pd.read_parquet(p) for p in (tmp_path / "log").glob("*.parquet"))
    logged = logged.set_index("prediction_id").loc[[f"p{i}" for i in range(40)]]
    assert (logged["variant"] == "shadow").all() and (logged["model_version"] == "7").all()
    assert (logged["time"] == pd.Timestamp(at)).all()
    assert logged["key"].tolist() == [f"k{i}" for i in range(40)]
    assert np.array_equal(logged["probability"].to_numpy(), expected)
    assert logged["label"].tolist() == (expected >= 0.5).astype(int).tolist()


def test_shadow_work_beyond_the_limit_is_dropped_and_counted(seattle: Params) -> None:
    loaded, raw = _shadow_model(seattle)
    rows = raw.to_dict("records")
    dropped: list[int] = []
    scorer = ShadowScorer(2, lambda r: None, dropped.append)
    scorer._feeder = threading.Thread()  # no feeder: nothing leaves the queue (the worker is busy)
    try:
        at = dt.datetime(2026, 1, 1)
        kept = [scorer.submit(ShadowWork(loaded, rows[:3], ["a", "b", "c"], ["a", "b", "c"], at))]
        kept += [scorer.submit(ShadowWork(loaded, rows[:1], ["d"], ["d"], at)) for _ in range(3)]
    finally:
        scorer._feeder = None
        scorer.stop()
    assert kept == [True, True, False, False]
    assert dropped[:2] == [1, 1] and sum(dropped) == 2 + 4  # then 4 rows never scored at stop
