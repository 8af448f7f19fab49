"""Model sources and per-architecture access to decoder layers, final norm and LM head."""

from adainfer.llm.arch import DecoderParts, decoder_parts, supported_model_types
from adainfer.llm.loading import HubModel, LoadedModel, PackagedGGUFModel, TinyRandomModel

__all__ = [
    "DecoderParts",
    "HubModel",
    "LoadedModel",
    "PackagedGGUFModel",
    "TinyRandomModel",
    "decoder_parts",
    "supported_model_types",
]
