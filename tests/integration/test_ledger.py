"""The shared state store under contention, on PostgreSQL (as at scale) and SQLite (embedded):
processes racing for the champion and for a retrain claim get exactly one winner, and the
ledger's chain still verifies."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.ledger import Promotion, RetrainClaim, Store

pytestmark = pytest.mark.slow

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def _pg_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except Exception:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import psycopg2

    name = f"driftloop_state_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _race(url: str, i: int, start: object) -> tuple[bool, bool]:
    store = Store(url)
    start.wait()  # type: ignore[attr-defined]
    won = store.move_champion(
        Promotion("rain", version=str(i + 2), decision="promoted", champion_before="1"), basis="1"
    )
    claimed = store.claim("retrain", "2024-03-01", RetrainClaim("rain", day="2024-03-01"))
    store.dispose()
    return won, claimed


def test_ten_racing_processes_one_champion_one_claim(url: str) -> None:
    store = Store(url)
    assert store.move_champion(Promotion("rain", version="1", decision="promoted"), basis=None)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(10) as pool:
            pending = [pool.apply_async(_race, (url, i, start)) for i in range(10)]
            start.set()
            results = [p.get(timeout=120) for p in pending]
    assert sum(won for won, _ in results) == 1
    assert sum(claimed for _, claimed in results) == 1
    winner = next(str(i + 2) for i, (won, _) in enumerate(results) if won)
    assert store.champion("rain") == winner
    kinds = [e.kind for e in store.events("rain")]
    assert kinds.count("promotion") == 2 and kinds.count("retrain_claim") == 1
    check = store.verify()
    assert check.ok and check.events == 3, check.problems
    store.dispose()
