"""Collapse metrics: has a router (or a dispatcher) sent (almost) every sample down one path?

Computed from the routing choices of a data set (a :class:`~nli_routing.analysis.records.LayerRecord`
or plain arrays). A router has *collapsed* when its most common path carries at least
``threshold`` of the samples (default 95%); a dispatcher when one class gets that share.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

COLLAPSE_THRESHOLD = 0.95


def path_collapse(
    actions: Tensor, active: Tensor, meta: Tensor, num_actions: int, num_meta: int, threshold: float = COLLAPSE_THRESHOLD
) -> dict[str, Any]:
    """Collapse metrics of one routed layer over a data set.

    ``actions [N, d]`` (-1 where the sample had stopped), ``active [N, d]``, ``meta [N]``. Returns
    ``top_block_share`` (per depth, the share of the active decisions taken by the most used block),
    ``distinct_paths`` (number of different paths taken), ``top_path`` and ``top_path_share`` (the
    most common path and its share of the samples), ``agents_on_top_path`` (the number of meta
    classes whose own most common path is that path: for multi-agent routers, how many agents
    share one greedy path) and ``collapsed`` (``top_path_share >= threshold`` with more than one
    action to choose from).
    """
    acts = torch.as_tensor(actions).long()
    act = torch.as_tensor(active).bool()
    meta = torch.as_tensor(meta).long()
    n, d = acts.shape
    paths = acts.masked_fill(~act, -1)
    top_block = []
    for t in range(d):
        a_t = paths[act[:, t], t]
        top_block.append(float(torch.bincount(a_t, minlength=num_actions).max()) / a_t.numel() if a_t.numel() else 0.0)
    if n == 0:
        return {"top_block_share": top_block, "distinct_paths": 0, "top_path": [], "top_path_share": 0.0,
                "agents_on_top_path": 0, "collapsed": False}
    uniq, inverse, counts = torch.unique(paths, dim=0, return_inverse=True, return_counts=True)
    top = int(counts.argmax())
    agents = 0
    for m in range(num_meta):
        mine = inverse[meta == m]
        if mine.numel() and int(torch.bincount(mine, minlength=uniq.shape[0]).argmax()) == top:
            agents += 1
    share = float(counts[top]) / n
    return {
        "top_block_share": top_block,
        "distinct_paths": int(uniq.shape[0]),
        "top_path": [int(a) for a in uniq[top]],
        "top_path_share": share,
        "agents_on_top_path": agents,
        "collapsed": bool(num_actions > 1 and share >= threshold),
    }


def dispatch_collapse(dispatch: Tensor, num_dispatch: int, threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
    """``top_class``, ``top_class_share`` and ``collapsed`` of a dispatcher's choices ``[N]``."""
    disp = torch.as_tensor(dispatch).long()
    if disp.numel() == 0:
        return {"top_class": -1, "top_class_share": 0.0, "collapsed": False}
    counts = torch.bincount(disp, minlength=num_dispatch)
    share = float(counts.max()) / disp.numel()
    return {"top_class": int(counts.argmax()), "top_class_share": share,
            "collapsed": bool(num_dispatch > 1 and share >= threshold)}


def collapse_warnings(metrics: dict[str, Any], layer_names: list[str], split: str, epoch: int) -> list[str]:
    """One line per collapsed router or dispatcher in an evaluation's metrics (see ``record_metrics``)."""
    lines = []
    for i, name in enumerate(layer_names):
        c = metrics.get(f"collapse_{i}")
        if c and c["collapsed"]:
            lines.append(
                f"epoch {epoch}: routed layer {i} ({name}) collapsed: {100 * c['top_path_share']:.1f}% of the "
                f"{split} samples take path {c['top_path']} ({c['agents_on_top_path']} agents share it)"
            )
    disp = metrics.get("dispatch")
    if disp and disp.get("collapsed"):
        lines.append(
            f"epoch {epoch}: the dispatcher collapsed: {100 * disp['top_class_share']:.1f}% of the {split} "
            f"samples go to class {disp['top_class']}"
        )
    return lines
