"""A linear-chain CRF over the layer sequence (sklearn-crfsuite), as in the paper.

Decisions use the Viterbi labelling by default (stop at the first layer labelled 1); with a
``threshold`` they use the posterior marginal P(y_l = 1) instead, which is also the score that
trade-off curves sweep. The model is saved as crfsuite's own model file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import sklearn_crfsuite

from adainfer.choices import FEATURES
from adainfer.decide.policies.base import (
    NOMINAL_DECISION_FLOPS,
    ExitPolicy,
    FirstLayer,
    Schedule,
    single_class,
)
from adainfer.decide.records import LayerRecords


def _sequences(records: LayerRecords, names: tuple[str, ...]) -> list[list[dict[str, float]]]:
    feats = records.features(names)
    return [
        [{name: float(value) for name, value in zip(names, layer, strict=True)} for layer in seq]
        for seq in feats
    ]


class CRFPolicy(ExitPolicy):
    name = "crf"
    not_online_because = (
        "the CRF labels the whole layer sequence at once (Viterbi, or marginals that read the "
        "layers after l)"
    )
    default_threshold = 0.5
    learned = True

    def __init__(
        self,
        features: tuple[str, ...] = FEATURES,
        threshold: float | None = None,
        first_layer: FirstLayer = 1,
        schedule: Schedule = "all",
        read_price: float | None = None,
        **crf_kwargs: Any,
    ) -> None:
        super().__init__(features, threshold, first_layer, schedule, read_price)
        self.viterbi = threshold is None
        self.crf_kwargs = {"algorithm": "lbfgs", "max_iterations": 100, **crf_kwargs}
        self.model: sklearn_crfsuite.CRF | None = None

    @property
    def calibratable(self) -> bool:
        return not self.viterbi  # with a threshold, it stops where its marginal exceeds it

    @property
    def not_calibratable_because(self) -> str:
        return "a Viterbi CRF has none: it decides by its tag path"

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        return NOMINAL_DECISION_FLOPS  # a nominal price: its inference is not modelled

    def _learn(self, records: LayerRecords) -> None:
        labels = records.labels
        self.model = None
        if not single_class(labels, self.name):
            self.model = sklearn_crfsuite.CRF(**self.crf_kwargs)
            tags = [[str(v) for v in row] for row in labels]
            self.model.fit(_sequences(records, self.features), tags)

    def scores(self, records: LayerRecords) -> np.ndarray:
        shape = (records.num_instances, records.num_layers)
        if self.model is None:
            return np.full(shape, -np.inf)
        marginals = self.model.predict_marginals(_sequences(records, self.features))
        return np.array([[m.get("1", 0.0) for m in seq] for seq in marginals])

    def stop_mask(self, records: LayerRecords) -> np.ndarray:
        if self.model is None or not self.viterbi:
            return super().stop_mask(records)
        predicted = self.model.predict(_sequences(records, self.features))
        return np.array([[tag == "1" for tag in seq] for seq in predicted], dtype=bool)

    def params(self) -> dict[str, Any]:
        threshold = None if self.viterbi else self.threshold
        return {"features": list(self.features), "threshold": threshold, **self.crf_kwargs}

    def _save_model(self, folder: Path) -> str | None:
        if self.model is None:
            return None
        shutil.copyfile(self.model.modelfile.name, folder / "model.crfsuite")
        return "model.crfsuite"

    def _load_model(self, path: Path) -> None:
        self.model = sklearn_crfsuite.CRF(model_filename=str(path), **self.crf_kwargs)
