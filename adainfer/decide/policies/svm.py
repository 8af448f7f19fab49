"""Learned per-layer classifiers from scikit-learn: SVM (the paper's pick) and logistic
regression. Each (instance, layer) pair is one sample with label y_l; a fitted model is saved
with skops, never pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from adainfer.choices import FEATURES
from adainfer.decide.policies.base import ExitPolicy, FirstLayer, Schedule, single_class
from adainfer.decide.records import LayerRecords
from adainfer.errors import AdaInferError

# What a saved model file may contain; anything else is refused on load.
_TRUSTED = {
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.SVC",
    "sklearn.linear_model._logistic.LogisticRegression",
}


class SklearnPolicy(ExitPolicy):
    """Common fit / score / save for scikit-learn classifiers over per-layer features."""

    name = "sklearn"
    causal = True  # one sample per (instance, layer): layer l's features only
    learned = True

    def __init__(
        self,
        features: tuple[str, ...] = FEATURES,
        threshold: float | None = None,
        seed: int = 0,
        first_layer: FirstLayer = 1,
        schedule: Schedule = "all",
        read_price: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(features, threshold, first_layer, schedule, read_price)
        self.seed = seed
        self.kwargs = kwargs
        self.model: Pipeline | None = None
        try:  # a misspelt classifier.* key fails here, before any run, not inside fit
            self._estimator()
        except TypeError as err:
            raise AdaInferError(
                f"classifier {self.name!r}: {err}",
                "check the classifier.* keys against conf/classifier/ and scikit-learn's "
                "parameters of that estimator",
            ) from None

    def _estimator(self):
        raise NotImplementedError

    def _X(self, records: LayerRecords) -> np.ndarray:
        return records.features(self.features).reshape(-1, len(self.features))

    def _learn(self, records: LayerRecords) -> None:
        y = records.labels.ravel()
        self.model = None
        if not single_class(y, self.name):
            self.model = make_pipeline(StandardScaler(), self._estimator()).fit(self._X(records), y)

    def _raw_scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scores(self, records: LayerRecords) -> np.ndarray:
        shape = (records.num_instances, records.num_layers)
        if self.model is None:  # nothing was learnt: never exit
            return np.full(shape, -np.inf)
        return self._raw_scores(self._X(records)).reshape(shape)

    def never_stops(self) -> bool:
        return self.model is None or super().never_stops()

    def params(self) -> dict[str, Any]:
        return super().params() | {"seed": self.seed, **self.kwargs}

    def _save_model(self, folder: Path) -> str | None:
        if self.model is None:
            return None
        import skops.io as sio  # imports torch when installed: only where it is needed

        sio.dump(self.model, folder / "model.skops")
        return "model.skops"

    def _load_model(self, path: Path) -> None:
        import skops.io as sio

        types = set(sio.get_untrusted_types(file=path))
        if types - _TRUSTED:
            raise AdaInferError(
                f"{path} holds types adainfer does not trust: {sorted(types - _TRUSTED)}",
                "only load policies saved by adainfer",
            )
        self.model = sio.load(path, trusted=sorted(types))


class SVMPolicy(SklearnPolicy):
    """SVC; the score is the signed distance to the boundary, so threshold 0 == predict."""

    name = "svm"
    default_threshold = 0.0

    def _estimator(self):
        return SVC(random_state=self.seed, **self.kwargs)

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        """StandardScaler (2F for F features), then per support vector an RBF kernel
        (‖x − sv‖²: 3F; times gamma, exp, times the dual coefficient, add: 4) or a linear one
        (2F + 2), and the intercept (1). Nothing learnt: it scores nothing."""
        if self.model is None:
            return 0.0
        n_features = float(len(self.features))
        svc = self.model[-1]
        per_sv = 2 * n_features + 2 if svc.kernel == "linear" else 3 * n_features + 4
        return 2 * n_features + len(svc.support_vectors_) * per_sv + 1

    def _raw_scores(self, X: np.ndarray) -> np.ndarray:
        return self.model.decision_function(X)


class LogRegPolicy(SklearnPolicy):
    """Logistic regression; the score is P(y_l = 1), threshold 0.5."""

    name = "logreg"
    default_threshold = 0.5

    def _estimator(self):
        return LogisticRegression(random_state=self.seed, **self.kwargs)

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        """StandardScaler (2F), the dot product (2F), the intercept (1), the sigmoid (≈4)."""
        return 4 * float(len(self.features)) + 5

    def _raw_scores(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)[:, 1]
