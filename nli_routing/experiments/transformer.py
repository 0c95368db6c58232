"""Fine-tuning a routed Transformer on SCI (or any pair data routed on a meta column): the data loading,
the training defaults and :func:`train_transformer`, shared by ``recipes/finetune_routed_transformer.py``,
``recipes/multinli.py`` and the benchmarks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from ..data.sci import check_meta_coverage, load_sci, subsample_covering
from ..models.embeddings import default_model_path
from ..models.transformer import (
    PairCollator,
    RoutedTransformerForNLI,
    TransformerNLIConfig,
    count_parameters,
    encode_pairs,
)
from ..routing.config import check_at_least
from ..training.loop import TrainConfig, train
from .nli import DEFAULT_DATA_DIR, check_data_paths

__all__ = ["TRAIN_DEFAULTS", "FinetuneArgs", "PairDataArgs", "finetune", "load_data", "train_transformer"]


#: Fine-tuning defaults: Adam at 5e-5 for the pretrained weights and the head; the tabular routers
#: keep SGD at 200x that rate (0.01, the rate the CBOW recipes use for their tables).
TRAIN_DEFAULTS: dict[str, Any] = {
    "block_optimizer": "adam", "lr": 5e-5, "router_lr_ratio": 200.0, "epochs": 3, "batch_size": 32,
    "eval_batch_size": 128,
}


@dataclass
class PairDataArgs:
    """Where the SCI data comes from and how much of it is used."""

    data_dir: str = field(default=str(DEFAULT_DATA_DIR), metadata={"help": "SCI folder (jsonl or official files)"})
    variant: str | None = field(default=None, metadata={"help": "variant for the official file names"})
    max_length: int = field(default=128, metadata={"help": "tokens kept per premise/hypothesis pair"})
    max_train_samples: int | None = field(default=None, metadata={"help": "cap the training set (quick runs)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "cap validation and test (quick runs)"})
    allow_unseen_meta: bool = field(
        default=False, metadata={"help": "allow signatures in validation/test that training never saw"}
    )

    def __post_init__(self) -> None:
        check_at_least(self, max_length=4, max_train_samples=1, max_eval_samples=1)
        check_data_paths(self)


def load_data(args: PairDataArgs) -> tuple[DatasetDict, list[str]]:
    """Load and check the SCI splits (optionally capped); returns them and the signature names."""
    path = Path(args.data_dir)
    if not path.exists():
        raise FileNotFoundError(f"SCI data folder {path} does not exist")
    dsd = load_sci(path, variant=args.variant)
    if args.max_train_samples:
        dsd["train"] = subsample_covering(dsd["train"], args.max_train_samples, "signature")
    if args.max_eval_samples:
        for split in ("validation", "test"):
            if split in dsd:
                dsd[split] = dsd[split].select(range(min(args.max_eval_samples, len(dsd[split]))))
    try:
        unseen = check_meta_coverage(dsd, "signature", allow_unseen=args.allow_unseen_meta)
    except ValueError as err:
        raise ValueError(f"{path}: {err}. Pass --allow_unseen_meta to train anyway") from None
    if unseen:
        logging.getLogger(__name__).warning("signatures unseen in training (untrained agents): %s", sorted(unseen))
    return dsd, list(dsd["train"].features["signature"].names)


def train_transformer(
    dsd: DatasetDict,
    meta_names: list[str],
    meta_column: str,
    model_cfg: TransformerNLIConfig,
    train_cfg: TrainConfig,
    max_length: int,
    output_dir: str | Path | None,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Fine-tune a routed Transformer on loaded ``train``/``validation``/``test`` splits routed on ``meta_column``.

    Returns ``{"summary", "run", "model", "tokenizer", "config", "parameters"}``.
    """
    model_path = model_cfg.model_name_or_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:  # GPT-2 style tokenizers
        tokenizer.pad_token = tokenizer.eos_token
    cfg = replace(model_cfg, model_name_or_path=model_path, num_meta=len(meta_names), router_seed=train_cfg.seed)
    set_seed(train_cfg.seed)  # the routed copies' noise and the new heads follow the seed
    model = RoutedTransformerForNLI(cfg)
    counts = count_parameters(model)
    encoded = encode_pairs(dsd, tokenizer, max_length)
    keep = [c for c in ("input_ids", "attention_mask", "token_type_ids", "label", meta_column)
            if c in encoded["train"].column_names]
    collate = PairCollator(tokenizer.pad_token_id, meta_column)

    def loader(split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = encoded[split].select_columns(keep).with_format(None)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)

    train_loader = loader("train", train_cfg.batch_size, True)
    eval_loaders = {s: loader(s, train_cfg.eval_batch_size, False) for s in ("validation", "test") if s in encoded}
    label = dsd["train"].features.get("label")
    model.describe(label_names=getattr(label, "names", None), meta_names=meta_names, meta_column=meta_column,
                   data_meta_column=meta_column, input_max_length=max_length)
    result = train(model, train_loader, eval_loaders, train_cfg, output_dir, meta_names, accelerator, tokenizer=tokenizer)
    final = result["final"]
    split = final.get("test", final.get("validation", {}))
    entropy = split.get("routing_entropy_0", {})
    summary = {
        "method": f"transformer-{cfg.route}",
        "validation_accuracy": final.get("validation", {}).get("accuracy"),
        "test_accuracy": final.get("test", {}).get("accuracy"),
        "routing_entropy": entropy.get("overall"),
        # every routed layer, not only the first (issue 29): selection entropy, distinct paths, top path share
        "routing_layers": [
            {"layer": name, "entropy": split.get(f"routing_entropy_{i}", {}).get("overall"),
             "distinct_paths": split.get(f"collapse_{i}", {}).get("distinct_paths"),
             "top_path_share": split.get(f"collapse_{i}", {}).get("top_path_share"),
             "top_block_share_per_depth": split.get(f"collapse_{i}", {}).get("top_block_share")}
            for i, name in enumerate(model.routed_layer_names)
        ],
        "collapse_warnings": [w for h in result["history"] for w in (h.get("collapse_warnings") or [])],
        "best_epoch": result["best_epoch"],
        "train_seconds": result["train_seconds"],
        "parameters": counts,
    }
    return {"summary": summary, "run": result, "model": model, "tokenizer": tokenizer, "config": cfg,
            "parameters": counts}


@dataclass
class FinetuneArgs:
    output_dir: str = field(default="outputs/finetune_routed_transformer", metadata={"help": "where results go"})


def finetune(argv: list[str] | None = None) -> dict[str, Any]:
    """The fine-tuning job of ``recipes/finetune_routed_transformer.py`` for a command line ``argv`` (the
    recipe's flags): train, print the results table, write ``results.json``; returns the run's summary.
    Bad flags or data: one line and exit status 2."""
    import json
    import logging
    from dataclasses import asdict

    from ..training.distributed import make_accelerator
    from ..training.numerics import NonFiniteError
    from .nli import format_table
    from .recipe import check_model_path, parse_recipe

    parser, (recipe, data_args, model_cfg, train_cfg) = parse_recipe(
        (FinetuneArgs, PairDataArgs, TransformerNLIConfig, TrainConfig), TRAIN_DEFAULTS, argv)
    try:  # (here, not in the config: a saved config keeps the path it was trained from)
        check_model_path("--model_name_or_path", model_cfg.model_name_or_path)
    except ValueError as err:
        parser.error(str(err))
    accelerator = make_accelerator(**train_cfg.accelerator_kwargs(recipe.output_dir))
    try:
        dsd, names = load_data(data_args)
        labels = getattr(dsd["train"].features.get("label"), "names", None) or []
        if labels and model_cfg.num_classes != len(labels):
            raise ValueError(f"--num_classes {model_cfg.num_classes}, but the data has {len(labels)} labels "
                             f"{list(labels)}: use --num_classes {len(labels)}")
    except (ValueError, FileNotFoundError) as err:  # bad data: one line naming the file
        parser.error(str(err))
    out = Path(recipe.output_dir)
    try:
        res = train_transformer(dsd, names, "signature", model_cfg, train_cfg, data_args.max_length,
                                out / model_cfg.route, accelerator)
    except (ValueError, OSError) as err:  # a model that cannot be loaded or routed as asked: one line
        if isinstance(err, NonFiniteError):
            raise
        logging.getLogger(__name__).debug("finetune failed", exc_info=True)
        parser.error(str(err).splitlines()[0] if str(err) else type(err).__name__)
    summary, cfg, counts = res["summary"], res["config"], res["parameters"]
    params = "  ".join(f"{k} {v:,}" for k, v in counts.items())
    accelerator.print(f"\nSCI data: {data_args.data_dir}  model: {cfg.model_name_or_path}\n{format_table([summary])}\n"
                      f"parameters: {params}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"args": {"recipe": asdict(recipe), "data": asdict(data_args), "model": asdict(cfg),
                            "train": asdict(train_cfg)}, "summary": summary, "run": res["run"]}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        accelerator.print(f"results written to {out / 'results.json'}")
    return summary
