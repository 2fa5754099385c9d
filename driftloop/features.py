"""The feature step: model inputs and the label from raw rows, identical in training and scoring.

Rows are ordered by (timestamp, *entities). Everything here looks only backwards in time, per
entity, except a forecast target, which is the point of the task (a later row's value). History
features (lags, rolling means) need the rows before a window: callers pass them in and keep only
the rows they want afterwards. Categorical columns stay strings: encoding lives inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftloop.config import DataParams, FeatureParams, Params, TargetParams

SEASONS = ("winter", "spring", "summer", "autumn")


@dataclass(frozen=True)
class Dataset:
    """Model-ready rows: inputs X, label y (-1: not known yet), timestamps and segments, aligned."""

    X: pd.DataFrame
    y: pd.Series
    timestamps: pd.Series
    segments: pd.DataFrame  # one column per evaluation segment, values as strings

    def __len__(self) -> int:
        return len(self.X)

    @property
    def labelled(self) -> np.ndarray:
        """Rows whose label is known."""
        return (self.y >= 0).to_numpy()

    def subset(self, mask: pd.Series | np.ndarray) -> Dataset:
        keep = np.asarray(mask, dtype=bool)
        return Dataset(
            self.X.loc[keep].reset_index(drop=True),
            self.y.loc[keep].reset_index(drop=True),
            self.timestamps.loc[keep].reset_index(drop=True),
            self.segments.loc[keep].reset_index(drop=True),
        )


def sort_rows(frame: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    """Rows in (timestamp, *entities) order (stable), with a fresh index."""
    by = [data.timestamp_column, *data.entity_columns]
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def season_of(timestamps: pd.Series) -> pd.Series:
    """Meteorological season of each timestamp (northern hemisphere)."""
    month = pd.to_datetime(timestamps).dt.month
    return ((month % 12) // 3).map(dict(enumerate(SEASONS))).astype(str)


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def _categorical(series: pd.Series) -> pd.Series:
    """Strings (missing stays NaN): the same text whatever dtype the batch carried."""
    out = series.astype(object).where(series.notna())
    if pd.api.types.infer_dtype(out, skipna=True) in ("string", "empty"):
        return out  # strings already (a check in C; the map below is a Python call per value)
    return out.map(lambda v: v if isinstance(v, str) or v is None or v != v else str(v))


def _lagged(frame: pd.DataFrame, column: str, period: int, entities: list[str]) -> pd.Series:
    values = _numeric(frame[column])
    if not entities:
        return values.shift(period)
    return values.groupby([frame[e] for e in entities], sort=False, dropna=False).shift(period)


def _rolling_mean(
    frame: pd.DataFrame, column: str, window: str, timestamp: str, entities: list[str]
) -> pd.Series:
    """Mean of the column over the time window (t - window, t] of each row, per entity.

    Rows sharing a timestamp see each other (they are known at the same time), whatever their
    order in the frame; missing values are left out of the mean.
    """
    values = _numeric(frame[column]).to_numpy()
    seconds = pd.to_datetime(frame[timestamp]).to_numpy().astype("datetime64[s]").astype(np.int64)
    if entities:
        gid = frame.groupby(entities, sort=False, dropna=False).ngroup().to_numpy()
    else:
        gid = np.zeros(len(frame), dtype=np.int64)
    span = int(seconds.max() - seconds.min()) + 1 if len(frame) else 1
    width = int(pd.Timedelta(window).total_seconds())
    key = gid * (span + width + 1) + (seconds - (seconds.min() if len(frame) else 0))
    order = np.argsort(key, kind="stable")
    sorted_key, sorted_values = key[order], values[order]
    present = ~np.isnan(sorted_values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(present, sorted_values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(present)])
    end = np.searchsorted(sorted_key, sorted_key, side="right")
    begin = np.searchsorted(sorted_key, sorted_key - width, side="right")
    n = counts[end] - counts[begin]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n > 0, (sums[end] - sums[begin]) / np.maximum(n, 1), np.nan)
    out = np.empty(len(frame))
    out[order] = means
    return pd.Series(out, index=frame.index)


def _calendar(timestamps: pd.Series, names: list[str]) -> dict[str, pd.Series]:
    ts = pd.to_datetime(timestamps)
    out: dict[str, pd.Series] = {}
    if "day_of_year" in names:
        day = ts.dt.dayofyear.astype(float)
        out["doy_sin"] = pd.Series(np.sin(2 * np.pi * day / 365.25), index=ts.index)
        out["doy_cos"] = pd.Series(np.cos(2 * np.pi * day / 365.25), index=ts.index)
    if "weekday" in names:
        out["weekday"] = ts.dt.weekday.astype(float)
    if "hour" in names:
        out["hour"] = ts.dt.hour.astype(float)
    if "month" in names:
        out["month"] = ts.dt.month.astype(float)
    return out


def feature_frame(frame: pd.DataFrame, features: FeatureParams, data: DataParams) -> pd.DataFrame:
    """Model inputs for every row of a sorted frame, from that row and earlier rows only."""
    entities = list(data.entity_columns)
    out: dict[str, pd.Series] = {}
    for col in features.numerical:
        out[col] = _numeric(frame[col])
    for col in features.lag_columns:
        for period in features.lags.periods:
            out[f"{col}_lag{period}"] = _lagged(frame, col, period, entities)
    for col in features.rolling_columns:
        for window in features.rolling.windows:
            name = f"{col}_mean{window}"
            out[name] = _rolling_mean(frame, col, window, data.timestamp_column, entities)
    if features.calendar:  # the time is an input only when calendar features read it
        out.update(_calendar(frame[data.timestamp_column], list(features.calendar)))
    for col in features.categorical:
        out[col] = _categorical(frame[col])
    return pd.DataFrame(out, index=frame.index)


def label(frame: pd.DataFrame, target: TargetParams, data: DataParams) -> pd.Series:
    """Binary label per row of a sorted frame; NaN where it is not known (yet)."""
    if target.forecast is None:
        return _explicit_label(frame, target)
    spec = target.forecast
    values = _numeric(frame[spec.column])
    if data.entity_columns:
        keys = [frame[e] for e in data.entity_columns]
        future = values.groupby(keys, sort=False, dropna=False).shift(-spec.horizon)
    else:
        future = values.shift(-spec.horizon)
    rule = future > values if spec.rises else future > float(spec.above or 0.0)
    return rule.astype(float).where(future.notna() & (values.notna() | (not spec.rises)))


def _explicit_label(frame: pd.DataFrame, target: TargetParams) -> pd.Series:
    column = str(target.column)
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index)
    raw = frame[column]
    if target.above is not None or target.at_least is not None:
        values = _numeric(raw)
        hit = values > target.above if target.above is not None else values >= target.at_least
        return hit.astype(float).where(values.notna())
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype(float)
    values = _numeric(raw)
    return values.where(values.isin([0.0, 1.0]))


def segment_frame(frame: pd.DataFrame, segments: list[str], timestamp: str) -> pd.DataFrame:
    """The evaluation segment of each row, as strings (derived ones from the timestamp)."""
    ts = pd.to_datetime(frame[timestamp])
    out: dict[str, pd.Series] = {}
    for name in segments:
        if name in frame.columns:
            out[name] = frame[name].astype(str)
        elif name == "season":
            out[name] = season_of(ts)
        elif name == "month":
            out[name] = ts.dt.month.astype(str)
        elif name == "weekday":
            out[name] = ts.dt.weekday.astype(str)
        elif name == "hour":
            out[name] = ts.dt.hour.astype(str)
    return pd.DataFrame(out, index=frame.index)


def make_dataset(frame: pd.DataFrame, params: Params, *, labelled_only: bool = True) -> Dataset:
    """Sort, build inputs, label and segments; drop rows without a label when labelled_only."""
    data = params.data
    ordered = sort_rows(frame, data)
    X = feature_frame(ordered, params.features, data)
    y = label(ordered, params.target, data)
    keep = y.notna() if labelled_only else pd.Series(True, index=ordered.index)
    segments = segment_frame(ordered, list(params.evaluation.segments), data.timestamp_column)
    return Dataset(
        X.loc[keep].reset_index(drop=True),
        y.loc[keep].fillna(-1).astype(int).reset_index(drop=True),
        pd.to_datetime(ordered[data.timestamp_column]).loc[keep].reset_index(drop=True),
        segments.loc[keep].reset_index(drop=True),
    )


def split_by_time(data: Dataset, holdout_days: int) -> tuple[Dataset, Dataset]:
    """Time-ordered split: rows of the last `holdout_days` are the holdout (cut on timestamps)."""
    if len(data) == 0:
        return data, data
    cutoff = data.timestamps.max() - pd.Timedelta(days=holdout_days)
    is_holdout = (data.timestamps > cutoff).to_numpy()
    return data.subset(~is_holdout), data.subset(is_holdout)


def time_folds(timestamps: pd.Series, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window CV folds cut on distinct timestamps (one timestamp never in two sides)."""
    from sklearn.model_selection import TimeSeriesSplit

    values = pd.to_datetime(timestamps).to_numpy()
    unique = np.unique(values)
    if len(unique) <= n_splits:
        return []
    folds = []
    for fit_idx, val_idx in TimeSeriesSplit(n_splits=n_splits).split(unique):
        fit = np.flatnonzero(values <= unique[fit_idx[-1]])
        val = np.flatnonzero((values >= unique[val_idx[0]]) & (values <= unique[val_idx[-1]]))
        folds.append((fit, val))
    return folds
