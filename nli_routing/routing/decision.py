"""The decision loop: every routed part (routed layer, injected Transformer positions, routed LSTM
transforms) makes its decisions through one :class:`RoutingPass`.

A pass belongs to one forward call of one router: it checks the meta labels once, computes the
state a router reads (the activation pooled over tokens when ``router.reads_state``), asks the
router for one decision per sample and step, keeps each step's active mask and relaxed
straight-through weight, and stacks everything into the pass' :class:`Trajectory`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .learners import RELAXED_WEIGHTS
from .routers import Router
from .trajectory import Decision, Trajectory


def mean_state(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pool a token-level activation ``[B, T, D]`` to ``[B, D]`` (masked mean); ``[B, D]`` passes."""
    if x.dim() == 2:
        return x
    if mask is None:
        return x.flatten(1, -2).mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def segment_mean(x: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Mean of the rows of ``x [N, D]`` per segment id in ``segments [N]`` -> ``[num_segments, D]``."""
    total = x.new_zeros(num_segments, *x.shape[1:]).index_add_(0, segments, x)
    count = torch.bincount(segments, minlength=num_segments).clamp_min(1).to(x.dtype)
    return total / count.view(-1, *([1] * (x.dim() - 1)))


def chosen_weight(dec: Decision) -> Tensor:
    """``[B]`` (or ``[B, d]`` for a path) straight-through weight of each chosen action (1 in value).

    Only the chosen action's weight enters the forward, so the task loss differentiates a relaxed
    router through that entry (the standard cheap straight-through estimator).
    """
    w = dec.extra.get(RELAXED_WEIGHTS)
    if w is None:
        raise ValueError(f"a relaxed router must return extra[{RELAXED_WEIGHTS!r}] (straight-through weights)")
    a = dec.actions.clamp(0, w.shape[-1] - 1).unsqueeze(-1)
    return w.gather(-1, a).squeeze(-1)


class RoutingPass:
    """The decisions of one forward call of ``router`` (see module docstring).

    ``stop_action``: the action index that stops a sample (None: no stop). ``state_fn`` pools a
    token-level activation for routers that read it (default: masked mean).
    """

    def __init__(
        self,
        router: Router,
        meta: Tensor | None,
        stop_action: int | None = None,
        state_fn: Callable[[Tensor, Tensor | None], Tensor] = mean_state,
    ) -> None:
        if meta is not None:
            router.check_meta(meta)
        self.router = router
        self.meta = meta
        self.stop_action = stop_action
        self.state_fn = state_fn
        self.relaxed = bool(router.relaxed)
        self.decisions: dict[int, Decision] = {}
        self.actives: dict[int, Tensor] = {}

    def state(self, x: Tensor, mask: Tensor | None = None, segments: Tensor | None = None, batch_size: int = 0) -> Tensor:
        """What the router reads: ``x`` itself, or (``router.reads_state``) its pooled ``[B, D]`` form;
        packed rows (``segments [N]``) are averaged per sample."""
        if not self.router.reads_state:
            return x
        if segments is not None:
            return segment_mean(x, segments, batch_size)
        return self.state_fn(x, mask)

    def decide(
        self,
        t: int,
        x: Tensor,
        mask: Tensor | None = None,
        segments: Tensor | None = None,
        active: Tensor | None = None,
    ) -> Decision:
        """The decision of step ``t`` for the batch of activations ``x`` (``[B, ...]``, or packed
        ``[N, D]`` rows with ``segments``); ``active [B]``: samples that have not stopped."""
        if t in self.decisions:
            raise RuntimeError(f"routing step {t} was decided twice in one forward pass")
        if segments is None and self.meta is not None and self.meta.shape[0] != x.shape[0]:
            raise ValueError(f"meta has {self.meta.shape[0]} labels for a batch of {x.shape[0]} samples")
        b = x.shape[0] if segments is None else self.meta.shape[0]
        dec = self.router.decide(self.state(x, mask, segments, b), self.meta, t)
        self.decisions[t] = dec
        self.actives[t] = active if active is not None else torch.ones(b, dtype=torch.bool, device=x.device)
        return dec

    def decide_path(self, depth: int) -> Decision | None:
        """Every step at once (``[B, depth, ...]``) when the router can (tabular agents and fixed
        routes: no state to read); None otherwise."""
        if self.router.reads_state:
            return None
        return self.router.decide_path(self.meta, depth)

    def scale(self, dec: Decision) -> Tensor | None:
        """The chosen actions' straight-through weights of a relaxed router (None otherwise)."""
        return chosen_weight(dec) if self.relaxed else None

    def _meta(self, b: int, device: torch.device) -> Tensor:
        return self.meta if self.meta is not None else torch.zeros(b, dtype=torch.long, device=device)

    def trajectory(self, depth: int | None = None, names: list[str] | None = None) -> Trajectory | None:
        """The pass' decisions, steps ``0 .. depth - 1`` stacked (None when nothing was decided).
        ``names`` (one per step) name the missing steps in the error."""
        if not self.decisions:
            return None
        depth = len(self.decisions) if depth is None else depth
        missing = [t for t in range(depth) if t not in self.decisions]
        if missing:
            what = [names[t] for t in missing] if names else missing
            raise RuntimeError(f"routing steps {what} were not decided in this forward pass")
        decisions = [self.decisions[t] for t in range(depth)]
        first = decisions[0].actions
        return Trajectory.from_decisions(
            self._meta(first.shape[0], first.device),
            decisions,
            [self.actives[t] for t in range(depth)],
            self.stop_action,
            int(self.router.num_states),
        )

    def path_trajectory(self, path: Decision, active: Tensor, masked: bool = True) -> Trajectory:
        """The trajectory of a path decided at once (:meth:`decide_path`); ``active [B, depth]``.
        ``masked=False`` promises that every step is active (no stop action): nothing to mask."""
        actions = path.actions
        return Trajectory(
            meta=self._meta(actions.shape[0], actions.device),
            actions=actions.masked_fill(~active, -1) if masked else actions,
            explored=path.explored & active if masked else path.explored,
            active=active,
            values=path.values,
            state_index=path.state_index,
            extra=path.extra,
            num_actions=int(path.values.shape[-1]),
            stop_action=self.stop_action,
            num_states=int(self.router.num_states) if path.state_index is not None else 0,
            table=path.table if path.state_index is not None else None,
            table_version=path.table_version,
        )
