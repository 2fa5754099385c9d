"""A profile of accepted data, merged from one small summary per immutable batch file.

What a new batch is checked against (which keys are accepted, with which values; the newest
accepted time; the categories seen; the numeric quantile range) used to be computed from all
accepted rows at every ingest. Batch files are immutable, so each is summarised once (key and
row hashes, its newest time, its categories, a quantile sketch per numeric column), the summary
is cached on disk beside the project's state, and an ingest merges the summaries: its cost
grows with the new batch, not with all data.

A row's identity is its declared columns (the label column aside: labels may arrive later) and
its timestamp, normalised so that the same row read from a CSV or from Parquet, as an int or a
float, hashes the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import CATEGORICAL_DTYPES, Params
from driftloop.datastore import NS_DTYPE, as_ns, batch_files

MERGED = "accepted.npz"  # all accepted batches' summaries merged, beside the per-batch files
GRID = np.linspace(0.0, 1.0, 201)  # quantile sketch: every half percent
FINE_GRID = np.linspace(0.0, 1.0, 2001)  # the merged sketch of many batches: every 0.05 %
NAT = np.iinfo(np.int64).min
NUMERIC_DTYPES = frozenset({"float", "int"})
_VERSION = 1  # bump when the summary's content changes


# -- what is summarised ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSpec:
    """Which columns a batch summary covers, from params (its fingerprint names the cache)."""

    time_column: str
    keys: tuple[str, ...]
    identity: tuple[tuple[str, str], ...]  # (column, kind): kind is time, num or text
    categories: tuple[str, ...]
    numeric: tuple[str, ...]

    @classmethod
    def of(cls, params: Params) -> ProfileSpec:
        data = params.data
        label = params.target.column
        identity = [(data.timestamp_column, "time")]
        for name, spec in sorted(data.columns.items()):
            if name != label:
                identity.append((name, "num" if spec.dtype in NUMERIC_DTYPES else "text"))
        keys = {data.id_column, *data.entity_columns}
        numeric = [
            n for n, s in data.columns.items() if s.dtype in NUMERIC_DTYPES and n not in keys
        ]
        return cls(
            data.timestamp_column,
            tuple(data.key_columns),
            tuple(identity),
            tuple(category_columns(params)),
            tuple(numeric),
        )

    @property
    def fingerprint(self) -> str:
        text = json.dumps([_VERSION, self.__dict__], sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def category_columns(params: Params) -> list[str]:
    """Categorical feature columns (str/category) without `allowed`: unseen values are limited."""
    columns = params.data.columns
    return [
        name
        for name in params.features.categorical
        if columns[name].dtype in CATEGORICAL_DTYPES and columns[name].allowed is None
    ]


# -- hashing rows ---------------------------------------------------------------------------------


def key_hashes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """A 64-bit hash per row of its key columns (timestamps as datetime64[ns])."""
    keys = frame[list(columns)]
    times = [c for c in columns if pd.api.types.is_datetime64_any_dtype(keys[c])]
    if times:
        keys = keys.assign(**{c: as_ns(keys[c]) for c in times})
    return pd.util.hash_pandas_object(keys, index=False).to_numpy()


def _text(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.isna(), values.astype(str)).where(values.notna())


def _normalised(values: pd.Series, kind: str) -> pd.Series:
    """One column's values in a form that hashes the same however the batch was read."""
    if kind == "time" and pd.api.types.is_datetime64_any_dtype(values):
        ticks = as_ns(values).to_numpy(dtype=NS_DTYPE).view("i8")
        return pd.Series(ticks, index=values.index)
    if kind == "num":
        number = pd.to_numeric(values, errors="coerce")
        if not (number.isna() & values.notna()).any():
            return number.astype(float)
    return _text(values)


def identity_hashes(frame: pd.DataFrame, spec: ProfileSpec) -> np.ndarray:
    """A 64-bit hash per row of its identity (declared columns but the label, and its time)."""
    columns = {
        f"c{i}": (
            _normalised(frame[name], kind)
            if name in frame.columns
            else pd.Series(None, index=frame.index, dtype=object)
        )
        for i, (name, kind) in enumerate(spec.identity)
    }
    return pd.util.hash_pandas_object(pd.DataFrame(columns), index=False).to_numpy()


@dataclass(frozen=True, eq=False)
class RowHashes:
    """Each row's key hash and identity hash, aligned with a frame's rows.

    Computed once per batch as it is read; the repeat check, the gate's conflict rule and the
    batch summary all take them from here instead of hashing the rows again.
    """

    keys: np.ndarray
    identities: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, spec: ProfileSpec) -> RowHashes | None:
        """The frame's hashes (None when it lacks a key column)."""
        if not set(spec.keys) <= set(frame.columns):
            return None
        return cls(key_hashes(frame, spec.keys), identity_hashes(frame, spec))

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keep: np.ndarray) -> RowHashes:
        """The hashes of the kept rows (a boolean mask over the rows), in order."""
        return RowHashes(self.keys[keep], self.identities[keep])

    def fits(self, frame: pd.DataFrame) -> bool:
        """Whether these can stand for the frame's rows (one hash per row)."""
        return len(self) == len(frame)


# -- one batch ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchProfile:
    """The summary of one batch: row keys and identities, newest time, categories, sketches."""

    rows: int
    keys: np.ndarray
    identities: np.ndarray
    newest: int  # nanoseconds since 1970 (NAT: none)
    categories: dict[str, list[Any]] = field(default_factory=dict)
    sketches: dict[str, tuple[int, list[float]]] = field(default_factory=dict)


def profile_frame(
    frame: pd.DataFrame, spec: ProfileSpec, hashes: RowHashes | None = None
) -> BatchProfile:
    """Summarise a batch (or any frame of accepted rows); `hashes`: its rows' (if known)."""
    if hashes is None or not hashes.fits(frame):
        hashes = RowHashes.of(frame, spec)
    empty = np.zeros(0, dtype="uint64")
    keys = hashes.keys if hashes is not None else empty
    ids = hashes.identities if hashes is not None else empty
    newest = NAT
    if spec.time_column in frame.columns and len(frame):
        ticks = as_ns(frame[spec.time_column]).to_numpy(dtype=NS_DTYPE).view("i8")
        ticks = ticks[ticks != NAT]
        newest = int(ticks.max()) if len(ticks) else NAT
    categories = {
        c: sorted({_plain(v) for v in frame[c].dropna().unique()}, key=str)
        for c in spec.categories
        if c in frame.columns
    }
    sketches = {}
    for name in spec.numeric:
        values = frame.get(name)
        if values is not None and pd.api.types.is_numeric_dtype(values) and values.notna().any():
            present = values.dropna().to_numpy(dtype=float)
            sketches[name] = (len(present), np.quantile(present, GRID).tolist())
    return BatchProfile(len(frame), keys, ids, newest, categories, sketches)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- all accepted data ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AcceptedProfile:
    """All accepted data as a new batch sees it.

    Attributes:
        rows: accepted rows.
        keys: the accepted row keys' hashes, sorted; `identities` aligned with them.
        newest: the newest accepted timestamp (None: no data).
        categories: values seen per categorical column without `allowed`.
        sketches: per numeric column, (rows, quantile points on GRID) of every batch.
    """

    rows: int = 0
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="uint64"))
    identities: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="uint64"))
    newest: pd.Timestamp | None = None
    categories: dict[str, frozenset[Any]] = field(default_factory=dict)
    sketches: dict[str, list[tuple[int, list[float]]]] = field(default_factory=dict)

    @classmethod
    def merge(cls, profiles: Iterable[BatchProfile]) -> AcceptedProfile:
        parts = list(profiles)
        if not parts:
            return cls()
        return cls._merge(parts)

    def including(self, profiles: Iterable[BatchProfile]) -> AcceptedProfile:
        """This profile with more batches merged in (each numeric column's sketches collapsed
        into one, so what is kept stays the same size however many batches it covers)."""
        parts = list(profiles)
        if self.rows == 0 and len(self.keys) == 0:
            return AcceptedProfile.merge(parts).compact()
        merged = AcceptedProfile._merge([self._as_batch(), *parts])
        return merged.compact()

    def compact(self) -> AcceptedProfile:
        """The same profile with each column's sketches collapsed into one."""
        sketches = {name: [collapsed(parts)] for name, parts in self.sketches.items() if parts}
        return AcceptedProfile(
            self.rows, self.keys, self.identities, self.newest, self.categories, sketches
        )

    def _as_batch(self) -> BatchProfile:
        one = self.compact()
        return BatchProfile(
            one.rows,
            one.keys,
            one.identities,
            NAT if one.newest is None else int(one.newest.value),
            {k: sorted(v, key=str) for k, v in one.categories.items()},
            {k: v[0] for k, v in one.sketches.items()},
        )

    @classmethod
    def _merge(cls, parts: list[BatchProfile]) -> AcceptedProfile:
        keys = np.concatenate([p.keys for p in parts])
        identities = np.concatenate([p.identities for p in parts])
        order = np.argsort(keys, kind="stable")
        newest = max(p.newest for p in parts)
        categories: dict[str, set[Any]] = {}
        sketches: dict[str, list[tuple[int, list[float]]]] = {}
        for part in parts:
            for name, values in part.categories.items():
                categories.setdefault(name, set()).update(values)
            for name, sketch in part.sketches.items():
                sketches.setdefault(name, []).append(sketch)
        return cls(
            sum(p.rows for p in parts),
            keys[order],
            identities[order],
            None if newest == NAT else pd.Timestamp(newest),
            {k: frozenset(v) for k, v in categories.items()},
            sketches,
        )

    def quantiles(self, low: float, high: float) -> dict[str, tuple[float, float]]:
        """The (low, high) quantiles of each numeric column over all accepted rows."""
        return {name: merged_quantiles(parts, (low, high)) for name, parts in self.sketches.items()}

    def classify(self, keys: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each batch row: (an exact repeat of an accepted row, an accepted key with other
        values)."""
        if len(self.keys) == 0 or len(keys) == 0:
            none = np.zeros(len(keys), dtype=bool)
            return none, none.copy()
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        known = self.keys[pos] == keys
        repeat = known & (self.identities[pos] == identities)
        doubled = known & ~repeat
        if doubled.any():
            # a key stored more than once (data written outside driftloop): an identical row
            # under any of its copies counts as a repeat
            left = np.searchsorted(self.keys, keys[doubled], side="left")
            right = np.searchsorted(self.keys, keys[doubled], side="right")
            wanted = identities[doubled]
            copies = zip(left, right, wanted, strict=True)
            repeat[doubled] = [bool((self.identities[a:b] == w).any()) for a, b, w in copies]
        return repeat, known & ~repeat


def merged_quantiles(
    parts: list[tuple[int, list[float]]], probabilities: tuple[float, float]
) -> tuple[float, float]:
    """Quantiles of the union of batches from their sketches (exact for a single batch)."""
    low, high = _merged_points(parts, np.asarray(probabilities, dtype=float))
    return float(low), float(high)


def _grid(points: np.ndarray) -> np.ndarray:
    """The probabilities of a sketch's points: evenly spaced (GRID for one batch's sketch)."""
    return GRID if len(points) == len(GRID) else np.linspace(0.0, 1.0, len(points))


def _merged_points(parts: list[tuple[int, list[float]]], probabilities: np.ndarray) -> np.ndarray:
    if len(parts) == 1:
        points = np.asarray(parts[0][1])
        return np.interp(probabilities, _grid(points), points)
    weights = np.array([n for n, _ in parts], dtype=float)
    sketches = [np.asarray(points) for _, points in parts]
    xs = np.unique(np.concatenate(sketches))
    pairs = zip(weights, sketches, strict=True)
    cdf = sum(w * np.interp(xs, s, _grid(s), left=0.0, right=1.0) for w, s in pairs)
    cdf = np.maximum.accumulate(np.asarray(cdf) / weights.sum())
    return np.interp(probabilities, cdf, xs)


def collapsed(parts: list[tuple[int, list[float]]]) -> tuple[int, list[float]]:
    """Several batches' sketches as one sketch of their union (their rows summed), on a grid
    ten times finer than a batch's, so that merging batches in one at a time stays as close to
    merging all of them at once as a batch's own sketch is to its rows."""
    if len(parts) == 1:
        return parts[0]
    points = np.maximum.accumulate(_merged_points(parts, FINE_GRID))
    return sum(n for n, _ in parts), points.tolist()


# -- cached per batch file ------------------------------------------------------------------------


class ProfileCache:
    """Batch summaries per process, backed by one `.npz` per batch file under the state dir."""

    def __init__(self) -> None:
        self._profiles: dict[tuple[str, str], BatchProfile] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, spec: ProfileSpec, folder: Path) -> BatchProfile:
        key = (str(path), spec.fingerprint)
        with self._lock:
            found = self._profiles.get(key)
        if found is not None:
            return found
        stored = folder / f"{path.name}.npz"
        profile = _load(stored)
        if profile is None:
            from driftloop.datastore import read_batch

            profile = profile_frame(read_batch(path), spec)
            _save(stored, profile)
        with self._lock:
            self._profiles[key] = profile
        return profile

    def clear(self) -> None:
        with self._lock:
            self._profiles.clear()


PROFILES = ProfileCache()


def cache_folder(state_dir: Path, raw_dir: Path, spec: ProfileSpec) -> Path:
    """Where a data folder's batch summaries are kept for this spec."""
    return state_dir / "profiles" / f"{folder_tag(state_dir, raw_dir)}-{spec.fingerprint}"


def folder_tag(state_dir: Path, raw_dir: Path) -> str:
    """A short name for a data folder, from its path relative to the state folder: a project
    moved or copied whole (state and data together) keeps its caches."""
    where = os.path.relpath(raw_dir.resolve(), state_dir.resolve())
    return hashlib.sha256(where.encode()).hexdigest()[:8]


def accepted_profile(raw_dir: Path, params: Params, state_dir: Path) -> AcceptedProfile:
    """The profile of all accepted data.

    Kept merged in one file beside the per-batch summaries, with the names of the batch files
    it covers (a batch file's name holds its content hash): when it covers some of today's
    files and no file that is gone, only the new files' summaries are merged into it, so the
    cost follows the new batches. Anything else (a batch removed, a damaged file) rebuilds it
    from every batch's summary.
    """
    spec = ProfileSpec.of(params)
    folder = cache_folder(state_dir, raw_dir, spec)
    files = batch_files(raw_dir)
    names = [b.path.name for b in files]
    stored = _load_merged(folder / MERGED)
    if stored is not None and stored[0] <= set(names):
        covered, profile = stored
        new = [b for b in files if b.path.name not in covered]
        if not new:
            return profile
        profile = profile.including(PROFILES.get(b.path, spec, folder) for b in new)
    else:
        profile = AcceptedProfile.merge(PROFILES.get(b.path, spec, folder) for b in files)
        profile = profile.compact()
    _save_merged(folder / MERGED, names, profile)
    return profile


def remember(
    path: Path,
    frame: pd.DataFrame,
    params: Params,
    state_dir: Path,
    hashes: RowHashes | None = None,
) -> None:
    """Summarise a batch just accepted, from the frame in hand (no second read of its file) and
    the row hashes taken when it was read."""
    spec = ProfileSpec.of(params)
    profile = profile_frame(frame, spec, hashes)
    _save(cache_folder(state_dir, path.parent, spec) / f"{path.name}.npz", profile)
    with PROFILES._lock:
        PROFILES._profiles[(str(path), spec.fingerprint)] = profile


def _save(path: Path, profile: BatchProfile) -> None:
    meta = {
        "rows": profile.rows,
        "newest": profile.newest,
        "categories": profile.categories,
        "sketches": profile.sketches,
    }
    _write(path, profile.keys, profile.identities, meta)


def _save_merged(path: Path, names: list[str], profile: AcceptedProfile) -> None:
    meta = {
        "version": _VERSION,
        "covers": names,
        "rows": profile.rows,
        "newest": NAT if profile.newest is None else int(profile.newest.value),
        "categories": {k: sorted(v, key=str) for k, v in profile.categories.items()},
        "sketches": profile.sketches,
    }
    _write(path, profile.keys, profile.identities, meta)


def _write(path: Path, keys: np.ndarray, identities: np.ndarray, meta: dict[str, Any]) -> None:
    """One summary file, written whole or not at all (a temporary file of this process, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    meta_text = np.array(json.dumps(meta, default=_json_default))
    np.savez(tmp, keys=keys, identities=identities, meta=meta_text)
    tmp.replace(path)


def _load_merged(path: Path) -> tuple[set[str], AcceptedProfile] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("version") != _VERSION:
                return None
            sketches = {
                k: [(int(n), list(p)) for n, p in parts] for k, parts in meta["sketches"].items()
            }
            newest = int(meta["newest"])
            profile = AcceptedProfile(
                int(meta["rows"]),
                stored["keys"],
                stored["identities"],
                None if newest == NAT else pd.Timestamp(newest),
                {k: frozenset(v) for k, v in meta["categories"].items()},
                sketches,
            )
            return set(meta["covers"]), profile
    except (OSError, ValueError, KeyError, TypeError):  # damaged: rebuilt from the batches
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _load(path: Path) -> BatchProfile | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            sketches = {k: (int(n), list(p)) for k, (n, p) in meta["sketches"].items()}
            return BatchProfile(
                int(meta["rows"]),
                stored["keys"],
                stored["identities"],
                int(meta["newest"]),
                dict(meta["categories"]),
                sketches,
            )
    except (OSError, ValueError, KeyError):  # a damaged cache file is rebuilt from the batch
        return None
