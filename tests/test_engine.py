"""The early-exit engine: the model's own numbers, the trace's decisions, real savings.

Every invariant is checked against an independent path: the library's own forward
(``model(...)``), the layer traces (``runner.extract_records`` + ``evaluate.apply_exits``), or
the same prompts run one at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import QUIET, tiny

from adainfer.choices import RECORDED
from adainfer.decide.costs import (
    ModelDims,
    classifier_flops,
    read_prices,
    run_costs,
    trace_flops_ratio,
)
from adainfer.decide.flops import flops_ratio
from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import (
    CRFPolicy,
    GapThreshold,
    LogRegPolicy,
    NeverExit,
    OracleConsistent,
    OracleGold,
    StatePolicy,
    SVMPolicy,
)
from adainfer.decide.records import LayerRecords
from adainfer.engine import ENGINE_MODEL_TYPES, EarlyExitEngine, FixedExit
from adainfer.engine.timing import measure_prices, price_policy, timed_ideal_speedup
from adainfer.errors import AdaInferError
from adainfer.extract.extractor import prepare
from adainfer.extract.passes import extract_records
from adainfer.llm import supported_model_types
from adainfer.llm.lenses import TunedLens
from adainfer.llm.readout import probe_layers
from adainfer.tasks import RuleTask

PROMPTS = ["Q: Monday\nA: Tuesday\n\nQ: March\nA:", "Q: b\nA:", "Q: seven\nA: eight\n\nQ: one\nA:"]
_TRACED: dict[str, tuple] = {}


def _ids(loaded, texts=PROMPTS) -> list[list[int]]:
    return [loaded.tokenizer(t).input_ids for t in texts]


def _padded(loaded, texts=PROMPTS):
    enc = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    assert loaded.tokenizer.padding_side == "right"
    return enc.input_ids, enc.attention_mask


def traced(loaded):
    """Train / test prompts and their layer records (computed once per model)."""
    if loaded.name not in _TRACED:
        task = RuleTask(n_train=24, n_test=16)
        train, test = prepare(task, task.load(), loaded, shots=3, seed=0)
        _TRACED[loaded.name] = (
            train,
            test,
            extract_records(loaded, train, 8, QUIET, hidden_states=True),
            extract_records(loaded, test, 8, QUIET, hidden_states=True),
        )
    return _TRACED[loaded.name]


def fitted(kind: str, loaded):
    """A policy of ``kind`` whose exits fall mid-depth on this random tiny model.

    Random weights never predict the gold token, so learned policies are fitted on
    "agrees with the last layer" labels, and every threshold is set at a quantile of the
    train scores below the last layer: a choice that makes exits happen, not one that makes
    engine and trace agree.
    """
    _, _, train_records, _ = traced(loaded)
    r = train_records
    consistent = LayerRecords(r.values, r.argmax, r.argmax[:, -1].copy(), r.seq_len, r.hidden)
    policy = {
        "svm": SVMPolicy,
        "logreg": LogRegPolicy,
        "gap": GapThreshold,
        "state": StatePolicy,  # learns "agrees with the last layer" whatever the gold token
        "state shared": lambda: StatePolicy(head="shared"),
    }[kind]()
    policy.fit(consistent)
    policy.threshold = float(np.quantile(policy.scores(consistent)[:, :-1], 0.6))
    return policy


def configured(kind: str, loaded, probe=None):
    """A :func:`fitted` policy of ``kind``, with what the kind's words set: ``from layer 2``
    its first_layer, ``every 2`` its schedule, ``at stop layers`` the list of layers where
    it stops some train prompt (asked at every layer), ``auto`` its schedule chosen on the
    train records at its threshold (prices through ``probe``). ``state every 2 from layer 2``."""
    base, _, first = kind.partition(" from layer ")
    base, _, every = base.partition(" every ")
    base, auto = base.removesuffix(" auto"), base.endswith(" auto")
    base, stops = base.removesuffix(" at stop layers"), base.endswith(" at stop layers")
    policy = fitted(base, loaded)
    policy.first_layer = int(first or 1)
    if every:
        policy.schedule = f"every_{every}"
    if stops:
        _, _, train_records, _ = traced(loaded)
        exits = policy.exit_layers(train_records)
        policy.schedule = sorted(set(exits[exits < loaded.num_layers].tolist()))
    if auto:
        policy.schedule = "auto"
        _, _, train_records, _ = traced(loaded)
        policy.choose_schedule(train_records, read_prices(loaded.config, probe))
    return policy


def asked_or_last(policy, num_layers: int) -> np.ndarray:
    """Boolean [L]: the layers the policy is asked at, and the last (every row's answer)."""
    return policy.schedule_mask(num_layers) | (np.arange(1, num_layers + 1) == num_layers)


def reads_all() -> GapThreshold:
    """Probes every layer and never stops (a gap is at most 1): every feature gets recorded.
    ``NeverExit`` reads nothing, so the engine probes only its last layer."""
    return GapThreshold(threshold=2.0)


# -- the model's own numbers -------------------------------------------------------------------
def test_never_exit_gives_the_models_own_logits(tiny_model):
    ids, mask = _padded(tiny_model)
    assert (mask == 0).any(), "the batch must be padded for this test to mean anything"
    result = EarlyExitEngine(tiny_model, NeverExit()).run(_ids(tiny_model), 8, keep_logits=True)
    with torch.no_grad():
        logits = tiny_model.model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(len(PROMPTS)), mask.sum(1) - 1]
    assert result.exit_layer.tolist() == [tiny_model.num_layers] * len(PROMPTS)
    torch.testing.assert_close(torch.from_numpy(result.logits), expected, rtol=1e-4, atol=1e-5)
    assert result.prediction.tolist() == expected.argmax(-1).tolist()


def test_every_layer_equals_the_trace_probe(tiny_model):
    """All features at all layers equal ``features.probe_layers`` on the same batch."""
    ids, mask = _padded(tiny_model)
    trace = probe_layers(tiny_model.parts, ids, mask)
    result = EarlyExitEngine(tiny_model, reads_all(), record=RECORDED).run(_ids(tiny_model), 8)
    assert np.array_equal(result.argmax, trace["argmax"].numpy())
    for name in result.values:
        np.testing.assert_allclose(result.values[name], trace[name], rtol=1e-4, atol=1e-5)


LLAMA_LIKE = {
    # Windows shorter than the prompts, so a wrong mask would change the numbers.
    "gemma3_text": dict(
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
    ),
    "mistral": dict(num_key_value_heads=2, sliding_window=4),
    "qwen2": dict(
        num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=2
    ),
    "qwen3": dict(num_key_value_heads=2),
}


@pytest.mark.parametrize("model_type", sorted(LLAMA_LIKE))
def test_masks_and_rotary_of_each_family(model_type):
    loaded = tiny(model_type, **LLAMA_LIKE[model_type]).load()
    config = loaded.config
    assert loaded.num_layers == 4 and config.model_type == model_type
    if model_type != "qwen3":  # the window really is set (a misspelt key would leave 4096)
        assert config.sliding_window == 4
        assert "sliding_attention" in (
            getattr(config, "layer_types", None) or ["sliding_attention"]
        )
    ids, mask = _padded(loaded)
    assert mask.sum(1).min() > 4, "prompts must be longer than the sliding window"
    result = EarlyExitEngine(loaded, NeverExit()).run(_ids(loaded), 8, keep_logits=True)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(len(PROMPTS)), mask.sum(1) - 1]
    torch.testing.assert_close(torch.from_numpy(result.logits), expected, rtol=1e-4, atol=1e-5)


# Small sizes for the model types the tests above do not build (a window shorter than the
# prompts where the type has one).
OTHER_FAMILIES = {
    "gemma": dict(num_key_value_heads=1, head_dim=16),
    "gemma2": dict(num_key_value_heads=1, head_dim=16, sliding_window=4),
    "phi3": dict(num_key_value_heads=2, sliding_window=4),
    "llama": dict(num_key_value_heads=2),
    "opt": {},
}


@pytest.mark.parametrize("model_type", supported_model_types())
def test_every_model_type_adainfer_probes_runs_in_the_engine(model_type):
    """One list of model types (models.arch.FAMILIES): the engine runs each, and the full-depth
    run gives the library's own logits."""
    assert model_type in ENGINE_MODEL_TYPES
    loaded = tiny(model_type, **(OTHER_FAMILIES | LLAMA_LIKE)[model_type]).load()
    assert loaded.num_layers == 4 and loaded.config.model_type == model_type
    ids, mask = _padded(loaded)
    result = EarlyExitEngine(loaded, NeverExit()).run(_ids(loaded), 8, keep_logits=True)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(len(PROMPTS)), mask.sum(1) - 1]
    torch.testing.assert_close(torch.from_numpy(result.logits), expected, rtol=1e-4, atol=1e-5)


# -- the trace's decisions ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["svm", "logreg", "gap", "gap every 2", "svm every 2", "svm auto"])
def test_online_decisions_equal_trace_evaluation(tiny_model, kind):
    """The engine's exits are the trace evaluation's, under every layer or a schedule."""
    _, test, _, test_records = traced(tiny_model)
    policy = configured(kind, tiny_model)
    expected = apply_exits(test_records, policy.exit_layers(test_records))
    result = EarlyExitEngine(tiny_model, policy).run(test.input_ids, batch_size=5)
    L = tiny_model.num_layers
    if kind.endswith("auto"):  # it chose a schedule that skips a layer yet stops somewhere
        assert 0 < len(policy.scheduled_layers(L)) < L - 1, policy.scheduled_layers(L)
    assert (expected.exit_layer < L).any() and len(np.unique(expected.exit_layer)) > 1
    assert result.exit_layer.tolist() == expected.exit_layer.tolist()
    assert result.prediction.tolist() == expected.prediction.tolist()
    # Features exist exactly at the visited layers the policy is asked at (and the last), and
    # equal the trace's there.
    visited = np.arange(L)[None, :] < result.exit_layer[:, None]
    visited &= asked_or_last(policy, L)[None, :]
    assert np.array_equal(~np.isnan(result.values["gap"]), visited)
    np.testing.assert_allclose(
        result.values["gap"][visited], test_records.gap[visited], rtol=1e-4, atol=1e-6
    )
    assert sum(sum(w.rows) for w in result.work) == result.exit_layer.sum()


@pytest.mark.parametrize(
    "kind",
    ["state", "state shared", "state from layer 2", "state at stop layers", "state auto"],
)
def test_a_state_head_decides_online_as_on_traces_and_probes_only_its_exits(tiny_model, kind):
    """A head on hidden states scores every running row at each layer it is asked at (from
    ``first_layer`` on) without a probe; only the rows that stop are probed, for their
    answer; the exits and predictions are the trace evaluation's."""
    _, test, _, test_records = traced(tiny_model)
    policy = configured(kind, tiny_model)
    expected = apply_exits(test_records, policy.exit_layers(test_records))
    L = tiny_model.num_layers
    if kind in ("state at stop layers", "state auto"):  # a schedule that skips a layer
        assert 0 < len(policy.scheduled_layers(L)) < L - 1, policy.scheduled_layers(L)
    assert (expected.exit_layer < L).any()
    # Tiny OPT answers the same at each layer for every train prompt: each of its per-layer
    # heads learns a constant, so all its prompts exit together.
    constant = kind != "state shared" and tiny_model.config.model_type == "opt"
    assert constant or len(np.unique(expected.exit_layer)) > 1
    result = EarlyExitEngine(tiny_model, policy).run(test.input_ids, batch_size=5)
    assert result.exit_layer.tolist() == expected.exit_layer.tolist()
    assert result.prediction.tolist() == expected.prediction.tolist()
    probed = ~np.isnan(result.values["gap"])
    assert np.array_equal(probed, np.arange(L)[None, :] == result.exit_layer[:, None] - 1)
    for work in result.work:
        assert sum(work.probed) == len(work.seq_len)  # one probe per prompt: its answer
        asked = policy.schedule_mask(L)
        assert work.classified == [rows if asked[i] else 0 for i, rows in enumerate(work.rows)]


@pytest.mark.parametrize("kind", ["svm", "gap"])
def test_first_layer_skips_probes_and_keeps_the_trace_decisions(tiny_model, kind):
    """A policy that reads layers from ``first_layer`` on: no probe before it, and the same
    exits as trace evaluation under the same rule; the cosine features at ``first_layer``
    still compare with the layer before."""
    _, test, _, test_records = traced(tiny_model)
    policy = fitted(kind, tiny_model)
    policy.first_layer = 2
    expected = apply_exits(test_records, policy.exit_layers(test_records))
    assert expected.exit_layer.min() >= 2 and (expected.exit_layer < tiny_model.num_layers).any()
    engine = EarlyExitEngine(tiny_model, policy, record=("cos_hidden",))
    result = engine.run(test.input_ids, batch_size=5)
    assert result.exit_layer.tolist() == expected.exit_layer.tolist()
    assert all(w.probed[0] == 0 and w.probed[1] == len(w.seq_len) for w in result.work)
    np.testing.assert_allclose(
        result.values["cos_hidden"][:, 1], test_records.values["cos_hidden"][:, 1], atol=1e-5
    )
    assert np.isnan(result.values["gap"][:, 0]).all()


@pytest.mark.parametrize("kind", ["svm", "gap"])
def test_a_schedule_skips_probes_between_its_reads_and_keeps_the_trace_decisions(tiny_model, kind):
    """Asked at layers 1 and 3 of 4: no probe at layer 2, the trace's exits under the same
    schedule, and the cosines at layer 3 still compare with layer 2."""
    _, test, _, test_records = traced(tiny_model)
    policy = configured(f"{kind} every 2", tiny_model)
    assert policy.scheduled_layers(tiny_model.num_layers) == (1, 3)
    expected = apply_exits(test_records, policy.exit_layers(test_records))
    assert set(expected.exit_layer) <= {1, 3, 4} and (expected.exit_layer > 2).any()
    engine = EarlyExitEngine(tiny_model, policy, record=("cos_hidden", "cos_mlp"))
    result = engine.run(test.input_ids, batch_size=5)
    assert result.exit_layer.tolist() == expected.exit_layer.tolist()
    assert all(w.probed[1:2] == w.classified[1:2] == [0] for w in result.work if len(w.rows) > 1)
    assert np.isnan(result.values["gap"][:, 1]).all()
    ran = result.exit_layer >= 3
    for name in ("cos_hidden", "cos_mlp"):
        np.testing.assert_allclose(
            result.values[name][ran, 2], test_records.values[name][ran, 2], atol=1e-5
        )


def test_cosines_only_when_read_or_recorded(tiny_model):
    """The cosine features cost hooks at every layer: computed when the policy reads them or
    ``record`` names them, and then equal to the trace's; never needed for the decisions."""
    _, test, _, test_records = traced(tiny_model)
    lean = EarlyExitEngine(tiny_model, reads_all()).run(test.input_ids, 5)
    assert all(np.isnan(lean.values[name]).all() for name in RECORDED[2:])
    reader = GapThreshold(features=("gap", "cos_mlp"), threshold=2.0)
    read = EarlyExitEngine(tiny_model, reader).run(test.input_ids, 5)
    assert np.isnan(read.values["cos_attn"]).all()
    np.testing.assert_allclose(read.values["cos_mlp"], test_records.values["cos_mlp"], atol=1e-5)
    np.testing.assert_allclose(read.values["gap"], lean.values["gap"], atol=1e-6)
    with pytest.raises(AdaInferError, match="cos_mpl"):
        EarlyExitEngine(tiny_model, reads_all(), record=("cos_mpl",))


def test_fixed_exit_probes_only_where_it_stops(tiny_llama):
    _, test, _, test_records = traced(tiny_llama)
    policy = FixedExit(2)
    result = EarlyExitEngine(tiny_llama, policy).run(test.input_ids, batch_size=5)
    expected = apply_exits(test_records, policy.exit_layers(test_records))
    assert result.exit_layer.tolist() == [2] * len(test.input_ids)
    assert result.prediction.tolist() == expected.prediction.tolist()
    assert sum(sum(w.probed) for w in result.work) == len(test.input_ids)
    assert all(w.rows == [len(w.seq_len)] * 2 for w in result.work)


@pytest.mark.parametrize("kind", ["never", "svm at +inf"])
def test_policies_that_cannot_stop_probe_only_the_last_layer(tiny_llama, kind):
    """``never``, and a learned policy whose threshold risk control set to +inf, cost the full
    model: no probe before the last layer, and the model's own answer."""
    _, test, _, test_records = traced(tiny_llama)
    policy = NeverExit() if kind == "never" else fitted("svm", tiny_llama)
    policy.threshold = np.inf if kind != "never" else policy.threshold
    result = EarlyExitEngine(tiny_llama, policy).run(test.input_ids, batch_size=5)
    L = tiny_llama.num_layers
    assert all(
        w.probed[:-1] == [0] * (L - 1) and w.probed[-1] == len(w.seq_len) for w in result.work
    )
    assert result.prediction.tolist() == test_records.argmax[:, -1].tolist()
    assert run_costs(result, tiny_llama.config, policy).flops_ratio == pytest.approx(1.0)


# -- batching ----------------------------------------------------------------------------------
def test_compaction_gives_the_batch_size_one_results(tiny_model):
    """Equal-length prompts (no padding), so only compaction differs from one at a time."""
    _, test, _, _ = traced(tiny_model)
    width = min(len(ids) for ids in test.input_ids)
    prompts = [ids[:width] for ids in test.input_ids]
    policy = GapThreshold()
    alone = EarlyExitEngine(tiny_model, reads_all()).run(prompts, batch_size=len(prompts))
    policy.threshold = float(np.quantile(alone.values["gap"][:, :-1], 0.6))
    engine = EarlyExitEngine(tiny_model, policy, record=RECORDED)
    batched = engine.run(prompts, batch_size=len(prompts))
    single = engine.run(prompts, batch_size=1)
    rows = batched.work[0].rows
    assert rows[0] == len(prompts) and rows[-1] < rows[0], "rows must leave the batch"
    assert batched.exit_layer.tolist() == single.exit_layer.tolist()
    assert batched.prediction.tolist() == single.prediction.tolist()
    for name in batched.values:
        np.testing.assert_allclose(batched.values[name], single.values[name], atol=1e-5)


@pytest.mark.parametrize("kind", ["reads_all", "gap"])
def test_padding_never_changes_a_result(tiny_model, kind):
    """A batch of mixed lengths (with compaction, for ``gap``) vs each prompt alone."""
    _, test, _, _ = traced(tiny_model)
    prompts = [ids[: len(ids) - 3 * (i % 4)] for i, ids in enumerate(test.input_ids)]
    assert len({len(ids) for ids in prompts}) > 1, "prompts of several lengths are needed"
    policy = reads_all()
    single = EarlyExitEngine(tiny_model, policy, record=RECORDED).run(prompts, batch_size=1)
    if kind == "gap":
        policy = GapThreshold(threshold=float(np.quantile(single.values["gap"][:, :-1], 0.6)))
        single = EarlyExitEngine(tiny_model, policy, record=RECORDED).run(prompts, batch_size=1)
    mixed = EarlyExitEngine(tiny_model, policy, record=RECORDED).run(prompts, len(prompts))
    assert mixed.work[0].width == max(len(ids) for ids in prompts)
    if kind == "gap":
        assert mixed.work[0].rows[-1] < len(prompts), "rows must leave the batch"
    assert mixed.exit_layer.tolist() == single.exit_layer.tolist()
    assert mixed.prediction.tolist() == single.prediction.tolist()
    for name in mixed.values:
        np.testing.assert_allclose(mixed.values[name], single.values[name], atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------
def _records(num_layers: int, n: int = 12, seed: int = 0) -> LayerRecords:
    rng = np.random.default_rng(seed)
    values = {k: rng.random((n, num_layers)).astype(np.float32) for k in ("gap", "top_prob")}
    argmax = rng.integers(0, 3, (n, num_layers))
    return LayerRecords(values, argmax, argmax[:, -1].copy(), np.full(n, 10))


def test_policy_fitted_on_another_depth_is_refused(tiny_llama):
    L = tiny_llama.num_layers
    policy = SVMPolicy().fit(_records(L + 2))
    with pytest.raises(AdaInferError, match=f"fitted on records of {L + 2} layers.*has {L}"):
        EarlyExitEngine(tiny_llama, policy)


def test_unfitted_learned_policy_is_refused(tiny_llama):
    with pytest.raises(AdaInferError, match="'svm' is not fitted"):
        EarlyExitEngine(tiny_llama, SVMPolicy())


@pytest.mark.parametrize("policy", [CRFPolicy(), OracleGold(), OracleConsistent()])
def test_policies_that_look_ahead_are_refused(tiny_llama, policy):
    policy.fit(_records(tiny_llama.num_layers))
    with pytest.raises(AdaInferError, match=f"(?s){policy.name}.*cannot run.*svm, logreg, gap"):
        EarlyExitEngine(tiny_llama, policy)


def test_bad_prompts_are_refused(tiny_llama):
    engine = EarlyExitEngine(tiny_llama, NeverExit())
    with pytest.raises(AdaInferError, match="batch is empty"):
        engine.run([])
    with pytest.raises(AdaInferError, match="prompt 1 has no tokens"):
        engine.run([[1, 2], []])
    too_long = [[1] * (tiny_llama.max_length + 1)]
    with pytest.raises(AdaInferError, match=f"context of {tiny_llama.max_length}"):
        engine.run(too_long)
    with pytest.raises(AdaInferError, match="outside the vocabulary"):
        engine.run([[1, tiny_llama.vocab_size]])


# -- costs -------------------------------------------------------------------------------------
def test_layer_flops_count_the_layers_weights(tiny_model):
    """Per position, a layer's matmuls are 2 FLOPs per weight (attention scores aside)."""
    dims = ModelDims.from_config(tiny_model.config)
    layer = tiny_model.parts.layers[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    scores = 2 * 2 * dims.heads * dims.head_dim  # QK^T and A·V at s = 1
    assert dims.layer(1) - scores == 2 * weights
    assert dims.head() == 2 * tiny_model.parts.lm_head.weight.numel()


def test_costs_of_a_run(tiny_llama):
    _, test, _, _ = traced(tiny_llama)
    L = tiny_llama.num_layers
    full = EarlyExitEngine(tiny_llama, FixedExit(L)).run(test.input_ids, 5)
    full_cost = run_costs(full, tiny_llama.config, FixedExit(L))
    assert full_cost.ideal_speedup_layers == 1.0 and full_cost.eq2_ratio == pytest.approx(1.0)
    half = EarlyExitEngine(tiny_llama, FixedExit(L // 2)).run(test.input_ids, 5)
    cost = run_costs(half, tiny_llama.config, FixedExit(L // 2))
    assert cost.ideal_speedup_layers == pytest.approx(2.0)
    assert cost.full_flops == full_cost.full_flops
    assert cost.layer_flops == pytest.approx(full_cost.layer_flops / 2)
    expected = flops_ratio(
        half.exit_layer, L, tiny_llama.hidden_size, half.seq_len, tiny_llama.vocab_size
    )
    assert cost.eq2_ratio == pytest.approx(float(np.mean(expected)))
    # Probing every layer costs more than exiting at the same layers without probes.
    gap = fitted("gap", tiny_llama)
    probed = run_costs(
        EarlyExitEngine(tiny_llama, gap).run(test.input_ids, 5), tiny_llama.config, gap
    )
    assert probed.probe_flops > 0 and probed.classifier_flops > 0


def test_timed_ideal_prices_the_shapes_each_run_ran(tiny_llama):
    """The time model prices every (width, rows) shape of the work logs, compaction's small
    row counts included, and every policy call; a run that does the full model's work is
    predicted no speedup."""
    _, test, _, _ = traced(tiny_llama)
    L = tiny_llama.num_layers
    policies = [FixedExit(L), FixedExit(1), fitted("gap", tiny_llama)]
    engines = [EarlyExitEngine(tiny_llama, policy) for policy in policies]
    batches = engines[0].batches(test.input_ids, 5)
    full, shallow, gap = (engine.run_batches(batches) for engine in engines)
    assert any(len(set(work.rows)) > 1 for work in gap.work), "gap must compact a batch"
    prices = measure_prices(engines[0], batches, [full, shallow, gap], repeats=1)
    assert {(w.width, r) for w in gap.work for r in w.rows} <= prices.layer.keys()
    with pytest.raises(KeyError):  # its policy calls are not priced yet
        timed_ideal_speedup(gap, prices)
    gap_prices = price_policy(prices, policies[2], gap, repeats=1)
    assert {r for w in gap.work for r in w.classified if r} == gap_prices.classify.keys()
    assert timed_ideal_speedup(full, prices) == pytest.approx(1.0)
    assert timed_ideal_speedup(shallow, prices) > timed_ideal_speedup(gap, gap_prices)


TRACE_FLOPS = ["gap from layer 2", "fixed", "never", "state", "state from layer 2"]
SCHEDULED = ["gap every 2", "fixed every 2", "state every 2 from layer 2", "svm auto", "state auto"]


@pytest.mark.parametrize("kind", TRACE_FLOPS + SCHEDULED)
def test_trace_flops_equal_the_engines_work_at_batch_size_one(tiny_llama, kind):
    """Trace evaluation's honest FLOPs ratio is what the engine executes, prompt by prompt,
    translators of a tuned lens included (a state head: 2h + 5 per scored layer, and one
    probe, at the exit), under every layer or a schedule."""
    _, test, _, test_records = traced(tiny_llama)
    L = tiny_llama.num_layers
    eye = TunedLens.identity(L, tiny_llama.hidden_size)
    policy = {"fixed": FixedExit(2), "never": NeverExit()}.get(kind.split()[0])
    if policy is not None:
        policy.schedule = kind.replace("fixed every ", "every_") if " " in kind else "all"
    else:
        policy = configured(kind, tiny_llama, eye)
    if kind.endswith("auto"):
        assert 0 < len(policy.scheduled_layers(L)) < L - 1, policy.scheduled_layers(L)
    engine = EarlyExitEngine(tiny_llama, policy, eye)
    online = [
        run_costs(engine.run([ids], 1), tiny_llama.config, policy, eye).flops_ratio
        for ids in test.input_ids
    ]
    exits = policy.exit_layers(test_records)
    assert kind == "never" or (exits < L).any()
    traced_ratio = trace_flops_ratio(exits, test_records.seq_len, tiny_llama.config, policy, eye)
    np.testing.assert_allclose(traced_ratio, online, rtol=1e-12)


def test_svm_cost_grows_with_its_support_vectors(tiny_llama):
    small = SVMPolicy().fit(_records(tiny_llama.num_layers, n=10))
    large = SVMPolicy().fit(_records(tiny_llama.num_layers, n=60))
    n_small = len(small.model[-1].support_vectors_)
    n_large = len(large.model[-1].support_vectors_)
    assert n_large > n_small
    per_sv = 3 * 2 + 4  # F = 2 features, RBF kernel
    assert classifier_flops(large) - classifier_flops(small) == (n_large - n_small) * per_sv


# -- the real model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_model_engine_equals_forward_and_traces(smollm2_model):
    assert smollm2_model.num_layers == 30
    ids, mask = _padded(smollm2_model)
    result = EarlyExitEngine(smollm2_model, NeverExit()).run(_ids(smollm2_model), 3, True)
    with torch.no_grad():
        logits = smollm2_model.model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(len(PROMPTS)), mask.sum(1) - 1]
    torch.testing.assert_close(torch.from_numpy(result.logits), expected, rtol=1e-4, atol=1e-4)
    # A gap policy with mid-depth exits decides as the trace does.
    records = extract_records(smollm2_model, _encoded(smollm2_model), 4, QUIET)
    policy = GapThreshold(threshold=float(np.quantile(records.gap[:, :-1], 0.8)))
    trace = apply_exits(records, policy.exit_layers(records))
    online = EarlyExitEngine(smollm2_model, policy).run(_encoded(smollm2_model).input_ids, 4)
    assert (trace.exit_layer < 30).any()
    assert online.exit_layer.tolist() == trace.exit_layer.tolist()
    assert online.prediction.tolist() == trace.prediction.tolist()


def _encoded(loaded):
    task = RuleTask(n_train=8, n_test=8)
    return prepare(task, task.load(), loaded, shots=3, seed=0)[1]


@pytest.mark.slow
def test_gemma3_engine_equals_forward():
    """The embedded Gemma-3 (sliding and full layers, two rotary bases, V = 262,144)."""
    from conftest import compose_cfg
    from hydra.utils import instantiate

    loaded = instantiate(compose_cfg(["model=gemma3_270m"]).model).load()
    assert loaded.num_layers == 18 and loaded.config.model_type == "gemma3_text"
    assert {"sliding_attention", "full_attention"} <= set(loaded.config.layer_types)
    ids, mask = _padded(loaded, PROMPTS[:2])
    result = EarlyExitEngine(loaded, NeverExit()).run(_ids(loaded, PROMPTS[:2]), 2, True)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits
    expected = logits[torch.arange(2), mask.sum(1) - 1]
    torch.testing.assert_close(torch.from_numpy(result.logits), expected, rtol=1e-4, atol=1e-4)
    assert result.prediction.tolist() == expected.argmax(-1).tolist()
