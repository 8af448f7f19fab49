"""What an early-exit run really costs: Eq. 2 and the FLOPs actually computed.

(a) ``eq2_ratio`` — the paper's Eq. 2 (``adainfer.decide.flops``): layers to the exit layer plus one
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
    classifier = per scored row, see :func:`classifier_flops` (a head on the hidden state,
                 ``state``: 2h + 5, and its rows are probed only where they stop)

    engine = Σ_batches Σ_l [rows_l·layer(s) + probed_l·probe + scored_l·classifier]
    full   = Σ_batches B·[L·layer(s) + 2·h'·V + V]      (head + argmax at one position)

Element-wise work (norms, residual adds, rotary, activations, masks, embeddings lookups) is
O(s·h) per layer and left out; it is under 1% of a layer at these sizes. Unlike (a), (b)
charges a probe at every visited layer: with Gemma-3's 262,144-token vocabulary one probe costs
about as much as a layer over a 30-token prompt, so (b) can be far from (a).

(c) measured wall time, and the time model: :mod:`adainfer.engine.timing`.

(d) generation (:func:`generation_costs`): per new token, one position through the layers it
ran, attending to the whole context, plus its probes, policy calls and the K/V entries of the
layers it skipped (``2·h·(n_kv·d)·2`` each): what an early-exit decoder pays per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from adainfer.decide.flops import flops_ratio
from adainfer.decide.policies import ExitPolicy
from adainfer.decide.schedule import ReadPrices


class PricedLens(Protocol):
    """What the cost model needs of a lens (``adainfer.llm.lenses``): the FLOPs of translating
    one position at one layer (0 for the logit lens, an h×h product for a tuned lens)."""

    def flops(self) -> float: ...


class EngineWork(Protocol):
    """What the cost model reads of an engine run (``adainfer.engine.result.EngineResult``):
    its per-batch work logs, and each instance's exit layer and sequence length."""

    work: list[BatchWork]
    exit_layer: np.ndarray
    seq_len: np.ndarray


class GenerationWork(Protocol):
    """What the cost model reads of a generation (``adainfer.engine.result.Generation``): per
    prompt, its token work log and its prompt length."""

    work: list[Any]
    prompt_len: list[int]


@dataclass
class BatchWork:
    """The work log the engine writes for one padded batch, layer by layer (l = 1..deepest),
    and what (b) prices."""

    width: int  # positions per row: the batch's longest prompt (right padding)
    seq_len: np.ndarray  # [B] real tokens per row
    rows: list[int] = field(default_factory=list)  # rows that ran layer l
    probed: list[int] = field(default_factory=list)  # rows whose last token was probed after l
    classified: list[int] = field(default_factory=list)  # rows the policy scored after l


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

    def layer(self, width: int, attended: int | None = None) -> float:
        """FLOPs of one decoder layer on one row of ``width`` positions, each attending to
        ``attended`` positions (None: ``width``, a prompt's pass; a decoding step runs one
        position over the whole context, its cache)."""
        s, h, d = float(width), self.hidden, self.head_dim
        projections = 2 * s * h * self.heads * d * 2 + 2 * s * h * self.kv_heads * d * 2
        attention = 2 * 2 * s * float(width if attended is None else attended) * self.heads * d
        mlp = 2 * s * h * self.intermediate * self.mlp_matrices
        return projections + attention + mlp

    def kv_fill(self) -> float:
        """A skipped layer's key and value for one position (its K and V projections)."""
        return 2.0 * self.hidden * self.kv_heads * self.head_dim * 2

    def head(self) -> float:
        """LM head on one position (with OPT's project_out when the widths differ)."""
        project_out = 2.0 * self.hidden * self.head_in if self.head_in != self.hidden else 0.0
        return project_out + 2.0 * self.head_in * self.vocab

    def probe(self) -> float:
        """Logit lens on one position: LM head, softmax and top-2."""
        return self.head() + 6.0 * self.vocab

    def label_read(self, labels: int) -> float:
        """A label-row read on one position: the head's rows of ``labels`` tokens (with OPT's
        project_out), softmax and top-2 over them."""
        project_out = 2.0 * self.hidden * self.head_in if self.head_in != self.hidden else 0.0
        return project_out + 2.0 * self.head_in * labels + 6.0 * labels


def decision_price(policy: ExitPolicy, dims: ModelDims, probe: PricedLens | None = None) -> float:
    """FLOPs of one decision as the engine pays it: the policy's scoring
    (:func:`classifier_flops`) and, for a label-row read (``policy.reads_labels``), the read
    of the label rows through the lens (its translator included); 0 for a policy that can
    never stop early."""
    price = classifier_flops(policy, dims)
    if policy.reads_labels and not policy.never_stops():
        translator = probe.flops() if probe is not None else 0.0
        price += dims.label_read(len(policy.label_ids)) + translator
    return price


def classifier_flops(policy: ExitPolicy, dims: ModelDims | None = None) -> float:
    """FLOPs of scoring one (instance, layer) with ``policy``, as the policy declares them
    (:meth:`~adainfer.decide.policies.ExitPolicy.decision_flops`; e.g. an SVM's grow with its
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


def _translator_flops(probed: list[int], num_layers: int, probe: PricedLens | None) -> float:
    """A tuned lens's translators on the probed rows (none at the last layer: the identity)."""
    if probe is None:
        return 0.0
    return probe.flops() * sum(p for layer, p in enumerate(probed) if layer < num_layers - 1)


def _work_flops(
    dims: ModelDims, work: BatchWork, per_score: float, probe: PricedLens | None
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
    result: EngineWork, config: Any, policy: ExitPolicy, probe: PricedLens | None = None
) -> CostReport:
    """Eq. 2 and the executed FLOPs of an engine run (see the module docstring); a tuned
    lens's translators count with the probes."""
    dims = ModelDims.from_config(config)
    per_score = decision_price(policy, dims, probe)
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


def read_prices(config: Any, probe: PricedLens | None = None) -> ReadPrices:
    """What a schedule's parts cost on this model, priced as :func:`run_costs` prices an engine
    run at batch size 1 (for ``schedule="auto"``, :mod:`adainfer.decide.schedule`): a layer on a
    prompt, a read through ``probe`` below the last layer (LM head, softmax, top-2 and a tuned
    lens's translator), the last layer's answer."""
    dims = ModelDims.from_config(config)
    translator = probe.flops() if probe is not None else 0.0
    return ReadPrices(
        dims.layer,
        dims.probe() + translator,
        dims.head() + dims.vocab,
        dims.hidden,
        label_read=lambda labels: dims.label_read(labels) + translator,
    )


def single_prompt_work(
    exit_layer: int, width: int, policy: ExitPolicy, num_layers: int
) -> BatchWork:
    """The work log the engine writes for one prompt of ``width`` tokens run alone that exits
    after ``exit_layer``: a policy that reads features probes and scores every layer of its
    schedule (:meth:`~adainfer.decide.policies.ExitPolicy.schedule_mask`: from its ``first_layer``
    on, below the last) and probes the last; one that reads none probes its exit only, and one that
    reads the hidden state (``scores_state``) also scores every layer of its schedule."""
    layers = range(1, exit_layer + 1)
    asked = policy.schedule_mask(num_layers)
    scores = policy.reads_probe or policy.scores_state
    classified = [int(scores and asked[layer - 1]) for layer in layers]
    if policy.reads_probe:
        probed = [int(asked[layer - 1] or layer == num_layers) for layer in layers]
    else:
        probed = [int(layer == exit_layer) for layer in layers]
    return BatchWork(width, np.array([width]), [1] * exit_layer, probed, classified)


def trace_flops_ratio(
    exit_layer: np.ndarray,
    seq_len: np.ndarray,
    config: Any,
    policy: ExitPolicy,
    probe: PricedLens | None = None,
) -> np.ndarray:
    """(b) per instance, for exits evaluated on traces: what the engine would execute at
    batch size 1 (width = the prompt's own length, :func:`single_prompt_work`), over the full
    model's answer, priced as :func:`run_costs` prices an engine run."""
    dims = ModelDims.from_config(config)
    per_score = decision_price(policy, dims, probe)
    ratios = []
    for exit_at, width in zip(exit_layer, seq_len, strict=True):
        work = single_prompt_work(int(exit_at), int(width), policy, dims.num_layers)
        layers, probes, scored, full = _work_flops(dims, work, per_score, probe)
        ratios.append((layers + probes + scored) / full)
    return np.array(ratios)


@dataclass
class GenerationCost:
    """What generating cost, early exit against the full model (:func:`generation_costs`)."""

    engine_flops: float  # the decoding steps (every new token after the first)
    full_flops: float  # the same steps at full depth
    prefill_flops: float  # the full-depth prefill and first token, the same for both
    tokens: int  # new tokens after the first

    @property
    def flops_ratio(self) -> float:
        """Honest FLOPs per generated token after the first, over the full model's."""
        return self.engine_flops / self.full_flops if self.full_flops else 1.0

    @property
    def flops_ratio_with_prefill(self) -> float:
        """The same over the whole generation, prompt prefill included."""
        return (self.engine_flops + self.prefill_flops) / (self.full_flops + self.prefill_flops)


def generation_costs(
    generation: GenerationWork, config: Any, policy: ExitPolicy, probe: PricedLens | None = None
) -> GenerationCost:
    """Honest FLOPs of an early-exit generation (:func:`adainfer.engine.generate`), priced
    token by token as at batch size 1 from each token's work
    (:class:`~adainfer.engine.result.TokenWork`).

    Token 1 of a prompt comes from its full-depth prefill (``L·layer(prompt)`` and one head),
    the same for the full model. Token t > 1 is one position attending to its context ``c``
    (prompt and new tokens, itself included): ``exit_layer·layer(1, c)``, its probes (a tuned
    lens's translator below the last layer; the last layer's read is the head and an argmax),
    the policy's calls, and the K/V fills of skipped layers (:meth:`ModelDims.kv_fill`, under
    ``recompute`` charged to the step that computes them). The full model's token:
    ``L·layer(1, c)``, the head and an argmax.
    """
    dims = ModelDims.from_config(config)
    L, per_score = dims.num_layers, classifier_flops(policy, dims)
    read = dims.probe() + (probe.flops() if probe is not None else 0.0)
    answer, fill = dims.head() + dims.vocab, dims.kv_fill()
    engine = full = prefill = 0.0
    tokens = 0
    for work, prompt in zip(generation.work, generation.prompt_len, strict=True):
        if len(work.exit_layer):
            prefill += L * dims.layer(int(prompt)) + answer
        for t in range(1, len(work.exit_layer)):
            exit_at, layer = int(work.exit_layer[t]), dims.layer(1, int(work.context[t]))
            probes = int(work.probes[t])
            reads = (probes - 1) * read + answer if exit_at == L else probes * read
            engine += exit_at * layer + reads + per_score * int(work.classified[t])
            engine += fill * int(work.kv_fills[t])
            full += L * layer + answer
            tokens += 1
    return GenerationCost(engine, full, prefill, tokens)
