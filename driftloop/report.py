"""Read-only views of the registry: status of champion/challenger and a version's lineage."""

from __future__ import annotations

import json
from typing import Any

from driftloop import registry
from driftloop.config import Params, Settings
from driftloop.errors import RegistryError

_METRICS = ("roc_auc", "f1", "accuracy", "log_loss", "brier")
_OVERALL = {f"{prefix}_{m}" for prefix in ("holdout", "cv") for m in _METRICS}


def _describe(client: Any, ref: registry.ModelRef | None, metric: str) -> dict[str, Any] | None:
    if ref is None:
        return None
    metrics = registry.run_metrics(client, ref.run_id)
    return {
        "version": ref.version,
        "run_id": ref.run_id,
        "aliases": list(ref.aliases),
        "data_md5": ref.tags.get(registry.DATA_TAG),
        "git_commit": ref.tags.get(registry.COMMIT_TAG),
        "decision": ref.tags.get(registry.DECISION_TAG),
        "reason": ref.tags.get(registry.REASON_TAG),
        "primary_metric": metric,
        "metrics": {k: v for k, v in sorted(metrics.items()) if k in _OVERALL},
    }


def status(params: Params, settings: Settings) -> dict[str, Any]:
    """Champion, challenger and the last decision from the audit log."""
    client = registry.connect(settings)
    name = params.train.model_name
    metric = params.promote.primary_metric
    audit = [e for e in registry.read_audit(settings) if e.get("model") == name]
    return {
        "model": name,
        "tracking_uri": settings.mlflow_uri,
        "champion": _describe(client, registry.get_alias(client, name, registry.CHAMPION), metric),
        "challenger": _describe(
            client, registry.get_alias(client, name, registry.CHALLENGER), metric
        ),
        "last_decision": audit[-1] if audit else None,
    }


def status_text(payload: dict[str, Any]) -> str:
    """A few human lines for `driftloop status`."""
    lines = [f"model {payload['model']} ({payload['tracking_uri']})"]
    for role in ("champion", "challenger"):
        ref = payload[role]
        if ref is None:
            lines.append(f"  {role}: none")
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
    client = registry.connect(settings)
    name = params.train.model_name
    ref = (
        registry.get_version(client, name, version)
        if version
        else registry.get_alias(client, name, registry.CHAMPION)
    )
    if ref is None:
        raise RegistryError(f"{name}: no champion yet; train one or pass a version")
    run = client.get_run(ref.run_id)
    inputs = [
        {"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source}
        for d in (run.inputs.dataset_inputs if run.inputs else [])
    ]
    validation = _artifact_json(client, ref.run_id, "validation.json")
    return {
        "model": name,
        "version": ref.version,
        "aliases": list(ref.aliases),
        "mlflow_run_id": ref.run_id,
        "experiment_id": run.info.experiment_id,
        "data_md5": ref.tags.get(registry.DATA_TAG),
        "datasets": inputs,
        "git_commit": ref.tags.get(registry.COMMIT_TAG),
        "trigger": ref.tags.get("driftloop.trigger"),
        "training_complete": run.data.tags.get(registry.COMPLETE_TAG) == "true",
        "validation": {
            "status": ref.tags.get("driftloop.validation"),
            "success": validation.get("success") if validation else None,
            "evaluated": validation.get("evaluated") if validation else None,
            "failed": validation.get("failed") if validation else None,
        },
        "decision": {
            "verdict": ref.tags.get(registry.DECISION_TAG),
            "reason": ref.tags.get(registry.REASON_TAG),
            "champion_before": ref.tags.get("driftloop.champion_before"),
            "rollback_reason": ref.tags.get("driftloop.rollback_reason"),
        },
    }


def _artifact_json(client: Any, run_id: str, path: str) -> dict[str, Any] | None:
    import mlflow.artifacts

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    except Exception:
        return None
    with open(local) as fh:
        loaded: dict[str, Any] = json.load(fh)
    return loaded
