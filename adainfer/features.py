"""Per-layer features through the logit lens, from one full-depth forward pass.

After every decoder layer l, the final norm and LM head are applied to the last prompt token's
hidden state: ``P_l = softmax(W · norm(h_l))``. From P_l come ``gap`` (top-1 minus top-2
probability), ``top_prob`` and the argmax token. Forward hooks capture every layer's output
during a single pass, so L layers cost one forward, not L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from adainfer.models.arch import DecoderParts

FEATURES = ("gap", "top_prob")


@torch.no_grad()
def probe_layers(
    parts: DecoderParts, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Logit-lens features of the last real token at every layer, shape [batch, layers].

    Padding must be on the right: the last real token is found from ``attention_mask``.
    """
    batch = torch.arange(input_ids.shape[0], device=input_ids.device)
    last = attention_mask.sum(dim=1) - 1
    captured: list[torch.Tensor] = []

    def keep_last(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden[batch, last])

    handles = [layer.register_forward_hook(keep_last) for layer in parts.layers]
    try:
        parts.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    hidden = torch.stack(captured, dim=1)  # [batch, layers, hidden]
    logits = parts.probe_logits(hidden).float()
    top = logits.softmax(dim=-1).topk(2, dim=-1)
    return {
        "gap": top.values[..., 0] - top.values[..., 1],
        "top_prob": top.values[..., 0],
        "argmax": top.indices[..., 0],
    }


@dataclass
class LayerRecords:
    """Probe outputs of N instances at L layers: arrays [N, L] plus per-instance columns."""

    gap: np.ndarray
    top_prob: np.ndarray
    argmax: np.ndarray
    gold: np.ndarray  # [N] gold answer's first token id
    seq_len: np.ndarray  # [N] prompt length in tokens

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
        return np.stack([getattr(self, name) for name in names], axis=-1)

    def to_frame(self) -> pd.DataFrame:
        """Long table, one row per (instance, layer); layers are numbered from 1."""
        n, L = self.argmax.shape
        return pd.DataFrame(
            {
                "instance": np.repeat(np.arange(n), L),
                "layer": np.tile(np.arange(1, L + 1), n),
                "gap": self.gap.ravel(),
                "top_prob": self.top_prob.ravel(),
                "argmax_token": self.argmax.ravel(),
                "label": self.labels.ravel(),
                "gold_token": np.repeat(self.gold, L),
                "seq_len": np.repeat(self.seq_len, L),
            }
        )
