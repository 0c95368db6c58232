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
    #: what ``meta`` holds ("signature", "genre", "cluster"; None in records of older versions) and,
    #: when the run routed on another column (offline clusters), the data's own meta column per sample
    meta_column: str | None = None
    data_meta: np.ndarray | None = None
    data_meta_names: list[str] | None = None
    data_meta_column: str | None = None

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

    def by_data_meta(self) -> "RoutingRecord":
        """The same record grouped by the data's own meta column (e.g. signatures of a cluster-routed run)."""
        from dataclasses import replace

        if self.data_meta is None or self.data_meta_names is None:
            raise ValueError("this record holds no data meta column (the run routed on the data's own meta labels)")
        return replace(self, meta=self.data_meta, meta_names=list(self.data_meta_names), meta_column=self.data_meta_column,
                       data_meta=None, data_meta_names=None, data_meta_column=None)

    def __len__(self) -> int:
        return int(self.meta.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write the record as one ``.npz`` (arrays plus a JSON header); atomic rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "meta_names": list(self.meta_names),
            "num_dispatch": int(self.num_dispatch),
            "meta_column": self.meta_column,
            "data_meta_names": None if self.data_meta_names is None else list(self.data_meta_names),
            "data_meta_column": self.data_meta_column,
            "layers": [
                {"name": l.name, "num_actions": int(l.num_actions), "stop_action": l.stop_action} for l in self.layers
            ],
        }
        arrays: dict[str, np.ndarray] = {"meta": self.meta, "header": np.array(json.dumps(header))}
        for i, layer in enumerate(self.layers):
            arrays[f"layer{i}_actions"] = layer.actions
            arrays[f"layer{i}_active"] = layer.active
        for key in ("dispatch", "labels", "preds", "data_meta"):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = np.asarray(value)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path


def load_routing_record(path: str | Path) -> RoutingRecord:
    """Read a record written by :meth:`RoutingRecord.save`.

    Every error names the file: :class:`FileNotFoundError` when it is absent, :class:`ValueError`
    ``"<path> is truncated or not a routing record: ..."`` for a damaged file, and ``"<path>: ..."``
    naming the missing or inconsistent part otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"routing record {path} does not exist")
    size = path.stat().st_size
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError(f"a bare {type(data).__name__} array, not an .npz archive")
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # zip, CRC and format errors from numpy
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is truncated or not a routing record ({size} bytes): {reason}") from None
    missing = {"meta", "header"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: routing record lacks {sorted(missing)}; arrays found: {sorted(arrays)}")
    try:
        header = json.loads(str(arrays["header"]))
        names, specs = header["meta_names"], header["layers"]
        if not isinstance(names, list) or not isinstance(specs, list):
            raise TypeError("'meta_names' and 'layers' must be lists")
        specs = [(str(spec["name"]), int(spec["num_actions"]), spec.get("stop_action")) for spec in specs]
    except (ValueError, KeyError, TypeError) as err:
        what = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{path}: array 'header' is not a valid routing-record header ({what})") from None
    layers = []
    try:
        for i, (name, num_actions, stop) in enumerate(specs):
            if f"layer{i}_actions" not in arrays or f"layer{i}_active" not in arrays:
                raise ValueError(f"layer {i} ({name}) has no actions/active arrays")
            layers.append(LayerRecord(name, num_actions, arrays[f"layer{i}_actions"], arrays[f"layer{i}_active"], stop))
        return RoutingRecord(
            meta=arrays["meta"],
            meta_names=names,
            layers=layers,
            dispatch=arrays.get("dispatch"),
            num_dispatch=header.get("num_dispatch", 0),
            labels=arrays.get("labels"),
            preds=arrays.get("preds"),
            meta_column=header.get("meta_column"),
            data_meta=arrays.get("data_meta"),
            data_meta_names=header.get("data_meta_names"),
            data_meta_column=header.get("data_meta_column"),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
