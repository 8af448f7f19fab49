"""The model stays where it was put: Lightning's passes neither move it nor hand it back to the
CPU, a model spread by a device map runs where accelerate put it, and a tuned lens is copied
to a device once."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import QUIET, TINY_SPECS
from transformers import AutoModelForCausalLM

from adainfer.decide.policies import GapThreshold
from adainfer.engine import EarlyExitEngine
from adainfer.engine.timing import engine_metrics
from adainfer.errors import AdaInferError
from adainfer.extract.extractor import prepare
from adainfer.extract.passes import LayerProbeModule, extract_records
from adainfer.llm.lenses import TunedLens, fit_tuned_lens
from adainfer.llm.loading import LoadedModel
from adainfer.llm.placement import dispatched, input_device, place
from adainfer.tasks import RuleTask

# Two of the tiny llama's four layers on disk: accelerate leaves their weights on the meta
# device and loads them in its hooks, as it does for a 70B model that does not fit.
OFFLOADED = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.layers.2": "disk",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "model.lm_head": "cpu",
}


def _prompts(loaded):
    task = RuleTask(n_train=12, n_test=8)
    return prepare(task, task.load(), loaded, shots=3, seed=0)


@pytest.fixture(scope="module")
def offloaded(tiny_llama, tmp_path_factory) -> LoadedModel:
    """The tiny llama, saved and loaded back through a device map with layers on disk."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.model.save_pretrained(folder)
    device_map = {k.replace("model.lm_head", "lm_head"): v for k, v in OFFLOADED.items()}
    model = AutoModelForCausalLM.from_pretrained(
        folder, device_map=device_map, offload_folder=str(folder / "offload")
    )
    t = tiny_llama
    return LoadedModel("tiny_llama_offloaded", t.tokenizer, t.config, "offloaded", lambda: model)


def _meta(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.device.type == "meta"]


def test_lightning_does_not_own_the_llm():
    """Lightning moves the module it is handed at every predict and to the CPU after it; the
    LLM is no part of that module, so its moves never reach the model."""
    loaded = TINY_SPECS["llama"]().load()
    module = LayerProbeModule(loaded)
    assert list(module.parameters()) == []
    before = {name: p.data_ptr() for name, p in loaded.model.named_parameters()}
    module.to(torch.device("meta"))  # what Lightning's .to()/.cpu() do, to a visible place
    assert {name: p.data_ptr() for name, p in loaded.model.named_parameters()} == before
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_passes_leave_the_model_where_it_is(tiny_llama):
    train, test = _prompts(tiny_llama)
    before = {name: p.data_ptr() for name, p in tiny_llama.model.named_parameters()}
    extract_records(tiny_llama, test, 4, QUIET)
    fit_tuned_lens(tiny_llama, train, 4, trainer_kwargs=QUIET)
    assert {name: p.data_ptr() for name, p in tiny_llama.model.named_parameters()} == before


def test_a_disk_offloaded_model_runs_where_accelerate_put_it(tiny_llama, offloaded):
    """Features, tuned lens and engine of the offloaded model equal the plain model's, and its
    offloaded layers are still on disk afterwards (Lightning's teardown used to copy them)."""
    assert dispatched(offloaded.model) and not dispatched(tiny_llama.model)
    on_disk = _meta(offloaded.model)
    assert any(".layers.2." in name for name in on_disk)
    train, test = _prompts(tiny_llama)
    plain = extract_records(tiny_llama, test, 4, QUIET)
    spread = extract_records(offloaded, test, 4, QUIET)
    for name in plain.values:
        np.testing.assert_allclose(spread.values[name], plain.values[name], atol=1e-6)
    np.testing.assert_array_equal(spread.argmax, plain.argmax)
    lens = fit_tuned_lens(tiny_llama, train, 4, trainer_kwargs=QUIET)
    spread_lens = fit_tuned_lens(offloaded, train, 4, trainer_kwargs=QUIET)
    torch.testing.assert_close(spread_lens.weight, lens.weight, rtol=1e-5, atol=1e-5)

    policy = GapThreshold(threshold=float(np.quantile(plain.values["gap"][:, :-1], 0.6)))
    own = EarlyExitEngine(tiny_llama, policy).run(test.input_ids, 4)
    engine = EarlyExitEngine(offloaded, policy)
    assert engine.device == torch.device("cpu")
    np.testing.assert_array_equal(engine.run(test.input_ids, 4).exit_layer, own.exit_layer)
    metrics = engine_metrics(offloaded, policy, test.input_ids, 4, trainer_kwargs=QUIET)
    assert metrics["engine_exit_layer_mean"] == pytest.approx(own.exit_layer.mean())
    assert _meta(offloaded.model) == on_disk


def test_weight_precision_of_a_dispatched_model_is_refused(offloaded):
    _, test = _prompts(offloaded)
    with pytest.raises(AdaInferError, match="model.dtype=bfloat16"):
        extract_records(offloaded, test, 4, QUIET | {"precision": "bf16-true"})


def test_a_model_left_on_the_cpu_when_a_gpu_was_asked_for_says_so(offloaded, caplog):
    with caplog.at_level(logging.WARNING, logger="adainfer"):
        assert place(offloaded, torch.device("cpu")) == torch.device("cpu")
        assert not caplog.records
        # Nothing is moved (the model is dispatched), so no GPU is needed to ask for one.
        assert place(offloaded, torch.device("cuda", 0)) == torch.device("cpu")
    assert "asked for cuda:0" in caplog.text and "'tiny_llama_offloaded'" in caplog.text
    assert "8 of its 8 modules" in caplog.text and "model.embed_tokens" in caplog.text
    assert input_device(offloaded.model) == torch.device("cpu")


class _CountedCopies(torch.Tensor):
    """A tensor that counts the copies made of it with ``.to``."""

    copies = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.copies += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tuned_lens_is_copied_to_a_device_once():
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 8, 8), torch.randn(3, 8)
    lens = TunedLens(weight.clone().as_subclass(_CountedCopies), bias)
    hidden = torch.randn(5, 3, 8).to(torch.bfloat16)
    _CountedCopies.copies = 0
    outs = [lens.translate(hidden[:, layer], layer) for layer in (0, 1, 0, 1)]
    outs.append(lens.translate(hidden))
    assert _CountedCopies.copies == 1  # once to bfloat16, not once per call
    w, b = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
    torch.testing.assert_close(outs[0].as_subclass(torch.Tensor), hidden[:, 0] @ w[0] + b[0])
    expected = torch.einsum("blh,lhk->blk", hidden, w) + b
    torch.testing.assert_close(outs[-1].as_subclass(torch.Tensor), expected)
    assert lens.on(torch.device("cpu"), torch.bfloat16)[0].data_ptr() == (
        lens.on(torch.device("cpu"), torch.bfloat16)[0].data_ptr()
    )
    # A float32 read needs no copy at all; a replaced weight is copied again.
    lens.translate(hidden.float(), 0)
    lens.weight = torch.zeros(3, 8, 8)
    assert torch.equal(lens.translate(hidden[:, 0], 0), b[0].expand(5, 8))
