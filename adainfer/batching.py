"""How prompts go through the LLM: sorted by length (little padding), right-padded, each batch
carrying its prompts' indices so results go back in input order. One path for the feature
extraction (:mod:`adainfer.runner`), the tuned lens's fit (:mod:`adainfer.probes`) and the
early-exit engine (:mod:`adainfer.engine`), so all three see the same batches, on the device
the model was put on once (:class:`LLMPass`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from adainfer.errors import AdaInferError
from adainfer.models.placement import dispatched, place

# Lightning precisions that convert the weights (the others run them in an autocast context).
WEIGHT_PRECISIONS = ("16-true", "bf16-true", "64-true")


def length_order(input_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Prompt indices, shortest prompt first (stable: equal lengths keep their order)."""
    return np.array(sorted(range(len(input_ids)), key=lambda i: len(input_ids[i])), dtype=int)


def pad_right(input_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a batch, right-padded to its longest prompt (see
    ``models.loading`` for why right padding)."""
    width = max(len(ids) for ids in input_ids)
    ids_out = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, ids in enumerate(input_ids):
        ids_out[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return ids_out, mask


def pad_left(input_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) left-padded to the longest prompt: generation's layout
    (:mod:`adainfer.engine.generation`), where every row's next token goes in the same column."""
    width = max(len(ids) for ids in input_ids)
    ids_out = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, ids in enumerate(input_ids):
        ids_out[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return ids_out, mask


def collate(pad_id: int) -> Callable[[list[tuple[int, list[int]]]], dict[str, torch.Tensor]]:
    """A DataLoader ``collate_fn`` for ``(index, token ids)`` items: :func:`pad_right` plus
    the indices."""

    def collate_items(items: list[tuple[int, list[int]]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_right([ids for _, ids in items], pad_id)
        index = torch.tensor([i for i, _ in items])
        return {"input_ids": input_ids, "attention_mask": mask, "index": index}

    return collate_items


def length_sorted_loader(loaded: Any, encoded: Any, batch_size: int) -> DataLoader:
    """Batches of ``encoded``'s prompts (an :class:`~adainfer.encoding.EncodedPrompts`) in
    :func:`length_order`, padded with ``loaded``'s pad token (a
    :class:`~adainfer.models.loading.LoadedModel`); each carries its prompts' indices."""
    order = length_order(encoded.input_ids)
    return DataLoader(
        [(int(i), encoded.input_ids[i]) for i in order],
        batch_size=batch_size,
        collate_fn=collate(loaded.tokenizer.pad_token_id),
    )


def probe_trainer(trainer_kwargs: dict[str, Any] | None = None) -> L.Trainer:
    """A Trainer for inference passes (no logger, no checkpoints); ``trainer.*`` on top."""
    return L.Trainer(
        **{
            "accelerator": "auto",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            **(trainer_kwargs or {}),
        }
    )


def on_trainer_device(loaded: Any, trainer: L.Trainer) -> torch.device:
    """Put ``loaded``'s model (a :class:`~adainfer.models.loading.LoadedModel`) on the device
    ``trainer`` runs on, in the weight precision it asks for, as Lightning would, and leave it
    there (:func:`adainfer.models.placement.place`); return where the model's inputs go."""
    model = loaded.model
    if not dispatched(model):
        trainer.precision_plugin.convert_module(model)
    elif str(trainer.precision) in WEIGHT_PRECISIONS:
        raise AdaInferError(
            f"trainer.precision={trainer.precision} converts the weights, which model "
            f"{loaded.name!r}, spread over devices by its device_map, cannot have done",
            "load it in that precision instead (model.dtype=bfloat16) with trainer.precision=null",
        )
    return place(loaded, trainer.strategy.root_device)


class LLMPass(L.LightningModule):
    """A Lightning module for one inference pass of an LLM that it uses but does not own.

    Lightning moves the module it is handed to its device at every ``predict`` and back to the
    CPU when the pass ends (``Strategy.teardown``), and moves it whole to one device, which a
    model spread over several by a device map cannot survive. So the LLM is no submodule of
    this one (``loaded`` is a plain attribute): Lightning runs the loop, moves the batches and
    provides the precision context and the progress bar; :func:`on_trainer_device` puts the LLM
    on the Trainer's device once, when a pass starts, and there it stays for the next pass and
    for the early-exit engine.
    """

    def __init__(self, loaded: Any) -> None:
        super().__init__()
        self.loaded = loaded
        self.parts = loaded.parts
        self.input_device = torch.device("cpu")

    def on_predict_start(self) -> None:
        self.input_device = on_trainer_device(self.loaded, self.trainer)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's token ids and attention mask, on the device the model takes them on."""
        return (
            batch["input_ids"].to(self.input_device),
            batch["attention_mask"].to(self.input_device),
        )
