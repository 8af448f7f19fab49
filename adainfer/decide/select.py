"""``classifier=auto``: the cheapest certified exit of a family, chosen on calibration data only.

Given a fitted :class:`~adainfer.decide.policies.AutoPolicy` (K candidates, each fitted on the
train records) and a risk limit (ε, δ):

1. **Certify every candidate at δ/K.** Each candidate's thresholds are walked by fixed-sequence
   testing (:func:`adainfer.decide.risk.calibrate`), at level δ/K instead of δ (Bonferroni). A
   candidate's walk makes a false certification with probability at most δ/K, so the chance
   that *any* certified (candidate, threshold) pair of the family has a population risk above ε
   is at most K · δ/K = δ (Learn-then-Test over the whole family, Angelopoulos et al., 2021,
   arXiv:2110.01052, §3: fixed-sequence within a candidate, a family-wise correction across).
2. **Choose.** With probability ≥ 1 − δ every certified pair holds at once, so choosing among
   them with the same calibration data keeps the guarantee: the choice is the certified
   candidate of least honest FLOPs ratio *estimated on the calibration split* (probes,
   translators and the candidate's decisions charged as the engine pays them at batch size 1,
   :func:`adainfer.decide.costs.trace_flops_ratio`). The test split is never looked at.
3. **Never dearer than the full model.** The full model (read nothing, cost 1.000, zero loss by
   construction: it needs no test) is always a member; a candidate is chosen only when its
   estimated cost is below 1.000.

The family costs calibration data: each candidate is tested at δ/K, so a bigger family certifies
less per candidate; :func:`family_resplit_check` runs the whole procedure, selection included,
on random re-splits of calibration and test.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from adainfer.decide.costs import PricedLens, trace_flops_ratio
from adainfer.decide.policies.auto import FULL_MODEL, AutoPolicy
from adainfer.decide.policies.base import ExitPolicy, NeverExit
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import Calibration, RiskLimit, calibrate, resplit_rates
from adainfer.decide.schedule import ReadPrices


@dataclass(frozen=True)
class Candidate:
    """One candidate's certification and estimated cost (logged as ``auto_<name>_*``)."""

    name: str
    certified: bool
    threshold: float  # +inf: nothing certified
    tested: int  # thresholds certified before the first failure
    cal_cost: float  # honest FLOPs ratio on the calibration split at its threshold
    cal_drop: float  # accuracy drop there


@dataclass
class Selection:
    """What :func:`select` chose: the candidate's name, its policy (fitted, at its certified
    threshold; :class:`NeverExit` for the full model), its calibration, and every candidate."""

    chosen: str
    policy: ExitPolicy
    calibration: Calibration
    candidates: list[Candidate]
    family_delta: float  # the level each candidate was tested at: δ/K

    @property
    def full_model(self) -> bool:
        return self.chosen == FULL_MODEL

    def metrics(self) -> dict[str, float]:
        values = self.calibration.metrics()
        values |= {
            "auto_candidates": float(len(self.candidates)),
            "auto_full_model": float(self.full_model),
            "auto_family_delta": self.family_delta,
            "auto_cal_cost": self.cost,
        }
        for c in self.candidates:
            values[f"auto_{c.name}_certified"] = float(c.certified)
            values[f"auto_{c.name}_cal_cost"] = c.cal_cost
            values[f"auto_{c.name}_cal_drop"] = c.cal_drop
            values[f"auto_{c.name}_tested"] = float(c.tested)
            if math.isfinite(c.threshold):
                values[f"auto_{c.name}_threshold"] = c.threshold
        return values

    @property
    def cost(self) -> float:
        """The chosen candidate's estimated cost on calibration (1.000: the full model)."""
        return next((c.cal_cost for c in self.candidates if c.name == self.chosen), 1.0)


def candidate_scores(family: AutoPolicy, records: LayerRecords) -> dict[str, np.ndarray]:
    """Each fitted candidate's scores on ``records``, by name: computed once, read by
    :func:`select` and :func:`family_resplit_check`."""
    return {name: c.scores(records) for name, c in family.candidates.items()}


def _full_model(family: AutoPolicy, num_layers: int) -> NeverExit:
    policy = NeverExit(family.features)
    policy.num_layers = num_layers
    return policy


def select(
    family: AutoPolicy,
    train: LayerRecords,
    calibration: LayerRecords,
    limit: RiskLimit,
    model_config: Any,
    probe: PricedLens | None = None,
    prices: ReadPrices | None = None,
    scores: dict[str, np.ndarray] | None = None,
    train_scores: dict[str, np.ndarray] | None = None,
) -> Selection:
    """Certify each of ``family``'s fitted candidates at δ/K on ``calibration``, and choose the
    cheapest certified one whose estimated honest FLOPs ratio there is below 1.000, else the
    full model (the module's docstring). ``model_config`` and ``probe`` price the reads;
    ``prices``, a ``schedule="auto"`` candidate's schedules. ``scores`` / ``train_scores``: each
    candidate's scores on ``calibration`` / ``train`` by name, where already computed
    (:func:`family_resplit_check`). The family's candidates are left as they are: the chosen
    policy is a copy."""
    k = len(family.candidates)
    level = replace(limit, delta=limit.delta / k)
    scores, train_scores = scores or {}, train_scores or {}
    report, policies, calibrations = [], {}, {}
    for name, candidate in family.candidates.items():
        # calibrate sets the threshold (and an auto schedule): on the candidate itself, put
        # back after; only the chosen one is copied (an SVM's copy is dear, once per re-split)
        before = (candidate.threshold, candidate.chosen_schedule)
        on_cal = scores[name] if name in scores else candidate.scores(calibration)
        chosen = calibrate(
            candidate, train, calibration, level, prices, on_cal, train_scores.get(name)
        )
        cost = 1.0
        if chosen.certified:
            exits = candidate.first_exits(on_cal > candidate.threshold)
            ratios = trace_flops_ratio(exits, calibration.seq_len, model_config, candidate, probe)
            cost = float(np.mean(ratios))
        found = (chosen.certified, chosen.threshold, chosen.tested, cost, chosen.cal_drop)
        report.append(Candidate(name, *found))
        policies[name] = (chosen.threshold, candidate.chosen_schedule)
        calibrations[name] = chosen
        candidate.threshold, candidate.chosen_schedule = before
    paying = [c for c in report if c.certified and c.cal_cost < 1.0]
    if not paying:
        nothing = Calibration(np.inf, 0, calibration.num_instances, 1.0, 0.0, 0.0, 0, False)
        policy = _full_model(family, calibration.num_layers)
        return Selection(FULL_MODEL, policy, nothing, report, level.delta)
    best = min(paying, key=lambda c: c.cal_cost)
    policy = copy.deepcopy(family.candidates[best.name])
    policy.threshold, policy.chosen_schedule = policies[best.name]
    return Selection(best.name, policy, calibrations[best.name], report, level.delta)


def family_resplit_check(
    family: AutoPolicy,
    train: LayerRecords,
    calibration: LayerRecords,
    test: LayerRecords,
    limit: RiskLimit,
    splits: int,
    model_config: Any,
    probe: PricedLens | None = None,
    prices: ReadPrices | None = None,
    seed: int = 0,
    scores: dict[str, np.ndarray] | None = None,
    train_scores: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """:func:`adainfer.decide.risk.resplit_check` for a family: on every re-split the whole
    procedure runs again, certification of every candidate *and* the choice, on that split's
    calibration part; adds ``risk_resplit_full_model_rate``, how often the full model was
    chosen, and ``risk_resplit_cal_cost_mean``, the chosen estimated cost. ``scores`` /
    ``train_scores``: each candidate's scores on ``calibration`` / ``train``, where already
    computed (:func:`candidate_scores`); only the test part is scored then."""
    pool = LayerRecords.concat([calibration, test])
    scores = scores or candidate_scores(family, calibration)
    train_scores = train_scores or candidate_scores(family, train)
    pool_scores = {
        k: np.concatenate([scores[k], c.scores(test)]) for k, c in family.candidates.items()
    }
    chosen_full, chosen_cost = [], []

    def procedure(on_cal: np.ndarray) -> tuple[np.ndarray, bool]:
        cal = pool.take(on_cal)
        on = {k: s[on_cal] for k, s in pool_scores.items()}
        picked = select(family, train, cal, limit, model_config, probe, prices, on, train_scores)
        chosen_full.append(picked.full_model)
        chosen_cost.append(picked.cost)
        if picked.full_model:
            return np.full(pool.num_instances, pool.num_layers), False
        policy = picked.policy
        return policy.first_exits(pool_scores[picked.chosen] > policy.threshold), True

    rates = resplit_rates(pool, calibration.num_instances, procedure, limit, splits, seed)
    rates["risk_resplit_full_model_rate"] = float(np.mean(chosen_full))
    rates["risk_resplit_cal_cost_mean"] = float(np.mean(chosen_cost))
    return rates
