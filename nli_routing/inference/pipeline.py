"""The ``"routed-nli"`` transformers pipeline: text-classification of premise/hypothesis pairs, plus
the route.

    import nli_routing.inference.pipeline  # registers the task
    from transformers import pipeline
    nli = pipeline("routed-nli", model="outputs/sci_wp_dispatch/wp-signature")
    nli({"text": "Ann managed to leave.", "text_pair": "Ann left.", "meta": "+|-"})
    # [{"label": "entails", "score": 0.93, "route": {"wp": [2]}, "meta": "+|-", "meta_source": "given", ...}]

Inputs: one dict (``text``/``premise``, ``text_pair``/``hypothesis``, optional ``meta`` or the model's
meta column) or a list of them. ``top_k=None`` returns every label's score (as text-classification
does), ``meta_fallback=NAME`` routes pairs without a known meta value with that class.

Batching: ``preprocess`` checks each pair (and resolves a given meta value), ``_forward`` tokenizes
the pairs the pipeline batched (``batch_size=64``) in one call and runs them in one forward, whatever
their meta classes or routes (routing is per sample), ``postprocess`` ranks each pair's labels.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .predict import RoutedNLIPredictor

__all__ = ["RoutedNLIPipeline", "TASK"]

TASK = "routed-nli"


class RoutedNLIPipeline(Pipeline):
    """A pipeline around :class:`~nli_routing.inference.predict.RoutedNLIPredictor` (batched forwards)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._predictors: dict[Any, RoutedNLIPredictor] = {}

    def _sanitize_parameters(self, top_k: Any = "", meta_fallback: Any = None, **kwargs: Any):
        pre = {"meta_fallback": meta_fallback}
        post = {} if top_k == "" else {"top_k": top_k}
        return pre, {}, post

    def predictor(self, meta_fallback: Any = None) -> RoutedNLIPredictor:
        if meta_fallback not in self._predictors:
            self._predictors[meta_fallback] = RoutedNLIPredictor(self.model, self.tokenizer, meta_fallback)
        return self._predictors[meta_fallback]

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, (dict, list, tuple)):
            for i, x in enumerate([inputs] if isinstance(inputs, dict) else inputs):
                if not isinstance(x, dict):
                    raise ValueError(f"{TASK}: input {i} is a {type(x).__name__}, not a dict with text and text_pair")
            return super().__call__(list(inputs) if isinstance(inputs, tuple) else inputs, **kwargs)
        raise ValueError(f"{TASK} takes a dict with text and text_pair (or a list of them), got {type(inputs).__name__}")

    def preprocess(self, inputs: dict, meta_fallback: Any = None) -> dict:
        prepared = self.predictor(meta_fallback).prepare([inputs])
        return {k: v[0] for k, v in prepared.items()}

    def _forward(self, model_inputs: dict) -> dict:
        one = isinstance(model_inputs["premises"], str)  # batch_size 1: not collated
        listed = {k: [v] if one else list(v) for k, v in model_inputs.items()}
        return {"prediction": self.predictor().run(**listed)}

    def postprocess(self, model_outputs: dict, top_k: Any = 1) -> list[dict]:
        pred = model_outputs["prediction"]
        if isinstance(pred, list):  # batch_size 1: the forward's list of one
            pred = pred[0]
        ranked = sorted(pred["probabilities"].items(), key=lambda kv: -kv[1])
        if top_k is not None:
            ranked = ranked[: int(top_k)]
        extra = {k: v for k, v in pred.items() if k not in ("label", "score", "probabilities")}
        return [{"label": label, "score": score, **extra} for label, score in ranked]


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=RoutedNLIPipeline, pt_model=AutoModel)
