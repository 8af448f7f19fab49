"""adainfer: stop each input at the layer where its answer is settled (AdaInfer).

Usable without Hydra::

    from adainfer import PackagedGGUFModel, RuleTask, SVMPolicy, prepare, evaluate
"""

from adainfer.engine import EarlyExitEngine, FixedExit
from adainfer.errors import AdaInferError
from adainfer.features import LayerRecords, probe_layers
from adainfer.flops import flops_ratio
from adainfer.models import HubModel, LoadedModel, PackagedGGUFModel, TinyRandomModel
from adainfer.pipeline import evaluate, prepare
from adainfer.policies import CRFPolicy, ExitPolicy, GapThreshold, NeverExit, SVMPolicy
from adainfer.tasks import FunctionVectorsTask, PromptTemplate, RuleTask, build_prompts

__version__ = "0.1.0"

__all__ = [
    "AdaInferError",
    "CRFPolicy",
    "EarlyExitEngine",
    "ExitPolicy",
    "FixedExit",
    "FunctionVectorsTask",
    "GapThreshold",
    "HubModel",
    "LayerRecords",
    "LoadedModel",
    "NeverExit",
    "PackagedGGUFModel",
    "PromptTemplate",
    "RuleTask",
    "SVMPolicy",
    "TinyRandomModel",
    "build_prompts",
    "evaluate",
    "flops_ratio",
    "prepare",
    "probe_layers",
]
