"""Routed pretrained Transformers (thesis 5.3.1.4): routed copies of attention sublayers or whole
layers injected into a Hugging Face model, and an NLI model on top."""

from .config import DEFAULT_TARGETS, INJECT_ROUTES, NLI_ROUTES, POOLINGS, RoutedTransformerConfig, TransformerNLIConfig
from .layer import (
    RoutedLoRALinear,
    RoutedModule,
    RoutingController,
    get_controller,
    inject_routing,
    routed_call,
    routed_modules,
    routing_context,
    target_names,
)
from .model import PairCollator, RoutedTransformerForNLI, count_parameters, encode_pairs, pool_hidden

__all__ = [
    "DEFAULT_TARGETS",
    "INJECT_ROUTES",
    "NLI_ROUTES",
    "POOLINGS",
    "PairCollator",
    "RoutedLoRALinear",
    "RoutedModule",
    "RoutedTransformerConfig",
    "RoutedTransformerForNLI",
    "RoutingController",
    "TransformerNLIConfig",
    "count_parameters",
    "encode_pairs",
    "get_controller",
    "inject_routing",
    "pool_hidden",
    "routed_call",
    "routed_modules",
    "routing_context",
    "target_names",
]
