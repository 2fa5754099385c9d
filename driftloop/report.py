"""Read-only views of the registry: status of champion/challenger and a version's lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from driftloop import jsonio, registry
from driftloop.config import Params, Settings
from driftloop.errors import RegistryError
from driftloop.lineage import COMPLETE_TAG

_METRICS = ("roc_auc", "f1", "accuracy", "log_loss", "brier")
_OVERALL = {f"{prefix}_{m}" for prefix in ("holdout", "cv") for m in _METRICS}


def _describe(client: Any, ref: registry.ModelRef | None, metric: str) -> dict[str, Any] | None:
    if ref is None:
        return None
    lineage, verdict = ref.lineage, ref.verdict
    metrics = registry.run_metrics(client, ref.run_id)
    return {
        "version": ref.version,
        "run_id": ref.run_id,
        "aliases": list(ref.aliases),
        "data_md5": lineage.data_md5 or None,
        "git_commit": lineage.git_commit or None,
        "decision": verdict.decision or None,
        "reason": verdict.reason or None,
        "primary_metric": metric,
        "metrics": {k: v for k, v in sorted(metrics.items()) if k in _OVERALL},
    }


def status(params: Params, settings: Settings) -> dict[str, Any]:
    """Champion, challenger and the last decision from the decision ledger.

    A read: it never creates the store and skips the writers' set-up (`registry.connect`).
    On the embedded SQLite store the answer is kept in a snapshot that is valid while the store's
    files are unchanged (any write by anyone changes them), so a repeated status needs no MLflow.
    """
    name = params.train.model_name
    stamp = _store_stamp(settings)  # taken before the read: a write during it voids the snapshot
    roles = _snapshot(settings, name, stamp)
    if roles is None:
        roles = _read_roles(params, settings)
        if stamp is not None:
            jsonio.write_json(_snapshot_path(settings, name), {"stamp": stamp, "roles": roles})
    from driftloop.ledger import open_store, store_exists

    last = (
        open_store(settings.state_dir).events(name)[-1:] if store_exists(settings.state_dir) else []
    )
    return {
        "model": name,
        "tracking_uri": settings.mlflow_uri,
        **roles,
        "last_decision": last[0].to_dict() if last else None,
    }


def _read_roles(params: Params, settings: Settings) -> dict[str, Any]:
    """Champion and challenger as the registry has them now."""
    client = registry.connect(settings, read_only=True)
    name, metric = params.train.model_name, params.promote.primary_metric
    refs = {
        role: None if client is None else registry.get_alias(client, name, role)
        for role in (registry.CHAMPION, registry.CHALLENGER)
    }
    return {role: _describe(client, ref, metric) for role, ref in refs.items()}


def _store_stamp(settings: Settings) -> list[list[int]] | None:
    """Size and modification time of the SQLite store's files (None: not an embedded store)."""
    uri = settings.mlflow_uri
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.exists():
        return None
    files = [db, db.with_name(db.name + "-wal")]
    return [[f.stat().st_size, f.stat().st_mtime_ns] if f.exists() else [0, 0] for f in files]


def _snapshot_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "status" / f"{name}.json"


def _snapshot(settings: Settings, name: str, stamp: list[list[int]] | None) -> Any:
    """The saved roles if the store has not changed since they were read, else None."""
    path = _snapshot_path(settings, name)
    if stamp is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("roles") if saved.get("stamp") == stamp else None


def status_text(payload: dict[str, Any]) -> str:
    """A few human lines for `driftloop status`."""
    lines = [f"model {payload['model']} ({payload['tracking_uri']})"]
    for role in ("champion", "challenger"):
        ref = payload[role]
        if ref is None:
            lines.append(f"  {role}: none")
            continue
        champion = payload["champion"]
        if role == "challenger" and champion and ref["version"] == champion["version"]:
            lines.append(f"  challenger: v{ref['version']}, the champion (no candidate waits)")
            continue
        value = ref["metrics"].get(f"holdout_{ref['primary_metric']}")
        shown = f"{value:.4f}" if isinstance(value, float) else "n/a"
        lines.append(
            f"  {role}: v{ref['version']} holdout {ref['primary_metric']}={shown} "
            f"data {ref['data_md5']} run {ref['run_id']}"
        )
    last = payload["last_decision"]
    if last:
        lines.append(f"  last decision: v{last['version']} {last['decision']}: {last['reason']}")
    return "\n".join(lines)


def lineage(params: Params, settings: Settings, version: str | None) -> dict[str, Any]:
    """Everything a model version traces back to."""
    client = registry.connect(settings, read_only=True)
    name = params.train.model_name
    if client is None:
        raise RegistryError(f"{name}: no model registry yet at {settings.mlflow_uri}; train first")
    ref = (
        registry.get_version(client, name, version)
        if version
        else registry.get_alias(client, name, registry.CHAMPION)
    )
    if ref is None:
        raise RegistryError(f"{name}: no champion yet; train one or pass a version")
    run = registry._call(client.get_run, ref.run_id)
    inputs = [
        {"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source}
        for d in (run.inputs.dataset_inputs if run.inputs else [])
    ]
    validation = artifact_json(ref.run_id, "validation.json")
    lineage, verdict = ref.lineage, ref.verdict
    return {
        "model": name,
        "version": ref.version,
        "aliases": list(ref.aliases),
        "mlflow_run_id": ref.run_id,
        "experiment_id": run.info.experiment_id,
        "data_md5": lineage.data_md5 or None,
        "labels_md5": lineage.labels_md5 or None,
        "datasets": inputs,
        "git_commit": lineage.git_commit or None,
        "trigger": lineage.trigger or None,
        "triggered_by": lineage.triggered_by or None,
        "train_since": lineage.train_since or None,
        "train_until": lineage.train_until or None,
        "training_complete": run.data.tags.get(COMPLETE_TAG) == "true",
        "validation": {
            "status": lineage.validation or None,
            "success": validation.get("success") if validation else None,
            "evaluated": validation.get("evaluated") if validation else None,
            "failed": validation.get("failed") if validation else None,
        },
        "decision": {
            "verdict": verdict.decision or None,
            "reason": verdict.reason or None,
            "champion_before": verdict.champion_before or None,
            "rollback_reason": verdict.rollback_reason or None,
        },
    }


def artifact_json(run_id: str, path: str) -> dict[str, Any] | None:
    """A JSON artifact of a run, read through a temporary folder (None when it is missing)."""
    import mlflow.artifacts

    try:
        loaded: dict[str, Any] = mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except Exception:
        return None
    return loaded
