"""Scores of one exit policy on test layer records: the metrics every run logs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adainfer.decide.flops import flops_ratio
from adainfer.decide.records import LayerRecords


@dataclass
class ExitResult:
    exit_layer: np.ndarray  # [N], 1-based
    prediction: np.ndarray  # [N] token id at the exit layer
    full_prediction: np.ndarray  # [N] token id at the last layer

    def metrics(self, records: LayerRecords, hidden_size: int, vocab_size: int) -> dict[str, float]:
        """acc_full, acc, exit_layer_mean, exit_layer_var, flops_ratio (MLflow keys)."""
        ratio = flops_ratio(
            self.exit_layer, records.num_layers, hidden_size, records.seq_len, vocab_size
        )
        return {
            "acc_full": float(np.mean(self.full_prediction == records.gold)),
            "acc": float(np.mean(self.prediction == records.gold)),
            "exit_layer_mean": float(np.mean(self.exit_layer)),
            "exit_layer_var": float(np.var(self.exit_layer)),
            "flops_ratio": float(np.mean(ratio)),
        }

    def accuracy_drop(self, gold: np.ndarray) -> float:
        """The full model's accuracy minus the exits' (positive: exiting lost accuracy)."""
        return float(np.mean(self.full_prediction == gold) - np.mean(self.prediction == gold))


def apply_exits(records: LayerRecords, exit_layer: np.ndarray) -> ExitResult:
    """Each instance's prediction is the argmax token at its exit layer."""
    rows = np.arange(records.num_instances)
    return ExitResult(
        exit_layer=exit_layer,
        prediction=records.argmax[rows, exit_layer - 1],
        full_prediction=records.argmax[:, -1],
    )


def layer_accuracy(records: LayerRecords) -> np.ndarray:
    """Accuracy of exiting every instance at layer l, for l = 1..L (the paper's Fig. 1)."""
    return records.labels.mean(axis=0)


def layer_agreement(records: LayerRecords) -> np.ndarray:
    """Share of instances whose layer-l argmax is already the last layer's, for l = 1..L:
    how well the probe reads the model's final answer off each layer (1.0 at the last)."""
    return (records.argmax == records.argmax[:, -1:]).mean(axis=0)


def agreement_metrics(records: LayerRecords) -> dict[str, float]:
    """``agree_mean`` over layers 1..L-1, and ``agree_half_layer``: the first layer where at
    least half of the instances already agree with the last layer."""
    curve = layer_agreement(records)
    return {
        "agree_mean": float(curve[:-1].mean()) if len(curve) > 1 else 1.0,
        "agree_half_layer": float(np.argmax(curve >= 0.5) + 1),
    }
