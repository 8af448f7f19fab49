"""classifier=state: an exit head on the last token's hidden state, no probe until the exit.

What it learns (the layer's answer is already the final one), what the engine does with it
(the full model when it cannot stop), that a saved head decides as the fitted one, and that a
config mistake is refused before any run.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import compose_cfg
from hydra.errors import ConfigCompositionException
from test_engine import _ids, _padded, fitted, traced

from adainfer.compose.inputs import load_inputs
from adainfer.compose.settings import check_settings
from adainfer.decide.costs import ModelDims, classifier_flops
from adainfer.decide.policies import StatePolicy, load_policy
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import RiskLimit, calibrate
from adainfer.engine import EarlyExitEngine
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline


def _settling(seed: int, n: int = 60, L: int = 5, h: int = 8) -> LayerRecords:
    """Records whose answer settles at a random layer s per instance (the last layer's token
    from s on, another before), and whose hidden state says so in its first coordinate."""
    rng = np.random.default_rng(seed)
    settle = rng.integers(1, L + 1, n)
    final = rng.integers(100, 200, n)
    after = np.arange(1, L + 1)[None, :] >= settle[:, None]
    argmax = np.where(after, final[:, None], rng.integers(0, 100, (n, L)))
    hidden = rng.normal(0, 0.3, (n, L, h))
    hidden[:, :, 0] += np.where(after, 1.0, -1.0)
    values = {k: rng.random((n, L)).astype(np.float32) for k in ("gap", "top_prob")}
    return LayerRecords(values, argmax, final, np.full(n, 9), hidden.astype(np.float16))


@pytest.mark.parametrize("head", ["per_layer", "shared"])
def test_it_learns_where_the_answer_is_already_the_final_one(head):
    train, test = _settling(0), _settling(1)
    policy = StatePolicy(head=head).fit(train)
    settled = (test.argmax == test.argmax[:, -1:]).argmax(axis=1) + 1
    assert np.mean(policy.exit_layers(test) == settled) > 0.95
    assert policy.weight.shape == (test.num_layers - 1, 8)
    assert classifier_flops(policy) == 2 * 8 + 5  # w·h, the bias, the sigmoid


def test_what_it_reads_and_what_a_decision_costs(tiny_llama):
    policy = StatePolicy(features=("gap", "cos_attn"))
    assert policy.reads == ("hidden_state",) and policy.reads_hidden
    assert not policy.reads_probe  # it decides without the vocabulary
    assert policy.online and policy.calibratable
    fitted_ = fitted("state", tiny_llama)
    dims = ModelDims.from_config(tiny_llama.config)
    assert classifier_flops(fitted_, dims) == 2 * tiny_llama.hidden_size + 5
    assert fitted_.scores_state and not StatePolicy(threshold=1.0).fit(_settling(0)).scores_state


def test_risk_control_sets_its_threshold_on_p_final():
    """Learn-then-Test picks the threshold from the head's train scores; on records where the
    state says when the answer settles, a 10% risk is certified with early exits."""
    train, calibration, test = _settling(0, n=300), _settling(1, n=300), _settling(2, n=300)
    policy = StatePolicy().fit(train)
    chosen = calibrate(policy, train, calibration, RiskLimit(0.1))
    assert chosen.certified and policy.threshold == chosen.threshold < 1
    assert policy.exit_layers(test).mean() < test.num_layers - 1


def test_records_without_hidden_states_are_refused_with_the_fix():
    records = _settling(0)
    records.hidden = None
    with pytest.raises(AdaInferError, match="reads the last token's hidden state.*have none"):
        StatePolicy().fit(records)


def test_a_head_with_zero_weights_never_exits_and_gives_the_full_models_answer(tiny_llama):
    """P(final) = sigmoid(0) = 0.5, never above the threshold 0.5: the engine scores every
    layer, probes none before the last, and answers with the model's own logits."""
    _, _, _, test_records = traced(tiny_llama)
    policy = fitted("state", tiny_llama)
    policy.threshold = 0.5
    policy.weight[:] = 0.0
    policy.bias[:] = 0.0
    L = tiny_llama.num_layers
    assert (policy.exit_layers(test_records) == L).all()
    result = EarlyExitEngine(tiny_llama, policy).run(_ids(tiny_llama), 8, keep_logits=True)
    ids, mask = _padded(tiny_llama)
    with torch.no_grad():
        logits = tiny_llama.model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(len(ids)), mask.sum(1) - 1]
    assert result.exit_layer.tolist() == [L] * len(ids)
    torch.testing.assert_close(torch.from_numpy(result.logits), expected, rtol=1e-4, atol=1e-5)
    (work,) = result.work
    assert work.classified == [len(ids)] * (L - 1) + [0]  # it did score every layer
    assert work.probed == [0] * (L - 1) + [len(ids)]  # and probed only the last


@pytest.mark.parametrize("kind", ["state", "state shared"])
def test_a_saved_head_decides_as_the_fitted_one(tiny_llama, tmp_path, kind):
    _, test, _, test_records = traced(tiny_llama)
    policy = fitted(kind, tiny_llama)
    policy.first_layer = 2
    policy.save(tmp_path / "policy")
    again = load_policy(tmp_path / "policy")
    assert isinstance(again, StatePolicy) and again.params() == policy.params()
    assert again.first_layer == 2 and again.threshold == policy.threshold
    assert np.array_equal(again.scores(test_records), policy.scores(test_records))
    exits = policy.exit_layers(test_records)
    assert (exits < tiny_llama.num_layers).any()
    assert np.array_equal(again.exit_layers(test_records), exits)
    online = EarlyExitEngine(tiny_llama, again).run(test.input_ids, batch_size=5)
    assert online.exit_layer.tolist() == exits.tolist()


MISTAKES = [
    ("classifier=state +classifier.haed=shared", "did you mean classifier.head?"),
    ("classifier=state classifier.head=both", "classifier.head='both' is not one of"),
    ("classifier=state classifier.class_weight=heavy", "is not null or balanced"),
    ("classifier=state classifier.C=0", "classifier.C=0 is not a number > 0"),
]


@pytest.mark.parametrize(("overrides", "message"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_config_mistake_is_found_before_any_run(overrides, message):
    problems = check_settings(compose_cfg(overrides.split()))
    assert len(problems) == 1 and message in problems[0], problems


def test_a_misspelt_key_fails_while_hydra_composes():
    with pytest.raises(ConfigCompositionException, match="Could not override 'classifier.haed'"):
        compose_cfg(["classifier=state", "classifier.haed=shared"])
    assert check_settings(compose_cfg(["classifier=state"])) == []


def test_it_cannot_learn_from_another_models_hidden_states():
    cfg = compose_cfg(["classifier=state", "+model@fit.model=tiny_opt"])
    with pytest.raises(AdaInferError, match="cannot learn from another model's"):
        load_inputs(cfg)


def test_a_job_stores_the_hidden_states_once_and_decides_on_them(tmp_path, tracking_uri):
    common = [
        "model=tiny_llama",
        "classifier=state",
        "shots=2",
        "task.n_train=20",
        "task.n_test=8",
        f"traces.dir={tmp_path / 'traces'}",
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.experiment=state",
    ]
    metrics = pipeline.run(compose_cfg([*common, "engine=true"]))
    assert metrics["engine_trace_agreement"] == 1.0
    stored = sorted((tmp_path / "traces").glob("*.parquet"))
    with_states = [path for path in stored if "hidden" in pq.read_schema(path).names]
    assert len(with_states) == 2  # train and test, each with its hidden states
    assert len(stored) == 4  # and the same pass without them, for policies on probe features
    shared = pipeline.run(compose_cfg([*common, "stage=decide", "classifier.head=shared"]))
    assert shared["acc_full"] == metrics["acc_full"]
    assert sorted((tmp_path / "traces").glob("*.parquet")) == stored  # read, not recomputed
    # A policy that reads probe features decides on the plain traces that pass stored.
    plain = [o for o in common if o != "classifier=state"]
    svm = pipeline.run(compose_cfg([*plain, "stage=decide", "classifier=svm"]))
    assert svm["acc_full"] == metrics["acc_full"]
    assert sorted((tmp_path / "traces").glob("*.parquet")) == stored
