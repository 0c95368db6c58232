"""SCI experiments shared by the recipes and benchmarks: data preparation and one method's run.

Recipes parse arguments and call these functions; no recipe copies the training loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from torch.utils.data import DataLoader

from ..data.encoding import NLICollator, encode_nli
from ..data.sci import check_meta_coverage, load_sci
from ..dispatch.offline import dispatch_dataset
from ..models.embeddings import WordVectors, load_word_vectors
from ..models.lstm import LSTMModelConfig, LSTMNLIModel
from ..models.nli import NLIModelConfig, NLIRoutingModel
from .loop import TrainConfig, train

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "sci_synthetic" / "joint"

#: Training defaults of the SCI recipes. The library's TrainConfig keeps plain SGD for the blocks
#: (the thesis' choice), but on MiniLM CBOW features SGD stays near the majority class on SCI joint
#: (about 0.50 test accuracy after 6 epochs on 8k samples, lr 0.05-0.2, with or without momentum),
#: while Adam at 2e-3 reaches 0.75-0.81; the tabular routers keep SGD at 5x that rate (0.01):
#: at 50x (0.1) the greedy choices of the agents flipped about every batch.
RECIPE_TRAIN_DEFAULTS: dict[str, Any] = {"block_optimizer": "adam", "lr": 0.002, "router_lr_ratio": 5.0}

#: method name -> (model overrides, meta source). Meta source "signature" or a dispatch method.
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "cbow": ({"route": "none", "meta_keyword": True}, "signature"),
    "wp-shared": ({"route": "wp", "wp_width": 1, "meta_keyword": True}, "signature"),
    "wp-signature": ({"route": "wp"}, "signature"),
    "wp-signature-kw": ({"route": "wp", "meta_keyword": True}, "signature"),
    "wp-kmeans": ({"route": "wp"}, "kmeans"),
    "wp-agglomerative": ({"route": "wp"}, "agglomerative"),
    "classifier-signature": ({"route": "classifier"}, "signature"),
    # LSTM encoders (thesis 5.3.1.2): unrouted (meta keyword), routed classifier, routed I2H / H2H
    "lstm": ({"model": "lstm", "route": "none", "lstm_route": "none", "meta_keyword": True}, "signature"),
    "lstm-classifier": ({"model": "lstm", "route": "classifier", "lstm_route": "none"}, "signature"),
    "lstm-i2h": ({"model": "lstm", "route": "none", "lstm_route": "i2h"}, "signature"),
    "lstm-h2h": ({"model": "lstm", "route": "none", "lstm_route": "h2h"}, "signature"),
}

#: model kind (the "model" entry of a method's overrides) -> (config class, model class)
MODEL_KINDS: dict[str, tuple[type, type]] = {
    "cbow": (NLIModelConfig, NLIRoutingModel),
    "lstm": (LSTMModelConfig, LSTMNLIModel),
}


def build_model(model_cfg: NLIModelConfig, overrides: dict[str, Any], vectors: WordVectors) -> NLIRoutingModel:
    """The model of a method: ``model_cfg``'s fields (shared by every kind) plus the method's overrides."""
    overrides = dict(overrides)
    config_cls, model_cls = MODEL_KINDS[overrides.pop("model", "cbow")]
    base = {f.name: getattr(model_cfg, f.name) for f in fields(model_cfg) if f.name not in overrides}
    names = {f.name for f in fields(config_cls)}
    cfg = config_cls(**{k: v for k, v in base.items() if k in names and (config_cls is NLIModelConfig or k != "route")}, **overrides)
    return model_cls(cfg, vectors.weight, vectors.pad_id)


@dataclass
class DataArgs:
    """Where the SCI data and the word vectors come from."""

    data_dir: str = field(
        default=str(DEFAULT_DATA_DIR),
        metadata={"help": "SCI folder: train/validation/test.jsonl or the official ci_latest_* files"},
    )
    variant: str | None = field(default=None, metadata={"help": "variant for the official file names"})
    embeddings: str = field(
        default="minilm",
        metadata={"help": "word vectors: minilm (packaged MiniLM), a GloVe .txt path, random:<dim>, or a HF id"},
    )
    max_length: int = field(default=64, metadata={"help": "tokens kept per sentence"})
    dispatch_k: int = field(default=5, metadata={"help": "clusters of the offline dispatcher"})
    max_train_samples: int | None = field(default=None, metadata={"help": "cap the training set (quick runs)"})
    allow_unseen_meta: bool = field(
        default=False,
        metadata={"help": "allow signatures in validation/test that training never saw (their agents stay untrained)"},
    )


@dataclass
class PreparedData:
    """Tokenized splits, the word vectors, and the meta column routed on ("signature", "genre")."""

    data: DatasetDict
    vectors: WordVectors
    meta_names: list[str]
    meta_column: str = "signature"

    @property
    def signature_names(self) -> list[str]:  # the SCI name of the meta classes
        return self.meta_names


def prepare_sci(args: DataArgs) -> PreparedData:
    """Load, check and tokenize an SCI folder with the tokenizer of the chosen word vectors."""
    path = Path(args.data_dir)
    if not path.exists():
        raise FileNotFoundError(f"SCI data folder {path} does not exist")
    dsd = load_sci(path, variant=args.variant)
    if args.max_train_samples:
        n = min(args.max_train_samples, len(dsd["train"]))
        logger.info("using %d of %d training samples (--max_train_samples)", n, len(dsd["train"]))
        dsd["train"] = dsd["train"].shuffle(seed=0).select(range(n))
    if args.allow_unseen_meta:
        unseen = check_meta_coverage(dsd, "signature", allow_unseen=True)
        if unseen:
            logger.warning("signatures unseen in training (their agents stay untrained): %s", sorted(unseen))
    else:
        try:
            check_meta_coverage(dsd, "signature")
        except ValueError as err:
            raise ValueError(
                f"{path}: {err}. A meta label unseen in training has no trained agent; pass "
                "--allow_unseen_meta to train anyway (or route with a dispatcher)"
            ) from None
    vectors = load_word_vectors(args.embeddings)
    dsd = encode_nli(dsd, vectors.tokenizer, max_length=args.max_length)
    names = dsd["train"].features["signature"].names
    return PreparedData(dsd, vectors, list(names))


def method_data(prepared: PreparedData, meta_source: str, k: int, seed: int) -> tuple[DatasetDict, str, list[str]]:
    """The data set with the meta column a method routes on, its name and its class names."""
    if meta_source in ("signature", "meta"):  # the data set's own meta column (signature, genre)
        return prepared.data, prepared.meta_column, prepared.meta_names
    dsd, _ = dispatch_dataset(prepared.data, prepared.vectors, method=meta_source, k=k, seed=seed)
    return dsd, "cluster", [f"cluster_{i}" for i in range(k)]


def make_loaders(
    dsd: DatasetDict, pad_id: int, meta_column: str, cfg: TrainConfig
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """Training and evaluation data loaders over the tokenized splits."""
    collate = NLICollator(pad_id, meta_column)
    keep = ["premise_ids", "hypothesis_ids", "label", meta_column]

    def subset(split: str):
        return dsd[split].select_columns(keep).with_format(None)

    train_loader = DataLoader(subset("train"), batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    evals = {
        split: DataLoader(subset(split), batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate)
        for split in ("validation", "test")
        if split in dsd
    }
    return train_loader, evals


def run_method(
    method: str,
    prepared: PreparedData,
    model_cfg: NLIModelConfig,
    train_cfg: TrainConfig,
    dispatch_k: int = 5,
    output_dir: str | Path | None = None,
    accelerator=None,
) -> dict[str, Any]:
    """Train and evaluate one method (see :data:`METHODS`); returns the loop's result plus a summary."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    overrides, meta_source = METHODS[method]
    dsd, meta_column, meta_names = method_data(prepared, meta_source, dispatch_k, train_cfg.seed)
    overrides = {"num_meta": len(meta_names), "router_seed": train_cfg.seed, **overrides}
    model = build_model(model_cfg, overrides, prepared.vectors)
    train_loader, eval_loaders = make_loaders(dsd, prepared.vectors.pad_id, meta_column, train_cfg)
    result = train(model, train_loader, eval_loaders, train_cfg, output_dir, meta_names, accelerator)
    final = result["final"]
    entropy = final.get("test", final.get("validation", {})).get("routing_entropy_0", {})
    result["summary"] = {
        "method": method,
        "validation_accuracy": final.get("validation", {}).get("accuracy"),
        "test_accuracy": final.get("test", {}).get("accuracy"),
        "routing_entropy": entropy.get("overall"),
        "best_epoch": result["best_epoch"],
        "train_seconds": result["train_seconds"],
    }
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text results table of run summaries."""
    head = f"{'method':<22}{'val acc':>9}{'test acc':>10}{'entropy':>9}{'best ep':>9}{'train s':>9}"
    lines = [head, "-" * len(head)]
    def fmt(v: Any, spec: str) -> str:
        width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
        return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(width)

    for r in rows:
        lines.append(
            f"{r['method']:<22}{fmt(r['validation_accuracy'], '9.3f')}{fmt(r['test_accuracy'], '10.3f')}"
            f"{fmt(r['routing_entropy'], '9.2f')}{fmt(r['best_epoch'], '9d')}{fmt(r['train_seconds'], '9.1f')}"
        )
    return "\n".join(lines)
