"""The layer probe: one pass, equal to the library's own forward, blind to padding."""

from __future__ import annotations

import pytest
import torch

from adainfer.errors import AdaInferError
from adainfer.llm import decoder_parts
from adainfer.llm.readout import probe_layers

PROMPTS = ["Q: Monday\nA: Tuesday\n\nQ: March\nA:", "Q: b\nA:", "Q: seven\nA: eight\n\nQ: one\nA:"]


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    assert tokenizer.padding_side == "right"
    return enc.input_ids, enc.attention_mask


def test_shrunken_config_really_shrank(tiny_model):
    assert tiny_model.num_layers == 4
    assert tiny_model.hidden_size == 64


def test_last_layer_probe_equals_model_logits(tiny_model):
    ids, mask = _batch(tiny_model.tokenizer, PROMPTS)
    feats = probe_layers(tiny_model.parts, ids, mask)
    with torch.no_grad():
        logits = tiny_model.model(input_ids=ids, attention_mask=mask).logits
    last = mask.sum(1) - 1
    probs = logits[torch.arange(len(PROMPTS)), last].float().softmax(-1)
    top = probs.topk(2, dim=-1)
    assert feats["argmax"].shape == (len(PROMPTS), tiny_model.num_layers)
    torch.testing.assert_close(feats["top_prob"][:, -1], top.values[:, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        feats["gap"][:, -1], top.values[:, 0] - top.values[:, 1], rtol=1e-4, atol=1e-6
    )
    assert torch.equal(feats["argmax"][:, -1], top.indices[:, 0])


def test_every_layer_matches_hidden_states(tiny_llama):
    """Layer l's probe is the head on the library's own hidden_states[l] (layers 1..L-1)."""
    ids, mask = _batch(tiny_llama.tokenizer, PROMPTS)
    feats = probe_layers(tiny_llama.parts, ids, mask)
    with torch.no_grad():
        out = tiny_llama.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    last = mask.sum(1) - 1
    rows = torch.arange(len(PROMPTS))
    for layer in range(1, tiny_llama.num_layers):  # hidden_states[L] is already normed
        logits = tiny_llama.parts.probe_logits(out.hidden_states[layer][rows, last])
        assert torch.equal(feats["argmax"][:, layer - 1], logits.argmax(-1))


def test_padding_does_not_change_features(tiny_model):
    ids, mask = _batch(tiny_model.tokenizer, PROMPTS)
    assert (mask == 0).any(), "the batch must contain padding for this test to mean anything"
    batched = probe_layers(tiny_model.parts, ids, mask)
    for i, text in enumerate(PROMPTS):
        one_ids, one_mask = _batch(tiny_model.tokenizer, [text])
        alone = probe_layers(tiny_model.parts, one_ids, one_mask)
        for key in ("gap", "top_prob"):
            torch.testing.assert_close(batched[key][i], alone[key][0], rtol=1e-4, atol=1e-5)
        assert torch.equal(batched["argmax"][i], alone["argmax"][0])


@pytest.mark.slow
def test_embedded_model_probe_equals_logits(smollm2_model):
    assert smollm2_model.num_layers == 30
    ids, mask = _batch(smollm2_model.tokenizer, PROMPTS)
    feats = probe_layers(smollm2_model.parts, ids, mask)
    with torch.no_grad():
        logits = smollm2_model.model(input_ids=ids, attention_mask=mask).logits
    probs = logits[torch.arange(len(PROMPTS)), mask.sum(1) - 1].softmax(-1)
    torch.testing.assert_close(feats["top_prob"][:, -1], probs.max(-1).values, rtol=1e-4, atol=1e-5)
    assert torch.equal(feats["argmax"][:, -1], probs.argmax(-1))


def test_unknown_architecture_is_a_clear_error():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2))
    with pytest.raises(AdaInferError, match="(?s)unsupported architecture 'gpt2'.*llama"):
        decoder_parts(model)


@pytest.mark.slow
def test_gemma3_config_loads_and_probes():
    """conf/model/gemma3_270m.yaml: assembled from its packages, 18 layers, head == logits."""
    from conftest import compose_cfg
    from hydra.utils import instantiate

    loaded = instantiate(compose_cfg(["model=gemma3_270m"]).model).load()
    assert loaded.num_layers == 18 and loaded.vocab_size == 262144
    ids, mask = _batch(loaded.tokenizer, PROMPTS[:2])
    feats = probe_layers(loaded.parts, ids, mask)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits
    probs = logits[torch.arange(2), mask.sum(1) - 1].softmax(-1)
    torch.testing.assert_close(feats["top_prob"][:, -1], probs.max(-1).values, rtol=1e-4, atol=1e-5)
    assert torch.equal(feats["argmax"][:, -1], probs.argmax(-1))
