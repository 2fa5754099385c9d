"""Online experiments: `challenger` against `champion` in shadow, A/B or canary, judged on labels.

The pure core: sticky assignment, the canary ramp, the sample-ratio-mismatch check, guardrails,
the minimum sample size and the statistical test, and the verdict. Thin adapters beside it keep
the experiment's state file, count guardrails in process, read the prediction log and apply a
verdict through the champion's compare-and-set in the decision ledger.

Repeated looks: a FIXED HORIZON that the evaluation enforces. The evaluation flow may look every
hour, but a test is run only once the labelled rows reach the minimum sample size (computed with
statsmodels from `min_effect`, `alpha` and `power`), and that one test at `alpha` ends the
experiment whatever it finds (promote, "challenger worse" or "no significant difference"). Before
that a look only counts rows, so its outcome cannot depend on the metric. The variance behind the
sample size is estimated once, on the first `PILOT` labelled rows per arm (an internal pilot), so
the horizon does not move with later looks; `tests/unit/test_experiments.py` checks the
false-promotion rate of this rule by simulation (A/A, a look every 50 labelled rows), next to
the inflated rate of peeking (a test at every look) on the same data.
Why not an always-valid sequential test: it would stop earlier on large effects, but a
hand-written mixture SPRT has no well-kept library to test it against; the fixed horizon keeps
every test a textbook scipy/statsmodels call.

Tests (two-sided at `alpha`; promotion also needs the challenger ahead):
shadow (paired, same prediction ids): McNemar on correctness for accuracy, paired t-test on the
per-row log loss / Brier differences; A/B and canary (unpaired): two-proportion z-test for
accuracy, Welch t-test on per-row losses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from driftloop import jsonio, versioning
from driftloop.config import ExperimentParams, Params, PromoteParams, Settings
from driftloop.errors import DriftloopError
from driftloop.ledger import Event, ExperimentEnd, ExperimentStart, Promotion
from driftloop.promotion import Decision, decide_promotion
from driftloop.training import Evaluation, evaluate_predictions

SRM_ALPHA = 0.001  # a sample-ratio mismatch this unlikely ends the experiment
SRM_MIN_EXPECTED = 5  # chi-square needs this many expected units per arm
PILOT = 100  # the first labelled rows per arm: the variance behind the sample size, fixed once
LATENCY_WINDOW = 10_000  # the guardrail's p99 is over the challenger's most recent requests
EPS = 1e-15

Variant = Literal["champion", "challenger"]
Action = Literal["continue", "promote", "end"]
PREDICTION_COLUMNS = ("prediction_id", "time", "probability", "variant", "model_version", "key")
LABEL_COLUMNS = ("prediction_id", "label")


class ExperimentError(DriftloopError):
    """An experiment cannot start or stop (no challenger, one already running...)."""

    exit_code = 8


# -- state -----------------------------------------------------------------------------------------


def utc(when: dt.datetime) -> dt.datetime:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@dataclass(frozen=True)
class ExperimentState:
    """One experiment of a model: what runs against what, since when, with which params."""

    model_name: str
    kind: Literal["shadow", "ab", "canary"]
    champion_version: str
    challenger_version: str
    started_at: dt.datetime
    params: ExperimentParams
    status: Literal["running", "ended"] = "running"
    ended_at: dt.datetime | None = None
    outcome: str = ""  # promoted | ended | guardrail | srm | stopped
    reason: str = ""

    @property
    def id(self) -> str:
        """Unique per experiment; also the salt of its assignment hash."""
        stamp = self.started_at.isoformat(timespec="microseconds")
        return f"{self.model_name}:v{self.challenger_version}-vs-v{self.champion_version}@{stamp}"

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict[str, Any]:
        return {**jsonio.to_jsonable(self), "id": self.id}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentState:
        ended = raw.get("ended_at")
        return cls(
            model_name=raw["model_name"],
            kind=raw["kind"],
            champion_version=str(raw["champion_version"]),
            challenger_version=str(raw["challenger_version"]),
            started_at=utc(dt.datetime.fromisoformat(raw["started_at"])),
            params=ExperimentParams.model_validate(raw["params"]),
            status=raw.get("status", "running"),
            ended_at=utc(dt.datetime.fromisoformat(ended)) if ended else None,
            outcome=raw.get("outcome", ""),
            reason=raw.get("reason", ""),
        )


def new_state(
    model_name: str, champion: str, challenger: str, params: ExperimentParams, now: dt.datetime
) -> ExperimentState:
    """A running experiment of `challenger` against `champion` (they must differ)."""
    if champion == challenger:
        raise ExperimentError(f"{model_name}: challenger v{challenger} is the champion already")
    return ExperimentState(model_name, params.kind, champion, challenger, utc(now), params)


def ended(state: ExperimentState, outcome: str, reason: str, now: dt.datetime) -> ExperimentState:
    """The experiment, ended now with an outcome and its reason."""
    return dataclasses.replace(
        state, status="ended", ended_at=utc(now), outcome=outcome, reason=reason
    )


# -- assignment ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """Which model answers a request, and whether the challenger also scores it in shadow."""

    variant: Variant
    shadow: bool = False


def unit_hash(key: str, salt: str) -> float:
    """A deterministic, uniform number in [0, 1) for a key (sticky: same key, same number)."""
    digest = hashlib.blake2b(f"{salt}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def canary_weight(steps: list[float], bake_minutes: float, elapsed_minutes: float) -> float:
    """The canary's challenger share: one step per `bake_minutes`, the last one held."""
    if bake_minutes <= 0:
        return steps[-1]
    index = int(max(elapsed_minutes, 0.0) // bake_minutes)
    return steps[min(index, len(steps) - 1)]


def challenger_weight(state: ExperimentState, now: dt.datetime) -> float:
    """The share of traffic the challenger answers at `now` (0 in shadow: it never answers)."""
    if state.kind == "shadow" or not state.running:
        return 0.0
    if state.kind == "ab":
        return state.params.weight
    elapsed = (utc(now) - state.started_at).total_seconds() / 60
    return canary_weight(state.params.canary_steps, state.params.bake_minutes, elapsed)


def assign(state: ExperimentState, key: str, now: dt.datetime) -> Assignment:
    """The variant for a request key: sticky within an experiment, salted across experiments.

    Canary: a key's number is fixed, so as the weight ramps keys only move to the challenger.
    Shadow: the champion answers; a `shadow_share` sample of keys is also scored by the challenger.
    """
    if state.kind == "shadow":
        sampled = state.running and unit_hash(key, f"{state.id}/shadow") < state.params.shadow_share
        return Assignment("champion", sampled)
    take = unit_hash(key, state.id) < challenger_weight(state, now)
    return Assignment("challenger" if take else "champion", False)


# -- sample-ratio mismatch -------------------------------------------------------------------------


@dataclass(frozen=True)
class SrmResult:
    """Assigned units per arm against the weights they were assigned with (chi-square)."""

    champion: int
    challenger: int
    expected_challenger: float
    p_value: float  # NaN: too few units to judge

    @property
    def mismatch(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < SRM_ALPHA


def srm_test(n_champion: int, n_challenger: int, expected_challenger: float) -> SrmResult:
    """scipy's chi-square goodness of fit of the observed split against the expected one."""
    from scipy.stats import chisquare

    total = n_champion + n_challenger
    expected = np.array([total - expected_challenger, expected_challenger])
    if total == 0 or expected.min() < SRM_MIN_EXPECTED:
        return SrmResult(n_champion, n_challenger, expected_challenger, math.nan)
    p = float(chisquare([n_champion, n_challenger], expected).pvalue)
    return SrmResult(n_champion, n_challenger, float(expected_challenger), p)


def weights_at(state: ExperimentState, times: pd.Series) -> np.ndarray:
    """The challenger's share at each time (the canary ramp, vectorised)."""
    if state.kind == "ab":
        return np.full(len(times), state.params.weight)
    steps, bake = state.params.canary_steps, state.params.bake_minutes
    minutes = (times - pd.Timestamp(state.started_at)).dt.total_seconds().to_numpy() / 60
    if bake <= 0:
        return np.full(len(times), steps[-1])
    index = np.minimum(np.floor(np.maximum(minutes, 0) / bake).astype(int), len(steps) - 1)
    return np.asarray(steps)[index]


def srm_of(state: ExperimentState, rows: pd.DataFrame) -> SrmResult | None:
    """SRM on unique keys, each at its first request (requests of one key are not independent).

    None in shadow: the shadow queue drops work under load by design, so its counts are no test.
    """
    if state.kind == "shadow":
        return None
    first = rows.sort_values("time").drop_duplicates("key")
    expected = float(weights_at(state, first["time"]).sum())
    counts = first["arm"].value_counts()
    return srm_test(int(counts.get("champion", 0)), int(counts.get("challenger", 0)), expected)


# -- guardrails ------------------------------------------------------------------------------------


@dataclass
class GuardrailCounts:
    """The challenger's requests, errors and recent latencies in this process."""

    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    tripped: bool = False


def guardrail_breach(counts: GuardrailCounts, params: ExperimentParams) -> str | None:
    """Why the challenger must stop now (error rate or p99 latency), or None."""
    n = counts.requests
    if n < params.min_guardrail_requests:
        return None
    rate = counts.errors / n
    if rate > params.max_error_rate:
        return (
            f"guardrail: challenger error rate {rate:.2%} over {n} requests > "
            f"max_error_rate {params.max_error_rate:.2%}"
        )
    p99 = float(np.percentile(np.fromiter(counts.latencies, float), 99))
    if p99 > params.max_p99_ms:
        return (
            f"guardrail: challenger p99 latency {p99:.0f} ms over {n} requests > "
            f"max_p99_ms {params.max_p99_ms:.0f}"
        )
    return None


class Guardrails:
    """In-process guardrail counters, one set per experiment id (thread-safe; tests `clear`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, GuardrailCounts] = {}

    def record(self, state: ExperimentState, ok: bool, latency_ms: float) -> str | None:
        """Count one challenger request; the breach reason, returned once per experiment."""
        with self._lock:
            counts = self._counts.setdefault(state.id, GuardrailCounts())
            counts.requests += 1
            counts.errors += 0 if ok else 1
            counts.latencies.append(float(latency_ms))
            if counts.tripped:
                return None
            reason = guardrail_breach(counts, state.params)
            counts.tripped = reason is not None
            return reason

    def counts(self, experiment_id: str) -> GuardrailCounts | None:
        return self._counts.get(experiment_id)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


GUARDRAILS = Guardrails()


# -- per-row losses, sample size and the test -----------------------------------------------------


def row_losses(metric: str, y: np.ndarray, proba: np.ndarray, threshold: float) -> np.ndarray:
    """Per-row loss whose mean is the metric's loss (accuracy: the 0/1 error). Lower is better."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(proba, dtype=float), EPS, 1 - EPS)
    if metric == "log_loss":
        return np.asarray(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    if metric == "brier":
        return np.asarray((p - y) ** 2)
    return ((p >= threshold).astype(float) != y).astype(float)


def required_n(
    params: ExperimentParams,
    paired: bool,
    champion: np.ndarray,
    challenger: np.ndarray,
    ratio: float | None = None,
) -> int:
    """Labelled rows (pairs; or challenger rows) needed to detect `min_effect` (statsmodels).

    statsmodels' closed-form normal sample size (`normal_sample_size_one_tail` at alpha/2, which
    is `NormalIndPower` without its root search: ~0.2 ms, not ~10 ms, per hourly look). The
    standard deviation is the losses', estimated from the rows so far: of the per-row difference
    when paired; of the difference of means at the observed allocation otherwise (Welch). For
    unpaired accuracy the effect is Cohen's h of the baseline accuracy and accuracy + min_effect.
    """
    from statsmodels.stats.power import normal_sample_size_one_tail
    from statsmodels.stats.proportion import proportion_effectsize

    effect = params.min_effect
    ratio = ratio if ratio is not None else len(champion) / len(challenger)
    if paired:
        sd = float(np.std(champion - challenger, ddof=1))
    elif params.metric == "accuracy":
        acc = 1 - float(np.mean(np.concatenate([champion, challenger])))
        base = min(max(acc, EPS), 1 - effect - EPS)
        effect = abs(float(proportion_effectsize(base + effect, base)))
        sd = math.sqrt(1 + 1 / ratio)  # Cohen's h has unit variance per arm
    else:
        sd = math.sqrt(np.var(challenger, ddof=1) + np.var(champion, ddof=1) / ratio)
    if not sd > 0:
        return PILOT
    n = normal_sample_size_one_tail(effect, params.power, params.alpha / 2, std_null=sd)
    return max(PILOT, math.ceil(n))


@dataclass(frozen=True)
class StatTest:
    """One two-sided test of challenger against champion; `improvement` > 0: challenger better."""

    name: str
    statistic: float
    p_value: float
    improvement: float  # champion loss - challenger loss (accuracy: challenger - champion)
    ci_low: float
    ci_high: float
    n_champion: int
    n_challenger: int

    def significant(self, alpha: float) -> bool:
        return not math.isnan(self.p_value) and self.p_value < alpha


def paired_test(
    metric: str, champion: np.ndarray, challenger: np.ndarray, alpha: float
) -> StatTest:
    """Same rows: McNemar (statsmodels) on correctness, or a paired t-test (scipy) on losses.

    The confidence interval is the paired t interval of the mean loss difference in both cases.
    """
    from scipy.stats import ttest_rel
    from statsmodels.stats.contingency_tables import mcnemar

    n = len(champion)
    t = ttest_rel(champion, challenger)
    ci = t.confidence_interval(1 - alpha) if n > 1 else None
    low, high = (float(ci.low), float(ci.high)) if ci is not None else (math.nan, math.nan)
    improvement = float(np.mean(champion - challenger))
    if metric == "accuracy":
        right_champ, right_chal = champion == 0, challenger == 0
        table = [
            [int(np.sum(right_champ & right_chal)), int(np.sum(right_champ & ~right_chal))],
            [int(np.sum(~right_champ & right_chal)), int(np.sum(~right_champ & ~right_chal))],
        ]
        discordant = table[0][1] + table[1][0]
        result = mcnemar(table, exact=discordant < 25, correction=True)
        p = 1.0 if discordant == 0 else float(result.pvalue)
        return StatTest("McNemar", float(result.statistic), p, improvement, low, high, n, n)
    p = float(t.pvalue) if np.isfinite(t.pvalue) else 1.0
    return StatTest("paired t-test", float(t.statistic), p, improvement, low, high, n, n)


def unpaired_test(
    metric: str, champion: np.ndarray, challenger: np.ndarray, alpha: float
) -> StatTest:
    """Different rows: two-proportion z-test (statsmodels) for accuracy, Welch t-test (scipy)."""
    from scipy.stats import ttest_ind
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    n0, n1 = len(champion), len(challenger)
    improvement = float(np.mean(champion) - np.mean(challenger))
    if metric == "accuracy":
        right = [int(n1 - challenger.sum()), int(n0 - champion.sum())]
        if right[0] + right[1] in (0, n0 + n1):  # no variance at all: nothing to tell apart
            return StatTest("two-proportion z-test", 0.0, 1.0, improvement, 0.0, 0.0, n0, n1)
        z, p = proportions_ztest(right, [n1, n0])
        low, high = confint_proportions_2indep(right[0], n1, right[1], n0, alpha=alpha)
        name = "two-proportion z-test"
        return StatTest(name, float(z), float(p), improvement, float(low), float(high), n0, n1)
    t = ttest_ind(champion, challenger, equal_var=False)
    if not np.isfinite(t.pvalue):
        return StatTest("Welch t-test", 0.0, 1.0, improvement, math.nan, math.nan, n0, n1)
    ci = t.confidence_interval(1 - alpha)
    stat, p = float(t.statistic), float(t.pvalue)
    return StatTest("Welch t-test", stat, p, improvement, float(ci.low), float(ci.high), n0, n1)


@dataclass(frozen=True)
class Look:
    """One look at the labels: wait for more, or the one test of the fixed horizon."""

    n_required: int | None  # None: fewer than PILOT rows per arm to estimate it
    n: int  # pairs (shadow) or challenger rows (A/B, canary)
    test: StatTest | None  # set only once n >= n_required


def look(
    params: ExperimentParams, paired: bool, champion: np.ndarray, challenger: np.ndarray
) -> Look:
    """The fixed-horizon rule: test once the labelled rows reach the minimum sample size.

    Rows in time order. The sample size comes from the first PILOT rows of each arm only, so
    every later look sees the same horizon: re-estimating the variance at each look would stop
    preferably where it dips, and that inflates the false-promotion rate (measured: 4 % instead
    of 2.5 % in the A/A simulation).
    """
    n = len(challenger)
    if min(len(champion), n) < PILOT:
        return Look(None, n, None)
    ratio = len(champion) / n  # the allocation: traffic, not outcomes
    needed = required_n(params, paired, champion[:PILOT], challenger[:PILOT], ratio)
    if n < needed:
        return Look(needed, n, None)
    judge = paired_test if paired else unpaired_test
    return Look(needed, n, judge(params.metric, champion, challenger, params.alpha))


# -- the verdict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentVerdict:
    """What one evaluation found and decided: continue, promote the challenger, or end."""

    action: Action
    reason: str
    traffic: dict[str, int]  # requests per variant since the start
    labelled: dict[str, int]  # labelled rows per arm used for the test
    n_required: int | None
    srm: SrmResult | None = None
    test: StatTest | None = None
    champion_eval: Evaluation | None = None
    challenger_eval: Evaluation | None = None
    gate: Decision | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonio.to_jsonable(self)
        return out


def experiment_rows(state: ExperimentState, predictions: pd.DataFrame) -> pd.DataFrame:
    """The experiment's predictions, each with its arm (champion or challenger).

    Rows from its start (until its end), from its two versions: champion rows of the champion
    version; challenger and shadow rows of the challenger version. `key` defaults to the id.
    """
    frame = predictions[[c for c in PREDICTION_COLUMNS if c in predictions]].copy()
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    if "key" not in frame:
        frame["key"] = frame["prediction_id"]
    frame["key"] = frame["key"].fillna(frame["prediction_id"]).astype(str)
    frame["model_version"] = frame["model_version"].astype(str)
    in_time = frame["time"] >= pd.Timestamp(state.started_at)
    if state.ended_at is not None:
        in_time &= frame["time"] <= pd.Timestamp(state.ended_at)
    champ = (frame["variant"] == "champion") & (frame["model_version"] == state.champion_version)
    chal = frame["variant"].isin(["challenger", "shadow"]) & (
        frame["model_version"] == state.challenger_version
    )
    frame["arm"] = np.where(chal, "challenger", "champion")
    return frame[in_time & (champ | chal)].reset_index(drop=True)


def labelled_arms(
    state: ExperimentState, rows: pd.DataFrame, labels: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(champion, challenger) rows with a label, in time order; in shadow, only the ids both
    models scored (paired row by row)."""
    from driftloop.labels import join_predictions

    joined = join_predictions(rows, labels).sort_values(["time", "prediction_id"], kind="stable")
    champ = joined[joined["arm"] == "champion"].drop_duplicates("prediction_id")
    chal = joined[joined["arm"] == "challenger"].drop_duplicates("prediction_id")
    if state.kind == "shadow":
        both = champ["prediction_id"][champ["prediction_id"].isin(chal["prediction_id"])]
        champ = champ.set_index("prediction_id").loc[both].reset_index()
        chal = chal.set_index("prediction_id").loc[both].reset_index()
    return champ.reset_index(drop=True), chal.reset_index(drop=True)


def _evaluation(arm: pd.DataFrame, threshold: float) -> Evaluation:
    y, proba = arm["label"].to_numpy(dtype=float), arm["probability"].to_numpy(dtype=float)
    return evaluate_predictions(y, proba, pd.DataFrame(index=range(len(arm))), threshold)


def decide_experiment(state: ExperimentState, test: StatTest, gate: Decision) -> tuple[Action, str]:
    """Promote only when the test finds the challenger better on the experiment's metric AND
    the training gate's policy (its primary metric, min_delta) agrees on the same rows."""
    p = state.params
    summary = (
        f"{test.name} on {p.metric}: challenger {test.improvement:+.4f} "
        f"(CI {test.ci_low:+.4f}..{test.ci_high:+.4f}), p={test.p_value:.4g}, "
        f"n={test.n_challenger}/{test.n_champion}"
    )
    if not test.significant(p.alpha):
        return "end", f"no significant difference at alpha {p.alpha}: {summary}"
    if test.improvement < 0:
        return "end", f"challenger worse: {summary}"
    if not gate.promote:
        return "end", f"challenger better but the promotion gate refuses ({gate.reason}): {summary}"
    return "promote", f"challenger better: {summary}; {gate.reason}"


def evaluate_experiment(
    state: ExperimentState,
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    policy: PromoteParams,
    now: dt.datetime,
    threshold: float = 0.5,
) -> ExperimentVerdict:
    """Judge a running experiment on the labels so far: SRM, sample size, one test, the gate.

    Args:
        predictions: prediction_id, time, probability, variant, model_version, key.
        labels: prediction_id, label (feedback).
        policy: the training gate's policy; applied on the experiment's metric and rows.
    """
    p = state.params
    rows = experiment_rows(state, predictions)
    traffic = {str(k): int(v) for k, v in rows["variant"].value_counts().items()}
    srm = srm_of(state, rows)
    if srm is not None and srm.mismatch:
        return ExperimentVerdict("end", srm_reason(srm), traffic, {}, None, srm)
    champ, chal = labelled_arms(state, rows, labels)
    labelled = {"champion": len(champ), "challenger": len(chal)}
    losses = [
        row_losses(p.metric, a["label"].to_numpy(), a["probability"].to_numpy(), threshold)
        for a in (champ, chal)
    ]
    seen = look(p, state.kind == "shadow", losses[0], losses[1])
    if seen.test is None:
        action, reason = waiting(state, seen, now)
        return ExperimentVerdict(action, reason, traffic, labelled, seen.n_required, srm)
    champ_eval, chal_eval = _evaluation(champ, threshold), _evaluation(chal, threshold)
    gate = decide_promotion(chal_eval, champ_eval, policy)  # its own metric and min_delta
    action, reason = decide_experiment(state, seen.test, gate)
    return ExperimentVerdict(
        action,
        reason,
        traffic,
        labelled,
        seen.n_required,
        srm,
        seen.test,
        champ_eval,
        chal_eval,
        gate,
    )


def srm_reason(srm: SrmResult) -> str:
    return (
        f"sample ratio mismatch: {srm.challenger} challenger of "
        f"{srm.champion + srm.challenger} keys, expected {srm.expected_challenger:.0f} "
        f"(chi-square p={srm.p_value:.2g} < {SRM_ALPHA})"
    )


def waiting(state: ExperimentState, seen: Look, now: dt.datetime) -> tuple[Action, str]:
    """Before the horizon: keep waiting, or end without a verdict after `max_days`."""
    days = (utc(now) - state.started_at).total_seconds() / 86400
    wanted = f"{seen.n_required}" if seen.n_required else f"at least {PILOT} per arm"
    status = f"{seen.n} of {wanted} labelled rows"
    if days >= state.params.max_days:
        return "end", f"max_days {state.params.max_days:g} reached with {status}: no verdict"
    return "continue", f"waiting for labels: {status}"


# -- adapters: the state file --------------------------------------------------------------------


def _lock(settings: Settings, model_name: str) -> Any:
    """Serialises this machine's writers of an experiment; across machines the ledger's
    compare-and-set on the champion decides (an experiment never promotes twice)."""
    return versioning.project_lock(settings.lock_dir, f"experiment-{model_name}")


def read_state(settings: Settings, model_name: str) -> ExperimentState | None:
    """The model's current or last experiment (None if it never had one), from the state store
    that every worker and every service replica shares."""
    from driftloop.champion import store_of

    raw = store_of(settings).experiment_state(model_name)
    return None if raw is None else ExperimentState.from_dict(raw)


class StateCache:
    """`load_state` reads the store at most once a second per model (the service asks on every
    request); a change made elsewhere is seen within that second, one made here at once."""

    TTL_SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, ExperimentState | None]] = {}

    def get(self, settings: Settings, model_name: str) -> ExperimentState | None:
        key = (str(settings.state_dir), model_name)
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(key)
            if cached is not None and now - cached[0] < self.TTL_SECONDS:
                return cached[1]
        state = read_state(settings, model_name)
        self.put(settings, model_name, state, now)
        return state

    def put(
        self,
        settings: Settings,
        model_name: str,
        state: ExperimentState | None,
        now: float | None = None,
    ) -> None:
        with self._lock:
            key = (str(settings.state_dir), model_name)
            self._seen[key] = (time.monotonic() if now is None else now, state)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


STATES = StateCache()


def load_state(settings: Settings, model_name: str) -> ExperimentState | None:
    """The running experiment of a model, or None (cheap: the service calls it every second)."""
    state = STATES.get(settings, model_name)
    return state if state is not None and state.running else None


def save_state(settings: Settings, state: ExperimentState, event: Event | None = None) -> None:
    """Write the experiment's state (and the ledger event that changed it) in one transaction:
    readers see the old or the new state."""
    from driftloop.champion import store_of

    store_of(settings).save_experiment(state.model_name, state.to_dict(), event)
    STATES.put(settings, state.model_name, state)


def _started(settings: Settings, state: ExperimentState) -> ExperimentStart:
    return ExperimentStart(
        state.model_name,
        experiment=state.id,
        experiment_kind=state.kind,
        champion=state.champion_version,
        challenger=state.challenger_version,
        reason=f"triggered by {settings.triggered_by}",
    )


def _ended(state: ExperimentState, outcome: str, reason: str) -> ExperimentEnd:
    return ExperimentEnd(
        state.model_name,
        experiment=state.id,
        outcome=outcome,
        reason=reason,
        champion=state.champion_version,
        challenger=state.challenger_version,
    )


def start_experiment(
    params: Params,
    settings: Settings,
    now: dt.datetime | None = None,
    stage: str | None = None,
) -> ExperimentState:
    """Start `serve.experiment` with the `challenger` alias against `champion`.

    `stage`: first move the alias to this version (only when no experiment is running, so
    a running test never has its challenger changed under it).
    """
    from driftloop import registry

    name = params.train.model_name
    _judged_on_feedback(params)
    client = registry.connect(settings)
    with _lock(settings, name):
        current = read_state(settings, name)
        if current is not None and current.running:
            raise ExperimentError(f"{name}: experiment {current.id} is running; stop it first")
        if stage is not None:
            registry.set_alias(client, name, registry.CHALLENGER, stage)
        champion = registry.get_alias(client, name, registry.CHAMPION)
        challenger = registry.get_alias(client, name, registry.CHALLENGER)
        if champion is None or challenger is None:
            missing = registry.CHAMPION if champion is None else registry.CHALLENGER
            raise ExperimentError(f"{name}: no '{missing}' alias; nothing to experiment with")
        when = now or dt.datetime.now(dt.UTC)
        state = new_state(name, champion.version, challenger.version, params.serve.experiment, when)
        save_state(settings, state, _started(settings, state))
    return state


def _judged_on_feedback(params: Params) -> None:
    """Fail closed at the start: a verdict needs labels sent back for served rows."""
    from driftloop.datastore import label_columns
    from driftloop.errors import ConfigError

    try:
        label_columns(params)
    except ConfigError as exc:
        raise ExperimentError(
            f"{params.train.model_name}: an experiment is judged on feedback labels, "
            f"which this model cannot take: {exc}"
        ) from None


def end_experiment(
    settings: Settings,
    model_name: str,
    outcome: str,
    reason: str,
    now: dt.datetime | None = None,
    experiment_id: str | None = None,
) -> ExperimentState | None:
    """End the running experiment (only `experiment_id`, if given); None if none was running."""
    with _lock(settings, model_name):
        current = _running(settings, model_name, experiment_id)
        return None if current is None else _end(settings, current, outcome, reason, now)


def _running(
    settings: Settings, model_name: str, experiment_id: str | None
) -> ExperimentState | None:
    current = read_state(settings, model_name)
    if current is None or not current.running:
        return None
    return current if experiment_id in (None, current.id) else None


def _end(
    settings: Settings,
    state: ExperimentState,
    outcome: str,
    reason: str,
    now: dt.datetime | None = None,
) -> ExperimentState:
    done = ended(state, outcome, reason, now or dt.datetime.now(dt.UTC))
    save_state(settings, done, _ended(done, outcome, reason))
    return done


def stop_experiment(settings: Settings, model_name: str, reason: str) -> ExperimentState | None:
    """Stop the running experiment by hand (traffic back to the champion)."""
    return end_experiment(settings, model_name, "stopped", reason)


def record_guardrail(
    settings: Settings,
    model_name: str,
    variant: str,
    ok: bool,
    latency_ms: float,
    now: dt.datetime | None = None,
) -> str | None:
    """Count one request; when the challenger breaches a guardrail, end the experiment at once.

    Returns the reason (once) when it ends the experiment, else None. Champion requests are
    not judged: the guardrail protects traffic from the challenger.
    """
    state = load_state(settings, model_name)
    if state is None or variant not in ("challenger", "shadow"):
        return None
    reason = GUARDRAILS.record(state, ok, latency_ms)
    if reason is None:
        return None
    end_experiment(settings, model_name, "guardrail", reason, now, experiment_id=state.id)
    return reason


def retrain_blocked(params: Params, settings: Settings) -> str | None:
    """promote.via experiment: why a retrain must wait (a challenger is being tested), or None."""
    if params.promote.via != "experiment":
        return None
    state = load_state(settings, params.train.model_name)
    if state is None:
        return None
    return (
        f"deferred: challenger v{state.challenger_version} is in {state.kind} experiment {state.id}"
    )


def experiment_status(settings: Settings, model_name: str) -> dict[str, Any]:
    """The current or last experiment, with this process's guardrail counts (for the CLI)."""
    state = read_state(settings, model_name)
    if state is None:
        return {"model": model_name, "status": "none", "message": f"{model_name}: no experiment"}
    counts = GUARDRAILS.counts(state.id)
    extra = {"guardrail_requests": counts.requests} if counts else {}
    message = (
        f"{state.kind} v{state.challenger_version} vs champion v{state.champion_version}: "
        f"{state.status} since {state.started_at.isoformat(timespec='seconds')}"
        + (f" ({state.outcome}: {state.reason})" if not state.running else "")
    )
    return {**state.to_dict(), **extra, "message": message}


# -- adapters: the prediction log and applying a verdict -----------------------------------------


def read_experiment_log(params: Params, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, labels): the service's prediction log, and the labels known for it (feedback
    and label batches, by `driftloop.labels`' rule) as binary labels per prediction (by data id:
    shadow rows share the champion's prediction id)."""
    from driftloop import labels as known
    from driftloop.serving.predlog import read_prediction_log

    predictions = read_prediction_log(params, settings)
    labels = known.for_predictions(predictions, known.known_labels(params, settings), params)
    columns = [c for c in PREDICTION_COLUMNS if c in predictions]
    return predictions[columns], labels[list(LABEL_COLUMNS)]


def apply_verdict(
    settings: Settings,
    state: ExperimentState,
    verdict: ExperimentVerdict,
    now: dt.datetime | None = None,
) -> ExperimentState | None:
    """Promote (the ledger's compare-and-set, version tags, the event) or end the experiment.

    Under the experiment's lock, and only while this very experiment still runs: a guardrail
    that ended it during the evaluation wins. `continue` changes nothing. Returns the ended
    experiment (None if nothing ended).
    """
    if verdict.action == "continue":
        return None
    with _lock(settings, state.model_name):
        if _running(settings, state.model_name, state.id) is None:
            return None
        outcome, reason = "ended", verdict.reason
        if verdict.action == "promote":
            refused = _promote(settings, state, verdict)
            outcome = "promoted" if refused is None else "ended"
            reason = reason if refused is None else refused
        else:
            _tag(settings, state, "rejected", reason)
        if verdict.srm is not None and verdict.srm.mismatch:
            outcome = "srm"
        return _end(settings, state, outcome, reason, now)


def _tag(settings: Settings, state: ExperimentState, decision: str, reason: str) -> None:
    from driftloop import registry
    from driftloop.lineage import Verdict

    registry.tag_version(
        registry.connect(settings),
        state.model_name,
        state.challenger_version,
        {
            Verdict.tag("decision"): decision,
            Verdict.tag("reason"): f"experiment {state.kind}: {reason}",
            Verdict.tag("champion_before"): state.champion_version,
        },
    )


def _promote(settings: Settings, state: ExperimentState, verdict: ExperimentVerdict) -> str | None:
    """Move champion to the challenger if it is still the experiment's champion (the ledger's
    compare-and-set, the decision recorded with the move or as a refusal)."""
    from driftloop import champion, jsonio, registry

    client = registry.connect(settings)
    name = state.model_name
    challenger = registry.get_version(client, name, state.challenger_version)
    event = Promotion(
        name,
        version=state.challenger_version,
        decision="promoted",
        reason=verdict.reason,
        trigger=f"experiment {state.kind}",
        triggered_by=settings.triggered_by,
        champion_before=state.champion_version,
        data_md5=challenger.lineage.data_md5,
        labels_md5=challenger.lineage.labels_md5,
        metric=state.params.metric,
        candidate_metrics=jsonio.to_jsonable(
            verdict.challenger_eval.metrics if verdict.challenger_eval else {}
        ),
        champion_metrics=jsonio.to_jsonable(
            verdict.champion_eval.metrics if verdict.champion_eval else None
        ),
        experiment=state.id,
        test=jsonio.to_jsonable(verdict.test) if verdict.test is not None else None,
    )
    refused = champion.move(settings, client, event, state.champion_version)
    if refused is not None:
        champion.record(settings, dataclasses.replace(event, decision="rejected", reason=refused))
    decision = "promoted" if refused is None else "rejected"
    _tag(settings, state, decision, verdict.reason if refused is None else refused)
    return refused


def evaluate_running(
    params: Params, settings: Settings, now: dt.datetime | None = None
) -> tuple[ExperimentState, ExperimentVerdict] | None:
    """Evaluate the model's running experiment on the prediction log (None: none is running)."""
    state = read_state(settings, params.train.model_name)
    if state is None or not state.running:
        return None
    predictions, labels = read_experiment_log(params, settings)
    when = now or dt.datetime.now(dt.UTC)
    verdict = evaluate_experiment(
        state, predictions, labels, params.promote, when, params.evaluation.threshold
    )
    return state, verdict
