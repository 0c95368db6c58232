"""Multi-task image data sets on ``datasets``: MNIST-MTL, Fashion-MNIST-MTL, CIFAR-MTL, MIN-MTL.

Every data set is a :class:`datasets.DatasetDict` with explicit features:

* ``image``: ``Array3D(shape=(C, H, W), dtype="uint8")`` (channels first, 0..255);
* ``label``: ``ClassLabel`` -- the class *within the sample's task* (``negative``/``positive`` for the
  one-vs-rest sets, the 5 fine classes of the task for CIFAR-MTL and MIN-MTL, numbered ``0..4``);
* ``task``: ``ClassLabel`` -- the task, i.e. the meta label the routers read (``batch["meta"]``);
* ``source_label``: ``int64`` -- the original class of the source data set (digit, fine label, ...).

The builders work on plain arrays (``build_*``); the loaders (``load_*``) take local arrays
(``.npz`` or an MNIST-style ``idx`` folder) or, without a path, the Hub id (needs network access;
offline failures raise a :class:`ConnectionError` that says which local files to pass).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np

from .hub import load_from_hub

MNIST_HUB_ID = "mnist"
FASHION_MNIST_HUB_ID = "fashion_mnist"
CIFAR100_HUB_ID = "cifar100"
MINI_IMAGENET_HUB_ID = "timm/mini-imagenet"

FASHION_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
ONE_VS_REST_LABELS = ("negative", "positive")


def image_mtl_features(shape: Sequence[int], label_names: Sequence[str], task_names: Sequence[str]) -> datasets.Features:
    """The explicit features of every image multi-task set (``shape`` = ``(C, H, W)``)."""
    return datasets.Features(
        {
            "image": datasets.Array3D(shape=tuple(int(s) for s in shape), dtype="uint8"),
            "label": datasets.ClassLabel(names=list(label_names)),
            "task": datasets.ClassLabel(names=list(task_names)),
            "source_label": datasets.Value("int64"),
        }
    )


def to_uint8_chw(x: np.ndarray) -> np.ndarray:
    """Images ``[N, H, W]``, ``[N, H, W, C]`` (C in 1, 3) or ``[N, C, H, W]`` -> uint8 ``[N, C, H, W]``.

    Float or integer arrays whose maximum is not above 255 are taken as they are when they look like
    0..255 (max > 16), scaled to 0..255 otherwise (floats in [0, 1] or scikit-learn's 0..16 digits).
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise ValueError(f"images must be [N, H, W], [N, H, W, C] or [N, C, H, W], got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    hi = float(x.max()) if x.size else 1.0
    if hi <= 1.0:
        x = x * 255.0
    elif hi <= 16.0:  # scikit-learn's bundled digits
        x = x * (255.0 / 16.0)
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _dataset(images: np.ndarray, labels: np.ndarray, tasks: np.ndarray, source: np.ndarray,
             features: datasets.Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "label": labels.astype(np.int64),
            "task": tasks.astype(np.int64),
            "source_label": source.astype(np.int64),
        },
        features=features,
    )


def _take(pool: np.ndarray, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n > len(pool):
        raise ValueError(f"{what}: need {n} samples but only {len(pool)} are available; lower the counts")
    return rng.choice(pool, size=n, replace=False)


def one_vs_rest_split(
    x: np.ndarray, y: np.ndarray, positives: int, negatives_per_class: int | None, total: int | None,
    rng: np.random.Generator, task_names: Sequence[str], features: datasets.Features, split: str,
    positive_fraction: float = 0.5,
) -> datasets.Dataset:
    """One-vs-rest tasks, one per class: task k labels class k positive, every other class negative.

    Either ``positives`` positives and ``negatives_per_class`` samples of each other class (train),
    or ``total`` samples of which ``round(total * positive_fraction)`` are positive and the rest
    spread as evenly as possible over the other classes (test). Samples are drawn without
    replacement within a task (a sample may serve several tasks).
    """
    x = to_uint8_chw(x)
    y = np.asarray(y).astype(np.int64)
    classes = np.arange(len(task_names))
    idx_all, lab_all, task_all = [], [], []
    for k in classes:
        others = [c for c in classes if c != k]
        if total is None:
            n_pos, n_neg = positives, {c: negatives_per_class for c in others}
        else:
            n_pos = int(round(total * positive_fraction))
            rest = total - n_pos
            n_neg = {c: rest // len(others) + (i < rest % len(others)) for i, c in enumerate(others)}
        pos = _take(np.flatnonzero(y == k), n_pos, rng, f"{split} task {task_names[k]!r} positives")
        neg = [_take(np.flatnonzero(y == c), n, rng, f"{split} task {task_names[k]!r} class {c}") for c, n in n_neg.items()]
        idx = np.concatenate([pos, *neg])
        idx_all.append(idx)
        lab_all.append(np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(idx) - len(pos), np.int64)]))
        task_all.append(np.full(len(idx), k, np.int64))
    idx = np.concatenate(idx_all)
    order = rng.permutation(len(idx))
    idx, labels, tasks = idx[order], np.concatenate(lab_all)[order], np.concatenate(task_all)[order]
    return _dataset(x[idx], labels, tasks, y[idx], features)


def build_one_vs_rest_mtl(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    task_names: Sequence[str], per_class: int = 1000, test_per_task: int = 200, seed: int = 0,
    x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, test_positive_fraction: float = 0.5,
) -> datasets.DatasetDict:
    """One-vs-rest multi-task set over ``len(task_names)`` classes (labels ``0..n-1`` in ``y``).

    Train: per task ``per_class`` positives and ``per_class`` samples of each other class (so
    1:(n-1) positives to negatives, as in Routing Networks' MNIST-MTL). Test (and validation, when
    ``x_val``/``y_val`` are given): ``test_per_task`` samples per task, half positive by default
    (``test_positive_fraction``), negatives spread evenly over the other classes.
    """
    rng = np.random.default_rng(seed)
    shape = to_uint8_chw(np.asarray(x_train)[:1]).shape[1:]
    features = image_mtl_features(shape, ONE_VS_REST_LABELS, task_names)
    out = {"train": one_vs_rest_split(x_train, y_train, per_class, per_class, None, rng, task_names, features, "train")}
    if x_val is not None and y_val is not None:
        out["validation"] = one_vs_rest_split(
            x_val, y_val, 0, None, test_per_task, rng, task_names, features, "validation", test_positive_fraction
        )
    out["test"] = one_vs_rest_split(
        x_test, y_test, 0, None, test_per_task, rng, task_names, features, "test", test_positive_fraction
    )
    return datasets.DatasetDict(out)


def build_mnist_mtl(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    per_class: int = 1000, test_per_task: int = 200, seed: int = 0, **kwargs: Any,
) -> datasets.DatasetDict:
    """MNIST-MTL (Routing Networks): ten one-vs-rest digit tasks (see :func:`build_one_vs_rest_mtl`)."""
    names = [f"digit-{d}" for d in range(10)]
    return build_one_vs_rest_mtl(x_train, y_train, x_test, y_test, names, per_class, test_per_task, seed, **kwargs)


def build_fashion_mnist_mtl(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    per_class: int = 1000, test_per_task: int = 200, seed: int = 0, **kwargs: Any,
) -> datasets.DatasetDict:
    """Fashion-MNIST-MTL: the MNIST-MTL construction over the ten Fashion-MNIST classes."""
    names = [f"fashion-{c}" for c in FASHION_CLASSES]
    return build_one_vs_rest_mtl(x_train, y_train, x_test, y_test, names, per_class, test_per_task, seed, **kwargs)


def build_grouped_mtl(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    groups: Sequence[Sequence[int]], task_names: Sequence[str] | None = None,
    x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
) -> datasets.DatasetDict:
    """Tasks as groups of source classes: task t classifies among ``groups[t]`` (label = position in it).

    Samples of classes in no group are dropped; every kept sample belongs to exactly one task.
    """
    groups = [list(map(int, g)) for g in groups]
    flat = [c for g in groups for c in g]
    if len(set(flat)) != len(flat):
        raise ValueError("a source class may belong to one task only")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"every task needs the same number of classes, got sizes {sorted(sizes)}")
    width = sizes.pop()
    task_names = list(task_names or [f"task-{t}" for t in range(len(groups))])
    lut_task = {c: t for t, g in enumerate(groups) for c in g}
    lut_label = {c: i for g in groups for i, c in enumerate(g)}
    shape = to_uint8_chw(np.asarray(x_train)[:1]).shape[1:]
    features = image_mtl_features(shape, [str(i) for i in range(width)], task_names)

    def split(x: np.ndarray, y: np.ndarray) -> datasets.Dataset:
        y = np.asarray(y).astype(np.int64)
        keep = np.flatnonzero(np.isin(y, flat))
        ys = y[keep]
        tasks = np.array([lut_task[c] for c in ys], np.int64)
        labels = np.array([lut_label[c] for c in ys], np.int64)
        return _dataset(to_uint8_chw(np.asarray(x)[keep]), labels, tasks, ys, features)

    out = {"train": split(x_train, y_train)}
    if x_val is not None and y_val is not None:
        out["validation"] = split(x_val, y_val)
    out["test"] = split(x_test, y_test)
    return datasets.DatasetDict(out)


def cifar_groups(fine: np.ndarray, coarse: np.ndarray) -> list[list[int]]:
    """The fine labels of every coarse label (sorted), from paired label arrays."""
    fine, coarse = np.asarray(fine), np.asarray(coarse)
    groups = [sorted(set(fine[coarse == c].tolist())) for c in sorted(set(coarse.tolist()))]
    return groups


def build_cifar_mtl(
    x_train: np.ndarray, fine_train: np.ndarray, coarse_train: np.ndarray,
    x_test: np.ndarray, fine_test: np.ndarray, coarse_test: np.ndarray,
    coarse_names: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """CIFAR-MTL (Routing Networks): 20 tasks = CIFAR-100's coarse labels, each a 5-way
    classification of its fine labels (label = rank of the fine label within its coarse class)."""
    groups = cifar_groups(fine_train, coarse_train)
    if any(len(g) != len(groups[0]) for g in groups):
        raise ValueError("every coarse label needs the same number of fine labels (CIFAR-100: 5)")
    names = list(coarse_names) if coarse_names is not None else [f"coarse-{c}" for c in range(len(groups))]
    return build_grouped_mtl(x_train, fine_train, x_test, fine_test, groups, names)


def build_min_mtl(
    x: np.ndarray, y: np.ndarray, num_tasks: int = 10, classes_per_task: int = 5, test_fraction: float = 1 / 6,
    seed: int = 0, x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
) -> datasets.DatasetDict:
    """MIN-MTL (Routing Networks): ``num_tasks`` tasks of ``classes_per_task`` mini-ImageNet labels.

    The ``num_tasks * classes_per_task`` classes are drawn at random (``seed``) from the labels of
    ``y`` and dealt out to the tasks in draw order. Without ``x_test``, each class's samples are
    split into train and test (``test_fraction``; 100 of 600 by default).
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(np.int64)
    classes = np.unique(y)
    need = num_tasks * classes_per_task
    if need > len(classes):
        raise ValueError(f"MIN-MTL needs {need} classes but the data has {len(classes)}")
    chosen = rng.choice(classes, size=need, replace=False)
    groups = [sorted(chosen[t * classes_per_task:(t + 1) * classes_per_task].tolist()) for t in range(num_tasks)]
    if x_test is None:
        test_idx = []
        for c in chosen:
            idx = rng.permutation(np.flatnonzero(y == c))
            test_idx.append(idx[: int(round(len(idx) * test_fraction))])
        test_idx = np.concatenate(test_idx)
        mask = np.zeros(len(y), bool)
        mask[test_idx] = True
        x = np.asarray(x)
        x_train, y_train, x_test, y_test = x[~mask], y[~mask], x[mask], y[mask]
    else:
        x_train, y_train = x, y
    return build_grouped_mtl(x_train, y_train, x_test, y_test, groups)


# ---------------------------------------------------------------- local arrays and the Hub


def read_idx(path: str | Path) -> np.ndarray:
    """An MNIST ``idx`` file (``.gz`` too) as a numpy array."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an idx file (bad magic)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype, ndim = dtypes[raw[2]], raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape).astype(np.uint8 if dtype == np.uint8 else np.int64)


def open_npz(path: str | Path):
    """``np.load`` of an ``.npz`` array archive without pickles; anything else is a ``ValueError`` naming the file."""
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        detail = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        if "pickled" in detail:  # numpy's guess for bytes that are no array format: a pickle, which is never loaded
            detail = "neither a zip of .npy arrays nor a .npy array; pickles are not loaded"
        raise ValueError(f"{path}: not a NumPy .npz array archive ({detail})") from None
    if not hasattr(data, "files"):  # a single .npy array
        raise ValueError(f"{path}: a single array, not a .npz archive of named arrays")
    return data


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` (and ``x_val, y_val`` when present) from an ``.npz`` file
    or a folder with the MNIST ``idx`` files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``)."""
    path = Path(path)
    if path.is_file():
        with open_npz(path) as data:
            arrays = {k: data[k] for k in data.files}
    elif path.is_dir():
        names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                 "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
        arrays = {}
        for key, stem in names.items():
            found = [p for p in (path / stem, path / f"{stem}.gz") if p.exists()]
            if not found:
                raise FileNotFoundError(f"{path}: missing {stem}[.gz]")
            arrays[key] = read_idx(found[0])
    else:
        raise FileNotFoundError(f"{path}: no such .npz file or idx folder")
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise KeyError(f"{path}: missing arrays {sorted(missing)} (have {sorted(arrays)})")
    return arrays


def hub_arrays(hub_id: str, image_column: str, label_columns: Sequence[str], splits: Sequence[str] = ("train", "test"),
               **kwargs: Any) -> dict[str, dict[str, np.ndarray]]:
    """Images and label columns of a Hub data set as arrays per split (needs network access)."""
    raw = load_from_hub(
        hub_id, "pass local arrays (an .npz file with x_train, y_train, x_test, y_test, or an MNIST idx folder) instead",
        **kwargs,
    )
    out = {}
    for split in splits:
        ds = raw[split]
        images = np.stack([np.asarray(img) for img in ds[image_column]])
        out[split] = {"x": images, **{c: np.asarray(ds[c]) for c in label_columns}}
    return out


def _one_vs_rest_loader(builder, hub_id: str, image_column: str):
    def load(path: str | Path | None = None, **kwargs: Any) -> datasets.DatasetDict:
        if path is not None:
            a = load_arrays(path)
            return builder(a["x_train"], a["y_train"], a["x_test"], a["y_test"],
                           x_val=a.get("x_val"), y_val=a.get("y_val"), **kwargs)
        h = hub_arrays(hub_id, image_column, ["label"])
        return builder(h["train"]["x"], h["train"]["label"], h["test"]["x"], h["test"]["label"], **kwargs)

    return load


load_mnist_mtl = _one_vs_rest_loader(build_mnist_mtl, MNIST_HUB_ID, "image")
load_mnist_mtl.__doc__ = "MNIST-MTL from an .npz/idx path (``x_val``/``y_val`` become validation) or the Hub (``mnist``)."
load_fashion_mnist_mtl = _one_vs_rest_loader(build_fashion_mnist_mtl, FASHION_MNIST_HUB_ID, "image")
load_fashion_mnist_mtl.__doc__ = "Fashion-MNIST-MTL from an .npz/idx path or the Hub (``fashion_mnist``)."


def load_cifar_mtl(path: str | Path | None = None) -> datasets.DatasetDict:
    """CIFAR-MTL from an ``.npz`` (``x_train, y_train`` (fine), ``coarse_train, x_test, y_test,
    coarse_test``) or the Hub (``cifar100``: ``img``, ``fine_label``, ``coarse_label``)."""
    if path is not None:
        a = load_arrays(path)
        for key in ("coarse_train", "coarse_test"):
            if key not in a:
                raise KeyError(f"{path}: CIFAR-MTL needs {key!r} (coarse labels) next to the fine y_train/y_test")
        return build_cifar_mtl(a["x_train"], a["y_train"], a["coarse_train"], a["x_test"], a["y_test"], a["coarse_test"])
    h = hub_arrays(CIFAR100_HUB_ID, "img", ["fine_label", "coarse_label"])
    tr, te = h["train"], h["test"]
    return build_cifar_mtl(tr["x"], tr["fine_label"], tr["coarse_label"], te["x"], te["fine_label"], te["coarse_label"])


def load_min_mtl(path: str | Path | None = None, hub_id: str = MINI_IMAGENET_HUB_ID, **kwargs: Any) -> datasets.DatasetDict:
    """MIN-MTL from an ``.npz`` with ``x, y`` (all mini-ImageNet images and labels) or the Hub
    (``timm/mini-imagenet``: ``image``, ``label``; train split only is used, split per class)."""
    if path is not None:
        with open_npz(path) as data:
            if "x" not in data.files or "y" not in data.files:
                raise KeyError(f"{path}: MIN-MTL needs arrays 'x' and 'y' (have {data.files})")
            return build_min_mtl(data["x"], data["y"], **kwargs)
    h = hub_arrays(hub_id, "image", ["label"], splits=("train",))
    return build_min_mtl(h["train"]["x"], h["train"]["label"], **kwargs)


DATASETS = {
    "mnist-mtl": load_mnist_mtl,
    "fashion-mnist-mtl": load_fashion_mnist_mtl,
    "cifar-mtl": load_cifar_mtl,
    "min-mtl": load_min_mtl,
}
