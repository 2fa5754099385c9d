"""Retrain windows: which accepted rows a retrain learns from (`retrain.window` in params).

- rolling: the most recent `window_days` (rows after the newest row's time minus N days);
- growing: every row so far;
- seasonal: the same season of earlier years (each anniversary of the newest row's time, plus or
  minus `season_days`) and the most recent `recent_days`, so a model retrained in October learns
  from the autumns it has seen and from the last weeks, not from last spring.

Pure functions on timestamps: the training stages and the replay's direct refits share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from driftloop.config import RetrainParams, WindowKind

MAX_YEARS_BACK = 100  # a bound for the loop over anniversaries; real data stops long before


@dataclass(frozen=True)
class Window:
    """A retrain window policy."""

    kind: WindowKind = "rolling"
    days: int | None = 365  # rolling: its length (None: every row)
    season_days: int = 45  # seasonal: days either side of each anniversary
    recent_days: int = 90  # seasonal: the most recent days, always kept

    @property
    def label(self) -> str:
        """A short human name: `rolling 365 days`, `growing`, `seasonal +-45 days + last 56`."""
        if self.kind == "rolling" and self.days is not None:
            return f"rolling {self.days} days"
        if self.kind == "seasonal":
            return f"seasonal +-{self.season_days} days + last {self.recent_days}"
        return "growing"


def of(retrain: RetrainParams, kind: WindowKind | None = None) -> Window:
    """The window that `params.retrain` describes (or the same settings with another kind)."""
    return Window(
        kind or retrain.window, retrain.window_days, retrain.season_days, retrain.recent_days
    )


COMPARED_ROLLING_DAYS = 365  # the rolling window a replay compares when the loop keeps all


def compared(retrain: RetrainParams, kinds: Sequence[WindowKind]) -> list[Window]:
    """The windows a replay compares: each kind with the loop's settings, a rolling window
    of a year when the loop's has no length (it would be every row, the growing window again),
    each distinct window once."""
    out: list[Window] = []
    for kind in kinds:
        window = of(retrain, kind)
        if kind == "rolling" and window.days is None:
            window = replace(window, days=COMPARED_ROLLING_DAYS)
        if window.label not in {w.label for w in out}:
            out.append(window)
    return out


def as_window(window: int | Window | None) -> Window | None:
    """A number of days is a rolling window; None is every row."""
    if window is None or isinstance(window, Window):
        return window
    return Window("rolling", int(window))


def select(times: pd.Series | np.ndarray, end: pd.Timestamp, window: Window) -> np.ndarray:
    """Which of `times` (all at or before `end`, the newest row's time) the window keeps."""
    stamps = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    if window.kind == "growing" or (window.kind == "rolling" and window.days is None):
        return np.ones(len(stamps), dtype=bool)
    if window.kind == "rolling":
        return np.asarray(stamps > end - pd.Timedelta(days=int(window.days or 0)))
    keep = np.asarray(stamps > end - pd.Timedelta(days=window.recent_days))
    margin = pd.Timedelta(days=window.season_days)
    first = stamps.min() if len(stamps) else end
    for years in range(1, MAX_YEARS_BACK + 1):
        anniversary = end - pd.DateOffset(years=years)  # Feb 29 falls back to Feb 28
        if anniversary + margin < first:
            break
        keep |= np.asarray((stamps >= anniversary - margin) & (stamps <= anniversary + margin))
    return keep


def since(
    times: pd.Series, end: pd.Timestamp, window: Window, keep: np.ndarray
) -> pd.Timestamp | None:
    """The time after which the kept rows start (None: every row is kept)."""
    if window.kind == "rolling" and window.days is not None:
        return end - pd.Timedelta(days=window.days)
    if bool(keep.all()) or not keep.any():
        return None
    return pd.Timestamp(pd.to_datetime(np.asarray(times)[keep]).min()) - pd.Timedelta(1, "ns")
