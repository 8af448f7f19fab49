"""Per-layer features through the logit lens, from one full-depth forward pass.

After every decoder layer l, the final norm and LM head are applied to the last prompt token's
hidden state: ``P_l = softmax(W · norm(h_l))``. From P_l come ``gap`` (top-1 minus top-2
probability), ``top_prob`` and the argmax token. For the paper's factor study (Table 7) the same
pass also records the cosine similarity between consecutive blocks' attention output
(``cos_attn``), MLP output (``cos_mlp``) and hidden state (``cos_hidden``) at that token.
Forward hooks capture every layer during a single pass, so L layers cost one forward, not L.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adainfer.llm.arch import DecoderParts
from adainfer.llm.capture import Hooks, last_token
from adainfer.llm.lenses import Lens

_HALF_MAX = float(torch.finfo(torch.float16).max)


def half_state(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states as a policy that reads them sees them, in traces and in the engine alike:
    float16, clamped to its finite range (a rare huge activation stays large, not inf)."""
    return hidden.float().clamp(-_HALF_MAX, _HALF_MAX).half()


def _consecutive_cosine(states: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """cos(x_l, x_{l-1}) along dim 1; layer 1 compares with ``first`` (0 when None)."""
    cos = F.cosine_similarity(states[:, 1:], states[:, :-1], dim=-1)
    head = (
        F.cosine_similarity(states[:, 0], first, dim=-1)
        if first is not None
        else torch.zeros_like(cos[:, 0])
    )
    return torch.cat([head[:, None], cos], dim=1)


def _stack(rows: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Per-layer [batch, h] rows as one [batch, layers, h] tensor on ``device``."""
    return torch.stack([r.to(device) for r in rows], dim=1)


@torch.no_grad()
def probe_layers(
    parts: DecoderParts,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    probe: Lens | None = None,
    also: tuple[Lens, ...] = (),
    hidden_states: bool = False,
    label_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Features of the last real token at every layer, each of shape [batch, layers].

    ``gap``, ``top_prob`` and the argmax are read through ``probe`` (default: the logit lens;
    see :mod:`adainfer.llm.lenses`); the cosine features describe the model's own states. Each probe
    in ``also`` reads the same hidden states too (keys ``also<i>:gap`` ...): one forward pass
    for several probes. With ``hidden_states``, ``hidden`` holds those states themselves,
    [batch, layers, h] (:func:`half_state`). With ``label_ids`` (a task's fixed answer set),
    every probe also reads the label features (:func:`read_layers`).
    Padding must be on the right: the last real token is found from ``attention_mask``.
    """
    last = attention_mask.sum(dim=1) - 1
    width = input_ids.shape[1]
    captured: dict[str, list[torch.Tensor]] = {"hidden": [], "attn": [], "mlp": [], "input": []}

    def keeper(key: str):
        return lambda hidden: captured[key].append(last_token(hidden, last, width))

    with Hooks() as hooks:
        hooks.on_input(parts.layers[0], keeper("input"))
        for i, layer in enumerate(parts.layers):
            hooks.on_output(layer, keeper("hidden"))
            hooks.on_output(parts.attention(i), keeper("attn"))
            hooks.on_output(parts.mlp(i), keeper("mlp"))
        parts.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    # A dispatched model's layers run on several devices: its rows meet on the last one's.
    device = captured["hidden"][-1].device
    hidden = _stack(captured["hidden"], device)  # [batch, layers, hidden]
    out = read_layers(parts, hidden, probe, label_ids) | {
        "cos_attn": _consecutive_cosine(_stack(captured["attn"], device), None),
        "cos_mlp": _consecutive_cosine(_stack(captured["mlp"], device), None),
        "cos_hidden": _consecutive_cosine(hidden, captured["input"][0].to(device)),
    }
    for i, other in enumerate(also):  # more probes of the same forward pass
        read = read_layers(parts, hidden, other, label_ids)
        out |= {f"also{i}:{k}": v for k, v in read.items()}
    if hidden_states:  # [batch, layers, h] float16, for a policy that reads them
        out["hidden"] = half_state(hidden)
    return out


def read_layers(
    parts: DecoderParts,
    hidden: torch.Tensor,
    probe: Lens | None = None,
    label_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``gap``, ``top_prob`` and ``argmax`` of hidden states [batch, layers, h] through a probe;
    with ``label_ids`` also ``label_gap`` and ``label_top_prob``, the same of the softmax over
    those tokens' logits only (:func:`label_readout`: what a label-row read computes)."""
    read = hidden if probe is None else probe.translate(hidden)
    gap, top_prob, argmax, logits = readout(parts, read)
    out = {"gap": gap, "top_prob": top_prob, "argmax": argmax}
    if label_ids is not None:
        out |= _label_features(logits[..., label_ids.to(logits.device)])
    return out


def _label_features(label_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """gap and top-1 probability of the softmax over the label logits [..., K] (K >= 2)."""
    top = label_logits.float().softmax(dim=-1).topk(2, dim=-1).values
    return {"label_gap": top[..., 0] - top[..., 1], "label_top_prob": top[..., 0]}


def label_readout(
    parts: DecoderParts, read: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None]
) -> dict[str, torch.Tensor]:
    """A label-row read of (translated) hidden states [..., h]: the final norm, then only the
    labels' rows of the LM head (``head``: :meth:`DecoderParts.label_head`; |labels| x h
    instead of V x h), softcapped as the full head is, softmax over them, top-2. The same
    numbers as :func:`read_layers`' label features, which slice the full head's logits."""
    return _label_features(parts.label_logits(read.to(parts.lm_head.weight.dtype), head))


def readout(parts: DecoderParts, read: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Final norm + LM head on (translated) hidden states [..., h], softmax, top-2:
    (gap, top_prob, argmax, float logits) — the per-layer features of the paper."""
    logits = parts.probe_logits(read.to(parts.lm_head.weight.dtype)).float()
    top = logits.softmax(dim=-1).topk(2, dim=-1)
    return top.values[..., 0] - top.values[..., 1], top.values[..., 0], top.indices[..., 0], logits
