"""Valid p-values for ``H: E[X] ≥ level`` from i.i.d. ``X_i`` in [0, 1], and the upper
confidence bounds they give: what Learn-then-Test (:mod:`adainfer.decide.risk`) tests each threshold
with.

A p-value is *valid* when, under the null, ``P(p ≤ δ) ≤ δ`` for every δ. All three below are,
each under its own assumption about the losses:

- :func:`binomial_p_value`: the exact binomial tail, for 0/1 losses only. The most powerful of
  the three there, and useless for anything else.
- :func:`hb_p_value`: Hoeffding–Bentkus, for any losses in [0, 1] (Bates, Angelopoulos, Lei,
  Malik, Jordan, 2021, "Distribution-free, risk-controlling prediction sets", JACM;
  Angelopoulos et al., 2021, "Learn then Test", arXiv:2110.01052, Prop. 3). It looks at the
  mean only, so it is never sharper than the binomial on 0/1 losses and pays for every unit of
  range: on losses that sit mostly mid-range it needs far more data.
- :func:`wsr_p_value`: Waudby-Smith–Ramdas betting (2023, "Estimating means of bounded random
  variables by betting", JRSS-B): a bettor who wagers that the mean is below ``level`` grows
  her capital when it is; Ville's inequality makes ``1 / max_t K_t`` a valid p-value. The bets
  adapt to the losses' variance, so mostly-constant losses cost little. The bets are
  predictable (each uses only earlier losses), which makes the p-value depend on the order of
  the data: it is deterministic given that order (:mod:`adainfer.decide.risk` keeps the calibration
  records' own order, itself a random draw).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import xlogy
from scipy.stats import beta, binom

# WSR's truncation of a bet: the capital keeps at least 1 - c of itself on the worst loss.
WSR_TRUNCATION = 0.75


def binomial_p_value(k: int, n: int, level: float) -> float:
    """Exact p-value of ``H: p ≥ level`` after ``k`` ones in ``n`` Bernoulli(p) draws."""
    return float(binom.cdf(k, n, level))


def clopper_pearson(k: int, n: int, delta: float) -> float:
    """One-sided (1−δ) Clopper–Pearson upper confidence bound on a Bernoulli mean."""
    return 1.0 if k >= n else float(beta.ppf(1 - delta, k + 1, n - k))


def hb_p_value(total: float, n: int, level: float) -> float:
    """Hoeffding–Bentkus p-value of ``H: E[X] ≥ level`` from ``total = Σ X_i`` of ``n`` draws
    in [0, 1]: ``min(exp(−n·h(min(μ̂, level), level)), e·P(Bin(n, level) ≤ ⌈n μ̂⌉))`` with
    ``μ̂ = total / n`` and ``h(a, b) = a log(a/b) + (1−a) log((1−a)/(1−b))``."""
    mean = min(total / n, level)
    h = xlogy(mean, mean / level) + xlogy(1 - mean, (1 - mean) / (1 - level))
    hoeffding = math.exp(-n * h)
    # ⌈total⌉, safe against a sum of halves that floating point left a hair above an integer
    bentkus = math.e * binom.cdf(math.ceil(total - 1e-9), n, level)
    return float(min(1.0, hoeffding, bentkus))


def wsr_p_value(x: np.ndarray, level: float, delta: float) -> float:
    """Waudby-Smith–Ramdas betting p-value of ``H: E[X] ≥ level`` from ``x`` (values in
    [0, 1], in the order given): ``min(1, 1 / max_t K_t)`` with the capital
    ``K_t = Π_{i≤t} (1 − ν_i (x_i − level))``.

    The bets are WSR's predictable plug-in (their Sec. 5, sized for a test of ``n`` draws at
    level ``delta``), ``ν_i = min(sqrt(2 log(1/δ) / (n σ̂²_{i−1})), c / (1 − level))`` with
    ``σ̂²_t = (1/4 + Σ_{j≤t} (x_j − μ̂_j)²) / (t + 1)``, ``μ̂_t = (1/2 + Σ_{j≤t} x_j) / (t + 1)``
    and ``c`` = :data:`WSR_TRUNCATION`. Each factor is ≥ 1 − c > 0, and under the null its
    expectation given the past is ``1 − ν_i (E[X] − level) ≤ 1``: the capital is a nonnegative
    supermartingale and Ville's inequality bounds ``P(max_t K_t ≥ 1/δ) ≤ δ``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    t = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    before = np.concatenate([[0.25], var[:-1]])  # σ̂²_{i−1}: bets see only earlier losses
    bets = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * before)), WSR_TRUNCATION / (1 - level))
    log_capital = np.cumsum(np.log1p(-bets * (x - level)))
    return float(math.exp(-max(0.0, float(log_capital.max()))))


def inverted_upper_bound(p_at: Callable[[float], float], delta: float) -> float:
    """The (1−δ) upper confidence bound a test gives: the smallest level in (0, 1) whose null
    ``E[X] ≥ level`` it rejects at δ (bisection; ``p_at`` must not increase with the level, as
    :func:`hb_p_value` and :func:`wsr_p_value` do not). 1.0 when it rejects none."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if p_at(mid) <= delta:
            high = mid
        else:
            low = mid
    return high
