"""The promotion policy: a pure decision that explains itself. No registry access here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from driftloop.config import PromoteParams
from driftloop.training import Evaluation, better


@dataclass(frozen=True)
class Paired:
    """The challenger's gain over the champion on the same rows (positive: better) and its
    confidence interval, overall and per segment (`column/value`)."""

    gain: float
    low: float
    high: float
    n_rows: int
    method: str  # "delong" or "bootstrap"
    confidence: float = 0.95
    segments: dict[str, Paired] = field(default_factory=dict)

    def interval(self) -> str:
        return (
            f"gain {self.gain:+.4f}, {self.confidence:.0%} interval "
            f"[{self.low:+.4f}, {self.high:+.4f}] (paired {self.method}, {self.n_rows} rows)"
        )


@dataclass(frozen=True)
class Decision:
    """Whether to act, and the one-line reason why."""

    promote: bool
    reason: str


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _segment_drops(candidate: Evaluation, champion: Evaluation, policy: PromoteParams) -> list[str]:
    """Segments (`column/value`) where the candidate falls more than max_segment_drop behind.

    Segments with fewer than `min_segment_rows` rows are not judged: their metric is noise.
    """
    metric = policy.primary_metric
    drops = []
    for segment, champ in sorted(champion.segments.items()):
        cand = candidate.segments.get(segment)
        if cand is None or cand.get("n", policy.min_segment_rows) < policy.min_segment_rows:
            continue
        a, b = cand.get(metric, math.nan), champ.get(metric, math.nan)
        if math.isnan(a) or math.isnan(b):
            continue
        if better(metric, a, b) < -policy.max_segment_drop:
            drops.append(f"{segment} {_fmt(b)}->{_fmt(a)}")
    return drops


def decide_promotion(
    candidate: Evaluation,
    champion: Evaluation | None,
    policy: PromoteParams,
    paired: Paired | None = None,
) -> Decision:
    """Promote the candidate only if it beats the champion on the same holdout by min_delta
    (`rule: better`), or, under `rule: not_worse` with a paired test (`paired`), unless it is
    significantly worse there.

    A first model (no champion) needs to clear the absolute floor. Any missing or NaN primary
    metric rejects: the gate fails closed.
    """
    metric = policy.primary_metric
    cand = candidate.metrics.get(metric, math.nan)
    if math.isnan(cand):
        return Decision(False, f"candidate {metric} is missing or NaN")
    if champion is None:
        if better(metric, cand, policy.floor) >= 0:
            return Decision(True, f"first model: {metric} {_fmt(cand)} clears floor {policy.floor}")
        return Decision(False, f"first model: {metric} {_fmt(cand)} below floor {policy.floor}")
    champ = champion.metrics.get(metric, math.nan)
    if math.isnan(champ):
        return Decision(False, f"champion {metric} is missing or NaN on this holdout")
    if policy.rule == "not_worse" and paired is not None and _finite(paired):
        return _not_worse(metric, cand, champ, paired, policy)
    gain = better(metric, cand, champ)
    if gain < policy.min_delta:
        return Decision(
            False,
            f"{metric} {_fmt(cand)} vs champion {_fmt(champ)}: gain {gain:+.4f} < "
            f"min_delta {policy.min_delta}",
        )
    drops = _segment_drops(candidate, champion, policy)
    if drops:
        return Decision(
            False,
            f"{metric} gain {gain:+.4f} but segments drop > "
            f"{policy.max_segment_drop}: {', '.join(drops)}",
        )
    return Decision(
        True, f"{metric} {_fmt(cand)} beats champion {_fmt(champ)} by {gain:+.4f}; no segment drop"
    )


def _finite(paired: Paired) -> bool:
    return all(math.isfinite(v) for v in (paired.gain, paired.low, paired.high))


def _not_worse(
    metric: str, cand: float, champ: float, paired: Paired, policy: PromoteParams
) -> Decision:
    """Refuse only what the holdout shows to be worse: overall, or in a segment by more than
    max_segment_drop (each with its whole interval below that line)."""
    versus = f"{metric} {_fmt(cand)} vs champion {_fmt(champ)}: {paired.interval()}"
    if paired.high < 0:
        return Decision(False, f"{versus}: significantly worse")
    drops = [
        f"{name} {seg.interval()}"
        for name, seg in sorted(paired.segments.items())
        if seg.n_rows >= policy.min_segment_rows
        and _finite(seg)
        and seg.high < -policy.max_segment_drop
    ]
    if drops:
        return Decision(
            False,
            f"{versus}; segments significantly worse by > {policy.max_segment_drop}: "
            + ", ".join(drops),
        )
    return Decision(True, f"{versus}: not significantly worse; no segment significantly worse")
