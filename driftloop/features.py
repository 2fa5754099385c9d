"""Target and features from raw daily rows: today's values, recent lags, rolling means, season.

Everything here looks only backwards in time except the target, which is the point of the task
(tomorrow's value). Rows whose target is not yet known are kept apart as `unlabelled`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftloop.config import FeatureParams, Params, TargetParams

SEASONS = ("winter", "spring", "summer", "autumn")


@dataclass(frozen=True)
class Dataset:
    """Model-ready rows: features X, binary target y, dates and segment labels, aligned."""

    X: pd.DataFrame
    y: pd.Series
    dates: pd.Series
    segments: pd.Series

    def __len__(self) -> int:
        return len(self.X)

    def subset(self, mask: pd.Series | np.ndarray) -> Dataset:
        keep = np.asarray(mask, dtype=bool)
        return Dataset(
            self.X.loc[keep].reset_index(drop=True),
            self.y.loc[keep].reset_index(drop=True),
            self.dates.loc[keep].reset_index(drop=True),
            self.segments.loc[keep].reset_index(drop=True),
        )


def season_of(dates: pd.Series) -> pd.Series:
    """Meteorological season of each date (northern hemisphere)."""
    month = pd.to_datetime(dates).dt.month
    index = (month % 12) // 3
    return index.map(dict(enumerate(SEASONS))).astype(str)


def add_target(frame: pd.DataFrame, target: TargetParams) -> pd.Series:
    """Binary label: target column `horizon` rows ahead exceeds the threshold (NaN: unknown)."""
    future = frame[target.column].shift(-target.horizon)
    label = (future > target.threshold).astype(float)
    return label.where(future.notna())


def feature_frame(frame: pd.DataFrame, features: FeatureParams, date_column: str) -> pd.DataFrame:
    """Feature columns for every row, from that row and earlier rows only."""
    out: dict[str, pd.Series] = {}
    for col in features.numeric:
        values = pd.to_numeric(frame[col], errors="coerce").astype(float)
        out[col] = values
        for lag in features.lags:
            out[f"{col}_lag{lag}"] = values.shift(lag)
        for window in features.rolling_windows:
            out[f"{col}_mean{window}"] = values.rolling(window, min_periods=1).mean()
    if features.season:
        day = pd.to_datetime(frame[date_column]).dt.dayofyear.astype(float)
        out["doy_sin"] = pd.Series(np.sin(2 * np.pi * day / 365.25), index=frame.index)
        out["doy_cos"] = pd.Series(np.cos(2 * np.pi * day / 365.25), index=frame.index)
    return pd.DataFrame(out, index=frame.index)


def make_dataset(frame: pd.DataFrame, params: Params, *, labelled_only: bool = True) -> Dataset:
    """Sort by date, build features and target; drop rows without target when labelled_only."""
    date_col = params.data.date_column
    ordered = frame.sort_values(date_col).reset_index(drop=True)
    X = feature_frame(ordered, params.features, date_col)
    y = add_target(ordered, params.target)
    keep = y.notna() if labelled_only else pd.Series(True, index=ordered.index)
    dates = pd.to_datetime(ordered[date_col])
    return Dataset(
        X.loc[keep].reset_index(drop=True),
        y.loc[keep].fillna(-1).astype(int).reset_index(drop=True),
        dates.loc[keep].reset_index(drop=True),
        season_of(dates.loc[keep]).reset_index(drop=True),
    )


def split_by_date(data: Dataset, holdout_days: int) -> tuple[Dataset, Dataset]:
    """Time-ordered split: the last `holdout_days` days are the holdout."""
    cutoff = data.dates.max() - pd.Timedelta(days=holdout_days)
    is_holdout = data.dates > cutoff
    return data.subset(~is_holdout), data.subset(is_holdout)
