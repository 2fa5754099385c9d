"""Pure parts of the online replay: the replay clock, the rows a client sends, a 422's rows."""

from __future__ import annotations

import datetime as dt

import httpx
import pandas as pd
import pytest

from driftloop import online
from driftloop.config import load_params
from driftloop.errors import ConfigError
from driftloop.flights import flights_between
from driftloop.serving.app import ApiError, _validate
from driftloop.serving.schema import rows_adapter
from tests.helpers import REPO_ROOT

FLIGHTS = REPO_ROOT / "examples" / "flights" / "params.yaml"


def test_the_clock_holds_naive_event_time() -> None:
    clock = online.ReplayClock(dt.datetime(2013, 3, 1))
    clock.set(pd.Timestamp("2013-03-07 05:00", tz="America/New_York"))
    assert clock() == dt.datetime(2013, 3, 7, 10, 0)  # naive UTC
    clock.set(pd.Timestamp("2013-03-07 23:59:59.999999999"))
    assert clock() == dt.datetime(2013, 3, 7, 23, 59, 59, 999999)


def test_a_forecast_target_has_no_online_replay() -> None:
    with pytest.raises(ConfigError, match=r"target\.forecast"):
        online.check_online(load_params(REPO_ROOT / "params.yaml"))
    online.check_online(load_params(FLIGHTS))


def test_the_service_names_the_rows_it_refuses_and_a_client_sends_the_rest() -> None:
    """Real flights rows, one with its weather missing (a null in a required column)."""
    params = load_params(FLIGHTS)
    frame = flights_between(dt.date(2013, 3, 1), dt.date(2013, 3, 2)).head(5).reset_index(drop=True)
    frame.loc[[1, 3], "temp"] = None
    rows = online.records(frame[online.request_columns(params, frame)])
    with pytest.raises(ApiError) as caught:
        _validate(rows, rows_adapter(params))
    error = caught.value
    response = httpx.Response(error.status, json={"detail": error.detail, "errors": error.errors})
    assert error.status == 422 and online.refused_rows(response) == {1, 3}
    kept = [r for i, r in enumerate(rows) if i not in {1, 3}]
    assert len(_validate(kept, rows_adapter(params))) == 3
    assert online.refused_rows(httpx.Response(422, json={"detail": "records: empty"})) == set()


def test_each_arm_changes_only_how_a_gate_winner_is_promoted() -> None:
    assert online.arm_changes("gate", "ab") == {"promote": {"via": "gate"}}
    assert online.arm_changes("experiment", "canary") == {
        "promote": {"via": "experiment"},
        "serve": {"experiment": {"kind": "canary"}},
    }
    with pytest.raises(ConfigError, match="arm 'other'"):
        online.arm_changes("other", "shadow")
