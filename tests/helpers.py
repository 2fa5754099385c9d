"""Test helpers (no side effects on import): run commands and the CLI, lay out temp projects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from driftloop.config import Params, Settings, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
FAST_TRAIN = {"max_iter": 40, "cv_splits": 2}

T = TypeVar("T")


# -- commands -------------------------------------------------------------------------------------


def subprocess_env() -> dict[str, str]:
    """The current (monkeypatched) environment, with the venv's bin dir first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: Sequence[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command with the test environment; fail the test with its output if it fails."""
    done = subprocess.run(
        list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=subprocess_env()
    )
    assert done.returncode == 0, f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout}{done.stderr}"
    return done


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.exit_code == 0, self.stderr
        return json.loads(self.stdout)


def cli(*args: str) -> CliResult:
    """`driftloop ARGS` in this process (Typer's CliRunner); unexpected exceptions propagate."""
    from typer.testing import CliRunner

    from driftloop.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def cli_command(*args: str) -> list[str]:
    """argv of `driftloop ARGS` as its own process (-P: never import the package from the cwd)."""
    return [sys.executable, "-P", "-m", "driftloop.cli", *args]


def cli_subprocess(*args: str, cwd: Path, timeout: float = 600) -> CliResult:
    """`driftloop ARGS` as a separate process with the current (project) environment."""
    done = subprocess.run(
        cli_command(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 60) -> T:
    """fetch() until done(value) or timeout; return the last value (the caller asserts on it).

    Prefect records some things (task run states) asynchronously, through its event pipeline.
    """
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = fetch()
    return value


# -- projects -------------------------------------------------------------------------------------


@dataclass
class Project:
    """A temp clone of the project: git + DVC repo with a local remote, its own MLflow store."""

    root: Path
    remote: Path
    params: Params
    settings: Settings

    @property
    def raw_dir(self) -> Path:
        return self.root / self.params.data.raw_dir

    @property
    def quarantine_dir(self) -> Path:
        return self.root / self.params.data.quarantine_dir

    @property
    def model_name(self) -> str:
        return self.params.train.model_name

    def raw_dvc_md5(self) -> str:
        """The md5 that data/raw.dvc records, read straight from the file."""
        dvc_file = self.raw_dir.with_name(self.raw_dir.name + ".dvc")
        return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])

    def raw_snapshot(self) -> dict[str, bytes]:
        """Accepted batch files by name, with their bytes."""
        return {p.name: p.read_bytes() for p in sorted(self.raw_dir.iterdir())}

    def edit_params(self, **sections: dict[str, Any]) -> None:
        """Update keys of params.yaml sections (one level deep), then reload params."""
        file = self.root / "params.yaml"
        raw = yaml.safe_load(file.read_text())
        for section, values in sections.items():
            raw[section].update(values)
        file.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.params = load_params(file)

    def git(self, *args: str) -> str:
        return run(["git", *args], self.root).stdout.strip()

    def audit(self) -> list[dict[str, Any]]:
        """Every event of the decision ledger, oldest first (kind, model, fields, hash)."""
        from driftloop.ledger import open_store, store_exists

        if not store_exists(self.settings.state_dir):
            return []
        return [r.to_dict() for r in open_store(self.settings.state_dir).events()]

    def mlflow_client(self) -> Any:
        from mlflow import MlflowClient

        uri = self.settings.mlflow_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def champion(self) -> str | None:
        """The version behind the `champion` alias (None when there is none)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(
                self.mlflow_client().get_model_version_by_alias(self.model_name, "champion").version
            )
        except MlflowException:
            return None

    def versions(self) -> list[str]:
        found = self.mlflow_client().search_model_versions(f"name = '{self.model_name}'")
        return sorted((str(mv.version) for mv in found), key=int)


def dvc_deps_in_repo() -> list[str]:
    """Files of this repo that dvc.yaml lists as stage deps (a clone has them; stages hash them)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    deps = {dep for stage in stages.values() for dep in stage.get("deps", []) if "$" not in dep}
    return sorted(dep for dep in deps if (REPO_ROOT / dep).is_file())


def write_fast_params(file: Path) -> None:
    """Fewer boosting iterations and CV folds: same code paths, a fraction of the time."""
    raw = yaml.safe_load(file.read_text())
    raw["train"].setdefault("hyperparams", {})["max_iter"] = FAST_TRAIN["max_iter"]
    for candidate in (raw["train"].get("candidates") or {}).values():
        if candidate["model"] == "hist_gradient_boosting":
            candidate.setdefault("hyperparams", {})["max_iter"] = FAST_TRAIN["max_iter"]
    raw["train"]["cv_splits"] = FAST_TRAIN["cv_splits"]
    # One registered version per training: the refit of a gate winner as a version of its own
    # is checked where it is the subject (pipeline and replay tests turn it on).
    raw["train"]["refit"] = False
    file.write_text(yaml.safe_dump(raw, sort_keys=False))


def write_eager_flights_params(root: Path, name: str, end: str) -> Path:
    """The flights example's params with a monitoring policy that always wants to retrain (every
    numeric column counts as drifted) and a smaller model: a few weekly steps run the whole loop.
    """
    raw = yaml.safe_load((REPO_ROOT / "examples" / "flights" / "params.yaml").read_text())
    raw["train"].update(cv_splits=2, hyperparams={"max_iter": 30, "max_depth": 3})
    for candidate in (raw["train"].get("candidates") or {}).values():
        if candidate["model"] == "hist_gradient_boosting":
            candidate["hyperparams"] = {**candidate.get("hyperparams", {}), "max_iter": 30}
    raw["monitor"].update(
        drift_thresholds="fixed",
        importance_weighting=False,
        threshold=0.001,
        drift_share=0.1,
        cooldown_days=0,
    )
    raw["replay"]["end"] = end
    path = root / "models" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def build_project(
    base: Path, template: Path, mp: pytest.MonkeyPatch, mlflow_db: Path | None
) -> Project:
    """Lay out base/project the way a user's clone looks, commit it, and point env and cwd at it.

    Args:
        base: an empty temp dir; the project and its DVC remote go side by side in it.
        template: a directory after `git init` + `dvc init` + `dvc config core.analytics false`.
        mp: the monkeypatch that sets (and later restores) env vars and the cwd.
        mlflow_db: an empty, migrated MLflow SQLite file to start from (None: MLflow creates it).
    """
    root, remote = base / "project", base / "dvc-remote"
    shutil.copytree(template, root, symlinks=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore", *dvc_deps_in_repo()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, root / name)
    write_fast_params(root / "params.yaml")
    run(["git", "config", "user.email", "tests@driftloop.invalid"], root)
    run(["git", "config", "user.name", "driftloop tests"], root)
    run(["git", "config", "commit.gpgsign", "false"], root)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], root)

    mp.setenv("DRIFTLOOP_PROJECT", str(root))
    mp.setenv("DRIFTLOOP_HOME", str(root / ".driftloop"))
    for var in ("MLFLOW_TRACKING_URI", "DRIFTLOOP_TRACKING_URI", "DRIFTLOOP_ARTIFACT_ROOT"):
        mp.delenv(var, raising=False)
    mp.chdir(root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "clone of driftloop"], root)

    settings = Settings()
    if mlflow_db is not None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_db, settings.state_dir / "mlflow.db")
    return Project(root, remote, load_params(root / "params.yaml"), settings)
