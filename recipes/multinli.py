"""MultiNLI routed by genre: CBOW (none / classifier / WP / WP+D), LSTM and routed Transformer methods.

    accelerate launch recipes/multinli.py --data_dir path/to/multinli_1.0            # official jsonl files
    python recipes/multinli.py --data_dir path/to/glue_data/MNLI --methods cbow wp-genre lstm-i2h --cpu
    python recipes/multinli.py --methods wp-genre transformer-attention               # Hub (needs network)

``--data_dir`` is a folder with ``multinli_1.0_{train,dev_matched,dev_mismatched}.jsonl`` (or the
release's ``.txt`` files) or GLUE's ``{train,dev_matched,dev_mismatched}.tsv``; without it the data
comes from the Hub (``nyu-mll/multi_nli``). Validation (best-epoch selection) is matched validation
and test is mismatched validation by default (``--validation_split``/``--test_split``): mismatched
genres never occur in training, so a router on the genre has untrained agents for them (ties in
their tables are broken at random: those samples take random paths) while a dispatcher (``wp-kmeans``, ``wp-two-stage``) routes them
like any sample.

Methods: every name of the SCI experiment's ``METHODS`` (``nli-routing list``), where "signature"
means the data set's meta column, here the genre; ``-genre`` aliases are accepted (``wp-genre`` =
``wp-signature``, ``classifier-genre`` = ``classifier-signature``); ``transformer-<route>``
(``none``, ``classifier``, ``attention``, ``block``) fine-tunes a routed Transformer through
``recipes/finetune_routed_transformer.py``. Uses the shared training loop; prints a results table and
writes ``results.json`` plus one run folder per method (metrics, checkpoint, routing records for
``nli-routing analyze RUN --by genre``) under ``--output_dir``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import DatasetDict
from transformers import HfArgumentParser

from nli_routing.training.distributed import make_accelerator
from nli_routing.data.encoding import encode_nli
from nli_routing.data.multinli import GENRES, SPLITS, load_multinli
from nli_routing.data.sci import check_meta_coverage
from nli_routing.routing import RouterConfig
from nli_routing.routing.config import check_at_least
from nli_routing.models.embeddings import load_word_vectors
from nli_routing.models.nli import NLIModelConfig
from nli_routing.experiments.nli import METHODS, RECIPE_TRAIN_DEFAULTS, PreparedData, format_table, run_method
from nli_routing.training.loop import TrainConfig

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


@dataclass
class RecipeArgs:
    methods: list[str] = field(
        default_factory=lambda: ["cbow", "wp-genre", "classifier-genre"],
        metadata={"help": "methods: SCI experiment METHODS names (signature = genre), *-genre aliases, transformer-<route>"},
    )
    output_dir: str = field(default="outputs/multinli", metadata={"help": "where results go"})
    transformer_model: str | None = field(
        default=None, metadata={"help": "pretrained encoder of the transformer-* methods (default: packaged MiniLM)"}
    )
    transformer_lr: float = field(default=5e-5, metadata={"help": "Adam lr of the transformer-* methods"})
    transformer_max_length: int = field(default=128, metadata={"help": "tokens per pair (transformer-* methods)"})
    num_blocks: int = field(default=2, metadata={"help": "routed copies per module (transformer-attention/-block)"})

    def __post_init__(self) -> None:
        check_at_least(self, transformer_max_length=4, num_blocks=1)
        if not self.transformer_lr > 0:
            raise ValueError(f"transformer_lr must be > 0, got {self.transformer_lr}")


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
        dsd["train"] = dsd["train"].shuffle(seed=0).select(range(min(args.max_train_samples, len(dsd["train"]))))
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
    route: str, dsd: DatasetDict, recipe: RecipeArgs, model_cfg: RouterConfig, train_cfg: TrainConfig,
    output_dir: Path, accelerator: Accelerator,
) -> dict[str, Any]:
    """A routed Transformer routed on the genre (:func:`nli_routing.experiments.transformer.train_transformer`)."""
    from nli_routing.experiments.transformer import train_transformer
    from nli_routing.models.transformer import TransformerNLIConfig

    shared = {f.name: getattr(model_cfg, f.name) for f in fields(RouterConfig) if f.name != "num_meta"}
    cfg = TransformerNLIConfig(**shared, route=route, model_name_or_path=recipe.transformer_model,
                               num_blocks=recipe.num_blocks)
    router_lr = train_cfg.lr * train_cfg.router_lr_ratio  # the tables keep the CBOW recipes' router rate
    tcfg = replace(train_cfg, block_optimizer="adam", lr=recipe.transformer_lr,
                   router_lr_ratio=max(1.0, router_lr / recipe.transformer_lr))
    res = train_transformer(dsd, list(GENRES), META_COLUMN, cfg, tcfg, recipe.transformer_max_length,
                            output_dir, accelerator)
    res["summary"]["method"] = f"transformer-{route}"
    return res


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = HfArgumentParser((RecipeArgs, MultiNLIDataArgs, NLIModelConfig, TrainConfig))
    parser.set_defaults(**RECIPE_TRAIN_DEFAULTS)
    try:  # bad flags: one line and exit status 2
        recipe, data_args, model_cfg, train_cfg = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        methods = [canonical_method(m) for m in recipe.methods]
    except ValueError as err:
        parser.error(str(err))
    accelerator = make_accelerator(**train_cfg.accelerator_kwargs(recipe.output_dir))
    dsd = load_multinli_splits(data_args)
    prepared = None
    out = Path(recipe.output_dir)
    rows, results = [], {}
    for name, method in zip(recipe.methods, methods):
        accelerator.print(f"== {name} ==")
        if method.startswith("transformer-"):
            res = run_transformer(method.split("-", 1)[1], dsd, recipe, model_cfg, train_cfg, out / name, accelerator)
        else:
            prepared = prepared or prepare_multinli(data_args, dsd)
            res = run_method(method, prepared, model_cfg, train_cfg, data_args.dispatch_k, out / name, accelerator)
            res["summary"]["method"] = name
        rows.append(res["summary"])
        results[name] = {k: v for k, v in res.items() if k in ("summary", "history", "final", "best_epoch", "run")}
    accelerator.print(f"\nMultiNLI ({data_args.data_dir or 'Hub'}), validation {data_args.validation_split}, "
                      f"test {data_args.test_split}\n{format_table(rows)}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"args": {"recipe": asdict(recipe), "data": asdict(data_args), "model": asdict(model_cfg),
                            "train": asdict(train_cfg)}, "summary": rows, "runs": results}
        (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        accelerator.print(f"results written to {out / 'results.json'}")
    return rows


if __name__ == "__main__":
    main()
