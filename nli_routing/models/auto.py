"""Every routed model kind, registered with transformers' Auto classes: importing this module imports
each kind, whose module registers it in one call (:func:`~nli_routing.models.base.register_model_kind`),
so that ``AutoConfig.from_pretrained(folder)`` and ``AutoModel.from_pretrained(folder)`` load a saved
routed model (the model types are ``nli-routing-*``)."""

from __future__ import annotations

from . import lstm, nli, vision  # noqa: F401  (each registers its kind)
from .base import MODEL_KINDS
from .transformer import model as _transformer  # noqa: F401

__all__ = ["MODEL_KINDS"]
