"""The KV cache of early-exit generation: what the layers a token skipped hold for it.

Generation keeps one transformers :class:`~transformers.DynamicCache` per batch (filled by the
prompt's full-depth prefill). Every decoding step appends one column — the new token's key and
value — to every layer's cache, for every row of the batch. A row that exits after layer k
never runs layers k+1..L for this token, so the layer itself writes nothing there; the entry is
filled from the exit layer's hidden state h_k (its output, before any final norm), in one of
two ways (``kv_fill``):

- ``"propagate"`` (CALM, Schuster et al. 2022): right away, in the same step. Layer j's input
  norm, K/V projections (Gemma-3's / Qwen3's ``k_norm``) and rotary embedding at the token's
  position are applied to h_k (:func:`project_kv`), so the cache stays complete.
- ``"recompute"``: deferred. The column gets a placeholder (zeros) and layer j keeps a pending
  entry (row, column, position, h_k); when a later token of that row reaches layer j, the
  pending entries are computed from their stored h_k — the same numbers propagate would have
  written, computed only for layers some later token reaches (a finished row's are dropped).
  A placeholder is never read: only the row's own queries at layer j read its column, and its
  pending entries at j are filled before its next query runs layer j.

Rows still running a layer go through the decoder layer itself, which calls
``cache.update(key, value, layer_idx)`` with their rows only; :class:`_LayerView` merges those
with the exited rows' entries into one column of the whole batch, appends it to the real cache,
and hands the layer back the keys and values of its rows. Sliding-window layers
(``DynamicSlidingWindowLayer``, Gemma-3) keep only the last window - 1 columns: pending entries
are written at their column's place in the window, or dropped once they fell out of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from transformers import DynamicCache

from adainfer.choices import KV_FILLS
from adainfer.errors import AdaInferError

Rope = tuple[torch.Tensor, torch.Tensor] | None


def check_kv_fill(kv_fill: str) -> None:
    if kv_fill not in KV_FILLS:
        raise AdaInferError(
            f"kv_fill={kv_fill!r} is not a way to fill skipped layers' cache",
            f"use one of {KV_FILLS}",
        )


def check_fillable(layers) -> None:
    """Refuse, before generation runs, a model whose skipped layers' K/V cannot be computed."""
    attn = layers[0].self_attn
    if not (hasattr(attn, "k_proj") and hasattr(attn, "v_proj")):
        raise AdaInferError(
            f"{type(attn).__name__} has no separate k_proj / v_proj (a fused projection), so "
            "early-exit generation cannot fill its skipped layers' cache",
            "generate with a Llama-like, Gemma or OPT model, or with policy=never",
        )


def project_kv(
    layer: torch.nn.Module, hidden: torch.Tensor, rope: Rope
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value that decoder ``layer`` would cache for input states ``hidden`` [n, t, h]:
    its input norm, K/V projections, per-head key norm and rotary embedding (``rope``: the
    layer's (cos, sin) at those positions; None for OPT's absolute positions). [n, kv, t, d]."""
    attn = layer.self_attn
    check_fillable([layer])
    if hasattr(layer, "input_layernorm"):
        x = layer.input_layernorm(hidden)
    else:  # OPT: pre-norm models (do_layer_norm_before) normalise before attention
        x = layer.self_attn_layer_norm(hidden) if layer.do_layer_norm_before else hidden
    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    key = attn.k_proj(x).view(shape).transpose(1, 2)
    value = attn.v_proj(x).view(shape).transpose(1, 2)
    if getattr(attn, "k_norm", None) is not None:  # over head_dim: before or after transpose
        key = attn.k_norm(key)
    if rope is not None:
        apply = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the model's own
        key = apply(key, key, *rope)[1]
    return key, value


def _column(layer_cache, column: int) -> int | None:
    """Where absolute column ``column`` sits in a cache layer's stored keys (None: gone)."""
    stored = layer_cache.keys.shape[-2]
    start = getattr(layer_cache, "cumulative_length", stored) - stored  # sliding: the window
    return column - start if column >= start else None


class SkippedKV:
    """A batch's cache during generation, and the exited rows' entries still to write.

    Per step: :meth:`begin`, then per layer :meth:`view` (the cache the layer is called with,
    after :meth:`fill_pending` in ``recompute`` mode), :meth:`exited` for rows that stop,
    :meth:`rest` when every row stopped before the last layer; :meth:`select` when rows leave.
    ``fills`` counts the entries computed for each row (K/V projections of one position at one
    layer), what ``adainfer.decide.costs`` charges a fill.
    """

    def __init__(
        self,
        cache: DynamicCache,
        layers,
        kv_fill: str,
        rope_at: Callable[[int, torch.Tensor], Rope],
    ) -> None:
        check_kv_fill(kv_fill)
        self.cache, self.layers, self.mode, self.rope_at = cache, layers, kv_fill, rope_at
        self.batch = 0
        # Per layer: pending (row, column, position, exit state) entries (recompute).
        self.pending: list[list[tuple[int, int, int, torch.Tensor]]] = [[] for _ in layers]

    def begin(self, column: int, positions: torch.Tensor) -> None:
        """A new step: the token of each row is at ``column`` of the cache, ``positions`` [B]."""
        self.batch, self.column, self.positions = len(positions), column, positions
        self.exit_state: torch.Tensor | None = None  # [B, h]: rows that exited this step
        self.gone = torch.zeros(self.batch, dtype=torch.bool)
        self.fills = torch.zeros(self.batch, dtype=torch.long)

    def exited(self, rows: torch.Tensor, hidden: torch.Tensor) -> None:
        """``rows`` (batch rows) stopped with hidden states [n, h]: later layers get theirs."""
        if self.exit_state is None:
            self.exit_state = hidden.new_zeros(self.batch, hidden.shape[-1])
        self.exit_state[rows.to(hidden.device)] = hidden
        self.gone[rows.cpu()] = True

    def fill_pending(self, j: int, running: torch.Tensor) -> None:
        """Recompute: write layer j's pending entries of the ``running`` rows."""
        run = set(running.tolist())
        todo = [p for p in self.pending[j] if p[0] in run]
        if not todo:
            return
        self.pending[j] = [p for p in self.pending[j] if p[0] not in run]
        store = self.cache.layers[j]
        todo = [p for p in todo if _column(store, p[1]) is not None]  # out of a window: unused
        if not todo:
            return
        rows = torch.tensor([p[0] for p in todo])
        positions = torch.tensor([[p[2]] for p in todo], device=self.positions.device)
        states = torch.stack([p[3] for p in todo])[:, None]
        key, value = project_kv(self.layers[j], states, self.rope_at(j, positions))
        places = torch.tensor([_column(store, p[1]) for p in todo])
        store.keys[rows, :, places] = key[:, :, 0]
        store.values[rows, :, places] = value[:, :, 0]
        self.fills.index_add_(0, rows, torch.ones(len(rows), dtype=torch.long))

    def _exited_kv(self, j: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Fill (propagate) or mark pending (recompute) layer j's column of the exited rows."""
        rows = torch.nonzero(self.gone).flatten()
        if len(rows) == 0:
            return
        states = self.exit_state[rows.to(self.exit_state.device)]
        if self.mode == "recompute":
            for row, state in zip(rows.tolist(), states, strict=True):
                self.pending[j].append((row, self.column, int(self.positions[row]), state))
            return
        positions = self.positions[rows.to(self.positions.device)][:, None]
        k, v = project_kv(self.layers[j], states[:, None], self.rope_at(j, positions))
        key[rows.to(key.device)], value[rows.to(value.device)] = k.to(key.dtype), v.to(key.dtype)
        self.fills[rows] += 1

    def view(self, j: int, running: torch.Tensor) -> _LayerView:
        """The cache decoder layer j is called with, for the batch rows ``running``."""
        return _LayerView(self, j, running)

    def rest(self, first: int) -> None:
        """Every row stopped: fill (or mark) layers ``first``.. of this step's column."""
        for j in range(first, len(self.layers)):
            store = self.cache.layers[j]  # on its layer's device (a dispatched model: many)
            key = store.keys.new_zeros(self.batch, store.keys.shape[1], 1, store.keys.shape[-1])
            value = store.values.new_zeros(key.shape[:-1] + store.values.shape[-1:])
            self._exited_kv(j, key, value)
            self.cache.update(key, value, j)

    def select(self, keep: torch.Tensor) -> None:
        """Only the batch rows ``keep`` go on (the others finished): cache and pending."""
        self.cache.batch_select_indices(keep)
        new = {int(old): new for new, old in enumerate(keep.tolist())}
        self.pending = [
            [(new[p[0]], *p[1:]) for p in layer if p[0] in new] for layer in self.pending
        ]


class _LayerView:
    """What one decoder layer sees of the cache: the rows it runs (its ``update`` call)."""

    def __init__(self, owner: SkippedKV, j: int, running: torch.Tensor) -> None:
        self.owner, self.j, self.running = owner, j, running

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        owner = self.owner
        if layer_idx != self.j:
            raise RuntimeError(f"layer {layer_idx} wrote to the cache view of layer {self.j}")
        full_key = key.new_zeros(owner.batch, *key.shape[1:])
        full_value = value.new_zeros(owner.batch, *value.shape[1:])
        rows = self.running.to(key.device)
        full_key[rows], full_value[rows] = key, value
        owner._exited_kv(self.j, full_key, full_value)
        keys, values = owner.cache.update(full_key, full_value, layer_idx)
        return keys.index_select(0, rows), values.index_select(0, rows)
