"""Which label belongs to a row or a prediction: one rule, written once, read by every caller.

A label reaches driftloop in one of three ways, each with the time it became known:
- in the row itself (the data carries the target column): known with the row, at its timestamp;
- in an accepted label batch (`data.labels_dir`): known at its `label_time`;
- as feedback sent to the service for a data id: known when received (`received_at`), and
  turned into a label batch later by `flush_feedback`.

**The rule: a key's label is the first one known.** Of the labels whose label time is at or
before `as_of` (every label when `as_of` is None), the one with the earliest label time wins; at
equal times, the row's own, then an accepted batch's (it passed the label gate), then feedback.
A label known after `as_of` does not exist for a decision taken then, so a replay never sees a
label before its label time. A key without a label known at `as_of` is pending (NaN), never a
guess. Every row of a key gets the key's label, except a row that carries its own: that label
was known with the row, before any label sent about it.

Why the first and not the latest: a label is a fact once known. The label gate refuses a label
that differs from the one accepted for its key (the batch is quarantined as a conflict) and the
feedback log records a data id once, so the first label is the one the gates, the models and
every decision already acted on; a reader that took a later one would judge on a label the
stored data disowns.

Keys are compared as text, so an id stored as an int joins a key sent back as a string.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from driftloop import datastore
from driftloop.config import Params
from driftloop.datastore import LABEL_TIME, TimeBound

if TYPE_CHECKING:
    from driftloop.config import Settings

KEY, VALUE, ORIGIN = "key", "value", "origin"
Origin = Literal["row", "batch", "feedback"]
ORIGINS: tuple[Origin, ...] = ("row", "batch", "feedback")  # the order at equal label times
PREDICTION_ID = "prediction_id"


# -- the rule -------------------------------------------------------------------------------------


def candidates(
    keys: pd.Series, values: pd.Series, times: pd.Series, origin: Origin
) -> pd.DataFrame:
    """Labels of one origin as [key, value, label_time, origin]; a missing value is none."""
    frame = pd.DataFrame(
        {
            KEY: pd.Series(keys).to_numpy(),
            VALUE: pd.Series(values).to_numpy(),
            LABEL_TIME: datastore.as_ns(pd.Series(pd.to_datetime(times))).to_numpy(),
            ORIGIN: ORIGINS.index(origin),
        }
    )
    return frame[frame[VALUE].notna()].reset_index(drop=True)


def comparable(*keys: pd.Series) -> list[pd.Series]:
    """Join values that compare equal when their text does: as they are when they share a
    dtype (ints with ints, strings with strings: no conversion), else all as text."""
    kinds = {_kind(k) for k in keys if len(k)}
    return list(keys) if len(kinds) <= 1 else [as_keys(k) for k in keys]


def _kind(values: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(values.dtype):
        return "integer"
    return str(pd.api.types.infer_dtype(values, skipna=True))


def as_keys(values: pd.Series) -> pd.Series:
    """Join values as text (missing stays missing)."""
    values = pd.Series(values)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype(str)  # never missing
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return values.astype(object)
    return values.astype(object).where(values.isna(), values.astype(str))


def first_known(
    labels: pd.DataFrame, as_of: TimeBound | None = None, *, key: str = KEY, value: str = VALUE
) -> pd.DataFrame:
    """One label per key, by the module's rule: the earliest known at `as_of`.

    Args:
        labels: label rows with `key`, `value` and `label_time` columns (and `origin`, to
            order labels known at the same time); keys of one kind (see `comparable`).
        as_of: labels with a later label time (or none) are not known yet; None: all are.

    Returns:
        The winning rows, in the order they became known.
    """
    keep = datastore.time_mask(labels[LABEL_TIME], None, as_of) & labels[value].notna().to_numpy()
    kept = labels.loc[keep]
    kept = kept.sort_values([LABEL_TIME, *([ORIGIN] if ORIGIN in kept else [])], kind="stable")
    return kept.loc[~kept[key].duplicated(keep="first").to_numpy()].reset_index(drop=True)


def label_of(keys: pd.Series, known: pd.DataFrame) -> pd.Series:
    """The raw label of each key (as `first_known` resolved them), NaN where none is known."""
    wanted, have = comparable(pd.Series(keys), known[KEY])
    by_key = pd.Series(known[VALUE].to_numpy(), index=have.to_numpy())
    return pd.Series(wanted.map(by_key).to_numpy(), index=keys.index)


# -- rows and predictions ----------------------------------------------------------------------


def attach(
    frame: pd.DataFrame, known: pd.DataFrame, params: Params, as_of: TimeBound | None = None
) -> pd.DataFrame:
    """Rows with their label in `target.column` (NaN: none known at `as_of`).

    `known` holds label candidates ([key, value, label_time, origin], e.g. `known_labels`). A
    row that carries its own label keeps it (known with the row, so first); every other row gets
    its key's first known label. A forecast target, or a model without a join column, has no
    labels to join: the rows come back as they are.
    """
    column, join = params.target.column, params.join_column
    if column is None or join is None or join not in frame:
        return frame
    joined = label_of(frame[join], first_known(known, as_of))
    if column in frame:
        joined = frame[column].astype(object).where(frame[column].notna(), joined)
    return frame.assign(**{column: joined.infer_objects()})


def binary(values: pd.Series, params: Params) -> pd.Series:
    """Raw labels as 0/1 by the target's rule (NaN: none, or not a valid label)."""
    from driftloop.features import label

    column = str(params.target.column)
    frame = pd.DataFrame({column: pd.Series(values).to_numpy()})
    return pd.Series(label(frame, params.target, params.data).to_numpy(), index=values.index)


def for_predictions(predictions: pd.DataFrame, known: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Binary labels per served prediction: [prediction_id, label], one row each, labelled only.

    A prediction is labelled by its row's data id (the join column): a label sent for a data id
    labels every prediction of that row, whichever prediction id it was sent with.
    """
    join = params.join_column
    if predictions.empty or join is None or join not in predictions or known.empty:
        return pd.DataFrame({PREDICTION_ID: pd.Series([], dtype=object), "label": []})
    y = binary(label_of(predictions[join], first_known(known)), params)
    out = pd.DataFrame({PREDICTION_ID: predictions[PREDICTION_ID].to_numpy(), "label": y})
    return on_predictions(out)


def on_predictions(labels: pd.DataFrame) -> pd.DataFrame:
    """One label per prediction id (the first given), labelled predictions only, as ints."""
    known = labels.dropna(subset=["label"]).drop_duplicates(PREDICTION_ID, keep="first")
    return known.astype({"label": int}).reset_index(drop=True)


def join_predictions(rows: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Prediction rows with their label (`for_predictions`): unlabelled predictions left out."""
    known = on_predictions(labels)[[PREDICTION_ID, "label"]]
    return rows.merge(known, on=PREDICTION_ID, how="inner")


def prediction_keys(predictions: pd.DataFrame, join: str | None) -> dict[str, str | None]:
    """The data id each prediction id was served for (None: the row carried none).

    Feedback sent by prediction id is recorded under this data id, so it labels the row.
    """
    if predictions.empty:
        return {}
    ids = predictions[PREDICTION_ID].astype(str)
    if not join or join not in predictions:
        return dict.fromkeys(ids)
    keys = as_keys(predictions[join])
    return {p: (None if pd.isna(k) else str(k)) for p, k in zip(ids, keys, strict=True)}


# -- readers (the edges: label batches on disk, the feedback log) -----------------------------


def accepted(labels_dir: Path, params: Params, *, as_of: TimeBound | None = None) -> pd.DataFrame:
    """Accepted labels known at `as_of`, one per join value by the rule.

    Returns:
        Columns [join column, target.column, label_time], sorted by (label_time, join column).
    """
    join, column = datastore.label_columns(params)
    rows = datastore.read_label_rows(labels_dir, params, as_of=as_of)
    known = first_known(rows, as_of, key=join, value=column)
    return known.sort_values([LABEL_TIME, join], kind="stable").reset_index(drop=True)


def from_batches(rows: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Candidates from label batch rows ([join, target.column, label_time])."""
    join, column = datastore.label_columns(params)
    return candidates(rows[join], rows[column], rows[LABEL_TIME], "batch")


def from_feedback(fed: pd.DataFrame) -> pd.DataFrame:
    """Candidates from the feedback log ([key, label, received_at])."""
    return candidates(fed["key"], fed["label"], fed["received_at"], "feedback")


def known_labels(
    params: Params,
    settings: Settings,
    as_of: TimeBound | None = None,
    *,
    feedback: bool = True,
) -> pd.DataFrame:
    """The labels known at `as_of` as candidates, one per key by the rule.

    Accepted label batches always; the feedback log too unless `feedback=False` (training and
    the replay's judgement read only labels that passed the label gate and are DVC-versioned).
    An empty frame for a forecast target (its labels are later rows, not label batches).
    """
    if params.target.column is None or params.join_column is None:
        return candidates(pd.Series([]), pd.Series([]), pd.Series([]), "batch")
    rows = datastore.read_label_rows(settings.path(params.data.labels_dir), params, as_of=as_of)
    parts = [from_batches(rows, params)]
    if feedback:
        from driftloop.serving.feedback import read_feedback

        parts.append(from_feedback(read_feedback(params, settings)))
    parts = [p for p in parts if len(p)]
    if not parts:
        return candidates(pd.Series([]), pd.Series([]), pd.Series([]), "batch")
    keys = comparable(*(p[KEY] for p in parts))
    parts = [p.assign(**{KEY: k.to_numpy()}) for p, k in zip(parts, keys, strict=True)]
    return first_known(pd.concat(parts, ignore_index=True), as_of)
