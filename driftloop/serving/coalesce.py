"""Request coalescing: concurrent requests scored together by one thread, in one call.

scikit-learn's cost per `predict_proba` call (input checks, a DataFrame, the feature step) is
most of a small request's cost, so eight concurrent one-row requests cost about one when they are
scored as one eight-row batch. `Coalescer.submit` (on the event loop) queues a request and awaits
its answer; one thread takes whatever has been queued since its last batch (whole requests, up to
a row cap; no waiting window, so a lone request is not delayed) and hands the batch to a handler
that answers each request on its own (its answer or its own exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("driftloop.serving")

T = TypeVar("T")
R = TypeVar("R")

# What a handler gives each request of a batch: its answer, or the exception it raises.
Handler = Callable[[list[T]], Sequence["R | BaseException"]]


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R]


class Coalescer(Generic[T, R]):
    """One scoring thread; each batch is what was queued while the previous one was scored."""

    def __init__(
        self, handler: Handler[T, R], size: Callable[[T], int], max_rows: int, name: str
    ) -> None:
        self._handler, self._size, self.max_rows, self.name = handler, size, max_rows, name
        self._queue: deque[_Waiting[T, R]] = deque()
        self._ready = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # calls of the handler (for tests and /metrics)

    @property
    def queued(self) -> int:
        """Requests waiting for the next batch."""
        return len(self._queue)

    async def submit(self, item: T) -> R:
        """Queue one request and wait for its answer (or its exception)."""
        waiting = _Waiting(item, self._size(item), asyncio.get_running_loop().create_future())
        with self._ready:
            if self._stopped:
                raise RuntimeError(f"{self.name}: stopped")
            self._queue.append(waiting)
            self._ready.notify()
        self._ensure_started()
        return await waiting.future

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._ready:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()

    def start(self) -> None:
        self._ensure_started()

    def stop(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the thread."""
        with self._ready:
            self._stopped = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[_Waiting[T, R]] | None:
        """Whole requests from the queue, at least one, up to max_rows rows; None: stopped."""
        with self._ready:
            while not self._queue and not self._stopped:
                self._ready.wait()
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            rows = batch[0].size
            while self._queue and rows + self._queue[0].size <= self.max_rows:
                rows += self._queue[0].size
                batch.append(self._queue.popleft())
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self.batches += 1
            try:
                answers: Sequence[R | BaseException] = self._handler([w.item for w in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"{len(answers)} answers for {len(batch)} requests")
            except BaseException as exc:  # the whole batch failed: each request gets the error
                log.exception("%s: a batch failed", self.name)
                answers = [exc] * len(batch)
            _deliver(batch, answers)


def _deliver(batch: list[_Waiting[T, R]], answers: Sequence[R | BaseException]) -> None:
    """Hand each answer to its request's event loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], R | BaseException]]]
    by_loop = {}
    for waiting, answer in zip(batch, answers, strict=True):
        by_loop.setdefault(waiting.future.get_loop(), []).append((waiting.future, answer))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, pairs)


def _settle(pairs: list[tuple[asyncio.Future[R], R | BaseException]]) -> None:
    for future, answer in pairs:
        if future.done():  # the client went away (cancelled)
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
