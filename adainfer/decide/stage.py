"""Stage two, *decide*: fit, calibrate and score an exit policy on layer records, on the CPU.

Nothing here runs or loads the LLM: :func:`decide` reads a :class:`TraceSet`
(records, the lens that read them, the model's dimensions) and returns an :class:`Outcome`,
the metrics a run logs and what made them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adainfer.decide import costs
from adainfer.decide.costs import PricedLens
from adainfer.decide.metrics import ExitResult, agreement_metrics, answer_metrics, apply_exits
from adainfer.decide.policies.auto import AutoPolicy
from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import RiskLimit, calibrate, resplit_check
from adainfer.decide.select import candidate_scores, family_resplit_check, select
from adainfer.errors import AdaInferError

log = logging.getLogger(__name__)


class Lens(PricedLens, Protocol):
    """What read the layers (``adainfer.llm.lenses``): its name, its price per read, and how it
    saves beside a policy."""

    name: str

    def save(self, folder: Path) -> None: ...


class ModelFacts(Protocol):
    """The model's dimensions, all that deciding needs of it (``adainfer.llm.LoadedModel``; its
    weights need not be loaded): the costs read ``config``."""

    name: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    config: Any


@dataclass
class TraceSet:
    """One task's layer records under one model, prompt setting and probe: what *decide* reads.

    ``model`` gives the dimensions the costs need (its weights are not loaded to read traces);
    ``computed`` says whether the LLM ran to make any of it (else: all from the trace store).
    """

    task: str
    fit: LayerRecords
    test: LayerRecords
    calibration: LayerRecords | None
    probe: Lens | None  # what read the layers (None: the logit lens)
    model: ModelFacts
    stats: dict[str, float] = field(default_factory=dict)
    computed: bool = False


@dataclass
class Outcome:
    """Everything one task's evaluation computed."""

    metrics: dict[str, float]
    train: LayerRecords  # the records the policy was fitted on
    test: LayerRecords
    result: ExitResult
    policy: ExitPolicy
    probe: Lens | None = None  # what read the layers (None: the logit lens)
    # classifier=auto: the name of the candidate calibration chose (None: one policy was given)
    chosen: str | None = None


def score(
    policy: ExitPolicy,
    fit_records: LayerRecords,
    test_records: LayerRecords,
    loaded: Any,
    probe: Lens | None = None,
    calibration: LayerRecords | None = None,
    limit: RiskLimit | None = None,
    resplits: int = 0,
    first_layer: int | str | None = None,
) -> Outcome:
    """Fit the policy on ``fit_records``, calibrate its threshold on ``calibration`` to the
    ``limit`` when one is given (:mod:`adainfer.decide.risk`), and score it on ``test_records``.
    With ``resplits``, also check the guarantee on that many random redraws of the
    calibration/test partition (:func:`adainfer.decide.risk.resplit_check`). ``first_layer``, when
    given, replaces the policy's own setting (a layer, or ``"auto"``, which the policy resolves
    when it is fitted: :func:`~adainfer.decide.policies.base.earliest_settled` on the fit records).
    ``loaded`` gives the model's dimensions (``hidden_size``, ``vocab_size``, ``config``), which
    also price the reads of a policy with ``schedule="auto"``, chosen on ``fit_records``
    (:mod:`adainfer.decide.schedule`; under risk control, for each candidate threshold).

    Besides Eq. 2 (``flops_ratio``), ``honest_flops_ratio`` charges every probe, translator and
    classifier call the exits imply (:func:`adainfer.decide.costs.trace_flops_ratio`).
    """
    if first_layer is not None:
        policy.first_layer = first_layer
    prices = costs.read_prices(loaded.config, probe)
    policy.fit(fit_records, prices)
    calibrated = {}
    chosen = None
    if policy.selects:  # a family (classifier=auto): calibration chooses the policy
        policy, chosen, calibrated = _choose(
            policy, fit_records, calibration, test_records, loaded, probe, limit, resplits, prices
        )
    elif limit is not None and calibration is not None:
        if policy.deployable:
            if resplits:  # before calibrating: each split calibrates its own copy
                calibrated = resplit_check(
                    policy, fit_records, calibration, test_records, limit, resplits, prices=prices
                )
            calibrated |= calibrate(policy, fit_records, calibration, limit, prices).metrics()
        else:
            log.warning("%s looks at the answer: risk control leaves it as it is", policy.name)
    result = apply_exits(test_records, policy.exit_layers(test_records))
    metrics = result.metrics(test_records, loaded.hidden_size, loaded.vocab_size)
    metrics["acc_drop"] = metrics["acc_full"] - metrics["acc"]
    honest = costs.trace_flops_ratio(
        result.exit_layer, test_records.seq_len, loaded.config, policy, probe
    )
    metrics["honest_flops_ratio"] = float(np.mean(honest))
    metrics["first_layer"] = float(policy.first_layer)  # what first_layer=auto chose
    # how many layers it is asked at (schedule=auto: what it chose; the layers: a tag)
    metrics["schedule_reads"] = float(len(policy.scheduled_layers(test_records.num_layers)))
    metrics |= agreement_metrics(test_records) | answer_metrics(test_records, result)
    outcome = Outcome(metrics | calibrated, fit_records, test_records, result, policy, probe)
    outcome.chosen = chosen
    return outcome


def _choose(
    family: AutoPolicy,
    fit_records: LayerRecords,
    calibration: LayerRecords | None,
    test_records: LayerRecords,
    loaded: Any,
    probe: Lens | None,
    limit: RiskLimit | None,
    resplits: int,
    prices: costs.ReadPrices,
) -> tuple[ExitPolicy, str, dict[str, float]]:
    """The candidate :func:`adainfer.decide.select.select` chooses, its name and its metrics
    (and, with ``resplits``, the whole procedure's re-split check)."""
    if limit is None or calibration is None or calibration.num_instances == 0:
        raise AdaInferError(
            "classifier=auto certifies its candidates and chooses among them on a calibration "
            "split, and this job has no risk limit or no calibration instances",
            "set risk.epsilon (e.g. risk.epsilon=0.05) and task.n_calibration (e.g. 400), or "
            "pick one classifier (classifier=state, classifier=svm)",
        )
    scored = candidate_scores(family, calibration), candidate_scores(family, fit_records)
    checked = {}
    if resplits:
        checked = family_resplit_check(
            family,
            fit_records,
            calibration,
            test_records,
            limit,
            resplits,
            loaded.config,
            probe,
            prices,
            0,
            *scored,
        )
    picked = select(family, fit_records, calibration, limit, loaded.config, probe, prices, *scored)
    said = [
        f"{c.name}: certified, cost {c.cal_cost:.3f}" if c.certified else f"{c.name}: not certified"
        for c in picked.candidates
    ]
    log.info(
        "classifier=auto (each candidate tested at delta/%d): %s -> %s",
        len(picked.candidates),
        "; ".join(said),
        picked.chosen,
    )
    return picked.policy, picked.chosen, checked | picked.metrics()


def decide(
    traces: TraceSet,
    policy: ExitPolicy,
    limit: RiskLimit | None = None,
    resplits: int = 0,
) -> Outcome:
    """Fit ``policy`` on the trace set's fit records, calibrate it to ``limit`` on its
    calibration records when both are given, score it on its test records; the metrics include
    what prompt building did (truncations, dropped demonstrations)."""
    outcome = score(
        policy,
        traces.fit,
        traces.test,
        traces.model,
        traces.probe,
        traces.calibration,
        limit,
        resplits,
    )
    outcome.metrics |= traces.stats
    return outcome
