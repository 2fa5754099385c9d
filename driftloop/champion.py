"""The champion of a model: who it is, how it moves, and the record of every decision.

The decision ledger (`driftloop.ledger`) decides who the champion is: a move is a compare-and-set
on the ledger's champion, in the same transaction as the event that explains it, so two workers
promoting at once cannot both win, on one machine or many. The MLflow `champion` alias follows
the ledger. A crash between the two leaves them apart; `reconcile` (run before every move, and by
`driftloop ledger verify --repair`) brings the alias back in line and records it.

A project that had a champion before the ledger existed is adopted: its alias becomes the
ledger's first champion, recorded as a reconcile event.
"""

from __future__ import annotations

from typing import Any

from driftloop import registry
from driftloop.config import Settings
from driftloop.errors import RegistryError
from driftloop.ledger import (
    LedgerError,
    Promotion,
    Reconcile,
    Recorded,
    Rollback,
    Store,
    open_store,
)
from driftloop.lineage import Verdict


def store_of(settings: Settings) -> Store:
    """The project's state store (or the deployment's, with DRIFTLOOP_STATE_URL)."""
    return open_store(settings.state_dir)


def alias_version(client: Any, name: str) -> str | None:
    ref = registry.get_alias(client, name, registry.CHAMPION)
    return ref.version if ref else None


def reconcile(settings: Settings, client: Any, name: str) -> Reconcile | None:
    """Bring the MLflow alias in line with the ledger's champion (or adopt the alias when the
    ledger has none yet); the event recorded, or None when they agreed."""
    store = store_of(settings)
    ledger = store.champion(name)
    alias = alias_version(client, name)
    if ledger == alias:
        return None
    if ledger is None:
        adopted = Reconcile(name, version=alias, alias_before=alias, reason="adopted the alias")
        if store.move_champion(adopted, basis=None):
            return adopted
        return reconcile(settings, client, name)  # another process adopted or promoted first
    event = Reconcile(
        name,
        version=ledger,
        alias_before=alias,
        reason=f"the alias said v{alias}, the ledger v{ledger} (a move was interrupted)",
    )
    registry.set_alias(client, name, registry.CHAMPION, ledger)
    store.append(event)
    return event


def current(settings: Settings, client: Any, name: str) -> str | None:
    """The champion as the ledger knows it (after reconciling the alias with it)."""
    reconcile(settings, client, name)
    return store_of(settings).champion(name)


def move(
    settings: Settings, client: Any, event: Promotion | Rollback, basis: str | None
) -> str | None:
    """Make `event.version` champion only if the champion still is `basis` (the version the
    decision was based on): the ledger first, then the alias. None when applied, else why not."""
    store = store_of(settings)
    reconcile(settings, client, event.model)
    registry.get_version(client, event.model, event.version)  # never a champion MLflow lacks
    if not store.move_champion(event, basis):
        now = store.champion(event.model)
        return f"champion moved to v{now} during the decision (based on v{basis}); not applied"
    follow_ledger(store, client, event.model, event.version)
    return None


FOLLOW_ATTEMPTS = 10


def follow_ledger(store: Store, client: Any, name: str, version: str) -> None:
    """Set the alias to `version`, the ledger's champion a moment ago, until a read of the ledger
    after the write agrees with it. A move that lands between another's ledger commit and its
    alias write may write its alias first; the slower write would then leave the alias behind
    the ledger. Whichever write comes last was checked against the ledger after it, so once moves
    stop, the alias is the ledger's champion."""
    for _ in range(FOLLOW_ATTEMPTS):
        registry.set_alias(client, name, registry.CHAMPION, version)
        try:
            now = store.champion(name)
        except LedgerError:
            return  # the move is recorded; the next move (or `ledger verify --repair`) reconciles
        if now is None or now == version:
            return
        version = now


def record(settings: Settings, event: Promotion) -> Recorded:
    """Record a decision that moves nothing (a rejection, a challenger staged)."""
    return store_of(settings).append(event)


def rollback(
    settings: Settings, name: str, reason: str, to_version: str | None = None
) -> tuple[str | None, str]:
    """Move `champion` back to a previous version (default: the one before it); recorded."""
    client = registry.connect(settings)
    before = current(settings, client, name)
    target = to_version or previous_champion(settings, name, before)
    if target is None:
        raise RegistryError(f"{name}: no previous champion to roll back to; pass --to VERSION")
    ref = registry.get_version(client, name, target)
    event = Rollback(
        name,
        version=ref.version,
        reason=reason,
        triggered_by=settings.triggered_by,
        champion_before=before,
        data_md5=ref.lineage.data_md5,
        labels_md5=ref.lineage.labels_md5,
    )
    refused = move(settings, client, event, before)
    if refused is not None:
        raise RegistryError(f"{name}: rollback not applied: {refused}")
    registry.tag_version(client, name, ref.version, {Verdict.tag("rollback_reason"): reason})
    return before, ref.version


def champions_history(settings: Settings, name: str) -> list[str]:
    """Every version that became champion, in order (promotions, rollbacks, adoptions)."""
    moves: list[str] = []
    for recorded in store_of(settings).events(name, ("promotion", "rollback", "reconcile")):
        event = recorded.event
        if isinstance(event, Promotion) and event.decision != "promoted":
            continue
        version = getattr(event, "version", None)
        if version and (not moves or moves[-1] != version):
            moves.append(str(version))
    return moves


def previous_champion(settings: Settings, name: str, now: str | None) -> str | None:
    """The champion before the current one, never a version that a rollback moved away from."""
    rolled_back = {
        str(r.event.champion_before)
        for r in store_of(settings).events(name, ("rollback",))
        if isinstance(r.event, Rollback) and r.event.champion_before is not None
    }
    for version in reversed(champions_history(settings, name)):
        if version != now and version not in rolled_back:
            return version
    return None


def decisions(settings: Settings, name: str) -> list[dict[str, Any]]:
    """The model's promotion and rollback events as plain dicts, oldest first (reports)."""
    kinds = ("promotion", "rollback", "reconcile")
    return [r.to_dict() for r in store_of(settings).events(name, kinds)]
