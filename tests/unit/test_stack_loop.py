"""`driftloop stack env` points a shell at the stack; `stack loop` walks the model's calendar."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from deployments.loop import next_steps
from driftloop.config import Settings, load_params

REPO = Path(__file__).resolve().parents[2]


def test_eval_of_stack_env_exports_the_stack_to_the_commands_a_shell_runs(tmp_path: Path) -> None:
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {
        **os.environ,
        "DRIFTLOOP_PROJECT": str(tmp_path),
        "DRIFTLOOP_HOME": str(tmp_path / ".driftloop"),
        "DRIFTLOOP_STACK_PORT_BASE": "41000",
    }
    env.pop("PREFECT_API_URL", None)
    cli = shlex.join([sys.executable, "-P", "-m", "driftloop.cli", "stack", "env"])
    script = f'eval "$({cli})" && {shlex.quote(sys.executable)} -c ' + shlex.quote(
        "import os; print(os.environ['PREFECT_API_URL'], os.environ['DRIFTLOOP_STATE_URL'])"
    )
    done = subprocess.run(
        ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    api, state = done.stdout.split()
    assert api == "http://127.0.0.1:41000/api" and state.endswith("/driftloop_state")


def test_the_loop_steps_through_the_models_calendar_after_its_first_months(
    tmp_path: Path,
) -> None:
    params = load_params(REPO / "examples" / "flights" / "params.yaml")
    settings = Settings(project=tmp_path, home=tmp_path / ".driftloop")
    first = dt.date.fromisoformat(params.replay.initial_until) + dt.timedelta(days=7)
    assert next_steps(params, settings, 3) == [first + dt.timedelta(days=7 * i) for i in range(3)]
    assert len(next_steps(params, settings, 1000)) == 44  # March 7 to December 29
