"""The Lightning side: a LightningModule whose predict step probes every layer of a batch.

The Trainer owns the loop, precision and the progress bar; the model is put on the Trainer's
device once and stays there (:class:`~adainfer.llm.batching.LLMPass`); the module only turns a
padded batch into per-layer features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adainfer.choices import LABEL_FEATURES, RECORDED
from adainfer.decide.records import LayerRecords
from adainfer.llm.batching import LLMPass, length_sorted_loader
from adainfer.llm.encoding import EncodedPrompts
from adainfer.llm.gather import first_of_each, predict_batches
from adainfer.llm.lenses import Lens, LogitLens, check_probe
from adainfer.llm.loading import LoadedModel
from adainfer.llm.readout import probe_layers


class LayerProbeModule(LLMPass):
    """Runs the frozen LLM once per batch and returns every layer's features through ``probe``."""

    def __init__(
        self,
        loaded: LoadedModel,
        probe: Lens | None = None,
        also: tuple[Lens, ...] = (),
        hidden_states: bool = False,
        label_ids: np.ndarray | None = None,
    ) -> None:
        super().__init__(loaded)
        self.probe = probe or LogitLens()
        self.also = also
        self.hidden_states = hidden_states
        self.label_ids = None if label_ids is None else torch.as_tensor(label_ids)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        ids, mask = self.inputs(batch)
        out = probe_layers(
            self.parts, ids, mask, self.probe, self.also, self.hidden_states, self.label_ids
        )
        return {key: value.cpu() for key, value in out.items()} | {"index": batch["index"].cpu()}


def extract_records(
    loaded: LoadedModel,
    encoded: EncodedPrompts,
    batch_size: int,
    trainer_kwargs: dict[str, Any] | None = None,
    probe: Lens | None = None,
    hidden_states: bool = False,
) -> LayerRecords:
    """Per-layer features of every prompt through ``probe`` (default: the logit lens), from one
    forward pass per batch; results in the prompts' order. ``trainer.devices=N`` shares the
    batches out to N data-parallel workers (:mod:`adainfer.llm.gather`): every prompt is padded
    in the same batch as on one device, so the records are the same. With ``hidden_states``,
    the records also hold the last token's hidden state at every layer (``LayerRecords.hidden``)."""
    probes = [probe]
    return extract_records_multi(
        loaded, encoded, batch_size, trainer_kwargs, probes, hidden_states
    )[0]


def extract_records_multi(
    loaded: LoadedModel,
    encoded: EncodedPrompts,
    batch_size: int,
    trainer_kwargs: dict[str, Any] | None,
    probes: list[Lens | None],
    hidden_states: bool = False,
) -> list[LayerRecords]:
    """:func:`extract_records` through several probes at once: one forward pass per batch (the
    hidden states, when asked, are the model's own: the same array in every probe's records)."""
    probes = [p or LogitLens() for p in probes]
    for probe in probes:
        check_probe(probe, loaded.num_layers, loaded.hidden_size, loaded.identity)
    loader = length_sorted_loader(loaded, encoded, batch_size)
    labels = encoded.label_ids
    module = LayerProbeModule(loaded, probes[0], tuple(probes[1:]), hidden_states, labels)
    batches = predict_batches(module, loader, trainer_kwargs)
    index = torch.cat([b["index"] for b in batches]).numpy()
    rows = first_of_each(index, len(encoded.input_ids))

    def in_order(key: str) -> np.ndarray:
        return torch.cat([b[key] for b in batches]).numpy()[rows]

    read_by_probe = ("gap", "top_prob") + (LABEL_FEATURES if labels is not None else ())
    values = {key: in_order(key) for key in RECORDED + read_by_probe[2:]}
    hidden = in_order("hidden") if hidden_states else None
    facts = (encoded.gold, encoded.seq_len, hidden, labels)
    out = [LayerRecords(values, in_order("argmax"), *facts)]
    for i in range(len(probes) - 1):
        read = {k: in_order(f"also{i}:{k}") for k in read_by_probe}
        cosines = {k: values[k] for k in RECORDED if k not in read}  # the model's, not a probe's
        out.append(LayerRecords(read | cosines, in_order(f"also{i}:argmax"), *facts))
    return out
