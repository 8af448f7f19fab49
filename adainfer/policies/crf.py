"""A linear-chain CRF over the layer sequence (sklearn-crfsuite), as in the paper."""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn_crfsuite

from adainfer.features import FEATURES, LayerRecords
from adainfer.policies.base import ExitPolicy, single_class


def _sequences(records: LayerRecords, names: tuple[str, ...]) -> list[list[dict[str, float]]]:
    feats = records.features(names)
    return [
        [
            {name: float(value) for name, value in zip(names, layer, strict=False)}
            for layer in instance
        ]
        for instance in feats
    ]


class CRFPolicy(ExitPolicy):
    """Labels every layer of an instance jointly; stop at the first layer labelled 1."""

    name = "crf"

    def __init__(self, features: tuple[str, ...] = FEATURES, **crf_kwargs: Any) -> None:
        self.features = tuple(features)
        self.crf_kwargs = {"algorithm": "lbfgs", "max_iterations": 100, **crf_kwargs}
        self.model = None

    def fit(self, records: LayerRecords) -> CRFPolicy:
        labels = records.labels
        if single_class(labels, self.name):
            self.model = None
            return self
        self.model = sklearn_crfsuite.CRF(**self.crf_kwargs)
        self.model.fit(
            _sequences(records, self.features), [[str(v) for v in row] for row in labels]
        )
        return self

    def stop_mask(self, records: LayerRecords) -> np.ndarray:
        shape = (records.num_instances, records.num_layers)
        if self.model is None:
            return np.zeros(shape, dtype=bool)
        predicted = self.model.predict(_sequences(records, self.features))
        return np.array([[tag == "1" for tag in row] for row in predicted], dtype=bool)
