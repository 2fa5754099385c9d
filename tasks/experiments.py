"""Tasks of the experiment evaluation: evaluate the running experiment, apply the verdict, publish.

No statistics here: `driftloop.experiments` decides; these add retries and the artifact.
"""

from __future__ import annotations

import datetime as dt
import math

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from driftloop import experiments
from driftloop.config import Params, Settings
from driftloop.experiments import ExperimentState, ExperimentVerdict
from tasks import alerts
from tasks.common import REGISTRY_RETRIES


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def markdown(state: ExperimentState, verdict: ExperimentVerdict) -> str:
    """Per-variant traffic and metrics, the test and the decision, as a markdown artifact."""
    p = state.params
    lines = [
        f"### Experiment {state.kind}: v{state.challenger_version} vs champion "
        f"v{state.champion_version}: **{verdict.action}**",
        "",
        verdict.reason,
        "",
        f"Started {state.started_at.isoformat(timespec='minutes')}; metric {p.metric}, "
        f"min_effect {p.min_effect}, alpha {p.alpha}, power {p.power}; labelled rows needed "
        f"per arm: {verdict.n_required or '-'}",
        "",
        "| variant | requests | labelled | " + " | ".join(("log_loss", "brier", "accuracy")) + " |",
        "|---|---|---|---|---|---|",
    ]
    evals = {"champion": verdict.champion_eval, "challenger": verdict.challenger_eval}
    for arm, variants in (("champion", ("champion",)), ("challenger", ("challenger", "shadow"))):
        requests = sum(verdict.traffic.get(v, 0) for v in variants)
        found = evals[arm]
        metrics = found.metrics if found is not None else {}
        cells = " | ".join(_num(metrics.get(m)) for m in ("log_loss", "brier", "accuracy"))
        lines.append(f"| {arm} | {requests} | {verdict.labelled.get(arm, 0)} | {cells} |")
    if verdict.srm is not None:
        srm = verdict.srm
        lines += [
            "",
            f"SRM: {srm.challenger} challenger keys of {srm.champion + srm.challenger}, "
            f"expected {srm.expected_challenger:.0f}; chi-square p = {_num(srm.p_value)}",
        ]
    if verdict.test is not None:
        t = verdict.test
        lines += [
            "",
            f"Test: **{t.name}**, statistic {_num(t.statistic)}, p = {_num(t.p_value)}, "
            f"challenger improvement {t.improvement:+.4f} "
            f"(CI {_num(t.ci_low)}..{_num(t.ci_high)})",
        ]
    if verdict.gate is not None:
        lines += [
            "",
            f"Promotion gate: {'promote' if verdict.gate.promote else 'refuse'}: "
            f"{verdict.gate.reason}",
        ]
    return "\n".join(lines)


@task(name="evaluate-experiment", cache_policy=NONE)
def evaluate(
    params: Params, settings: Settings, now: dt.datetime | None = None
) -> tuple[ExperimentState, ExperimentVerdict] | None:
    """The running experiment judged on the prediction log and feedback (None: none runs)."""
    return experiments.evaluate_running(params, settings, now)


@task(name="apply-verdict", cache_policy=NONE, **REGISTRY_RETRIES)
def apply(
    settings: Settings,
    state: ExperimentState,
    verdict: ExperimentVerdict,
    now: dt.datetime | None = None,
) -> ExperimentState | None:
    """Promote through the ledger's compare-and-set, or end the experiment with why."""
    done = experiments.apply_verdict(settings, state, verdict, now)
    if done is not None:
        payload = {
            "version": state.challenger_version,
            "decision": "promoted" if done.outcome == "promoted" else "not promoted",
            "reason": done.reason,
            "champion_before": state.champion_version,
            "trigger": f"experiment {state.kind}",
        }
        alerts.publish("driftloop.promotion", state.model_name, payload)
    return done


@task(name="publish-experiment", cache_policy=NONE)
def publish(state: ExperimentState, verdict: ExperimentVerdict) -> str:
    """The markdown artifact of this evaluation."""
    create_markdown_artifact(
        key="experiment", markdown=markdown(state, verdict), description="Online experiment"
    )
    return verdict.action
