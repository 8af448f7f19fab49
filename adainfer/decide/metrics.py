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


def answer_metrics(records: LayerRecords, result: ExitResult) -> dict[str, float]:
    """What the verdict needs to say when a guarantee is odd (:mod:`adainfer.run.verdict`):

    - ``exit_answers_distinct``: distinct answers among the instances that exited early (0 when
      none did); 1 means every early exit gave the same token, whatever the prompt;
    - ``early_exit_share``: the share of instances that exited before the last layer;
    - ``acc_constant``: the accuracy of the best constant answer (the most common gold token),
      what a model at chance reaches;
    - ``acc_drop_se``: the standard error of the accuracy drop on these instances, the split's
      own sampling noise (the signed per-instance drop's standard deviation over sqrt(N));
    - ``test_instances``: N.
    """
    early = result.exit_layer < records.num_layers
    _, counts = np.unique(records.gold, return_counts=True)
    drop = (result.full_prediction == records.gold).astype(float) - (
        result.prediction == records.gold
    )
    n = max(records.num_instances, 1)
    return {
        "exit_answers_distinct": float(np.unique(result.prediction[early]).size),
        "early_exit_share": float(early.mean()) if early.size else 0.0,
        "acc_constant": float(counts.max() / n) if counts.size else 0.0,
        "acc_drop_se": float(drop.std() / np.sqrt(n)) if drop.size else 0.0,
        "test_instances": float(records.num_instances),
    }
