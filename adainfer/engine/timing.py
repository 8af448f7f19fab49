"""Wall time of an early-exit run, and the time model of the work it did.

:func:`time_against_full` — measured wall time of the engine against the model's own
forward on the same batches, in the same process. :func:`measure_prices`, :func:`price_policy`
and :func:`timed_ideal_speedup` give the speedup the executed work predicts when each part
(layer inputs, layers, probes, policy calls) is priced at its *measured* time on its own shape:
on a CPU at small batch the head is a memory-bound matrix-vector product whose time share is
many times its FLOPs share. The FLOPs of the same work: :mod:`adainfer.decide.costs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from adainfer.choices import LABEL_FEATURES
from adainfer.decide.costs import run_costs
from adainfer.decide.policies import ExitPolicy
from adainfer.engine import EarlyExitEngine, EngineResult, layer_inputs
from adainfer.engine.online import decide, one_layer_view
from adainfer.errors import AdaInferError
from adainfer.llm.batching import on_trainer_device, one_device, probe_trainer
from adainfer.llm.lenses import Lens


@dataclass
class Timing:
    """Wall seconds per (repeat, batch), for the engine and for the full forward."""

    engine_s: np.ndarray  # [repeats, batches]
    full_s: np.ndarray  # [repeats, batches]
    result: EngineResult  # of the last timed engine pass (for run_costs)

    @property
    def speedup(self) -> float:
        """Median full-forward pass over median engine pass (each a sum over batches)."""
        return float(np.median(self.full_s.sum(1)) / np.median(self.engine_s.sum(1)))

    @property
    def best_speedup(self) -> float:
        """Sum over batches of each one's fastest repeat, full over engine (timeit's rule:
        on a shared machine the fastest run is the one least disturbed)."""
        return float(self.full_s.min(0).sum() / self.engine_s.min(0).sum())


def time_against_full(
    engines: dict[str, EarlyExitEngine],
    input_ids: list[list[int]],
    batch_size: int,
    repeats: int = 3,
    all_logits: bool = False,
) -> dict[str, Timing]:
    """Wall time of each engine vs ``model(...)`` on the same padded batches, same process.

    All engines must wrap the same model. The full forward runs without a KV cache (the engine
    keeps none) and, unless ``all_logits``, with ``logits_to_keep=1``: the LM head on one
    position per row, which is what answering the prompt needs. ``model(...)``'s default
    computes the head at every position — for Gemma-3 that alone costs more than all its
    layers — and would flatter the engine. Batch by batch, the full forward and then every
    engine run back to back, so a slow spell on a shared machine hits them alike; the first
    batch is run once by each as a warm-up.
    """
    first = next(iter(engines.values()))
    if any(engine.model is not first.model for engine in engines.values()):
        raise AdaInferError(
            "time_against_full: the engines wrap different models", "time each model apart"
        )
    batches = first.batches(input_ids, batch_size)
    keep = 0 if all_logits else 1

    @torch.no_grad()
    def full(ids: torch.Tensor, mask: torch.Tensor) -> None:
        first.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)

    runs = {"": full} | {name: engine.run_batch for name, engine in engines.items()}
    for run in runs.values():
        run(*batches[0][1:])
    seconds = {name: np.zeros((repeats, len(batches))) for name in runs}
    parts: dict[str, list] = {name: [] for name in engines}
    for r in range(repeats):
        for b, (index, ids, mask) in enumerate(batches):
            for name, run in runs.items():
                synchronize(ids.device)
                start = time.perf_counter()
                out = run(ids, mask)
                synchronize(ids.device)
                seconds[name][r, b] = time.perf_counter() - start
                if name and r == repeats - 1:
                    parts[name].append((index, out))
    return {
        name: Timing(seconds[name], seconds[""], EngineResult.merge(parts[name]))
        for name in engines
    }


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prices:
    """Measured seconds of the parts of a run, each timed by itself (fastest of a few):
    building a batch's layer inputs (embeddings, masks, rotary tables) at ``(w, B)``, one decoder
    layer and one probe on ``r`` rows of a batch of width ``w`` at ``(w, r)``, and one policy
    call on ``r`` rows at ``r``. The prices of :func:`timed_ideal_speedup`."""

    inputs: dict[tuple[int, int], float] = field(default_factory=dict)
    layer: dict[tuple[int, int], float] = field(default_factory=dict)
    probe: dict[tuple[int, int], float] = field(default_factory=dict)
    classify: dict[int, float] = field(default_factory=dict)


def _fastest(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def _part_seconds(
    engine: EarlyExitEngine, input_ids: torch.Tensor, attention_mask: torch.Tensor, repeats: int
) -> tuple[float, float, float]:
    """Seconds of building the layer inputs, of one decoder layer (all L / L) and of one
    probe of every row, on one batch, with nothing of the engine around them."""
    parts, device = engine.parts, input_ids.device
    rows, last = torch.arange(len(input_ids), device=device), attention_mask.sum(dim=1) - 1
    inputs = layer_inputs(engine.model, input_ids, attention_mask)

    def layers() -> torch.Tensor:
        hidden = inputs.hidden
        for i, layer in enumerate(parts.layers):
            out = layer(hidden, **inputs.kwargs(i))
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden[rows, last]

    build = _fastest(lambda: layer_inputs(engine.model, input_ids, attention_mask), repeats, device)
    per_layer = _fastest(layers, repeats, device) / parts.num_layers
    last_hidden = layers().float()
    return build, per_layer, _fastest(lambda: engine.probe(last_hidden), repeats, device)


def measure_prices(
    engine: EarlyExitEngine,
    batches: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
    results: list[EngineResult],
    repeats: int = 3,
) -> Prices:
    """Price every shape the full model and ``results`` ran: for each batch width ``w`` and
    each row count ``r`` a layer ran or a probe read, time the layer inputs, L layers and one
    probe on the first ``r`` rows of a batch of that width (``batches`` as
    :meth:`EarlyExitEngine.batches` makes them, the ones the results came from). The policy
    calls are priced apart, per policy (:func:`price_policy`)."""
    source: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    needed: set[tuple[int, int]] = set()
    for _, ids, mask in batches:
        width = ids.shape[1]
        needed.add((width, len(ids)))
        if width not in source or len(ids) > len(source[width][0]):
            source[width] = (ids, mask)
    for result in results:
        for work in result.work:
            needed.update((work.width, r) for r in (*work.rows, *work.probed) if r)
    prices = Prices()
    for width, r in sorted(needed):
        ids, mask = source[width]
        seconds = _part_seconds(engine, ids[:r], mask[:r], repeats)
        prices.inputs[width, r], prices.layer[width, r], prices.probe[width, r] = seconds
    return prices


def price_policy(
    prices: Prices,
    policy: ExitPolicy,
    result: EngineResult,
    repeats: int = 3,
    hidden_size: int | None = None,
) -> Prices:
    """``prices`` plus the seconds of one call of ``policy`` on ``r`` rows, for each ``r`` the
    work log scored, on a one-layer view of feature values the run recorded (a call's time
    does not depend on the values); a policy that reads hidden states gets states of
    ``hidden_size`` (the model's), as the engine hands them over; a label-row read's policy,
    label features (the read itself, |labels| rows of the head, is not timed apart)."""
    if policy.reads_hidden and hidden_size is None:
        raise AdaInferError(
            f"policy {policy.name!r} reads hidden states: its calls are priced on states of "
            "the model's width",
            "pass hidden_size=loaded.hidden_size",
        )
    counts = sorted({r for work in result.work for r in work.classified if r})
    classify = {}
    for r in counts:
        values = {}
        for name, column in result.values.items():
            seen = column[~np.isnan(column)]
            if len(seen):
                values[name] = np.resize(seen, r).astype(np.float32)
        if policy.reads_labels:  # a label-row read: the engine keeps no such column
            rng = np.random.default_rng(0)
            values |= {name: rng.random(r).astype(np.float32) for name in LABEL_FEATURES}
        states = None
        if policy.reads_hidden:
            states = (
                np.random.default_rng(0).standard_normal((r, 1, hidden_size)).astype(np.float16)
            )
        view = one_layer_view(
            values, np.resize(result.prediction, r), np.resize(result.seq_len, r), states
        )
        call = partial(decide, policy, policy.first_layer, view, r)
        classify[r] = _fastest(call, repeats, torch.device("cpu"))
    return replace(prices, classify=classify)


def timed_ideal_speedup(result: EngineResult, prices: Prices) -> float:
    """The speedup the engine's executed work would give with no engine around it: per batch,
    the full model's layer inputs, L layers and one probe on all B rows, over the layer inputs,
    layers, probes and policy calls the work log says ran, each priced at the measured time of
    its own shape (:func:`measure_prices`, :func:`price_policy`). Measured / this is the
    engine's own efficiency: compaction, the features, the bookkeeping, Python."""
    full = engine = 0.0
    for work in result.work:
        width, batch = work.width, len(work.seq_len)
        built = prices.inputs[width, batch]
        full += built + result.num_layers * prices.layer[width, batch]
        full += prices.probe[width, batch]
        engine += built + sum(prices.layer[width, r] for r in work.rows if r)
        engine += sum(prices.probe[width, r] for r in work.probed if r)
        engine += sum(prices.classify[r] for r in work.classified if r)
    return full / engine


def engine_metrics(
    loaded: Any,
    policy: ExitPolicy,
    input_ids: list[list[int]],
    batch_size: int,
    trace_exits: np.ndarray | None = None,
    gold: np.ndarray | None = None,
    probe: Lens | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run a fitted policy online over prompts and return ``engine_*`` metrics for a run.

    One timed pass of the engine and one of the full forward (see :func:`time_against_full`);
    with ``trace_exits``, the share of prompts whose online exit equals the trace evaluation's
    (1.0 unless float noise flips a decision at its threshold); with ``gold``, the accuracy.
    Both run where the model is; with ``trainer_kwargs`` (``trainer.*``), it is first put on
    that Trainer's device (the first of ``trainer.devices``:
    :func:`adainfer.llm.batching.on_trainer_device`), as the feature extraction puts it: a job
    whose records all came from the trace store times the device it asked for too.
    """
    if trainer_kwargs is not None:
        on_trainer_device(loaded, probe_trainer(one_device(trainer_kwargs)))
    engine = EarlyExitEngine(loaded, policy, probe)
    timing = time_against_full({"engine": engine}, input_ids, batch_size, repeats=1)["engine"]
    result = timing.result
    cost = run_costs(result, loaded.config, policy, probe)
    metrics = {
        "engine_exit_layer_mean": float(result.exit_layer.mean()),
        "engine_eq2_ratio": cost.eq2_ratio,
        "engine_flops_ratio": cost.flops_ratio,
        "engine_ideal_speedup": cost.ideal_speedup_flops,
        "engine_speedup": timing.speedup,
        "engine_seconds": float(timing.engine_s.sum()),
        "full_forward_seconds": float(timing.full_s.sum()),
    }
    if trace_exits is not None:
        metrics["engine_trace_agreement"] = float(np.mean(result.exit_layer == trace_exits))
    if gold is not None:
        metrics["engine_acc"] = float(np.mean(result.prediction == gold))
    return metrics
