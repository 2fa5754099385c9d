"""A user's own event table, as a new user would bring it: rows with an id, a timestamp, numeric,
boolean and categorical columns whose names and values carry unicode, spaces and punctuation, and
labels that become known days later, in a file (or folder, or table) of their own.

Generated from a seeded model of returns in a small retail chain, so a classifier has something
real to learn (returns depend on the amount, the store and whether the customer is new), and the
world drifts halfway (a new store opens, amounts rise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ID, TIME, AMOUNT, NEW, STORE, CHANNEL = (
    "event id",
    "event time",
    "amount (€)",
    "is new?",
    "store name",
    "channel/type",
)
LABEL, KNOWN_AT = "returned", "known at"
STORES = ["Café Zürich", "€uro Shop", "50% Off", "A+B (outlet)", "#1 Store"]
LATE_STORE = "Ñandú & Co."  # opens halfway: an unseen category in a later batch
CHANNELS = ["web", "app", "phone"]


def events(
    start: str = "2024-01-01", days: int = 70, per_day: int = 40, seed: int = 7
) -> pd.DataFrame:
    """`days` of events (with their true label, for building label files)."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    day = np.repeat(np.arange(days), per_day)
    seconds = rng.integers(8 * 3600, 20 * 3600, n)
    times = pd.Timestamp(start) + pd.to_timedelta(day, "D") + pd.to_timedelta(seconds, "s")
    late = day >= days // 2
    stores = rng.choice(STORES, n)
    stores = np.where(late & (rng.random(n) < 0.1), LATE_STORE, stores)
    amount = np.round(rng.lognormal(3.5 + 0.2 * late, 0.6, n), 2)
    new = rng.random(n) < 0.3
    store_effect = (
        pd.Series(stores)
        .map(
            {
                "Café Zürich": -0.5,
                "€uro Shop": 0.4,
                "50% Off": 1.0,
                "A+B (outlet)": 0.2,
                "#1 Store": -0.2,
                LATE_STORE: 0.6,
            }
        )
        .to_numpy()
    )
    logit = -1.6 + 0.012 * (amount - 35) + store_effect + 0.8 * new
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            ID: [f"ev-{i:05d}" for i in range(n)],
            TIME: times,
            AMOUNT: amount,
            NEW: new,
            STORE: stores,
            CHANNEL: rng.choice(CHANNELS, n),
            LABEL: label,
        }
    )
    return frame.sort_values(TIME, kind="stable").reset_index(drop=True)


def labels_of(frame: pd.DataFrame, seed: int = 11) -> pd.DataFrame:
    """The labels of these events, each known 2 to 10 days after its event."""
    rng = np.random.default_rng(seed)
    delay = pd.to_timedelta(rng.uniform(2, 10, len(frame)), "D")
    out = pd.DataFrame({ID: frame[ID], LABEL: frame[LABEL], KNOWN_AT: frame[TIME] + delay})
    return out.sort_values(KNOWN_AT, kind="stable").reset_index(drop=True)


def rows_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The event rows as the source holds them: no label (it arrives later)."""
    return frame.drop(columns=[LABEL])


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def params(
    source: Any, labels: Any = None, *, name: str = "returns", **sections: dict[str, Any]
) -> dict[str, Any]:
    """A params file for this table, written by hand as a user would (small and fast)."""
    raw: dict[str, Any] = {
        "data": {
            "source": source,
            "timestamp_column": TIME,
            "id_column": ID,
            "raw_dir": f"data/{name}/raw",
            "labels_dir": f"data/{name}/labels",
            "quarantine_dir": f"data/{name}/quarantine",
            "monitoring_dir": f"data/{name}/monitoring",
            "columns": {
                ID: {"dtype": "str"},
                AMOUNT: {"dtype": "float", "min": 0.0, "max": 100000.0},
                NEW: {"dtype": "bool"},
                STORE: {"dtype": "str"},
                CHANNEL: {"dtype": "str", "allowed": CHANNELS},
                LABEL: {"dtype": "int", "allowed": [0, 1], "required": False},
            },
        },
        "target": {"name": "returned", "column": LABEL},
        "labels": {"join_column": ID, "time_column": KNOWN_AT, "source": labels},
        "validation": {"max_unknown_category_share": 0.2, "distribution_min_history": 200},
        "features": {"numerical": [AMOUNT], "categorical": [STORE, CHANNEL, NEW]},
        "train": {
            "experiment": f"{name}-train",
            "model_name": name,
            "holdout_days": 10,
            "cv_splits": 2,
            "hyperparams": {"max_iter": 40, "max_depth": 3},
        },
        "evaluation": {"segments": [STORE]},
        "promote": {"floor": 0.5, "min_holdout_rows": 20, "min_segment_rows": 5},
        "monitor": {
            "experiment": f"{name}-monitor",
            "window_days": 14,
            "reference": "training",
            "min_rows": 20,
            "min_labelled_rows": 20,
            "html_report": "on_action",
            "cooldown_days": 7,
        },
        "retrain": {"window_days": 60, "schedule_every_days": 14},
        "replay": {
            "initial_until": "2024-01-28",
            "end": "2024-03-10",
            "step_days": 7,
            "holdout_days": 7,
            "report_dir": f"reports/{name}-replay",
            "title": "returns replay",
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def write_params(root: Path, raw: dict[str, Any], name: str = "returns") -> Path:
    path = root / "models" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path
