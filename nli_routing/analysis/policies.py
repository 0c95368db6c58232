"""Cosine similarity between the policies of tabular agents ("Re-examining Routing Networks", Figs. 2, 4).

A :class:`~nli_routing.routing.routers.TabularRouter` stores ``table [num_agents, depth, actions]``
(parameter ``...router.table`` in a checkpoint; per-step and dispatched routers hold several).
An agent's policy is one distribution over the actions per depth, concatenated over depths; the
similarity of two agents is the cosine of their policy vectors.

Which policy: ``"greedy"`` (the default) is the one-hot argmax per depth, the action the trained
router takes at evaluation whatever the learner (Q-values, advantages, logits and WPL
probabilities all pick their greedy action by argmax; tied maxima, as in untrained rows, are
spread uniformly because the routers break ties at random); two greedy agents' cosine is the
fraction of depths where they choose the same module. ``"softmax"`` is ``softmax(table / temperature)``, the
learner's own policy for policy-gradient tables (logits); ``"table"`` uses the rows themselves,
clipped at 0 and normalised: the policy of WPL, whose table is the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..serialization import load_safetensors, load_state_dict

__all__ = ["POLICY_KINDS", "router_tables", "table_policies", "policy_cosine"]

POLICY_KINDS = ("greedy", "softmax", "table")


def router_tables(state_dict: Mapping[str, Any] | str | Path) -> dict[str, np.ndarray]:
    """The tabular routers' tables ``[agents, depth, actions]`` of a state dict, or of a saved model
    (a folder or its ``model.safetensors``; a ``model.pt`` of older run folders is read weights-only).

    Keys are the parameter names without the trailing ``.table`` (e.g. ``encoder.projection.router``).
    A truncated or foreign file raises :class:`~nli_routing.serialization.CheckpointError` naming it.
    """
    if isinstance(state_dict, (str, Path)):
        path = Path(state_dict)
        if path.is_dir():
            path = path / "model.safetensors"
        state_dict = load_safetensors(path) if path.suffix == ".safetensors" else load_state_dict(path)
    out = {}
    for key, value in state_dict.items():
        if key == "table" or key.endswith(".table"):
            arr = torch.as_tensor(value).detach().float().cpu().numpy()
            if arr.ndim == 3:
                out[key[: -len(".table")] if key.endswith(".table") else key] = arr
    return out


def table_policies(table: Any, kind: str = "greedy", temperature: float = 1.0) -> np.ndarray:
    """Policies ``[agents, depth, actions]`` of a table (see the module docstring for ``kind``)."""
    t = np.asarray(table, dtype=float)
    if t.ndim != 3:
        raise ValueError(f"a router table has shape [agents, depth, actions], got {t.shape}")
    if kind == "greedy":  # ties (untrained rows) are broken at random by the routers: uniform over them
        best = (t == t.max(-1, keepdims=True)).astype(float)
        return best / best.sum(-1, keepdims=True)
    if kind == "softmax":
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        z = t / temperature
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if kind == "table":
        p = np.clip(t, 0.0, None)
        s = p.sum(-1, keepdims=True)
        return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / t.shape[-1])
    raise ValueError(f"policy kind must be one of {POLICY_KINDS}, got {kind!r}")


def policy_cosine(
    table: Any,
    names: Sequence[str] | None = None,
    agents: Sequence[int] | None = None,
    kind: str = "greedy",
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Cosine similarity ``[A, A]`` between the agents' policies (each flattened over depths).

    ``agents`` selects rows of the table (e.g. the meta classes present in the data; default
    all), ``names`` names every row. Returns ``classes``, ``cosine``, ``greedy`` (each agent's
    greedy action per depth) and ``kind``.
    """
    t = np.asarray(table, dtype=float)
    rows = list(range(t.shape[0])) if agents is None else [int(a) for a in agents]
    labels = list(names) if names is not None else [f"agent {i}" for i in range(t.shape[0])]
    if len(labels) != t.shape[0]:
        raise ValueError(f"{len(labels)} names for {t.shape[0]} agents")
    pol = table_policies(t[rows], kind, temperature).reshape(len(rows), -1)
    norm = np.linalg.norm(pol, axis=1, keepdims=True)
    unit = pol / np.where(norm > 0, norm, 1.0)
    return {
        "classes": [labels[r] for r in rows],
        "cosine": unit @ unit.T,
        "greedy": t[rows].argmax(-1),
        "kind": kind,
    }
