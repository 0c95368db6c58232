"""Tokenize NLI pairs into id lists and collate them into padded batches."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:  # (datasets is imported where data is encoded: inference does not pay for it)
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

__all__ = ["encode_nli", "NLICollator"]

DatasetT = TypeVar("DatasetT", "Dataset", "DatasetDict")

_TEXT_COLUMNS = ("premise", "hypothesis")


def _tokenize_batch(
    batch: dict[str, list], indices: list[int], tokenizer: Any, max_length: int, name: str
) -> dict[str, list]:
    out: dict[str, list] = {}
    for column in _TEXT_COLUMNS:
        texts = [t if t is not None else "" for t in batch[column]]
        for row, text in zip(indices, texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"encode_nli: split {name!r}, row {row}, column {column!r}: expected a string, "
                    f"got {type(text).__name__}: {text!r}"
                )
        # one token past max_length tells whether a text was cut (and keeps the tokenizer quiet)
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length + 1)["input_ids"]
        out[f"{column}_ids"] = [x[:max_length] for x in ids]
        out[f"_{column}_truncated"] = [len(x) > max_length for x in ids]
        out[f"_{column}_empty"] = [not x for x in ids]
    return out


def _encode_split(
    dataset: Dataset, tokenizer: Any, max_length: int, num_proc: int | None, name: str
) -> tuple[Dataset, dict[str, int]]:
    missing = [c for c in _TEXT_COLUMNS if c not in dataset.column_names]
    if missing:
        raise KeyError(f"encode_nli: split {name!r} lacks column(s) {missing}")
    # Re-encoding replaces earlier id columns instead of failing on a name clash.
    stale = [c for c in dataset.column_names if c in {f"{t}_ids" for t in _TEXT_COLUMNS}]
    encoded = dataset.map(
        _tokenize_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "name": name},
        remove_columns=stale or None,
        num_proc=num_proc,
        desc=f"tokenizing {name}" if name else "tokenizing",
    )
    report = {"rows": len(encoded)}
    plain = encoded.with_format(None)
    empty = {c: int(sum(plain[f"_{c}_empty"])) for c in _TEXT_COLUMNS}
    for column in _TEXT_COLUMNS:
        report[f"{column}_truncated"] = int(sum(plain[f"_{column}_truncated"]))
    encoded = encoded.remove_columns([f"_{c}_{k}" for c in _TEXT_COLUMNS for k in ("truncated", "empty")])
    truncated = report["premise_truncated"] + report["hypothesis_truncated"]
    logger.log(
        logging.WARNING if truncated else logging.INFO,
        "encode_nli%s: %d premises and %d hypotheses of %d rows truncated at %d tokens; "
        "%d premises and %d hypotheses without tokens kept (empty id lists)",
        f"[{name}]" if name else "",
        report["premise_truncated"],
        report["hypothesis_truncated"],
        report["rows"],
        max_length,
        empty["premise"],
        empty["hypothesis"],
    )
    return encoded, report


def encode_nli(
    dataset: DatasetT,
    tokenizer: Any,
    max_length: int = 64,
    num_proc: int | None = None,
    *,
    return_report: bool = False,
) -> DatasetT | tuple[DatasetT, dict[str, dict[str, int]]]:
    """Add ``premise_ids`` / ``hypothesis_ids`` (token ids without special tokens, truncated to
    ``max_length``) to a ``Dataset`` or every split of a ``DatasetDict``.

    Bad input is either an error or a counted fallback, never a silent drop: a text that is neither
    a string nor ``None`` raises :class:`TypeError` naming the split, row and column; empty (or
    ``None``) texts are kept as empty lists (the collator pads them; the models then see no
    word); texts longer than ``max_length`` tokens are truncated. Both counts are logged per
    split (at WARNING level when anything was truncated, INFO otherwise); with
    ``return_report=True`` the call returns ``(dataset, report)`` where ``report[split] =
    {"rows", "premise_truncated", "hypothesis_truncated"}`` (split ``""`` for a plain ``Dataset``).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    report: dict[str, dict[str, int]] = {}
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, DatasetDict):
        splits = {}
        for name, split in dataset.items():
            splits[name], report[name] = _encode_split(split, tokenizer, max_length, num_proc, name)
        result: Dataset | DatasetDict = DatasetDict(splits)
    elif isinstance(dataset, Dataset):
        result, report[""] = _encode_split(dataset, tokenizer, max_length, num_proc, "")
    else:
        kind = type(dataset).__name__
        raise TypeError(f"encode_nli expects a Dataset or DatasetDict, got {kind}")
    return (result, report) if return_report else result  # type: ignore[return-value]


def _as_list(seq: Any) -> list[int]:
    if isinstance(seq, torch.Tensor):
        return seq.tolist()
    return list(seq)


def _pad(seqs: Sequence[Any], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences into ``[B, T]`` ids (T >= 1) and a bool mask of real tokens."""
    rows = [_as_list(s) for s in seqs]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = max(int(lengths.max()) if len(rows) else 0, 1)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.long)
    return ids, mask


class NLICollator:
    """Collate encoded NLI rows (see :func:`encode_nli`) into padded tensors.

    Output keys: ``premise_ids``/``hypothesis_ids`` ``[B, T]`` long (right-padded with ``pad_id``
    to the longest sequence of the batch, at least 1 column), ``premise_mask``/``hypothesis_mask``
    ``[B, T]`` bool (True on real tokens), ``labels`` ``[B]`` long from the ``label`` column when
    present, and ``meta`` ``[B]`` long from ``meta_column`` when set and present. Other columns
    are ignored.
    """

    def __init__(self, pad_id: int, meta_column: str | None = "signature", data_meta_column: str | None = None) -> None:
        self.pad_id = int(pad_id)
        self.meta_column = meta_column
        self.data_meta_column = data_meta_column  # also collated as ``data_meta`` (routing records only)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("NLICollator got an empty batch")
        batch: dict[str, torch.Tensor] = {}
        for side in _TEXT_COLUMNS:
            ids, mask = _pad([f[f"{side}_ids"] for f in features], self.pad_id)
            batch[f"{side}_ids"] = ids
            batch[f"{side}_mask"] = mask
        first = features[0]
        if "label" in first:
            batch["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        if self.meta_column is not None and self.meta_column in first:
            batch["meta"] = torch.tensor(
                [int(f[self.meta_column]) for f in features], dtype=torch.long
            )
        if self.data_meta_column is not None and self.data_meta_column in first:
            batch["data_meta"] = torch.tensor([int(f[self.data_meta_column]) for f in features], dtype=torch.long)
        return batch

    def __repr__(self) -> str:
        return f"NLICollator(pad_id={self.pad_id}, meta_column={self.meta_column!r})"
