"""The paper's rule without training: stop once ``gap`` exceeds a threshold (0.8)."""

from __future__ import annotations

import numpy as np

from adainfer.policies.base import ExitPolicy
from adainfer.records import LayerRecords


class GapThreshold(ExitPolicy):
    name = "gap"
    causal = True
    default_threshold = 0.8

    def scores(self, records: LayerRecords) -> np.ndarray:
        return records.gap
