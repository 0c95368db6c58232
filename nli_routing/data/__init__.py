"""nli_routing.data: SCI (``sci``), MultiNLI (``multinli``), the implicative generator, encoding,
and the multi-task image sets (``image_mtl``: MNIST-MTL, Fashion-MNIST-MTL, CIFAR-MTL, MIN-MTL)."""

from importlib import import_module
from importlib.resources import files
from pathlib import Path

#: the project's generated SCI-style data, shipped inside the package (``joint``, ``disjoint``,
#: ``mismatch``, ``nested``; see its README.md), so an installed package runs the main job offline
EMBEDDED_SCI = Path(str(files("nli_routing.data") / "sci_synthetic"))

__all__ = [
    "EMBEDDED_SCI",
    "build_cifar_mtl",
    "build_fashion_mnist_mtl",
    "build_min_mtl",
    "build_mnist_mtl",
    "load_cifar_mtl",
    "load_fashion_mnist_mtl",
    "load_min_mtl",
    "load_mnist_mtl",
]


def __getattr__(name: str):
    """The image sets' builders and loaders, imported on first use (they need ``datasets``, which the
    inference path never imports)."""
    if name in __all__ and name != "EMBEDDED_SCI":
        return getattr(import_module(".image_mtl", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
