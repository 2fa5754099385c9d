"""The request schema: the raw input columns a model's feature step reads, as a pydantic model.

A posted row is a raw input row (as in a batch), not a feature row: the service runs the same
feature step as training (`features.feature_frame`). The model's input signature (its feature
columns) is checked against that step's output when a version is loaded.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, create_model

from driftloop.config import CATEGORICAL_DTYPES, ColumnSpec, Params


def needs_history(params: Params) -> bool:
    """True when the model's features read earlier rows (lags, rolling means)."""
    features = params.features
    return bool(
        (features.lag_columns and features.lags.periods)
        or (features.rolling_columns and features.rolling.windows)
    )


def input_columns(params: Params) -> list[str]:
    """Raw columns a request row must carry (features, entities, the timestamp when used)."""
    features, data = params.features, params.data
    names = list(dict.fromkeys([*features.raw, *features.lag_columns, *features.rolling_columns]))
    if features.calendar or needs_history(params):
        names.insert(0, data.timestamp_column)
    if needs_history(params):
        names += [e for e in data.entity_columns if e not in names]
    return names


def optional_columns(params: Params) -> list[str]:
    """Columns a row may carry: its id and the experiment's sticky key (kept in the log)."""
    data = params.data
    extra = [data.id_column, params.serve.experiment.sticky_key, params.join_column]
    required = set(input_columns(params))
    return [c for c in dict.fromkeys(extra) if c and c not in required and c in data.columns]


def _annotation(spec: ColumnSpec) -> Any:
    if spec.dtype in CATEGORICAL_DTYPES:
        return str
    if spec.dtype == "bool":
        return bool
    if spec.dtype == "int":
        return int
    return float


def _naive_utc(value: dt.datetime) -> dt.datetime:
    """Times with a UTC offset become naive UTC, as batches are stored."""
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


Timestamp = Annotated[dt.datetime, AfterValidator(_naive_utc)]


def _field(name: str, params: Params, required: bool) -> tuple[Any, Any]:
    data = params.data
    if name == data.timestamp_column:
        return (
            (Timestamp, Field(..., alias=name))
            if required
            else (Timestamp | None, Field(None, alias=name))
        )
    spec = data.columns[name]
    kind = _annotation(spec)
    limits: dict[str, Any] = {}
    if kind is float:
        limits["allow_inf_nan"] = False  # NaN/inf in JSON: refused by name
    if spec.min is not None and kind in (int, float):
        limits["ge"] = spec.min
    if spec.max is not None and kind in (int, float):
        limits["le"] = spec.max
    if required and spec.required:
        return (kind, Field(..., alias=name, **limits))
    return (kind | None, Field(None, alias=name, **limits))


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


def row_model(params: Params) -> type[BaseModel]:
    """A pydantic model of one request row for this model's feature step.

    Fields carry the column names as aliases (any text: spaces, punctuation, a leading
    underscore, a name BaseModel uses itself); dump rows with `by_alias=True`.
    """
    fields: dict[str, Any] = {}
    names = [(n, True) for n in input_columns(params)]
    names += [(n, False) for n in optional_columns(params)]
    for i, (name, required) in enumerate(names):
        fields[f"c{i}"] = _field(name, params, required=required)
    model: type[BaseModel] = create_model("PredictRow", __base__=_Row, **fields)
    return model


def rows_adapter(params: Params) -> TypeAdapter[list[BaseModel]]:
    """A validator of a list of request rows (built once per model version: it is not cheap)."""
    return TypeAdapter(list[row_model(params)])  # type: ignore[misc,arg-type]
