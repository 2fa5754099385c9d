"""Strict JSON: what driftloop writes parses with a parser that refuses NaN and Infinity."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop import jsonio


def strict_loads(text: str) -> Any:
    """json.loads as RFC 8259 parsers (jq, JavaScript) behave: NaN/Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@dataclasses.dataclass(frozen=True)
class Scores:
    auc: float
    where: Path


PAYLOAD = {
    "nan": float("nan"),
    "inf": float("inf"),
    "ninf": -math.inf,
    "np_nan": np.float64("nan"),
    "np_f32_inf": np.float32("inf"),
    "np_int": np.int64(7),
    "np_bool": np.bool_(True),
    "array": np.array([1.0, np.nan, 3.0]),
    "stamp": pd.Timestamp("2015-03-01 12:00"),
    "nat": pd.NaT,
    "np_stamp": np.datetime64("2015-03-01T00:00:00.000000000"),
    "series": pd.Series([0.5, np.inf]),
    "scores": Scores(auc=float("nan"), where=Path("/tmp/x.json")),
    "nested": [{"x": (np.float64(0.25), {1, 2})}],
    3: "int key",
}

EXPECTED = {
    "nan": None,
    "inf": None,
    "ninf": None,
    "np_nan": None,
    "np_f32_inf": None,
    "np_int": 7,
    "np_bool": True,
    "array": [1.0, None, 3.0],
    "stamp": "2015-03-01T12:00:00",
    "nat": None,
    "np_stamp": "2015-03-01T00:00:00.000000000",
    "series": [0.5, None],
    "scores": {"auc": None, "where": "/tmp/x.json"},
    "nested": [{"x": [0.25, [1, 2]]}],
    "3": "int key",
}


def test_plain_json_is_not_strict() -> None:
    """The negative control: the standard library writes NaN, which a strict parser refuses."""
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"auc": float("nan")}))


def test_dumps_round_trips_through_a_strict_parser() -> None:
    assert strict_loads(jsonio.dumps(PAYLOAD, sort_keys=True)) == EXPECTED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float64(0.1), 0.1),
        (np.int32(-3), -3),
        (pd.Timedelta("1D"), 86400.0),
        (dt.date(2015, 1, 2), "2015-01-02"),
        (float("-inf"), None),
        (pd.NA, None),
    ],
)
def test_scalars(value: Any, expected: Any) -> None:
    assert jsonio.to_jsonable(value) == expected
    assert type(jsonio.to_jsonable(value)) is type(expected)


def test_write_json_is_strict_and_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "metrics.json"
    jsonio.write_json(target, {"auc": 0.5})
    jsonio.write_json(target, {"auc": np.float64("nan"), "n": np.int64(3)})

    assert strict_loads(target.read_text()) == {"auc": None, "n": 3}
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temp left
