"""Inference with saved routed models: the predictor (Python API and ``nli-routing predict``), the
``"routed-nli"`` transformers pipeline, HTTP serving with micro-batching and the web app. The names
below are imported on first use (so ``nli-routing --help`` does not import torch)."""

__all__ = ["RoutedNLIPredictor", "load_routed_model"]


def __getattr__(name: str):
    if name in __all__:
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
