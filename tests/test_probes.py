"""Tuned-lens probes: the identity is the logit lens; fitted translators read layers better."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import QUIET, TINY_SPECS, compose_cfg

from adainfer.decide.costs import ModelDims, trace_flops_ratio
from adainfer.decide.policies import GapThreshold, NeverExit, OracleConsistent
from adainfer.decide.policies.base import earliest_settled
from adainfer.engine import EarlyExitEngine
from adainfer.errors import AdaInferError
from adainfer.extract import extractor
from adainfer.extract.passes import extract_records, extract_records_multi
from adainfer.llm.lenses import (
    Lens,
    LensStore,
    LogitLens,
    TunedLens,
    fit_tuned_lens,
    load_probe,
    unembedding_hash,
)
from adainfer.run import job as pipeline
from adainfer.run.tracking import load_run_probe
from adainfer.tasks import FunctionVectorsTask, RuleTask


def _prompts(loaded, n_train=24, n_test=16):
    task = RuleTask(n_train=n_train, n_test=n_test)
    return extractor.prepare(task, task.load(), loaded, shots=3, seed=0)


def test_identity_translator_is_exactly_the_logit_lens(tiny_model):
    _, test = _prompts(tiny_model)
    plain = extract_records(tiny_model, test, 8, QUIET)
    eye = TunedLens.identity(tiny_model.num_layers, tiny_model.hidden_size)
    tuned = extract_records(tiny_model, test, 8, QUIET, probe=eye)
    for name in plain.values:
        np.testing.assert_array_equal(tuned.values[name], plain.values[name])
    np.testing.assert_array_equal(tuned.argmax, plain.argmax)
    # ... and online, in the engine, layer by layer.
    policy = GapThreshold(threshold=0.5).fit(plain)
    online = EarlyExitEngine(tiny_model, policy, eye).run(test.input_ids, 4)
    np.testing.assert_array_equal(
        online.exit_layer, EarlyExitEngine(tiny_model, policy).run(test.input_ids, 4).exit_layer
    )


def test_fitted_lens_keeps_the_last_layer_and_the_models_answer(tiny_llama):
    train, test = _prompts(tiny_llama)
    lens = fit_tuned_lens(tiny_llama, train, 8, ridge=0.1, trainer_kwargs=QUIET)
    assert lens.positions > len(train.input_ids)  # every position, not one per prompt
    assert torch.equal(lens.weight[-1], torch.eye(tiny_llama.hidden_size))
    assert not torch.allclose(lens.weight[0], torch.eye(tiny_llama.hidden_size))
    plain = extract_records(tiny_llama, test, 8, QUIET)
    tuned = extract_records(tiny_llama, test, 8, QUIET, probe=lens)
    np.testing.assert_array_equal(tuned.argmax[:, -1], plain.argmax[:, -1])
    assert not np.array_equal(tuned.argmax[:, :-1], plain.argmax[:, :-1])


@pytest.mark.slow
def test_fitted_translators_raise_agreement_on_held_out_prompts(smollm2_model, data_dir):
    """On the real model, fitted on one set of prompts and scored on others."""
    task = FunctionVectorsTask(name="antonym", data_dir=str(data_dir), n_train=48, n_test=48)
    train, test = extractor.prepare(task, task.load(), smollm2_model, shots=3, seed=0)
    lens = fit_tuned_lens(smollm2_model, train, 8, ridge=0.1, trainer_kwargs=QUIET)

    def agreement(probe) -> np.ndarray:
        r = extract_records(smollm2_model, test, 8, QUIET, probe=probe)
        return (r.argmax[:, :-1] == r.argmax[:, -1:]).mean(axis=0)  # per layer, L-1 values

    plain, tuned = agreement(LogitLens()), agreement(lens)
    assert tuned.mean() > plain.mean() + 0.1, (plain.round(2), tuned.round(2))
    assert (tuned >= plain - 0.05).mean() > 0.9  # better at (almost) every layer, not on average


def test_lens_saves_reloads_and_caches_by_key(tiny_llama, tmp_path):
    train, test = _prompts(tiny_llama)
    lens = fit_tuned_lens(tiny_llama, train, 8, trainer_kwargs=QUIET)
    lens.save(tmp_path / "saved")
    again = load_probe(tmp_path / "saved")
    assert torch.equal(again.weight, lens.weight) and again.fingerprint == lens.fingerprint
    assert isinstance(load_probe(tmp_path / "nothing-here"), LogitLens)
    store, calls = LensStore(tmp_path / "store"), []

    def fit():
        calls.append(1)
        return lens

    store.get_or_fit({"data": "a"}, fit)
    assert store.get_or_fit({"data": "a"}, fit).fingerprint == lens.fingerprint
    assert len(calls) == 1
    store.get_or_fit({"data": "b"}, fit)  # another key never reuses it
    assert len(calls) == 2


def test_lens_of_another_model_is_refused(tiny_llama):
    _, test = _prompts(tiny_llama)
    other = TunedLens.identity(tiny_llama.num_layers + 1, tiny_llama.hidden_size)
    with pytest.raises(AdaInferError, match="fit the tuned lens on this model"):
        extract_records(tiny_llama, test, 8, QUIET, probe=other)
    with pytest.raises(AdaInferError, match="fit the tuned lens on this model"):
        EarlyExitEngine(tiny_llama, NeverExit(), other)


def test_a_saved_lens_names_its_model_and_is_refused_by_another_of_the_same_shape(
    tiny_llama, tmp_path
):
    """As tuned-lens does: the lens records the model it was fitted on and a hash of that
    model's LM head; the same depth and width with other weights is not its model."""
    train, test = _prompts(tiny_llama)
    lens = fit_tuned_lens(tiny_llama, train, 8, trainer_kwargs=QUIET)
    assert lens.base_model == tiny_llama.identity
    assert lens.unembedding == unembedding_hash(tiny_llama.parts.lm_head)
    lens.save(tmp_path / "saved")
    again = load_probe(tmp_path / "saved")
    assert (again.base_model, again.unembedding) == (lens.base_model, lens.unembedding)
    extract_records(tiny_llama, test, 8, QUIET, probe=again)  # its own model: fine
    reseeded = replace(TINY_SPECS["llama"](), seed=1).load()
    assert reseeded.identity != tiny_llama.identity
    assert unembedding_hash(reseeded.parts.lm_head) != lens.unembedding
    with pytest.raises(AdaInferError, match="was fitted on the model"):
        extract_records(reseeded, test, 8, QUIET, probe=again)
    with pytest.raises(AdaInferError, match="was fitted on the model"):
        EarlyExitEngine(reseeded, NeverExit(), again)


def test_a_new_lens_is_one_class_that_saves_and_loads_by_its_name(tiny_llama, tmp_path):
    """The registry: a subclass of Lens with a name is what load_probe builds from a folder
    whose probe.json names it; an unknown name is refused with the known ones."""

    class Scaled(Lens):
        name = "scaled_for_test"

        def __init__(self, factor: float = 1.0) -> None:
            self.factor = factor

        def translate(self, hidden, layer=None):
            return hidden * self.factor

        def save(self, folder):
            folder.mkdir(parents=True, exist_ok=True)
            meta = {"probe": self.name, "factor": self.factor}
            (folder / "probe.json").write_text(json.dumps(meta))

        @classmethod
        def _load(cls, folder, meta):
            return cls(meta["factor"])

    try:
        Scaled(2.0).save(tmp_path / "scaled")
        again = load_probe(tmp_path / "scaled")
        assert isinstance(again, Scaled) and again.factor == 2.0
        _, test = _prompts(tiny_llama)
        plain = extract_records(tiny_llama, test, 8, QUIET)
        same = extract_records(tiny_llama, test, 8, QUIET, probe=Scaled(1.0))
        np.testing.assert_array_equal(same.argmax, plain.argmax)
    finally:
        Lens.registry.pop("scaled_for_test", None)
    (tmp_path / "scaled" / "probe.json").write_text(json.dumps({"probe": "scaled_for_test"}))
    with pytest.raises(AdaInferError, match="unknown saved probe 'scaled_for_test'"):
        load_probe(tmp_path / "scaled")


def test_honest_flops_count_probes_and_translators(tiny_llama):
    _, test = _prompts(tiny_llama)
    records = extract_records(tiny_llama, test, 8, QUIET)
    L, config = tiny_llama.num_layers, tiny_llama.config
    full = trace_flops_ratio(
        np.full(records.num_instances, L), records.seq_len, config, NeverExit()
    )
    np.testing.assert_allclose(full, 1.0)
    gap = GapThreshold().fit(records)
    at = np.full(records.num_instances, L // 2)
    plain = trace_flops_ratio(at, records.seq_len, config, gap)
    eye = TunedLens.identity(L, tiny_llama.hidden_size)
    tuned = trace_flops_ratio(at, records.seq_len, config, gap, eye)
    dims = ModelDims.from_config(config)
    full_cost = np.array([L * dims.layer(s) + dims.head() + dims.vocab for s in records.seq_len])
    # Translators at each of the L/2 probed layers, on top of the same probes.
    np.testing.assert_allclose((tuned - plain) * full_cost, (L // 2) * eye.flops())
    assert np.all(plain * full_cost > (L // 2) * np.array([dims.layer(s) for s in records.seq_len]))


def test_pipeline_with_tuned_probe_logs_and_reloads_the_lens(tracking_uri, tmp_path):
    common = [
        "model=tiny_llama",
        "task.n_train=20",
        "shots=2",
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.experiment=probes",
        f"traces.dir={tmp_path}",
    ]
    metrics = pipeline.run(compose_cfg([*common, "probe=tuned"]))
    assert metrics["honest_flops_ratio"] > 0
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["probes"], output_format="list")[0]
    assert run.data.params["probe"] == "tuned"
    lens = load_run_probe(run.info.run_id, tracking_uri)
    assert isinstance(lens, TunedLens) and lens.num_layers == 4
    traces = {p.name for p in tmp_path.glob("*.parquet")}
    # One pass stored both probes' traces (train and test): distinct files, distinct keys.
    assert len(traces) == 4
    pipeline.run(compose_cfg([*common, "probe=logit_lens"]))
    assert {p.name for p in tmp_path.glob("*.parquet")} == traces
    runs = mlflow.search_runs(experiment_names=["probes"], order_by=["start_time DESC"])
    assert runs["tags.llm_forward"].iloc[0] == "trace_store"


def test_one_pass_through_two_probes_equals_two_passes(tiny_llama):
    train, test = _prompts(tiny_llama)
    lens = fit_tuned_lens(tiny_llama, train, 8, trainer_kwargs=QUIET)
    tuned, plain = extract_records_multi(tiny_llama, test, 8, QUIET, [lens, LogitLens()])
    for alone, both in (
        (extract_records(tiny_llama, test, 8, QUIET, probe=lens), tuned),
        (extract_records(tiny_llama, test, 8, QUIET), plain),
    ):
        np.testing.assert_array_equal(both.argmax, alone.argmax)
        for name in alone.values:
            np.testing.assert_array_equal(both.values[name], alone.values[name])


def test_earliest_settled_and_the_probes_it_saves(tiny_llama):
    _, test = _prompts(tiny_llama)
    records = extract_records(tiny_llama, test, 8, QUIET)
    L = records.num_layers
    settled = OracleConsistent().fit(records).exit_layers(records)
    first = earliest_settled(records, share=0.25)
    assert np.mean(settled <= first) >= 0.25 and (first == 1 or np.mean(settled < first) < 0.25)
    gap = GapThreshold(threshold=2.0).fit(records)  # reads every layer, never stops early
    every = trace_flops_ratio(np.full(len(settled), L), records.seq_len, tiny_llama.config, gap)
    gap.first_layer = L  # reads only the last layer: the full model's cost
    late = trace_flops_ratio(np.full(len(settled), L), records.seq_len, tiny_llama.config, gap)
    np.testing.assert_allclose(late, 1.0)
    assert np.all(every > late)


def test_layer_agreement_counts_instances_that_already_give_the_final_answer():
    from adainfer.decide.metrics import agreement_metrics, layer_agreement
    from adainfer.decide.records import LayerRecords

    argmax = np.array([[1, 2, 3], [3, 3, 3], [4, 2, 2], [5, 5, 6]])
    gap = np.zeros(argmax.shape, dtype=np.float32)
    records = LayerRecords({"gap": gap, "top_prob": gap}, argmax, np.zeros(4), np.ones(4))
    np.testing.assert_allclose(layer_agreement(records), [0.25, 0.5, 1.0])
    assert agreement_metrics(records) == {"agree_mean": 0.375, "agree_half_layer": 2.0}
