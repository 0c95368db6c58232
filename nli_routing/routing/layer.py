"""The routed layer: a router picks one function block per sample and step, executed in groups.

Decisions go through :class:`~nli_routing.routing.decision.RoutingPass`, execution through the
implementations of :mod:`nli_routing.routing.execution` (eager module lists, grouped matmul).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .bank import LinearBank
from .decision import RoutingPass, chosen_weight, mean_state, segment_mean
from .execution import grouped_apply, per_sample, sorted_apply
from .native import routed_path
from .routers import Router
from .trajectory import Decision, Trajectory

__all__ = ["RoutedLayer", "grouped_apply", "mean_state", "segment_mean", "sorted_apply"]


class RoutedLayer(nn.Module):
    """A set of function blocks and a router that picks one block per sample and step.

    * ``recursive=True``: up to ``depth`` steps through the same block list ``blocks``.
    * ``recursive=False`` (per-step): ``blocks`` is a list of ``depth`` block lists, one per step,
      all of the same width.
    * ``allow_stop``: adds a stop action (index ``width``): the sample keeps its current activation
      and takes no further decisions. Requires blocks that keep the activation's shape.
    * ``allow_pass``: adds a PASS action (the ICLR paper's and thesis 3.4.2's skip; index ``width``,
      or ``width + 1`` after stop): the sample keeps its activation for this step and goes on deciding
      at the next. Requires blocks that keep the activation's shape; not with relaxed routers.

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
        allow_pass: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.recursive = recursive
        self.allow_stop = allow_stop
        self.allow_pass = allow_pass
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
        self.num_actions = self.width + int(allow_stop) + int(allow_pass)
        if router.num_actions != self.num_actions:
            raise ValueError(
                f"router has {router.num_actions} actions but the layer needs {self.num_actions} "
                f"({self.width} blocks{' + stop' if allow_stop else ''}{' + pass' if allow_pass else ''})"
            )
        if allow_pass and router.relaxed:
            raise ValueError("the PASS action (allow_pass) does not work with relaxed routers (gumbel, relax): a "
                             "passed sample's output would carry no gradient to its choice")
        self.router = router

    @property
    def block_sets(self) -> int:
        """Number of distinct block sets the actions index: 1 when recursive, else one per depth."""
        return 1 if self.recursive else self.depth

    @property
    def stop_action(self) -> int | None:
        return self.width if self.allow_stop else None

    @property
    def pass_action(self) -> int | None:
        return self.width + int(self.allow_stop) if self.allow_pass else None

    @property
    def keeps_rows(self) -> bool:
        """Whether some rows keep their activation at a step (stop or pass): the identity group."""
        return self.allow_stop or self.allow_pass

    def identity_groups(self, groups: Tensor, actions: Tensor) -> Tensor:
        """``groups`` with the rows that chose PASS sent to the identity group (``width``)."""
        if not self.allow_pass:
            return groups
        return groups.masked_fill(actions == self.pass_action, self.width)

    def step_blocks(self, t: int) -> Sequence[nn.Module]:
        return self.blocks if self.recursive else self.blocks[t]

    @staticmethod
    def relaxed_scale(dec: Decision) -> Tensor:
        """``[B]`` straight-through weight of each sample's chosen action (1 in value)."""
        return chosen_weight(dec)

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
        return x * per_sample(w, x)

    def batch_size(self, x: Tensor, meta: Tensor | None, segments: Tensor | None) -> int:
        """Samples in the batch (rows of ``x``, or of ``meta`` for packed input)."""
        if segments is not None and meta is None:
            raise ValueError("packed input (segments=...) needs meta [B] to know the batch size")
        return x.shape[0] if segments is None else meta.shape[0]

    def forward(
        self, x: Tensor, meta: Tensor | None, mask: Tensor | None = None, segments: Tensor | None = None
    ) -> tuple[Tensor, Trajectory]:
        rp, path = self.start_pass(meta)
        if path is not None:
            return self.forward_path(x, rp, segments, path)
        return self.forward_steps(x, rp, mask, segments)

    def start_pass(self, meta: Tensor | None) -> tuple[RoutingPass, Decision | None]:
        """This forward call's routing pass and, for routers that decide every step at once, the path."""
        rp = RoutingPass(self.router, meta, self.stop_action, self.state_fn)
        return rp, rp.decide_path(self.depth)

    def forward_rows(
        self, make_rows: Callable[[Tensor | None], Tensor], meta: Tensor, segments: Tensor
    ) -> tuple[Tensor, Tensor | None, Trajectory]:
        """Packed rows in an order of the layer's choosing: returns ``(y, perm, trajectory)`` with
        ``y[i]`` the output of input row ``perm[i]`` (``perm`` None: input order).

        ``make_rows(index)`` builds the input rows ``index`` (None: all, in input order), e.g. an
        embedding of token ids: when the router decides every step at once (tabular agents, fixed
        routes), the rows are made directly in the first step's order and the output stays in the
        last step's, so neither the input nor the output rows are gathered; a caller that pools
        rows per sample only permutes its segment ids (``segments[perm]``). Other routers read the
        activation: the rows are made in input order and run through :meth:`forward`.
        """
        rp, path = self.start_pass(meta)
        if path is None:
            y, traj = self.forward_steps(make_rows(None), rp, None, segments)
            return y, None, traj
        return self.forward_path(None, rp, segments, path, make_rows=make_rows)

    def forward_steps(
        self, x: Tensor, rp: RoutingPass, mask: Tensor | None, segments: Tensor | None
    ) -> tuple[Tensor, Trajectory]:
        """One decision per step, each on the activation the previous step produced."""
        b = self.batch_size(x, rp.meta, segments)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        scales: list[Tensor] = []
        for t in range(self.depth):
            dec = rp.decide(t, x, mask, segments, active)
            groups = self.identity_groups(dec.actions.masked_fill(~active, self.width), dec.actions)
            scale = rp.scale(dec)
            if scale is not None:
                scales.append(scale)
            if segments is not None:
                groups = groups[segments]
                scale = None if scale is None else scale[segments]
            x = grouped_apply(x, groups, self.step_blocks(t), scale, identity=self.keeps_rows)
            if self.allow_stop:
                active = active & (dec.actions != self.width)
        traj = rp.trajectory(self.depth)
        if rp.relaxed and self.allow_stop:
            x = self.scale_stopped(x, traj.actions, traj.active, torch.stack(scales, 1), segments)
        return x, traj

    def dense_steps(self, depth: int) -> bool:
        """Whether every step's blocks are :class:`LinearBank` s that run densely
        (:meth:`LinearBank.uses_dense`): then the path needs no sort at all."""
        return all(isinstance(self.step_blocks(t), LinearBank) and self.step_blocks(t).uses_dense()
                   for t in range(depth))

    def forward_path(
        self, x: Tensor | None, rp: RoutingPass, segments: Tensor | None, path: Decision,
        make_rows: Callable[[Tensor | None], Tensor] | None = None,
    ) -> tuple[Tensor, Trajectory] | tuple[Tensor, Tensor, Trajectory]:
        """Run a path decided ahead for every step (``path`` tensors ``[B, depth, ...]``).

        All steps' orders come from one batched sort; the rows go from one step's order to the next
        with one gather (no sort and unsort per step), and the input order is restored once at the end.
        Nothing is read back to the host when the blocks are :class:`LinearBank` s.
        ``make_rows`` (:meth:`forward_rows`; ``x`` None): the rows are made in the first step's order
        and returned in the last step's, with that order: ``(y, perm, trajectory)``.
        """
        actions = path.actions
        depth = actions.shape[1]
        if self.allow_stop:  # a sample is active until the step after its stop action
            stop = (actions == self.width).to(torch.int32)
            active = (stop.cumsum(1) - stop) == 0
            groups = actions.masked_fill(~active, self.width)
        else:  # every step taken: nothing to mask
            active = torch.ones_like(actions, dtype=torch.bool)
            groups = actions
        groups = self.identity_groups(groups, actions)
        traj = rp.path_trajectory(path, active, masked=self.allow_stop)
        scale = rp.scale(path)
        row_scale = scale  # per row of x (packed input: per token)
        if segments is not None:
            groups = groups.index_select(0, segments)
            row_scale = None if scale is None else scale.index_select(0, segments)
        n = groups.shape[0]
        if self.dense_steps(depth):
            x = make_rows(None) if make_rows is not None else x
            for t in range(depth):
                x = self.step_blocks(t).dense_forward(
                    x, groups[:, t], None if row_scale is None else row_scale[:, t], identity=self.keeps_rows)
            if scale is not None and self.allow_stop:
                x = self.scale_stopped(x, actions, active, scale, segments)
            if make_rows is not None:
                return x, None, traj
            return x, traj
        banks = [self.step_blocks(t) for t in range(depth)]
        if (row_scale is None and not self.keeps_rows and all(isinstance(b, LinearBank) for b in banks)
                and all(b.runs_native_path(x if x is not None else b.weight[0]) for b in banks)):
            rows = make_rows(None) if make_rows is not None else x
            # the whole path as one native operator (rows made here: checked again, they may differ from the weights)
            if make_rows is None or all(b.runs_native_path(rows) for b in banks):
                x = routed_path(rows, groups, banks)
                if make_rows is not None:
                    return x, None, traj
                return x, traj
            if make_rows is not None:  # rows of another dtype than the banks': the sorted path, rows made once
                made = rows
                make_rows = lambda index: made if index is None else made.index_select(0, index)
        # every step's order at once: order[t] lists the input rows sorted by step t's block (input
        # order within a block), inv[t] is each input row's position in it
        sorted_g, order = torch.sort(groups.t().contiguous(), dim=1, stable=True)
        inv = moves = None
        if depth > 1 or make_rows is None:
            inv = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(depth, n))
            moves = inv[:-1].gather(1, order[1:]) if depth > 1 else None  # rows in order t-1 -> order t
        offsets = None
        if all(isinstance(self.step_blocks(t), LinearBank) for t in range(depth)):
            offsets = LinearBank.group_offsets(sorted_g, self.width)
        for t in range(depth):
            if t > 0:
                x = x.index_select(0, moves[t - 1])
            elif make_rows is not None:
                x = make_rows(order[0])
            else:
                x = x.index_select(0, order[0])
            x = sorted_apply(
                x,
                sorted_g[t],
                self.step_blocks(t),
                None if row_scale is None else row_scale[:, t].index_select(0, order[t]),
                identity=self.keeps_rows,
                offsets=None if offsets is None else offsets[t],
            )
        if make_rows is not None:
            perm = order[-1]
            if scale is not None and self.allow_stop:
                rows = perm if segments is None else segments.index_select(0, perm)
                x = self.scale_stopped(x, actions, active, scale, rows)
            return x, perm, traj
        x = x.index_select(0, inv[-1])
        if scale is not None and self.allow_stop:
            x = self.scale_stopped(x, actions, active, scale, segments)
        return x, traj
