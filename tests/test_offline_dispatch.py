"""Tests for nli_routing.dispatch.offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict
from sklearn.metrics import adjusted_rand_score
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from nli_routing.dispatch.offline import OfflineDispatcher, dispatch_dataset
from nli_routing.models.embeddings import cbow_encode, random_embeddings

CENTERS = np.array(
    [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]], dtype=np.float64
)


def _blobs(n_per: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + rng.normal(scale=0.5, size=(n_per, 3)) for c in CENTERS])
    y = np.repeat(np.arange(len(CENTERS)), n_per)
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_recovers_blobs(method: str) -> None:
    X, y = _blobs()
    disp = OfflineDispatcher(method=method, k=4, seed=0)
    pred = disp.fit_predict(X)
    assert pred.dtype == np.int64 and pred.shape == y.shape
    assert adjusted_rand_score(y, pred) == 1.0
    assert disp.centroids_.shape == (4, 3)
    # every centroid lies close to a true centre
    d = np.linalg.norm(disp.centroids_[:, None, :] - CENTERS[None], axis=-1)
    assert np.all(d.min(axis=1) < 0.5)


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_predict_unseen_nearest_centroid(method: str) -> None:
    X, _ = _blobs()
    disp = OfflineDispatcher(method=method, k=4).fit(X)
    new = np.random.default_rng(1).uniform(-5, 15, size=(200, 3))
    pred = disp.predict(new)
    brute = np.linalg.norm(new[:, None, :] - disp.centroids_[None], axis=-1).argmin(1)
    assert np.array_equal(pred, brute)
    # points at the true centres go to the cluster of that blob's training points
    at_centres = disp.predict(CENTERS)
    assert len(set(at_centres.tolist())) == 4
    assert disp.predict(np.zeros((0, 3))).shape == (0,)


def test_agglomerative_subsamples() -> None:
    X, y = _blobs(n_per=100)
    disp = OfflineDispatcher(method="agglomerative", k=4, seed=3, max_fit_samples=50)
    pred = disp.fit_predict(X)
    assert adjusted_rand_score(y, pred) == 1.0
    again = OfflineDispatcher(method="agglomerative", k=4, seed=3, max_fit_samples=50).fit(X)
    assert np.array_equal(disp.centroids_, again.centroids_)


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_state_dict_round_trip(method: str) -> None:
    X, _ = _blobs()
    disp = OfflineDispatcher(method=method, k=4, seed=5).fit(X)
    state = json.loads(json.dumps(disp.state_dict()))
    restored = OfflineDispatcher().load_state_dict(state)
    assert restored.method == method and restored.k == 4
    new = np.random.default_rng(2).normal(scale=6, size=(300, 3))
    assert np.array_equal(restored.predict(new), disp.predict(new))
    assert np.array_equal(OfflineDispatcher.from_state_dict(state).predict(X), disp.predict(X))


def test_errors() -> None:
    with pytest.raises(ValueError, match="kmeans.*agglomerative.*dbscan"):
        OfflineDispatcher(method="spectral")
    with pytest.raises(ValueError, match="only 3 samples"):
        OfflineDispatcher(k=5).fit(np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="before fit"):
        OfflineDispatcher().predict(np.zeros((2, 2)))
    disp = OfflineDispatcher(k=2).fit(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    with pytest.raises(ValueError, match="dimension"):
        disp.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        disp.fit(np.zeros(4))


def _word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_dispatch_dataset() -> None:
    groups = [["cat", "dog", "cow"], ["red", "blue", "green"], ["run", "jump", "swim"]]
    tok = _word_tokenizer([w for g in groups for w in g])
    vectors = random_embeddings(tok, dim=32, seed=0)
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[list[str], list[int]]:
        topics = rng.integers(0, 3, size=n)
        texts = [" ".join(rng.choice(groups[t], size=3)) for t in topics]
        return texts, topics.tolist()

    train_texts, train_topics = make(60)
    test_texts, test_topics = make(20)
    dsd = DatasetDict(
        train=Dataset.from_dict(
            {"premise": train_texts, "hypothesis": train_texts, "label": [0] * 60}
        ),
        test=Dataset.from_dict(
            {"premise": test_texts, "hypothesis": test_texts, "label": [1] * 20}
        ),
    )
    out, disp = dispatch_dataset(dsd, vectors, method="kmeans", k=3, seed=0)
    assert isinstance(disp, OfflineDispatcher) and disp.centroids_.shape == (3, 32)
    for name in ("train", "test"):
        feat = out[name].features["cluster"]
        assert isinstance(feat, ClassLabel)
        assert feat.names == ["cluster_0", "cluster_1", "cluster_2"]
        assert out[name].column_names == ["premise", "hypothesis", "label", "cluster"]
        clusters = out[name]["cluster"]
        expected = disp.predict(cbow_encode(vectors, list(dsd[name]["premise"])))
        assert list(clusters) == expected.tolist()
    assert adjusted_rand_score(train_topics, list(out["train"]["cluster"])) == 1.0
    assert adjusted_rand_score(test_topics, list(out["test"]["cluster"])) == 1.0
    # re-dispatching replaces the column; agglomerative works through the same path
    again, _ = dispatch_dataset(out, vectors, method="agglomerative", k=3)
    assert again["train"].column_names == out["train"].column_names
    assert adjusted_rand_score(train_topics, list(again["train"]["cluster"])) == 1.0
    with pytest.raises(KeyError):
        dispatch_dataset(DatasetDict(test=dsd["test"]), vectors)
    # a fitted dispatcher assigns another data set (even without a train split) without refitting
    centroids = disp.centroids_.copy()
    other, same = dispatch_dataset(DatasetDict(test=dsd["test"]), vectors, k=7, dispatcher=disp)
    assert same is disp and np.array_equal(disp.centroids_, centroids)
    assert list(other["test"]["cluster"]) == list(out["test"]["cluster"])
    with pytest.raises(ValueError, match="unfitted"):
        dispatch_dataset(dsd, vectors, dispatcher=OfflineDispatcher())
