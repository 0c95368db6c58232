"""Analysis of routing decisions: entropy, path overlap, routing maps, plots."""

from .entropy import selection_entropy

__all__ = ["selection_entropy"]
