"""The dynamic program that chooses a probe schedule, checked against brute force over every
subset of the layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adainfer.policies import first_exit
from adainfer.schedule import InstanceCosts, ReadPrices, best_schedule, instance_costs


# -- a plain reference: the exit model and its cost, instance by instance -----------------------
def model_exit(t: int, schedule: tuple[int, ...], L: int) -> int:
    """The first scheduled layer at or after the first stop ``t``, else the last layer."""
    return next((s for s in sorted(schedule) if s >= t), L)


def model_cost(first_stop, schedule, costs: InstanceCosts, L: int) -> float:
    total = 0.0
    for n, t in enumerate(first_stop):
        e = model_exit(int(t), schedule, L)
        reads = sum(1 for s in schedule if s <= e)
        answer = costs.stop[n] if e < L else costs.last[n]
        total += e * costs.layer[n] + reads * costs.read[n] + answer
    return total


def brute_force(first_stop, costs: InstanceCosts, L: int, first_layer: int):
    """(least cost, every schedule of that cost) over all subsets of first_layer..L-1."""
    layers = range(first_layer, L)
    scored = [
        (model_cost(first_stop, s, costs, L), s)
        for r in range(len(layers) + 1)
        for s in itertools.combinations(layers, r)
    ]
    best = min(c for c, _ in scored)
    return best, [s for c, s in scored if np.isclose(c, best, rtol=1e-12, atol=0)]


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(2, 9))
    first_layer = int(rng.integers(1, L + 1))
    n = int(rng.integers(1, 30))
    stop = rng.random((n, L)) < rng.uniform(0.05, 0.6)  # not monotone: any mask
    layers = np.arange(1, L + 1)
    first_stop = first_exit(stop & (layers >= first_layer) & (layers < L))
    widths = rng.integers(3, 200, n)
    return rng, L, first_layer, first_stop, widths


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("probe_price", [0.0, 0.3, 2.5, 40.0])
def test_the_dp_finds_the_least_cost_that_brute_force_finds(seed, probe_price):
    """Random first stops, prompt lengths and read prices; every subset of the layers tried."""
    rng, L, first_layer, first_stop, widths = _random_case(seed)
    # a layer's price grows with the prompt (a linear and a quadratic term, as costs.layer)
    prices = ReadPrices(lambda w: 10.0 * w + 0.05 * w * w, probe_price * 1000.0, 900.0, 64)
    for reads_probe, decides in [(True, True), (False, True), (False, False)]:
        decision = float(rng.uniform(0, 50))
        costs = instance_costs(prices, widths, L, reads_probe, decision, decides)
        schedule, cost = best_schedule(first_stop, costs, L, first_layer)
        best, optimal = brute_force(first_stop, costs, L, first_layer)
        assert cost == pytest.approx(best, rel=1e-12)
        assert model_cost(first_stop, schedule, costs, L) == pytest.approx(best, rel=1e-12)
        assert schedule in optimal
        assert all(first_layer <= s < L for s in schedule) and list(schedule) == sorted(schedule)


@pytest.mark.parametrize("seed", range(20))
def test_the_dp_finds_brute_forces_least_cost_with_any_per_instance_prices(seed):
    rng, L, first_layer, first_stop, _ = _random_case(seed)
    n = len(first_stop)
    costs = InstanceCosts(*(rng.uniform(0, 5, n) for _ in range(4)))
    schedule, cost = best_schedule(first_stop, costs, L, first_layer)
    best, optimal = brute_force(first_stop, costs, L, first_layer)
    assert cost == pytest.approx(best, rel=1e-12) and schedule in optimal


def test_free_reads_ask_where_someone_stops_and_dear_ones_ask_nowhere():
    first_stop = np.array([2, 2, 5, 6, 6])  # L = 6: the last two never stop
    cheap = InstanceCosts(*(np.full(5, x) for x in (1.0, 0.0, 0.0, 0.0)))
    assert best_schedule(first_stop, cheap, 6)[0] == (2, 5)  # ties: no read where none stops
    dear = InstanceCosts(*(np.full(5, x) for x in (1.0, 100.0, 0.0, 0.0)))
    assert best_schedule(first_stop, dear, 6) == ((), 30.0)  # the full model: 5 · 6 layers
