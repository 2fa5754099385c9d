"""The training pipeline through the CLI in a temp clone: ingest, train, status, lineage, rollback.

A gate winner is refitted on its whole window before it becomes champion: the first training run
registers v1 (gated) and v2 (its refit, the champion); the second registers v3 (and v4 if it wins).

The module's fixtures perform the steps in order and keep what each command printed; the tests
check one aspect each. Real DVC (local remote), Great Expectations, MLflow (SQLite) and sklearn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from driftloop import champion
from driftloop.ledger import Promotion
from driftloop.lineage import COMPLETE_TAG, Lineage, Verdict
from tests.helpers import CliResult, Project, cli

pytestmark = pytest.mark.slow

FIRST_UNTIL, SECOND_UNTIL = "2014-06-30", "2015-06-30"


def remote_objects(project: Project) -> set[str]:
    """Object ids in the local DVC remote (files/md5/ab/cdef... -> abcdef...)."""
    store = project.remote / "files" / "md5"
    return {"".join(p.relative_to(store).parts) for p in store.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class Round:
    ingest: CliResult
    train: dict[str, Any]
    md5: str
    raw_files: list[str]


@pytest.fixture(scope="module")
def first(module_project: Project) -> Round:
    # The rollback tests below need v3 rejected: on this data only rule better (v3 must gain
    # min_delta) refuses it; not_worse promotes a retrain that is not significantly worse.
    module_project.edit_params(train={"refit": True}, promote={"rule": "better"})
    module_project.git("commit", "-qam", "params: refit gate winners, as shipped")  # as shipped
    ingested = cli("ingest", "--until", FIRST_UNTIL)
    assert ingested.exit_code == 0, ingested.stderr
    trained = cli("train", "--json").json()
    return Round(
        ingested, trained, module_project.raw_dvc_md5(), sorted(module_project.raw_snapshot())
    )


@pytest.fixture(scope="module")
def status(first: Round) -> dict[str, Any]:
    return cli("status", "--json").json()


@pytest.fixture(scope="module")
def lineage(first: Round) -> dict[str, Any]:
    return cli("lineage", "--json").json()


@pytest.fixture(scope="module")
def second(
    module_project: Project, first: Round, status: dict[str, Any], lineage: dict[str, Any]
) -> Round:
    """More data and a second training run (after the first round's status and lineage)."""
    ingested = cli("ingest", "--until", SECOND_UNTIL)
    assert ingested.exit_code == 0, ingested.stderr
    trained = cli("train", "--json").json()
    return Round(
        ingested, trained, module_project.raw_dvc_md5(), sorted(module_project.raw_snapshot())
    )


def test_ingest_writes_one_immutable_batch_tracked_and_pushed_by_dvc(
    module_project: Project, first: Round
) -> None:
    assert len(first.raw_files) == 1
    batch = module_project.raw_dir / first.raw_files[0]
    assert batch.suffix == ".parquet"
    assert batch.name.startswith("2012-01-01_2014-06-30_")
    assert batch.stat().st_mode & 0o222 == 0  # written read-only
    assert first.md5.endswith(".dir") and len(first.md5) == len("0" * 32 + ".dir")
    assert first.md5 in first.ingest.stdout
    # dvc push happened: the directory manifest and the one file's object are in the remote
    pushed = remote_objects(module_project)
    assert first.md5 in pushed
    assert len(pushed) == 2


def test_first_training_run_passes_the_gate_as_v1_and_its_refit_v2_is_champion(
    module_project: Project, first: Round
) -> None:
    assert first.train["version"] == "1"
    assert first.train["promoted"] is True
    assert first.train["refit"] == "2"
    assert first.train["reason"].startswith("first model: roc_auc")
    assert "refitted on the whole window as v2" in first.train["message"]
    assert module_project.champion() == "2"


def test_the_champion_is_the_gate_winner_refitted_on_its_whole_window(
    module_project: Project, first: Round
) -> None:
    """v2 is v1's candidate, calibration and threshold with its pipeline fitted on every row of
    the window, the holdout v1 was judged on included; the record says so."""
    import mlflow.sklearn

    from driftloop import stages
    from driftloop.config import Settings
    from driftloop.features import make_dataset

    client = module_project.mlflow_client()
    name = module_project.model_name
    gated, refit = (client.get_model_version(name, v) for v in ("1", "2"))
    assert refit.tags[Lineage.tag("refit_of")] == "1"
    assert gated.tags[Lineage.tag("refit_of")] == ""
    assert refit.tags[Lineage.tag("data_md5")] == gated.tags[Lineage.tag("data_md5")] == first.md5
    assert refit.tags[Verdict.tag("decision")] == "promoted"
    assert refit.tags[Verdict.tag("reason")].startswith("refit of v1, which passed the gate")
    assert "refitted on the whole window" in gated.tags[Verdict.tag("reason")]
    g, r = (client.get_run(v.run_id).data for v in (gated, refit))
    assert r.params["refit_of"] == r.params["holdout_metrics_of"] == "1"
    assert r.params["chosen_candidate"] == g.params["chosen_candidate"]
    assert r.metrics["n_train"] == g.metrics["n_train"] + g.metrics["n_holdout"]
    assert r.metrics["holdout_roc_auc"] == g.metrics["holdout_roc_auc"]  # the gate's estimate

    m1 = mlflow.sklearn.load_model(f"models:/{name}/1")
    m2 = mlflow.sklearn.load_model(f"models:/{name}/2")
    assert (m2.candidate, m2.threshold) == (m1.candidate, m1.threshold)
    data = stages.load_training_data(module_project.params, Settings())
    whole = make_dataset(data.frame, module_project.params)
    expected = m1.refitted(whole.X, whole.y).predict_proba(whole.X)
    assert np.allclose(m2.predict_proba(whole.X), expected)
    assert not np.allclose(m1.predict_proba(whole.X), expected)


def test_status_shows_champion_with_data_md5_and_metrics(
    first: Round, status: dict[str, Any]
) -> None:
    champion = status["champion"]
    assert champion["version"] == "2"
    assert champion["data_md5"] == first.md5
    assert champion["metrics"]["holdout_roc_auc"] == pytest.approx(
        first.train["holdout"]["roc_auc"]
    )
    assert {"cv_roc_auc", "holdout_accuracy", "holdout_log_loss"} <= set(champion["metrics"])
    assert status["last_decision"]["decision"] == "promoted"
    assert status["last_decision"]["version"] == "2"


def test_status_metrics_are_the_overall_ones(
    module_project: Project, first: Round, status: dict[str, Any]
) -> None:
    logged = module_project.mlflow_client().get_run(first.train["run_id"]).data.metrics
    per_segment = {name for name in logged if name.startswith("holdout_season/")}
    assert "holdout_season/winter_roc_auc" in per_segment  # the run has them; status leaves them
    shown = set(status["champion"]["metrics"])
    assert shown and not shown & per_segment
    assert not {name for name in shown if "/" in name}


def test_lineage_traces_data_code_run_validation_and_decision(
    module_project: Project, first: Round, lineage: dict[str, Any]
) -> None:
    assert lineage["version"] == "2"  # the champion: v1 refitted
    assert lineage["data_md5"] == first.md5
    assert lineage["git_commit"] == module_project.git("rev-parse", "HEAD")
    assert lineage["mlflow_run_id"] != first.train["run_id"]
    assert lineage["training_complete"] is True
    assert lineage["validation"]["status"] == "passed"
    assert lineage["validation"]["success"] is True
    assert lineage["validation"]["failed"] == 0
    assert lineage["decision"]["verdict"] == "promoted"
    assert (
        lineage["decision"]["reason"]
        == "refit of v1, which passed the gate: " + (first.train["reason"])
    )
    assert [d["digest"] for d in lineage["datasets"]] == [first.md5]


def test_mlflow_run_has_the_dvc_dataset_and_the_completion_tag(
    module_project: Project, first: Round
) -> None:
    run = module_project.mlflow_client().get_run(first.train["run_id"])
    digests = [(d.dataset.digest, d.dataset.name) for d in run.inputs.dataset_inputs]
    assert digests == [(first.md5, "data/raw")]
    assert run.data.tags[COMPLETE_TAG] == "true"
    assert run.data.tags[Lineage.tag("data_md5")] == first.md5
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(first.train["holdout"]["roc_auc"])


def test_second_ingest_adds_a_batch_and_a_new_data_version(
    module_project: Project, first: Round, second: Round
) -> None:
    assert len(second.raw_files) == 2
    assert first.raw_files[0] in second.raw_files  # accepted batches are never rewritten
    assert any(name.startswith("2014-07-01_2015-06-30_") for name in second.raw_files)
    assert second.md5 != first.md5
    assert second.md5 in second.ingest.stdout
    assert second.md5 in remote_objects(module_project)


def test_second_training_records_a_decision_either_way(
    module_project: Project, second: Round
) -> None:
    version = second.train["version"]
    promoted = second.train["promoted"]
    verdict = "promoted" if promoted else "rejected"
    assert version == "3"
    tags = module_project.mlflow_client().get_model_version(module_project.model_name, "3").tags
    assert tags[Verdict.tag("decision")] == verdict
    assert tags[Verdict.tag("reason")].startswith(second.train["reason"])
    assert tags[Verdict.tag("champion_before")] == "2"
    assert tags[Lineage.tag("data_md5")] == second.md5
    assert module_project.champion() == ("4" if promoted else "2")
    assert second.train.get("refit") == ("4" if promoted else None)

    entries = [e for e in module_project.audit() if e["kind"] == "promotion"]
    assert [(e["version"], e["refit_of"], e["decision"]) for e in entries] == [
        ("2", "1", "promoted"),
        ("4", "3", verdict) if promoted else ("3", None, verdict),
    ]
    last = entries[-1]
    assert last["reason"].startswith(second.train["reason"])
    assert last["champion_before"] == "2"
    assert last["data_md5"] == second.md5
    assert last["candidate_metrics"]["roc_auc"] == pytest.approx(second.train["holdout"]["roc_auc"])
    assert last["champion_metrics"] is not None  # v2 was re-scored on v3's holdout


def test_rollback_moves_champion_and_records_the_reason(
    module_project: Project, second: Round
) -> None:
    # v3 is usually rejected on this data; an operator may still have made it champion by hand
    # (MLflow UI). Make that so either way, so the rollback below has something to undo.
    client = module_project.mlflow_client()
    current = module_project.champion()
    if current != "3":
        by_hand = Promotion(module_project.model_name, version="3", decision="promoted")
        moved = champion.move(module_project.settings, client, by_hand, current)
        assert moved is None, moved
    reason = "v3 over-predicts rain in production"

    result = cli("rollback", "--reason", reason, "--to", "2")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"champion v3 -> v2: {reason}"
    assert module_project.champion() == "2"
    tags = client.get_model_version(module_project.model_name, "2").tags
    assert tags[Verdict.tag("rollback_reason")] == reason
    assert (
        Verdict.tag("rollback_reason")
        not in client.get_model_version(module_project.model_name, "3").tags
    )
    last = module_project.audit()[-1]
    assert (last["kind"], last["version"], last["reason"]) == ("rollback", "2", reason)
    assert last["champion_before"] == "3"
    assert cli("lineage", "2", "--json").json()["decision"]["rollback_reason"] == reason


def test_rollback_without_a_previous_champion_fails_with_exit_6(
    module_project: Project, second: Round
) -> None:
    """After the rollback, v2 is the only champion to go back to: v3 was rolled back from."""
    entries_before = len(module_project.audit())

    result = cli("rollback", "--reason", "try again")

    assert result.exit_code == 6
    name = module_project.model_name
    assert result.stderr.strip().splitlines() == [
        f"error: {name}: no previous champion to roll back to; pass --to VERSION"
    ]
    assert module_project.champion() == "2"
    assert len(module_project.audit()) == entries_before
