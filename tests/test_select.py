"""classifier=auto (adainfer.decide.select): the cheapest certified candidate, chosen on
calibration data only, valid after the choice, and never dearer than the full model."""

from __future__ import annotations

import numpy as np
import pytest
from test_risk import population
from transformers import LlamaConfig

from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import AutoPolicy, ExitPolicy, GapThreshold, StatePolicy
from adainfer.decide.policies.auto import FULL_MODEL
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import RiskLimit
from adainfer.decide.select import family_resplit_check, select
from adainfer.errors import AdaInferError

CONFIG = LlamaConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=12,
    num_attention_heads=4,
    vocab_size=256,
)


class Feature(ExitPolicy):
    """Stops where one named feature exceeds the threshold (a rule, like the gap's)."""

    name = "test_feature"
    causal = True

    def __init__(self, key: str = "gap", **kwargs):
        super().__init__(**kwargs)
        self.key = key

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.key,)

    def decision_flops(self, hidden=None, layers=None) -> float:
        return 1.0

    def scores(self, records: LayerRecords) -> np.ndarray:
        return records.values[self.key]


def noisy(n: int, keys: int, seed: int) -> LayerRecords:
    """:func:`test_risk.population` with ``keys`` stop signals, each the settling plus its own
    noise: candidates with the same risk curve whose calibration losses differ, so picking the
    luckiest among them is what a selection without correction does."""
    records = population(n, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    settled = (records.argmax == records.gold[:, None]) | (records.argmax == records.argmax[:, -1:])
    for k in range(keys):
        signal = 0.3 * settled + 0.6 * rng.random(settled.shape)
        records.values[f"s{k}"] = np.clip(signal, 0, 1).astype(np.float32)
    return records


def family(keys: int) -> AutoPolicy:
    return AutoPolicy({f"s{k}": Feature(f"s{k}") for k in range(keys)})


def true_drop(truth: LayerRecords, picked) -> float:
    if picked.full_model:
        return 0.0
    policy = picked.policy
    exits = policy.first_exits(policy.scores(truth) > policy.threshold)
    return apply_exits(truth, exits).accuracy_drop(truth.gold)


def violation_rate(keys: int, corrected: bool, draws: int = 80) -> tuple[float, float]:
    """How often the chosen policy's drop over a large independent sample (its true drop, up
    to noise) exceeds ε, over ``draws`` calibration sets; and how often it chose an exit."""
    limit = RiskLimit(epsilon=0.05, delta=0.2, grid=40)
    pool, truth, train = noisy(20_000, keys, 1), noisy(50_000, keys, 2), noisy(500, keys, 3)
    members = family(keys)
    members.fit(train)
    rng = np.random.default_rng(0)
    violations = chose = 0
    for _ in range(draws):
        cal = pool.take(rng.choice(pool.num_instances, size=300, replace=False))
        if corrected:
            picked = select(members, train, cal, limit, CONFIG)
        else:  # each candidate at δ, the cheapest kept: what the correction is for
            picked = min(
                (
                    select(AutoPolicy({k: c}), train, cal, limit, CONFIG)
                    for k, c in members.candidates.items()
                ),
                key=lambda s: s.cost,
            )
        chose += not picked.full_model
        violations += true_drop(truth, picked) > limit.epsilon
    return violations / draws, chose / draws


def test_the_whole_procedure_selection_included_violates_epsilon_at_most_delta():
    rate, chose = violation_rate(keys=6, corrected=True)
    assert chose > 0.8  # it does exit: the test is not passed by running the full model
    assert rate <= 0.2


def test_choosing_the_cheapest_without_the_correction_breaks_the_guarantee():
    """The simulation can fail: the same family, each candidate certified at δ and the
    cheapest kept, violates ε more often than δ."""
    rate, _ = violation_rate(keys=6, corrected=False)
    assert rate > 0.2


def test_the_full_model_is_chosen_when_nothing_certified_pays():
    # 100 calibration instances cannot certify a 1-point limit (230 are needed at δ = 0.1)
    members = family(3)
    train = noisy(300, 3, 3)
    members.fit(train)
    picked = select(members, train, noisy(100, 3, 4), RiskLimit(0.01), CONFIG)
    assert picked.chosen == FULL_MODEL and picked.full_model
    assert picked.policy.never_stops() and not any(c.certified for c in picked.candidates)
    assert picked.metrics()["auto_full_model"] == 1.0


def test_a_certified_candidate_dearer_than_the_full_model_is_not_chosen():
    """Certified, but reading at every layer costs more than it saves: the full model."""
    train, cal = noisy(500, 1, 3), noisy(2000, 1, 4)
    dear = Feature("s0")
    dear.decision_flops = lambda hidden=None, layers=None: 1e12  # a decision dearer than a model
    members = AutoPolicy({"dear": dear, "cheap": Feature("s0")})
    members.fit(train)
    picked = select(members, train, cal, RiskLimit(0.05, delta=0.2, grid=40), CONFIG)
    by_name = {c.name: c for c in picked.candidates}
    assert by_name["dear"].certified and by_name["dear"].cal_cost > 1.0
    assert picked.chosen == "cheap" and picked.cost < 1.0
    members = AutoPolicy({"dear": dear})
    members.fit(train)
    picked = select(members, train, cal, RiskLimit(0.05, delta=0.2, grid=40), CONFIG)
    assert picked.full_model and picked.cost == 1.0


def test_the_choice_is_the_cheapest_on_calibration_and_each_is_tested_at_delta_over_k():
    members = family(4)
    train, cal = noisy(500, 4, 3), noisy(2000, 4, 4)
    members.fit(train)
    picked = select(members, train, cal, RiskLimit(0.05, delta=0.2, grid=40), CONFIG)
    assert picked.family_delta == pytest.approx(0.05)
    certified = [c for c in picked.candidates if c.certified]
    assert certified and picked.cost == min(c.cal_cost for c in certified)
    assert picked.calibration.p_value <= 0.05
    # the family's own candidates are left unchosen: the chosen policy is a copy
    assert all(c.threshold == Feature.default_threshold for c in members.candidates.values())


def test_resplits_run_the_whole_procedure():
    members = family(3)
    train, cal, test = noisy(500, 3, 3), noisy(600, 3, 4), noisy(600, 3, 5)
    members.fit(train)
    limit = RiskLimit(0.05, delta=0.2, grid=30)
    rates = family_resplit_check(members, train, cal, test, limit, 5, CONFIG)
    assert rates["risk_resplits"] == 5
    assert 0 <= rates["risk_resplit_full_model_rate"] <= 1
    assert rates["risk_resplit_cal_cost_mean"] < 1.0  # it chose exits on these splits


def test_a_family_refuses_what_it_cannot_certify_and_decides_nothing_itself():
    from adainfer.decide.policies import CRFPolicy, OracleGold

    with pytest.raises(AdaInferError, match="looks at the answer"):
        AutoPolicy({"o": OracleGold()})
    with pytest.raises(AdaInferError, match="cannot be certified"):
        AutoPolicy({"crf": CRFPolicy()})
    with pytest.raises(AdaInferError, match="keeps for the full model"):
        AutoPolicy({FULL_MODEL: GapThreshold()})
    members = AutoPolicy({"gap": GapThreshold(), "state": StatePolicy()})
    assert set(members.reads) == {"gap", "hidden_state"} and members.reads_hidden
    with pytest.raises(AdaInferError, match="none has been chosen"):
        members.scores(population(10))


def test_the_verdict_names_the_choice_or_says_the_full_model_ran():
    from adainfer.run.verdict import verdict

    members = family(3)
    train = noisy(500, 3, 3)
    members.fit(train)
    limit = RiskLimit(0.05, delta=0.2, grid=40)
    base = {"honest_flops_ratio": 1.0, "flops_ratio": 1.0, "acc_drop": 0.0}
    nothing = select(members, train, noisy(50, 3, 4), limit, CONFIG)
    line = verdict(base | nothing.metrics(), limit, nothing.chosen)
    assert line.startswith("classifier=auto ran the full model: none of its 3 candidates")
    assert "exits cannot pay here" in line and "saved 0.0%" in line
    picked = select(members, train, noisy(2000, 3, 4), limit, CONFIG)
    line = verdict(base | picked.metrics(), limit, picked.chosen)
    assert line.startswith(f"classifier=auto chose {picked.chosen} (of 3 candidates")
    assert f"{picked.cost:.3f}" in line and "guaranteed: a drop <= 5 points" in line


def constant_exits(n: int = 200, layers: int = 6) -> LayerRecords:
    """Every layer but the last answers token 1 whatever the prompt; the full model answers
    the gold token on a third of the prompts, and 1 (the most common gold) on the rest."""
    rng = np.random.default_rng(0)
    gold = np.where(rng.random(n) < 0.6, 1, rng.integers(2, 9, size=n))
    argmax = np.ones((n, layers), dtype=np.int64)
    argmax[:, -1] = np.where(rng.random(n) < 0.33, gold, 1)
    gap = np.tile(np.linspace(0.1, 0.9, layers), (n, 1)).astype(np.float32)
    return LayerRecords({"gap": gap, "top_prob": gap}, argmax, gold, np.full(n, 10))


def test_the_verdict_says_when_the_exits_answer_a_constant_or_the_test_drop_exceeds_epsilon():
    from adainfer.decide.metrics import answer_metrics
    from adainfer.run.verdict import verdict

    records = constant_exits()
    exits = np.full(records.num_instances, 2)  # every prompt exits at layer 2
    found = answer_metrics(records, apply_exits(records, exits))
    assert found["exit_answers_distinct"] == 1 and found["early_exit_share"] == 1.0
    assert found["acc_constant"] == pytest.approx(np.mean(records.gold == 1))
    limit = RiskLimit(0.05, 0.1, bound="wsr", loss="drop")
    certified = {"honest_flops_ratio": 0.1, "flops_ratio": 0.1, "risk_n": 400.0}
    certified |= {"risk_certified": 1.0, "acc_full": 0.5}
    line = verdict(certified | found | {"acc_drop": 0.0}, limit)
    assert "every early exit (100% of the test prompts) gives the same token" in line
    # a test drop above epsilon: what the guarantee bounds, and the split's noise
    line = verdict(certified | found | {"acc_drop": 0.07, "acc_drop_se": 0.02}, limit)
    assert "the test drop (7.0 points) exceeds 5" in line
    assert "standard error 2.0 points" in line and "200 instances" in line
    # a sound exit says neither
    plain = verdict(certified | {"acc_drop": 0.01, "exit_answers_distinct": 2.0}, limit)
    assert "note:" not in plain
