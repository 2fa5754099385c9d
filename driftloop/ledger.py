"""The shared state store: the decision ledger and the state that keeps the loop correct.

One store per deployment, embedded by default (a SQLite file under the project's state dir) and
PostgreSQL at scale (`DRIFTLOOP_STATE_URL`, a SQLAlchemy URL from the environment), so that every
worker, service and command sees the same:

- the **decision ledger**: typed events (promotion, rollback, retrain claim, experiment start and
  end, reconcile), append-only and hash-chained: each event's hash covers its content and the hash
  before it, and a head row holds the last one, so `verify` names any edited, removed or
  reordered event;
- the **champion** of each model, moved only by a compare-and-set in the same transaction as the
  event that explains it (the MLflow alias follows; `reconcile` mends a crash in between);
- **claims** (a retrain for a day): the first insert wins, every other worker sees it taken;
- **experiment state**: one row per model, written with its event.

Appends are serialized by the head row (a row lock on PostgreSQL, an immediate transaction on
SQLite), so sequence numbers have no gaps and the chain has one order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from driftloop.errors import DriftloopError

STATE_URL_ENV = "DRIFTLOOP_STATE_URL"
GENESIS = "0" * 64
WRITE_ATTEMPTS = 3  # a write whose connection was lost before its commit is tried again
SQLITE_BUSY_S = 60.0  # how long a SQLite store waits for another process's lock

T = TypeVar("T")


class LedgerError(DriftloopError):
    """The state store is unreachable, or the ledger does not verify."""

    exit_code = 9


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# -- typed events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A decision of the loop. Subclasses name their `kind` and carry typed fields."""

    kind: ClassVar[str] = "event"
    model: str

    def payload(self) -> dict[str, Any]:
        """The fields as plain JSON values (the model aside: a column of its own)."""
        out = dataclasses.asdict(self)
        out.pop("model")
        return out

    @classmethod
    def from_payload(cls, model: str, payload: dict[str, Any]) -> Event:
        names = {f.name for f in dataclasses.fields(cls)} - {"model"}
        return cls(model=model, **{k: v for k, v in payload.items() if k in names})


@dataclass(frozen=True)
class Promotion(Event):
    """The gate's (or an experiment's) decision on a candidate."""

    kind: ClassVar[str] = "promotion"
    version: str = ""
    decision: str = ""  # promoted, rejected, challenger
    reason: str = ""
    trigger: str = ""
    triggered_by: str = ""
    champion_before: str | None = None
    data_md5: str = ""
    labels_md5: str = ""
    metric: str = ""
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    experiment: str | None = None
    test: dict[str, Any] | None = None  # an experiment's statistical test
    refit_of: str | None = None  # the gated version this one refits on the whole window


@dataclass(frozen=True)
class Rollback(Event):
    kind: ClassVar[str] = "rollback"
    version: str = ""
    reason: str = ""
    triggered_by: str = ""
    champion_before: str | None = None
    data_md5: str = ""
    labels_md5: str = ""


@dataclass(frozen=True)
class RetrainClaim(Event):
    """A retrain claimed for a day: one per cooldown, whichever worker asks first."""

    kind: ClassVar[str] = "retrain_claim"
    day: str = ""
    reason: str = ""
    champion: str | None = None
    data_md5: str = ""
    labels_md5: str = ""


@dataclass(frozen=True)
class ExperimentStart(Event):
    kind: ClassVar[str] = "experiment_start"
    experiment: str = ""
    experiment_kind: str = ""
    champion: str = ""
    challenger: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ExperimentEnd(Event):
    kind: ClassVar[str] = "experiment_end"
    experiment: str = ""
    outcome: str = ""
    reason: str = ""
    champion: str = ""
    challenger: str = ""


@dataclass(frozen=True)
class Reconcile(Event):
    """The MLflow alias brought back in line with the ledger's champion."""

    kind: ClassVar[str] = "reconcile"
    version: str | None = None
    alias_before: str | None = None
    reason: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    t.kind: t
    for t in (Promotion, Rollback, RetrainClaim, ExperimentStart, ExperimentEnd, Reconcile)
}


@dataclass(frozen=True)
class Recorded:
    """An event as the ledger holds it: its place in the chain and when it was written."""

    seq: int
    at: dt.datetime
    event: Event
    hash: str
    prev_hash: str

    @property
    def kind(self) -> str:
        return self.event.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "model": self.event.model,
            **self.event.payload(),
            "hash": self.hash,
        }


def chain_hash(prev: str, seq: int, at: dt.datetime, kind: str, model: str, payload: str) -> str:
    """The hash of one event: its place, time, kind, model, payload and the hash before it."""
    text = json.dumps([prev, seq, at.isoformat(), kind, model, payload], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


# -- the store ------------------------------------------------------------------------------------


def state_url(state_dir: Path) -> str:
    """`DRIFTLOOP_STATE_URL`, else a SQLite file in the project's state dir."""
    return os.environ.get(STATE_URL_ENV) or f"sqlite:///{state_dir / 'state.db'}"


@dataclass(frozen=True)
class Verification:
    """What `verify` found: how many events, and every break in the chain, named."""

    events: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class Store:
    """The shared state store over one SQLAlchemy engine (tables created on first use)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        self.engine = engine
        self.meta = sa.MetaData()
        self.events_table = sa.Table(
            "ledger_events",
            self.meta,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("at", sa.DateTime, nullable=False),
            sa.Column("kind", sa.String(40), nullable=False),
            sa.Column("model", sa.String(250), nullable=False, index=True),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("prev_hash", sa.String(64), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False, unique=True),
        )
        self.head = sa.Table(
            "ledger_head",
            self.meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("seq", sa.Integer, nullable=False),
            sa.Column("hash", sa.String(64), nullable=False),
        )
        self.champions = sa.Table(
            "champions",
            self.meta,
            sa.Column("model", sa.String(250), primary_key=True),
            sa.Column("version", sa.String(40), nullable=True),
            sa.Column("seq", sa.Integer, nullable=False),
        )
        self.claims = sa.Table(
            "claims",
            self.meta,
            sa.Column("model", sa.String(250), primary_key=True),
            sa.Column("what", sa.String(40), primary_key=True),
            sa.Column("key", sa.String(100), primary_key=True),
            sa.Column("seq", sa.Integer, nullable=False),
        )
        self.experiments = sa.Table(
            "experiments",
            self.meta,
            sa.Column("model", sa.String(250), primary_key=True),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("seq", sa.Integer, nullable=False),
        )
        self._create()

    def _create(self) -> None:
        import sqlalchemy as sa

        try:
            self.meta.create_all(self.engine)
            with self.engine.begin() as conn:
                found = conn.execute(sa.select(self.head.c.id)).first()
                if found is None:
                    conn.execute(sa.insert(self.head).values(id=1, seq=0, hash=GENESIS))
        except sa.exc.IntegrityError:
            pass  # another process created the head row first
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise LedgerError(f"state store {self.safe_url}: {_first_line(exc)}") from None

    @property
    def safe_url(self) -> str:
        """The URL without its password (for messages)."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- transactions ------------------------------------------------------------------------

    def _write(self, work: Callable[[Any], T]) -> T:
        """`work(conn)` in one write transaction that holds the ledger head (appends are
        serialized on it, and checks made after it see every earlier commit).

        A connection lost before the commit (a restarted server, a killed backend) wrote
        nothing: the whole transaction is tried again, up to `WRITE_ATTEMPTS` times. Lost
        while committing, the outcome is unknown: a one-line LedgerError says so (the next
        move, or `ledger verify --repair`, brings the alias in line with what was written).
        """
        import sqlalchemy as sa

        for attempt in range(1, WRITE_ATTEMPTS + 1):
            committing = False
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        sa.select(self.head.c.seq).where(self.head.c.id == 1).with_for_update()
                    )
                    result = work(conn)
                    committing = True
                return result
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                if committing:
                    raise LedgerError(
                        f"state store {self.safe_url}: the connection was lost while "
                        f"committing ({_first_line(exc)}); the decision may or may not be "
                        "recorded: `driftloop ledger verify --repair` shows and mends it"
                    ) from None
                if attempt == WRITE_ATTEMPTS:
                    raise LedgerError(f"state store {self.safe_url}: {_first_line(exc)}") from None
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def _query(self, work: Callable[[Any], T]) -> T:
        """`work(conn)` on a read connection; a lost connection is tried again (reads change
        nothing), any other failure is a one-line LedgerError."""
        import sqlalchemy as sa

        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self.engine.connect() as conn:
                    return work(conn)
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise LedgerError(f"state store {self.safe_url}: {_first_line(exc)}") from None
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def _append(self, conn: Any, event: Event) -> Recorded:
        """Append an event inside a transaction that holds the head row."""
        import sqlalchemy as sa

        head = conn.execute(
            sa.select(self.head.c.seq, self.head.c.hash)
            .where(self.head.c.id == 1)
            .with_for_update()
        ).one()
        seq, prev = int(head.seq) + 1, str(head.hash)
        at = _now()
        payload = _canonical(event.payload())
        digest = chain_hash(prev, seq, at, event.kind, event.model, payload)
        conn.execute(
            sa.insert(self.events_table).values(
                seq=seq,
                at=at,
                kind=event.kind,
                model=event.model,
                payload=payload,
                prev_hash=prev,
                hash=digest,
            )
        )
        conn.execute(sa.update(self.head).where(self.head.c.id == 1).values(seq=seq, hash=digest))
        return Recorded(seq, at, event, digest, prev)

    # -- the ledger ----------------------------------------------------------------------------

    def append(self, event: Event) -> Recorded:
        """Record one event (a decision that changes no shared state, e.g. a rejection)."""
        return self._write(lambda conn: self._append(conn, event))

    def events(
        self, model: str | None = None, kinds: tuple[str, ...] | None = None
    ) -> list[Recorded]:
        """Recorded events in ledger order, optionally one model's and some kinds only."""
        import sqlalchemy as sa

        query = sa.select(self.events_table).order_by(self.events_table.c.seq)
        if model is not None:
            query = query.where(self.events_table.c.model == model)
        if kinds:
            query = query.where(self.events_table.c.kind.in_(kinds))
        rows = self._query(lambda conn: conn.execute(query).all())
        return [_recorded(row) for row in rows]

    def verify(self) -> Verification:
        """Recompute the chain: every edited, removed or reordered event is named."""
        import sqlalchemy as sa

        def read(conn: Any) -> tuple[Any, Any]:
            rows = conn.execute(
                sa.select(self.events_table).order_by(self.events_table.c.seq)
            ).all()
            return rows, conn.execute(sa.select(self.head).where(self.head.c.id == 1)).first()

        rows, head = self._query(read)
        problems: list[str] = []
        prev, expected = GENESIS, 1
        for row in rows:
            if row.seq != expected:
                problems.append(f"events {expected}..{row.seq - 1} are missing (removed)")
            if row.prev_hash != prev:
                problems.append(
                    f"event {row.seq} does not follow event {row.seq - 1} (reordered or removed)"
                )
            digest = chain_hash(row.prev_hash, row.seq, row.at, row.kind, row.model, row.payload)
            if digest != row.hash:
                problems.append(f"event {row.seq} ({row.kind}, {row.model}) was edited")
            prev, expected = row.hash, row.seq + 1
        if head is None:
            problems.append("the ledger head is missing")
        elif (head.seq, head.hash) != ((rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS)):
            problems.append(
                f"the ledger head says {head.seq} events but {len(rows)} remain "
                "(events removed from the end)"
            )
        return Verification(len(rows), problems)

    # -- the champion --------------------------------------------------------------------------

    def champion(self, model: str) -> str | None:
        """The ledger's champion of a model (None: none yet)."""
        import sqlalchemy as sa

        query = sa.select(self.champions.c.version).where(self.champions.c.model == model)
        row = self._query(lambda conn: conn.execute(query).first())
        return None if row is None else row.version

    def move_champion(self, event: Promotion | Rollback | Reconcile, basis: str | None) -> bool:
        """Compare-and-set: make `event.version` champion only if the ledger's champion still is
        `basis`; record the event in the same transaction. False (nothing written) otherwise."""
        import sqlalchemy as sa

        version = getattr(event, "version", None)

        def work(conn: Any) -> bool:
            current = conn.execute(
                sa.select(self.champions.c.version).where(self.champions.c.model == event.model)
            ).first()
            if (None if current is None else current.version) != basis:
                return False
            recorded = self._append(conn, event)
            values = {"version": version, "seq": recorded.seq}
            if current is None:
                conn.execute(sa.insert(self.champions).values(model=event.model, **values))
            else:
                conn.execute(
                    sa.update(self.champions)
                    .where(self.champions.c.model == event.model)
                    .values(**values)
                )
            return True

        return self._write(work)

    # -- claims ----------------------------------------------------------------------------------

    def claim(self, what: str, key: str, event: Event) -> bool:
        """Take a claim (e.g. a retrain for a day) with its event; False if already taken."""
        import sqlalchemy as sa

        def work(conn: Any) -> bool:
            taken = conn.execute(
                sa.select(self.claims.c.seq).where(
                    (self.claims.c.model == event.model)
                    & (self.claims.c.what == what)
                    & (self.claims.c.key == key)
                )
            ).first()
            if taken is not None:
                return False
            recorded = self._append(conn, event)
            conn.execute(
                sa.insert(self.claims).values(
                    model=event.model, what=what, key=key, seq=recorded.seq
                )
            )
            return True

        return self._write(work)

    def claim_retrain(self, event: RetrainClaim, cooldown_days: int) -> bool:
        """Claim the model's retrain for `event.day` unless one was claimed within the cooldown
        before it (any worker, any machine); False (nothing written) when it was."""
        import sqlalchemy as sa

        day = dt.date.fromisoformat(event.day)

        def work(conn: Any) -> bool:
            keys = conn.execute(
                sa.select(self.claims.c.key).where(
                    (self.claims.c.model == event.model) & (self.claims.c.what == "retrain")
                )
            ).all()
            days = [dt.date.fromisoformat(row.key) for row in keys]
            if any((day - d).days < max(cooldown_days, 1) for d in days):
                return False
            recorded = self._append(conn, event)
            conn.execute(
                sa.insert(self.claims).values(
                    model=event.model, what="retrain", key=event.day, seq=recorded.seq
                )
            )
            return True

        return self._write(work)

    def claims_of(self, model: str, what: str) -> list[str]:
        """The keys claimed for a model, oldest first."""
        import sqlalchemy as sa

        query = (
            sa.select(self.claims.c.key)
            .where((self.claims.c.model == model) & (self.claims.c.what == what))
            .order_by(self.claims.c.seq)
        )
        return [row.key for row in self._query(lambda conn: conn.execute(query).all())]

    # -- experiment state --------------------------------------------------------------------------

    def experiment_state(self, model: str) -> dict[str, Any] | None:
        import sqlalchemy as sa

        query = sa.select(self.experiments.c.state).where(self.experiments.c.model == model)
        row = self._query(lambda conn: conn.execute(query).first())
        return None if row is None else dict(json.loads(row.state))

    def save_experiment(
        self, model: str, state: dict[str, Any], event: Event | None = None
    ) -> None:
        """Write a model's experiment state (and the event that changed it) in one transaction."""
        import sqlalchemy as sa

        def work(conn: Any) -> None:
            seq = self._append(conn, event).seq if event is not None else 0
            values = {"state": _canonical(state), "seq": seq}
            found = conn.execute(
                sa.select(self.experiments.c.model).where(self.experiments.c.model == model)
            ).first()
            if found is None:
                conn.execute(sa.insert(self.experiments).values(model=model, **values))
            else:
                where = self.experiments.c.model == model
                conn.execute(sa.update(self.experiments).where(where).values(**values))

        self._write(work)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    """Autocommit driver (the "begin" event issues BEGIN IMMEDIATE), a 60 s busy wait, WAL.

    Switching a new database to WAL needs its exclusive lock and SQLite answers "database
    is locked" at once, without waiting, when another process holds any lock on it (several
    workers opening a new store together): the switch is tried again until the deadline.
    Once the file is in WAL mode it stays so and the switch is skipped.
    """
    import sqlite3

    dbapi_conn.isolation_level = None
    dbapi_conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            mode = dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock first: no upgrade deadlock


def _recorded(row: Any) -> Recorded:
    payload = json.loads(row.payload)
    kind = EVENT_TYPES.get(row.kind, Event)
    event = kind.from_payload(row.model, payload) if kind is not Event else Event(row.model)
    return Recorded(int(row.seq), row.at, event, row.hash, row.prev_hash)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [exc.__class__.__name__])[0]


# -- one store per URL per process --------------------------------------------------------------


class Stores:
    """Stores per URL, opened once per process (tests clear it)."""

    def __init__(self) -> None:
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> Store:
        with self._lock:
            if url not in self._stores:
                self._stores[url] = Store(url)
            return self._stores[url]

    def clear(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.dispose()
            self._stores.clear()

    def __iter__(self) -> Iterator[Store]:
        return iter(list(self._stores.values()))


STORES = Stores()


def store_exists(state_dir: Path) -> bool:
    """Whether there is a store to read (a read never creates one)."""
    return bool(os.environ.get(STATE_URL_ENV)) or (state_dir / "state.db").exists()


def open_store(state_dir: Path) -> Store:
    """The store of a project (or of the deployment, with DRIFTLOOP_STATE_URL)."""
    return STORES.get(state_url(state_dir))
