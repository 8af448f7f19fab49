"""``classifier=auto``: a family of candidate exit policies, one of which calibration chooses.

The family is fitted on the train records like any policy; which candidate decides, at which
threshold, is chosen on the calibration split by :func:`adainfer.decide.select.select` (every
candidate certified at once, the cheapest kept, the full model when none pays). Before that
choice it has no scores of its own: it only says what its candidates read, so that the traces
keep what every one of them needs. After it, the job carries the chosen candidate, a plain
policy, to the engine, the logs and the saved policy folder.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from adainfer.choices import FEATURES, HIDDEN_STATE
from adainfer.decide.policies.base import ExitPolicy, FirstLayer, Schedule
from adainfer.decide.records import LayerRecords
from adainfer.decide.schedule import ReadPrices
from adainfer.errors import AdaInferError

log = logging.getLogger(__name__)

FULL_MODEL = "full_model"  # the candidate that is always there: read nothing, cost 1.000


class AutoPolicy(ExitPolicy):
    """The candidates, by name; fitted together, chosen among by calibration (see the module)."""

    name = "auto"
    learned = True
    selects = True

    def __init__(
        self,
        candidates: dict[str, ExitPolicy],
        features: tuple[str, ...] = FEATURES,
        threshold: float | None = None,
        first_layer: FirstLayer = 1,
        schedule: Schedule = "all",
        read_price: float | None = None,
    ) -> None:
        super().__init__(features, threshold, first_layer, schedule, read_price)
        if not candidates:
            raise AdaInferError(
                "classifier 'auto' was given no candidates",
                "list some under classifier.candidates (conf/classifier/auto.yaml)",
            )
        for key, candidate in candidates.items():
            problem = _refused(key, candidate)
            if problem:
                raise AdaInferError(
                    f"classifier 'auto': candidate {key!r} ({candidate.name}) {problem}",
                    "drop it from classifier.candidates (conf/classifier/auto.yaml)",
                )
            if not candidate.features_given and set(candidate.reads) - {HIDDEN_STATE}:
                candidate.features = self.features  # the job's feature_set
        self.candidates: dict[str, ExitPolicy] = dict(candidates)
        # left out when fitted, and why: what they read is not in the records (a label-row
        # read on a task without fixed labels)
        self.unavailable: dict[str, str] = {}

    @property
    def online(self) -> bool:
        return all(c.online for c in self.candidates.values())

    @property
    def not_online_because(self) -> str:  # type: ignore[override]
        off = [k for k, c in self.candidates.items() if not c.online]
        return f"its candidates {off} cannot decide layer by layer"

    @property
    def reads(self) -> tuple[str, ...]:
        """Everything any candidate reads: the traces must hold all of it."""
        names: list[str] = []
        for candidate in self.candidates.values():
            names += [n for n in candidate.reads if n not in names]
        return tuple(names)

    def fit(self, records: LayerRecords, prices: ReadPrices | None = None) -> ExitPolicy:
        """Fit every candidate on the same train records; a candidate that reads what the
        records do not hold (the label-row features of a task without fixed labels) leaves the
        family, before any calibration instance is seen."""
        self.num_layers = records.num_layers
        for key, candidate in list(self.candidates.items()):
            missing = sorted(set(candidate.reads) - {HIDDEN_STATE} - set(records.values))
            if missing or (candidate.reads_labels and records.label_ids is None):
                self.unavailable[key] = f"the records have no {missing or 'label ids'}"
                del self.candidates[key]
                log.info("classifier=auto: candidate %s left out: %s", key, self.unavailable[key])
        if not self.candidates:
            raise AdaInferError(
                f"classifier 'auto': no candidate can read these records ({self.unavailable})",
                "add a candidate on the probe's own features (classifier.candidates.*)",
            )
        for candidate in self.candidates.values():
            candidate.fit(records, prices)
        return self

    def never_stops(self) -> bool:
        return False

    def scores(self, records: LayerRecords) -> np.ndarray:
        raise _not_chosen()

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        raise _not_chosen()

    def params(self) -> dict[str, Any]:
        return super().params() | {"candidates": sorted(self.candidates)}


def _not_chosen() -> AdaInferError:
    return AdaInferError(
        "classifier 'auto' decides through the candidate that calibration chooses, and none "
        "has been chosen",
        "give it a risk limit (risk.epsilon=..., with a calibration split: task.n_calibration); "
        "adainfer.decide.select.select chooses",
    )


def _refused(key: str, candidate: Any) -> str | None:
    """Why a candidate cannot be in the family, or None."""
    if key == FULL_MODEL:
        return f"uses the name {FULL_MODEL!r}, which the family keeps for the full model"
    if not isinstance(candidate, ExitPolicy):
        return "is not an exit policy (give it a _target_ from adainfer.decide.policies)"
    if getattr(candidate, "selects", False):
        return "is itself a family"
    if not candidate.deployable:
        return "looks at the answer (an oracle), so it cannot be certified or deployed"
    if not candidate.calibratable:
        return f"cannot be certified: {candidate.not_calibratable_because}"
    return None
