"""Label-row reads (feature_set=labels): for a task with a fixed answer set, a read looks at the
labels' rows of the LM head only (|labels| x h instead of V x h); the exit's answer still comes
from the full head. The read equals the full head's logits of those tokens, the engine decides
on it as trace evaluation does, and it is priced as the engine pays it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import QUIET

from adainfer.choices import LABEL_FEATURES
from adainfer.decide.costs import (
    ModelDims,
    decision_price,
    read_prices,
    run_costs,
    trace_flops_ratio,
)
from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import AutoPolicy, LogRegPolicy, StatePolicy, load_policy
from adainfer.decide.records import LayerRecords
from adainfer.engine import EarlyExitEngine
from adainfer.errors import AdaInferError
from adainfer.extract.extractor import prepare
from adainfer.extract.passes import extract_records
from adainfer.llm.lenses import TunedLens
from adainfer.llm.readout import label_readout, read_layers
from adainfer.tasks import RuleTask
from adainfer.tasks.classification import AGNewsTask

_TRACED: dict = {}


def labelled(loaded, data_dir):
    """AG News prompts (4 labels) on ``loaded`` and their layer records (once per model)."""
    if loaded.name not in _TRACED:
        task = AGNewsTask(data_dir=str(data_dir), n_train=30, n_test=16)
        train, test = prepare(task, task.load(), loaded, shots=1, seed=0)
        _TRACED[loaded.name] = (
            train,
            test,
            extract_records(loaded, train, 8, QUIET),
            extract_records(loaded, test, 8, QUIET),
        )
    return _TRACED[loaded.name]


def label_policy(train: LayerRecords) -> LogRegPolicy:
    """A logistic rule on the label-row features, fitted on "agrees with the last layer"
    labels (a random tiny model never predicts the gold token), its threshold at a quantile
    of its train scores so that exits happen mid-depth."""
    consistent = LayerRecords(
        train.values,
        train.argmax,
        train.argmax[:, -1].copy(),
        train.seq_len,
        label_ids=train.label_ids,
    )
    policy = LogRegPolicy(features=LABEL_FEATURES).fit(consistent)
    policy.threshold = float(np.quantile(policy.scores(consistent)[:, :-1], 0.6))
    return policy


def test_a_label_row_read_equals_the_full_heads_logits_of_those_tokens(tiny_llama):
    torch.manual_seed(0)
    hidden = torch.randn(3, tiny_llama.num_layers, tiny_llama.hidden_size)
    labels = torch.tensor([5, 17, 40, 2])
    lens = TunedLens.identity(tiny_llama.num_layers, tiny_llama.hidden_size)
    with torch.no_grad():
        lens.weight.add_(0.05 * torch.randn_like(lens.weight))
        for probe in (None, lens):
            full = read_layers(tiny_llama.parts, hidden, probe, labels)
            read = hidden if probe is None else probe.translate(hidden)
            rows = label_readout(tiny_llama.parts, read, tiny_llama.parts.label_head(labels))
            for name in LABEL_FEATURES:
                torch.testing.assert_close(rows[name], full[name], rtol=1e-5, atol=1e-6)
            logits = tiny_llama.parts.probe_logits(read)
            by_hand = logits[..., labels].softmax(-1).max(-1).values
            torch.testing.assert_close(full["label_top_prob"], by_hand, rtol=1e-5, atol=1e-6)


def test_traces_of_a_labelled_task_record_its_label_reads(tiny_llama, data_dir):
    _, test, _, records = labelled(tiny_llama, data_dir)
    assert records.label_ids is not None and len(records.label_ids) == 4
    assert np.array_equal(records.label_ids, test.label_ids)
    assert (
        set(records.values["label_gap"].ravel())
        and (records.values["label_top_prob"] >= 0.25).all()
    )
    rule_train, _ = prepare(
        RuleTask(n_train=6, n_test=2),
        RuleTask(n_train=6, n_test=2).load(),
        tiny_llama,
        shots=1,
        seed=0,
    )
    plain = extract_records(tiny_llama, rule_train, 8, QUIET)
    assert plain.label_ids is None and not set(LABEL_FEATURES) & set(plain.values)


def test_the_engine_decides_on_label_rows_as_traces_do_and_answers_with_the_full_head(
    tiny_llama, data_dir
):
    _, test, train_records, test_records = labelled(tiny_llama, data_dir)
    policy = label_policy(train_records)
    assert policy.reads_labels and not policy.reads_probe and policy.scores_state
    exits = policy.exit_layers(test_records)
    L = tiny_llama.num_layers
    assert (exits < L).any() and (exits == L).any()
    online = EarlyExitEngine(tiny_llama, policy).run(test.input_ids, batch_size=5)
    assert online.exit_layer.tolist() == exits.tolist()
    # the exit's answer is the full head's argmax at the exit layer, as trace evaluation reads
    assert online.prediction.tolist() == apply_exits(test_records, exits).prediction.tolist()
    (first, *_) = online.work
    assert sum(first.probed) == len(first.seq_len)  # the full head: once per row, at its exit


def test_a_label_row_read_is_priced_as_the_engine_pays_it(tiny_llama, data_dir):
    _, test, train_records, test_records = labelled(tiny_llama, data_dir)
    policy = label_policy(train_records)
    dims = ModelDims.from_config(tiny_llama.config)
    price = decision_price(policy, dims)
    assert price == dims.label_read(4) + 4 * len(LABEL_FEATURES) + 5  # the read, then logreg
    assert dims.label_read(4) < dims.probe() / 100  # 4 rows of the head, not all of them
    engine = EarlyExitEngine(tiny_llama, policy)
    online = [
        run_costs(engine.run([ids], 1), tiny_llama.config, policy).flops_ratio
        for ids in test.input_ids
    ]
    exits = policy.exit_layers(test_records)
    traced_ratio = trace_flops_ratio(exits, test_records.seq_len, tiny_llama.config, policy)
    np.testing.assert_allclose(traced_ratio, online, rtol=1e-12)
    # schedule=auto prices its reads the same way
    policy.schedule = "auto"
    policy.choose_schedule(train_records, read_prices(tiny_llama.config))
    assert policy.chosen_schedule is not None


def test_a_saved_label_policy_keeps_its_label_tokens(tiny_llama, data_dir, tmp_path):
    _, _, train_records, test_records = labelled(tiny_llama, data_dir)
    policy = label_policy(train_records)
    policy.save(tmp_path / "policy")
    again = load_policy(tmp_path / "policy")
    assert np.array_equal(again.label_ids, policy.label_ids) and again.reads_labels
    assert np.array_equal(again.exit_layers(test_records), policy.exit_layers(test_records))


def test_a_label_read_on_a_task_without_labels_is_refused_and_auto_leaves_it_out(tiny_llama):
    task = RuleTask(n_train=8, n_test=2)
    train, _ = prepare(task, task.load(), tiny_llama, shots=1, seed=0)
    records = extract_records(tiny_llama, train, 8, QUIET, hidden_states=True)
    with pytest.raises(AdaInferError, match="task has no fixed answer set"):
        LogRegPolicy(features=LABEL_FEATURES).fit(records)
    family = AutoPolicy({"labels": LogRegPolicy(features=LABEL_FEATURES), "state": StatePolicy()})
    family.fit(records)
    assert list(family.candidates) == ["state"] and "labels" in family.unavailable


def test_through_a_tuned_lens_the_label_read_is_translated_first_and_priced_so(
    tiny_llama, data_dir
):
    train, test, _, _ = labelled(tiny_llama, data_dir)
    torch.manual_seed(1)
    lens = TunedLens.identity(tiny_llama.num_layers, tiny_llama.hidden_size)
    lens.weight.add_(0.05 * torch.randn_like(lens.weight))
    train_records = extract_records(tiny_llama, train, 8, QUIET, probe=lens)
    test_records = extract_records(tiny_llama, test, 8, QUIET, probe=lens)
    policy = label_policy(train_records)
    exits = policy.exit_layers(test_records)
    assert (exits < tiny_llama.num_layers).any()
    engine = EarlyExitEngine(tiny_llama, policy, lens)
    assert engine.run(test.input_ids, batch_size=4).exit_layer.tolist() == exits.tolist()
    dims = ModelDims.from_config(tiny_llama.config)
    assert decision_price(policy, dims, lens) == decision_price(policy, dims) + lens.flops()
    online = [
        run_costs(engine.run([ids], 1), tiny_llama.config, policy, lens).flops_ratio
        for ids in test.input_ids
    ]
    traced_ratio = trace_flops_ratio(exits, test_records.seq_len, tiny_llama.config, policy, lens)
    np.testing.assert_allclose(traced_ratio, online, rtol=1e-12)
