"""Retrain windows: rolling, growing and seasonal select exactly the rows they promise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop import windows
from driftloop.config import RetrainParams
from driftloop.windows import Window


def days(start: str, end: str) -> pd.Series:
    return pd.Series(pd.date_range(start, end, freq="D"))


def kept(times: pd.Series, window: Window) -> list[str]:
    mask = windows.select(times, times.max(), window)
    return [t.strftime("%Y-%m-%d") for t in times[mask]]


def test_rolling_keeps_the_last_n_days() -> None:
    times = days("2013-01-01", "2013-01-20")
    assert kept(times, Window("rolling", 7)) == [f"2013-01-{d:02d}" for d in range(14, 21)]


def test_growing_and_rolling_without_a_length_keep_everything() -> None:
    times = days("2013-01-01", "2013-03-01")
    assert len(kept(times, Window("growing"))) == len(times)
    assert len(kept(times, Window("rolling", None))) == len(times)


def test_seasonal_keeps_each_anniversary_band_and_the_recent_days() -> None:
    times = days("2012-01-01", "2014-06-30")
    window = Window("seasonal", season_days=10, recent_days=14)
    expected = (
        list(days("2012-06-20", "2012-07-10"))
        + list(days("2013-06-20", "2013-07-10"))
        + list(days("2014-06-17", "2014-06-30"))
    )
    assert kept(times, window) == [t.strftime("%Y-%m-%d") for t in expected]
    assert len(expected) == 21 + 21 + 14


def test_seasonal_with_less_than_a_year_is_the_recent_days() -> None:
    times = days("2014-01-01", "2014-06-30")
    assert kept(times, Window("seasonal", season_days=10, recent_days=3)) == [
        "2014-06-28",
        "2014-06-29",
        "2014-06-30",
    ]


def test_seasonal_anniversary_of_a_leap_day_is_the_28th() -> None:
    times = days("2015-02-20", "2016-02-29")
    got = kept(times, Window("seasonal", season_days=1, recent_days=1))
    assert got == ["2015-02-27", "2015-02-28", "2015-03-01", "2016-02-29"]


def test_seasonal_overlapping_bands_count_a_row_once() -> None:
    times = days("2013-01-01", "2014-01-31")
    mask = windows.select(times, times.max(), Window("seasonal", season_days=20, recent_days=30))
    # the 2013 band (Jan 11 - Feb 20) and the last 30 days: each row once, in time order
    assert mask.sum() == len(days("2013-01-11", "2013-02-20")) + 30
    assert mask.dtype == np.bool_


def test_a_number_of_days_is_a_rolling_window() -> None:
    assert windows.as_window(30) == Window("rolling", 30)
    assert windows.as_window(None) is None
    seasonal = Window("seasonal", 365, 30, 28)
    assert windows.as_window(seasonal) is seasonal


def test_the_window_of_params_and_its_label() -> None:
    retrain = RetrainParams(window="seasonal", window_days=90, season_days=30, recent_days=21)
    assert windows.of(retrain) == Window("seasonal", 90, 30, 21)
    assert windows.of(retrain, "rolling").label == "rolling 90 days"
    assert windows.of(retrain).label == "seasonal +-30 days + last 21"
    assert windows.of(retrain, "growing").label == "growing"


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (Window("rolling", 7), pd.Timestamp("2013-01-13")),
        (Window("growing"), None),
        (
            Window("seasonal", season_days=2, recent_days=3),
            pd.Timestamp("2012-01-18") - pd.Timedelta(1, "ns"),
        ),
    ],
)
def test_since_is_just_before_the_first_kept_row(window: Window, expected: object) -> None:
    times = days("2012-01-01", "2013-01-20")
    mask = windows.select(times, times.max(), window)
    assert windows.since(times, times.max(), window, mask) == expected


def test_the_compared_windows_are_distinct_and_a_rolling_one_has_a_length() -> None:
    from driftloop.config import RetrainParams

    growing = RetrainParams(window="growing", window_days=None)
    labels = [w.label for w in windows.compared(growing, ["rolling", "growing", "seasonal"])]
    assert labels == ["rolling 365 days", "growing", "seasonal +-45 days + last 90"]
    rolling_all = RetrainParams(window="rolling", window_days=None)
    assert [w.label for w in windows.compared(rolling_all, ["growing", "rolling"])] == [
        "growing",
        "rolling 365 days",
    ]
    ninety = RetrainParams(window="rolling", window_days=90)
    assert [w.label for w in windows.compared(ninety, ["rolling"])] == ["rolling 90 days"]
