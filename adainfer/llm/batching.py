"""How prompts go through the LLM: sorted by length (little padding), right-padded, each batch
carrying its prompts' indices so results go back in input order. One path for the feature
extraction (:mod:`adainfer.extract.passes`), the tuned lens's fit (:mod:`adainfer.llm.lenses`) and
the early-exit engine (:mod:`adainfer.engine`), so all three see the same batches, on the device
the model was put on once (:class:`LLMPass`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adainfer.errors import AdaInferError
from adainfer.llm.placement import dispatched, place

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


class PaddedBatches(Dataset):
    """The batches of one pass as a data set: item ``i`` is the ``i``-th batch of
    :func:`length_order`, right-padded, with its prompts' indices (``index``).

    A batch is one item, so when Lightning shards a pass over several devices its
    distributed sampler deals out whole batches: every prompt is padded with the same
    neighbours, to the same width, on one device as on many, and its numbers do not change.
    """

    def __init__(self, input_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> None:
        order = length_order(input_ids)
        self.rows = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.input_ids = input_ids
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rows = self.rows[i]
        input_ids, mask = pad_right([self.input_ids[j] for j in rows], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask, "index": torch.tensor(rows)}


def length_sorted_loader(loaded: Any, encoded: Any, batch_size: int) -> DataLoader:
    """Batches of ``encoded``'s prompts (an :class:`~adainfer.llm.encoding.EncodedPrompts`) in
    :func:`length_order`, padded with ``loaded``'s pad token (a
    :class:`~adainfer.llm.loading.LoadedModel`); each carries its prompts' indices. The
    batches are made by :class:`PaddedBatches` (``batch_size=None``: one item, one batch)."""
    batches = PaddedBatches(encoded.input_ids, batch_size, loaded.tokenizer.pad_token_id)
    return DataLoader(batches, batch_size=None)


def device_count(devices: Any) -> int:
    """How many devices ``trainer.devices`` names: a count, or a list of ids."""
    return len(devices) if isinstance(devices, list | tuple) else int(devices)


def one_device(trainer_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``trainer_kwargs`` on one device (the first it names), for passes that keep their
    results on the module (the tuned lens's sums) or time one device (the engine)."""
    kwargs = dict(trainer_kwargs or {})
    devices = kwargs.get("devices", 1)
    kwargs["devices"] = list(devices)[:1] if isinstance(devices, list | tuple) else 1
    kwargs.pop("strategy", None)
    return kwargs


def probe_trainer(trainer_kwargs: dict[str, Any] | None = None, **extra: Any) -> L.Trainer:
    """A Trainer for inference passes (no logger, no checkpoints); ``trainer.*`` on top, then
    ``extra`` (e.g. callbacks). More than one device: data parallel with ``ddp_spawn``
    (unless a strategy is given), which starts its workers from inside a Hydra job, a
    notebook or pytest alike; Lightning's default, ``ddp``, would start the whole script
    (run.py, its MLflow run) again once per device."""
    kwargs = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        **(trainer_kwargs or {}),
        **extra,
    }
    if device_count(kwargs["devices"]) > 1:
        kwargs.setdefault("strategy", "ddp_spawn")
    return L.Trainer(**kwargs)


def on_trainer_device(loaded: Any, trainer: L.Trainer) -> torch.device:
    """Put ``loaded``'s model (a :class:`~adainfer.llm.loading.LoadedModel`) on the device
    ``trainer`` runs on, in the weight precision it asks for, as Lightning would, and leave it
    there (:func:`adainfer.llm.placement.place`); return where the model's inputs go."""
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
        self.input_device = torch.device("cpu")

    @property
    def parts(self) -> Any:
        """The LLM's decoder parts, asked of ``loaded`` each time: not held, so that pickling
        this module for data-parallel workers pickles the model only as ``loaded`` does."""
        return self.loaded.parts

    def on_predict_start(self) -> None:
        self.input_device = on_trainer_device(self.loaded, self.trainer)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's token ids and attention mask, on the device the model takes them on."""
        return (
            batch["input_ids"].to(self.input_device),
            batch["attention_mask"].to(self.input_device),
        )
