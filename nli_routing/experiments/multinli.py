"""MultiNLI experiments shared by ``recipes/multinli.py`` and the benchmarks: the data arguments, loading
and tokenizing the splits routed on the genre, the method names and a routed Transformer's run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import DatasetDict

from ..data.encoding import encode_nli
from ..data.multinli import GENRES, SPLITS, load_multinli
from ..data.sci import check_meta_coverage, subsample_covering
from ..models.embeddings import load_word_vectors
from ..models.transformer import TransformerNLIConfig
from ..routing import RouterConfig
from ..routing.config import check_at_least
from ..training.loop import TrainConfig
from .nli import METHODS, PreparedData, check_data_paths
from .transformer import train_transformer

__all__ = ["META_COLUMN", "TRANSFORMER_ROUTES", "MultiNLIDataArgs", "canonical_method", "load_multinli_splits",
           "prepare_multinli", "run_transformer"]

logger = logging.getLogger(__name__)

META_COLUMN = "genre"
TRANSFORMER_ROUTES = ("none", "classifier", "attention", "block")


@dataclass
class MultiNLIDataArgs:
    """Where MultiNLI and the word vectors come from, and which splits validate and test."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "folder with multinli_1.0_*.jsonl/.txt or GLUE MNLI *.tsv; unset: the Hub (nyu-mll/multi_nli)"},
    )
    validation_split: str = field(default="validation_matched", metadata={"help": f"validation split, one of {SPLITS[1:]}"})
    test_split: str = field(default="validation_mismatched", metadata={"help": f"test split, one of {SPLITS[1:]}"})
    embeddings: str = field(
        default="minilm",
        metadata={"help": "word vectors: minilm (packaged MiniLM), a GloVe .txt path, random:<dim>, or a HF id"},
    )
    max_length: int = field(default=64, metadata={"help": "tokens kept per sentence (CBOW/LSTM)"})
    dispatch_k: int = field(default=5, metadata={"help": "clusters of the offline dispatcher"})
    max_train_samples: int | None = field(default=None, metadata={"help": "cap the training set (quick runs)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "cap validation and test (quick runs)"})

    def __post_init__(self) -> None:
        check_at_least(self, max_length=1, dispatch_k=1, max_train_samples=1, max_eval_samples=1)
        check_data_paths(self)  # (data_dir unset: the Hub)


def canonical_method(name: str) -> str:
    """The ``METHODS`` name of a recipe method (``-genre`` aliases), or the name of a transformer method."""
    if name in METHODS:
        return name
    alias = name.replace("genre", "signature")
    if alias in METHODS:
        return alias
    if name.startswith("transformer-") and name.split("-", 1)[1] in TRANSFORMER_ROUTES:
        return name
    choices = sorted(METHODS) + [f"transformer-{r}" for r in TRANSFORMER_ROUTES]
    raise ValueError(f"unknown method {name!r}; choose from {choices} (or a -genre alias of a -signature method)")


def load_multinli_splits(args: MultiNLIDataArgs) -> DatasetDict:
    """Load MultiNLI as ``train`` / ``validation`` / ``test`` (optionally capped); warns about unseen genres."""
    for split in (args.validation_split, args.test_split):
        if split not in SPLITS[1:]:
            raise ValueError(f"validation/test split must be one of {SPLITS[1:]}, got {split!r}")
    needed = ["train"] + sorted({args.validation_split, args.test_split})
    raw = load_multinli(args.data_dir, splits=needed)
    dsd = DatasetDict({"train": raw["train"], "validation": raw[args.validation_split], "test": raw[args.test_split]})
    if args.max_train_samples:
        dsd["train"] = subsample_covering(dsd["train"], args.max_train_samples, "genre")
    if args.max_eval_samples:
        for split in ("validation", "test"):
            dsd[split] = dsd[split].shuffle(seed=0).select(range(min(args.max_eval_samples, len(dsd[split]))))
    unseen = check_meta_coverage(dsd, META_COLUMN, allow_unseen=True)
    if unseen:
        logger.warning("genres never seen in training (a genre router's agents for them stay untrained): %s",
                       sorted(unseen))
    return dsd


def prepare_multinli(args: MultiNLIDataArgs, dsd: DatasetDict | None = None) -> PreparedData:
    """Tokenized MultiNLI splits with the chosen word vectors, routed on the genre."""
    dsd = dsd if dsd is not None else load_multinli_splits(args)
    vectors = load_word_vectors(args.embeddings)
    encoded = encode_nli(dsd, vectors.tokenizer, max_length=args.max_length)
    return PreparedData(encoded, vectors, list(GENRES), meta_column=META_COLUMN)


def run_transformer(
    route: str, dsd: DatasetDict, model_cfg: RouterConfig, train_cfg: TrainConfig, output_dir: Path,
    accelerator: Accelerator | None = None, model_name_or_path: str | None = None, lr: float = 5e-5,
    max_length: int = 128, num_blocks: int = 2,
) -> dict[str, Any]:
    """A routed Transformer routed on the genre (:func:`~nli_routing.experiments.transformer.train_transformer`):
    the routing flags of ``model_cfg``, Adam at ``lr`` for the pretrained weights, the tables at the
    CBOW recipes' router rate."""
    shared = {f.name: getattr(model_cfg, f.name) for f in fields(RouterConfig) if f.name != "num_meta"}
    cfg = TransformerNLIConfig(**shared, route=route, model_name_or_path=model_name_or_path, num_blocks=num_blocks)
    router_lr = train_cfg.lr * train_cfg.router_lr_ratio  # the tables keep the CBOW recipes' router rate
    tcfg = replace(train_cfg, block_optimizer="adam", lr=lr, router_lr_ratio=max(1.0, router_lr / lr))
    res = train_transformer(dsd, list(GENRES), META_COLUMN, cfg, tcfg, max_length, output_dir, accelerator)
    res["summary"]["method"] = f"transformer-{route}"
    return res
