"""Image multi-task learning experiments shared by ``recipes/image_mtl.py`` and ``benchmarks/image_mtl.py``:
the data arguments, loading a multi-task image set, one method's run and the training defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import set_seed
from datasets import DatasetDict
from torch.utils.data import DataLoader

from ..data.image_mtl import DATASETS
from ..models.vision import ImageMTLCollator, VisionMTLConfig, VisionMTLModel
from ..routing.config import check_at_least
from ..training.loop import TrainConfig, train

__all__ = ["DEFAULT_MNIST", "IMAGE_TRAIN_DEFAULTS", "ImageDataArgs", "load_image_mtl", "run_image_method"]

#: where MNIST-MTL comes from without --data_path: the shared data folder beside the checkout (run from
#: the repository root), when it exists; otherwise the Hub
DEFAULT_MNIST = Path("..") / "shared" / "data" / "mnist" / "mnist.npz"


@dataclass
class ImageDataArgs:
    """Which multi-task image set, from where, and how large."""

    dataset: str = field(default="mnist-mtl", metadata={"help": f"one of {sorted(DATASETS)}"})
    data_path: str | None = field(default=None, metadata={"help": ".npz file or idx folder; unset: default file or the Hub"})
    per_class: int = field(default=1000, metadata={"help": "one-vs-rest sets: training samples per class and task"})
    test_per_task: int = field(default=200, metadata={"help": "one-vs-rest sets: test (and validation) samples per task"})
    data_seed: int = field(default=0, metadata={"help": "seed of the task construction"})
    one_task_batches: bool = field(
        default=False,
        metadata={"help": "every training mini-batch holds one task's samples (Strezoski et al.'s Algorithm 1 for the "
                          "task routing layer); default: batches mix the tasks"},
    )

    def __post_init__(self) -> None:
        check_at_least(self, per_class=1, test_per_task=1)
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.data_path is not None and not Path(self.data_path).exists():
            raise ValueError(f"--data_path {self.data_path}: does not exist")


def load_image_mtl(args: ImageDataArgs) -> DatasetDict:
    """The data set as ``train`` / ``validation`` / ``test``."""
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {sorted(DATASETS)}")
    path = args.data_path
    if path is None and args.dataset == "mnist-mtl" and DEFAULT_MNIST.exists():
        path = str(DEFAULT_MNIST)
    kwargs: dict[str, Any] = {}
    if args.dataset in ("mnist-mtl", "fashion-mnist-mtl"):
        kwargs = {"per_class": args.per_class, "test_per_task": args.test_per_task, "seed": args.data_seed}
    elif args.dataset == "min-mtl":
        kwargs = {"seed": args.data_seed}
    dsd = DATASETS[args.dataset](path, **kwargs)
    if "validation" not in dsd:
        split = dsd["train"].train_test_split(test_size=0.1, stratify_by_column="task", seed=args.data_seed)
        dsd = DatasetDict({"train": split["train"], "validation": split["test"], "test": dsd["test"]})
    return dsd


class OneTaskBatchSampler:
    """Batches of one task each (Strezoski et al., Algorithm 1): each task's samples shuffled and cut
    into batches of ``batch_size`` (its last one may be smaller), then the batches of all tasks
    shuffled. Every sample appears once per epoch; the order is a function of ``seed`` and the epoch
    (:meth:`set_epoch`, else the number of passes so far), so a resumed run sees the same batches."""

    def __init__(self, tasks, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tasks = np.asarray(tasks)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        counts = np.unique(self.tasks, return_counts=True)[1]
        return int(sum(-(-int(c) // self.batch_size) for c in counts))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for t in np.unique(self.tasks):
            idx = rng.permutation(np.flatnonzero(self.tasks == t))
            batches += [idx[i:i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
        self.epoch += 1
        for j in rng.permutation(len(batches)):
            yield batches[j]


def build_image_model(method: str, dsd: DatasetDict, model_cfg: VisionMTLConfig, seed: int) -> VisionMTLModel:
    """The model of ``method`` for the data ``dsd`` (tasks, classes, image shape from its features)."""
    feats = dsd["train"].features
    channels, height, _ = feats["image"].shape
    cfg = replace(
        model_cfg, method=method, num_meta=feats["task"].num_classes, num_classes=feats["label"].num_classes,
        in_channels=channels, image_size=height, router_seed=seed,
    )
    return VisionMTLModel(cfg)


def run_image_method(method: str, dsd: DatasetDict, model_cfg: VisionMTLConfig, train_cfg: TrainConfig,
                     output_dir: Path | None, one_task_batches: bool = False) -> dict[str, Any]:
    """Build the method's model for ``dsd`` and train it with the shared loop (``one_task_batches``:
    every training batch from one task, :class:`OneTaskBatchSampler`)."""
    feats = dsd["train"].features
    set_seed(train_cfg.seed)  # the model's initial weights follow the seed
    model = build_image_model(method, dsd, model_cfg, train_cfg.seed)
    collate = ImageMTLCollator()
    data = dsd.with_format("numpy")
    if one_task_batches:
        sampler = OneTaskBatchSampler(data["train"]["task"], train_cfg.batch_size, seed=train_cfg.seed)
        train_loader = DataLoader(data["train"], batch_sampler=sampler, collate_fn=collate)
    else:
        train_loader = DataLoader(data["train"], batch_size=train_cfg.batch_size, shuffle=True, collate_fn=collate)
    evals = {s: DataLoader(data[s], batch_size=train_cfg.eval_batch_size, collate_fn=collate)
             for s in ("validation", "test") if s in data}
    return train(model, train_loader, evals, train_cfg, output_dir, meta_names=feats["task"].names)


#: Training defaults of this recipe: with the library's plain SGD (lr 0.05) every method stayed at
#: 0.5 validation accuracy on MNIST-MTL (50 per class, 2 epochs: always "negative", training is 1:9
#: positive to negative, validation 50/50); Adam at 1e-3 reached 0.846 after 3 epochs.
IMAGE_TRAIN_DEFAULTS: dict[str, Any] = {"block_optimizer": "adam", "lr": 0.001, "router_lr_ratio": 10.0}


