"""Fine-tune a pretrained Transformer (default: the packaged MiniLM) on SCI, routed by signature.

    python recipes/finetune_routed_transformer.py --route attention --cpu      # embedded generated data
    python recipes/finetune_routed_transformer.py --route block --num_blocks 3 --data_dir ../shared/data/sci/joint
    python recipes/finetune_routed_transformer.py --route none --max_train_samples 64 --epochs 1   # quick check

``--route``: ``none`` (plain fine-tuning), ``classifier`` (routed classifier head), ``attention``
(b routed copies of every self-attention sublayer) or ``block`` (b routed copies of every layer);
the routers are tabular over the signature by default. Uses the shared training loop; prints a
results table with parameter counts and writes ``results.json`` (plus metrics and a checkpoint)
under ``--output_dir``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from nli_routing.experiments.nli import format_table
from nli_routing.experiments.transformer import TRAIN_DEFAULTS, PairDataArgs, load_data, train_transformer
from nli_routing.models.transformer import TransformerNLIConfig
from nli_routing.training.distributed import make_accelerator
from nli_routing.training.loop import TrainConfig


@dataclass
class RecipeArgs:
    output_dir: str = field(default="outputs/finetune_routed_transformer", metadata={"help": "where results go"})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser((RecipeArgs, PairDataArgs, TransformerNLIConfig, TrainConfig))
    parser.set_defaults(**TRAIN_DEFAULTS)
    try:  # bad flags: one line and exit status 2
        recipe, data_args, model_cfg, train_cfg = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    accelerator = make_accelerator(**train_cfg.accelerator_kwargs(recipe.output_dir))
    try:
        dsd, names = load_data(data_args)
    except (ValueError, FileNotFoundError) as err:  # bad data: one line naming the file
        parser.error(str(err))
    out = Path(recipe.output_dir)
    res = train_transformer(dsd, names, "signature", model_cfg, train_cfg, data_args.max_length,
                            out / model_cfg.route, accelerator)
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


if __name__ == "__main__":
    main()
