"""Forward hooks that read what a decoder block computed, without changing the forward.

One path for the feature extraction (:func:`adainfer.llm.readout.probe_layers`: every layer's
output, attention and MLP output, and layer 1's input, at the last real token), the tuned lens's
fit (:mod:`adainfer.llm.lenses`: every layer's output at every position) and the early-exit engine
(:mod:`adainfer.engine`: the attention and MLP outputs of the layer it runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def block_output(output: Any) -> torch.Tensor:
    """The hidden states a block returned (decoder layers return tuples in some versions)."""
    return output[0] if isinstance(output, tuple) else output


def last_token(hidden: torch.Tensor, last: torch.Tensor, width: int) -> torch.Tensor:
    """Float rows ``hidden[r, last[r]]`` of a right-padded batch of ``len(last)`` rows, ``width``
    positions each (also for blocks that return them flattened, as OPT's MLP does), on
    ``hidden``'s device (a dispatched model's blocks run on several)."""
    rows = len(last)
    if hidden.dim() == 2:  # [rows * width, hidden]
        hidden = hidden.view(rows, width, -1)
    return hidden[torch.arange(rows, device=hidden.device), last.to(hidden.device)].float()


class Hooks:
    """Forward hooks, removed together (``with Hooks() as hooks: ...`` or :meth:`remove`)."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def on_output(self, module: nn.Module, keep: Callable[[torch.Tensor], None]) -> None:
        """Call ``keep`` with the hidden states ``module`` returns, each time it runs."""
        self.handles.append(
            module.register_forward_hook(lambda _m, _a, out: keep(block_output(out)))
        )

    def on_input(self, module: nn.Module, keep: Callable[[torch.Tensor], None]) -> None:
        """Call ``keep`` with the hidden states ``module`` is called with, each time it runs."""

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            keep(args[0] if args else kwargs["hidden_states"])

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()
