"""SVM over per-layer features (scikit-learn SVC), the paper's recommended classifier."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from adainfer.features import FEATURES, LayerRecords
from adainfer.policies.base import ExitPolicy, single_class


class SVMPolicy(ExitPolicy):
    """Each (instance, layer) pair is one sample; stop where the SVM predicts y_l = 1."""

    name = "svm"

    def __init__(
        self, features: tuple[str, ...] = FEATURES, seed: int = 0, **svc_kwargs: Any
    ) -> None:
        self.features = tuple(features)
        self.seed = seed
        self.svc_kwargs = svc_kwargs
        self.model = None

    def fit(self, records: LayerRecords) -> SVMPolicy:
        X = records.features(self.features).reshape(-1, len(self.features))
        y = records.labels.ravel()
        if single_class(y, self.name):
            self.model = None
            return self
        svc = SVC(random_state=self.seed, **self.svc_kwargs)
        self.model = make_pipeline(StandardScaler(), svc).fit(X, y)
        return self

    def stop_mask(self, records: LayerRecords) -> np.ndarray:
        shape = (records.num_instances, records.num_layers)
        if self.model is None:
            return np.zeros(shape, dtype=bool)
        X = records.features(self.features).reshape(-1, len(self.features))
        return (self.model.predict(X) == 1).reshape(shape)
