"""One run of driftloop's Prefect training flow, in its own process (started by bench_train.py).

    python bench/pipeline_child.py SOURCE OUT.json [PROFILE.out]

Runs `flows.training.training_flow(source=SOURCE)` in the current directory (a throwaway project)
and writes OUT.json: wall-clock marks (start, imported, flow_done, end), the flow run id, the
flow's result or its error. With PROFILE.out, the heavy libraries are first imported one by one
(their import times are recorded) and the flow call runs under cProfile; that run is for the
breakdown only, not for the timing table.
"""

from __future__ import annotations

import time

T_START = time.time()

import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# Imported one by one in profile mode, in the order the flow would first need them.
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


def main(source: str, out: Path, profile: str | None) -> int:
    marks = {"start": T_START}
    imports: dict[str, float] = {}
    if profile:
        for module in HEAVY_IMPORTS:
            began = time.perf_counter()
            importlib.import_module(module)
            imports[module] = time.perf_counter() - began
    from flows.training import training_flow

    marks["imported"] = time.time()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    state = training_flow(source=source, return_state=True)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    marks["flow_done"] = time.time()
    payload: dict = {
        "flow_run_id": str(state.state_details.flow_run_id),
        "state": state.name,
        "imports": imports,
        "marks": marks,
    }
    try:
        payload["result"] = state.result()
    except Exception as exc:  # a failed flow: report it, the parent prints the log
        payload["error"] = f"{exc.__class__.__name__}: {exc}"
    marks["end"] = time.time()
    out.write_text(json.dumps(payload, default=str))
    return 0 if "result" in payload else 1


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: pipeline_child.py SOURCE OUT.json [PROFILE.out]")
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else None))
