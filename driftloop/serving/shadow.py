"""Shadow scoring in a worker process: the challenger never takes the champion's GIL or CPU.

A shadow experiment scores every sampled row twice; scored in the service's own process, the
challenger's pandas and scikit-learn work holds the interpreter lock while the champion answers.
Here it runs in a separate process (spawned, at idle CPU priority) that receives each challenger
version once and the raw rows of the requests to score. Given a `LogSpec`, the worker writes the
shadow predictions to a prediction log of its own (its own write-ahead file in the service's
folder: one writer per process), with variant "shadow", the champion's prediction ids and the
time the service stamped; the probabilities and the scoring time come back to the service for
its metrics and the guardrail. Work is bounded: beyond `limit` requests waiting or being scored,
new work is dropped (counted), never waited on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftloop.serving import predlog
from driftloop.serving.models import Loaded
from driftloop.training import threshold_of

log = logging.getLogger("driftloop.serving")

NICE = 19  # where SCHED_IDLE is refused: the worker yields the CPU to everything else
# The feeder sends what has queued every SEND_EVERY seconds, in one message: a few wake-ups of
# the service's threads a second, not one per request (each costs the answering threads the GIL).
SEND_EVERY = 0.05
IDLE_CHECK = 0.5  # how often an idle feeder starts or stops the worker


@dataclass(frozen=True)
class ShadowWork:
    """One request's rows for the challenger: the champion's prediction ids and sticky keys."""

    model: Loaded
    rows: list[dict[str, Any]]
    ids: list[str]
    keys: list[str]
    at: dt.datetime  # the service's time stamp of the request (its clock)


@dataclass(frozen=True)
class LogSpec:
    """Where and how the worker logs its predictions (a `PredictionLog` of its own)."""

    wal: Any  # Path
    rolled: Any  # Path
    flush_seconds: float
    roll_every: dt.timedelta
    threshold: float  # label = probability >= threshold

    @classmethod
    def of(cls, log: predlog.PredictionLog, threshold: float) -> LogSpec:
        return cls(log.wal, log.rolled, log.flush_seconds, log.roll_every, threshold)


@dataclass(frozen=True)
class ShadowResult:
    """What the worker made of one request's rows (proba None: it failed, `error` says why)."""

    work: ShadowWork
    proba: np.ndarray | None
    # CPU seconds the worker spent scoring the batch the request was part of: what the
    # challenger costs, not how long an idle-priority process waited for a CPU
    seconds: float
    error: str | None = None
    batch_rows: int = 0  # rows of that batch (0: this request's own)

    @property
    def cost(self) -> float:
        """This request's share of the batch's CPU seconds, by rows: what scoring it alone would
        have cost (a worker starved for a while scores a backlog at once; each request is not
        charged for all of it)."""
        rows = len(self.work.rows)
        return self.seconds * rows / max(self.batch_rows, rows, 1)


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
        log_spec: LogSpec | None = None,
    ) -> None:
        self.limit, self.log_spec = limit, log_spec
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
                self._outbox.append((token, work))  # no wake-up: the feeder comes by itself
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
        checked = 0.0
        while True:
            with self._cond:
                if not self._stopped:
                    self._cond.wait(timeout=SEND_EVERY)
                if self._stopped:
                    return
                batch = list(self._outbox)
                self._outbox.clear()
            try:
                self._send(batch)
                if not batch and time.monotonic() - checked > IDLE_CHECK:
                    checked = time.monotonic()
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
            parts = [(token, len(work.rows), work.ids, work.keys, work.at) for token, work in group]
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
            target=worker_main,
            args=(to_child_r, from_child_w, self.log_spec),
            name="shadow",
            daemon=True,
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
            child.process.kill()  # it ignores SIGTERM (see worker_main)
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
            with self._cond:
                works = [(self._pending.pop(token, None), proba) for token, proba in results]
            batch_rows = sum(len(w.rows) for w, _ in works if w is not None)
            for work, proba in works:
                if work is None:
                    continue
                result = ShadowResult(work, proba, seconds, error, batch_rows)
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


def _lowest_priority() -> None:
    """Run only on a CPU nothing else wants (SCHED_IDLE), else at the lowest nice level."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(NICE)


Part = tuple[int, int, list[str], list[str], dt.datetime]  # token, rows, ids, keys, time


def worker_main(inbox: Any, outbox: Any, spec: LogSpec | None = None) -> None:
    """Score what the service sends until it sends None or goes away; log it (`spec`).

    Ctrl-C or a SIGTERM sent to the service's process group is the service's to handle: the
    worker stops when the service says so or exits, and then closes its log (nothing lost).
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _lowest_priority()
    from driftloop.serving.models import limit_threads

    limit_threads()
    log = None
    if spec is not None:
        log = predlog.PredictionLog(spec.wal, spec.rolled, spec.flush_seconds, spec.roll_every)
        log.start()
    try:
        _serve(inbox, outbox, spec, log)
    finally:
        if log is not None:
            log.close()  # written and rolled; the service versions the folder when it stops


def _serve(
    inbox: Any, outbox: Any, spec: LogSpec | None, log: predlog.PredictionLog | None
) -> None:
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
        done = _score_parts(models.get(version), version, parts, rows)
        if log is not None and spec is not None and done[3] is None:
            threshold = threshold_of(models[version][0], spec.threshold)
            _log(log, spec, version, parts, rows, done[1], threshold)
        outbox.send(done)


def _log(
    log: predlog.PredictionLog,
    spec: LogSpec,
    version: str,
    parts: list[Part],
    rows: list[dict[str, Any]],
    results: list[tuple[int, np.ndarray | None]],
    threshold: float,
) -> None:
    """Log the shadow model's answers, labels at its own decision threshold."""
    offset = 0
    for (_, n, ids, keys, at), (_, proba) in zip(parts, results, strict=True):
        assert proba is not None
        labels = (proba >= threshold).astype(int)
        mine = rows[offset : offset + n]
        log.append(predlog.records(ids, at, version, "shadow", proba, labels, mine, keys))
        offset += n


def _score_parts(
    payload: tuple[Any, Any, Any, list[str]] | None,
    version: str,
    parts: list[Part],
    rows: list[dict[str, Any]],
) -> tuple[str, list[tuple[int, np.ndarray | None]], float, str | None]:
    """("done", [(token, proba of its rows)], seconds, error): one call for all the rows."""
    import pandas as pd

    from driftloop.features import feature_frame

    start = time.thread_time()  # CPU time: the worker runs only when a CPU is idle
    try:
        if payload is None:
            raise RuntimeError(f"version {version} was never sent to the shadow worker")
        model, features, data, columns = payload
        X = feature_frame(pd.DataFrame(rows), features, data)[columns]
        proba = np.asarray(model.predict_proba(X)[:, 1], dtype=float)
        error = None
    except Exception as exc:
        proba, error = None, f"{type(exc).__name__}: {exc}"
    seconds = time.thread_time() - start
    out: list[tuple[int, np.ndarray | None]] = []
    offset = 0
    for token, n, *_ in parts:
        out.append((token, None if proba is None else proba[offset : offset + n]))
        offset += n
    return "done", out, seconds, error
