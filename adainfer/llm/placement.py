"""Where the LLM runs: put on one device once and left there, or where accelerate put it.

The feature extraction, the tuned lens's fit and the early-exit engine all run the model where
:func:`place` left it, so a 13B model crosses to the GPU once per job, not once per pass, and
the engine's timings are GPU timings. A model loaded with ``device_map`` (``llama2_70b``'s
``device_map: auto``) is *dispatched*: accelerate spread its modules over the devices (and
offloaded to the CPU or disk what did not fit), and its hooks move activations from one module
to the next. It is never moved as a whole; code that indexes or stacks its activations puts
them on one device first.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def dispatched(model: nn.Module) -> bool:
    """Loaded with a ``device_map`` (transformers records it as ``hf_device_map``)."""
    return bool(getattr(model, "hf_device_map", None))


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device of its accelerate hook (its weights may
    be offloaded to the meta device), else the device of its first parameter."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(device)
    return next(module.parameters()).device


def input_device(model: nn.Module) -> torch.device:
    """Where a batch's token ids go: the device of the model's input embeddings."""
    return module_device(model.get_input_embeddings())


def off_accelerator(model: nn.Module) -> list[str]:
    """The modules a device map put on the CPU or disk."""
    device_map = getattr(model, "hf_device_map", None) or {}
    return [name or "(all)" for name, where in device_map.items() if str(where) in ("cpu", "disk")]


def place(loaded: Any, device: torch.device) -> torch.device:
    """Put ``loaded``'s model (a :class:`~adainfer.llm.loading.LoadedModel`) on ``device``
    and return where its inputs go. Moving a model to where it is costs nothing, so every pass
    calls this. A dispatched model stays where accelerate put it; when ``device`` is an
    accelerator and some of its modules are on the CPU or disk, a warning says so: those run
    on the CPU, hours for a large model."""
    model = loaded.model
    if not dispatched(model):
        model.to(device)
        return input_device(model)
    away = off_accelerator(model)
    if device.type != "cpu" and away:
        shown = ", ".join(away[:3]) + (f" and {len(away) - 3} more" if len(away) > 3 else "")
        log.warning(
            "model %r: the run asked for %s, but its device_map put %d of its %d modules on the "
            "CPU or disk (%s): they run on the CPU, slowly. Is torch's CUDA build installed "
            "(torch.cuda.is_available()), and is there GPU memory left for the model?",
            loaded.name,
            device,
            len(away),
            len(model.hf_device_map),
            shown,
        )
    return input_device(model)
