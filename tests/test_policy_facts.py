"""A policy says what it is: what it reads, what a decision costs, whether the engine can run it,
whether risk control can set its threshold, and where it starts reading layers. Nothing outside
``adainfer.decide.policies`` decides these by class or by name."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from conftest import compose_cfg
from test_units import _records
from transformers import LlamaConfig

from adainfer.compose.inputs import load_inputs
from adainfer.decide.costs import classifier_flops, trace_flops_ratio
from adainfer.decide.policies import (
    CRFPolicy,
    ExitPolicy,
    GapThreshold,
    LogRegPolicy,
    NeverExit,
    OracleConsistent,
    OracleGold,
    SVMPolicy,
    load_policy,
)
from adainfer.decide.policies.base import earliest_settled
from adainfer.decide.risk import RiskLimit, calibrate, check_calibratable
from adainfer.engine import FixedExit
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline

CONFIG = LlamaConfig(
    num_hidden_layers=6,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=500,
)


class Unpriced(ExitPolicy):
    """A per-layer rule that does not say what a decision costs."""

    name = "unpriced_test_rule"
    causal = True

    def scores(self, records):
        return records.top_prob


class NoThreshold(GapThreshold):
    """A rule that says risk control cannot set its threshold."""

    name = "no_threshold_test_rule"

    @property
    def calibratable(self) -> bool:
        return False

    @property
    def not_calibratable_because(self) -> str:
        return "this test rule keeps its own threshold"


def test_a_policy_that_does_not_declare_its_price_is_refused_by_honest_flops():
    records = _records()
    policy = Unpriced().fit(records)
    exits = policy.exit_layers(records)
    with pytest.raises(AdaInferError, match="'unpriced_test_rule'.*does not declare its price"):
        trace_flops_ratio(exits, records.seq_len, CONFIG, policy)
    with pytest.raises(AdaInferError, match="override decision_flops"):
        classifier_flops(policy)


@pytest.mark.parametrize(
    ("policy", "price"),
    [
        (NeverExit(), 0.0),
        (FixedExit(3), 0.0),
        (GapThreshold(), 1.0),
        (LogRegPolicy(), 4 * 2 + 5),
        (CRFPolicy(), 100.0),
        (OracleGold(), 100.0),
        (OracleConsistent(), 100.0),
        (GapThreshold(threshold=float("inf")), 0.0),  # never stops: scores nothing
    ],
)
def test_each_policy_declares_its_price(policy, price):
    assert classifier_flops(policy.fit(_records())) == price


def test_an_svm_prices_its_own_support_vectors():
    policy = SVMPolicy(kernel="linear").fit(_records())
    n_sv = len(policy.model[-1].support_vectors_)
    assert policy.decision_flops() == 2 * 2 + n_sv * (2 * 2 + 2) + 1
    assert classifier_flops(policy) == policy.decision_flops()


def test_what_a_policy_reads():
    assert SVMPolicy(features=("gap", "cos_attn")).reads == ("gap", "cos_attn")
    assert GapThreshold(features=("top_prob",)).reads == ("gap",)  # the rule reads gap only
    assert FixedExit(2).reads == () and not FixedExit(2).reads_probe
    assert not GapThreshold(threshold=float("inf")).reads_probe  # never stops: no probe


def test_risk_control_asks_the_policy_whether_it_can_set_a_threshold():
    train, cal = _records(0), _records(1)
    for policy in (NoThreshold(), CRFPolicy()):
        with pytest.raises(AdaInferError, match="risk control sets a threshold"):
            check_calibratable(policy.fit(train))
    with pytest.raises(AdaInferError, match="this test rule keeps its own threshold"):
        calibrate(NoThreshold().fit(train), train, cal, RiskLimit(0.1))
    assert "Viterbi" in CRFPolicy().not_calibratable_because
    assert CRFPolicy(threshold=0.5).calibratable and GapThreshold().calibratable


def test_first_layer_auto_resolves_when_the_policy_is_fitted(tmp_path):
    train, test = _records(0), _records(1)
    policy = SVMPolicy(first_layer="auto")
    with pytest.raises(AdaInferError, match="first_layer='auto'.*not fitted"):
        policy.exit_layers(test)
    policy.fit(train)
    assert policy.first_layer == earliest_settled(train) > 1
    assert policy.first_layer_setting == "auto"
    every = SVMPolicy().fit(train)
    every.first_layer = earliest_settled(train)  # the old way: set after fit
    assert np.array_equal(policy.exit_layers(test), every.exit_layers(test))
    policy.save(tmp_path / "p")
    assert load_policy(tmp_path / "p").first_layer == policy.first_layer


@pytest.mark.parametrize("bad", [0, -1, "first", 1.5, True])
def test_a_bad_first_layer_is_refused(bad):
    with pytest.raises(AdaInferError, match="is not a layer number >= 1 or 'auto'"):
        GapThreshold(first_layer=bad)


def test_probe_first_layer_is_an_alias_of_the_classifiers():
    common = ["task.n_train=20", "task.n_test=4"]
    alias = load_inputs(compose_cfg([*common, "probe.first_layer=3"])).policy
    own = load_inputs(compose_cfg([*common, "classifier.first_layer=3"])).policy
    assert alias.first_layer == own.first_layer == 3
    same = load_inputs(compose_cfg([*common, "probe.first_layer=3", "classifier.first_layer=3"]))
    assert same.policy.first_layer == 3
    with pytest.raises(AdaInferError, match="probe.first_layer=2 and classifier.first_layer=3"):
        load_inputs(compose_cfg([*common, "probe.first_layer=2", "classifier.first_layer=3"]))


def test_classifier_first_layer_auto_gives_the_metrics_of_probe_first_layer_auto(
    tiny_llama, tracking_uri
):
    common = ["model=tiny_llama", "classifier=logreg", "shots=3", "task.n_train=20"]
    common += ["task.n_test=12", f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=first"]
    own = pipeline.run(compose_cfg([*common, "classifier.first_layer=auto"]))
    alias = pipeline.run(compose_cfg([*common, "probe.first_layer=auto"]))
    assert own == alias
    every = pipeline.run(compose_cfg(common))
    assert every["first_layer"] == 1 and own["first_layer"] >= 1
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["first"], order_by=["start_time ASC"])
    assert runs["params.probe_first_layer"].tolist() == ["auto", "auto", "1"]  # the setting used
