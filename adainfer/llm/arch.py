"""Where each architecture family keeps its decoder layers, final norm and LM head.

Everything else in adainfer talks to :class:`DecoderParts` only, so a new model type is one entry
in :data:`FAMILIES` (tuned-lens' ``model_surgery`` follows the same idea). It is the one list of
model types: the early-exit engine (``adainfer.engine.inputs``) builds each family's layer
inputs from it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from adainfer.errors import AdaInferError


@dataclass
class DecoderParts:
    """The pieces of a decoder-only causal LM that the layer probe needs."""

    backbone: nn.Module  # embeddings + decoder layers (+ final norm); returns hidden states
    layers: nn.ModuleList  # the decoder blocks, in order
    final_norm: nn.Module | None  # applied before the LM head (None for post-norm models)
    lm_head: nn.Module  # hidden -> vocabulary logits
    project_out: nn.Module | None = None  # OPT-350m style projection after the norm
    logit_softcap: float | None = None  # Gemma-2 style tanh soft-capping of the final logits
    attn_name: str = "self_attn"  # per block: the module whose output is the attention output
    mlp_name: str = "mlp"  # per block: the module whose output is the MLP output

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def probe_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit lens: the model's own head applied to an intermediate hidden state."""
        return self._capped(self.lm_head(self._head_input(hidden)))

    def label_head(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head's rows (weight, bias) of ``token_ids``: gathered once, read per layer."""
        rows = torch.as_tensor(token_ids).to(self.lm_head.weight.device)
        bias = getattr(self.lm_head, "bias", None)
        picked = None if bias is None else bias.index_select(0, rows)
        return self.lm_head.weight.index_select(0, rows), picked

    def label_logits(
        self, hidden: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None]
    ) -> torch.Tensor:
        """:meth:`probe_logits` through the head rows of :meth:`label_head` only (a label-row
        read: |labels| x h multiply-adds per position instead of V x h)."""
        return self._capped(nn.functional.linear(self._head_input(hidden), *head))

    def _head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return hidden

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def attention(self, index: int) -> nn.Module:
        return self.layers[index].get_submodule(self.attn_name)

    def mlp(self, index: int) -> nn.Module:
        return self.layers[index].get_submodule(self.mlp_name)


def _llama_like(model: nn.Module) -> DecoderParts:
    base = model.model
    return DecoderParts(
        backbone=base,
        layers=base.layers,
        final_norm=base.norm,
        lm_head=model.lm_head,
        logit_softcap=getattr(model.config, "final_logit_softcapping", None),
    )


def _opt(model: nn.Module) -> DecoderParts:
    decoder = model.model.decoder
    return DecoderParts(
        backbone=model.model,
        layers=decoder.layers,
        final_norm=decoder.final_layer_norm,
        lm_head=model.lm_head,
        project_out=decoder.project_out,
        mlp_name="fc2",  # OPT's MLP is fc1 -> activation -> fc2
    )


LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
# Model type -> family: where its parts are (here) and how its layer inputs are built (engine).
FAMILIES: dict[str, str] = {**{name: "llama_like" for name in LLAMA_LIKE}, "opt": "opt"}
_PARTS: dict[str, Callable[[nn.Module], DecoderParts]] = {"llama_like": _llama_like, "opt": _opt}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Find the decoder layers, final norm and LM head of a transformers causal LM."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise AdaInferError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}): adainfer does not "
            "know where it keeps its decoder layers, final norm and LM head",
            f"use one of the supported model types {supported_model_types()}, or add an entry "
            "to adainfer/llm/arch.py",
        )
    return _PARTS[family](model)
