"""Which exit policies can decide online, and how they decide one layer at a time.

In trace evaluation a policy sees all L layers of an instance at once. The engine only has the
layers it has run, so it can serve only policies whose decision at layer l reads layer l alone
(``svm``, ``logreg``, ``gap``, ``state``, ``never``, and :class:`FixedExit`). For those, a
one-layer view of the features (or hidden states) — the same numbers, shape [n, 1] — gives
exactly the trace decision. The CRF
(Viterbi or marginals over the whole layer sequence) and the oracles (the gold answer, the last
layer's prediction) look ahead and are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from adainfer.decide.policies import ExitPolicy
from adainfer.decide.policies.base import FirstLayer, Schedule, check_online
from adainfer.decide.records import LayerRecords
from adainfer.errors import AdaInferError


class FixedExit(ExitPolicy):
    """Stop every instance after layer ``layer`` (a fixed-depth truncation; no features).

    The reference point for the engine's speed: it needs no probe until its exit layer, so
    its cost is the layers it runs plus one LM head per instance.
    """

    name = "fixed"
    causal: ClassVar[bool] = True

    def __init__(
        self,
        layer: int,
        features: tuple[str, ...] = (),
        threshold: float | None = None,
        first_layer: FirstLayer = 1,
        schedule: Schedule = "all",
    ):
        super().__init__(features, threshold, first_layer, schedule)
        if layer < 1:
            raise AdaInferError(f"FixedExit(layer={layer}): layers count from 1", "pass 1..L")
        self.layer = int(layer)

    def scores(self, records: LayerRecords) -> np.ndarray:
        out = np.full((records.num_instances, records.num_layers), -np.inf)
        out[:, self.layer - 1 :] = np.inf  # only the first of these counts (first_exit)
        return out

    def online_stop(self, layer: int, view: LayerRecords | None, rows: int) -> np.ndarray:
        """The decision at ``layer`` for ``rows`` instances (needs no features)."""
        return np.full(rows, layer >= self.layer)

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        return 0.0  # it scores nothing: the layer count decides

    def params(self) -> dict[str, Any]:
        return super().params() | {"layer": self.layer}


def check_policy(policy: ExitPolicy, num_layers: int) -> None:
    """Refuse policies the engine cannot run on this model, with the reason and the fix."""
    check_online(policy)
    if policy.num_layers is not None and policy.num_layers != num_layers:
        raise AdaInferError(
            f"policy {policy.name!r} was fitted on records of {policy.num_layers} layers, but "
            f"this model has {num_layers}",
            "fit the policy on layer records of this model "
            "(adainfer.extract.passes.extract_records)",
        )
    if not 1 <= policy.first_layer <= num_layers:
        raise AdaInferError(
            f"policy {policy.name!r} has first_layer={policy.first_layer}, outside 1..{num_layers}",
            f"set first_layer to a layer of this model (1..{num_layers})",
        )
    if policy.learned and policy.num_layers is None:
        raise AdaInferError(
            f"policy {policy.name!r} is not fitted",
            "call policy.fit(records) with layer records of this model first",
        )


def one_layer_view(
    values: dict[str, np.ndarray],
    argmax: np.ndarray,
    seq_len: np.ndarray,
    hidden: np.ndarray | None = None,
):
    """Layer records of shape [n, 1]: what a per-layer policy sees of one layer (``hidden``:
    the states [n, 1, h], for a policy that reads them)."""
    return LayerRecords(
        values={name: column[:, None] for name, column in values.items()},
        argmax=argmax[:, None],
        gold=np.full(len(argmax), -1, dtype=np.int64),  # unknown online; no online policy reads it
        seq_len=seq_len,
        hidden=hidden,
    )


def decide(policy: ExitPolicy, layer: int, view: LayerRecords | None, rows: int) -> np.ndarray:
    """Boolean [rows]: which of the active instances stop after ``layer`` (1-based)."""
    if policy.never_stops():
        return np.zeros(rows, dtype=bool)
    return np.asarray(policy.online_stop(layer, view, rows), dtype=bool)
