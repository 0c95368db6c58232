"""Routing records: what every routed layer (and the dispatcher) chose for each sample of a split.

A trained run writes one record per evaluated split (``routing_<split>.npz``); the analysis tools
(entropy, path overlap, routing maps, dispatch distributions) read them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LayerRecord", "RoutingRecord", "load_routing_record"]


@dataclass
class LayerRecord:
    """One routed layer: ``actions [N, d]`` (-1 where the sample had stopped), ``active [N, d]``."""

    name: str
    num_actions: int
    actions: np.ndarray
    active: np.ndarray
    stop_action: int | None = None

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, dtype=np.int64)
        self.active = np.asarray(self.active, dtype=bool)
        if self.actions.ndim != 2 or self.actions.shape != self.active.shape:
            raise ValueError(
                f"layer {self.name!r}: actions {self.actions.shape} and active {self.active.shape} "
                "must be equal 2-D shapes [N, depth]"
            )


@dataclass
class RoutingRecord:
    """Per-sample routing of one split.

    ``meta [N]`` the meta class of each sample (signature, genre; what analyses group by) named by
    ``meta_names``; ``layers`` one :class:`LayerRecord` per routed layer; ``dispatch [N]`` the
    dispatcher's choice (``None`` without a learned dispatcher) out of ``num_dispatch``;
    ``labels`` and ``preds`` the gold and predicted classes.
    """

    meta: np.ndarray
    meta_names: list[str]
    layers: list[LayerRecord] = field(default_factory=list)
    dispatch: np.ndarray | None = None
    num_dispatch: int = 0
    labels: np.ndarray | None = None
    preds: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.meta = np.asarray(self.meta, dtype=np.int64)
        n = self.meta.shape[0]
        for layer in self.layers:
            if layer.actions.shape[0] != n:
                raise ValueError(f"layer {layer.name!r} has {layer.actions.shape[0]} rows, meta has {n}")
        if self.dispatch is not None:
            self.dispatch = np.asarray(self.dispatch, dtype=np.int64)
            if self.dispatch.shape != (n,):
                raise ValueError(f"dispatch has shape {self.dispatch.shape}, expected ({n},)")
        if n and int(self.meta.max()) >= len(self.meta_names):
            raise ValueError(f"meta label {int(self.meta.max())} has no name (only {len(self.meta_names)} names)")

    def __len__(self) -> int:
        return int(self.meta.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write the record as one ``.npz`` (arrays plus a JSON header); atomic rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "meta_names": list(self.meta_names),
            "num_dispatch": int(self.num_dispatch),
            "layers": [
                {"name": l.name, "num_actions": int(l.num_actions), "stop_action": l.stop_action} for l in self.layers
            ],
        }
        arrays: dict[str, np.ndarray] = {"meta": self.meta, "header": np.array(json.dumps(header))}
        for i, layer in enumerate(self.layers):
            arrays[f"layer{i}_actions"] = layer.actions
            arrays[f"layer{i}_active"] = layer.active
        for key in ("dispatch", "labels", "preds"):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = np.asarray(value)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path


def load_routing_record(path: str | Path) -> RoutingRecord:
    """Read a record written by :meth:`RoutingRecord.save`; errors name the file and the missing part."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"routing record {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # zip/format errors from numpy
        raise ValueError(f"{path}: not a readable routing record ({err})") from None
    missing = {"meta", "header"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: routing record lacks {sorted(missing)}")
    header = json.loads(str(arrays["header"]))
    layers = []
    for i, spec in enumerate(header["layers"]):
        try:
            actions, active = arrays[f"layer{i}_actions"], arrays[f"layer{i}_active"]
        except KeyError:
            raise ValueError(f"{path}: layer {i} ({spec['name']}) has no actions/active arrays") from None
        layers.append(LayerRecord(spec["name"], spec["num_actions"], actions, active, spec.get("stop_action")))
    return RoutingRecord(
        meta=arrays["meta"],
        meta_names=header["meta_names"],
        layers=layers,
        dispatch=arrays.get("dispatch"),
        num_dispatch=header.get("num_dispatch", 0),
        labels=arrays.get("labels"),
        preds=arrays.get("preds"),
    )
