"""One inference pass over one device or several: every batch's output, back in one process.

With ``trainer.devices=N > 1`` Lightning runs the pass data parallel (``ddp_spawn``,
:func:`adainfer.llm.batching.probe_trainer`): its distributed sampler deals the batches out to N
worker processes, and a strategy that spawns its workers returns nothing from
``Trainer.predict``. Each worker therefore hands its outputs to :class:`RankOutputs`, Lightning's
prediction-writer callback, which saves them as one file per rank in a folder of the calling
process; :func:`predict_batches` reads them back. The outputs carry their prompts' indices, so
whoever stacks them puts rows back in the prompts' order and drops any row a sampler dealt out
twice (:func:`first_of_each`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from adainfer.errors import AdaInferError
from adainfer.llm.batching import probe_trainer


class RankOutputs(BasePredictionWriter):
    """Saves a worker's predict outputs, all batches at the end of the pass, as
    ``<folder>/rank<global rank>.pt``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="epoch")
        self.folder = Path(folder)

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        torch.save(predictions, self.folder / f"rank{trainer.global_rank}.pt")


def predict_batches(
    module: L.LightningModule, loader: DataLoader, trainer_kwargs: dict[str, Any] | None
) -> list[Any]:
    """``module``'s predict output for every batch of ``loader``, on the devices
    ``trainer_kwargs`` asks for (``trainer.*``); on several, in rank order, then each rank's
    batches in the order it ran them."""
    trainer = probe_trainer(trainer_kwargs)
    if trainer.world_size == 1:
        return trainer.predict(module, dataloaders=loader)
    with tempfile.TemporaryDirectory(prefix="adainfer-ranks-") as tmp:
        trainer = probe_trainer(trainer_kwargs, callbacks=[RankOutputs(Path(tmp))])
        try:
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        except BaseException:  # a signal (adainfer.run.interrupts), a worker's error
            stop_workers(trainer)
            raise
        files = [Path(tmp) / f"rank{rank}.pt" for rank in range(trainer.world_size)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise AdaInferError(
                f"the {trainer.world_size}-device pass returned no outputs from {missing}",
                "run it with trainer.devices=1 and report the log of this one",
            )
        return [batch for f in files for batch in torch.load(f, weights_only=True)]


def stop_workers(trainer: L.Trainer, grace_s: float = 5.0) -> None:
    """End the worker processes the Trainer's launcher spawned and that still run. They are
    not daemons: left alone, they would finish their share of the pass, and Python would wait
    for them before the interrupted job could exit. SIGTERM first, SIGKILL after ``grace_s``
    (inside ``predict`` Lightning's own SIGTERM handler only logs the signal)."""
    workers = [p for p in getattr(trainer.strategy.launcher, "procs", []) if p.is_alive()]
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(grace_s)
        if worker.is_alive():
            worker.kill()
            worker.join()


def first_of_each(index: np.ndarray, n: int) -> np.ndarray:
    """Positions in ``index`` (the prompt index of each stacked row) of the first row of every
    prompt ``0..n-1``, in prompt order: rows a distributed sampler repeated to even out the
    ranks are dropped. A prompt with no row is an error."""
    prompts, first = np.unique(index, return_index=True)
    if len(prompts) != n or (n and (prompts[0] != 0 or prompts[-1] != n - 1)):
        raise AdaInferError(
            f"the pass returned rows for {len(prompts)} of {n} prompts",
            "run it with trainer.devices=1 and report the log of this one",
        )
    return first
