"""Risk-controlled exit: pick a policy's threshold so that accuracy drops by at most ε, w.p. 1−δ.

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei, 2021, "Learn then Test: Calibrating
Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052), with a valid p-value per
threshold (``risk.bound``) on a per-instance loss (``risk.loss``) and fixed-sequence testing:

- **Loss.** On a labelled calibration instance exited at threshold λ:

  - ``flip`` (default): ``ℓ(λ) = 1[the full model is right and the exit is wrong]``. The
    accuracy drop against the full model, ``E[1[full right] − 1[exit right]]``, is at most
    ``R(λ) = E[ℓ(λ)]``, so ``R(λ) ≤ ε`` guarantees a drop of at most ε (conservatively: an
    exit that fixes a wrong full-model answer earns no credit).
  - ``drop``: ``ℓ(λ) = 1[full right] − 1[exit right]`` in {−1, 0, 1}, whose mean *is* the
    accuracy drop: a fixed answer pays for a lost one. The bounded-mean bounds test it
    rescaled to [0, 1], ``(ℓ + 1)/2`` against ``(ε + 1)/2``.

- **Tests.** For each λ, the null hypothesis ``H_λ: R(λ) > ε`` gets a p-value
  (:mod:`adainfer.decide.bounds`): ``binomial`` (default), the exact ``P(Binomial(n, ε) ≤ Σ
  ℓ_i(λ))`` (for i.i.d. calibration instances Σ ℓ is Binomial(n, R(λ)), and under the null this tail
  is at most its value at R = ε; 0/1 losses only, so ``flip`` only); ``hb``, Hoeffding–Bentkus;
  ``wsr``, Waudby-Smith–Ramdas betting, fed the losses in the calibration records' order.
- **Fixed-sequence testing.** The candidate thresholds are ordered from the most cautious
  (+∞: never exit, zero loss by construction) to the most aggressive *before* looking at the
  calibration data (they are quantiles of the policy's scores on the train split). Walk down
  the list and reject while ``p_λ ≤ δ``; stop at the first failure. This controls the
  family-wise error rate at δ for any loss, monotone or not, so the most aggressive rejected λ̂
  has ``P(R(λ̂) > ε) ≤ δ`` over the draw of the calibration set.

With ``schedule=auto`` (:mod:`adainfer.decide.schedule`) a candidate is a pair: the threshold λ and
the schedule chosen for λ on the train split. Both are fixed before the calibration data is
looked at, so the same argument holds for the pairs; the losses are those of the exits the
pair makes (with ``schedule=all``, every layer is asked and a candidate is λ alone). A pair
whose schedule asks at no layer is the full model, as +∞ is: it needs no test and is skipped.

With ``n`` calibration instances, a threshold with ``k`` losses is accepted (binomial) only
when ``P(Bin(n, ε) ≤ k) ≤ δ``: at ε = 0.01 and δ = 0.1, ``n ≥ 230`` for ``k = 0``. Smaller
calibration sets can certify nothing and leave the full model — the guarantee costs data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from adainfer.choices import RISK_BOUNDS, RISK_LOSSES, bound_loss_mismatch
from adainfer.decide.bounds import (
    binomial_p_value,
    clopper_pearson,
    hb_p_value,
    inverted_upper_bound,
    wsr_p_value,
)
from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.records import LayerRecords
from adainfer.decide.schedule import ReadPrices
from adainfer.errors import AdaInferError


@dataclass(frozen=True)
class RiskLimit:
    """The user's knob: lose at most ``epsilon`` accuracy, with probability ≥ 1 − ``delta``;
    ``bound`` and ``loss`` say how each threshold is tested (see the module's docstring)."""

    epsilon: float
    delta: float = 0.1
    grid: int = 200  # candidate thresholds (quantiles of the train scores)
    bound: str = "binomial"  # the p-value of H_λ: binomial, hb or wsr (adainfer.decide.bounds)
    loss: str = "flip"  # flip (no credit for fixes) or drop (the signed accuracy drop)

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1:
            raise AdaInferError(
                f"risk.epsilon={self.epsilon} is not a fraction in (0, 1)",
                "give the accuracy you may lose as a fraction, e.g. risk.epsilon=0.01 (1 point)",
            )
        if not 0 < self.delta < 1:
            raise AdaInferError(
                f"risk.delta={self.delta} is not a probability in (0, 1)",
                "use e.g. risk.delta=0.1",
            )
        if self.grid < 1:
            raise AdaInferError(f"risk.grid={self.grid}", "use one or more candidate thresholds")
        named = (("bound", self.bound, RISK_BOUNDS), ("loss", self.loss, RISK_LOSSES))
        for key, value, names in named:
            if value not in names:
                raise AdaInferError(f"unknown risk.{key}={value!r}", f"use one of {list(names)}")
        mismatch = bound_loss_mismatch(self.bound, self.loss)
        if mismatch:
            raise AdaInferError(*mismatch)


@dataclass(frozen=True)
class Calibration:
    """What calibration chose and why (logged with a ``risk_`` prefix)."""

    threshold: float  # λ̂; +inf: nothing certified, never exit
    losses: int  # Σ ℓ(λ̂) on the calibration split (drop: instances lost minus fixed)
    n: int  # calibration instances
    p_value: float  # of H_λ̂ (1.0 for +inf, which needs no test)
    # one-sided (1−δ) upper confidence bound on R(λ̂) from the same bound: Clopper–Pearson
    # (binomial), the smallest ε that hb or wsr would reject at; loss=drop: on the drop's scale
    upper_bound: float
    cal_drop: float  # acc_full − acc at λ̂ on the calibration split
    tested: int  # thresholds rejected before the first failure
    certified: bool  # whether any finite threshold was certified

    def metrics(self) -> dict[str, float]:
        """The fields as ``risk_*`` metrics. An infinite threshold (nothing certified) is left
        out: MLflow would store it as 1.8e308; ``risk_certified=0`` says what happened."""
        values = {f"risk_{k}": float(v) for k, v in asdict(self).items()}
        if not math.isfinite(self.threshold):
            del values["risk_threshold"]
        return values


def losses(records: LayerRecords, exit_layer: np.ndarray, loss: str = "flip") -> np.ndarray:
    """ℓ per instance. ``flip``: the full model is right and the exit is wrong (bool);
    ``drop``: ``1[full right] − 1[exit right]`` in {−1, 0, 1} (int)."""
    result = apply_exits(records, exit_layer)
    full_right = result.full_prediction == records.gold
    exit_right = result.prediction == records.gold
    if loss == "drop":
        return full_right.astype(np.int64) - exit_right.astype(np.int64)
    return full_right & ~exit_right


def p_value(k: int, n: int, epsilon: float) -> float:
    """Exact binomial p-value of ``H: R > ε`` after ``k`` losses in ``n`` draws."""
    return binomial_p_value(k, n, epsilon)


def upper_bound(k: int, n: int, delta: float) -> float:
    """One-sided (1−δ) Clopper–Pearson upper confidence bound on a Bernoulli mean."""
    return clopper_pearson(k, n, delta)


def _unit(values: np.ndarray, limit: RiskLimit) -> tuple[np.ndarray, float]:
    """The losses and ε on [0, 1], as the bounded-mean bounds take them."""
    if limit.loss == "drop":
        return (values + 1) / 2, (limit.epsilon + 1) / 2
    return values.astype(np.float64), limit.epsilon


def _bounded_p_value(x: np.ndarray, limit: RiskLimit) -> Callable[[float], float]:
    """The p-value of ``H: E[x] > level`` as a function of the level, for losses ``x`` on
    [0, 1] under ``limit.bound`` (``hb`` or ``wsr``)."""
    if limit.bound == "hb":
        return lambda level: hb_p_value(float(x.sum()), x.size, level)
    return lambda level: wsr_p_value(x, level, limit.delta)


def risk_p_value(values: np.ndarray, limit: RiskLimit) -> float:
    """p-value of ``H: E[ℓ] > ε`` from the calibration losses ``values`` (:func:`losses`, in
    the calibration records' order, which ``wsr``'s bets follow) under ``limit.bound``."""
    if limit.bound == "binomial":
        return p_value(int(values.sum()), values.size, limit.epsilon)
    x, level = _unit(values, limit)
    return _bounded_p_value(x, limit)(level)


def risk_upper_bound(values: np.ndarray, limit: RiskLimit) -> float:
    """(1−δ) upper confidence bound on ``E[ℓ]`` from the same bound as :func:`risk_p_value`."""
    if limit.bound == "binomial":
        return upper_bound(int(values.sum()), values.size, limit.delta)
    x, _ = _unit(values, limit)
    bound = inverted_upper_bound(_bounded_p_value(x, limit), limit.delta)
    return 2 * bound - 1 if limit.loss == "drop" else bound


def candidate_thresholds(
    policy: ExitPolicy, train: LayerRecords, grid: int, scores: np.ndarray | None = None
) -> np.ndarray:
    """Thresholds from the most cautious (+∞) down: quantiles of the policy's train scores
    (``scores``, when already computed).

    They depend on the train split only, never on the calibration split, as fixed-sequence
    testing requires.
    """
    scores = (policy.scores(train) if scores is None else scores).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return np.array([np.inf])
    qs = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, grid)))
    # stop_mask is ``score > threshold``: nudging each quantile down lets it stop too.
    below = np.nextafter(qs, -np.inf)
    return np.concatenate([[np.inf], np.sort(below)[::-1]])


def check_calibratable(policy: ExitPolicy) -> None:
    """Refuse a policy without a threshold to set (:attr:`ExitPolicy.calibratable`; a Viterbi
    CRF decides by its tag path)."""
    if not policy.calibratable:
        raise AdaInferError(
            "risk control sets a threshold on the policy's scores, and "
            f"{policy.not_calibratable_because}",
            "give the CRF a threshold on its marginals (+classifier.threshold=0.5), "
            "or use another policy",
        )


def certify(
    policy: ExitPolicy,
    train: LayerRecords,
    limit: RiskLimit,
    losses_at: Callable[[float], np.ndarray],
    prices: ReadPrices | None = None,
    candidates: np.ndarray | None = None,
    train_scores: np.ndarray | None = None,
) -> tuple[float, np.ndarray | None, float, int]:
    """Fixed-sequence testing (the module's docstring): walk ``policy``'s candidates, the most
    cautious first, each set on the policy in turn (``policy.threshold`` and, with
    ``schedule="auto"``, the schedule chosen for it on ``train``), and test the calibration
    losses ``losses_at(threshold)`` gives there; stop at the first failure. Leaves the policy
    at the most aggressive threshold rejected (+inf when none) and returns it, its losses
    (None for +inf), its p-value and how many were rejected. ``candidates``: the finite
    thresholds to walk, most cautious first (default: :func:`candidate_thresholds` with
    ``limit.grid``), fixed before any calibration loss is seen. ``train_scores``: the policy's
    scores on ``train``, when already computed; otherwise they are computed once here."""
    auto = policy.schedule == "auto"
    if train_scores is None and (auto or candidates is None):
        train_scores = policy.scores(train)
    chosen, l_chosen, p_chosen, tested = np.inf, None, 1.0, 0
    if candidates is None:
        candidates = candidate_thresholds(policy, train, limit.grid, train_scores)[1:]
    for threshold in candidates:
        if auto and not policy.choose_schedule(train, prices, threshold, train_scores):
            continue  # asked nowhere (chosen on the train split alone): the full model, as +inf
        policy.threshold = float(threshold)
        values = losses_at(float(threshold))
        p = risk_p_value(values, limit)
        if p > limit.delta:
            break
        chosen, l_chosen, p_chosen, tested = float(threshold), values, p, tested + 1
    policy.threshold = chosen
    if auto:
        policy.choose_schedule(train, prices, chosen, train_scores)
    return chosen, l_chosen, p_chosen, tested


def calibrate(
    policy: ExitPolicy,
    train: LayerRecords,
    calibration: LayerRecords,
    limit: RiskLimit,
    prices: ReadPrices | None = None,
    scores: np.ndarray | None = None,
    train_scores: np.ndarray | None = None,
) -> Calibration:
    """Set ``policy.threshold`` to the most aggressive threshold Learn-then-Test certifies.

    ``policy`` must be fitted; ``calibration`` holds labelled instances not used to fit it.
    A policy with ``schedule="auto"`` gets, with each candidate threshold, the schedule chosen
    for it on ``train`` (never on ``calibration``), priced with ``prices``
    (:func:`adainfer.decide.costs.read_prices`); a candidate whose schedule is empty never exits and
    is skipped, as +inf needs no test; the policy ends with the certified threshold's schedule.
    ``scores``: the policy's scores on ``calibration`` where they are already computed
    (:func:`resplit_check` scores its pool once); a calibratable policy stops where its score
    is above its threshold, so they decide every exit here. ``train_scores``: its scores on
    ``train``, likewise (:func:`certify`).
    """
    check_calibratable(policy)
    n = calibration.num_instances
    if n == 0:
        raise AdaInferError(
            "risk control needs a calibration split, and it is empty",
            "set task.n_calibration (held-out instances, e.g. 500)",
        )
    if scores is None:
        scores = policy.scores(calibration)

    def losses_at(threshold: float) -> np.ndarray:
        return losses(calibration, policy.first_exits(scores > threshold), limit.loss)

    chosen, values, p_chosen, tested = certify(
        policy, train, limit, losses_at, prices, train_scores=train_scores
    )
    values = np.zeros(n, dtype=np.int64) if values is None else values  # +inf loses nothing
    exits = policy.first_exits(scores > policy.threshold)
    drop = apply_exits(calibration, exits).accuracy_drop(calibration.gold)
    return Calibration(
        threshold=chosen,
        losses=int(values.sum()),
        n=n,
        p_value=p_chosen,
        upper_bound=risk_upper_bound(values, limit),
        cal_drop=drop,
        tested=tested,
        certified=math.isfinite(chosen),
    )


def min_calibration_size(epsilon: float, delta: float) -> int:
    """The fewest calibration instances with which a loss-free threshold can be certified."""
    return math.ceil(math.log(delta) / math.log1p(-epsilon))


def resplit_check(
    policy: ExitPolicy,
    train: LayerRecords,
    calibration: LayerRecords,
    test: LayerRecords,
    limit: RiskLimit,
    splits: int,
    seed: int = 0,
    prices: ReadPrices | None = None,
) -> dict[str, float]:
    """Does the guarantee hold here? Pool calibration and test, redraw ``splits`` random
    calibration/test partitions of the same sizes, calibrate a copy of the fitted ``policy`` on
    each, and count how often its accuracy drop on the test part exceeds ε
    (:func:`resplit_rates` says what each rate means). ``prices``: for a policy with
    ``schedule="auto"`` (:func:`calibrate`). The fitted policy's scores do not depend on the
    split, so the pool and the train records are scored once (an SVM's scores are the costly
    part).
    """
    check_calibratable(policy)
    pool = LayerRecords.concat([calibration, test])
    pool_scores = policy.scores(pool)
    train_scores = policy.scores(train)

    def procedure(on_cal: np.ndarray) -> tuple[np.ndarray, bool]:
        trial = copy.deepcopy(policy)
        cal = pool.take(on_cal)
        chosen = calibrate(trial, train, cal, limit, prices, pool_scores[on_cal], train_scores)
        return trial.first_exits(pool_scores > trial.threshold), chosen.certified

    return resplit_rates(pool, calibration.num_instances, procedure, limit, splits, seed)


def resplit_rates(
    pool: LayerRecords,
    n_cal: int,
    procedure: Callable[[np.ndarray], tuple[np.ndarray, bool]],
    limit: RiskLimit,
    splits: int,
    seed: int = 0,
) -> dict[str, float]:
    """Redraw ``splits`` random partitions of ``pool`` into ``n_cal`` calibration instances and
    a held-out rest; ``procedure(calibration indices)`` runs the whole calibration on the first
    part (selection included, where there is one) and returns the exit layer of every pool
    instance and whether anything was certified. The guarantee bounds the expected drop over
    the population the calibration split is drawn from, here the pool:
    ``risk_resplit_pool_exceed_rate`` counts how often the drop over the whole pool exceeds ε
    (at most about δ if the guarantee holds; ``risk_resplit_pool_drop_mean``, its mean). The
    held-out part's rate, ``risk_resplit_exceed_rate``, adds that part's sampling noise
    (``risk_resplit_drop_sd`` holds both)."""
    rng = np.random.default_rng(seed)
    drops, pool_drops, certified, exits = [], [], [], []
    for _ in range(splits):
        order = rng.permutation(pool.num_instances)
        on_cal, on_held = order[:n_cal], order[n_cal:]
        pool_exits, was_certified = procedure(on_cal)
        certified.append(was_certified)
        held = pool.take(on_held)
        result = apply_exits(held, pool_exits[on_held])
        drops.append(result.accuracy_drop(held.gold))
        pool_drops.append(apply_exits(pool, pool_exits).accuracy_drop(pool.gold))
        exits.append(result.exit_layer.mean())
    drops_arr = np.asarray(drops)
    return {
        "risk_resplits": float(splits),
        "risk_resplit_exceed_rate": float(np.mean(drops_arr > limit.epsilon)),
        "risk_resplit_drop_mean": float(drops_arr.mean()),
        # the spread of the test drops: the test part's noise and the threshold's variation
        "risk_resplit_drop_sd": float(drops_arr.std()),
        "risk_resplit_drop_max": float(drops_arr.max()),
        # what the guarantee bounds: the drop over the population the calibration was drawn from
        "risk_resplit_pool_exceed_rate": float(np.mean(np.asarray(pool_drops) > limit.epsilon)),
        "risk_resplit_pool_drop_mean": float(np.mean(pool_drops)),
        "risk_resplit_certified_rate": float(np.mean(certified)),
        "risk_resplit_exit_layer_mean": float(np.mean(exits)),
    }
