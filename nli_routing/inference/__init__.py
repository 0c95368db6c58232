"""Inference with saved routed models: the predictor (Python API and ``nli-routing predict``), the
``"routed-nli"`` transformers pipeline and the web app."""

from .predict import RoutedNLIPredictor, load_routed_model

__all__ = ["RoutedNLIPredictor", "load_routed_model"]
