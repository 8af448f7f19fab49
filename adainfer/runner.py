"""The Lightning side: a LightningModule whose predict step probes every layer of a batch.

The Trainer owns the loop, precision and the progress bar; the model is put on the Trainer's
device once and stays there (:class:`~adainfer.batching.LLMPass`); the module only turns a
padded batch into per-layer features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adainfer.batching import LLMPass, length_sorted_loader, probe_trainer
from adainfer.encoding import EncodedPrompts
from adainfer.features import RECORDED, LayerRecords, probe_layers
from adainfer.models.loading import LoadedModel
from adainfer.probes import LogitLens, Probe, check_probe


class LayerProbeModule(LLMPass):
    """Runs the frozen LLM once per batch and returns every layer's features through ``probe``."""

    def __init__(
        self, loaded: LoadedModel, probe: Probe | None = None, also: tuple[Probe, ...] = ()
    ) -> None:
        super().__init__(loaded)
        self.probe = probe or LogitLens()
        self.also = also

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        ids, mask = self.inputs(batch)
        out = probe_layers(self.parts, ids, mask, self.probe, self.also)
        return {key: value.cpu() for key, value in out.items()} | {"index": batch["index"].cpu()}


def extract_records(
    loaded: LoadedModel,
    encoded: EncodedPrompts,
    batch_size: int,
    trainer_kwargs: dict[str, Any] | None = None,
    probe: Probe | None = None,
) -> LayerRecords:
    """Per-layer features of every prompt through ``probe`` (default: the logit lens), from one
    forward pass per batch; results in the prompts' order."""
    return extract_records_multi(loaded, encoded, batch_size, trainer_kwargs, [probe])[0]


def extract_records_multi(
    loaded: LoadedModel,
    encoded: EncodedPrompts,
    batch_size: int,
    trainer_kwargs: dict[str, Any] | None,
    probes: list[Probe | None],
) -> list[LayerRecords]:
    """:func:`extract_records` through several probes at once: one forward pass per batch."""
    probes = [p or LogitLens() for p in probes]
    for probe in probes:
        check_probe(probe, loaded.num_layers, loaded.hidden_size)
    loader = length_sorted_loader(loaded, encoded, batch_size)
    module = LayerProbeModule(loaded, probes[0], tuple(probes[1:]))
    batches = probe_trainer(trainer_kwargs).predict(module, dataloaders=loader)
    index = torch.cat([b["index"] for b in batches]).numpy()

    def in_order(key: str) -> np.ndarray:
        stacked = torch.cat([b[key] for b in batches]).numpy()
        ordered = np.empty_like(stacked)
        ordered[index] = stacked
        return ordered

    values = {key: in_order(key) for key in RECORDED}
    out = [LayerRecords(values, in_order("argmax"), encoded.gold, encoded.seq_len)]
    for i in range(len(probes) - 1):
        read = {k: in_order(f"also{i}:{k}") for k in ("gap", "top_prob")}
        cosines = {k: values[k] for k in RECORDED if k not in read}  # the model's, not a probe's
        argmax = in_order(f"also{i}:argmax")
        out.append(LayerRecords(read | cosines, argmax, encoded.gold, encoded.seq_len))
    return out
