"""Layer records: what a full-depth pass read off every layer of every prompt.

The contract between the LLM pass (:mod:`adainfer.llm.readout`, :mod:`adainfer.extract.passes`)
and every decision made on its output (policies, risk control, evaluation). Plain NumPy and
pandas, so policies and the code that scores them load without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from adainfer.choices import FEATURES, LABEL_FEATURES, RECORDED

# Bumped whenever what a trace records changes, so old traces are never reused.
RECORD_VERSION = "logit-lens-v1:" + ",".join(RECORDED)
# How hidden states are kept, when a policy reads them (``TraceKey.hidden`` records it): the last
# real token's output of every decoder layer, float16, clamped to float16's finite range.
HIDDEN_FORMAT = "last-token-float16"


@dataclass
class LayerRecords:
    """Probe outputs of N instances at L layers: arrays [N, L] plus per-instance columns."""

    values: dict[str, np.ndarray]  # feature name -> [N, L] float32 (see RECORDED)
    argmax: np.ndarray  # [N, L] token id predicted at each layer
    gold: np.ndarray  # [N] gold answer's first token id
    seq_len: np.ndarray  # [N] prompt length in tokens
    # [N, L, h] float16: the last token's hidden state after each layer, kept only for a policy
    # that reads it (``ExitPolicy.reads_hidden``); None otherwise. Not part of :meth:`to_frame`.
    hidden: np.ndarray | None = None
    # [K] a task with fixed labels: each label's gold token, whose rows of the LM head a
    # label-row read reads (``values`` then hold LABEL_FEATURES); None for free answers
    label_ids: np.ndarray | None = None

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
        """Long table, one row per (instance, layer); layers are numbered from 1. Without the
        hidden states (the trace store keeps those beside it: :mod:`adainfer.extract.store`)."""
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

        names = [c for c in RECORDED + LABEL_FEATURES if c in frame]
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
            None if self.hidden is None else self.hidden[rows],
            self.label_ids,
        )

    @staticmethod
    def concat(parts: list[LayerRecords]) -> LayerRecords:
        """Instances of several record sets (same layer count) stacked together; hidden states
        only when every part has them."""
        hidden = [p.hidden for p in parts]
        return LayerRecords(
            values={
                k: np.concatenate([p.values[k] for p in parts])
                for k in parts[0].values
                if all(k in p.values for p in parts)  # label features only where all have them
            },
            argmax=np.concatenate([p.argmax for p in parts]),
            gold=np.concatenate([p.gold for p in parts]),
            seq_len=np.concatenate([p.seq_len for p in parts]),
            hidden=None if any(h is None for h in hidden) else np.concatenate(hidden),
            label_ids=_same_labels(parts),
        )


def _same_labels(parts: list[LayerRecords]) -> np.ndarray | None:
    """The parts' label ids when they all have the same ones (else None: no label-row read)."""
    first = parts[0].label_ids
    if first is None or any(
        p.label_ids is None or not np.array_equal(p.label_ids, first) for p in parts
    ):
        return None
    return first
