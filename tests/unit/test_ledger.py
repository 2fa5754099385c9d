"""The decision ledger on SQLite: typed events, the hash chain and what `verify` names, the
champion compare-and-set and claims (PostgreSQL and concurrency: tests/integration/test_ledger.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from driftloop.ledger import (
    ExperimentStart,
    Promotion,
    RetrainClaim,
    Rollback,
    Store,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'state.db'}")
    yield opened
    opened.dispose()


def promoted(version: str, before: str | None) -> Promotion:
    return Promotion(
        "rain",
        version=version,
        decision="promoted",
        reason=f"v{version} beats v{before}",
        champion_before=before,
        data_md5="abc.dir",
        candidate_metrics={"roc_auc": 0.71},
    )


def test_events_come_back_typed_in_order(store: Store) -> None:
    store.append(promoted("1", None))
    store.append(RetrainClaim("rain", day="2024-01-02", reason="drift 0.6"))
    store.append(ExperimentStart("rain", experiment="e1", experiment_kind="shadow"))
    events = store.events("rain")
    assert [e.seq for e in events] == [1, 2, 3]
    first = events[0].event
    assert isinstance(first, Promotion) and first.candidate_metrics == {"roc_auc": 0.71}
    assert [e.kind for e in store.events("rain", ("retrain_claim",))] == ["retrain_claim"]
    assert store.events("other") == []
    assert store.verify().ok and store.verify().events == 3


def tamper(store: Store, sql: str) -> None:
    with store.engine.begin() as conn:
        for statement in sql.split(";"):
            conn.exec_driver_sql(statement)


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        (
            "UPDATE ledger_events SET payload = replace(payload, 'v2 beats', 'v9 beats') "
            "WHERE seq = 2",
            "event 2 (promotion, rain) was edited",
        ),
        ("DELETE FROM ledger_events WHERE seq = 2", "events 2..2 are missing"),
        (
            "UPDATE ledger_events SET seq = -2 WHERE seq = 2;"
            "UPDATE ledger_events SET seq = 2 WHERE seq = 3;"
            "UPDATE ledger_events SET seq = 3 WHERE seq = -2",
            "event 2 does not follow event 1",
        ),
        ("DELETE FROM ledger_events WHERE seq = 4", "events removed from the end"),
        (
            "UPDATE ledger_events SET model = 'snow' WHERE seq = 1",
            "event 1 (promotion, snow) was edited",
        ),
    ],
    ids=["edited", "removed", "reordered", "truncated", "moved to another model"],
)
def test_verify_names_every_edited_removed_or_reordered_event(
    store: Store, sql: str, named: str
) -> None:
    for version, before in (("1", None), ("2", "1"), ("3", "2"), ("4", "3")):
        store.append(promoted(version, before))
    assert store.verify().ok
    tamper(store, sql)
    found = store.verify()
    assert not found.ok
    assert any(named in problem for problem in found.problems), found.problems


def test_the_champion_moves_only_from_the_version_the_decision_was_based_on(store: Store) -> None:
    assert store.champion("rain") is None
    assert store.move_champion(promoted("1", None), basis=None)
    assert not store.move_champion(promoted("2", None), basis=None)  # stale basis: refused
    assert store.champion("rain") == "1"
    assert store.move_champion(promoted("2", "1"), basis="1")
    assert store.move_champion(Rollback("rain", version="1", reason="bad alerts"), basis="2")
    assert store.champion("rain") == "1"
    kinds = [e.kind for e in store.events("rain")]
    assert kinds == ["promotion", "promotion", "rollback"]  # the refused move wrote nothing
    assert store.verify().ok


def test_a_claim_is_taken_once(store: Store) -> None:
    claim = RetrainClaim("rain", day="2024-03-01", reason="drift")
    assert store.claim("retrain", "2024-03-01", claim)
    assert not store.claim("retrain", "2024-03-01", claim)
    assert store.claim("retrain", "2024-03-29", RetrainClaim("rain", day="2024-03-29"))
    assert store.claims_of("rain", "retrain") == ["2024-03-01", "2024-03-29"]
    assert len(store.events("rain", ("retrain_claim",))) == 2


def test_experiment_state_is_written_with_its_event(store: Store) -> None:
    assert store.experiment_state("rain") is None
    state = {"id": "e1", "kind": "shadow", "status": "running"}
    store.save_experiment("rain", state, ExperimentStart("rain", experiment="e1"))
    store.save_experiment("rain", {**state, "status": "ended"})
    assert store.experiment_state("rain") == {**state, "status": "ended"}
    assert [e.kind for e in store.events("rain")] == ["experiment_start"]


def test_an_unreachable_store_is_one_clear_line() -> None:
    from driftloop.ledger import LedgerError

    with pytest.raises(LedgerError) as failure:
        Store("postgresql+psycopg2://nobody:secret@127.0.0.1:9/none")
    assert "secret" not in str(failure.value) and "***" in str(failure.value)
    assert "\n" not in str(failure.value)


def test_tables_are_created_once_and_reopened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = Store(url)
    first.append(promoted("1", None))
    first.dispose()
    again = Store(url)
    assert [e.seq for e in again.events()] == [1] and again.verify().ok
    with again.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_head")).scalar() == 1
    again.dispose()
