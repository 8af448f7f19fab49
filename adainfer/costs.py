"""What an early-exit run really costs: Eq. 2, the FLOPs actually computed, and wall time.

(a) ``eq2_ratio`` — the paper's Eq. 2 (``adainfer.flops``): layers to the exit layer plus one
LM head, over the full depth plus one LM head, per instance, averaged.

(b) ``flops_ratio`` — the multiply-adds (2 FLOPs each) the engine actually executed, from its
work log, over those of the full model on the same padded batches. Per row of width ``s``
(the batch's padded length, since padded positions are computed too):

    layer(s)   = 2·s·h·(n_q·d)·2          q and o projections (n_q heads of size d)
               + 2·s·h·(n_kv·d)·2         k and v projections (n_kv key/value heads)
               + 2·2·s²·n_q·d             QK^T and A·V over all s×s pairs (SDPA computes the
                                          masked ones too, sliding-window layers included)
               + 2·s·h·I·m                MLP with m matrices (3 gated: Llama, Gemma; 2: OPT)
    probe      = 2·h'·V + 6·V             LM head on one position (h' = the width the head
               (+ 2·h·h' for OPT's          reads) + softmax (≈4V) and top-2 (≈2V)
                 project_out)
    classifier = per scored row, see :func:`classifier_flops`

    engine = Σ_batches Σ_l [rows_l·layer(s) + probed_l·probe + scored_l·classifier]
    full   = Σ_batches B·[L·layer(s) + 2·h'·V + V]      (head + argmax at one position)

Element-wise work (norms, residual adds, rotary, activations, masks, embeddings lookups) is
O(s·h) per layer and left out; it is under 1% of a layer at these sizes. Unlike (a), (b)
charges a probe at every visited layer: with Gemma-3's 262,144-token vocabulary one probe costs
about as much as a layer over a 30-token prompt, so (b) can be far from (a).

(c) :func:`time_against_full` — measured wall time of the engine against the model's own
forward on the same batches, in the same process. :func:`measure_prices`, :func:`price_policy`
and :func:`timed_ideal_speedup` give the speedup the executed work predicts when each part
(layer inputs, layers, probes, policy calls) is priced at its *measured* time on its own shape:
on a CPU at small batch the head is a memory-bound matrix-vector product whose time share is
many times its FLOPs share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from adainfer.engine import BatchWork, EarlyExitEngine, EngineResult, layer_inputs
from adainfer.engine.online import decide, one_layer_view
from adainfer.errors import AdaInferError
from adainfer.flops import flops_ratio
from adainfer.policies import ExitPolicy
from adainfer.probes import Probe


@dataclass(frozen=True)
class ModelDims:
    """The sizes the cost model needs, read from a transformers config."""

    num_layers: int
    hidden: int  # h
    intermediate: int  # I
    heads: int  # n_q
    kv_heads: int  # n_kv
    head_dim: int  # d
    vocab: int  # V
    mlp_matrices: int  # m: 3 for gated MLPs (Llama, Gemma), 2 for OPT's fc1/fc2
    head_in: int  # h': what the LM head reads (OPT's word_embed_proj_dim)

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """Sizes of a Llama-like, Gemma-3 or OPT config."""
        h, heads = config.hidden_size, config.num_attention_heads
        opt = config.model_type == "opt"
        return cls(
            num_layers=config.num_hidden_layers,
            hidden=h,
            intermediate=config.ffn_dim if opt else config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or h // heads,
            vocab=config.vocab_size,
            mlp_matrices=2 if opt else 3,
            head_in=getattr(config, "word_embed_proj_dim", None) or h,
        )

    def layer(self, width: int) -> float:
        """FLOPs of one decoder layer on one row of ``width`` positions."""
        s, h, d = float(width), self.hidden, self.head_dim
        projections = 2 * s * h * self.heads * d * 2 + 2 * s * h * self.kv_heads * d * 2
        attention = 2 * 2 * s * s * self.heads * d
        mlp = 2 * s * h * self.intermediate * self.mlp_matrices
        return projections + attention + mlp

    def head(self) -> float:
        """LM head on one position (with OPT's project_out when the widths differ)."""
        project_out = 2.0 * self.hidden * self.head_in if self.head_in != self.hidden else 0.0
        return project_out + 2.0 * self.head_in * self.vocab

    def probe(self) -> float:
        """Logit lens on one position: LM head, softmax and top-2."""
        return self.head() + 6.0 * self.vocab


def classifier_flops(policy: ExitPolicy, dims: ModelDims | None = None) -> float:
    """FLOPs of scoring one (instance, layer) with ``policy``, as the policy declares them
    (:meth:`~adainfer.policies.ExitPolicy.decision_flops`; e.g. an SVM's grow with its
    support vectors); 0 for a policy that can never stop early. A policy that declares no
    price is refused with an :class:`AdaInferError`."""
    if policy.never_stops():
        return 0.0
    hidden, layers = (dims.hidden, dims.num_layers) if dims else (None, policy.num_layers)
    return float(policy.decision_flops(hidden, layers))


@dataclass
class CostReport:
    """(a) and (b) for one engine run, with the breakdown of (b)."""

    eq2_ratio: float  # (a), mean over instances
    engine_flops: float
    full_flops: float
    layer_flops: float  # the engine's decoder layers
    probe_flops: float  # the engine's probes
    classifier_flops: float  # the engine's policy
    layer_rows: int  # Σ rows·layers the engine ran
    full_layer_rows: int  # Σ rows·L of the full model

    @property
    def flops_ratio(self) -> float:
        """(b): engine FLOPs over the full model's, on the same batches."""
        return self.engine_flops / self.full_flops

    @property
    def ideal_speedup_layers(self) -> float:
        """Full-model layer·rows over the engine's: the speedup if only layers cost time."""
        return self.full_layer_rows / self.layer_rows

    @property
    def ideal_speedup_flops(self) -> float:
        """The speedup (b) predicts, probes and classifier included."""
        return self.full_flops / self.engine_flops


def _translator_flops(probed: list[int], num_layers: int, probe: Probe | None) -> float:
    """A tuned lens's translators on the probed rows (none at the last layer: the identity)."""
    if probe is None:
        return 0.0
    return probe.flops() * sum(p for layer, p in enumerate(probed) if layer < num_layers - 1)


def _work_flops(
    dims: ModelDims, work: BatchWork, per_score: float, probe: Probe | None
) -> tuple[float, float, float, float]:
    """(layers, probes, classifier, full model) FLOPs of one batch's work log."""
    layer = dims.layer(work.width)
    # At the last layer every row stops: its answer costs the head and an argmax.
    last = work.probed[dims.num_layers - 1] if len(work.probed) == dims.num_layers else 0
    probes = dims.probe() * (sum(work.probed) - last) + (dims.head() + dims.vocab) * last
    probes += _translator_flops(work.probed, dims.num_layers, probe)
    full = len(work.seq_len) * (dims.num_layers * layer + dims.head() + dims.vocab)
    return layer * sum(work.rows), probes, per_score * sum(work.classified), full


def run_costs(
    result: EngineResult, config: Any, policy: ExitPolicy, probe: Probe | None = None
) -> CostReport:
    """Eq. 2 and the executed FLOPs of an engine run (see the module docstring); a tuned
    lens's translators count with the probes."""
    dims = ModelDims.from_config(config)
    per_score = classifier_flops(policy, dims)
    totals = np.zeros(4)  # layers, probes, classifier, full model
    layer_rows = full_rows = 0
    for work in result.work:
        totals += _work_flops(dims, work, per_score, probe)
        layer_rows += sum(work.rows)
        full_rows += len(work.seq_len) * dims.num_layers
    layers, probes, scored, full = (float(x) for x in totals)
    eq2 = flops_ratio(result.exit_layer, dims.num_layers, dims.hidden, result.seq_len, dims.vocab)
    return CostReport(
        eq2_ratio=float(np.mean(eq2)),
        engine_flops=layers + probes + scored,
        full_flops=full,
        layer_flops=layers,
        probe_flops=probes,
        classifier_flops=scored,
        layer_rows=layer_rows,
        full_layer_rows=full_rows,
    )


def single_prompt_work(
    exit_layer: int, width: int, policy: ExitPolicy, num_layers: int
) -> BatchWork:
    """The work log the engine writes for one prompt of ``width`` tokens run alone that exits
    after ``exit_layer``: a policy that reads features probes (and, below the last layer,
    scores) every layer from its ``first_layer`` on; one that reads none probes its exit only."""
    layers = range(1, exit_layer + 1)
    if policy.reads_probe:
        probed = [int(layer >= policy.first_layer) for layer in layers]
        classified = [int(policy.first_layer <= layer < num_layers) for layer in layers]
    else:
        probed = [int(layer == exit_layer) for layer in layers]
        classified = [0] * exit_layer
    return BatchWork(width, np.array([width]), [1] * exit_layer, probed, classified)


def trace_flops_ratio(
    exit_layer: np.ndarray,
    seq_len: np.ndarray,
    config: Any,
    policy: ExitPolicy,
    probe: Probe | None = None,
) -> np.ndarray:
    """(b) per instance, for exits evaluated on traces: what the engine would execute at
    batch size 1 (width = the prompt's own length, :func:`single_prompt_work`), over the full
    model's answer, priced as :func:`run_costs` prices an engine run."""
    dims = ModelDims.from_config(config)
    per_score = classifier_flops(policy, dims)
    ratios = []
    for exit_at, width in zip(exit_layer, seq_len, strict=True):
        work = single_prompt_work(int(exit_at), int(width), policy, dims.num_layers)
        layers, probes, scored, full = _work_flops(dims, work, per_score, probe)
        ratios.append((layers + probes + scored) / full)
    return np.array(ratios)


@dataclass
class Timing:
    """(c): wall seconds per (repeat, batch), for the engine and for the full forward."""

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
    prices: Prices, policy: ExitPolicy, result: EngineResult, repeats: int = 3
) -> Prices:
    """``prices`` plus the seconds of one call of ``policy`` on ``r`` rows, for each ``r`` the
    work log scored, on a one-layer view of feature values the run recorded (a call's time
    does not depend on the values)."""
    counts = sorted({r for work in result.work for r in work.classified if r})
    classify = {}
    for r in counts:
        values = {}
        for name, column in result.values.items():
            seen = column[~np.isnan(column)]
            if len(seen):
                values[name] = np.resize(seen, r).astype(np.float32)
        view = one_layer_view(values, np.resize(result.prediction, r), np.resize(result.seq_len, r))
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
    probe: Probe | None = None,
) -> dict[str, float]:
    """Run a fitted policy online over prompts and return ``engine_*`` metrics for a run.

    One timed pass of the engine and one of the full forward (see :func:`time_against_full`);
    with ``trace_exits``, the share of prompts whose online exit equals the trace evaluation's
    (1.0 unless float noise flips a decision at its threshold); with ``gold``, the accuracy.
    """
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
