"""nli_routing.models: the routed model kinds (CBOW/NLI, LSTM, Transformer, vision), each a Hugging
Face model registered with ``AutoConfig`` / ``AutoModel`` (:mod:`.auto`)."""

from .base import RoutedModel, RoutedModelConfig
from .vision import ImageMTLCollator, VisionMTLConfig, VisionMTLModel, VisionMTLModelConfig
from . import auto  # noqa: E402,F401  (registers the kinds with transformers' Auto classes)

__all__ = ["ImageMTLCollator", "RoutedModel", "RoutedModelConfig", "VisionMTLConfig", "VisionMTLModel",
           "VisionMTLModelConfig"]
