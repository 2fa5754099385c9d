"""Shared task settings: which failures are transient, and the artifact helpers."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from driftloop.errors import RegistryError


def retry_if_registry_down(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only transient tracking-store failures; never a validation or training failure."""
    try:
        state.result()
    except RegistryError:
        return True
    except Exception:
        return False
    return False


# Tasks that write to the tracking store: retried on its transient failures only.
REGISTRY_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 8, 30],
    "retry_condition_fn": retry_if_registry_down,
}


def table(rows: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """A Prefect table artifact from {row: {column: value}}."""
    return [
        {"set": name, **{k: round(float(v), 4) if v == v else None for k, v in values.items()}}
        for name, values in rows.items()
    ]
