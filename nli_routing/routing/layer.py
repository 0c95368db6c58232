"""The routed layer: a router picks one function block per sample and step, executed in groups."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .bank import LinearBank, inverse_permutation
from .learners import RELAXED_WEIGHTS
from .routers import Router
from .trajectory import Decision, Trajectory


def _per_sample(scale: Tensor, like: Tensor) -> Tensor:
    """``scale [B]`` reshaped to broadcast over ``like [B, ...]``."""
    return scale.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def sorted_apply(
    xs: Tensor,
    sorted_groups: Tensor,
    blocks: Sequence[nn.Module] | LinearBank,
    scale: Tensor | None = None,
    identity: bool = True,
    counts: list[int] | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Run rows already sorted by group (``sorted_groups`` ascending) through their blocks, in order.

    ``xs [N, ...]``: group ``g < len(blocks)`` goes through ``blocks[g]``, group ``len(blocks)`` is
    kept as it is (stopped). A :class:`~nli_routing.routing.bank.LinearBank` runs all groups in one
    grouped matmul (no host synchronisation; token-level rows ``[N, T, D]`` are flattened); other
    blocks run once per non-empty group on a contiguous slice (the group sizes are read on the host:
    ``counts`` may pass them). ``scale [N]`` multiplies each computed row (relaxed routers).
    ``offsets``: a bank's group offsets (:meth:`LinearBank.group_offsets`), when already known.
    """
    if isinstance(blocks, LinearBank):
        if xs.dim() == 2:
            return blocks.sorted_forward(xs, sorted_groups, scale, identity, offsets)
        rows = xs.shape[1:-1].numel()  # token-level [N, ..., D]: every token follows its sample
        y = blocks.sorted_forward(
            xs.reshape(-1, xs.shape[-1]),
            sorted_groups.repeat_interleave(rows),
            None if scale is None else scale.repeat_interleave(rows),
            identity,
        )
        return y.view(*xs.shape[:-1], y.shape[-1])
    n = len(blocks)
    if counts is None:
        counts = torch.bincount(sorted_groups.clamp(max=n), minlength=n + 1).tolist()
    outs, start = [], 0
    for g, c in enumerate(counts):
        if not c:
            continue
        chunk = xs.narrow(0, start, c)
        if g < n:
            y = blocks[g](chunk)
            if scale is not None:
                y = y * _per_sample(scale.narrow(0, start, c), y)
            chunk = y
        outs.append(chunk)
        start += c
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def grouped_apply(
    x: Tensor,
    groups: Tensor,
    blocks: Sequence[nn.Module] | LinearBank,
    scale: Tensor | None = None,
    identity: bool = True,
) -> Tensor:
    """Apply ``blocks[g]`` to the samples of group g, each block once on its whole group.

    ``x [B, ...]`` (any trailing shape: every token of a sample follows the sample's block),
    ``groups [B]`` long in ``[0, len(blocks)]``; group ``len(blocks)`` (or higher) is the identity
    (stopped samples: no computation, activation kept). Samples are sorted by group, run through
    their blocks in contiguous groups (:func:`sorted_apply`) and put back with the inverse
    permutation, so the result and its gradients equal running every sample alone through its block.

    ``scale [B]`` (optional): each computed block output is multiplied by its sample's scale
    (stopped samples stay unscaled). Relaxed routers pass straight-through weights (1 in value)
    here so that the task loss reaches their logits.

    A :class:`~nli_routing.routing.bank.LinearBank` needs no host synchronisation
    (``identity=False`` promises that no sample is stopped); other blocks read the group sizes
    (one synchronisation), and a batch that takes a single block skips the sorting.
    """
    counts = None
    if not isinstance(blocks, LinearBank):
        n = len(blocks)
        groups = groups.clamp(max=n)
        counts = torch.bincount(groups, minlength=n + 1).tolist()
        nonempty = [g for g, c in enumerate(counts) if c]
        if len(nonempty) == 1:  # the whole batch takes one block (or stops): no sorting needed
            g = nonempty[0]
            if g == n:
                return x
            y = blocks[g](x)
            return y if scale is None else y * _per_sample(scale, y)
    else:
        groups = groups.clamp(max=len(blocks))
    sorted_groups, order = torch.sort(groups, stable=True)
    y = sorted_apply(
        x.index_select(0, order),
        sorted_groups,
        blocks,
        None if scale is None else scale.index_select(0, order),
        identity,
        counts,
    )
    return y.index_select(0, inverse_permutation(order))


def segment_mean(x: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Mean of the rows of ``x [N, D]`` per segment id in ``segments [N]`` -> ``[num_segments, D]``."""
    total = x.new_zeros(num_segments, *x.shape[1:]).index_add_(0, segments, x)
    count = torch.bincount(segments, minlength=num_segments).clamp_min(1).to(x.dtype)
    return total / count.view(-1, *([1] * (x.dim() - 1)))


def mean_state(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pool a token-level activation ``[B, T, D]`` to ``[B, D]`` (masked mean); ``[B, D]`` passes."""
    if x.dim() == 2:
        return x
    if mask is None:
        return x.flatten(1, -2).mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class RoutedLayer(nn.Module):
    """A set of function blocks and a router that picks one block per sample and step.

    * ``recursive=True``: up to ``depth`` steps through the same block list ``blocks``.
    * ``recursive=False`` (per-step): ``blocks`` is a list of ``depth`` block lists, one per step,
      all of the same width.
    * ``allow_stop``: adds a stop action (index ``width``): the sample keeps its current activation
      and takes no further decisions. Requires blocks that keep the activation's shape.

    ``forward(x, meta, mask=None, segments=None)`` returns ``(output, trajectory)``. ``x`` is
    ``[B, D]`` or token-level ``[B, T, D]`` (all tokens of a sample follow the sample's path);
    ``mask [B, T]`` only matters for routers that read the activation (pooled as a masked mean).
    Packed token-level input: ``x [N, D]`` holds the real tokens of all samples and
    ``segments [N]`` names each row's sample; decisions are still one per sample (``meta [B]``),
    and no padding is computed.

    Relaxed routers (``router.relaxed``, e.g. the ``"gumbel"`` and ``"relax"`` learners): each
    sample's block output is multiplied by the straight-through weight of its chosen action
    (1 in value, the soft gradient in the backward), so ``task_loss.backward()`` reaches the
    router's logits at the cost of one block per sample (see :meth:`relaxed_scale`); a sample that
    chooses stop is multiplied by the stop action's weight (:meth:`scale_stopped`).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module] | Sequence[Sequence[nn.Module]],
        router: Router,
        depth: int,
        recursive: bool = True,
        allow_stop: bool = False,
        state_fn: Callable[[Tensor, Tensor | None], Tensor] = mean_state,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.recursive = recursive
        self.allow_stop = allow_stop
        self.state_fn = state_fn
        if recursive:
            self.blocks = blocks if isinstance(blocks, LinearBank) else nn.ModuleList(blocks)
            self.width = len(self.blocks)
        else:
            if len(blocks) != depth:
                raise ValueError(f"per-step mode needs one block list per depth ({depth}), got {len(blocks)}")
            self.blocks = nn.ModuleList(
                step if isinstance(step, LinearBank) else nn.ModuleList(step) for step in blocks
            )
            widths = {len(step) for step in self.blocks}
            if len(widths) != 1:
                raise ValueError(f"per-step block lists must have the same width, got {sorted(widths)}")
            self.width = widths.pop()
        if self.width < 1:
            raise ValueError("a routed layer needs at least one block")
        self.num_actions = self.width + int(allow_stop)
        if router.num_actions != self.num_actions:
            raise ValueError(
                f"router has {router.num_actions} actions but the layer needs {self.num_actions} "
                f"({self.width} blocks{' + stop' if allow_stop else ''})"
            )
        self.router = router

    @property
    def block_sets(self) -> int:
        """Number of distinct block sets the actions index: 1 when recursive, else one per depth."""
        return 1 if self.recursive else self.depth

    @property
    def stop_action(self) -> int | None:
        return self.width if self.allow_stop else None

    def step_blocks(self, t: int) -> Sequence[nn.Module]:
        return self.blocks if self.recursive else self.blocks[t]

    @staticmethod
    def relaxed_scale(dec: Decision) -> Tensor:
        """``[B]`` straight-through weight of each sample's chosen action (1 in value).

        Only the chosen action's weight enters the forward, so the task loss differentiates the
        relaxed sample through that entry (the standard cheap straight-through estimator).
        """
        w = dec.extra.get(RELAXED_WEIGHTS)
        if w is None:
            raise ValueError(
                f"a relaxed router must return extra[{RELAXED_WEIGHTS!r}] (straight-through weights)"
            )
        return w.gather(1, dec.actions.clamp(0, w.shape[1] - 1).unsqueeze(1)).squeeze(1)

    def scale_stopped(
        self, x: Tensor, actions: Tensor, active: Tensor, scale: Tensor, segments: Tensor | None
    ) -> Tensor:
        """Multiply the rows of samples that chose the stop action by that action's straight-through
        weight (1 in value), so a relaxed router's task-loss gradient reaches the stop logit like any
        block's. ``actions``, ``active``, ``scale``: ``[B, d]``, the chosen action's weight per step. A
        stopped sample's activation stays the same after it stops, so scaling the final output equals
        scaling at the stop step."""
        stopping = active & (actions == self.width)
        w = torch.where(stopping, scale, torch.ones_like(scale)).prod(1)  # at most one stop per sample
        if segments is not None:
            w = w.index_select(0, segments)
        return x * _per_sample(w, x)

    def batch_size(self, x: Tensor, meta: Tensor | None, segments: Tensor | None) -> int:
        """Samples in the batch (rows of ``x``, or of ``meta`` for packed input); checks the meta labels."""
        if segments is not None and meta is None:
            raise ValueError("packed input (segments=...) needs meta [B] to know the batch size")
        if meta is not None and hasattr(self.router, "check_meta"):
            self.router.check_meta(meta)
        return x.shape[0] if segments is None else meta.shape[0]

    def forward(
        self, x: Tensor, meta: Tensor | None, mask: Tensor | None = None, segments: Tensor | None = None
    ) -> tuple[Tensor, Trajectory]:
        b = self.batch_size(x, meta, segments)
        if not getattr(self.router, "reads_state", False):
            path = self.router.decide_path(meta, self.depth)
            if path is not None:
                return self.forward_path(x, meta, segments, path)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        decisions: list[Decision] = []
        actives: list[Tensor] = []
        scales: list[Tensor] = []
        reads_state = getattr(self.router, "reads_state", False)
        relaxed = bool(getattr(self.router, "relaxed", False))
        for t in range(self.depth):
            if not reads_state:
                state = x
            elif segments is None:
                state = self.state_fn(x, mask)
            else:
                state = segment_mean(x, segments, b)
            dec = self.router.decide(state, meta, t)
            groups = dec.actions.masked_fill(~active, self.width)
            decisions.append(dec)
            actives.append(active)
            scale = self.relaxed_scale(dec) if relaxed else None
            if scale is not None:
                scales.append(scale)
            if segments is not None:
                groups = groups[segments]
                scale = None if scale is None else scale[segments]
            x = grouped_apply(x, groups, self.step_blocks(t), scale, identity=self.allow_stop)
            if self.allow_stop:
                active = active & (dec.actions != self.width)
        if relaxed and self.allow_stop:
            actions = torch.stack([d.actions for d in decisions], 1)
            x = self.scale_stopped(x, actions, torch.stack(actives, 1), torch.stack(scales, 1), segments)
        traj = Trajectory.from_decisions(
            meta if meta is not None else torch.zeros(b, dtype=torch.long, device=x.device),
            decisions,
            actives,
            self.stop_action,
            int(self.router.num_states),
        )
        return x, traj

    def forward_path(
        self, x: Tensor, meta: Tensor | None, segments: Tensor | None, path: Decision
    ) -> tuple[Tensor, Trajectory]:
        """Run a path decided ahead for every step (``path`` tensors ``[B, depth, ...]``).

        All steps' orders come from one batched sort; the rows go from one step's order to the next
        with one gather (no sort and unsort per step), and the input order is restored once at the end.
        Nothing is read back to the host when the blocks are :class:`LinearBank` s.
        """
        actions = path.actions
        b, depth = actions.shape
        if self.allow_stop:  # a sample is active until the step after its stop action
            stop = (actions == self.width).to(torch.int32)
            active = (stop.cumsum(1) - stop) == 0
        else:
            active = torch.ones_like(actions, dtype=torch.bool)
        groups = actions.masked_fill(~active, self.width)
        scale = None
        if getattr(self.router, "relaxed", False):
            w = path.extra.get(RELAXED_WEIGHTS)
            if w is None:
                raise ValueError(
                    f"a relaxed router must return extra[{RELAXED_WEIGHTS!r}] (straight-through weights)"
                )
            scale = w.gather(2, actions.clamp(0, w.shape[2] - 1).unsqueeze(2)).squeeze(2)
        row_scale = scale  # per row of x (packed input: per token)
        if segments is not None:
            groups = groups.index_select(0, segments)
            row_scale = None if scale is None else scale.index_select(0, segments)
        n = groups.shape[0]
        # every step's order at once: order[t] lists the input rows sorted by step t's block (input
        # order within a block), inv[t] is each input row's position in it
        sorted_g, order = torch.sort(groups.t().contiguous(), dim=1, stable=True)
        inv = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(depth, n))
        moves = inv[:-1].gather(1, order[1:]) if depth > 1 else None  # rows in order t-1 -> order t
        offsets = None
        if all(isinstance(self.step_blocks(t), LinearBank) for t in range(depth)):
            offsets = LinearBank.group_offsets(sorted_g, self.width)
        for t in range(depth):
            x = sorted_apply(
                x.index_select(0, order[0] if t == 0 else moves[t - 1]),
                sorted_g[t],
                self.step_blocks(t),
                None if row_scale is None else row_scale[:, t].index_select(0, order[t]),
                identity=self.allow_stop,
                offsets=None if offsets is None else offsets[t],
            )
        x = x.index_select(0, inv[-1])
        if scale is not None and self.allow_stop:
            x = self.scale_stopped(x, actions, active, scale, segments)
        traj = Trajectory(
            meta=meta if meta is not None else torch.zeros(b, dtype=torch.long, device=x.device),
            actions=actions.masked_fill(~active, -1),
            explored=path.explored & active,
            active=active,
            values=path.values,
            state_index=path.state_index,
            extra=path.extra,
            num_actions=int(path.values.shape[-1]),
            stop_action=self.stop_action,
            num_states=int(self.router.num_states) if path.state_index is not None else 0,
        )
        return x, traj
