"""Greedy generation with a per-token early exit.

A batch of prompts (token id lists, left-padded: every row's next token goes into the same
cache column) is **prefilled at full depth** — one forward of the model with a transformers
``DynamicCache``, positions counted from the attention mask as ``model.generate`` counts them —
and the first new token is the argmax of its last position. Each later token then runs
**layer by layer** through the decoder layers: after each layer the engine's own per-layer
step (:meth:`EarlyExitEngine.read_layer`: the run's probe, logit or tuned lens, and the
policy's decision on a one-layer view, on its schedule) says which rows stop; a row's next
token is the probe's argmax at its exit layer, and rows that stop leave the step
(compaction). The layers a row skipped still get its key and value (:mod:`.kv`, ``kv_fill``).

A row ends at an end-of-sequence token, when its new text contains a stop string (such as
``"\\n"``: an answer ends where the template's next line starts), or after ``max_new_tokens``;
finished rows leave the batch and the cache (``batch_select_indices``). The work of every
token is counted (:class:`TokenWork`), for honest FLOPs per generated token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from adainfer.engine.core import EarlyExitEngine, _Capture, _Rows
from adainfer.engine.inputs import decode_inputs, layer_types, rope_at
from adainfer.engine.kv import SkippedKV, check_fillable, check_kv_fill
from adainfer.engine.result import BatchWork, Generation, Outputs, TokenWork
from adainfer.errors import AdaInferError
from adainfer.llm.batching import length_order, pad_left


class _Step(_Rows):
    """The rows of one decoding step (one token each) still running, and their cache rows."""

    def __init__(self, inputs, context: np.ndarray) -> None:
        n = inputs.hidden.shape[0]
        super().__init__(inputs, torch.ones(n, 1, dtype=torch.long, device=inputs.hidden.device))
        self.seq_len = context  # what a policy's view calls the length: the context so far
        self.running = torch.arange(n)  # batch (cache) row of each running row

    def advance(self, layer: torch.nn.Module, index: int, cache=None) -> None:
        out = layer(self.hidden, cache=cache, **self.inputs.kwargs(index))
        self.hidden = out[0] if isinstance(out, tuple) else out
        self.last = self.last.to(self.hidden.device)

    def drop(self, stop: np.ndarray, now, capture) -> None:
        super().drop(stop, now, capture)
        self.running = self.running[torch.from_numpy(~stop)]


def check_generation(
    engine: EarlyExitEngine,
    input_ids: list[list[int]],
    max_new_tokens: int,
    stop: Sequence[str],
    kv_fill: str,
    batch_size: int,
) -> None:
    """Refuse what cannot be generated, before anything runs (the policy was checked when
    the engine was built)."""
    engine._check_prompts(input_ids)
    check_kv_fill(kv_fill)
    if not engine.policy.never_stops():  # it may skip layers, whose cache must be filled
        check_fillable(engine.parts.layers)
    whole = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
    if not whole or max_new_tokens < 1:
        raise AdaInferError(
            f"max_new_tokens={max_new_tokens!r}: nothing to generate",
            "pass max_new_tokens >= 1 (the longest answer, in tokens)",
        )
    context = engine.loaded.max_length
    for i, ids in enumerate(input_ids):
        if len(ids) + max_new_tokens > context:
            raise AdaInferError(
                f"prompt {i} is {len(ids)} tokens: with max_new_tokens={max_new_tokens} it "
                f"needs {len(ids) + max_new_tokens} positions, more than the model's context "
                f"of {context} (max_position_embeddings)",
                f"shorten the prompt or ask for at most {max(context - len(ids), 0)} new tokens",
            )
    if isinstance(stop, str) or any(not isinstance(s, str) or not s for s in stop):
        raise AdaInferError(
            f"stop={stop!r}: stop strings must be a list of non-empty strings",
            'pass e.g. stop=["\\n"]',
        )
    if batch_size < 1:
        raise AdaInferError(f"batch_size={batch_size}", "use a batch size of 1 or more")


def _eos_ids(engine: EarlyExitEngine, eos: Sequence[int] | None) -> set[int]:
    if eos is not None:
        return {int(t) for t in eos}
    found = getattr(getattr(engine.model, "generation_config", None), "eos_token_id", None)
    if found is None:
        return set()
    return {int(found)} if isinstance(found, int) else {int(t) for t in found}


class _Texts:
    """Per row: new tokens, why they ended (None: still going) and each token's work."""

    def __init__(self, engine, n: int, max_new: int, stop: Sequence[str], eos: set[int]):
        self.tok, self.stop, self.eos, self.max_new = engine.loaded.tokenizer, stop, eos, max_new
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.work: list[list[tuple[int, ...]]] = [[] for _ in range(n)]

    def add(self, row: int, token: int, work: tuple[int, ...]) -> None:
        self.tokens[row].append(token)
        self.work[row].append(work)
        if token in self.eos:
            self.finish[row] = "eos"
        elif self.stop and any(s in self.tok.decode(self.tokens[row]) for s in self.stop):
            self.finish[row] = "stop"
        elif len(self.tokens[row]) >= self.max_new:
            self.finish[row] = "length"

    def text(self, row: int) -> str:
        tokens = self.tokens[row][:-1] if self.finish[row] == "eos" else self.tokens[row]
        text = self.tok.decode(tokens)
        cut = [text.index(s) for s in self.stop if s in text]
        return text[: min(cut)] if cut else text

    def token_work(self, row: int) -> TokenWork:
        cols = np.array(self.work[row], dtype=np.int64).reshape(-1, 5).T
        return TokenWork(*cols)


def _run_step(engine, step: _Step, kv: SkippedKV, out: Outputs, work: BatchWork, capture) -> None:
    """One token per row through the layers: each layer on the running rows (pending entries
    first, under recompute), then the engine's per-layer step; rows that stop hand their
    hidden state to the cache filler and leave the step."""
    for i, layer in enumerate(engine.parts.layers):
        work.rows.append(step.n)
        if capture is not None:
            capture.last, capture.width = step.last, 1
        if kv.mode == "recompute":
            kv.fill_pending(i, step.running)
        step.advance(layer, i, kv.view(i, step.running))
        stop, _, now = engine.read_layer(step, out, work, i, capture)
        if stop.any():
            out.finish(step.alive[stop], i + 1, None)
            picked = torch.from_numpy(np.flatnonzero(stop)).to(step.hidden.device)
            kv.exited(step.running[torch.from_numpy(stop)], step.hidden[picked, 0])
        if stop.all():
            kv.rest(i + 1)  # every row stopped: the layers above still get this column
            return
        step.drop(stop, now, capture)


@torch.no_grad()
def _generate_batch(engine, ids, mask, texts: _Texts, kv_fill: str) -> list[BatchWork]:
    model, L = engine.model, engine.num_layers
    types = layer_types(model)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # as model.generate: pads at 0
    cache = DynamicCache(config=model.config)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    token = logits.float().argmax(-1)
    rows = np.arange(len(ids))  # the texts' row of each batch row
    for r, t, n in zip(rows, token.tolist(), mask.sum(1).tolist(), strict=True):
        texts.add(r, t, (L, 1, 0, 0, n))
    kv = SkippedKV(cache, engine.parts.layers, kv_fill, lambda j, p: rope_at(model, types[j], p))
    asked = np.cumsum(engine.asked)  # layers asked up to each depth
    decides = engine.probe_every_layer or engine.score_state
    hooks = {"cos_attn", "cos_mlp"} & set(engine.cosines)
    capture = _Capture(engine.parts) if engine.probe_every_layer and hooks else None
    steps = []
    try:
        while True:
            going = np.array([texts.finish[r] is None for r in rows])
            if not going.any():
                return steps
            if not going.all():  # finished rows leave the batch and its cache
                keep = torch.from_numpy(np.flatnonzero(going))
                kv.select(keep)
                rows, token, mask = rows[going], token[keep.to(token.device)], mask[keep]
            positions = mask.sum(1, keepdim=True)  # the new token's position
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            kv.begin(mask.shape[1] - 1, positions[:, 0])
            inputs = decode_inputs(model, token[:, None], mask, positions, cache)
            step = _Step(inputs, mask.sum(1).cpu().numpy())
            out = Outputs(step.n, L, None)
            work = BatchWork(width=mask.shape[1], seq_len=step.seq_len.copy())
            _run_step(engine, step, kv, out, work, capture)
            result = out.result(work.seq_len, work)
            steps.append(work)
            probes = (~np.isnan(out.values["gap"])).sum(1)
            token = torch.from_numpy(result.prediction).to(mask.device)
            for b, r in enumerate(rows):
                e = int(result.exit_layer[b])
                record = (e, probes[b], asked[e - 1] if decides else 0, kv.fills[b], mask[b].sum())
                texts.add(r, int(token[b]), tuple(int(x) for x in record))
    finally:
        if capture is not None:
            capture.remove()


def generate(
    engine: EarlyExitEngine,
    input_ids: list[list[int]],
    max_new_tokens: int,
    stop: Sequence[str] = (),
    kv_fill: str = "propagate",
    batch_size: int = 8,
    eos_token_id: Sequence[int] | None = None,
) -> Generation:
    """Greedy generation with ``engine``'s policy and probe deciding, token by token, where
    each new token is read (see the module docstring); results in input order.

    ``stop``: strings that end a row's answer (kept in ``tokens``, cut from ``text``);
    ``kv_fill``: ``"propagate"`` or ``"recompute"`` (:mod:`adainfer.engine.kv`);
    ``eos_token_id``: the tokens that end a row (None: the model's generation config; ``()``:
    none). Prompts are sorted by length and run ``batch_size`` at a time.
    """
    check_generation(engine, input_ids, max_new_tokens, stop, kv_fill, batch_size)
    texts = _Texts(engine, len(input_ids), max_new_tokens, stop, _eos_ids(engine, eos_token_id))
    order = length_order(input_ids)
    steps: list[BatchWork] = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        ids, mask = pad_left([input_ids[i] for i in index], engine.pad_id)
        sub = _Texts(engine, len(index), max_new_tokens, stop, texts.eos)
        ids, mask = ids.to(engine.device), mask.to(engine.device)
        steps += _generate_batch(engine, ids, mask, sub, kv_fill)
        for b, i in enumerate(index):
            texts.tokens[i], texts.finish[i] = sub.tokens[b], sub.finish[b]
            texts.work[i] = sub.work[b]
    n = len(input_ids)
    return Generation(
        tokens=texts.tokens,
        text=[texts.text(i) for i in range(n)],
        finish=[str(f) for f in texts.finish],
        work=[texts.token_work(i) for i in range(n)],
        prompt_len=np.array([len(ids) for ids in input_ids]),
        steps=steps,
        kv_fill=kv_fill,
    )
