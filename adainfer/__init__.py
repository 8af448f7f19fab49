"""adainfer: stop each input at the layer where its answer is settled (AdaInfer).

Usable without Hydra::

    from adainfer import PackagedGGUFModel, RuleTask, SVMPolicy, prepare, evaluate

The names below are imported on first use (PEP 562), so ``import adainfer.compose.settings``
or ``adainfer.tasks`` does not pay for torch, transformers, Lightning and MLflow: a job checks its
config and data in seconds before any of them loads.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "AdaInferError": "adainfer.errors",
    "CRFPolicy": "adainfer.decide.policies",
    "EarlyExitEngine": "adainfer.engine",
    "ExitPolicy": "adainfer.decide.policies",
    "FixedExit": "adainfer.engine",
    "FunctionVectorsTask": "adainfer.tasks",
    "GapThreshold": "adainfer.decide.policies",
    "HubModel": "adainfer.llm",
    "LayerRecords": "adainfer.decide.records",
    "LoadedModel": "adainfer.llm",
    "NeverExit": "adainfer.decide.policies",
    "PackagedGGUFModel": "adainfer.llm",
    "PromptTemplate": "adainfer.tasks",
    "RuleTask": "adainfer.tasks",
    "SVMPolicy": "adainfer.decide.policies",
    "TinyRandomModel": "adainfer.llm",
    "build_prompts": "adainfer.tasks",
    "evaluate": "adainfer.extract.extractor",
    "flops_ratio": "adainfer.decide.flops",
    "prepare": "adainfer.extract.extractor",
    "probe_layers": "adainfer.llm.readout",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'adainfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
