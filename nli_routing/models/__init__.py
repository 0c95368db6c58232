"""nli_routing.models (image multi-task models: ``vision``)."""

from .vision import ImageMTLCollator, VisionMTLConfig, VisionMTLModel

__all__ = ["ImageMTLCollator", "VisionMTLConfig", "VisionMTLModel"]
