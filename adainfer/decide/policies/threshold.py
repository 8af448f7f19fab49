"""The paper's rule without training: stop once ``gap`` exceeds a threshold (0.8)."""

from __future__ import annotations

import numpy as np

from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.records import LayerRecords


class GapThreshold(ExitPolicy):
    name = "gap"
    causal = True
    default_threshold = 0.8

    @property
    def reads(self) -> tuple[str, ...]:
        return ("gap",)  # whatever features it was given

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        return 1.0  # one compare

    def scores(self, records: LayerRecords) -> np.ndarray:
        return records.gap
