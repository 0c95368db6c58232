"""nli_routing.data: SCI (``sci``), MultiNLI (``multinli``), the implicative generator, encoding,
and the multi-task image sets (``image_mtl``: MNIST-MTL, Fashion-MNIST-MTL, CIFAR-MTL, MIN-MTL)."""

from .image_mtl import (
    build_cifar_mtl,
    build_fashion_mnist_mtl,
    build_min_mtl,
    build_mnist_mtl,
    load_cifar_mtl,
    load_fashion_mnist_mtl,
    load_min_mtl,
    load_mnist_mtl,
)

__all__ = [
    "build_cifar_mtl",
    "build_fashion_mnist_mtl",
    "build_min_mtl",
    "build_mnist_mtl",
    "load_cifar_mtl",
    "load_fashion_mnist_mtl",
    "load_min_mtl",
    "load_mnist_mtl",
]
