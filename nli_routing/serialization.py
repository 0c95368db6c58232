"""Reading saved files safely: errors that name the file, and no unpickling of arbitrary objects.

:func:`load_checkpoint` wraps :func:`torch.load` (always ``weights_only``): a missing file raises
:class:`FileNotFoundError`, and a truncated, empty or foreign file raises :class:`CheckpointError` (a
:class:`ValueError`) ``"<path> is truncated or not a checkpoint (<size> bytes): <reason>"`` instead of
the raw zip/pickle error from inside torch. The bottom layer of the package: models, analysis and
training read their files through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["CheckpointError", "load_checkpoint", "load_safetensors", "load_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file."""


def _reason(err: BaseException) -> str:
    """The first line of ``err``'s message (torch's zip errors run on for several sentences)."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if not first:
        return f"{type(err).__name__} (the file ends early)"
    return first if len(first) <= 200 else first[:197] + "..."


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path)`` whose errors name ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is truncated or not a checkpoint (0 bytes): the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)  # never unpickles objects
    except Exception as err:  # zip, pickle, EOF and weights-only errors from torch
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path} holds objects that a weights-only load refuses (not a plain state dict): {_reason(err)}"
            ) from None
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({size} bytes): {_reason(err)}") from None


def load_state_dict(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` that also checks the file holds a state dict (a mapping keyed by names)."""
    state = load_checkpoint(path, map_location=map_location)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is not a state dict: it holds a {type(state).__name__}")
    bad = [repr(k) for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{path} is not a state dict: keys {bad[:5]} are not parameter names")
    return dict(state)


def load_safetensors(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing file raises :class:`FileNotFoundError`, a damaged
    one :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as err:  # safetensors' header/size errors name no file
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({path.stat().st_size} bytes): "
                              f"{_reason(err)}") from None


# ---------------------------------------------------------------------- non-tensor state as JSON + tensors
#: how a tensor or a tuple is marked in the JSON structure of :func:`split_state`
_TENSOR, _TUPLE = "__tensor__", "__tuple__"


def split_state(state: Mapping[str, Any], prefix: str = "extra/") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``state`` (a mapping of names to nested dicts, lists, tuples, numbers, strings, ``None`` and
    tensors, e.g. the ``extra_state`` entries of a state dict: router epochs and generator states) as a
    JSON-able structure and the tensors it holds (named ``prefix<n>``; the structure refers to them by
    name). :func:`join_state` is the inverse. Anything else raises a ``TypeError`` naming the entry."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"{prefix}{len(tensors)}"
            tensors[name] = value.detach().cpu().contiguous().clone()
            return {_TENSOR: name}
        if isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise TypeError(f"state entry {where!r} has non-string keys {bad[:3]}")
            return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"state entry {where!r} is a {type(value).__name__}: only tensors, numbers, strings, "
                        "lists, tuples and dicts are saved")

    return {k: encode(v, k) for k, v in state.items()}, tensors


def join_state(structure: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`split_state`."""

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_TENSOR}:
                return tensors[value[_TENSOR]]
            if set(value) == {_TUPLE}:
                return tuple(decode(v) for v in value[_TUPLE])
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return {k: decode(v) for k, v in structure.items()}
