"""Tests for nli_routing.models.embeddings and nli_routing.data.encoding."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from torch.utils.data import DataLoader

from nli_routing.data.encoding import NLICollator, encode_nli
from nli_routing.models.embeddings import (
    WordVectors,
    cbow_encode,
    default_model_path,
    load_glove,
    load_hf_embeddings,
    load_word_vectors,
    random_embeddings,
)

REAL_GLOVE = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/glove/glove.twitter.27B.25d.top12k.txt"
)

GLOVE_ROWS = {
    "hello": [0.1, 0.2, 0.3, 0.4],
    ",": [1.0, 0.0, -1.0, 0.5],
    "world": [-0.5, 0.25, 0.0, 2.0],
    "!": [0.0, 3.0, 0.0, -3.0],
    "a": [1.0, 1.0, 1.0, 1.0],
    "the": [2.0, 0.0, 2.0, 0.0],
    "café": [0.5, 0.5, -0.5, -0.5],
    "<user>": [9.0, 9.0, 9.0, 9.0],
}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _glove_lines(rows: dict[str, list[float]]) -> list[str]:
    return [w + " " + " ".join(f"{x:g}" for x in v) for w, v in rows.items()]


@pytest.fixture()
def glove_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "tiny.glove.txt", _glove_lines(GLOVE_ROWS))


@pytest.fixture(scope="module")
def minilm() -> WordVectors:
    return load_hf_embeddings()


# ----------------------------------------------------------------------------- GloVe


def test_glove_vocab_and_vectors(glove_file: Path) -> None:
    wv = load_glove(glove_file)
    assert wv.dim == 4 and wv.pad_id == 0
    assert wv.weight.dtype == torch.float32
    assert wv.weight.shape == (2 + len(GLOVE_ROWS), 4)
    assert torch.all(wv.weight[0] == 0)  # [PAD]
    vocab = wv.tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert wv.tokenizer.pad_token_id == 0 and wv.tokenizer.unk_token_id == 1
    for i, (word, vec) in enumerate(GLOVE_ROWS.items()):
        assert vocab[word] == i + 2
        assert torch.equal(wv.weight[i + 2], torch.tensor(vec, dtype=torch.float32))
    # [UNK] is the mean of the word vectors by default
    mean = torch.tensor(list(GLOVE_ROWS.values()), dtype=torch.float32).mean(0)
    assert torch.allclose(wv.weight[1], mean)
    assert torch.all(load_glove(glove_file, unk_vector="zero").weight[1] == 0)


def test_glove_tokenizer(glove_file: Path) -> None:
    wv = load_glove(glove_file)
    tok = wv.tokenizer
    enc = tok(["Hello, world!", "", "HELLO zzzunknown the"], add_special_tokens=False)
    vocab = tok.get_vocab()
    assert enc["input_ids"][0] == [vocab["hello"], vocab[","], vocab["world"], vocab["!"]]
    assert enc["input_ids"][1] == []
    assert enc["input_ids"][2] == [vocab["hello"], tok.unk_token_id, vocab["the"]]
    assert tok("café", add_special_tokens=False)["input_ids"] == [vocab["café"]]
    # Cased loading keeps case: "Hello" is then unknown
    cased = load_glove(glove_file, lowercase=False).tokenizer
    assert cased("Hello hello", add_special_tokens=False)["input_ids"] == [1, vocab["hello"]]


def test_glove_max_words_and_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.txt", _glove_lines(GLOVE_ROWS))
    wv = load_glove(path, max_words=3)
    assert wv.weight.shape == (5, 4)
    assert set(wv.tokenizer.get_vocab()) == {"[PAD]", "[UNK]", "hello", ",", "world"}
    headed = _write(tmp_path / "w2v.txt", [f"{len(GLOVE_ROWS)} 4"] + _glove_lines(GLOVE_ROWS))
    assert torch.equal(load_glove(headed).weight, load_glove(path).weight)


def test_glove_odd_words(tmp_path: Path) -> None:
    path = _write(tmp_path / "odd.txt", ["x 1 2", ". . . 3 4", "1 5 6", "tab\tword 7 8"])
    wv = load_glove(path, lowercase=False)
    vocab = wv.tokenizer.get_vocab()
    assert torch.equal(wv.weight[vocab[". . ."]], torch.tensor([3.0, 4.0]))
    assert torch.equal(wv.weight[vocab["1"]], torch.tensor([5.0, 6.0]))
    assert torch.equal(wv.weight[vocab["tab\tword"]], torch.tensor([7.0, 8.0]))


@pytest.mark.parametrize(
    "bad_line, lineno",
    [("world 1 2 3", 3), ("world 1 2 3 4 5", 3), ("world 1 2 x 4", 3)],
)
def test_glove_bad_line(tmp_path: Path, bad_line: str, lineno: int) -> None:
    path = _write(tmp_path / "bad.txt", ["hello 1 2 3 4", "a 1 1 1 1", bad_line, "b 2 2 2 2"])
    with pytest.raises(ValueError) as err:
        load_glove(path)
    assert str(path) in str(err.value) and f":{lineno}:" in str(err.value)


def test_glove_duplicates(tmp_path: Path) -> None:
    lines = ["hello 1 2", "world 3 4", "hello 5 6", "Hello 7 8", "world 9 9"]
    path = _write(tmp_path / "dup.txt", lines)
    wv = load_glove(path)
    assert wv.weight.shape == (4, 2)
    assert torch.equal(wv.weight[2], torch.tensor([1.0, 2.0]))  # first occurrence kept
    assert "2 duplicates skipped" in wv.source
    assert "1 merged by normalisation" in wv.source
    cased = load_glove(path, lowercase=False)
    assert cased.weight.shape == (5, 2) and "2 duplicates skipped" in cased.source


def test_load_word_vectors_glove(glove_file: Path) -> None:
    wv = load_word_vectors(str(glove_file))
    assert wv.source.startswith("glove:") and wv.dim == 4


@pytest.mark.slow
@pytest.mark.skipif(not REAL_GLOVE.exists(), reason=f"{REAL_GLOVE} not present")
def test_real_glove_file() -> None:
    wv = load_glove(REAL_GLOVE)
    assert wv.dim == 25 and wv.weight.shape[0] > 10_000
    ids = wv.tokenizer("The man is sleeping", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and wv.tokenizer.unk_token_id not in ids
    enc = cbow_encode(wv, ["The man is sleeping", ""])
    assert enc.shape == (2, 25) and np.abs(enc[0]).sum() > 0 and np.all(enc[1] == 0)


# ----------------------------------------------------------------------------- MiniLM / random


def test_minilm_offline(minilm: WordVectors) -> None:
    assert Path(default_model_path()).is_dir()
    assert minilm.weight.shape == (30522, 384) and minilm.dim == 384
    assert minilm.weight.dtype == torch.float32 and not minilm.weight.requires_grad
    assert minilm.pad_id == minilm.tokenizer.pad_token_id == 0
    ids = minilm.tokenizer(["Hello, world!", ""], add_special_tokens=False)["input_ids"]
    assert ids[1] == [] and len(ids[0]) == 4
    assert minilm.tokenizer.convert_ids_to_tokens(ids[0]) == ["hello", ",", "world", "!"]


def test_random_embeddings(minilm: WordVectors) -> None:
    wv = random_embeddings(minilm.tokenizer, dim=64, seed=3)
    assert wv.weight.shape == (len(minilm.tokenizer), 64) and wv.pad_id == 0
    assert torch.all(wv.weight[0] == 0)
    assert abs(float(wv.weight[1:].std()) - 1 / 8) < 0.01
    assert torch.equal(wv.weight, random_embeddings(minilm.tokenizer, dim=64, seed=3).weight)
    assert not torch.equal(wv.weight, random_embeddings(minilm.tokenizer, dim=64, seed=4).weight)
    spec = load_word_vectors("random:32")
    assert spec.weight.shape == (30522, 32) and spec.source.startswith("random:32")
    with pytest.raises(ValueError):
        load_word_vectors("random:abc")


# ----------------------------------------------------------------------------- CBOW


def test_cbow_encode(glove_file: Path) -> None:
    wv = load_glove(glove_file)
    texts = ["Hello, world!", "the the a zzz", ""]
    enc = cbow_encode(wv, texts, batch_size=2)
    assert enc.shape == (3, 4) and enc.dtype == np.float32
    rows = {w: np.array(v, dtype=np.float32) for w, v in GLOVE_ROWS.items()}
    expected0 = (rows["hello"] + rows[","] + rows["world"] + rows["!"]) / 4
    unk = np.stack(list(rows.values())).mean(0)
    expected1 = (2 * rows["the"] + rows["a"] + unk) / 4
    np.testing.assert_allclose(enc[0], expected0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(enc[1], expected1, rtol=1e-6, atol=1e-6)
    assert np.all(enc[2] == 0)
    # truncation: only the first two tokens count
    short = cbow_encode(wv, ["Hello, world!"], max_length=2)
    np.testing.assert_allclose(short[0], (rows["hello"] + rows[","]) / 2, atol=1e-6)
    assert cbow_encode(wv, ["", ""]).shape == (2, 4)
    assert cbow_encode(wv, []).shape == (0, 4)


def test_cbow_encode_minilm(minilm: WordVectors) -> None:
    enc = cbow_encode(minilm, ["A man plays guitar.", ""])
    ids = minilm.tokenizer("A man plays guitar.", add_special_tokens=False)["input_ids"]
    np.testing.assert_allclose(enc[0], minilm.weight[ids].mean(0).numpy(), atol=1e-6)
    assert np.all(enc[1] == 0)


# ----------------------------------------------------------------------------- encoding + collator


def _nli_dataset() -> Dataset:
    ds = Dataset.from_dict(
        {
            "premise": ["Hello, world!", "", "the a the a the", "world"],
            "hypothesis": ["the", "hello world", "", "a a a a a a a"],
            "label": [0, 1, 2, 1],
            "signature": [0, 2, 1, 0],
            "extra": ["x", "y", "z", "w"],
        }
    )
    return ds.cast_column("signature", ClassLabel(names=["s0", "s1", "s2"]))


def test_encode_nli(glove_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    wv = load_glove(glove_file)
    vocab = wv.tokenizer.get_vocab()
    ds = _nli_dataset()
    with caplog.at_level(logging.INFO, logger="nli_routing.data.encoding"):
        enc, report = encode_nli(ds, wv.tokenizer, max_length=4, return_report=True)
    assert report == {"": {"rows": 4, "premise_truncated": 1, "hypothesis_truncated": 1}}
    assert "truncated" in caplog.text
    assert enc["premise_ids"][0] == [vocab["hello"], vocab[","], vocab["world"], vocab["!"]]
    assert enc["premise_ids"][1] == [] and enc["hypothesis_ids"][2] == []
    assert enc["premise_ids"][2] == [vocab["the"], vocab["a"], vocab["the"], vocab["a"]]
    assert len(enc["hypothesis_ids"][3]) == 4
    assert not any(c.startswith("_") for c in enc.column_names)
    dd = encode_nli(DatasetDict(train=ds, test=ds.select([3, 1])), wv.tokenizer, max_length=64)
    assert isinstance(dd, DatasetDict)
    assert dd["test"]["hypothesis_ids"][0] == [vocab["a"]] * 7
    # re-encoding replaces the id columns
    again = encode_nli(dd, wv.tokenizer, max_length=2)
    assert again["train"].column_names == dd["train"].column_names
    assert max(len(x) for x in again["train"]["hypothesis_ids"]) == 2


def test_collator_and_dataloader(glove_file: Path) -> None:
    wv = load_glove(glove_file)
    enc = encode_nli(_nli_dataset(), wv.tokenizer, max_length=64)
    loader = DataLoader(
        enc.with_format(None), batch_size=3, shuffle=False, collate_fn=NLICollator(wv.pad_id)
    )
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert set(b) == {
        "premise_ids", "premise_mask", "hypothesis_ids", "hypothesis_mask", "labels", "meta"
    }
    assert b["premise_ids"].shape == (3, 5) and b["premise_ids"].dtype == torch.long
    assert b["premise_mask"].dtype == torch.bool
    assert b["premise_mask"].sum(1).tolist() == [4, 0, 5]
    assert b["hypothesis_ids"].shape == (3, 2)
    assert b["hypothesis_mask"].sum(1).tolist() == [1, 2, 0]
    assert torch.all(b["premise_ids"][~b["premise_mask"]] == wv.pad_id)
    assert b["premise_ids"][0, :4].tolist() == enc["premise_ids"][0]
    assert b["labels"].tolist() == [0, 1, 2] and b["meta"].tolist() == [0, 2, 1]
    last = batches[1]
    assert last["premise_ids"].shape == (1, 1) and last["hypothesis_ids"].shape == (1, 7)
    # an all-empty side still gives one (padded, masked) column
    empty = NLICollator(pad_id=7, meta_column=None)(
        [{"premise_ids": [], "hypothesis_ids": [3], "label": 1, "signature": 0}]
    )
    assert empty["premise_ids"].tolist() == [[7]] and empty["premise_mask"].tolist() == [[False]]
    assert "meta" not in empty
    # torch-formatted rows work too
    tb = next(iter(DataLoader(enc.with_format("torch"), batch_size=4, collate_fn=NLICollator(0))))
    assert tb["premise_ids"].shape == (4, 5)
