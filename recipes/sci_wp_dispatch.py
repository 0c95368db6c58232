"""SCI with routed word projections: unrouted CBOW vs WP routed by signature vs WP routed by a dispatcher.

    accelerate launch recipes/sci_wp_dispatch.py                      # embedded generated data, < 5 min on 2 CPUs
    accelerate launch --multi_gpu --num_processes 2 recipes/sci_wp_dispatch.py --cpu   # 2 CPU processes (gloo)
    accelerate launch recipes/sci_wp_dispatch.py --data_dir ../shared/data/sci/joint
    python recipes/sci_wp_dispatch.py --methods cbow wp-signature --epochs 5 --cpu
    python recipes/sci_wp_dispatch.py --dispatch rbae-cbow            # WP routed by a learned dispatcher
    python recipes/sci_wp_dispatch.py --dispatch signature --two_stage   # WP+D: signatures, then a dispatcher
    python recipes/sci_wp_dispatch.py --dispatch basic --nested_dir nli_routing/data/sci_synthetic/nested

``--dispatch`` picks what the word projection is routed on: ``signature`` (the meta label),
``kmeans`` / ``agglomerative`` (offline clusters), or a learned dispatcher trained with the model
(``basic``: LSTM agent with the routing objective; ``rbae-cbow|attn|onehot|seq``: the routed
bottleneck autoencoder). ``--two_stage`` trains with the meta labels (or clusters) first, then a
dispatcher with the model fixed; test accuracy is then measured without meta labels.
``--nested_dir`` fine-tunes each trained model on the nested variant and reports it too.

Prints a results table and writes ``results.json`` (and one folder per method with metrics, a
checkpoint, routing records and, for dispatchers, ``dispatch_report.json`` + ``.png``: dispatch
entropy and choices per signature on the test set) under ``--output_dir``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nli_routing.training.distributed import make_accelerator
from nli_routing.models.nli import NLIModelConfig
from nli_routing.experiments.nli import (
    DISPATCH_CHOICES,
    METHODS,
    RECIPE_TRAIN_DEFAULTS,
    DataArgs,
    DispatchArgs,
    align_meta,
    check_labels,
    dispatch_method,
    format_table,
    method_config,
    prepare_sci,
    resolve_method,
    run_method,
    write_dispatch_report,
)
from nli_routing.experiments.recipe import parse_recipe
from nli_routing.routing.config import check_at_least
from nli_routing.training.loop import TrainConfig


@dataclass
class RecipeArgs:
    methods: list[str] = field(
        default_factory=lambda: ["cbow", "wp-signature", "wp-kmeans"],
        metadata={"help": f"methods to train, from {sorted(METHODS)}"},
    )
    output_dir: str = field(default="outputs/sci_wp_dispatch", metadata={"help": "where results go"})
    dispatch: str | None = field(
        default=None,
        metadata={"help": f"route the WP on one strategy instead of --methods: one of {DISPATCH_CHOICES}"},
    )
    two_stage: bool = field(
        default=False, metadata={"help": "with --dispatch signature/kmeans/agglomerative: train a dispatcher after the model"}
    )
    nested_dir: str | None = field(
        default=None, metadata={"help": "fine-tune every trained model on this SCI folder (the nested variant)"}
    )
    nested_epochs: int = field(default=3, metadata={"help": "epochs of the nested fine-tuning"})

    def __post_init__(self) -> None:
        check_at_least(self, nested_epochs=1)
        if self.nested_dir is not None and not Path(self.nested_dir).is_dir():
            raise ValueError(f"--nested_dir {self.nested_dir}: not a folder")
        if self.dispatch is not None:
            self.methods = [dispatch_method(self.dispatch, self.two_stage)]
        elif self.two_stage:
            raise ValueError("--two_stage needs --dispatch (or use a method name with the suffix +D)")


def main() -> None:
    parser, (recipe, data_args, model_cfg, train_cfg, dispatch_args) = parse_recipe(
        (RecipeArgs, DataArgs, NLIModelConfig, TrainConfig, DispatchArgs), RECIPE_TRAIN_DEFAULTS, preset_family="nli")
    if model_cfg.num_meta != 1:  # (the default) every method sets it from its data
        parser.error(f"--num_meta {model_cfg.num_meta}: the number of meta classes is set from the data (the "
                     "signatures or genres; --dispatch_k for clusters and learned dispatchers): leave it out")
    for method in recipe.methods:
        try:  # the method's name, and its overrides with the model flags
            method_config(model_cfg, resolve_method(method)[0])
            dispatch_args.check_method(method)
        except ValueError as err:
            parser.error(f"{method}: {err}")
    accelerator = make_accelerator(**train_cfg.accelerator_kwargs(recipe.output_dir))
    try:
        prepared = prepare_sci(data_args)
        check_labels(prepared, model_cfg.num_classes)
    except (ValueError, OSError) as err:  # bad data (a file, a line, a field): one line, not a traceback
        parser.error(str(err))
    nested = None
    if recipe.nested_dir:
        nested = prepare_sci(replace(data_args, data_dir=recipe.nested_dir, variant=None, max_train_samples=None,
                                     allow_unseen_meta=True))
        align_meta(prepared, nested)
    out = Path(recipe.output_dir)
    rows, nested_rows, results = [], [], {}
    for method in recipe.methods:
        accelerator.print(f"== {method} ==")
        res = run_method(method, prepared, model_cfg, train_cfg, data_args.dispatch_k, out / method, accelerator,
                         dispatch_args, finetune=nested, finetune_epochs=recipe.nested_epochs)
        rows.append(res["summary"])
        if "finetune" in res:
            nested_rows.append(res["finetune"]["summary"])
        results[method] = res
        if accelerator.is_main_process:
            write_dispatch_report(res, out / method)
    table = format_table(rows)
    accelerator.print(f"\nSCI data: {data_args.data_dir}\n{table}")
    if nested_rows:
        accelerator.print(f"\nfine-tuned on {recipe.nested_dir} for {recipe.nested_epochs} epochs\n{format_table(nested_rows)}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        payload = {"args": {"recipe": asdict(recipe), "data": asdict(data_args), "model": asdict(model_cfg),
                            "train": asdict(train_cfg), "dispatch": asdict(dispatch_args)},
                   "summary": rows, "nested_summary": nested_rows, "runs": results}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        accelerator.print(f"results written to {out / 'results.json'}")


if __name__ == "__main__":
    main()
