"""A short online replay for real: the flights example served week by week through the running
prediction service (uvicorn on a loopback port), labels sent back through /feedback as flights
land, monitoring on the prediction log, retrains through the gate and, in the second arm, the
gate's winner shadow-tested on served traffic before it may become champion.

The example's params with a monitoring policy that always wants to retrain (every numeric column
counts as drifted) and a smaller model, so that three weekly steps exercise the whole loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop.config import Settings, load_params
from driftloop.replay import INITIAL_TRIGGER
from tests.helpers import Project, write_eager_flights_params

pytestmark = pytest.mark.slow

STEPS = 3
DAYS = ["2013-03-07", "2013-03-14", "2013-03-21"]


@pytest.fixture(scope="module")
def flights_params(module_project: Project) -> Path:
    return write_eager_flights_params(module_project.root, "flights-online", DAYS[-1])


@pytest.fixture(scope="module")
def replayed(
    prefect_harness: None, module_project: Project, flights_params: Path
) -> dict[str, Any]:
    from flows.replay import online_replay_flow

    return online_replay_flow(
        steps=STEPS,
        name="online",
        project=str(module_project.root),
        params_file=str(flights_params),
    )


@pytest.fixture(scope="module")
def report(module_project: Project, replayed: dict[str, Any]) -> dict[str, Any]:
    out = module_project.root / "reports" / "flights-replay" / "online"
    text = (out / "report.json").read_text()
    parsed: dict[str, Any] = json.loads(text, parse_constant=_refuse)
    return parsed


def _refuse(token: str) -> None:
    raise ValueError(f"not strict JSON: {token}")


def arm(replayed: dict[str, Any], name: str) -> tuple[Any, Settings]:
    root = Path(replayed["meta"][f"workspace_{name}"])
    params = load_params(root / "params.yaml")
    settings = Settings(project=root, home=root / ".driftloop")
    return params, settings


def test_both_policies_are_judged_on_the_same_served_answers(
    module_project: Project, report: dict[str, Any]
) -> None:
    comparison = report["comparison"]
    assert set(comparison) == {"gate", "experiment"}
    judged = {name: r["n_predictions"] for name, r in comparison.items()}
    assert judged["gate"] == judged["experiment"] > 15_000  # three weeks of landed flights
    for result in comparison.values():
        weeks = result["by_step"]
        assert (
            list(weeks) == DAYS and sum(w["n"] for w in weeks.values()) == result["n_predictions"]
        )
        assert all(0.5 < w["roc_auc"] < 0.9 for w in weeks.values())
    for steps in report["timeline"].values():
        assert [s["as_of"] for s in steps] == DAYS
        # monitored what it served, unless an experiment promoted just before the monitor (the
        # new champion has served nothing yet: its window is the accepted data)
        assert [s["source"] for s in steps if not s["experiment"].startswith("promote")] == [
            "prediction_log"
        ] * sum(not s["experiment"].startswith("promote") for s in steps)
        assert all(s["served"] > 6000 and s["labels_sent"] > 5000 for s in steps)
        # every row of a step was answered by the champion of that step (shadow never answers)
        assert [s["answered"] for s in steps] == [
            {f"champion v{s['champion']}": s["served"]} for s in steps
        ]
    html = module_project.root / "reports" / "flights-replay" / "online" / "report.html"
    text = html.read_text()
    assert "On the same" in text and "holdout gate only" in text and "tested online" in text


def test_the_gate_arm_promotes_at_once_and_serves_the_new_champion(
    replayed: dict[str, Any], report: dict[str, Any]
) -> None:
    events = report["events"]["gate"]
    promoted = [
        e["version"]
        for e in events
        if e["event"] == "promotion"
        and e["decision"] == "promoted"
        and e["trigger"] != INITIAL_TRIGGER
    ]
    assert promoted, "every step retrains; at least one candidate passes the gate"
    served = report["comparison"]["gate"]["versions_served"]
    steps = report["timeline"]["gate"]
    champions = [s["champion"] for s in steps]
    # a version promoted before the last step answers the next step's traffic
    for version in promoted:
        if version not in (steps[-1]["champion"], None) and version in champions:
            assert version in served
    assert not any(e["event"].startswith("experiment") for e in events)


def test_the_experiment_arm_shadow_tests_the_gates_winner_before_any_promotion(
    replayed: dict[str, Any], report: dict[str, Any]
) -> None:
    events = report["events"]["experiment"]
    staged = [e for e in events if e["event"] == "promotion" and e["decision"] == "challenger"]
    starts = [e for e in events if e["event"] == "experiment-start"]
    assert staged, "the first retrain's candidate passes the gate and is staged"
    assert [e["version"] for e in starts] == [e["version"] for e in staged]
    # the champion only ever moves through an experiment's verdict
    moved = [e for e in events if e["event"] == "promotion" and e["decision"] == "promoted"]
    first = [e for e in moved if e["trigger"] == INITIAL_TRIGGER]  # v1, or its refit
    assert len(first) == 1
    assert all(e["trigger"].startswith("experiment") for e in moved if e not in first)
    # while a challenger is tested, the monitor's retrain waits
    steps = report["timeline"]["experiment"]
    first = next(i for i, s in enumerate(steps) if s["staged"])  # a gate winner staged
    after = steps[first + 1]
    assert after["action"] == "retrain", after  # the eager policy always wants to retrain
    if after["experiment"].startswith("continue"):
        assert not after["retrained"]


def test_the_challenger_scored_the_same_served_rows_in_shadow_on_the_replay_clock(
    replayed: dict[str, Any],
) -> None:
    from driftloop.serving.feedback import read_feedback
    from driftloop.serving.predlog import read_prediction_log

    params, settings = arm(replayed, "experiment")
    log = read_prediction_log(params, settings)
    assert log["time"].min() > pd.Timestamp("2013-03-01")  # stamped with the replayed time
    assert log["time"].max() < pd.Timestamp("2013-03-23")
    shadow = log[log["variant"] == "shadow"]
    champion = log[log["variant"] == "champion"]
    assert len(shadow) > 0 and set(shadow["model_version"]) <= {"2", "3", "4"}
    assert set(shadow["prediction_id"]) <= set(champion["prediction_id"])  # paired rows
    fed = read_feedback(params, settings)
    assert fed["received_at"].between("2013-03-01", "2013-03-23").all()
    labels = sorted(settings.path(params.data.labels_dir).glob("*.parquet"))
    assert len(labels) >= 1 + STEPS  # the first model's labels, then one feedback batch a step
