"""Shadow scoring in a worker process: the challenger never takes the champion's GIL.

A shadow experiment scores every sampled row twice; scored in the service's own process, the
challenger's pandas and scikit-learn work holds the interpreter lock while the champion answers.
Here it runs in a separate process (spawned, lower CPU priority) that receives each challenger
version once and the raw rows of the requests to score; its probabilities come back to the
service, which logs them with variant "shadow" under the champion's prediction ids and records
the guardrail. Work is bounded: beyond `limit` requests waiting or being scored, new work is
dropped (counted), never waited on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftloop.serving.models import Loaded

log = logging.getLogger("driftloop.serving")

NICE = 10  # the worker yields the CPU to the service (and to everything else) under contention


@dataclass(frozen=True)
class ShadowWork:
    """One request's rows for the challenger: the champion's prediction ids and sticky keys."""

    model: Loaded
    rows: list[dict[str, Any]]
    ids: list[str]
    keys: list[str]


@dataclass(frozen=True)
class ShadowResult:
    """What the worker made of one request's rows (proba None: it failed, `error` says why)."""

    work: ShadowWork
    proba: np.ndarray | None
    seconds: float  # the worker's scoring time of the batch the request was part of
    error: str | None = None


@dataclass
class _Child:
    process: Any  # multiprocessing.process.BaseProcess
    send: Any  # Connection: service -> worker
    recv: Any  # Connection: worker -> service
    versions: set[str] = field(default_factory=set)  # challenger versions it holds


class ShadowScorer:
    """Feeds a worker process; `on_result` gets every result, `on_drop` every dropped row count.

    `wanted()` names the challenger a running shadow experiment scores (or None): the worker is
    started (and given the model) before the first request, and stopped once no experiment runs.
    """

    def __init__(
        self,
        limit: int,
        on_result: Callable[[ShadowResult], None],
        on_drop: Callable[[int], None],
        wanted: Callable[[], Loaded | None] = lambda: None,
    ) -> None:
        self.limit = limit
        self._on_result, self._on_drop, self._wanted = on_result, on_drop, wanted
        self._outbox: deque[tuple[int, ShadowWork]] = deque()
        self._pending: dict[int, ShadowWork] = {}  # queued here or at the worker
        self._tokens = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._child: _Child | None = None
        self._feeder: threading.Thread | None = None
        self.started = 0  # worker processes started (for tests)

    def submit(self, work: ShadowWork) -> bool:
        """Queue one request's rows; False (and counted as dropped) when `limit` is reached."""
        with self._cond:
            if self._stopped or len(self._pending) >= self.limit:
                dropped = True
            else:
                dropped = False
                token = next(self._tokens)
                self._pending[token] = work
                self._outbox.append((token, work))
                self._cond.notify()
        if dropped:
            self._on_drop(len(work.rows))
            return False
        self._ensure_feeder()
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> bool:
        """Whether a worker process is alive."""
        child = self._child
        return child is not None and child.process.is_alive()

    def start(self) -> None:
        self._ensure_feeder()

    def _ensure_feeder(self) -> None:
        with self._cond:
            if self._feeder is None and not self._stopped:
                self._feeder = threading.Thread(target=self._feed, name="shadow-feed", daemon=True)
                self._feeder.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the feeder and the worker (work not yet scored is dropped, counted)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._feeder is not None:
            self._feeder.join(timeout)
        self._stop_child(timeout)
        with self._cond:
            lost = sum(len(w.rows) for w in self._pending.values())
            self._pending.clear()
            self._outbox.clear()
        if lost:
            self._on_drop(lost)

    # -- the feeder thread: starts the worker, sends it models and rows ---------------------------

    def _feed(self) -> None:
        while True:
            with self._cond:
                if not self._outbox and not self._stopped:
                    self._cond.wait(timeout=0.5)
                if self._stopped:
                    return
                batch = list(self._outbox)
                self._outbox.clear()
            try:
                self._send(batch)
                if not batch:
                    self._idle()
            except Exception as exc:  # the worker died: its work is dropped, a new one next time
                log.error("shadow worker: %s: %s", type(exc).__name__, exc)
                self._lose(batch)

    def _idle(self) -> None:
        """Warm the worker while a shadow experiment runs; stop it once none runs."""
        model = self._wanted()
        if model is not None:
            self._child_for(model)
        elif self._child is not None and not self._pending:
            self._stop_child(5.0)

    def _send(self, batch: list[tuple[int, ShadowWork]]) -> None:
        by_version: dict[str, list[tuple[int, ShadowWork]]] = {}
        for token, work in batch:
            by_version.setdefault(work.model.version, []).append((token, work))
        for group in by_version.values():
            child = self._child_for(group[0][1].model)
            parts = [(token, len(work.rows)) for token, work in group]
            rows = [row for _, work in group for row in work.rows]
            child.send.send(("score", group[0][1].model.version, parts, rows))

    def _child_for(self, model: Loaded) -> _Child:
        child = self._child
        if child is None or not child.process.is_alive():
            if child is not None:
                self._stop_child(1.0)
            child = self._child = self._spawn()
        if model.version not in child.versions:
            payload = (model.model, model.params.features, model.params.data, model.columns)
            child.send.send(("model", model.version, payload))
            child.versions.add(model.version)
        return child

    def _spawn(self) -> _Child:
        ctx = mp.get_context("spawn")  # no fork of a threaded server
        to_child_r, to_child_w = ctx.Pipe(duplex=False)
        from_child_r, from_child_w = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=worker_main, args=(to_child_r, from_child_w), name="shadow", daemon=True
        )
        process.start()
        to_child_r.close()
        from_child_w.close()
        self.started += 1
        child = _Child(process, to_child_w, from_child_r)
        threading.Thread(
            target=self._receive, args=(child,), name="shadow-recv", daemon=True
        ).start()
        return child

    def _stop_child(self, timeout: float) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(Exception):
            child.send.send(None)
        child.process.join(timeout)
        if child.process.is_alive():
            child.process.terminate()
            child.process.join(timeout)
        with contextlib.suppress(Exception):
            child.send.close()

    def _lose(self, batch: list[tuple[int, ShadowWork]]) -> None:
        with self._cond:
            lost = [self._pending.pop(token, None) for token, _ in batch]
        rows = sum(len(w.rows) for w in lost if w is not None)
        if rows:
            self._on_drop(rows)

    # -- the receiving thread: results back to the service -----------------------------------------

    def _receive(self, child: _Child) -> None:
        while True:
            try:
                message = child.recv.recv()
            except (EOFError, OSError):
                break
            _, results, seconds, error = message
            for token, proba in results:
                with self._cond:
                    work = self._pending.pop(token, None)
                if work is None:
                    continue
                result = ShadowResult(work, proba, seconds, error)
                try:
                    self._on_result(result)
                except Exception:
                    log.exception("shadow result not recorded")
        with contextlib.suppress(Exception):
            child.recv.close()
        self._worker_gone(child)

    def _worker_gone(self, child: _Child) -> None:
        """The worker exited: what it had not answered is dropped (counted)."""
        if child.process.exitcode not in (None, 0):
            log.error("shadow worker exited with %s", child.process.exitcode)
        with self._cond:
            if self._child is child:
                self._child = None
            sent = {t for t, _ in self._outbox}
            lost = [t for t in self._pending if t not in sent]
            works = [self._pending.pop(t) for t in lost]
        rows = sum(len(w.rows) for w in works)
        if rows:
            self._on_drop(rows)


# -- the worker process ---------------------------------------------------------------------------


def worker_main(inbox: Any, outbox: Any) -> None:
    """Score what the service sends until it sends None or goes away."""
    with contextlib.suppress(OSError):
        os.nice(NICE)
    from driftloop.serving.models import limit_threads

    limit_threads()
    models: dict[str, tuple[Any, Any, Any, list[str]]] = {}
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if message[0] == "model":
            _, version, payload = message
            models = {v: m for v, m in list(models.items())[-1:]}  # the newest two at most
            models[version] = payload
            continue
        _, version, parts, rows = message
        outbox.send(_score_parts(models.get(version), version, parts, rows))


def _score_parts(
    payload: tuple[Any, Any, Any, list[str]] | None,
    version: str,
    parts: list[tuple[int, int]],
    rows: list[dict[str, Any]],
) -> tuple[str, list[tuple[int, np.ndarray | None]], float, str | None]:
    """("done", [(token, proba of its rows)], seconds, error): one call for all the rows."""
    import pandas as pd

    from driftloop.features import feature_frame

    start = time.perf_counter()
    try:
        if payload is None:
            raise RuntimeError(f"version {version} was never sent to the shadow worker")
        model, features, data, columns = payload
        X = feature_frame(pd.DataFrame(rows), features, data)[columns]
        proba = np.asarray(model.predict_proba(X)[:, 1], dtype=float)
        error = None
    except Exception as exc:
        proba, error = None, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    out: list[tuple[int, np.ndarray | None]] = []
    offset = 0
    for token, n in parts:
        out.append((token, None if proba is None else proba[offset : offset + n]))
        offset += n
    return "done", out, seconds, error
