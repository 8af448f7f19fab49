"""Reference bounds that look at the answer: not deployable, but they say what is possible."""

from __future__ import annotations

import numpy as np

from adainfer.decide.policies.base import NOMINAL_DECISION_FLOPS, ExitPolicy
from adainfer.decide.records import LayerRecords


class OracleGold(ExitPolicy):
    """Stop at the first layer whose argmax is the gold token (the most any policy can save
    while being right; instances the model never gets right run to the end)."""

    name = "oracle_gold"
    deployable = False
    not_online_because = "the oracle looks at the gold answer"

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        return NOMINAL_DECISION_FLOPS  # a reference bound, not deployable: a nominal price

    def scores(self, records: LayerRecords) -> np.ndarray:
        return records.labels.astype(np.float64)


class OracleConsistent(ExitPolicy):
    """Stop at the earliest layer after which the prediction never changes: the least compute
    with the full model's output unchanged."""

    name = "oracle_consistent"
    deployable = False
    not_online_because = "the oracle compares every layer with the last one"

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        return NOMINAL_DECISION_FLOPS  # a reference bound, not deployable: a nominal price

    def scores(self, records: LayerRecords) -> np.ndarray:
        same = records.argmax == records.argmax[:, -1:]
        # Settled at l when every layer from l to the last agrees with the last.
        settled = np.flip(np.logical_and.accumulate(np.flip(same, axis=1), axis=1), axis=1)
        return settled.astype(np.float64)
