"""The accepted data's profile: kept merged across ingests, equal to merging every batch."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop import profiles
from driftloop.config import Params, parse_params
from driftloop.datastore import write_batch

EVENTS: dict[str, Any] = {
    "data": {
        "source": "events.csv",
        "timestamp_column": "ts",
        "id_column": "event_id",
        "columns": {
            "event_id": {"dtype": "str"},
            "store": {"dtype": "category"},
            "amount": {"dtype": "float"},
            "qty": {"dtype": "int"},
            "returned": {"dtype": "int", "allowed": [0, 1], "required": False},
        },
    },
    "target": {"column": "returned"},
    "features": {"numerical": ["amount", "qty"], "categorical": ["store"]},
}


def params() -> Params:
    return parse_params(copy.deepcopy(EVENTS))


def week(k: int, rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(k)
    start = pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=k)
    return pd.DataFrame(
        {
            "event_id": [f"e{k}-{i}" for i in range(rows)],
            "ts": start + pd.to_timedelta(rng.integers(0, 7 * 24 * 60, rows), unit="min"),
            "store": rng.choice([f"s{k % 5}", "north", "süd €"], rows),
            "amount": rng.gamma(2.0 + k / 4, 10.0, rows),
            "qty": rng.integers(0, 5 + k, rows),
            "returned": rng.integers(0, 2, rows),
        }
    )


def accept(raw: Path, state: Path, p: Params, k: int) -> Path:
    frame = week(k)
    path = write_batch(frame, raw, "ts")
    profiles.remember(path, frame, p, state)
    return path


def from_scratch(raw: Path, p: Params, state: Path) -> profiles.AcceptedProfile:
    spec = profiles.ProfileSpec.of(p)
    files = sorted(raw.glob("*.parquet"))
    folder = profiles.cache_folder(state, raw, spec)
    return profiles.AcceptedProfile.merge(profiles.PROFILES.get(f, spec, folder) for f in files)


def assert_same(kept: profiles.AcceptedProfile, full: profiles.AcceptedProfile, rows: Any) -> None:
    """The same rows, keys, newest time and categories; quantiles as close to the rows' own as
    merging every batch's sketch at once gets (within 1 % of the range)."""
    assert kept.rows == full.rows
    assert np.array_equal(kept.keys, full.keys)
    assert np.array_equal(kept.identities, full.identities)
    assert kept.newest == full.newest
    assert kept.categories == full.categories
    ours, theirs = kept.quantiles(0.01, 0.99), full.quantiles(0.01, 0.99)
    assert ours.keys() == theirs.keys()
    for name, pair in ours.items():
        true = rows[name].quantile([0.01, 0.99]).to_numpy()
        tolerance = 0.01 * (true[1] - true[0])
        errors = np.abs(np.asarray(pair) - true)
        assert (errors <= np.abs(np.asarray(theirs[name]) - true) + tolerance).all(), name


def all_rows(raw: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(raw.glob("*.parquet"))])


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> None:
    profiles.PROFILES.clear()


def test_the_kept_profile_grows_with_each_batch_and_equals_merging_all(tmp_path: Path) -> None:
    raw, state, p = tmp_path / "raw", tmp_path / "state", params()
    for k in range(12):
        accept(raw, state, p, k)
        kept = profiles.accepted_profile(raw, p, state)
        assert_same(kept, from_scratch(raw, p, state), all_rows(raw))
    merged = profiles.cache_folder(state, raw, profiles.ProfileSpec.of(p)) / profiles.MERGED
    assert merged.exists()
    # one sketch per column whatever the number of batches: the kept file does not grow with them
    assert all(len(parts) == 1 for parts in kept.sketches.values())
    # the true quantiles of all rows, against the sketch's
    rows = pd.concat([week(k) for k in range(12)])
    low, high = kept.quantiles(0.01, 0.99)["amount"]
    true_low, true_high = rows["amount"].quantile([0.01, 0.99])
    spread = true_high - true_low
    assert abs(low - true_low) <= 0.02 * spread and abs(high - true_high) <= 0.02 * spread


def test_a_new_process_merges_only_the_new_batch_into_the_kept_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, state, p = tmp_path / "raw", tmp_path / "state", params()
    for k in range(5):
        accept(raw, state, p, k)
    profiles.accepted_profile(raw, p, state)
    newest = accept(raw, state, p, 5)
    profiles.PROFILES.clear()  # a new process: nothing in memory

    read: list[str] = []
    real = profiles._load

    def counting(path: Path) -> profiles.BatchProfile | None:
        read.append(path.name)
        return real(path)

    monkeypatch.setattr(profiles, "_load", counting)
    kept = profiles.accepted_profile(raw, p, state)
    assert read == [f"{newest.name}.npz"]
    monkeypatch.setattr(profiles, "_load", real)
    assert_same(kept, from_scratch(raw, p, state), all_rows(raw))


def test_a_removed_batch_or_a_damaged_file_rebuilds_it_from_every_batch(tmp_path: Path) -> None:
    raw, state, p = tmp_path / "raw", tmp_path / "state", params()
    paths = [accept(raw, state, p, k) for k in range(4)]
    before = profiles.accepted_profile(raw, p, state)
    paths[1].unlink()  # e.g. the data folder checked out at an earlier version
    after = profiles.accepted_profile(raw, p, state)
    assert after.rows == before.rows - len(week(1))
    assert_same(after, from_scratch(raw, p, state), all_rows(raw))

    merged = profiles.cache_folder(state, raw, profiles.ProfileSpec.of(p)) / profiles.MERGED
    merged.write_bytes(b"not a profile")
    profiles.PROFILES.clear()
    again = profiles.accepted_profile(raw, p, state)
    assert_same(again, from_scratch(raw, p, state), all_rows(raw))
