"""Baselines from "Re-examining Routing Networks": fixed random routes and a soft mixture of experts."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bank import LinearBank
from .layer import RoutedLayer
from .learners import Learner
from .routers import Router
from .trajectory import Decision, Trajectory, check_range


class NoUpdateLearner(Learner):
    """Greedy selection and a zero loss that needs no update (not registered: for baselines only)."""

    name = "none"

    def select(self, values, epsilon, generator=None):
        actions = values.detach().argmax(-1)
        return actions, torch.zeros_like(actions, dtype=torch.bool), {}

    def loss(self, trajectory: Trajectory) -> Tensor:
        return torch.zeros((), device=trajectory.actions.device)


def _check_meta_range(meta: Tensor, num_meta: int) -> None:
    check_range(meta, num_meta, "meta labels", f"this router's {num_meta} meta classes")


class FixedRandomRouter(Router):
    """Each meta label's route (one action per depth) is drawn once from ``seed`` and never trained.

    The routes are a buffer ``routes [num_meta, depth]`` (saved in checkpoints, no parameters);
    ``explored`` is always False and :meth:`loss` is a constant zero. Actions are drawn uniformly
    from ``[0, choices)`` (default: all ``num_actions``, the stop action included; pass the
    number of blocks to never stop). ``meta=None`` routes every sample with label 0's route.
    """

    indexes_states = True

    def __init__(
        self, num_meta: int, depth: int, num_actions: int, seed: int = 0, choices: int | None = None
    ) -> None:
        super().__init__(num_actions, NoUpdateLearner(), "none", seed)
        choices = num_actions if choices is None else choices
        if num_meta < 1 or depth < 1 or not 1 <= choices <= num_actions:
            raise ValueError(
                f"need num_meta, depth >= 1 and 1 <= choices <= {num_actions}; got {num_meta}, {depth}, {choices}"
            )
        self.num_meta = num_meta
        self.depth = depth
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("routes", torch.randint(0, choices, (num_meta, depth), generator=gen))

    def _meta(self, state: Tensor | None, meta: Tensor | None) -> Tensor:
        if meta is not None:
            return meta
        if state is None:
            raise ValueError("FixedRandomRouter needs meta labels or a state to know the batch size")
        return torch.zeros(state.shape[0], dtype=torch.long, device=self.routes.device)

    def values(self, state: Tensor, meta: Tensor | None, depth: int) -> tuple[Tensor, Tensor]:
        """One-hot of the fixed route (no graph): the greedy action is the route."""
        if depth >= self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        m = self._meta(state, meta)
        return F.one_hot(self.routes[m, depth], self.num_actions).float(), m * self.depth + depth

    def decide(self, state: Tensor, meta: Tensor | None, depth: int) -> Decision:
        values, index = self.values(state, meta, depth)
        actions = self.routes[self._meta(state, meta), depth]
        explored = torch.zeros_like(actions, dtype=torch.bool)
        return Decision(actions=actions, explored=explored, values=values, state_index=index)

    def check_meta(self, meta: Tensor) -> None:
        _check_meta_range(meta, self.num_meta)

    def decide_path(self, meta: Tensor | None, depth: int) -> Decision | None:
        if meta is None:
            return None  # the batch size comes from the state: decide step by step
        if depth > self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        actions = self.routes[meta, :depth]
        index = meta.unsqueeze(1) * self.depth + torch.arange(depth, device=meta.device)
        values = F.one_hot(actions, self.num_actions).float()
        return Decision(actions=actions, explored=torch.zeros_like(actions, dtype=torch.bool), values=values,
                        state_index=index)

    def greedy_policy(self) -> Tensor:
        """``[num_meta, depth]`` the fixed routes."""
        return self.routes.clone()


class SoftGate(Router):
    """Gate logits ``gate [num_meta, depth, K]`` of a :class:`SoftMixtureLayer` (router-shaped).

    Trained by the task loss through the mixture (no reinforcement learning): :meth:`loss` is
    zero. Decisions report the argmax of the gate (for analysis) and ``extra["mixture"]``, the
    softmax mixture weights ``[B, K]`` with their graph.
    """

    indexes_states = True

    def __init__(self, num_meta: int, depth: int, num_actions: int, init_std: float = 0.0) -> None:
        super().__init__(num_actions, NoUpdateLearner(), "none")
        if num_meta < 1 or depth < 1:
            raise ValueError(f"need num_meta >= 1 and depth >= 1, got {num_meta}, {depth}")
        self.num_meta = num_meta
        self.depth = depth
        self.gate = nn.Parameter(torch.randn(num_meta, depth, num_actions) * init_std)

    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        if depth >= self.depth:
            raise ValueError(f"depth {depth} is beyond this gate's {self.depth} steps")
        return self.gate[meta, depth], meta * self.depth + depth

    def decide(self, state: Tensor, meta: Tensor, depth: int) -> Decision:
        values, index = self.values(state, meta, depth)
        actions = values.detach().argmax(-1)
        explored = torch.zeros_like(actions, dtype=torch.bool)
        return Decision(actions, explored, values, index, {"mixture": torch.softmax(values, -1)})

    def check_meta(self, meta: Tensor) -> None:
        _check_meta_range(meta, self.num_meta)

    def greedy_policy(self) -> Tensor:
        return self.gate.detach().argmax(-1)


class SoftMixtureLayer(RoutedLayer):
    """Soft mixture: at every depth ``y = sum_k softmax(gate[meta, t])_k * block_k(x)``.

    A drop-in for :class:`RoutedLayer` in the 'soft' comparison: same constructor layout (blocks
    per step when ``recursive=False``), same ``forward(x, meta, mask=None, segments=None)`` and
    ``(y, trajectory)`` return (actions = argmax of the gate, never stopping). Every block runs on
    every sample (that is the point of the comparison). The gate (``self.router.gate``) is
    trained by the task loss; the router loss is zero. ``meta=None`` uses gate row 0.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module] | Sequence[Sequence[nn.Module]],
        depth: int,
        num_meta: int = 1,
        recursive: bool = True,
        init_std: float = 0.0,
    ) -> None:
        width = len(blocks) if recursive else len(blocks[0])
        super().__init__(blocks, SoftGate(num_meta, depth, width, init_std), depth, recursive, allow_stop=False)

    def forward(
        self, x: Tensor, meta: Tensor | None, mask: Tensor | None = None, segments: Tensor | None = None
    ) -> tuple[Tensor, Trajectory]:
        b = self.batch_size(x, meta, segments)
        if meta is None:
            meta = torch.zeros(b, dtype=torch.long, device=x.device)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        decisions: list[Decision] = []
        for t in range(self.depth):
            dec = self.router.decide(None, meta, t)
            decisions.append(dec)
            w = dec.extra["mixture"] if segments is None else dec.extra["mixture"][segments]
            blocks = self.step_blocks(t)
            if isinstance(blocks, LinearBank) and x.dim() == 2:  # every block at once: [N, K, out]
                x = torch.einsum("nk,nko->no", w.to(x.dtype), blocks.all_blocks(x))
                continue
            out = None
            for k, block in enumerate(blocks):
                yk = block(x)
                yk = yk * w[:, k].to(yk.dtype).view(-1, *([1] * (yk.dim() - 1)))
                out = yk if out is None else out + yk
            x = out
        return x, Trajectory.from_decisions(meta, decisions, [active] * self.depth, None)
