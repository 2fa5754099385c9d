"""Two `driftloop train` processes at once on a fresh project: one champion, two audited decisions.

The project starts without an MLflow database, so both processes also race to create the schema.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import Project, cli, cli_command, subprocess_env

pytestmark = pytest.mark.slow


@pytest.mark.fresh_mlflow
def test_two_concurrent_trainings_promote_exactly_one(project: Project) -> None:
    assert cli("ingest", "--until", "2013-06-30").exit_code == 0
    assert project.audit() == []

    procs = [
        subprocess.Popen(
            cli_command("train", "--json"),
            cwd=project.root,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]

    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["version"] for r in results) == ["1", "2"]
    winners = [r for r in results if r["promoted"] is True]
    assert len(winners) == 1, results
    loser = next(r for r in results if r is not winners[0])
    assert loser["promoted"] is False
    assert project.champion() == winners[0]["version"]

    promotions = [e for e in project.audit() if e["kind"] == "promotion"]
    assert len(promotions) == 2
    assert [e["decision"] for e in promotions].count("promoted") == 1
    promoted = next(e for e in promotions if e["decision"] == "promoted")
    assert promoted["version"] == winners[0]["version"]
    assert promoted["champion_before"] is None
    rejected = next(e for e in promotions if e["decision"] == "rejected")
    assert rejected["version"] == loser["version"]
    assert rejected["champion_before"] == winners[0]["version"]  # judged against the winner
