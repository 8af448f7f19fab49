"""One interface for every exit rule: fit on train layer records, decide per layer.

A policy marks, for each instance and layer, whether the instance may stop there; the exit
layer is the first marked layer, or the last layer when none is marked (the full model).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

from adainfer.features import FEATURES, LayerRecords

log = logging.getLogger(__name__)


def first_exit(stop: np.ndarray) -> np.ndarray:
    """1-based exit layer per row of a boolean [N, L] stop mask (L when never marked)."""
    L = stop.shape[1]
    return np.where(stop.any(axis=1), stop.argmax(axis=1) + 1, L)


class ExitPolicy(ABC):
    """Decides where each instance stops, from its per-layer features."""

    name: str = "policy"
    features: tuple[str, ...] = FEATURES

    def fit(self, records: LayerRecords) -> ExitPolicy:
        """Learn from the train split's (features_l, y_l) pairs; rules need no training."""
        return self

    @abstractmethod
    def stop_mask(self, records: LayerRecords) -> np.ndarray:
        """Boolean [N, L]: may instance n stop after layer l?"""

    def exit_layers(self, records: LayerRecords) -> np.ndarray:
        return first_exit(self.stop_mask(records))


class NeverExit(ExitPolicy):
    """The full model: never stops early."""

    name = "never"

    def stop_mask(self, records: LayerRecords) -> np.ndarray:
        return np.zeros((records.num_instances, records.num_layers), dtype=bool)


def single_class(labels: np.ndarray, policy: str) -> bool:
    """True (with a warning) when the training pairs hold one class only: nothing to learn."""
    classes = np.unique(labels)
    if len(classes) < 2:
        log.warning(
            "%s: every training pair has label %s, so there is nothing to learn; "
            "the policy never exits (full model)",
            policy,
            classes.tolist(),
        )
        return True
    return False
