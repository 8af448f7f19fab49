"""Real early exit: an inference engine that stops computing once the policy says so.

Usable without Hydra::

    from adainfer.engine import EarlyExitEngine
    result = EarlyExitEngine(loaded, fitted_policy).run(encoded.input_ids, batch_size=16)
    result.exit_layer, result.prediction

See docs/ENGINE.md for the design and ``adainfer.decide.costs`` for what a run costs.
"""

from adainfer.engine.core import BatchWork, EarlyExitEngine, EngineResult
from adainfer.engine.generation import generate
from adainfer.engine.inputs import ENGINE_MODEL_TYPES, LayerInputs, layer_inputs
from adainfer.engine.kv import KV_FILLS
from adainfer.engine.online import FixedExit, check_online, check_policy
from adainfer.engine.result import Generation, TokenWork

__all__ = [
    "ENGINE_MODEL_TYPES",
    "BatchWork",
    "EarlyExitEngine",
    "EngineResult",
    "FixedExit",
    "Generation",
    "KV_FILLS",
    "TokenWork",
    "LayerInputs",
    "check_online",
    "check_policy",
    "generate",
    "layer_inputs",
]
