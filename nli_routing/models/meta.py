"""Where a routed model's meta classes come from: the *meta source*, a part of every routed model.

A routed model routes each sample with the agent of its meta class. The class comes from one of
three sources, chosen when the model is built and saved with it (``RoutedModel.meta_source``):

* ``"given"``: the caller's labels (``meta=`` of ``forward``; the data's meta column, e.g. the
  signature or the genre, named by ``config.meta_column``);
* ``"centroids"``: the nearest of ``k`` centroids fitted offline (k-means or agglomerative clustering of
  the training premises' mean word vectors, :mod:`nli_routing.dispatch.offline`), computed at the top
  of ``forward`` from the premise tokens the model reads and its own word vectors; the centroids are
  tensors of ``model.safetensors`` (:class:`NearestCentroid`);
* ``"learned"``: a learned dispatcher trained with (or after) the model
  (:class:`~nli_routing.models.dispatcher.LearnedDispatcher`).

A model that reads no meta at all (unrouted, no meta keyword) reports ``"none"``. A forward's output
carries the meta classes it used (``out.meta``) and their source (``out.meta_source``); inference
never re-implements dispatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["META_SOURCES", "NearestCentroid", "bag_of_words_mean"]

#: every value of ``RoutedModel.meta_source``
META_SOURCES = ("given", "centroids", "learned", "none")


def bag_of_words_mean(ids: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
    """``[B, D]`` mean word vector of each row's unmasked tokens (zeros for an empty row): the same
    ``embedding_bag`` the offline clustering was fitted on (:func:`~nli_routing.models.embeddings.cbow_encode`)."""
    mask = mask.bool()
    lengths = mask.sum(1)
    flat = ids[mask]
    offsets = torch.cumsum(lengths, 0) - lengths
    return F.embedding_bag(flat, weight, offsets, mode="mean")


class NearestCentroid(nn.Module):
    """Offline dispatch as a part of the model: each sample's class is its nearest centroid (Euclidean).

    ``centroids [k, D]`` (a buffer, saved in ``model.safetensors``) were fitted on the mean word vectors
    of the training premises' first ``max_length`` tokens; ``forward(ids, mask, weight)`` encodes the
    premise tokens the same way with the model's word vectors ``weight`` and returns ``[B]`` class ids.
    Distances are computed in float64 (as scikit-learn does for float32 inputs), so the assignment is the
    one the clustering gave the training data. ``settings`` (JSON: method, k, seed, max_length,
    text_column) go to ``config.offline_dispatch``.
    """

    def __init__(self, centroids: Tensor, max_length: int = 64, method: str = "kmeans", seed: int = 0,
                 text_column: str = "premise") -> None:
        super().__init__()
        centroids = torch.as_tensor(centroids)
        if centroids.dim() != 2 or centroids.shape[0] < 1:
            raise ValueError(f"centroids must be a [k, D] tensor with k >= 1, got shape {tuple(centroids.shape)}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.register_buffer("centroids", centroids.to(torch.float32).clone())
        self.max_length = int(max_length)
        self.method = str(method)
        self.seed = int(seed)
        self.text_column = str(text_column)

    @property
    def num_dispatch(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def settings(self) -> dict:
        return {"method": self.method, "k": self.num_dispatch, "seed": self.seed, "max_length": self.max_length,
                "text_column": self.text_column, "dim": int(self.centroids.shape[1])}

    @classmethod
    def from_settings(cls, settings: dict) -> "NearestCentroid":
        """A source of the shapes of ``settings``: the centroids of a folder saved before they became
        tensors are in the settings themselves (``"centroids"``, nested lists), else zeros until the
        weights are loaded."""
        if settings.get("centroids") is not None:
            centroids = torch.tensor(settings["centroids"], dtype=torch.float64)
        else:
            centroids = torch.zeros(int(settings["k"]), int(settings["dim"]))
        return cls(centroids, int(settings.get("max_length", 64)), settings.get("method", "kmeans"),
                   int(settings.get("seed", 0)), settings.get("text_column", "premise"))

    def features(self, ids: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        """``[B, D]`` the encoding the centroids live in (mean word vector of the first ``max_length`` tokens)."""
        return bag_of_words_mean(ids[:, : self.max_length], mask[:, : self.max_length], weight)

    def forward(self, ids: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        x = self.features(ids, mask, weight.detach()).double()
        c = self.centroids.to(device=x.device, dtype=torch.float32).double()
        distances = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)
        return distances.argmin(1)
