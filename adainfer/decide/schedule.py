"""Which layers a policy is asked at: a cost-aware probe schedule, chosen by dynamic programming.

Asking a policy after a layer is a *read*, and a read is not free: through a probe (logit lens,
tuned lens) it costs a full-vocabulary LM head, plus the translator and the policy's decision;
for a head on the hidden state (``state``) it is that decision alone. Asking at every layer
makes each exit as early as it can be and pays a read at each. A schedule S ⊆ {first_layer,
..., L-1} asks at its layers only: an instance exits at the first layer of S where the policy
says stop, or runs to the last layer L, where every instance gives the full model's answer.

:func:`best_schedule` picks the S that minimises the total honest cost of a set of instances
under this *exit model*: instance n, whose first stop with every layer asked is ``t_n``
(``L`` when it never stops), exits at the first ``s ∈ S`` with ``s ≥ t_n`` (else ``L``) and pays

    exit·layer_n + (reads of S it passes, its exit's included)·read_n
                 + (stop_n if it exits below L, else last_n)

``layer_n`` is one decoder layer on its prompt, ``read_n`` one read, ``stop_n`` what an early
exit costs beyond its read (the answer's LM head, for a policy that decides without a probe),
``last_n`` the last layer's answer (:func:`adainfer.decide.costs.read_prices` prices them in FLOPs,
as the engine pays them at batch size 1; a policy's ``read_price`` prices a probe in decoder layers
instead, its cost in time where that is not its FLOPs; :func:`instance_costs` divides each
instance's by its full-model cost, so the total is N times the mean ``honest_flops_ratio`` that
trace evaluation logs).

The exit model is exact — these are the exits the policy really makes under S — when a stop
stays on once on (``stop[n, l]`` implies ``stop[n, l']`` for every ``l' > l``). Otherwise it
is the cost model the schedule is chosen by: the real exit under S can come later than the
modelled one, when the stop signal is off again at the layers S asks.

With ``f(j)`` the least cost of the instances not yet exited after a read at layer ``j``
(``j = first_layer - 1``: no read yet), and ``T(a, b]`` the instances with ``a < t_n ≤ b``::

    f(j) = min( Σ_{T(j, L]} (L·layer_n + last_n),                          stop reading
                min_{j<k<L} Σ_{T(j, k]} (k·layer_n + stop_n)
                            + Σ_{T(j, L]} read_n + f(k) )                   next read at k

O(L²) with prefix sums over the layers (L ≤ 80 or so), after O(N) to bucket the instances.
Plain NumPy: nothing here knows a model or a policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReadPrices:
    """What the engine pays on one model, in FLOPs (:func:`adainfer.decide.costs.read_prices`)."""

    layer: Callable[[int], float]  # one decoder layer on one row of that many positions
    probe: float  # a read through the probe below the last layer: head, softmax, top-2, translator
    answer: float  # the last layer's answer: LM head and argmax
    hidden: int  # the model's hidden size, which prices a policy's decisions
    # A probe's price in decoder layers of the prompt it reads, in place of ``probe`` (a
    # policy's ``read_price``): what it costs in time where that is not its FLOPs, e.g. at
    # batch size 1 on a CPU (scripts/bench_engine.py prints it).
    probe_layers: float | None = None
    # A read of that many label rows of the LM head (a label-row read, translator included)
    label_read: Callable[[int], float] | None = None


@dataclass(frozen=True)
class InstanceCosts:
    """Per instance (arrays [N]), the parts of its honest cost the schedule decides."""

    layer: np.ndarray  # one decoder layer
    read: np.ndarray  # one read: asking the policy at a scheduled layer
    stop: np.ndarray  # an exit below the last layer, beyond its read
    last: np.ndarray  # the last layer's answer

    def scaled(self, by: np.ndarray) -> InstanceCosts:
        """Every part times ``by`` (e.g. 1 / the full model's cost: ratios)."""
        return InstanceCosts(self.layer * by, self.read * by, self.stop * by, self.last * by)


def instance_costs(
    prices: ReadPrices,
    seq_len: np.ndarray,
    num_layers: int,
    reads_probe: bool,
    decision: float,
    decides: bool,
) -> InstanceCosts:
    """The parts of each instance's honest FLOPs ratio (over the full model's answer, as
    :func:`adainfer.decide.costs.trace_flops_ratio` counts it) for a policy that reads a probe
    (``reads_probe``: a read is a probe and a decision, and an exit needs nothing more) or not
    (a read is a ``decision`` where it ``decides``, and an exit below the last layer costs a
    probe, for its answer)."""
    layer = np.array([prices.layer(int(w)) for w in seq_len], dtype=np.float64)
    full = num_layers * layer + prices.answer
    ones = np.ones_like(layer)
    probe = prices.probe * ones if prices.probe_layers is None else prices.probe_layers * layer
    read = (probe if reads_probe else 0.0) + (decision if decides else 0.0)
    stop = 0.0 if reads_probe else probe
    return InstanceCosts(layer, read * ones, stop * ones, prices.answer * ones).scaled(1.0 / full)


def best_schedule(
    first_stop: np.ndarray, costs: InstanceCosts, num_layers: int, first_layer: int = 1
) -> tuple[tuple[int, ...], float]:
    """The schedule S ⊆ {first_layer..num_layers-1} of least total cost under the exit model
    (module docstring), and that cost. Of equal costs, the fewest reads win, then the earliest.
    """
    L = num_layers
    if not 1 <= first_layer <= L:
        raise ValueError(f"first_layer={first_layer} is not a layer of 1..{L}")
    t = np.clip(np.asarray(first_stop, dtype=np.int64), first_layer, L)

    def prefix(values: np.ndarray) -> np.ndarray:  # [b] - [a]: Σ over the a < t_n ≤ b
        return np.concatenate([[0.0], np.cumsum(np.bincount(t, values, minlength=L + 1)[1:])])

    by_layer, by_stop, by_read = prefix(costs.layer), prefix(costs.stop), prefix(costs.read)
    by_final = prefix(L * costs.layer + costs.last)
    f = np.zeros(L + 1)
    reads = np.zeros(L + 1, dtype=np.int64)  # on f's path: ties go to the fewer reads
    step = np.full(L + 1, -1, dtype=np.int64)  # the next read after j; -1: stop reading
    for j in range(L - 1, first_layer - 2, -1):
        best, fewest = by_final[L] - by_final[j], 0
        after = by_read[L] - by_read[j]
        for k in range(j + 1, L):
            cost = k * (by_layer[k] - by_layer[j]) + (by_stop[k] - by_stop[j]) + after + f[k]
            if cost < best or (cost == best and reads[k] + 1 < fewest):
                best, fewest, step[j] = cost, reads[k] + 1, k
        f[j], reads[j] = best, fewest
    schedule, j = [], first_layer - 1
    while step[j] >= 0:
        j = int(step[j])
        schedule.append(j)
    return tuple(schedule), float(f[first_layer - 1])
