"""Image multi-task learning: routing networks and the MTL baselines on the 'Base' convnet.

    python recipes/image_mtl.py --dataset mnist-mtl --method routing shared-bottom cross-stitch --cpu
    accelerate launch recipes/image_mtl.py --dataset mnist-mtl --method task-routing-layer --sigma 0.5

``--data_path``: an ``.npz`` (``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val``;
CIFAR-MTL adds ``coarse_train, coarse_test``; MIN-MTL takes ``x, y``) or an MNIST idx folder. For
``mnist-mtl`` it defaults to ``../shared/data/mnist/mnist.npz`` when that file exists; otherwise the
data comes from the Hub (needs network access). Without a validation split, 10% of the training
set (stratified by task) validates. Every method runs through the shared training loop
(``nli_routing.training.loop.train``); prints a table and writes ``results.json`` plus one run
folder per method under ``--output_dir``.
"""

from __future__ import annotations

import json
import logging
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any


from nli_routing.experiments.recipe import parse_recipe
from nli_routing.experiments.image import (IMAGE_TRAIN_DEFAULTS, ImageDataArgs, build_image_model, load_image_mtl,
                                         run_image_method)
from nli_routing.models.vision import VISION_METHODS, VisionMTLConfig
from nli_routing.training.loop import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class RecipeArgs:
    method: list[str] = field(default_factory=lambda: ["routing"], metadata={"help": f"methods: {sorted(VISION_METHODS)}"})
    output_dir: str = field(default="outputs/image_mtl", metadata={"help": "where results go"})


#: model fields that come from the data or from --method (not flags)
DATA_FIELDS = ("method", "num_meta", "num_classes", "in_channels", "image_size")
_HINTS = typing.get_type_hints(VisionMTLConfig)
#: the flags of :class:`VisionMTLConfig` (``--method`` belongs to the recipe and takes several methods)
ModelArgs = make_dataclass(
    "ModelArgs",
    [(f.name, _HINTS[f.name], field(default=f.default, metadata=f.metadata))
     for f in fields(VisionMTLConfig) if f.name not in DATA_FIELDS],
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser, (data_args, recipe, model_args, train_cfg) = parse_recipe(
        (ImageDataArgs, RecipeArgs, ModelArgs, TrainConfig), IMAGE_TRAIN_DEFAULTS, argv, preset_family="image")
    try:  # bad flags: one line and exit status 2
        model_cfg = VisionMTLConfig(**vars(model_args))
        for m in recipe.method:
            if m not in VISION_METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {sorted(VISION_METHODS)}")
    except ValueError as err:
        parser.error(str(err))
    try:  # a bad .npz (keys, not an array archive) or idx folder: one line naming the file
        dsd = load_image_mtl(data_args)
    except (ValueError, OSError, KeyError) as err:
        parser.error(str(err).strip("'\""))
    try:  # settings that do not fit a method or the data (e.g. --allow_pass where a step changes the size)
        for method in recipe.method:
            build_image_model(method, dsd, model_cfg, train_cfg.seed)
    except ValueError as err:
        parser.error(f"--method {method}: {err}")
    out = Path(recipe.output_dir)
    results = {}
    for method in recipe.method:
        res = run_image_method(method, dsd, model_cfg, train_cfg, out / method, data_args.one_task_batches)
        results[method] = {split: res["final"][split]["accuracy"] for split in res["final"]}
        results[method]["best_epoch"] = res["best_epoch"]
        results[method]["train_seconds"] = res["train_seconds"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'method':<24} {'validation':>10} {'test':>8}")
    for method, r in results.items():
        print(f"{method:<24} {r.get('validation', float('nan')):>10.4f} {r.get('test', float('nan')):>8.4f}")
    return results


if __name__ == "__main__":
    main()
