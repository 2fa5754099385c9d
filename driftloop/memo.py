"""A per-process memo with an owner: values computed once per key, and a `clear()` for tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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
