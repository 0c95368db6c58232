"""Offline dispatching: cluster CBOW encodings of the premise; cluster ids become meta labels.

The clustering is fitted once on the training split and summarised by its centroids, so every
row of every split (including unseen rows at test time) is assigned to its nearest centroid. The
fitted centroids are handed to the routed model as its meta source (:meth:`OfflineDispatcher.to_meta_source`,
:class:`~nli_routing.models.meta.NearestCentroid`), which assigns new pairs itself at inference.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict
from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans
from sklearn.metrics import pairwise_distances_argmin

from nli_routing.models.embeddings import WordVectors, cbow_encode
from nli_routing.models.meta import NearestCentroid

logger = logging.getLogger(__name__)

__all__ = ["OfflineDispatcher", "dispatch_dataset", "CLUSTERINGS"]

CLUSTERINGS = ("kmeans", "agglomerative", "dbscan")


class OfflineDispatcher:
    """Cluster vectors with k-means, Ward agglomerative clustering or DBSCAN; assign by nearest centroid.

    ``max_fit_samples`` bounds the rows used by agglomerative clustering and DBSCAN (quadratic in memory
    and time): larger inputs are subsampled without replacement using ``seed``. k-means uses all rows.

    DBSCAN (thesis 5.3.3 lists it among the offline clusterings) finds the number of clusters itself: ``k``
    becomes the number it found. ``eps`` is its neighbourhood radius (``None``: the 0.9 quantile of every
    fitted row's distance to its ``min_samples``-th nearest neighbour); the rows it leaves as noise are
    assigned to the nearest cluster centroid like every later row, and counted in ``noise_``.
    """

    def __init__(
        self,
        method: str = "kmeans",
        k: int = 5,
        seed: int = 0,
        max_fit_samples: int | None = 20000,
        eps: float | None = None,
        min_samples: int = 5,
    ) -> None:
        if method not in CLUSTERINGS:
            raise ValueError(f"unknown dispatch method {method!r}; expected one of {list(CLUSTERINGS)}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if max_fit_samples is not None and max_fit_samples < 1:
            raise ValueError(f"max_fit_samples must be >= 1 or None, got {max_fit_samples}")
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be > 0 (or None: chosen from the data), got {eps}")
        if int(min_samples) < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.method = method
        self.k = int(k)
        self.seed = int(seed)
        self.max_fit_samples = max_fit_samples
        self.eps = None if eps is None else float(eps)
        self.min_samples = int(min_samples)
        self.centroids_: np.ndarray | None = None
        self.noise_: int | None = None

    def __repr__(self) -> str:
        fitted = "fitted" if self.centroids_ is not None else "unfitted"
        return f"OfflineDispatcher(method={self.method!r}, k={self.k}, seed={self.seed}, {fitted})"

    @staticmethod
    def _check_2d(X: Any) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array [N, D], got shape {X.shape}")
        if not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float64)
        return X

    def fit(self, X: np.ndarray) -> "OfflineDispatcher":
        """Cluster the rows of ``X`` [N, D] and store the ``k`` centroids in ``centroids_``."""
        X = self._check_2d(X)
        n = X.shape[0]
        if self.method == "dbscan":
            return self._fit_dbscan(X)
        if self.k > n:
            raise ValueError(f"k={self.k} clusters requested but only {n} samples to fit on")
        if self.method == "kmeans":
            model = KMeans(n_clusters=self.k, n_init=10, random_state=self.seed)
            model.fit(X)
            centroids = np.asarray(model.cluster_centers_)
        else:
            if self.max_fit_samples is not None and n > self.max_fit_samples:
                if self.k > self.max_fit_samples:
                    raise ValueError(
                        f"k={self.k} clusters requested but max_fit_samples={self.max_fit_samples}"
                    )
                rng = np.random.default_rng(self.seed)
                rows = np.sort(rng.choice(n, size=self.max_fit_samples, replace=False))
                X = X[rows]
                logger.info("agglomerative dispatch: fitting on %d of %d rows", len(rows), n)
            labels = AgglomerativeClustering(n_clusters=self.k, linkage="ward").fit_predict(X)
            centroids = np.stack([X[labels == c].mean(axis=0) for c in range(self.k)])
        self.centroids_ = centroids
        return self

    def _fit_dbscan(self, X: np.ndarray) -> "OfflineDispatcher":
        n = X.shape[0]
        if self.max_fit_samples is not None and n > self.max_fit_samples:
            rng = np.random.default_rng(self.seed)
            X = X[np.sort(rng.choice(n, size=self.max_fit_samples, replace=False))]
            logger.info("dbscan dispatch: fitting on %d of %d rows", len(X), n)
        eps = self.eps
        if eps is None:  # the k-distance heuristic: most rows have min_samples neighbours within eps
            from sklearn.neighbors import NearestNeighbors

            neighbours = min(self.min_samples + 1, len(X))
            dist, _ = NearestNeighbors(n_neighbors=neighbours).fit(X).kneighbors(X)
            eps = float(np.quantile(dist[:, -1], 0.9))
            if not eps > 0:
                raise ValueError("dbscan: the rows are all identical (eps from the data is 0); give eps")
        labels = DBSCAN(eps=eps, min_samples=self.min_samples).fit_predict(X)
        found = sorted(set(labels.tolist()) - {-1})
        if not found:
            raise ValueError(f"dbscan found no cluster at eps={eps:.4g}, min_samples={self.min_samples}: every row is "
                             "noise; give a larger eps or a smaller min_samples")
        self.centroids_ = np.stack([X[labels == c].mean(axis=0) for c in found])
        self.k = len(found)
        self.eps_ = eps
        self.noise_ = int((labels == -1).sum())
        logger.info("dbscan dispatch: %d clusters at eps %.4g; %d of %d fitted rows were noise (assigned to the "
                    "nearest centroid)", self.k, eps, self.noise_, len(X))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Index (int64) of the nearest centroid (Euclidean) of each row of ``X``."""
        if self.centroids_ is None:
            raise RuntimeError("OfflineDispatcher.predict called before fit (or load_state_dict)")
        X = self._check_2d(X)
        if X.shape[1] != self.centroids_.shape[1]:
            raise ValueError(
                f"X has dimension {X.shape[1]} but the centroids have {self.centroids_.shape[1]}"
            )
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        centroids = self.centroids_.astype(X.dtype, copy=False)
        return pairwise_distances_argmin(X, centroids).astype(np.int64)

    def fit_predict(self, X: np.ndarray) -> np.ndarray:
        """Fit on ``X`` and return the nearest-centroid assignment of its rows.

        For agglomerative clustering this is the Voronoi assignment of the cluster means, which
        may differ from the raw Ward labels for a few border points; it is the same rule
        :meth:`predict` applies to new rows.
        """
        return self.fit(X).predict(X)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (method, k, seed, max_fit_samples, centroids as nested lists)."""
        return {
            "method": self.method,
            "k": self.k,
            "seed": self.seed,
            "max_fit_samples": self.max_fit_samples,
            **({"eps": self.eps, "min_samples": self.min_samples} if self.method == "dbscan" else {}),
            "centroids": None if self.centroids_ is None else self.centroids_.tolist(),
            "dtype": None if self.centroids_ is None else str(self.centroids_.dtype),
        }

    def load_state_dict(self, state: dict[str, Any]) -> "OfflineDispatcher":
        """Restore the state written by :meth:`state_dict`; returns ``self``."""
        method = state.get("method", self.method)
        if method not in CLUSTERINGS:
            raise ValueError(f"unknown dispatch method {method!r}; expected one of {list(CLUSTERINGS)}")
        self.method = method
        self.k = int(state.get("k", self.k))
        self.seed = int(state.get("seed", self.seed))
        self.max_fit_samples = state.get("max_fit_samples", self.max_fit_samples)
        self.eps = state.get("eps", self.eps)
        self.min_samples = int(state.get("min_samples", self.min_samples))
        centroids = state.get("centroids")
        if centroids is None:
            self.centroids_ = None
        else:
            arr = np.asarray(centroids, dtype=state.get("dtype") or np.float64)
            if arr.ndim != 2 or arr.shape[0] != self.k:
                raise ValueError(f"centroids of shape {arr.shape} do not match k={self.k}")
            self.centroids_ = arr
        return self

    def to_meta_source(self, max_length: int = 64, text_column: str = "premise") -> "NearestCentroid":
        """The fitted centroids as a routed model's meta source (:meth:`RoutedModel.attach_centroids`),
        which assigns the mean word vector of the first ``max_length`` tokens of ``text_column``."""
        if self.centroids_ is None:
            raise ValueError("the offline dispatcher is not fitted: fit it before making it a meta source")
        return NearestCentroid(torch.as_tensor(self.centroids_), max_length, self.method, self.seed, text_column)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "OfflineDispatcher":
        """Build a dispatcher from :meth:`state_dict` output."""
        return cls(method=state["method"], k=state["k"]).load_state_dict(state)


def dispatch_dataset(
    dsd: DatasetDict,
    vectors: WordVectors,
    method: str = "kmeans",
    k: int = 5,
    seed: int = 0,
    text_column: str = "premise",
    out_column: str = "cluster",
    train_split: str = "train",
    max_length: int = 64,
    dispatcher: OfflineDispatcher | None = None,
) -> tuple[DatasetDict, OfflineDispatcher]:
    """Fit an :class:`OfflineDispatcher` on the CBOW encodings of ``train_split``'s
    ``text_column`` and add a ``ClassLabel`` column ``out_column`` (names ``cluster_0`` ...)
    holding the nearest-centroid cluster of every row of every split.

    An existing ``out_column`` is replaced. A fitted ``dispatcher`` (e.g. from training on another
    SCI variant) is applied as is: nothing is fitted and ``method``, ``k``, ``seed`` are ignored.
    """
    fitted = dispatcher is not None
    if fitted and dispatcher.centroids_ is None:
        raise ValueError("dispatch_dataset got an unfitted dispatcher; fit it or pass dispatcher=None")
    if not fitted and train_split not in dsd:
        raise KeyError(f"dispatch_dataset needs a {train_split!r} split; got {list(dsd)}")
    dispatcher = dispatcher if fitted else OfflineDispatcher(method=method, k=k, seed=seed)

    def encode(split: str) -> np.ndarray:
        if text_column not in dsd[split].column_names:
            raise KeyError(f"split {split!r} has no column {text_column!r}")
        texts = list(dsd[split].with_format(None)[text_column])  # respects indices
        return cbow_encode(vectors, texts, max_length=max_length)

    if not fitted:
        dispatcher.fit(encode(train_split))
    feature = ClassLabel(names=[f"cluster_{i}" for i in range(dispatcher.k)])
    out = {}
    for name, split in dsd.items():
        assignment = dispatcher.predict(encode(name))
        if out_column in split.column_names:
            split = split.remove_columns(out_column)
        out[name] = split.add_column(out_column, assignment.tolist(), feature=feature)
        sizes = np.bincount(assignment, minlength=dispatcher.k)
        logger.info("dispatch_dataset[%s]: cluster sizes %s", name, sizes.tolist())
    return DatasetDict(out), dispatcher
