"""Per-layer features through the logit lens, from one full-depth forward pass.

After every decoder layer l, the final norm and LM head are applied to the last prompt token's
hidden state: ``P_l = softmax(W · norm(h_l))``. From P_l come ``gap`` (top-1 minus top-2
probability), ``top_prob`` and the argmax token. For the paper's factor study (Table 7) the same
pass also records the cosine similarity between consecutive blocks' attention output
(``cos_attn``), MLP output (``cos_mlp``) and hidden state (``cos_hidden``) at that token.
Forward hooks capture every layer during a single pass, so L layers cost one forward, not L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from adainfer.models.arch import DecoderParts

if TYPE_CHECKING:
    from adainfer.probes import Probe

RECORDED = ("gap", "top_prob", "cos_attn", "cos_mlp", "cos_hidden")
FEATURES = ("gap", "top_prob")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "base": FEATURES,
    "attn": (*FEATURES, "cos_attn"),  # the paper's "+attn"
    "mlp": (*FEATURES, "cos_mlp"),
    "hidden": (*FEATURES, "cos_hidden"),
    "all": RECORDED,
}
# Bumped whenever what a trace records changes, so old traces are never reused.
RECORD_VERSION = "logit-lens-v1:" + ",".join(RECORDED)


def _last_token(output, batch: torch.Tensor, last: torch.Tensor, width: int) -> torch.Tensor:
    hidden = output[0] if isinstance(output, tuple) else output
    if hidden.dim() == 2:  # blocks that flatten [batch * seq, hidden] (OPT's MLP)
        hidden = hidden.view(len(batch), width, -1)
    return hidden[batch, last].float()


def _consecutive_cosine(states: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """cos(x_l, x_{l-1}) along dim 1; layer 1 compares with ``first`` (0 when None)."""
    cos = F.cosine_similarity(states[:, 1:], states[:, :-1], dim=-1)
    head = (
        F.cosine_similarity(states[:, 0], first, dim=-1)
        if first is not None
        else torch.zeros_like(cos[:, 0])
    )
    return torch.cat([head[:, None], cos], dim=1)


@torch.no_grad()
def probe_layers(
    parts: DecoderParts,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    probe: Probe | None = None,
    also: tuple[Probe, ...] = (),
) -> dict[str, torch.Tensor]:
    """Features of the last real token at every layer, each of shape [batch, layers].

    ``gap``, ``top_prob`` and the argmax are read through ``probe`` (default: the logit lens;
    see :mod:`adainfer.probes`); the cosine features describe the model's own states. Each probe
    in ``also`` reads the same hidden states too (keys ``also<i>:gap`` ...): one forward pass
    for several probes.
    Padding must be on the right: the last real token is found from ``attention_mask``.
    """
    batch = torch.arange(input_ids.shape[0], device=input_ids.device)
    last = attention_mask.sum(dim=1) - 1
    width = input_ids.shape[1]
    captured: dict[str, list[torch.Tensor]] = {"hidden": [], "attn": [], "mlp": [], "input": []}

    def keeper(key: str):
        def hook(_module, _args, output):
            captured[key].append(_last_token(output, batch, last, width))

        return hook

    def keep_input(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured["input"].append(_last_token(hidden, batch, last, width))

    handles = [parts.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    for i, layer in enumerate(parts.layers):
        handles.append(layer.register_forward_hook(keeper("hidden")))
        handles.append(parts.attention(i).register_forward_hook(keeper("attn")))
        handles.append(parts.mlp(i).register_forward_hook(keeper("mlp")))
    try:
        parts.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    hidden = torch.stack(captured["hidden"], dim=1)  # [batch, layers, hidden]
    out = read_layers(parts, hidden, probe) | {
        "cos_attn": _consecutive_cosine(torch.stack(captured["attn"], dim=1), None),
        "cos_mlp": _consecutive_cosine(torch.stack(captured["mlp"], dim=1), None),
        "cos_hidden": _consecutive_cosine(hidden, captured["input"][0]),
    }
    for i, other in enumerate(also):  # more probes of the same forward pass
        out |= {f"also{i}:{k}": v for k, v in read_layers(parts, hidden, other).items()}
    return out


def read_layers(
    parts: DecoderParts, hidden: torch.Tensor, probe: Probe | None = None
) -> dict[str, torch.Tensor]:
    """``gap``, ``top_prob`` and ``argmax`` of hidden states [batch, layers, h] through a probe."""
    read = hidden if probe is None else probe.translate(hidden)
    gap, top_prob, argmax, _ = readout(parts, read)
    return {"gap": gap, "top_prob": top_prob, "argmax": argmax}


def readout(parts: DecoderParts, read: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Final norm + LM head on (translated) hidden states [..., h], softmax, top-2:
    (gap, top_prob, argmax, float logits) — the per-layer features of the paper."""
    logits = parts.probe_logits(read.to(parts.lm_head.weight.dtype)).float()
    top = logits.softmax(dim=-1).topk(2, dim=-1)
    return top.values[..., 0] - top.values[..., 1], top.values[..., 0], top.indices[..., 0], logits


@dataclass
class LayerRecords:
    """Probe outputs of N instances at L layers: arrays [N, L] plus per-instance columns."""

    values: dict[str, np.ndarray]  # feature name -> [N, L] float32 (see RECORDED)
    argmax: np.ndarray  # [N, L] token id predicted at each layer
    gold: np.ndarray  # [N] gold answer's first token id
    seq_len: np.ndarray  # [N] prompt length in tokens

    @property
    def gap(self) -> np.ndarray:
        return self.values["gap"]

    @property
    def top_prob(self) -> np.ndarray:
        return self.values["top_prob"]

    @property
    def num_instances(self) -> int:
        return self.argmax.shape[0]

    @property
    def num_layers(self) -> int:
        return self.argmax.shape[1]

    @property
    def labels(self) -> np.ndarray:
        """Eq. 1's y_l: 1 where layer l's argmax is the gold token."""
        return (self.argmax == self.gold[:, None]).astype(np.int64)

    def features(self, names: tuple[str, ...] = FEATURES) -> np.ndarray:
        """Feature tensor [N, L, F] in the order of ``names``."""
        return np.stack([self.values[name] for name in names], axis=-1)

    def to_frame(self) -> pd.DataFrame:
        """Long table, one row per (instance, layer); layers are numbered from 1."""
        n, L = self.argmax.shape
        return pd.DataFrame(
            {
                "instance": np.repeat(np.arange(n), L),
                "layer": np.tile(np.arange(1, L + 1), n),
                **{name: self.values[name].ravel() for name in self.values},
                "argmax_token": self.argmax.ravel(),
                "label": self.labels.ravel(),
                "gold_token": np.repeat(self.gold, L),
                "seq_len": np.repeat(self.seq_len, L),
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> LayerRecords:
        """Inverse of :meth:`to_frame` (rows ordered by instance, then layer)."""
        n = int(frame["instance"].max()) + 1
        L = int(frame["layer"].max())

        def grid(column: str) -> np.ndarray:
            return frame[column].to_numpy().reshape(n, L)

        names = [c for c in RECORDED if c in frame]
        return cls(
            values={name: grid(name) for name in names},
            argmax=grid("argmax_token"),
            gold=frame["gold_token"].to_numpy()[::L].copy(),
            seq_len=frame["seq_len"].to_numpy()[::L].copy(),
        )

    def take(self, rows: np.ndarray) -> LayerRecords:
        """The instances at ``rows`` (indices or a boolean mask), in that order."""
        return LayerRecords(
            {k: v[rows] for k, v in self.values.items()},
            self.argmax[rows],
            self.gold[rows],
            self.seq_len[rows],
        )

    @staticmethod
    def concat(parts: list[LayerRecords]) -> LayerRecords:
        """Instances of several record sets (same layer count) stacked together."""
        return LayerRecords(
            values={k: np.concatenate([p.values[k] for p in parts]) for k in parts[0].values},
            argmax=np.concatenate([p.argmax for p in parts]),
            gold=np.concatenate([p.gold for p in parts]),
            seq_len=np.concatenate([p.seq_len for p in parts]),
        )
