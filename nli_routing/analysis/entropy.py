"""Selection entropy of routing decisions."""

from __future__ import annotations

import torch
from torch import Tensor


def _entropy_bits(counts: Tensor) -> Tensor:
    """Entropy (bits) of each row of a count matrix ``[..., A]``; empty rows give 0."""
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    return (-(p * torch.log2(p.clamp_min(1e-12))).sum(-1)).clamp_min(0.0) + 0.0  # no -0.0


def selection_entropy(
    actions: Tensor, meta: Tensor, active: Tensor, num_actions: int, num_meta: int
) -> dict[str, float | list[float]]:
    """Entropy (bits) of the routers' selections over a data set.

    ``actions [N, d]``, ``meta [N]``, ``active [N, d]``. Returns
    ``overall``: mean over depths of the entropy of the action distribution of all samples
    (low = the network collapsed onto few blocks; ``log2(A)`` = uniform use);
    ``per_meta``: mean over depths and meta classes (weighted by samples) of each agent's own
    selection entropy (0 = each meta class always takes the same path);
    ``per_depth``: the overall entropy at each depth.
    """
    d = actions.shape[1]
    acts = actions.clamp_min(0)
    per_depth, per_meta = [], []
    weights = []
    for t in range(d):
        a_t, m_t = acts[active[:, t], t], meta[active[:, t]]
        if a_t.numel() == 0:
            per_depth.append(0.0)
            continue
        overall = torch.bincount(a_t, minlength=num_actions).float()
        per_depth.append(float(_entropy_bits(overall)))
        joint = torch.bincount(m_t * num_actions + a_t, minlength=num_meta * num_actions).float()
        joint = joint.view(num_meta, num_actions)
        per_meta.append(_entropy_bits(joint))
        weights.append(joint.sum(-1))
    if per_meta:
        h = torch.stack(per_meta)
        w = torch.stack(weights)
        meta_mean = float((h * w).sum() / w.sum().clamp_min(1))
    else:
        meta_mean = 0.0
    return {
        "overall": sum(per_depth) / max(len(per_depth), 1),
        "per_meta": meta_mean,
        "per_depth": per_depth,
    }


def dispatch_statistics(record) -> dict:
    """Entropy and per-meta distribution of the dispatcher's choices in a :class:`RoutingRecord`.

    ``entropy``: entropy (bits) of the dispatch choices over all samples (``log2 K`` = uniform use
    of the K subrouters); ``per_meta_entropy``: sample-weighted mean over meta classes of each
    class's own dispatch entropy (0 = every sample of a class goes to one subrouter);
    ``distribution``: for each meta class the number of its samples sent to each subrouter
    (the data of thesis Figure 6.5).
    """
    k = max(int(record.num_dispatch), int(record.dispatch.max()) + 1 if len(record.dispatch) else 1)
    n_meta = len(record.meta_names)
    disp = torch.as_tensor(record.dispatch)
    meta = torch.as_tensor(record.meta)
    joint = torch.bincount(meta * k + disp, minlength=n_meta * k).view(n_meta, k).float()
    rows = joint.sum(-1)
    per_meta = float((_entropy_bits(joint) * rows).sum() / rows.sum().clamp_min(1))
    return {
        "num_dispatch": k,
        "entropy": float(_entropy_bits(joint.sum(0))),
        "per_meta_entropy": per_meta,
        "distribution": {name: [int(x) for x in joint[m]] for m, name in enumerate(record.meta_names)},
    }
