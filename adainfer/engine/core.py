"""The early-exit engine: run the decoder layer by layer and stop computing finished rows.

After each decoder layer the policy's schedule asks at (``ExitPolicy.schedule_mask``: every
layer by default) the last real token of every still-running prompt is probed (final
norm + LM head, softmax, top-2: the same logit lens as ``features.probe_layers``), the policy
decides on a one-layer view of those features, and the rows that stop leave the batch (a
policy that reads the hidden state instead, ``state``, decides on that state, and one that reads
the label rows only, ``feature_set=labels``, on those rows of the head; only the rows that stop
are then probed, for their answer): their
hidden states, masks and position tensors are index-selected away, so the next layer runs on
fewer rows. The result holds, per prompt, the exit layer, the prediction there, and the
features of every layer it visited, plus a log of the work done (:class:`BatchWork`) for
``adainfer.decide.costs``.
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from adainfer.choices import RECORDED
from adainfer.decide.policies import ExitPolicy
from adainfer.decide.records import LayerRecords
from adainfer.engine.inputs import LayerInputs, check_supported, layer_inputs
from adainfer.engine.online import check_policy, decide, one_layer_view
from adainfer.engine.result import BatchWork, EngineResult, Outputs
from adainfer.errors import AdaInferError
from adainfer.llm.batching import length_order, pad_right
from adainfer.llm.capture import Hooks, last_token
from adainfer.llm.lenses import Lens, LogitLens, check_probe
from adainfer.llm.loading import LoadedModel
from adainfer.llm.placement import input_device
from adainfer.llm.readout import half_state, label_readout, readout

log = logging.getLogger(__name__)


class _Capture:
    """Forward hooks keeping the last real token of each block's attention and MLP output."""

    def __init__(self, parts) -> None:
        self.last = torch.zeros(0, dtype=torch.long)
        self.width = 0
        self.out: dict[str, torch.Tensor] = {}
        self.hooks = Hooks()
        for i in range(parts.num_layers):
            self.hooks.on_output(parts.attention(i), self._keep("attn"))
            self.hooks.on_output(parts.mlp(i), self._keep("mlp"))

    def _keep(self, key: str):
        def keep(hidden: torch.Tensor) -> None:
            self.out[key] = last_token(hidden, self.last, self.width)

        return keep

    def remove(self) -> None:
        self.hooks.remove()


def _cosine(now: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
    """cos(now, before) per row; 0 at the first layer, as ``features._consecutive_cosine``."""
    if before is None:
        return torch.zeros(len(now))
    return F.cosine_similarity(now, before.to(now.device), dim=-1)


class _Rows:
    """The rows of a batch still running, and every tensor indexed by them."""

    def __init__(self, inputs: LayerInputs, attention_mask: torch.Tensor) -> None:
        self.inputs = inputs
        self.hidden = inputs.hidden
        self.width = attention_mask.shape[1]
        self.last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        self.seq_len_all = (self.last + 1).cpu().numpy()
        self.seq_len = self.seq_len_all
        self.alive = np.arange(len(self.last))  # batch row of each running row
        first = self.last_hidden()
        self.prev: dict[str, torch.Tensor | None] = {"attn": None, "mlp": None, "hidden": first}

    @property
    def n(self) -> int:
        return len(self.alive)

    def advance(self, layer: torch.nn.Module, index: int) -> None:
        """Run one decoder layer on the running rows."""
        out = layer(self.hidden, **self.inputs.kwargs(index))
        self.hidden = out[0] if isinstance(out, tuple) else out
        self.last = self.last.to(self.hidden.device)  # a dispatched model's layers: many devices

    def last_hidden(self) -> torch.Tensor:
        """The last real token's hidden state of each running row, [n, hidden] float."""
        rows = torch.arange(self.n, device=self.hidden.device)
        return self.hidden[rows, self.last.to(self.hidden.device)].float()

    def drop(self, stop: np.ndarray, now: torch.Tensor | None, capture: _Capture | None) -> None:
        """Compaction: remove the stopped rows so later layers run on the others only.

        ``now`` and the captured block outputs become the previous layer's, for the cosines.
        """
        keep = torch.from_numpy(np.flatnonzero(~stop)).to(self.hidden.device)
        if capture is not None:
            self.prev["attn"], self.prev["mlp"] = capture.out["attn"], capture.out["mlp"]
        self.prev["hidden"] = now
        if not stop.any():
            return
        self.inputs.select(keep, self.n)
        self.hidden = self.hidden.index_select(0, keep)
        self.last = self.last.index_select(0, keep)
        self.prev = {
            k: None if v is None else v.index_select(0, keep.to(v.device))
            for k, v in self.prev.items()
        }
        self.alive = self.alive[~stop]
        self.seq_len = self.seq_len[~stop]


class EarlyExitEngine:
    """Runs a causal LM with real early exit under a fitted, per-layer exit policy.

    >>> engine = EarlyExitEngine(loaded, policy)           # doctest: +SKIP
    >>> result = engine.run(encoded.input_ids, batch_size=16)  # doctest: +SKIP
    """

    def __init__(
        self,
        loaded: LoadedModel,
        policy: ExitPolicy,
        probe: Lens | None = None,
        record: tuple[str, ...] = (),
    ) -> None:
        self.loaded = loaded
        self.lens = probe or LogitLens()  # what reads a layer (adainfer.llm.lenses)
        self.model = loaded.model
        self.parts = loaded.parts
        check_supported(self.model)
        self.num_layers = self.parts.num_layers
        check_policy(policy, self.num_layers)
        check_probe(self.lens, self.num_layers, loaded.hidden_size, loaded.identity)
        self.policy = policy
        self.probe_every_layer = policy.reads_probe  # every layer it is asked at, and the last
        self.score_state = policy.scores_state  # a head on hidden states: no probe to decide
        # a label-row read: the answer set's rows of the head decide, the full head answers
        self.label_head = (
            self.parts.label_head(policy.label_ids)
            if policy.reads_labels and policy.scores_state
            else None
        )
        self.asked = policy.schedule_mask(self.num_layers)  # where the policy decides
        unknown = sorted(set(record) - set(RECORDED))
        if unknown:
            raise AdaInferError(
                f"record={unknown}: not features the engine computes", f"use some of {RECORDED}"
            )
        # The cosines cost hooks and copies at every layer: only those the policy reads, or
        # ``record`` asks for (gap, top_prob and the argmax come with every probe).
        wanted = set(policy.features) | set(record)
        self.cosines = tuple(name for name in RECORDED[2:] if name in wanted)
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)
        self.device = input_device(self.model)  # where the model is: see models.placement
        log.info("early-exit engine for %s on %s", loaded.name, self.device)

    # -- batching ----------------------------------------------------------------------------
    def _check_prompts(self, input_ids: list[list[int]]) -> None:
        if len(input_ids) == 0:
            raise AdaInferError("the batch is empty: no prompts to run", "pass one or more prompts")
        vocab = self.model.get_input_embeddings().num_embeddings
        for i, ids in enumerate(input_ids):
            if len(ids) == 0:
                raise AdaInferError(f"prompt {i} has no tokens", "remove it or give it text")
            if len(ids) > self.loaded.max_length:
                raise AdaInferError(
                    f"prompt {i} is {len(ids)} tokens, longer than the model's context of "
                    f"{self.loaded.max_length} (max_position_embeddings)",
                    "shorten it (adainfer.llm.encoding.encode_prompts drops demonstrations to fit)",
                )
            if min(ids) < 0 or max(ids) >= vocab:
                raise AdaInferError(
                    f"prompt {i} has token ids outside the vocabulary [0, {vocab})",
                    "encode prompts with this model's tokenizer",
                )

    def batches(
        self, input_ids: list[list[int]], batch_size: int
    ) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """(prompt indices, input_ids, attention_mask) per batch, right-padded.

        Prompts are sorted by length first (:mod:`adainfer.llm.batching`, as for the feature
        extraction) so a batch wastes little compute on padding; the indices put results back
        in input order.
        """
        self._check_prompts(input_ids)
        if batch_size < 1:
            raise AdaInferError(f"batch_size={batch_size}", "use a batch size of 1 or more")
        order = length_order(input_ids)
        out = []
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            ids, mask = pad_right([input_ids[i] for i in index], self.pad_id)
            out.append((index, ids.to(self.device), mask.to(self.device)))
        return out

    def run(
        self, input_ids: list[list[int]], batch_size: int = 16, keep_logits: bool = False
    ) -> EngineResult:
        """Early-exit inference over prompts (token id lists); results in input order."""
        return self.run_batches(self.batches(input_ids, batch_size), keep_logits)

    def run_batches(self, batches: list, keep_logits: bool = False) -> EngineResult:
        """Run batches made by :meth:`batches`; results in the prompts' input order."""
        return EngineResult.merge(
            [(index, self.run_batch(ids, mask, keep_logits)) for index, ids, mask in batches]
        )

    # -- one batch ---------------------------------------------------------------------------
    def probe(self, last_hidden: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, ...]:
        """Read [rows, hidden] after ``layer`` (0-based; -1 the last) through the probe:
        (gap, top_prob, argmax, logits)."""
        return readout(self.parts, self.lens.translate(last_hidden, layer % self.num_layers))

    def _probe_all(self, rows: _Rows, out: Outputs, i: int, now: torch.Tensor, capture):
        """Probe every running row after layer i; record its features (the cosines the policy
        reads or ``record`` names); return the logits."""
        gap, top_prob, top_id, logits = self.probe(now, i)
        feats = {"gap": gap, "top_prob": top_prob}
        blocks = {"cos_attn": "attn", "cos_mlp": "mlp"}
        for name in self.cosines:
            if name in blocks:
                key = blocks[name]
                feats[name] = _cosine(capture.out[key], rows.prev[key])
            else:
                feats[name] = _cosine(now, rows.prev["hidden"])
        for name, column in feats.items():
            out.values[name][rows.alive, i] = column.cpu().numpy()
        out.argmax[rows.alive, i] = top_id.cpu().numpy()
        return logits

    def _probe_stopping(self, rows: _Rows, out: Outputs, i: int, stop: np.ndarray):
        """Probe only the rows that stop after layer i (policies without features)."""
        picked = torch.from_numpy(np.flatnonzero(stop)).to(rows.hidden.device)
        last = rows.last.index_select(0, picked)
        gap, top_prob, top_id, part = self.probe(rows.hidden[picked, last].float(), i)
        finished = rows.alive[stop]
        out.values["gap"][finished, i] = gap.cpu().numpy()
        out.values["top_prob"][finished, i] = top_prob.cpu().numpy()
        out.argmax[finished, i] = top_id.cpu().numpy()
        logits = torch.zeros((rows.n, part.shape[1]), device=part.device)
        logits[picked.to(part.device)] = part
        return logits

    def _decide(self, depth: int, n: int, view) -> np.ndarray:
        """Which running rows stop after layer ``depth``: all at the last layer, else the
        policy's call on the one-layer view (built only when asked)."""
        if depth == self.num_layers:
            return np.ones(n, dtype=bool)
        return decide(self.policy, depth, view(), n)

    def _state_view(self, rows: _Rows, i: int) -> LayerRecords:
        """What a policy that decides without the full probe sees of layer ``i`` (0-based),
        just run: the last real token's state of each running row, as traces keep it
        (``features.half_state``); for a label-row read, that token read through the lens on
        the label rows of the head only (:func:`adainfer.llm.readout.label_readout`)."""
        last = rows.last_hidden()
        if self.label_head is not None:
            read = label_readout(self.parts, self.lens.translate(last, i), self.label_head)
            values = {name: column.cpu().numpy() for name, column in read.items()}
            return one_layer_view(values, np.full(rows.n, -1), rows.seq_len)
        states = half_state(last).cpu().numpy()[:, None]
        return one_layer_view({}, np.full(rows.n, -1), rows.seq_len, states)

    def read_layer(
        self, rows: _Rows, out: Outputs, work: BatchWork, i: int, capture: _Capture | None
    ) -> tuple[np.ndarray, torch.Tensor | None, torch.Tensor | None]:
        """After layer ``i`` (0-based) has run on ``rows``: probe and ask the policy where its
        schedule says, record the features in ``out`` and the work in ``work``. Returns the
        boolean stop mask over the running rows, the logits (of every running row when all
        were probed, else rows that stop; None when none was probed) and the last token's
        hidden state when it was read (for the next layer's cosines). The one per-layer step
        of both :meth:`run_batch` and generation (:mod:`adainfer.engine.generation`)."""
        L = self.num_layers
        depth = i + 1
        now = None
        asked = bool(self.asked[i])  # the policy decides after this layer (below L)
        if self.probe_every_layer and not (asked or depth == L):
            now = rows.last_hidden()  # the cosines at the next read compare with it
            stop = np.zeros(rows.n, dtype=bool)  # no probe, no decision here
            logits = None
            work.probed.append(0)
            work.classified.append(0)
        elif self.probe_every_layer:
            now = rows.last_hidden()
            logits = self._probe_all(rows, out, i, now, capture)
            stop = self._decide(depth, rows.n, partial(out.view, rows, i))
            work.probed.append(rows.n)
            work.classified.append(rows.n if asked else 0)
        else:  # the policy reads no probe features: probe only where rows stop
            # A head on hidden states scores every row at each layer it is asked at.
            scored = self.score_state and asked
            if not (asked or depth == L):
                stop = np.zeros(rows.n, dtype=bool)  # no decision off the schedule
            else:
                view = partial(self._state_view, rows, i) if scored else lambda: None
                stop = self._decide(depth, rows.n, view)
            logits = self._probe_stopping(rows, out, i, stop) if stop.any() else None
            work.probed.append(int(stop.sum()))
            work.classified.append(rows.n if scored else 0)
        return stop, logits, now

    @torch.no_grad()
    def run_batch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_logits: bool = False
    ) -> EngineResult:
        """One right-padded batch [B, S] through the layers, dropping rows as they exit."""
        L = self.num_layers
        rows = _Rows(layer_inputs(self.model, input_ids, attention_mask), attention_mask)
        vocab = self.parts.lm_head.out_features if keep_logits else None
        out = Outputs(rows.n, L, vocab)
        work = BatchWork(width=input_ids.shape[1], seq_len=rows.seq_len.copy())
        hooks = {"cos_attn", "cos_mlp"} & set(self.cosines)
        capture = _Capture(self.parts) if self.probe_every_layer and hooks else None
        try:
            for i, layer in enumerate(self.parts.layers):
                depth = i + 1
                work.rows.append(rows.n)
                if capture is not None:
                    capture.last, capture.width = rows.last, rows.width
                rows.advance(layer, i)
                stop, logits, now = self.read_layer(rows, out, work, i, capture)
                if stop.any():
                    kept = logits[torch.from_numpy(stop)] if vocab else None
                    out.finish(rows.alive[stop], depth, kept)
                if stop.all():
                    break
                rows.drop(stop, now, capture)
        finally:
            if capture is not None:
                capture.remove()
        return out.result(rows.seq_len_all, work)
