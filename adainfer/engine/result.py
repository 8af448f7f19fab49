"""What the engine returns, and the log of the work it did (for ``adainfer.decide.costs``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adainfer.choices import RECORDED
from adainfer.decide.costs import BatchWork  # noqa: F401 - re-exported: the work log it prices
from adainfer.decide.records import LayerRecords
from adainfer.engine.online import one_layer_view


@dataclass
class EngineResult:
    """Per prompt (in input order): where it stopped, what it predicted, what it saw."""

    exit_layer: np.ndarray  # [N] 1-based
    prediction: np.ndarray  # [N] argmax token at the exit layer
    values: dict[str, np.ndarray]  # feature -> [N, L] float32; NaN where not probed/computed
    argmax: np.ndarray  # [N, L] token id per probed layer; -1 where not probed
    seq_len: np.ndarray  # [N] prompt length in tokens
    work: list[BatchWork]
    logits: np.ndarray | None = None  # [N, V] float32 at the exit layer (keep_logits=True)

    @property
    def num_layers(self) -> int:
        return self.argmax.shape[1]

    @staticmethod
    def merge(parts: list[tuple[np.ndarray, EngineResult]]) -> EngineResult:
        """One result from per-batch results, each with its prompts' input positions."""
        n = sum(len(index) for index, _ in parts)
        results = [res for _, res in parts]

        def merged(arrays: list[np.ndarray]) -> np.ndarray:
            out = np.empty((n, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
            for (index, _), array in zip(parts, arrays, strict=True):
                out[index] = array
            return out

        keep_logits = results[0].logits is not None
        return EngineResult(
            exit_layer=merged([r.exit_layer for r in results]),
            prediction=merged([r.prediction for r in results]),
            values={k: merged([r.values[k] for r in results]) for k in results[0].values},
            argmax=merged([r.argmax for r in results]),
            seq_len=merged([r.seq_len for r in results]),
            work=[w for r in results for w in r.work],
            logits=merged([r.logits for r in results]) if keep_logits else None,
        )


class Outputs:
    """What one batch's run fills in, per batch row: features of each probed layer, exit
    layer, logits at the exit (the engine's working copy of an :class:`EngineResult`)."""

    def __init__(self, batch: int, num_layers: int, vocab: int | None) -> None:
        self.values = {k: np.full((batch, num_layers), np.nan, np.float32) for k in RECORDED}
        self.argmax = np.full((batch, num_layers), -1, dtype=np.int64)
        self.exit_layer = np.zeros(batch, dtype=np.int64)
        self.logits = None if vocab is None else np.zeros((batch, vocab), dtype=np.float32)

    def view(self, rows, index: int) -> LayerRecords:
        """What a per-layer policy sees of layer ``index`` for the running ``rows``."""
        values = {name: column[rows.alive, index] for name, column in self.values.items()}
        return one_layer_view(values, self.argmax[rows.alive, index], rows.seq_len)

    def finish(self, finished: np.ndarray, depth: int, logits: torch.Tensor | None) -> None:
        self.exit_layer[finished] = depth
        if logits is not None:
            self.logits[finished] = logits.cpu().numpy()

    def result(self, seq_len: np.ndarray, work: BatchWork) -> EngineResult:
        prediction = self.argmax[np.arange(len(self.exit_layer)), self.exit_layer - 1]
        return EngineResult(
            self.exit_layer, prediction, self.values, self.argmax, seq_len, [work], self.logits
        )


@dataclass
class TokenWork:
    """What each generated token of one prompt cost, token by token (index t: the t-th new
    token). Token 1 is read off the prompt's full-depth prefill (exit layer L, one head); token
    t > 1 off the step that ran token t - 1 through the layers."""

    exit_layer: np.ndarray  # [T] 1-based layer the token was read at = decoder layers run
    probes: np.ndarray  # [T] probe calls (norm + LM head, a tuned lens's translator)
    classified: np.ndarray  # [T] policy calls (scored layers)
    kv_fills: np.ndarray  # [T] skipped layers' K/V entries computed in the token's step
    context: np.ndarray  # [T] real tokens the step's queries attend to (prompt + new, itself incl.)


@dataclass
class Generation:
    """Per prompt (in input order): the new tokens, their text, why they ended, their work."""

    tokens: list[list[int]]  # new token ids, the stop / end-of-sequence token included
    text: list[str]  # the new tokens' text, up to the first stop string (excluded)
    finish: list[str]  # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    work: list[TokenWork]
    prompt_len: np.ndarray  # [N] prefill tokens per prompt (run at full depth)
    steps: list[BatchWork]  # every decoding step's layer-by-layer log, batch by batch
    kv_fill: str = "propagate"

    @property
    def exit_layers(self) -> list[np.ndarray]:
        return [w.exit_layer for w in self.work]
