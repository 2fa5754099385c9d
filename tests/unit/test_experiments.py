"""Online experiments: assignment, canary ramp, SRM, guardrails, sample size, the tests against
direct scipy/statsmodels calls, the fixed horizon's A/A false-promotion rate under repeated looks,
and three experiments run to a verdict on a real MLflow registry (temp SQLite)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize, proportions_ztest

from driftloop import experiments as x
from driftloop.config import ExperimentParams, PromoteParams, Settings
from driftloop.ledger import ExperimentEnd, open_store
from tests.helpers import Project, cli

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
POLICY = PromoteParams(primary_metric="roc_auc", min_delta=0.0)


def state(kind: str = "ab", **params: object) -> x.ExperimentState:
    return x.new_state("m", "1", "2", ExperimentParams(kind=kind, **params), T0)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fresh_process_state() -> None:
    x.GUARDRAILS.clear()
    x.STATES.clear()


# -- assignment ------------------------------------------------------------------------------------


def test_assignment_is_sticky_and_splits_by_weight() -> None:
    s = state("ab", weight=0.3)
    keys = [f"user-{i}" for i in range(20_000)]
    first = [x.assign(s, k, T0).variant for k in keys]
    again = [x.assign(s, k, T0 + dt.timedelta(days=3)).variant for k in keys]
    assert first == again  # sticky, whenever asked
    share = first.count("challenger") / len(keys)
    assert abs(share - 0.3) < 0.015
    other = x.new_state("m", "1", "2", s.params, T0 + dt.timedelta(seconds=1))
    moved = sum(a != x.assign(other, k, T0).variant for a, k in zip(first, keys, strict=True))
    assert moved > 0.2 * len(keys)  # salted per experiment: a new experiment reshuffles


def test_unit_hash_is_uniform() -> None:
    u = np.array([x.unit_hash(str(i), "salt") for i in range(5000)])
    assert stats.kstest(u, "uniform").pvalue > 0.001
    assert x.unit_hash("a", "s") == x.unit_hash("a", "s")


@pytest.mark.parametrize(
    ("minutes", "weight"), [(-5, 0.05), (0, 0.05), (29.9, 0.05), (30, 0.25), (61, 0.5), (1e6, 0.5)]
)
def test_canary_ramp_steps_by_bake_time(minutes: float, weight: float) -> None:
    assert x.canary_weight([0.05, 0.25, 0.5], 30, minutes) == weight
    s = state("canary", canary_steps=[0.05, 0.25, 0.5], bake_minutes=30)
    assert x.challenger_weight(s, T0 + dt.timedelta(minutes=minutes)) == weight


def test_canary_keys_only_move_to_the_challenger_as_it_ramps() -> None:
    s = state("canary", canary_steps=[0.1, 0.5, 1.0], bake_minutes=10)
    keys = [str(i) for i in range(5000)]
    shares = []
    before: set[str] = set()
    for step in range(3):
        now = T0 + dt.timedelta(minutes=10 * step + 1)
        chal = {k for k in keys if x.assign(s, k, now).variant == "challenger"}
        assert before <= chal
        before = chal
        shares.append(len(chal) / len(keys))
    assert shares[0] == pytest.approx(0.1, abs=0.02)
    assert shares[1] == pytest.approx(0.5, abs=0.03)
    assert shares[2] == 1.0


def test_shadow_always_answers_with_the_champion_and_samples_the_share() -> None:
    s = state("shadow", shadow_share=0.25)
    got = [x.assign(s, str(i), T0) for i in range(8000)]
    assert {a.variant for a in got} == {"champion"}
    assert sum(a.shadow for a in got) / len(got) == pytest.approx(0.25, abs=0.02)


# -- SRM -------------------------------------------------------------------------------------------


def test_srm_agrees_with_scipy_and_flags_a_mismatch() -> None:
    fine = x.srm_test(5040, 4960, 5000.0)
    assert fine.p_value == pytest.approx(stats.chisquare([5040, 4960], [5000, 5000]).pvalue)
    assert not fine.mismatch
    bad = x.srm_test(5300, 4700, 5000.0)
    assert bad.p_value < x.SRM_ALPHA and bad.mismatch
    assert math.isnan(x.srm_test(3, 1, 2.0).p_value)  # too few to judge: not a mismatch


def frame(
    s: x.ExperimentState,
    y: np.ndarray,
    p_champ: np.ndarray,
    p_chal: np.ndarray,
    *,
    minutes: float = 600,
    drop_challenger: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prediction log and feedback as the service writes them, routed by `assign` over time."""
    rng = np.random.default_rng(7)
    n = len(y)
    times = [s.started_at + dt.timedelta(minutes=minutes * i / n) for i in range(n)]
    rows, labels = [], []
    for i in range(n):
        pid, key = f"p{i}", f"k{i}"
        a = x.assign(s, key, times[i])
        if a.variant == "challenger" and rng.random() < drop_challenger:
            continue  # e.g. a logging bug that loses challenger rows
        if a.variant == "challenger":
            rows.append((pid, times[i], p_chal[i], "challenger", s.challenger_version, key))
        else:
            rows.append((pid, times[i], p_champ[i], "champion", s.champion_version, key))
        if a.shadow:
            rows.append((pid, times[i], p_chal[i], "shadow", s.challenger_version, key))
        labels.append((pid, int(y[i])))
    return (
        pd.DataFrame(rows, columns=list(x.PREDICTION_COLUMNS)),
        pd.DataFrame(labels, columns=list(x.LABEL_COLUMNS)),
    )


def world(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels with a true probability; a good model knows it, a poor one is half noise."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < truth).astype(int)
    poor = np.clip(0.5 * truth + 0.5 * rng.uniform(0, 1, n), 0.01, 0.99)
    return y, truth, poor


def test_a_lost_share_of_challenger_rows_ends_on_srm() -> None:
    s = state("ab", weight=0.5)
    y, good, _ = world(4000)
    preds, labels = frame(s, y, good, good, drop_challenger=0.15)
    verdict = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(hours=10))
    assert verdict.action == "end"
    assert verdict.reason.startswith("sample ratio mismatch")
    assert verdict.srm is not None and verdict.srm.p_value < x.SRM_ALPHA


def test_srm_follows_the_canary_ramp() -> None:
    """Canary traffic grows over time; against the ramp's own weights it is no mismatch."""
    s = state("canary", canary_steps=[0.1, 0.5], bake_minutes=60)
    y, good, _ = world(4000)
    preds, _ = frame(s, y, good, good, minutes=240)
    srm = x.srm_of(s, x.experiment_rows(s, preds))
    assert srm is not None and not srm.mismatch
    flat = x.srm_test(srm.champion, srm.challenger, 0.1 * (srm.champion + srm.challenger))
    assert flat.mismatch  # the negative control: judged against the first step's weight


# -- guardrails ------------------------------------------------------------------------------------


def settings_at(tmp_path: Path) -> Settings:
    return Settings(project=tmp_path, home=tmp_path / ".driftloop")


@pytest.mark.parametrize(
    ("errors", "latency", "requests", "expected"),
    [
        (0, 10.0, 100, None),
        (5, 10.0, 100, "error rate 5.00%"),
        (0, 400.0, 100, "p99 latency 400 ms"),
        (10, 400.0, 49, None),  # fewer than min_guardrail_requests: not judged yet
    ],
)
def test_guardrail_breach(errors: int, latency: float, requests: int, expected: str | None) -> None:
    counts = x.GuardrailCounts(requests, errors)
    counts.latencies.extend([latency] * requests)
    reason = x.guardrail_breach(counts, ExperimentParams())
    assert (reason is None) if expected is None else (expected in str(reason))


def test_a_guardrail_trip_ends_the_experiment_at_once(tmp_path: Path) -> None:

    settings = settings_at(tmp_path)
    s = state("canary")
    x.save_state(settings, s)
    assert x.load_state(settings, "m") == s
    for _ in range(200):  # the champion's own slowness is not the challenger's fault
        assert x.record_guardrail(settings, "m", "champion", False, 900.0) is None
    reasons = [x.record_guardrail(settings, "m", "challenger", True, 20.0) for _ in range(60)]
    assert reasons == [None] * 60
    for _ in range(3):
        reasons.append(x.record_guardrail(settings, "m", "challenger", False, 20.0))
    tripped = [r for r in reasons if r]
    assert len(tripped) == 1 and "error rate" in tripped[0]
    assert x.load_state(settings, "m") is None  # traffic goes back to the champion
    assert x.assign(s, "k", T0).variant in {"champion", "challenger"}  # pure: state passed in
    last = x.read_state(settings, "m")
    assert last is not None and last.outcome == "guardrail" and last.reason == tripped[0]
    ends = [r.event for r in open_store(settings.state_dir).events("m", ("experiment_end",))]
    assert isinstance(ends[-1], ExperimentEnd)
    assert ends[-1].outcome == "guardrail" and ends[-1].reason == tripped[0]


# -- sample size and the tests ---------------------------------------------------------------------


def test_sample_size_follows_the_effect_and_matches_statsmodels() -> None:
    """The closed form against statsmodels' iterative power solver (NormalIndPower)."""
    rng = np.random.default_rng(1)
    champ, chal = rng.normal(0.6, 0.3, 500), rng.normal(0.6, 0.3, 500)
    sizes = {
        e: x.required_n(ExperimentParams(min_effect=e), True, champ, chal) for e in (0.01, 0.02)
    }
    assert sizes[0.01] > 3.5 * sizes[0.02]  # half the effect, about four times the rows
    sd = np.std(champ - chal, ddof=1)
    solver = NormalIndPower().solve_power
    direct = solver(effect_size=0.02 / sd, alpha=0.05, power=0.8, ratio=0)  # one sample
    assert sizes[0.02] == pytest.approx(direct, abs=1)
    unpaired = x.required_n(ExperimentParams(min_effect=0.02), False, champ, chal[:250])
    # Welch: the difference of means has variance (var_challenger + var_champion / ratio) / n
    welch = math.sqrt(np.var(chal[:250], ddof=1) + np.var(champ, ddof=1) / 2)
    direct = solver(effect_size=0.02 / welch, alpha=0.05, power=0.8, ratio=0)
    assert unpaired == pytest.approx(direct, abs=1)
    err0, err1 = (rng.random(600) < 0.3).astype(float), (rng.random(600) < 0.3).astype(float)
    acc = x.required_n(ExperimentParams(metric="accuracy", min_effect=0.05), False, err0, err1)
    base = 1 - np.concatenate([err0, err1]).mean()
    h = proportion_effectsize(base + 0.05, base)
    assert acc == pytest.approx(solver(effect_size=h, alpha=0.05, power=0.8, ratio=1), abs=1)
    more_power = x.required_n(ExperimentParams(min_effect=0.02, power=0.95), True, champ, chal)
    assert more_power > sizes[0.02]


def test_paired_tests_match_statsmodels_and_scipy() -> None:
    rng = np.random.default_rng(2)
    champ_err = (rng.random(400) < 0.30).astype(float)
    chal_err = np.where(rng.random(400) < 0.2, 1 - champ_err, champ_err)
    got = x.paired_test("accuracy", champ_err, chal_err, 0.05)
    a, b = champ_err == 0, chal_err == 0
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert got.name == "McNemar"
    assert got.p_value == pytest.approx(mcnemar(table, exact=False, correction=True).pvalue)
    assert got.improvement == pytest.approx((table[1][0] - table[0][1]) / 400)
    loss0, loss1 = rng.gamma(2, 0.3, 300), rng.gamma(2, 0.3, 300) * 0.9
    got = x.paired_test("log_loss", loss0, loss1, 0.05)
    direct = stats.ttest_rel(loss0, loss1)
    assert got.p_value == pytest.approx(direct.pvalue)
    assert (got.ci_low, got.ci_high) == pytest.approx(tuple(direct.confidence_interval(0.95)))


def test_unpaired_tests_match_statsmodels_and_scipy() -> None:
    rng = np.random.default_rng(3)
    err0, err1 = (rng.random(500) < 0.3).astype(float), (rng.random(300) < 0.2).astype(float)
    got = x.unpaired_test("accuracy", err0, err1, 0.05)
    z, p = proportions_ztest([300 - err1.sum(), 500 - err0.sum()], [300, 500])
    assert (got.statistic, got.p_value) == pytest.approx((z, p))
    loss0, loss1 = rng.gamma(2, 0.3, 500), rng.gamma(2, 0.25, 300)
    got = x.unpaired_test("brier", loss0, loss1, 0.05)
    assert got.p_value == pytest.approx(stats.ttest_ind(loss0, loss1, equal_var=False).pvalue)
    assert got.improvement == pytest.approx(loss0.mean() - loss1.mean())


# -- repeated looks: the fixed horizon holds alpha -----------------------------------------------


def aa_losses(
    rng: np.random.Generator, metric: str, paired: bool, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row losses of two equally good models (the same model with its own noise)."""
    truth = rng.uniform(0.1, 0.9, n)
    y = (rng.random(n) < truth).astype(float)
    y2 = y if paired else (rng.random(n) < truth).astype(float)  # unpaired: other rows
    champ = np.clip(truth + rng.normal(0, 0.1, n), 0.02, 0.98)
    chal = np.clip(truth + rng.normal(0, 0.1, n), 0.02, 0.98)
    return x.row_losses(metric, y, champ, 0.5), x.row_losses(metric, y2, chal, 0.5)


def aa_experiment(
    rng: np.random.Generator, params: ExperimentParams, paired: bool, step: int = 50
) -> tuple[bool, bool, int]:
    """One A/A experiment looked at every `step` labelled rows, judged two ways on the same data:
    the fixed horizon (`look`), and peeking (a test at every look, stopping at the first
    significant one) within the same rows. Returns (fixed promoted, peeking promoted, horizon).
    """
    champ, chal = aa_losses(rng, params.metric, paired, 4000)
    judge = x.paired_test if paired else x.unpaired_test
    peeked: bool | None = None
    for n in range(step, len(champ) + 1, step):
        if peeked is None:
            test = judge(params.metric, champ[:n], chal[:n], params.alpha)
            if test.significant(params.alpha):
                peeked = test.improvement > 0
        seen = x.look(params, paired, champ[:n], chal[:n])
        if seen.test is not None:
            fixed = seen.test.significant(params.alpha) and seen.test.improvement > 0
            return fixed, bool(peeked), n
    raise AssertionError("the horizon was never reached: raise n or min_effect")


@pytest.mark.parametrize(
    ("metric", "paired", "effect"), [("log_loss", True, 0.05), ("accuracy", False, 0.1)]
)
def test_fixed_horizon_keeps_the_false_promotion_rate_under_repeated_looks(
    metric: str, paired: bool, effect: float
) -> None:
    """200 A/A experiments, looked at every 50 labelled rows (shadow: paired log loss; A/B:
    accuracy). The fixed horizon promotes at most alpha (a two-sided test: alpha/2 expected);
    peeking at the same looks, the negative control, promotes far more often on the same data."""
    params = ExperimentParams(metric=metric, min_effect=effect, alpha=0.05)  # type: ignore[arg-type]
    runs = [aa_experiment(np.random.default_rng(i), params, paired) for i in range(200)]
    fixed, peek = np.mean([r[0] for r in runs]), np.mean([r[1] for r in runs])
    horizons = [r[2] for r in runs]
    assert min(horizons) >= 200  # several looks before the one test
    assert fixed <= params.alpha / 2 + 0.03  # binomial sd at 2.5 % over 200 runs: 1.1 %
    assert peek > 2 * fixed and peek > params.alpha / 2 + 0.03


# -- the verdict on data frames --------------------------------------------------------------------


def test_waits_for_the_sample_size_then_ends_on_max_days() -> None:
    s = state("ab", min_effect=0.01, max_days=2)
    y, good, _ = world(400)
    preds, labels = frame(s, y, good, good)
    early = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(hours=10))
    assert early.action == "continue" and early.test is None
    assert early.n_required is not None and early.n_required > early.labelled["challenger"]
    late = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(days=2))
    assert late.action == "end" and late.reason.startswith("max_days 2 reached")


def test_a_clear_winner_in_shadow_is_promoted_and_a_loser_ends_worse() -> None:
    s = state("shadow", metric="log_loss", min_effect=0.05)
    y, good, poor = world(1500)
    preds, labels = frame(s, y, poor, good)
    win = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(hours=10))
    assert win.action == "promote", win.reason
    assert win.test is not None and win.test.name == "paired t-test" and win.test.improvement > 0
    assert win.labelled["champion"] == win.labelled["challenger"] == 1500  # paired on ids
    preds, labels = frame(s, y, good, poor)
    lose = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(hours=10))
    assert lose.action == "end" and lose.reason.startswith("challenger worse")


def test_significant_but_the_gate_refuses() -> None:
    s = state("ab", metric="log_loss", min_effect=0.05)
    y, good, poor = world(3000)
    preds, labels = frame(s, y, poor, good)
    strict = PromoteParams(primary_metric="roc_auc", min_delta=0.5)  # the gate's own metric
    verdict = x.evaluate_experiment(s, preds, labels, strict, T0 + dt.timedelta(hours=10))
    assert verdict.action == "end" and "the promotion gate refuses" in verdict.reason


# -- three experiments, each run to a verdict, on a real MLflow registry --------------------------


def register_two_models(project: Project) -> None:
    """A tiny scikit-learn model registered twice: v1 (champion) and v2 (challenger).

    The experiments are judged on the prediction log, so both versions may hold the same model.
    """
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    from driftloop import registry
    from driftloop.lineage import COMPLETE_TAG

    client = registry.connect(project.settings)
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60)})
    mlflow.set_experiment("experiments-test")
    model = LogisticRegression().fit(X, (X["a"] > 0).astype(int))
    for version in ("1", "2"):  # one training run each: a run's earlier versions are orphans
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(
                model, name="model", serialization_format="pickle", pip_requirements=[]
            )  # no requirements inferred: a subprocess per log
            mlflow.set_tag(COMPLETE_TAG, "true")
        ref = registry.register(client, project.model_name, run.info.run_id, info.model_uri, {})
        assert ref.version == version
    registry.set_alias(client, project.model_name, registry.CHAMPION, "1")


def set_experiment(project: Project, **values: object) -> None:
    """Write serve.experiment into the project's params.yaml, for a model whose labels come
    back as feedback (an explicit label column and a row id; Seattle's is a forecast)."""
    import yaml

    from driftloop.config import load_params

    file = project.root / "params.yaml"
    raw = yaml.safe_load(file.read_text())
    raw["data"]["id_column"] = "row_id"
    raw["data"]["columns"]["row_id"] = {"dtype": "str"}
    raw["data"]["columns"]["rain_tomorrow"] = {"dtype": "float", "required": False}
    raw["target"] = {"name": "rain", "column": "rain_tomorrow", "above": 0.0}
    raw.setdefault("serve", {})["experiment"] = values
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    project.params = load_params(file)


def run_to_verdict(project: Project, kind: str, good: str, **params: object) -> x.ExperimentState:
    """Start an experiment by the CLI, serve it a day of traffic, evaluate and apply the verdict."""
    set_experiment(project, kind=kind, min_effect=0.05, **params)
    started = cli("experiment", "start", "--json").json()
    assert started["status"] == "running" and started["kind"] == kind
    s = x.load_state(project.settings, project.model_name)
    assert s is not None
    y, truth, poor = world(2000, seed=5)
    champ, chal = (poor, truth) if good == "challenger" else (truth, poor)
    preds, labels = frame(s, y, champ, chal)
    verdict = x.evaluate_experiment(
        s, preds, labels, project.params.promote, s.started_at + dt.timedelta(days=1)
    )
    done = x.apply_verdict(project.settings, s, verdict)
    assert done is not None, verdict.reason
    return done


def test_three_experiments_each_run_to_a_verdict(project: Project) -> None:
    register_two_models(project)
    name = project.model_name
    refused = cli("experiment", "start")  # Seattle's label is a forecast: no feedback to judge
    assert refused.exit_code == 8 and "feedback labels" in refused.stderr

    # 1. canary: the challenger is slow, so the guardrail ends it at once
    set_experiment(project, kind="canary", max_p99_ms=100)
    assert cli("experiment", "start").exit_code == 0
    assert cli("experiment", "start").exit_code == 8  # one at a time
    reasons = [
        x.record_guardrail(project.settings, name, "challenger", True, 300.0) for _ in range(60)
    ]
    assert sum(r is not None for r in reasons) == 1
    status = cli("experiment", "status", "--json").json()
    assert status["status"] == "ended" and status["outcome"] == "guardrail"
    assert "p99 latency" in status["reason"]
    assert project.champion() == "1"

    # 2. A/B: the challenger is worse; the statistics end it and tag the version
    ab = run_to_verdict(project, "ab", good="champion", metric="brier")
    assert ab.outcome == "ended" and ab.reason.startswith("challenger worse"), ab.reason
    assert project.champion() == "1"
    tags = project.mlflow_client().get_model_version(name, "2").tags
    assert tags["driftloop.decision"] == "rejected"

    # 3. shadow: the challenger is clearly better; promoted by the training gate's CAS
    shadow = run_to_verdict(project, "shadow", good="challenger", metric="log_loss")
    assert shadow.outcome == "promoted", shadow.reason
    assert project.champion() == "2"
    tags = project.mlflow_client().get_model_version(name, "2").tags
    assert tags["driftloop.decision"] == "promoted"
    assert tags["driftloop.champion_before"] == "1"
    promotion = [e for e in project.audit() if e["kind"] == "promotion"][-1]
    assert (promotion["version"], promotion["decision"]) == ("2", "promoted")
    assert promotion["champion_before"] == "1" and promotion["test"]["name"] == "paired t-test"
    ends = [e["outcome"] for e in project.audit() if e["kind"] == "experiment_end"]
    assert ends == ["guardrail", "ended", "promoted"]
    assert cli("experiment", "stop").exit_code == 8  # nothing runs any more
    assert cli("experiment", "start").exit_code == 8  # challenger is the champion now


def test_a_promotion_is_refused_when_the_champion_moved(project: Project) -> None:
    from driftloop import registry

    register_two_models(project)
    set_experiment(project, kind="shadow", min_effect=0.05)
    s = x.start_experiment(project.params, project.settings, T0)
    client = registry.connect(project.settings)
    registry.set_alias(client, project.model_name, registry.CHAMPION, "2")  # a rollout elsewhere
    y, truth, poor = world(2000)
    preds, labels = frame(s, y, poor, truth)
    verdict = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(days=1))
    assert verdict.action == "promote"
    done = x.apply_verdict(project.settings, s, verdict)
    assert done is not None and done.outcome == "ended" and "champion moved" in done.reason


# -- the service's log as the evaluation reads it, and the flow's artifact ---------------------


def test_reads_the_service_log_and_feedback_as_binary_labels(tmp_path: Path) -> None:
    """Flights: feedback is the raw arrival delay by flight id; late = delay >= 15 minutes."""
    from driftloop.config import load_params
    from driftloop.serving.feedback import FeedbackLog
    from driftloop.serving.predlog import META, log_dir
    from tests.helpers import REPO_ROOT

    params = load_params(REPO_ROOT / "examples/flights/params.yaml")
    settings = settings_at(tmp_path)
    rows = [
        ("p1", "champion", "1", 0.2, "f1"),
        ("p1", "shadow", "2", 0.7, "f1"),  # the shadow row of the same prediction
        ("p2", "champion", "1", 0.4, "f2"),
        ("p3", "champion", "1", 0.9, "f3"),  # no label yet
    ]
    log = pd.DataFrame(
        [
            {
                "prediction_id": pid,
                "time": pd.Timestamp("2026-03-01 12:00"),
                "model_version": v,
                "variant": var,
                "probability": p,
                "label": int(p > 0.5),
                "key": fid,
                "flight_id": fid,
            }
            for pid, var, v, p, fid in rows
        ]
    )
    assert set(META) <= set(log.columns)
    log_dir(params, settings).mkdir(parents=True)
    log.to_parquet(log_dir(params, settings) / "2026-03-01.parquet")
    feedback = FeedbackLog(settings.path(params.serve.feedback_dir))
    feedback.record("f1", 42.0, None)  # late
    feedback.record("f2", 3.0, "p2")  # on time
    predictions, labels = x.read_experiment_log(params, settings)
    assert list(predictions.columns) == list(x.PREDICTION_COLUMNS)
    assert dict(zip(labels["prediction_id"], labels["label"], strict=True)) == {"p1": 1, "p2": 0}
    s = x.new_state("flights", "1", "2", ExperimentParams(kind="shadow"), T0)
    champ, chal = x.labelled_arms(s, x.experiment_rows(s, predictions), labels)
    assert list(champ["prediction_id"]) == list(chal["prediction_id"]) == ["p1"]  # paired


def test_the_artifact_shows_traffic_metrics_test_and_decision() -> None:
    from tasks.experiments import markdown

    s = state("ab", metric="log_loss", min_effect=0.05)
    y, good, poor = world(3000)
    preds, labels = frame(s, y, poor, good)
    verdict = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(hours=10))
    text = markdown(s, verdict)
    assert (
        f"| challenger | {verdict.traffic['challenger']} | {verdict.labelled['challenger']} |"
        in text
    )
    assert "Welch t-test" in text and "SRM:" in text and "**promote**" in text
    assert "Promotion gate: promote" in text


def test_a_guardrail_during_the_evaluation_wins_over_its_promotion(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    s = state("shadow", metric="log_loss", min_effect=0.05)
    x.save_state(settings, s)
    y, good, poor = world(1500)
    preds, labels = frame(s, y, poor, good)
    verdict = x.evaluate_experiment(s, preds, labels, POLICY, T0 + dt.timedelta(hours=10))
    assert verdict.action == "promote"
    x.end_experiment(settings, "m", "guardrail", "guardrail: p99", experiment_id=s.id)
    assert x.apply_verdict(settings, s, verdict) is None  # nothing promoted, no registry touched
    last = x.read_state(settings, "m")
    assert last is not None and last.outcome == "guardrail"


def test_a_gate_winner_is_staged_as_challenger_once_and_never_under_a_running_test(
    project: Project,
) -> None:
    """promote.via experiment: the candidate becomes @challenger with an experiment started at
    its decision time; a second candidate while that test runs is refused, alias untouched."""
    from driftloop import registry, stages
    from driftloop.config import load_params
    from driftloop.promotion import Decision

    register_two_models(project)
    set_experiment(project, kind="shadow")
    params = load_params(project.root / "params.yaml")
    client = registry.connect(project.settings)
    v2 = registry.get_version(client, project.model_name, "2")
    decided_at = pd.Timestamp("2013-03-07 23:59:59.999999")
    data = stages.TrainingData(pd.DataFrame({"date": []}), "md5", "md5", "date", None, decided_at)
    gate = Decision(True, "roc_auc 0.70 beats champion 0.66")

    decision, experiment = stages.stage_challenger(params, project.settings, v2, data, gate)
    assert experiment is not None and not decision.promote
    assert "challenger in shadow experiment" in decision.reason
    state = x.read_state(project.settings, project.model_name)
    assert state is not None and state.running and state.challenger_version == "2"
    assert state.started_at == dt.datetime(2013, 3, 7, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert registry.get_alias(client, project.model_name, registry.CHALLENGER).version == "2"
    assert x.retrain_blocked(params, project.settings) is None  # via gate: never blocked

    staged = params.model_copy(
        update={"promote": params.promote.model_copy(update={"via": "experiment"})}
    )
    assert "deferred: challenger v2" in str(x.retrain_blocked(staged, project.settings))
    v1 = registry.get_version(client, project.model_name, "1")
    again, none = stages.stage_challenger(params, project.settings, v1, data, gate)
    assert none is None and not again.promote and "is running" in again.reason
    assert registry.get_alias(client, project.model_name, registry.CHALLENGER).version == "2"
