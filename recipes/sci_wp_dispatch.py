"""SCI with routed word projections: unrouted CBOW vs WP routed by signature vs WP routed by offline dispatch.

    accelerate launch recipes/sci_wp_dispatch.py                      # embedded generated data, < 5 min on 2 CPUs
    accelerate launch recipes/sci_wp_dispatch.py --data_dir ../shared/data/sci/joint
    python recipes/sci_wp_dispatch.py --methods cbow wp-signature --epochs 5 --cpu

Prints a results table and writes ``results.json`` (and one folder per method with metrics and a
checkpoint) under ``--output_dir``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from transformers import HfArgumentParser

from nli_routing.models.nli import NLIModelConfig
from nli_routing.training.experiment import METHODS, RECIPE_TRAIN_DEFAULTS, DataArgs, format_table, prepare_sci, run_method
from nli_routing.training.loop import TrainConfig


@dataclass
class RecipeArgs:
    methods: list[str] = field(
        default_factory=lambda: ["cbow", "wp-signature", "wp-kmeans"],
        metadata={"help": f"methods to train, from {sorted(METHODS)}"},
    )
    output_dir: str = field(default="outputs/sci_wp_dispatch", metadata={"help": "where results go"})


def main() -> None:
    parser = HfArgumentParser((RecipeArgs, DataArgs, NLIModelConfig, TrainConfig))
    parser.set_defaults(**RECIPE_TRAIN_DEFAULTS)
    recipe, data_args, model_cfg, train_cfg = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bad = [m for m in recipe.methods if m not in METHODS]
    if bad:
        parser.error(f"unknown method(s) {bad}; choose from {sorted(METHODS)}")
    accelerator = Accelerator(cpu=train_cfg.cpu)
    prepared = prepare_sci(data_args)
    out = Path(recipe.output_dir)
    rows, results = [], {}
    for method in recipe.methods:
        accelerator.print(f"== {method} ==")
        res = run_method(method, prepared, model_cfg, train_cfg, data_args.dispatch_k, out / method, accelerator)
        rows.append(res["summary"])
        results[method] = res
    table = format_table(rows)
    accelerator.print(f"\nSCI data: {data_args.data_dir}\n{table}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"args": {"recipe": asdict(recipe), "data": asdict(data_args), "model": asdict(model_cfg),
                            "train": asdict(train_cfg)}, "summary": rows, "runs": results}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        accelerator.print(f"results written to {out / 'results.json'}")


if __name__ == "__main__":
    main()
