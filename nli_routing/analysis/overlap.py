"""Path overlap between meta classes (thesis Figures 5.12/5.13) and routing maps (Figure 5.6).

A sample's *path* is the concatenation of the modules it chose in every routed layer of a
:class:`~nli_routing.analysis.records.RoutingRecord`, one position per (layer, depth); positions
where it had stopped hold -1 (no module). A meta class's *dominant path* is the path most of its
samples took. The overlap of two classes is the number of module selections their dominant
paths share: positions where both chose the same module (``match="depth"``, the default), or,
with ``match="module"``, the size of the multiset intersection of the modules on the two paths,
regardless of depth (meaningful for recursive layers that reuse one block set at every depth).
The diagonal is each dominant path's length (its number of module selections).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from .entropy import selection_entropy
from .records import RoutingRecord

__all__ = [
    "regroup",
    "layer_tags",
    "path_columns",
    "dominant_paths",
    "path_overlap",
    "soft_path_overlap",
    "cluster_order",
    "routing_map",
    "class_entropy",
]

MATCHES = ("depth", "module")


def regroup(record: RoutingRecord, by: str = "meta") -> RoutingRecord:
    """The record grouped by ``by``: ``"meta"`` (unchanged) or ``"dispatch"`` (the dispatcher's choice).

    Grouping by dispatch puts each sample in the class of the subrouter the learned dispatcher
    sent it to (classes ``dispatch 0 .. K-1``); the record must have a dispatch column.
    """
    if by == "meta":
        return record
    if by != "dispatch":
        raise ValueError(f"group by 'meta' or 'dispatch', got {by!r}")
    if record.dispatch is None:
        raise ValueError("the routing record has no dispatch column (the run had no learned dispatcher)")
    k = max(int(record.num_dispatch), int(record.dispatch.max()) + 1 if len(record) else 1)
    return RoutingRecord(
        meta=record.dispatch,
        meta_names=[f"dispatch {i}" for i in range(k)],
        layers=record.layers,
        dispatch=record.dispatch,
        num_dispatch=k,
        labels=record.labels,
        preds=record.preds,
    )


def layer_tags(record: RoutingRecord) -> list[str]:
    """Names of the routed layers; a name used by several layers gets the layer index (``wp0``)."""
    names = [layer.name for layer in record.layers]
    return [f"{n}{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def path_columns(record: RoutingRecord, layers: Sequence[int] | None = None) -> tuple[np.ndarray, list[str], list[int]]:
    """All samples' paths ``[N, P]`` (-1 where stopped), the column names and each column's layer index.

    Columns are ``"<layer> d<t>"`` (``"wp d1"``, ``"classifier d2"``); a name used by several
    routed layers gets the layer index (``"wp0 d1"``).
    """
    chosen = list(range(len(record.layers))) if layers is None else list(layers)
    if not chosen:
        raise ValueError("the routing record has no routed layers")
    tags = layer_tags(record)
    cols, labels, owner = [], [], []
    for i in chosen:
        layer = record.layers[i]
        acts = np.where(layer.active, layer.actions, -1)
        if layer.stop_action is not None:
            acts = np.where(acts == layer.stop_action, -1, acts)
        cols.append(acts)
        tag = tags[i]
        labels += [f"{tag} d{t + 1}" for t in range(acts.shape[1])]
        owner += [i] * acts.shape[1]
    return np.concatenate(cols, axis=1), labels, owner


def _present(record: RoutingRecord) -> list[int]:
    """Meta classes with at least one sample, in id order."""
    return sorted(int(m) for m in np.unique(record.meta))


def dominant_paths(record: RoutingRecord, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Each meta class's most frequent path (ties: the smallest path in lexicographic order).

    Returns ``classes`` (names of the classes with samples), ``columns``, ``paths [C, P]``
    (-1 = stopped), ``share`` (fraction of the class's samples on its dominant path), ``count``
    (samples per class) and ``length`` (module selections on each dominant path).
    """
    paths, columns, _ = path_columns(record, layers)
    classes, dom, share, count = [], [], [], []
    for m in _present(record):
        rows = paths[record.meta == m]
        counter = Counter(map(tuple, rows.tolist()))
        best = max(counter.items(), key=lambda kv: (kv[1], tuple(-x for x in kv[0])))
        classes.append(record.meta_names[m])
        dom.append(best[0])
        share.append(best[1] / len(rows))
        count.append(len(rows))
    dom_arr = np.array(dom, dtype=np.int64).reshape(len(classes), len(columns))
    return {
        "classes": classes,
        "columns": columns,
        "paths": dom_arr,
        "share": share,
        "count": count,
        "length": [int((p >= 0).sum()) for p in dom_arr],
    }


def _shared(a: np.ndarray, b: np.ndarray, owner: Sequence[int], match: str) -> int:
    if match == "depth":
        return int(((a == b) & (a >= 0)).sum())
    total = 0
    for layer in sorted(set(owner)):
        cols = [i for i, o in enumerate(owner) if o == layer]
        ca = Counter(int(x) for x in a[cols] if x >= 0)
        cb = Counter(int(x) for x in b[cols] if x >= 0)
        total += sum((ca & cb).values())
    return total


def cluster_order(matrix: Any, method: str = "average") -> list[int]:
    """Row order of a symmetric overlap matrix by hierarchical clustering (scipy ``linkage``).

    Distance between two classes is ``max overlap - overlap`` (0 = identical dominant paths);
    the leaves are returned in the dendrogram's optimal order, so classes that share paths sit
    next to each other.
    """
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    if n <= 2:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    dist = m.max() - m
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method=method, optimal_ordering=True)
    return [int(i) for i in leaves_list(z)]


def path_overlap(
    record: RoutingRecord, layers: Sequence[int] | None = None, match: str = "depth", order: str = "cluster"
) -> dict[str, Any]:
    """Module selections shared by the dominant paths of every pair of meta classes.

    Returns the :func:`dominant_paths` fields plus ``overlap [C, C]`` (integers; the diagonal is
    each class's path length), ``order`` (row/column order: hierarchical clustering with
    ``order="cluster"``, else class id order) and ``match``. Classes are those with samples in
    the record.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    dom = dominant_paths(record, layers)
    _, _, owner = path_columns(record, layers)
    paths = dom["paths"]
    c = len(dom["classes"])
    overlap = np.zeros((c, c), dtype=np.int64)
    for i in range(c):
        for j in range(i, c):
            overlap[i, j] = overlap[j, i] = _shared(paths[i], paths[j], owner, match)
    rows = cluster_order(overlap) if order == "cluster" else list(range(c))
    return {**dom, "overlap": overlap, "order": rows, "match": match}


def soft_path_overlap(record: RoutingRecord, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Expected shared selections (same module at the same position) of a random sample of each class.

    ``overlap[i, j] = sum over positions p, modules a of P_i(a at p) * P_j(a at p)``, where
    ``P_i`` is the share of class i's samples choosing ``a`` at ``p`` (stopped samples choose
    nothing). Unlike :func:`path_overlap` it sees classes whose samples split over several paths.
    """
    paths, columns, _ = path_columns(record, layers)
    classes = _present(record)
    n_mod = int(paths.max()) + 1 if paths.size and paths.max() >= 0 else 1
    dist = np.zeros((len(classes), len(columns), n_mod))
    for ci, m in enumerate(classes):
        rows = paths[record.meta == m]
        for p in range(len(columns)):
            chosen = rows[:, p][rows[:, p] >= 0]
            dist[ci, p] = np.bincount(chosen, minlength=n_mod) / max(len(rows), 1)
    overlap = np.einsum("ipa,jpa->ij", dist, dist)
    return {"classes": [record.meta_names[m] for m in classes], "columns": columns, "overlap": overlap}


def routing_map(record: RoutingRecord, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """The module chosen at each position for each meta class (thesis Figure 5.6).

    ``modules [C, P]`` the most frequent module among the class's samples at that position (-1
    when none of them was active there) and ``shares [C, P]`` the fraction of the class's samples
    that chose it; ``distribution[c][p]`` all module counts. ``num_actions`` is the largest
    number of modules of the layers.
    """
    paths, columns, owner = path_columns(record, layers)
    classes = _present(record)
    width = max(record.layers[i].num_actions for i in set(owner))
    modules = np.full((len(classes), len(columns)), -1, dtype=np.int64)
    shares = np.zeros((len(classes), len(columns)))
    distribution = []
    for ci, m in enumerate(classes):
        rows = paths[record.meta == m]
        per_pos = []
        for p in range(len(columns)):
            chosen = rows[:, p][rows[:, p] >= 0]
            counts = np.bincount(chosen, minlength=width)
            per_pos.append([int(x) for x in counts])
            if chosen.size:
                modules[ci, p] = int(counts.argmax())
                shares[ci, p] = counts.max() / len(rows)
        distribution.append(per_pos)
    return {
        "classes": [record.meta_names[m] for m in classes],
        "depth_labels": columns,
        "modules": modules,
        "shares": shares,
        "distribution": distribution,
        "num_actions": width,
    }


def class_entropy(record: RoutingRecord) -> dict[str, Any]:
    """Selection entropy (bits, :func:`~nli_routing.analysis.entropy.selection_entropy`) per layer.

    For every routed layer: the overall and sample-weighted per-class entropy of the record, and
    each class's own entropy (``by_class``: 0 = all its samples take one path through the layer).
    """
    meta = torch.as_tensor(record.meta)
    out = {}
    classes = _present(record)
    for tag, layer in zip(layer_tags(record), record.layers):
        actions, active = torch.as_tensor(layer.actions), torch.as_tensor(layer.active)
        total = selection_entropy(actions, meta, active, layer.num_actions, len(record.meta_names))
        by_class, perplexity_by_class = {}, {}
        for m in classes:
            sel = meta == m
            h = selection_entropy(actions[sel], torch.zeros_like(meta[sel]), active[sel], layer.num_actions, 1)
            by_class[record.meta_names[m]] = h["overall"]
            perplexity_by_class[record.meta_names[m]] = perplexity(h["per_depth"])
        out[tag] = {**total, "by_class": by_class, "perplexity": perplexity(total["per_depth"]),
                    "perplexity_by_class": perplexity_by_class}
    return out


def perplexity(entropies_bits: list[float]) -> float:
    """Routing-policy perplexity: ``2 ** H`` of the selections at each depth, averaged over depths (the effective
    number of blocks in use: 1 = one block takes every sample, b = all b blocks equally; Rosenbaum et al. 2019,
    "Routing Networks and the Challenges of Modular and Compositional Computation", Figure 1, measured here on
    the recorded selections)."""
    return sum(2.0 ** h for h in entropies_bits) / max(len(entropies_bits), 1)
