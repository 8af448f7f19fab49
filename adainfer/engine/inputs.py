"""What each decoder layer needs besides its hidden states, built with the model's own helpers.

A transformers backbone prepares, once per forward, the input embeddings, the position ids, the
rotary embeddings and the attention masks, then calls every decoder layer with them. The engine
runs the layers itself, so this module does that preparation, family by family, with the same
calls the backbone makes (its ``embed_tokens``, ``rotary_emb``, ``embed_positions`` and
``transformers.masking_utils``), and can drop finished rows from all of it (:meth:`select`).

The families and their model types are those of :data:`adainfer.llm.arch.FAMILIES`, the one
list: every model adainfer can probe, the engine can run.

- Llama-like (Llama incl. SmolLM2, Mistral, Qwen2/3, Gemma 1/2, Phi-3): one rotary embedding, a
  causal mask (a sliding-window one for layers of type ``sliding_attention``).
- Gemma-3: ``sliding_attention`` and ``full_attention`` layers, each with its own mask and its
  own rotary embedding (local and global RoPE bases). Gemma's embedding modules scale by
  sqrt(h) themselves.
- OPT: learned absolute positions added to the embeddings (counted from the attention mask,
  offset by 2 inside the module), an optional ``project_in``, one causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from adainfer.errors import AdaInferError
from adainfer.llm.arch import FAMILIES

FULL, SLIDING = "full_attention", "sliding_attention"
_MASKS = {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}
_ROPE_PER_LAYER_TYPE = ("gemma3_text",)  # rotary_emb(x, position_ids, layer_type)


@dataclass
class LayerInputs:
    """Embeddings (the input of layer 1) and each layer's keyword arguments, for a batch."""

    hidden: torch.Tensor  # [B, S, H]
    groups: dict[str, dict[str, Any]]  # layer type -> kwargs for layer(hidden, **kwargs)
    layer_group: list[str]  # per layer, its key in ``groups``

    def kwargs(self, index: int) -> dict[str, Any]:
        return self.groups[self.layer_group[index]]

    def select(self, rows: torch.Tensor, batch: int) -> None:
        """Keep only ``rows`` (of the ``batch`` rows now present) in every per-row tensor.

        Tensors whose first dimension is 1 are shared by all rows (rotary tables, llama's
        position ids) and stay as they are; a ``None`` mask (no padding) stays ``None``.
        """
        self.groups = {
            name: {key: _take(value, rows, batch) for key, value in kwargs.items()}
            for name, kwargs in self.groups.items()
        }


def _take(value: Any, rows: torch.Tensor, batch: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() and value.shape[0] == batch:
            return value.index_select(0, rows.to(value.device))
        return value
    if isinstance(value, tuple):
        return tuple(_take(v, rows, batch) for v in value)
    return value


def check_supported(model: torch.nn.Module) -> str:
    """The model's type, or a clear error naming the types the engine can run."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ENGINE_MODEL_TYPES:
        raise AdaInferError(
            f"the early-exit engine cannot run model type {model_type!r}: it builds each "
            "family's masks and position embeddings itself",
            f"use one of {sorted(ENGINE_MODEL_TYPES)}, or evaluate exits on layer traces "
            "(adainfer.decide.metrics.apply_exits), which support every model adainfer can probe",
        )
    if getattr(model.config, "use_bidirectional_attention", False):
        raise AdaInferError(
            f"{model_type} with use_bidirectional_attention=True is not a causal decoder",
            "use a causal configuration of the model",
        )
    return model_type


def _layer_types(config: Any) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types:
        return list(types[: config.num_hidden_layers])
    # Mistral-style configs: one window for all layers when sliding_window is set.
    kind = SLIDING if getattr(config, "sliding_window", None) else FULL
    return [kind] * config.num_hidden_layers


def _masks(config: Any, embeds, attention_mask, cache, positions, types: list[str]) -> dict:
    """The attention mask of each layer type in ``types``, built with the backbone's own helper
    for that type, as its forward builds them."""
    return {
        kind: _MASKS[kind](
            config=config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=positions,
        )
        for kind in sorted(set(types))
    }


def _llama_like(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LayerInputs:
    base, config = model.model, model.config
    embeds = base.embed_tokens(input_ids)
    position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    types = layer_types(model)
    groups = {}
    shared_rope = None
    if config.model_type not in _ROPE_PER_LAYER_TYPE:
        shared_rope = base.rotary_emb(embeds, position_ids=position_ids)
    masks = _masks(config, embeds, attention_mask, None, position_ids, types)
    for kind, mask in masks.items():
        rope = shared_rope
        if rope is None:
            rope = base.rotary_emb(embeds, position_ids, kind)
        groups[kind] = {
            "attention_mask": mask,
            "position_ids": position_ids,
            "position_embeddings": rope,
        }
    return LayerInputs(embeds, groups, types)


def _opt(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LayerInputs:
    decoder, config = model.model.decoder, model.config
    embeds = decoder.embed_tokens(input_ids)
    # As OPTDecoder: positions count real tokens (pads get -1, i.e. the module's index 1).
    position_ids = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()
    positions = decoder.embed_positions(attention_mask, 0, position_ids=position_ids)
    mask = create_causal_mask(
        config=config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None
    )
    if decoder.project_in is not None:
        embeds = decoder.project_in(embeds)
    groups = {FULL: {"attention_mask": mask, "position_ids": position_ids}}
    return LayerInputs(embeds + positions, groups, [FULL] * config.num_hidden_layers)


def layer_inputs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> LayerInputs:
    """Embeddings, masks and positions for a right-padded batch, as the backbone builds them."""
    model_type = check_supported(model)
    return _BUILD[FAMILIES[model_type]](model, input_ids, attention_mask)


# How the engine builds each family's layer inputs (the families of models.arch.FAMILIES).
_BUILD = {"llama_like": _llama_like, "opt": _opt}
ENGINE_MODEL_TYPES = tuple(sorted(t for t, family in FAMILIES.items() if family in _BUILD))


# -- one decoding step (adainfer.engine.generation) -------------------------------------------
def rope_at(model: torch.nn.Module, layer_type: str, positions: torch.Tensor):
    """The rotary (cos, sin) of a layer of ``layer_type`` at ``positions`` [n, t]; None for
    OPT (absolute positions, added to the embeddings)."""
    if FAMILIES[model.config.model_type] == "opt":
        return None
    base = model.model
    x = base.embed_tokens.weight[:1][None]  # dtype and device only
    if model.config.model_type in _ROPE_PER_LAYER_TYPE:
        return base.rotary_emb(x, positions, layer_type)
    return base.rotary_emb(x, position_ids=positions)


def layer_types(model: torch.nn.Module) -> list[str]:
    """Each decoder layer's attention type, as the engine groups them (Llama: one causal mask
    whatever the config, as LlamaModel builds it; OPT: full attention)."""
    if FAMILIES[model.config.model_type] == "opt" or model.config.model_type == "llama":
        return [FULL] * model.config.num_hidden_layers
    return _layer_types(model.config)


def decode_inputs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
) -> LayerInputs:
    """Layer inputs for one new token per row, ``tokens`` [B, 1] at ``positions`` [B, 1],
    attending to ``cache`` (filled up to the last column) and itself; ``attention_mask`` [B, T+1]
    covers both (left padding). Masks are built before the step writes to the cache, with the
    backbone's own helpers, as its forward builds them."""
    config = model.config
    types = layer_types(model)
    if FAMILIES[config.model_type] == "opt":
        decoder = model.model.decoder
        embeds = decoder.embed_tokens(tokens)
        pos = decoder.embed_positions(attention_mask, 0, position_ids=positions)
        if decoder.project_in is not None:
            embeds = decoder.project_in(embeds)
        hidden = embeds + pos
    else:
        hidden = model.model.embed_tokens(tokens)
    groups = {}
    for kind, mask in _masks(config, hidden, attention_mask, cache, positions, types).items():
        groups[kind] = {"attention_mask": mask, "position_ids": positions}
        rope = rope_at(model, kind, positions)
        if rope is not None:
            groups[kind]["position_embeddings"] = rope
    return LayerInputs(hidden, groups, types)
