"""A per-process memo with an owner: values computed once per key, and a `clear()` for tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


class Memo(Generic[K, V]):
    """Values by key, each computed once (for immutable things: model versions, bundled tables)."""

    def __init__(self) -> None:
        self._values: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K, compute: Callable[[], V]) -> V:
        """The value for `key`, computed by `compute()` on first use."""
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = compute()
        with self._lock:
            return self._values.setdefault(key, value)

    def clear(self) -> None:
        """Forget every value (the next `get` computes again)."""
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


class LastBuilt(Generic[T, V]):
    """The value last built from one object (compared by identity: a frame is not hashed) under a
    key. The same object with the same key gets it back; another object, or another key, builds
    again and replaces it. One entry, so nothing piles up in a long-lived process.

    The object must not change in place while the value is in use (frames handed between
    pipeline stages are read-only).
    """

    def __init__(self) -> None:
        self._entry: tuple[T, Hashable, V] | None = None
        self._lock = threading.Lock()

    def get(self, obj: T, key: Hashable, compute: Callable[[], V]) -> V:
        """The value built from `obj` under `key`, built by `compute()` unless it is the last."""
        with self._lock:
            entry = self._entry
        if entry is not None and entry[0] is obj and entry[1] == key:
            return entry[2]
        value = compute()
        with self._lock:
            self._entry = (obj, key, value)
        return value

    def clear(self) -> None:
        """Forget the value (the next `get` builds again)."""
        with self._lock:
            self._entry = None
