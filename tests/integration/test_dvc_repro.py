"""`dvc repro` of the project's dvc.yaml in a temp clone: stages call the `driftloop` CLI.

One full repro (each stage is its own process with heavy imports), then a no-op repro and a
params change that must rerun only the stage that declares that parameter.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from driftloop.lineage import Lineage
from tests.helpers import REPO_ROOT, Project, run

pytestmark = pytest.mark.slow

UNTIL = "2013-06-30"  # the smallest data that trains: 547 rows, 180 of them the holdout
STAGES = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


def dvc(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["dvc", *args], project.root)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def skipped_stages(output: str) -> list[str]:
    return re.findall(r"Stage '([^']+)' didn't change, skipping", output)


@pytest.fixture(scope="module")
def first_repro(module_project: Project) -> subprocess.CompletedProcess[str]:
    module_project.edit_params(data={"until": UNTIL})
    module_project.git("commit", "-q", "-am", "ingest less data")
    return dvc(module_project, "repro")


def test_first_repro_runs_every_stage_and_leaves_a_champion(
    module_project: Project, first_repro: subprocess.CompletedProcess[str]
) -> None:
    assert STAGES == ["ingest", "validate", "train", "promote"]
    assert ran_stages(first_repro.stdout) == STAGES
    assert "first model: roc_auc" in first_repro.stdout
    assert module_project.champion() == "1"
    assert module_project.versions() == ["1"]
    lock = yaml.safe_load((module_project.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    batches = list(module_project.raw_snapshot())
    assert len(batches) == 1 and batches[0].startswith(f"2012-01-01_{UNTIL}_")
    tags = module_project.mlflow_client().get_model_version(module_project.model_name, "1").tags
    assert tags[Lineage.tag("data_md5")] == module_project.raw_dvc_md5()
    assert tags[Lineage.tag("trigger")] == "dvc"


def test_second_repro_skips_every_stage(
    module_project: Project, first_repro: subprocess.CompletedProcess[str]
) -> None:
    again = dvc(module_project, "repro")

    assert ran_stages(again.stdout) == []
    assert "Running stage" not in again.stdout
    assert skipped_stages(again.stdout) == STAGES
    assert "Data and pipelines are up to date." in dvc(module_project, "status").stdout
    assert module_project.versions() == ["1"]


def test_changing_min_delta_reruns_only_promote(
    module_project: Project, first_repro: subprocess.CompletedProcess[str]
) -> None:
    audited = len(module_project.audit())
    min_delta = module_project.params.promote.min_delta
    module_project.edit_params(promote={"min_delta": min_delta + 0.01})

    status = dvc(module_project, "status").stdout
    assert status.splitlines()[0] == "promote:"
    assert not any(f"{stage}:" in status for stage in STAGES if stage != "promote")

    rerun = dvc(module_project, "repro")

    assert ran_stages(rerun.stdout) == ["promote"]
    assert skipped_stages(rerun.stdout) == ["ingest", "validate", "train"]
    assert module_project.versions() == ["1"]  # no retraining
    assert module_project.champion() == "1"
    assert len(module_project.audit()) == audited + 1
    assert "Data and pipelines are up to date." in dvc(module_project, "status").stdout


def test_an_ingest_stage_run_again_with_nothing_new_still_writes_its_output(
    module_project: Project, first_repro: subprocess.CompletedProcess[str]
) -> None:
    """DVC removes a stage's outputs before running it; an ingest with nothing new (the data
    came in through the training flow, or the stage is forced) must write its manifest again."""
    manifest = module_project.root / module_project.params.reports.ingest
    before = manifest.read_text()
    forced = dvc(module_project, "repro", "--force", "--single-item", "ingest")
    assert forced.returncode == 0, forced.stderr
    assert "nothing new to ingest" in forced.stdout
    assert manifest.read_text() == before
    assert "Data and pipelines are up to date." in dvc(module_project, "status").stdout
