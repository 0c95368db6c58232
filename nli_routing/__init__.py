"""nli_routing: routing networks for natural language inference on the Hugging Face stack.

The public API, importable from the package itself (each name is imported on first use, so
``import nli_routing`` costs nothing and has no side effects)::

    from nli_routing import (EMBEDDED_SCI, NLICollator, NLIModelConfig, NLIRoutingModel, RoutingTrainer,
                             encode_nli, load_sci, load_word_vectors)
"""

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    # data
    "EMBEDDED_SCI": "nli_routing.data",
    "load_sci": "nli_routing.data.sci",
    "load_multinli": "nli_routing.data.multinli",
    "encode_nli": "nli_routing.data.encoding",
    "NLICollator": "nli_routing.data.encoding",
    "load_word_vectors": "nli_routing.models.embeddings",
    "WordVectors": "nli_routing.models.embeddings",
    # models (one settings class and one model class per kind)
    "RouterConfig": "nli_routing.routing.config",
    "NLIModelConfig": "nli_routing.models.nli",
    "NLIRoutingModel": "nli_routing.models.nli",
    "LSTMModelConfig": "nli_routing.models.lstm",
    "LSTMNLIModel": "nli_routing.models.lstm",
    "TransformerNLIConfig": "nli_routing.models.transformer",
    "RoutedTransformerForNLI": "nli_routing.models.transformer",
    "PairCollator": "nli_routing.models.transformer",
    "VisionMTLConfig": "nli_routing.models.vision",
    "VisionMTLModel": "nli_routing.models.vision",
    "LearnedDispatcher": "nli_routing.models.dispatcher",
    "MODEL_KINDS": "nli_routing.models.auto",
    # training and inference
    "TrainConfig": "nli_routing.training.loop",
    "train": "nli_routing.training.loop",
    "RoutingTrainer": "nli_routing.training.trainer",
    "RoutedNLIPredictor": "nli_routing.inference.predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nli_routing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
