"""Predict the label and the route of new premise/hypothesis pairs with a saved routed model.

    from nli_routing.inference import RoutedNLIPredictor
    predictor = RoutedNLIPredictor.from_pretrained("outputs/sci_wp_dispatch/wp-signature")   # or a Hub id
    predictor.predict([{"premise": "Ann managed to leave.", "hypothesis": "Ann left.", "signature": "+|-"}])

Every model kind (CBOW, LSTM, routed Transformer) loads from its folder (``config.json``,
``model.safetensors`` and the tokenizer files). A pair is a dict with ``premise`` (or ``text``),
``hypothesis`` (or ``text_pair``) and, for a model routed on meta labels, the meta value under the
model's meta column (``signature``, ``genre``) or ``meta``: a class name or its index. Where the
meta comes from:

* ``"given"``: the pair's own value;
* ``"dispatched"``: the model's own meta source picks the class (its learned dispatcher, or the nearest of
  its offline clusters' centroids, :mod:`nli_routing.models.meta`); a given value is ignored;
* ``"fallback"``: the pair had no value (or one the model does not know) and the predictor was
  built with ``meta_fallback=NAME``; such pairs are counted in ``fallbacks``;
* ``"none"``: the model reads no meta labels.

A model that needs meta labels and gets none (and no fallback) raises a one-line ``ValueError``
naming the pair, the field and the known values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from ..data.encoding import NLICollator
from ..models.base import RoutedModel, load_model_config, resolve_model_folder
from ..models.transformer import PairCollator, RoutedTransformerForNLI

__all__ = ["RoutedNLIPredictor", "load_routed_model", "PREMISE_KEYS", "HYPOTHESIS_KEYS"]

PREMISE_KEYS = ("premise", "text")
HYPOTHESIS_KEYS = ("hypothesis", "text_pair")
META_SOURCES = ("given", "dispatched", "fallback", "none")


def load_routed_model(name_or_path: str | Path, **hub: Any) -> tuple[RoutedModel, Path]:
    """The saved routed model of a folder or Hub id (any kind: its ``model_type`` picks the class)."""
    from transformers import AutoModel

    folder = resolve_model_folder(name_or_path, **hub)
    load_model_config(folder)  # a clear error for a folder that is not a saved model
    model = AutoModel.from_pretrained(str(folder))
    if not isinstance(model, RoutedModel):
        raise ValueError(f"{name_or_path} holds a {type(model).__name__}, not a routed NLI model")
    return model, folder


def _field(pair: dict, keys: Sequence[str], index: int) -> str:
    for key in keys:
        if key in pair:
            value = pair[key]
            if value is None:
                raise ValueError(f"pair {index}: field {key!r} is null (an empty cell?); give the text")
            if not isinstance(value, str):
                raise ValueError(f"pair {index}: field {key!r} must be a string, got {type(value).__name__}")
            return value
    raise ValueError(f"pair {index}: no {keys[0]!r} (or {keys[1]!r}) field; fields: {sorted(pair)}")


class RoutedNLIPredictor:
    """Batched prediction of labels, probabilities and routes (see the module docstring).

    ``meta_fallback``: a meta class name (or index) used for pairs without a (known) meta value.
    """

    def __init__(self, model: RoutedModel, tokenizer: Any, meta_fallback: str | int | None = None) -> None:
        if tokenizer is None:
            raise ValueError("a predictor needs the model's tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = c = model.config
        self.transformer = isinstance(model, RoutedTransformerForNLI)
        self.max_length = int(c.input_max_length or (128 if self.transformer else 64))
        self.meta_names = list(c.meta_names) if c.meta_names else [str(i) for i in range(int(c.num_meta))]
        self.meta_field = c.data_meta_column or c.meta_column or "meta"
        self.labels = {int(k): v for k, v in (c.id2label or {}).items()} or {i: str(i) for i in range(c.num_classes)}
        self.fallbacks = 0
        self.meta_fallback = None if meta_fallback is None else self._meta_index(meta_fallback, "meta_fallback")
        if self.transformer:
            self.collate = PairCollator(tokenizer.pad_token_id or 0, None)
        else:
            self.collate = NLICollator(int(c.pad_id), None)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, meta_fallback: str | int | None = None, **hub: Any) -> "RoutedNLIPredictor":
        """Load a saved model folder (or Hub id) and its tokenizer."""
        from transformers import AutoTokenizer

        model, folder = load_routed_model(name_or_path, **hub)
        if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            raise ValueError(f"{name_or_path} has no tokenizer files (tokenizer.json): it was saved without its "
                             "tokenizer; save it with model.save_pretrained(folder, tokenizer=tokenizer)")
        return cls(model, AutoTokenizer.from_pretrained(str(folder)), meta_fallback)

    # ------------------------------------------------------------------ meta labels
    @property
    def dispatches(self) -> str | None:
        """``"learned"`` / ``"centroids"`` when the model picks its meta class itself, else None."""
        source = self.model.meta_source
        return source if source in ("learned", "centroids") else None

    def _meta_index(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"{where}: a meta value is a class name or index, got {type(value).__name__}")
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and value not in self.meta_names):
            i = int(value)
            if 0 <= i < len(self.meta_names):
                return i
            raise ValueError(f"{where}: meta index {i} outside 0..{len(self.meta_names) - 1}")
        if value in self.meta_names:
            return self.meta_names.index(value)
        raise ValueError(f"{where}: unknown {self.meta_field} {value!r}; known values: {self.meta_names}")

    def resolve_meta(self, pairs: Sequence[dict], offset: int = 0) -> tuple[Tensor | None, list[str]]:
        """The given meta ids ``[B]`` and where each came from (see the module docstring); ``None`` when the
        model picks its meta itself (its meta source) or reads none."""
        n = len(pairs)
        if self.dispatches is not None:
            return None, ["dispatched"] * n
        if not self.model.needs_meta:
            return None, ["none"] * n
        ids, sources = [], []
        for j, pair in enumerate(pairs):
            where = f"pair {offset + j}"
            value = pair.get(self.meta_field, pair.get("meta"))
            other = pair.get("meta") if self.meta_field != "meta" and self.meta_field in pair else None
            if value not in (None, "") and other not in (None, "") and \
                    self._meta_index(value, where) != self._meta_index(other, where):
                raise ValueError(f"{where}: {self.meta_field!r} is {value!r} but 'meta' is {other!r}: give one of them")
            if value is None or value == "":
                if self.meta_fallback is None:
                    raise ValueError(
                        f"{where}: this model routes on {self.meta_field!r} and the pair has none: give "
                        f"{self.meta_field!r} (or 'meta') as one of {self.meta_names}, or a fallback (--meta_fallback NAME)"
                    )
                ids.append(self.meta_fallback), sources.append("fallback")
                self.fallbacks += 1
                continue
            try:
                ids.append(self._meta_index(value, where)), sources.append("given")
            except ValueError:
                if self.meta_fallback is None:
                    raise
                ids.append(self.meta_fallback), sources.append("fallback")
                self.fallbacks += 1
        return torch.tensor(ids, dtype=torch.long), sources

    # ------------------------------------------------------------------ prediction
    def features(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[dict[str, list[int]]]:
        """Each pair's token ids (tokenized as in training, each text once), not yet padded."""
        if self.transformer:
            enc = self.tokenizer(list(premises), list(hypotheses), truncation=True, max_length=self.max_length)
            keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
            return [{k: enc[k][i] for k in keys} for i in range(len(premises))]
        tok = lambda texts: self.tokenizer(list(texts), add_special_tokens=False, truncation=True,  # noqa: E731
                                           max_length=self.max_length)["input_ids"]
        p, h = tok(premises), tok(hypotheses)
        return [{"premise_ids": a, "hypothesis_ids": b} for a, b in zip(p, h)]

    def encode(self, premises: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Tensor]:
        """The model inputs of a batch of pairs (tokenized and padded as in training)."""
        return self.collate(self.features(premises, hypotheses))

    def routes(self, out: Any) -> list[dict[str, list]]:
        """Per sample, the route of every routed layer by name: the block chosen at each depth (``"stop"``
        for the stop action; nothing after it)."""
        names = self.model.routed_layer_names
        per_sample: list[dict[str, list]] = [{} for _ in range(out.logits.shape[0])]
        for name, traj in zip(names, out.trajectories):
            actions = traj.actions.tolist()
            for i, row in enumerate(actions):
                per_sample[i][name] = ["stop" if a == traj.stop_action else a for a in row if a >= 0]
        return per_sample

    def prepare(self, pairs: Sequence[dict], offset: int = 0) -> dict[str, list]:
        """Check pairs: ``{"premises": [...], "hypotheses": [...], "meta": [given class id or None],
        "sources": [where the meta comes from]}``, one entry per pair (what :meth:`run` batches; the
        pipeline prepares each pair alone and runs them together)."""
        for j, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                raise ValueError(f"pair {offset + j}: expected a dict with premise and hypothesis, got {type(pair).__name__}")
        premises = [_field(p, PREMISE_KEYS, offset + j) for j, p in enumerate(pairs)]
        hypotheses = [_field(p, HYPOTHESIS_KEYS, offset + j) for j, p in enumerate(pairs)]
        for j, (p, h) in enumerate(zip(premises, hypotheses)):
            if not p.strip() and not h.strip():
                raise ValueError(f"pair {offset + j}: premise and hypothesis are both empty: there is nothing to classify")
        meta, sources = self.resolve_meta(pairs, offset)
        return {"premises": premises, "hypotheses": hypotheses,
                "meta": [None] * len(pairs) if meta is None else meta.tolist(), "sources": sources}

    @torch.no_grad()
    def predict_batch(self, pairs: Sequence[dict], offset: int = 0) -> list[dict[str, Any]]:
        """Predictions of one batch (``offset``: index of its first pair, for messages)."""
        return self.run(**self.prepare(pairs, offset), offset=offset)

    @torch.no_grad()
    def run(self, premises: Sequence[str], hypotheses: Sequence[str], meta: Sequence[int | None],
            sources: Sequence[str], offset: int = 0) -> list[dict[str, Any]]:
        """Tokenize prepared pairs (see :meth:`prepare`) once and run them in one forward, whatever their
        meta classes or routes."""
        features = self.features(premises, hypotheses)
        if not features:
            return []
        if any(m is None for m in meta) and not all(m is None for m in meta):
            raise ValueError(f"pairs {offset}-{offset + len(features) - 1}: some pairs have a meta class and some not")
        given = None if meta[0] is None else torch.tensor(list(meta), dtype=torch.long)
        inputs = self.collate(features)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        try:
            out = self.model(**inputs, meta=None if given is None else given.to(device))
        except ValueError as err:  # e.g. a meta class the routers never saw in training
            raise ValueError(f"pairs {offset}-{offset + len(features) - 1}: {err}") from None
        probs = torch.softmax(out.logits.float(), -1).cpu()
        routes = self.routes(out)
        used = None if out.meta is None else out.meta.cpu()  # the meta the model routed with
        dispatched = None
        if out.dispatch is not None:
            dispatched = self.model.dispatcher.probabilities(out.dispatch).cpu()
        results = []
        for i in range(len(features)):
            k = int(probs[i].argmax())
            row: dict[str, Any] = {
                "label": self.labels.get(k, str(k)),
                "score": float(probs[i, k]),
                "probabilities": {self.labels.get(j, str(j)): float(p) for j, p in enumerate(probs[i].tolist())},
                "route": routes[i],
                "meta_source": sources[i],
                "meta": None if used is None else self.meta_names[int(used[i])],
            }
            if self.dispatches is not None:
                row["dispatch"] = {"class": row["meta"],
                                   "probability": None if dispatched is None else float(dispatched[i])}
            results.append(row)
        return results

    def predict(self, pairs: dict | Iterable[dict], batch_size: int = 64, progress: bool = False) -> list[dict[str, Any]]:
        """Predictions of every pair, in order (``progress``: a tqdm bar over the batches)."""
        if isinstance(pairs, dict):
            pairs = [pairs]
        pairs = list(pairs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, len(pairs), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="predicting", unit="batch")
        out: list[dict[str, Any]] = []
        for s in starts:
            out += self.predict_batch(pairs[s : s + batch_size], offset=s)
        return out
