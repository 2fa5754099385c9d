"""Strict JSON out: every document driftloop writes parses with any RFC 8259 parser.

Python's `json` writes `NaN` and `Infinity` by default, which `jq`, JavaScript and most other
parsers reject, and it cannot write numpy scalars, timestamps, dataclasses or paths. Here NaN and
±inf become `null`, and those types become plain JSON values. numpy and pandas are never imported
here: an object can only be one of theirs if its library is loaded already.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import sys
import uuid
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _library_value(obj: Any) -> tuple[bool, Any]:
    """numpy and pandas values as plain Python: (handled, value)."""
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.ndarray):
            return True, obj.tolist()
        if isinstance(obj, np.datetime64):  # .item() of a ns stamp is an int
            return True, None if np.isnat(obj) else str(obj)
        if isinstance(obj, np.timedelta64):
            return True, float(obj / np.timedelta64(1, "s"))
        if isinstance(obj, np.generic):  # np.float64, np.int64, np.bool_ ...
            return True, obj.item()
    pd = sys.modules.get("pandas")
    if pd is not None:
        if obj is pd.NaT or obj is pd.NA:
            return True, None
        if isinstance(obj, pd.DataFrame):
            return True, obj.to_dict(orient="records")
        if isinstance(obj, pd.Series | pd.Index):
            return True, obj.tolist()
        if isinstance(obj, pd.Timedelta):
            return True, obj.total_seconds()
    return False, None


def to_jsonable(obj: Any) -> Any:
    """`obj` as JSON-ready Python values (dict, list, str, int, float, bool, None).

    NaN, +inf and -inf become None; numpy scalars and arrays, pandas Timestamps, Series and
    frames, datetimes (ISO 8601), timedeltas (seconds), dataclasses, pydantic models, enums and
    paths become their plain equivalent. Mapping keys become strings. Anything else is written
    as `str(obj)`, as `json.dumps(default=str)` would.
    """
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, int):
        return int(obj)  # an IntEnum or numpy-derived int as a plain int
    if isinstance(obj, float):
        return _number(obj)
    handled, value = _library_value(obj)
    if handled:
        return to_jsonable(value)
    if isinstance(obj, Mapping):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        items = [to_jsonable(v) for v in obj]
        return sorted(items, key=repr)  # a stable order for a set
    return _scalar(obj)


def _key(key: Any) -> str:
    value = to_jsonable(key)
    return value if isinstance(value, str) else json.dumps(value)


def _scalar(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date | dt.time):  # pandas Timestamp is a datetime
        return obj.isoformat()
    if isinstance(obj, dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, Decimal):
        return _number(float(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    dump = getattr(obj, "model_dump", None)  # pydantic
    if callable(dump):
        return to_jsonable(dump())
    return str(obj)


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of `obj` (see `to_jsonable`); keyword arguments go to `json.dumps`."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj: Any, *, indent: int = 2, sort_keys: bool = True) -> Path:
    """Write `obj` as strict JSON (atomically: readers see the old or the new file, never half).

    Returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)  # default permissions (a mkstemp file would be 0600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
