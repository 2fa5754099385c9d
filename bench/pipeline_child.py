"""One run of driftloop's Prefect training flow, in its own process (started by bench_train.py).

    python bench/pipeline_child.py SOURCE OUT.json [--split-imports]

Runs `flows.training.training_flow(source=SOURCE)` in the current directory (a throwaway project)
and writes OUT.json: wall-clock marks (start, imported, flow_done, end), the flow run id, the
flow's result or its error, and inclusive seconds and call counts of the main steps. The steps are
timed by thin wrappers around driftloop functions (a few microseconds per call, about 30 calls),
so the figures come from the measured run itself. A lazily imported library's import time falls
into the first step that needs it; with --split-imports the heavy libraries are imported one by
one before the flow instead (their import times are recorded), and a few MLflow calls are timed.
"""

from __future__ import annotations

import time

T_START = time.time()

import functools  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# Imported one by one with --split-imports, in the order the flow first needs them.
HEAVY_IMPORTS = (
    "pandas",
    "prefect",
    "flows.training",
    "dvc.repo",
    "great_expectations",
    "sklearn.ensemble",
    "mlflow",
    "mlflow.sklearn",
    "skops.io",
)

# (module, function, label) of the steps to time; a missing one is skipped.
STEPS = (
    ("driftloop.pipeline", "read_next_batch", "read source file"),
    ("driftloop.validation", "validate_batch", "GE validate_batch"),
    ("driftloop.datastore", "write_batch", "write raw parquet"),
    ("driftloop.versioning", "track", "DVC add + push"),
    ("driftloop.versioning", "is_in_sync", "DVC status"),
    ("driftloop.datastore", "load_accepted", "read accepted parquet"),
    ("driftloop.pipeline", "already_trained", "MLflow: already trained?"),
    ("driftloop.registry", "connect", "MLflow connect"),
    ("driftloop.features", "make_dataset", "features (make_dataset)"),
    ("driftloop.training", "cross_validate", "time-series CV"),
    ("driftloop.training", "fit_candidate", "CV + final fit"),
    ("driftloop.training", "evaluate", "evaluate (predict + metrics)"),
    ("driftloop.pipeline", "log_and_register", "MLflow log + register"),
    ("driftloop.registry", "log_training_run", "MLflow log run + model"),
    ("driftloop.registry", "trusted_types", "skops trusted types"),
    ("driftloop.registry", "register", "MLflow register version"),
    ("driftloop.pipeline", "promote", "promote"),
    ("driftloop.registry", "load_model", "load registered model"),
    ("driftloop.pipeline", "write_train_report", "write train report"),
)
MLFLOW_STEPS = (
    ("mlflow.data.pandas_dataset", "from_pandas", "mlflow from_pandas dataset"),
    ("mlflow", "log_input", "mlflow log_input"),
    ("mlflow.sklearn", "log_model", "mlflow.sklearn.log_model"),
)
OWN_PACKAGES = ("driftloop", "flows", "tasks", "mlflow")

TIMES: dict[str, list[float]] = {}


def _timed(label: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = TIMES.setdefault(label, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - began

    return wrapper


def instrument(steps: tuple[tuple[str, str, str], ...]) -> None:
    """Replace each step's function by a timed wrapper wherever it is bound by name."""
    for module_name, name, label in steps:
        try:
            original = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        wrapper = _timed(label, original)
        for mod_name, module in list(sys.modules.items()):
            if module is None or not mod_name.startswith(OWN_PACKAGES):
                continue
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, wrapper)


def main(source: str, out: Path, split_imports: bool) -> int:
    marks = {"start": T_START}
    imports: dict[str, float] = {}
    if split_imports:
        for module in HEAVY_IMPORTS:
            began = time.perf_counter()
            importlib.import_module(module)
            imports[module] = time.perf_counter() - began
    from flows.training import training_flow

    instrument(STEPS + (MLFLOW_STEPS if split_imports else ()))
    marks["imported"] = time.time()
    state = training_flow(source=source, return_state=True)
    marks["flow_done"] = time.time()
    payload: dict[str, Any] = {
        "flow_run_id": str(state.state_details.flow_run_id),
        "state": state.name,
        "imports": imports,
        "steps": {label: {"calls": c, "seconds": s} for label, (c, s) in TIMES.items()},
        "marks": marks,
    }
    try:
        payload["result"] = state.result()
    except Exception as exc:  # a failed flow: report it, the parent points at the log
        payload["error"] = f"{exc.__class__.__name__}: {exc}"
    marks["end"] = time.time()
    out.write_text(json.dumps(payload, default=str))
    return 0 if "result" in payload else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    split = "--split-imports" in args
    args = [a for a in args if a != "--split-imports"]
    if len(args) != 2:
        sys.exit("usage: pipeline_child.py SOURCE OUT.json [--split-imports]")
    sys.exit(main(args[0], Path(args[1]), split))
