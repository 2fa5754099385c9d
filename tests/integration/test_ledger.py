"""The shared state store under contention, on PostgreSQL (as at scale) and SQLite (embedded):
processes racing for the champion and for a retrain claim get exactly one winner, and the
ledger's chain still verifies."""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class _HeldAliasClient:
    """A real MLflow client whose first alias write waits until `release` is set: a mover's
    alias write that arrives after a later move's (a slow network, a paused worker)."""

    def __init__(self, client: Any, release: threading.Event) -> None:
        self._client = client
        self._release = release
        self.held = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def set_registered_model_alias(self, *args: Any) -> None:
        if not self.held.is_set():
            self.held.set()
            assert self._release.wait(60)
        self._client.set_registered_model_alias(*args)


def test_two_moves_back_to_back_leave_the_alias_on_the_ledgers_champion(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from driftloop import champion, registry
    from driftloop.config import Settings
    from driftloop.ledger import STORES

    monkeypatch.setenv("DRIFTLOOP_STATE_URL", url)
    settings = Settings(project=tmp_path, home=tmp_path / ".driftloop")
    store_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the registry named too: a registry URI another test left set would otherwise be used
    client = MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
    client.create_registered_model("rain")
    for _ in range(3):
        client.create_model_version("rain", (tmp_path / "model").as_uri())
    store = STORES.get(url)
    assert store.move_champion(Promotion("rain", version="1", decision="promoted"), basis=None)
    registry.set_alias(client, "rain", registry.CHAMPION, "1")

    release = threading.Event()
    slow = _HeldAliasClient(client, release)
    first = Promotion("rain", version="2", decision="promoted", champion_before="1")
    outcome: list[str | None] = []
    mover = threading.Thread(
        target=lambda: outcome.append(champion.move(settings, slow, first, "1"))
    )
    mover.start()
    assert slow.held.wait(60)  # v2 is the ledger's champion; its alias write is held
    second = Promotion("rain", version="3", decision="promoted", champion_before="2")
    assert champion.move(settings, client, second, "2") is None
    release.set()  # the first move's alias write lands last
    mover.join(60)
    assert outcome == [None]
    assert store.champion("rain") == "3"
    assert str(client.get_model_version_by_alias("rain", "champion").version) == "3"
    assert store.verify().ok
    STORES.clear()
