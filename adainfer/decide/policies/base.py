"""One interface for every exit rule: fit on train layer records, score and decide per layer.

A policy gives each (instance, layer) a score — higher means "ready to stop" — and stops where
the score exceeds its threshold; the exit layer is the first such layer, or the last layer when
there is none (the full model). Sweeping the threshold traces the accuracy/FLOPs trade-off.
A fitted policy saves to a folder in safe formats (JSON, skops, crfsuite's own model file).
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal

import numpy as np

from adainfer.choices import FEATURES, HIDDEN_STATE, LABEL_FEATURES, every_k, schedule_ok
from adainfer.decide.records import LayerRecords
from adainfer.decide.schedule import ReadPrices, best_schedule, instance_costs
from adainfer.errors import AdaInferError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[ExitPolicy]] = {}

# What adainfer's own non-engine policies (the CRF, the oracles) are charged per decision in
# honest FLOPs: a nominal price, not a model of their work. They cannot run in the engine, so
# only trace evaluation's ``honest_flops_ratio`` uses it.
NOMINAL_DECISION_FLOPS = 100.0

FirstLayer = int | Literal["auto"]
# Where a policy is asked (adainfer.decide.schedule): "all", "every_<k>", "auto" or the layers.
Schedule = str | tuple[int, ...]


def first_exit(stop: np.ndarray) -> np.ndarray:
    """1-based exit layer per row of a boolean [N, L] stop mask (L when never marked)."""
    L = stop.shape[1]
    return np.where(stop.any(axis=1), stop.argmax(axis=1) + 1, L)


class ExitPolicy(ABC):
    """Decides where each instance stops, from its per-layer features.

    A policy says what it is, so that no other module needs to know its class:

    - :attr:`reads`: the per-layer feature names its decision reads (the probe's outputs, or
      ``"hidden_state"``: the last token's hidden state after the layer, which needs no probe);
      a policy that reads no probe output decides without probing (:meth:`online_stop`), and
      the engine probes only where it stops (:attr:`reads_probe`, :attr:`reads_hidden`).
    - :meth:`decision_flops`: what one decision (one instance at one layer) costs, priced in
      honest FLOPs (:mod:`adainfer.decide.costs`). The base class does not know: a policy that does
      not declare its price is refused there, never charged a made-up one.
    - :attr:`online` / :attr:`not_online_because`: whether the early-exit engine can run it.
    - :attr:`calibratable` / :attr:`not_calibratable_because`: whether risk control
      (:mod:`adainfer.decide.risk`) can set its threshold.
    - :attr:`learned`: whether it must be fitted before it can decide.
    - ``first_layer``: no exit (and, in the engine, no probe) before this layer; ``"auto"``
      resolves when the policy is fitted (:func:`earliest_settled` on the fit records).
    - ``schedule``: the layers, from ``first_layer`` on and below the last, at which it is
      asked (probed, scored) and may stop: ``"all"`` (every one), ``"every_<k>"``
      (``first_layer``, ``first_layer + k``, ...), a list of layers, or ``"auto"``, the
      cheapest schedule on the fit records (:mod:`adainfer.decide.schedule`), chosen when it is
      fitted.
    """

    name: ClassVar[str] = "policy"
    default_threshold: ClassVar[float] = 0.0
    deployable: ClassVar[bool] = True  # False for oracles, which look at the answer
    # True when the decision at layer l reads layer l's features only, so the early-exit
    # engine (adainfer.engine) can run the policy online; False for sequence models (CRF).
    causal: ClassVar[bool] = False
    # Why the engine cannot run it, when it cannot (said by check_online).
    not_online_because: ClassVar[str] = "its decision at layer l depends on later layers"
    # True when it learns from the train records, so it cannot decide before ``fit``.
    learned: ClassVar[bool] = False
    # True for a family of candidates that calibration chooses among (classifier=auto,
    # adainfer.decide.select): it decides nothing itself until one is chosen.
    selects: ClassVar[bool] = False

    @property
    def online(self) -> bool:
        """True when the decision at layer l reads only what exists after layer l (``causal``)
        and does not look at the answer (``deployable``): the engine can run it."""
        return self.causal and self.deployable

    @property
    def calibratable(self) -> bool:
        """True when risk control can set its threshold: it stops where its score exceeds
        ``threshold`` (every policy here but a Viterbi CRF)."""
        return True

    @property
    def not_calibratable_because(self) -> str:
        """Why risk control cannot set its threshold, when it cannot."""
        return f"policy {self.name!r} does not stop by a threshold on its scores"

    @property
    def reads(self) -> tuple[str, ...]:
        """The per-layer feature names the decision reads (``features``, as configured)."""
        return self.features

    @property
    def reads_probe(self) -> bool:
        """Whether every visited layer must be probed for it: it reads probe features (of the
        full head: not only :attr:`reads_labels`) and can stop early (one that never stops
        needs only the last layer's answer)."""
        read = set(self.reads) - {HIDDEN_STATE}
        return bool(read - set(LABEL_FEATURES)) and not self.never_stops()

    @property
    def reads_hidden(self) -> bool:
        """Whether it reads the last token's hidden state at each layer (``"hidden_state"`` in
        :attr:`reads`): traces must keep those states (they are big: N x L x h), and the engine
        hands them to :meth:`online_stop` at every layer it may stop at, without a probe."""
        return HIDDEN_STATE in self.reads

    @property
    def reads_labels(self) -> bool:
        """Whether what it reads of the probe is the label-row features only
        (:data:`~adainfer.choices.LABEL_FEATURES`: a read of the fixed answer set's rows of the
        LM head, |labels| x h, not V x h). It then decides without the full probe, as a head on
        the hidden state does (:attr:`scores_state`), and the full head runs at its exit only,
        for the answer. The label tokens are learnt with the records it is fitted on
        (``label_ids``)."""
        read = set(self.reads) - {HIDDEN_STATE}
        return bool(read) and read <= set(LABEL_FEATURES)

    @property
    def scores_state(self) -> bool:
        """Whether the engine scores every row at each layer it is asked at without the full
        probe (a head on the hidden state, or a label-row read: :attr:`reads_labels`) and can
        stop early: what its work log counts as classified, and what honest FLOPs charge."""
        return (self.reads_hidden or self.reads_labels) and not self.never_stops()

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        """FLOPs of one decision: scoring one instance at one layer, for a model of
        ``hidden`` size and ``layers`` (None: unknown; adainfer's own policies read a few
        scalar features, so their price does not depend on them). Every policy used for
        honest FLOPs must declare it."""
        raise AdaInferError(
            f"policy {self.name!r} ({type(self).__qualname__}) does not declare its price per "
            "decision, so honest FLOPs cannot count what its decisions cost",
            f"override decision_flops() in {type(self).__qualname__} (see ExitPolicy)",
        )

    def __init__(
        self,
        features: tuple[str, ...] | None = FEATURES,
        threshold: float | None = None,
        first_layer: FirstLayer = 1,
        schedule: Schedule = "all",
        read_price: float | None = None,
    ):
        # None: not given (the default's); a family (classifier=auto) gives such a candidate
        # the job's feature_set
        self.features_given = features is not None
        self.features = tuple(FEATURES if features is None else features)
        self.label_ids: np.ndarray | None = None  # learnt by fit, for a label-row read
        self.threshold = self.default_threshold if threshold is None else float(threshold)
        self.num_layers: int | None = None  # of the records it was fitted on
        self.first_layer = first_layer
        self.schedule = schedule
        self.read_price = read_price

    @property
    def read_price(self) -> float | None:
        """What ``schedule="auto"`` prices a probe at, in decoder layers of the prompt it reads;
        None: its FLOPs (:class:`adainfer.decide.schedule.ReadPrices`). Set it to what a probe costs
        in time on the hardware it will run on, where that is not its FLOPs (on a CPU at batch size
        1 a probe costs about 0.7 of a SmolLM2 layer, 15 times its FLOPs)."""
        return self._read_price

    @read_price.setter
    def read_price(self, value: float | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
        ):
            raise AdaInferError(
                f"policy {self.name!r}: read_price={value!r} is not a number of layers > 0",
                "use classifier.read_price=null (a probe priced at its FLOPs) or a number of "
                "decoder layers, e.g. classifier.read_price=0.7 (scripts/bench_engine.py prints "
                "a probe's time in layers)",
            )
        self._read_price = None if value is None else float(value)

    @property
    def first_layer(self) -> int:
        """The first layer it may exit at (and, in the engine, probe); see ``earliest_settled``.
        Set it to a layer or ``"auto"``, which ``fit`` resolves."""
        if self._first_layer is None:
            raise AdaInferError(
                f"policy {self.name!r} has first_layer='auto', which is resolved when it is "
                "fitted, and it is not fitted yet",
                "call policy.fit(records) first, or give first_layer a layer number",
            )
        return self._first_layer

    @first_layer.setter
    def first_layer(self, value: FirstLayer) -> None:
        if value == "auto":
            self.first_layer_setting: FirstLayer = "auto"
            self._first_layer: int | None = None
            return
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise AdaInferError(
                f"policy {self.name!r}: first_layer={value!r} is not a layer number >= 1 or 'auto'",
                "use classifier.first_layer=1 (every layer, as the paper) or "
                "classifier.first_layer=auto",
            )
        self.first_layer_setting = self._first_layer = int(value)

    @property
    def schedule(self) -> Schedule:
        """Where it is asked, as set: ``"all"``, ``"every_<k>"``, ``"auto"`` or the layers (a
        sorted tuple); :meth:`schedule_mask` says which layers of a model that is."""
        return self._schedule

    @schedule.setter
    def schedule(self, value: Schedule) -> None:
        if not schedule_ok(value):
            raise AdaInferError(
                f"policy {self.name!r}: schedule={value!r} is not all, auto, every_<k> (k >= 1) "
                "or a list of layer numbers >= 1",
                "use classifier.schedule=all (every layer, as the paper), "
                "classifier.schedule=every_2, classifier.schedule=auto or "
                "classifier.schedule=[4,8,12]",
            )
        self._schedule: Schedule = (
            tuple(sorted({int(x) for x in value})) if isinstance(value, list | tuple) else value
        )
        self.chosen_schedule: tuple[int, ...] | None = None  # what "auto" chose, when fitted

    def schedule_mask(self, num_layers: int) -> np.ndarray:
        """Boolean [num_layers]: entry l - 1 says whether the policy is asked after layer l,
        i.e. may stop there (and, in the engine, is probed or scored there). Never before
        ``first_layer``, never at the last layer, where every instance stops anyway."""
        layers = np.arange(1, num_layers + 1)
        asked = (layers >= self.first_layer) & (layers < num_layers)
        if self._schedule == "all":
            return asked
        k = every_k(self._schedule)
        if k is not None:
            return asked & ((layers - self.first_layer) % k == 0)
        listed = self.chosen_schedule if self._schedule == "auto" else self._schedule
        if listed is None:
            raise AdaInferError(
                f"policy {self.name!r} has schedule='auto', which is chosen when it is fitted, "
                "and it is not fitted yet",
                "call policy.fit(records, prices) first (prices: "
                "adainfer.decide.costs.read_prices), or give it another schedule",
            )
        beyond = [layer for layer in listed if layer > num_layers]
        if beyond:
            raise AdaInferError(
                f"policy {self.name!r}: schedule layers {beyond} are beyond this model's "
                f"{num_layers} layers",
                f"list layers of 1..{num_layers}",
            )
        return asked & np.isin(layers, listed)

    def scheduled_layers(self, num_layers: int) -> tuple[int, ...]:
        """The layers (1-based) at which it is asked on a model of ``num_layers``."""
        return tuple(int(x) + 1 for x in np.flatnonzero(self.schedule_mask(num_layers)))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.name] = cls

    def fit(self, records: LayerRecords, prices: ReadPrices | None = None) -> ExitPolicy:
        """Learn from the train split's (features_l, y_l) pairs (:meth:`_learn`; rules need no
        training). Resolves ``first_layer="auto"`` on these records, then ``schedule="auto"``
        (:meth:`choose_schedule`), which needs the model's ``prices``
        (:func:`adainfer.decide.costs.read_prices`)."""
        self.num_layers = records.num_layers
        if self.reads_labels:
            self.label_ids = _label_ids(records, self.name)
        if self.first_layer_setting == "auto":
            self._first_layer = earliest_settled(records)
        self._learn(records)
        if self._schedule == "auto":
            self.choose_schedule(records, prices)
        return self

    def _learn(self, records: LayerRecords) -> None:  # noqa: B027 - optional hook
        """Fit the model a learned policy decides with, on ``records``."""

    def choose_schedule(
        self,
        records: LayerRecords,
        prices: ReadPrices | None,
        threshold: float | None = None,
        scores: np.ndarray | None = None,
    ) -> tuple[int, ...]:
        """Set (and return) what ``schedule="auto"`` asks at: the schedule of least mean honest
        FLOPs ratio on ``records`` (:func:`adainfer.decide.schedule.best_schedule`), from each
        instance's first stop with every layer from ``first_layer`` asked, at ``threshold``
        (its own when None; ``scores``: its scores on ``records``, when already computed)."""
        if prices is None:
            raise AdaInferError(
                f"policy {self.name!r} has schedule='auto', which prices its reads on the "
                "model, and was given no prices",
                "pass prices=adainfer.decide.costs.read_prices(config, probe) to fit",
            )
        own = self.threshold
        if threshold is not None:
            self.threshold = float(threshold)
        try:
            if threshold is None:
                stop = self.stop_mask(records)
            else:
                stop = (self.scores(records) if scores is None else scores) > self.threshold
            L = records.num_layers
            layers = np.arange(1, L + 1)
            first_stop = first_exit(stop & (layers >= self.first_layer) & (layers < L))
            decides = self.reads_probe or self.scores_state
            decision = self.decision_flops(prices.hidden, L) if decides else 0.0
            if self.reads_labels and decides:  # each decision reads the label rows first
                decision += prices.label_read(len(self.label_ids))
            if self.read_price is not None:
                prices = replace(prices, probe_layers=self.read_price)
            costs = instance_costs(prices, records.seq_len, L, self.reads_probe, decision, decides)
        finally:
            self.threshold = own
        self.chosen_schedule, _ = best_schedule(first_stop, costs, L, min(self.first_layer, L))
        return self.chosen_schedule

    @abstractmethod
    def scores(self, records: LayerRecords) -> np.ndarray:
        """Float [N, L]: how ready instance n is to stop after layer l."""

    def stop_mask(self, records: LayerRecords) -> np.ndarray:
        """Boolean [N, L]: may instance n stop after layer l?"""
        return self.scores(records) > self.threshold

    def exit_layers(self, records: LayerRecords) -> np.ndarray:
        return self.first_exits(self.stop_mask(records))

    def first_exits(self, stop: np.ndarray) -> np.ndarray:
        """1-based exit layers of a [N, L] stop mask: the first layer of its schedule (no
        earlier than ``first_layer``) where it may stop, else the last."""
        return first_exit(stop & self.schedule_mask(stop.shape[1]))

    def online_stop(self, layer: int, view: LayerRecords | None, rows: int) -> np.ndarray:
        """Boolean [rows]: which of ``rows`` active instances stop after ``layer`` (1-based),
        from ``view``, their features at that layer only (shape [rows, 1]; None when the
        policy reads none). What the engine calls; the trace decision, one layer at a time."""
        return self.stop_mask(view)[:, 0]

    def never_stops(self) -> bool:
        """True when no feature value can make it stop early (threshold +inf, nothing learnt):
        it is the full model, and the early-exit engine need not probe for it."""
        return self.threshold == np.inf

    # -- persistence -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"features": list(self.features), "threshold": self.threshold}

    def save(self, folder: Path) -> None:
        """Write ``policy.json`` (+ a model file for learned policies) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "policy": self.name,
            "params": self.params(),
            "num_layers": self.num_layers,
            "first_layer": self.first_layer,
            "schedule": list(self.schedule) if isinstance(self.schedule, tuple) else self.schedule,
        }
        if self.schedule == "auto":
            meta["chosen_schedule"] = (
                None if self.chosen_schedule is None else list(self.chosen_schedule)
            )
        if self.read_price is not None:
            meta["read_price"] = self.read_price
        if self.label_ids is not None:
            meta["label_ids"] = [int(t) for t in self.label_ids]
        meta["model_file"] = self._save_model(folder)
        # Strict JSON: a threshold of +inf ("never exit") is written as the string "inf".
        meta["params"] = {k: _json_number(v) for k, v in meta["params"].items()}
        (folder / "policy.json").write_text(json.dumps(meta, indent=2, allow_nan=False))

    def _save_model(self, folder: Path) -> str | None:  # noqa: B027 - optional hook
        """Write the fitted model's file into ``folder``; return its name (None: no model)."""
        return None

    def _load_model(self, path: Path) -> None:  # noqa: B027 - optional hook
        """Read back what :meth:`_save_model` wrote."""


def _json_number(value: Any) -> Any:
    """A non-finite float as the string ``"inf"``, ``"-inf"`` or ``"nan"``; the rest as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _threshold(value: Any) -> Any:
    """A saved threshold back as a float: ``"inf"`` (and, from older files, JSON's
    ``Infinity``) is +inf."""
    return float(value) if isinstance(value, str) else value


def _model_path(folder: Path, name: object) -> Path:
    """``folder / name`` for a model file named in policy.json: a plain file name only, so a
    policy folder from another run can never make adainfer read a file outside it."""
    if not isinstance(name, str) or not name or name in {".", ".."}:
        bad = True
    else:
        pure = PurePath(name)
        bad = pure.is_absolute() or len(pure.parts) != 1 or "\\" in name
    path = Path(folder) / name if not bad else None
    if path is not None and path.resolve().parent != Path(folder).resolve():
        bad = True  # a symbolic link out of the folder
    if bad:
        raise AdaInferError(
            f"{Path(folder) / 'policy.json'} names the model file {name!r}, which is not a "
            "plain file name inside the policy folder; refusing to read outside it",
            "only load policy folders written by adainfer's save(); re-save the policy",
        )
    return path


def load_policy(folder: Path) -> ExitPolicy:
    """Rebuild a policy saved by :meth:`ExitPolicy.save` (only adainfer's own classes)."""
    meta_path = Path(folder) / "policy.json"
    if not meta_path.is_file():
        raise AdaInferError(f"no saved policy at {folder}", "pass a folder written by save()")
    meta = json.loads(meta_path.read_text())
    cls = _REGISTRY.get(meta["policy"])
    if cls is None:
        raise AdaInferError(
            f"unknown saved policy {meta['policy']!r}", f"known policies: {sorted(_REGISTRY)}"
        )
    params = dict(meta["params"])
    if "threshold" in params:
        params["threshold"] = _threshold(params["threshold"])
    policy = cls(**params)
    policy.num_layers = meta["num_layers"]
    policy.first_layer = int(meta.get("first_layer", 1))
    policy.schedule = meta.get("schedule", "all")  # files from before schedules: every layer
    if policy.schedule == "auto" and meta.get("chosen_schedule") is not None:
        policy.chosen_schedule = tuple(int(layer) for layer in meta["chosen_schedule"])
    policy.read_price = meta.get("read_price")
    if meta.get("label_ids") is not None:
        policy.label_ids = np.array(meta["label_ids"], dtype=np.int64)
    if meta["model_file"]:
        policy._load_model(_model_path(folder, meta["model_file"]))
    return policy


class NeverExit(ExitPolicy):
    """The full model: never stops early."""

    name = "never"
    causal = True

    def never_stops(self) -> bool:
        return True

    def scores(self, records: LayerRecords) -> np.ndarray:
        return np.full((records.num_instances, records.num_layers), -np.inf)

    def decision_flops(self, hidden: int | None = None, layers: int | None = None) -> float:
        return 0.0  # it scores nothing


def _label_ids(records: LayerRecords, policy: str) -> np.ndarray:
    """The label tokens a label-row read reads, from the records it is fitted on."""
    missing = [name for name in LABEL_FEATURES if name not in records.values]
    if records.label_ids is None or missing:
        raise AdaInferError(
            f"policy {policy!r} reads the label rows of the LM head ({list(LABEL_FEATURES)}), "
            "and these layer records have none: the task has no fixed answer set",
            "use it on a task with labels (sst2, ag_news, mmlu, commonsense_qa), or another "
            "feature_set (feature_set=base)",
        )
    return records.label_ids


def single_class(labels: np.ndarray, policy: str) -> bool:
    """True (with a warning) when the training pairs hold one class only: nothing to learn."""
    classes = np.unique(labels)
    if len(classes) < 2:
        log.warning(
            "%s: every training pair has label %s, so there is nothing to learn; "
            "the policy never exits (full model)",
            policy,
            classes.tolist(),
        )
        return True
    return False


def earliest_settled(records: LayerRecords, share: float = 0.05) -> int:
    """The first layer at which at least ``share`` of the instances already give their final
    answer at every later layer (their ``oracle_consistent`` exit): before it, an exit almost
    always changes the answer, so probing there costs and buys nothing. From train records."""
    same = records.argmax == records.argmax[:, -1:]
    settled = np.flip(np.logical_and.accumulate(np.flip(same, axis=1), axis=1), axis=1)
    exits = first_exit(settled)
    return int(np.clip(np.floor(np.quantile(exits, share)), 1, records.num_layers))


def check_online(policy: ExitPolicy) -> None:
    """Refuse, with the reason and the fix, a policy that cannot decide layer by layer."""
    if not policy.online:
        raise AdaInferError(
            f"policy {policy.name!r} cannot run in the early-exit engine: "
            f"{policy.not_online_because}, and the engine has not computed those when it must "
            "decide",
            "use a per-layer policy: svm, logreg, gap, state, never or "
            "adainfer.engine.FixedExit; "
            f"{policy.name!r} can still be evaluated on layer traces (adainfer.decide.metrics)",
        )
