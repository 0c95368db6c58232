"""Registers every routed model kind with transformers' Auto classes, so that
``AutoConfig.from_pretrained(folder)`` and ``AutoModel.from_pretrained(folder)`` load a saved routed
model (imported by ``nli_routing.models``; the model types are ``nli-routing-*``)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .base import RoutedModel, RoutedModelConfig
from .lstm import LSTMNLIConfig, LSTMNLIModel
from .nli import NLIRoutingConfig, NLIRoutingModel
from .transformer.model import RoutedTransformerForNLI, RoutedTransformerNLIConfig
from .vision import VisionMTLModel, VisionMTLModelConfig

#: (config class, model class) of every kind
MODEL_KINDS: tuple[tuple[type[RoutedModelConfig], type[RoutedModel]], ...] = (
    (NLIRoutingConfig, NLIRoutingModel),
    (LSTMNLIConfig, LSTMNLIModel),
    (RoutedTransformerNLIConfig, RoutedTransformerForNLI),
    (VisionMTLModelConfig, VisionMTLModel),
)


def register() -> None:
    """Register the kinds (idempotent)."""
    for config_class, model_class in MODEL_KINDS:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)


register()
