"""The retrain policy: signals in, one decision out (pure, no IO, no library calls).

Each signal says "fired", "quiet" or "cannot_tell" with a one-line detail: realised performance
(a significant drop of the window's metric), estimated performance (CBPE, before labels),
per-column drift weighted by what the champion uses, multivariate drift (a domain classifier),
and an unseen season. `decide_retrain` retrains when a signal listed in `monitor.triggers` fired
and the cooldown allows it; its reason names the signals that fired. It cannot evaluate only
when no listed signal could be judged.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from driftloop.config import MonitorParams, TriggerName

if TYPE_CHECKING:
    from driftloop.domain import DomainDrift
    from driftloop.drift import DriftSummary
    from driftloop.estimation import Estimate
    from driftloop.performance import PerformanceTest

SignalName = TriggerName
State = Literal["fired", "quiet", "cannot_tell"]


@dataclass(frozen=True)
class Signal:
    """One trigger's verdict on the window, and why."""

    name: SignalName
    state: State
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "detail": self.detail}


@dataclass(frozen=True)
class RetrainDecision:
    """What to do, and a one-line reason why."""

    action: Literal["retrain", "no_action", "cannot_evaluate"]
    reason: str

    @property
    def retrain(self) -> bool:
        return self.action == "retrain"


def decide_retrain(
    signals: Sequence[Signal],
    policy: MonitorParams,
    *,
    last_retrain: dt.date | None,
    today: dt.date,
) -> RetrainDecision:
    """Retrain when a listed signal fired, unless within the cooldown; fail closed.

    Signals not listed in `policy.triggers` are reported as context, never acted on.
    """
    listed = [s for s in signals if s.name in policy.triggers]
    context = [f"{s.name}: {s.detail}" for s in signals if s.name not in policy.triggers]
    fired = [s for s in listed if s.state == "fired"]
    # A season already seen is no evidence either way: it alone does not make a window judged.
    judged = [
        s for s in listed if s.state == "fired" or (s.state == "quiet" and s.name != "season")
    ]
    if not judged:
        told = "; ".join([f"{s.name}: {s.detail}" for s in listed] + context) or "no signal"
        return RetrainDecision("cannot_evaluate", f"nothing could be judged: {told}")
    if not fired:
        return RetrainDecision("no_action", _join(listed, context))
    names = ", ".join(s.name for s in fired)
    rest = [s for s in listed if s.state != "fired"]
    wanted = f"signals fired: {names}; " + _join(fired + rest, context)
    if last_retrain is not None and (today - last_retrain).days < policy.cooldown_days:
        days = (today - last_retrain).days
        return RetrainDecision(
            "no_action",
            f"cooldown: last retrain {last_retrain.isoformat()} is {days} days ago "
            f"(< {policy.cooldown_days}); would retrain for {wanted}",
        )
    return RetrainDecision("retrain", wanted)


def _join(signals: Sequence[Signal], context: Sequence[str]) -> str:
    parts = [f"{s.name} {s.state.replace('_', ' ')}: {s.detail}" for s in signals]
    return "; ".join(parts + [f"(not a trigger) {c}" for c in context])


# -- the signals, each from its measurement (pure) --------------------------------------------


def performance_signal(test: PerformanceTest | None) -> Signal:
    """Fired on a significant drop of the window's realised metric."""
    if test is None:
        return Signal("performance", "cannot_tell", "no performance check")
    states: dict[str, State] = {"drop": "fired", "no_drop": "quiet", "cannot_tell": "cannot_tell"}
    return Signal("performance", states[test.verdict], test.reason)


def estimated_signal(
    estimate: Estimate | None,
    reference: Mapping[str, float],
    tolerance: float,
    min_rows: int,
) -> Signal:
    """Fired when the estimated ROC AUC (else accuracy) is below the holdout's minus tolerance."""
    if estimate is None or estimate.n_rows < min_rows:
        n = 0 if estimate is None else estimate.n_rows
        return Signal("estimated", "cannot_tell", f"{n} rows to estimate from (< {min_rows})")
    for metric in ("roc_auc", "accuracy"):
        value, ref = getattr(estimate, metric), float(reference.get(metric, math.nan))
        if math.isfinite(value) and math.isfinite(ref):
            fired = value < ref - tolerance
            cmp = "<" if fired else ">="
            detail = (
                f"estimated {metric} {value:.3f} {cmp} holdout {ref:.3f} - {tolerance:.3f} "
                f"({estimate.n_rows} rows, CBPE)"
            )
            return Signal("estimated", "fired" if fired else "quiet", detail)
    return Signal("estimated", "cannot_tell", "no estimate and holdout metric to compare")


def drift_signal(
    drift: DriftSummary | None,
    share: float,
    weights: Mapping[str, float] | None,
    error: str | None = None,
) -> Signal:
    """Fired when the (importance-weighted) share of drifted columns reaches `share`."""
    from driftloop.importance import weighted_share

    if drift is None:
        return Signal("drift", "cannot_tell", " ".join((error or "no drift summary").split()))
    drifted = list(drift.drifted_columns)
    if weights is None:
        value, what = drift.drifted_share, "drifted share"
        listed = ", ".join(drifted) or "none"
    else:
        value, what = weighted_share(drifted, dict(weights)), "importance-weighted drifted share"
        listed = ", ".join(f"{c} (weight {weights.get(c, 0.0):.2f})" for c in drifted) or "none"
    fired = value >= share
    detail = (
        f"{what} {value:.2f} {'>=' if fired else '<'} {share:.2f} "
        f"({len(drifted)}/{len(drift.columns)} columns drifted: {listed})"
    )
    if drift.prediction is not None and drift.prediction.drifted:
        detail += f"; prediction {drift.prediction.column!r} drifted"
    return Signal("drift", "fired" if fired else "quiet", detail)


def multivariate_signal(domain: DomainDrift | None, why_not: str | None = None) -> Signal:
    """Fired when the domain classifier's AUC reaches its calibrated threshold."""
    if domain is None or not math.isfinite(domain.auc):
        return Signal("multivariate", "cannot_tell", why_not or "no domain classifier result")
    cmp = ">=" if domain.drifted else "<"
    detail = (
        f"domain classifier AUC {domain.auc:.3f} {cmp} {domain.threshold:.3f} "
        f"(reference quantile; {len(domain.columns)} columns)"
    )
    return Signal("multivariate", "fired" if domain.drifted else "quiet", detail)


def season_signal(unseen: str | None) -> Signal:
    """Fired when the champion's training data holds too little of this time of year."""
    if unseen is None:
        return Signal("season", "quiet", "the champion has seen this time of year")
    return Signal("season", "fired", " ".join(unseen.split()))
