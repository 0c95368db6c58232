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
``nli_routing.experiments.transformer``. Uses the shared training loop; prints a results table and
writes ``results.json`` plus one run folder per method (metrics, checkpoint, routing records for
``nli-routing analyze RUN --by genre``) under ``--output_dir``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from nli_routing.experiments.multinli import (
    MultiNLIDataArgs,
    canonical_method,
    load_multinli_splits,
    prepare_multinli,
    run_transformer,
)
from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS, format_table, run_method
from nli_routing.models.nli import NLIModelConfig
from nli_routing.experiments.recipe import check_model_path, parse_recipe
from nli_routing.routing.config import check_at_least
from nli_routing.training.distributed import make_accelerator
from nli_routing.training.loop import TrainConfig

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
        check_model_path("--transformer_model", self.transformer_model)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser, (recipe, data_args, model_cfg, train_cfg) = parse_recipe(
        (RecipeArgs, MultiNLIDataArgs, NLIModelConfig, TrainConfig), RECIPE_TRAIN_DEFAULTS, argv, preset_family="nli")
    if model_cfg.num_meta != 1:  # (the default) every method sets it from its data
        parser.error(f"--num_meta {model_cfg.num_meta}: the number of meta classes is set from the data (the "
                     "signatures or genres; --dispatch_k for clusters and learned dispatchers): leave it out")
    try:
        methods = [canonical_method(m) for m in recipe.methods]
    except ValueError as err:
        parser.error(str(err))
    accelerator = make_accelerator(**train_cfg.accelerator_kwargs(recipe.output_dir))
    try:  # bad data (a file, a line, a field): one line, not a traceback
        dsd = load_multinli_splits(data_args)
        prepared = None if all(m.startswith("transformer-") for m in methods) else prepare_multinli(data_args, dsd)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    out = Path(recipe.output_dir)
    rows, results = [], {}
    for name, method in zip(recipe.methods, methods):
        accelerator.print(f"== {name} ==")
        if method.startswith("transformer-"):
            res = run_transformer(method.split("-", 1)[1], dsd, model_cfg, train_cfg, out / name, accelerator,
                                  recipe.transformer_model, recipe.transformer_lr, recipe.transformer_max_length,
                                  recipe.num_blocks)
        else:
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
