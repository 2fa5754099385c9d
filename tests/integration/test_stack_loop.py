"""The flights example's loop on the stack, as the README runs it: `driftloop stack up` for a temp
project (the fault suite's fixture: own ports, databases and Redis databases), then
`driftloop --params FLIGHTS stack loop`: the first model through the `training` deployment, then
weekly steps, each its rows and labels ingested, a `monitor-daily` run and the retrain it starts
through the `retrain` deployment. The runs are taken by both workers, the champion is the
ledger's, and `driftloop ledger verify` passes. Select with `-m stack`.

The example's params with a monitoring policy that always wants to retrain (every column drifted,
no cooldown) and a smaller model, so that each of two steps runs a retrain.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import yaml

from tests.helpers import write_eager_flights_params
from tests.integration.test_faults import Stack
from tests.integration.test_faults import stack as stack  # the module's own stack

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(1800)]

STEPS = 2
FLIGHTS = "models/flights.yaml"


def _flights_params(stack: Stack) -> None:
    path = write_eager_flights_params(stack.project.root, "flights", "2013-03-14")
    raw = yaml.safe_load(path.read_text())
    raw["train"]["refit"] = False  # one version per training (as every test project trains)
    raw["monitor"].update(domain_classifier=False, triggers=["drift"])
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def looped(stack: Stack) -> dict[str, Any]:
    """`driftloop stack loop --steps 2` on the flights example, as its own process."""
    _flights_params(stack)
    started = time.monotonic()
    loop = ("--params", FLIGHTS, "stack", "loop", "--steps", str(STEPS), "--json")
    done = stack.run(*loop, timeout=1500)
    took = time.monotonic() - started
    assert done.returncode == 0, f"stack loop -> {done.returncode}: {done.stderr[-3000:]}"
    report = dict(json.loads(done.stdout))
    report["seconds"] = took
    print(done.stderr[-3000:])
    print(f"stack loop, {STEPS} steps: {took:.0f} s; {report['per_worker']}")
    return report


def test_the_loop_runs_training_then_monitoring_and_retrains_through_the_deployments(
    looped: dict[str, Any],
) -> None:
    runs = looped["runs"]
    expected = ["training/training"] + ["monitor/monitor-daily", "retrain/retrain"] * STEPS
    assert [r["deployment"] for r in runs] == expected, runs
    assert [r["state"] for r in runs] == ["Completed"] * len(runs), runs
    assert [r["step"] for r in runs] == ["2013-02-28"] + [
        d for d in ("2013-03-07", "2013-03-14") for _ in range(2)
    ]
    for monitor in runs[1::2]:
        assert monitor["note"].startswith("retrain: signals fired: drift"), monitor
    # the training and each retrain went through the promotion gate (the ledger's record)
    assert runs[0]["note"] == "v1 promoted" and runs[0]["champion"] == "1", runs[0]
    for retrain in runs[2::2]:
        assert re.fullmatch(r"v\d+ (promoted|rejected)", retrain["note"]), retrain
    assert runs[-1]["champion"] == looped["champion"]
    assert not looped["quarantined"], looped["quarantined"]


def test_runs_are_taken_by_both_workers(stack: Stack, looped: dict[str, Any]) -> None:
    workers = {f"{stack.prefix}-worker-{i}" for i in (1, 2)}
    runs = looped["runs"]
    assert {r["worker"] for r in runs} == workers, runs
    assert set(looped["per_worker"]) == workers and sum(looped["per_worker"].values()) == len(runs)
    # a monitoring run waits for the retrain it started: the other worker takes it
    for monitor, retrain in zip(runs[1::2], runs[2::2], strict=True):
        assert retrain["worker"] != monitor["worker"], (monitor, retrain)


def test_a_champion_exists_and_the_ledger_verifies_with_the_alias_on_it(
    stack: Stack, looped: dict[str, Any]
) -> None:
    assert looped["champion"] is not None and looped["champion"] == looped["alias"], looped
    done = stack.run("--params", FLIGHTS, "ledger", "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    check = json.loads(done.stdout)
    assert check["ok"] and not check["problems"], check
    model = check["models"]["flight_delay"]
    assert model["agree"] and model["ledger"] == model["alias"] == looped["champion"], model
    shown = stack.run("--params", FLIGHTS, "ledger", "show", "--json", "--last", "100")
    assert shown.returncode == 0, shown.stderr[-2000:]
    kinds = [e["kind"] for e in json.loads(shown.stdout)]
    assert kinds.count("retrain_claim") == STEPS, kinds
    print(
        f"ledger verify: {check['events']} events, chain intact; flight_delay champion "
        f"v{model['ledger']} = alias v{model['alias']}; kinds {kinds}"
    )
