"""An exit head on the hidden state: a stop signal that needs no vocabulary.

CALM's early-exit classifier (Schuster et al., 2022, "Confident Adaptive Language Modeling",
arXiv:2207.07061): a linear classifier on the last token's hidden state after layer l predicts
whether layer l's answer, read through the run's probe, is already the final one (the label is
``argmax_l == argmax_L``); the LLM stays frozen. One decision costs about 2h FLOPs where a probe
costs a full-vocabulary LM head; the probe runs once, at the exit layer, for the answer.

Fitted with scikit-learn's LogisticRegression on standardized states; the scaler is then folded
into the weights, so what decides is one weight vector and a bias per layer,
``P(final) = sigmoid(w_l · h_l + b_l)``, saved as safetensors. Two ways to fit it:

- ``per_layer`` (default): one logistic regression per layer, on that layer's states;
- ``shared``: one weight vector for every layer (each layer's states standardized by its own
  mean and scale) plus a per-layer bias (a one-hot layer embedding): L - 1 times the samples
  per weight.

Both deploy as the same per-layer (w_l, b_l) and cost the same.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, logit
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from adainfer.choices import FEATURES, HIDDEN_STATE, STATE_HEADS
from adainfer.decide.policies.base import ExitPolicy, FirstLayer, Schedule, single_class
from adainfer.decide.records import LayerRecords
from adainfer.errors import AdaInferError

_MAX_ITER = 1000


def consistent(records: LayerRecords) -> np.ndarray:
    """Int [N, L-1]: 1 where layer l's argmax (through the probe that read the records) is
    already the last layer's. The last layer, where every instance stops, is left out."""
    return (records.argmax[:, :-1] == records.argmax[:, -1:]).astype(np.int64)


class StatePolicy(ExitPolicy):
    """Stop after layer l where the head's P(layer l's answer is the final one) > threshold."""

    name = "state"
    causal = True  # the decision at layer l reads layer l's hidden state only
    learned = True
    default_threshold = 0.5

    def __init__(
        self,
        features: tuple[str, ...] = FEATURES,
        threshold: float | None = None,
        seed: int = 0,
        C: float = 1.0,
        class_weight: str | None = None,
        head: str = "per_layer",
        first_layer: FirstLayer = 1,
        schedule: Schedule = "all",
        read_price: float | None = None,
    ) -> None:
        super().__init__(features, threshold, first_layer, schedule, read_price)
        if head not in STATE_HEADS:
            raise AdaInferError(
                f"classifier 'state': head={head!r} is not one of {list(STATE_HEADS)}",
                "use classifier.head=per_layer (one head per layer) or classifier.head=shared",
            )
        # A bad C or class_weight fails here, before any run, not inside fit.
        if isinstance(C, bool) or not isinstance(C, int | float) or not C > 0:
            raise AdaInferError(
                f"classifier 'state': C={C!r} is not a number > 0", "use e.g. classifier.C=1.0"
            )
        if class_weight not in (None, "balanced"):
            raise AdaInferError(
                f"classifier 'state': class_weight={class_weight!r} is not null or 'balanced'",
                "use classifier.class_weight=null or classifier.class_weight=balanced",
            )
        self.seed, self.C, self.class_weight, self.head = seed, float(C), class_weight, head
        self.weight: np.ndarray | None = None  # [L-1, h] float64, the scaler folded in
        self.bias: np.ndarray | None = None  # [L-1] float64

    @property
    def reads(self) -> tuple[str, ...]:
        return (HIDDEN_STATE,)

    def _regression(self) -> LogisticRegression:
        return LogisticRegression(
            C=self.C, class_weight=self.class_weight, max_iter=_MAX_ITER, random_state=self.seed
        )

    # -- fit ----------------------------------------------------------------------------------
    def _learn(self, records: LayerRecords) -> None:
        hidden = _states(records, self.name)
        y = consistent(records)
        self.weight = self.bias = None
        if single_class(y.ravel(), self.name):
            return
        with warnings.catch_warnings():  # max_iter is generous; a near-separable layer is fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted = self._fit_per_layer if self.head == "per_layer" else self._fit_shared
            weight, bias = fitted(hidden, y)
        self.weight, self.bias = weight, bias  # float64: the fitted model's own numbers

    def _fit_per_layer(self, hidden: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        layers, h = y.shape[1], hidden.shape[2]
        weight, bias = np.zeros((layers, h)), np.zeros(layers)
        for layer in range(layers):
            labels = y[:, layer]
            if labels.min() == labels.max():  # one class here: a constant, smoothed rate
                bias[layer] = logit((labels.sum() + 1) / (len(labels) + 2))
                continue
            x = hidden[:, layer].astype(np.float64)
            scaler = StandardScaler().fit(x)
            model = self._regression().fit(scaler.transform(x), labels)
            coef = model.coef_[0] / scaler.scale_
            weight[layer] = coef
            bias[layer] = model.intercept_[0] - coef @ scaler.mean_
        return weight, bias

    def _fit_shared(self, hidden: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, layers = y.shape
        scalers = [
            StandardScaler().fit(hidden[:, layer].astype(np.float64)) for layer in range(layers)
        ]
        x = np.concatenate(
            [s.transform(hidden[:, layer].astype(np.float64)) for layer, s in enumerate(scalers)]
        )  # [(L-1)·n, h], layer-major
        onehot = np.repeat(np.eye(layers), n, axis=0)
        model = self._regression().fit(np.hstack([x, onehot]), y.T.ravel())
        shared, embed = model.coef_[0, : x.shape[1]], model.coef_[0, x.shape[1] :]
        weight = np.stack([shared / s.scale_ for s in scalers])
        bias = (
            model.intercept_[0]
            + embed
            - np.array([w @ s.mean_ for w, s in zip(weight, scalers, strict=True)])
        )
        return weight, bias

    # -- decide -------------------------------------------------------------------------------
    def _check(self, hidden: np.ndarray) -> None:
        if hidden.shape[-1] != self.weight.shape[1]:
            raise AdaInferError(
                f"policy 'state' was fitted on hidden states of width {self.weight.shape[1]}, "
                f"and these are {hidden.shape[-1]} wide",
                "fit it on layer records of the model it decides for",
            )

    def _layer_scores(self, states: np.ndarray, index: int) -> np.ndarray:
        """P(final) of states [n, h] after layer ``index`` (0-based), in float64: the same
        numbers whether the trace or the engine asks."""
        return expit(states.astype(np.float64) @ self.weight[index] + self.bias[index])

    def scores(self, records: LayerRecords) -> np.ndarray:
        shape = (records.num_instances, records.num_layers)
        if self.weight is None:  # nothing was learnt: never exit
            return np.full(shape, -np.inf)
        hidden = _states(records, self.name)
        self._check(hidden)
        out = np.full(shape, -np.inf)  # the last layer: no head, every instance stops there
        for index in range(min(records.num_layers - 1, len(self.weight))):
            out[:, index] = self._layer_scores(hidden[:, index], index)
        return out

    def online_stop(self, layer: int, view: LayerRecords | None, rows: int) -> np.ndarray:
        """The decision after ``layer`` (1-based, below the last) from ``view``'s hidden
        states ([rows, 1, h]): the head of that layer."""
        if view is None or view.hidden is None:
            raise AdaInferError(
                "policy 'state' decides on the hidden state, and the engine gave it none",
                "run it in adainfer.engine.EarlyExitEngine, which hands it the states",
            )
        self._check(view.hidden)
        return self._layer_scores(view.hidden[:, 0], layer - 1) > self.threshold

    def never_stops(self) -> bool:
        # A probability never exceeds 1: a threshold of 1 or more stops nowhere.
        return self.weight is None or self.threshold >= 1.0 or super().never_stops()

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        """w_l · h (2h), the bias (1), the sigmoid (≈4); the scaler is folded into w_l."""
        width = (
            hidden
            if hidden is not None
            else (None if self.weight is None else self.weight.shape[1])
        )
        if width is None:
            raise AdaInferError(
                "policy 'state' costs 2h FLOPs per decision, and neither the model's hidden "
                "size nor a fitted head says h",
                "price it with the model's dimensions (adainfer.decide.costs.classifier_flops)",
            )
        return 2.0 * width + 5

    # -- persistence --------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return super().params() | {
            "seed": self.seed,
            "C": self.C,
            "class_weight": self.class_weight,
            "head": self.head,
        }

    def _save_model(self, folder: Path) -> str | None:
        if self.weight is None:
            return None
        from safetensors.numpy import save_file

        save_file({"weight": self.weight, "bias": self.bias}, str(folder / "head.safetensors"))
        return "head.safetensors"

    def _load_model(self, path: Path) -> None:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        self.weight, self.bias = (
            tensors["weight"].astype(np.float64),
            tensors["bias"].astype(np.float64),
        )


def _states(records: LayerRecords, policy: str) -> np.ndarray:
    if records.hidden is None:
        raise AdaInferError(
            f"policy {policy!r} reads the last token's hidden state at every layer, and these "
            "layer records have none",
            "extract records with hidden states (adainfer.extract.passes.extract_records(..., "
            "hidden_states=True)); a job with this classifier stores them in its traces",
        )
    return records.hidden
