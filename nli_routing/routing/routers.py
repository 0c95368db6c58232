"""Routers: they estimate values for the actions of a decision state and return decisions.

A router owns its decision-making algorithm (a :class:`~nli_routing.routing.learners.Learner`,
chosen by name) and an exploration schedule; the learner owns the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .exploration import ExplorationSchedule, get_schedule
from .learners import Learner, build_learner
from .trajectory import Decision, Trajectory


class Router(nn.Module):
    """Base class. Subclasses implement :meth:`values` (``[B, A]`` estimates for a state)."""

    def __init__(
        self,
        num_actions: int,
        learner: str | Learner = "qlearning",
        exploration: str | ExplorationSchedule | dict = "med",
        seed: int = 0,
        learner_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"a router needs at least one action, got {num_actions}")
        self.num_actions = num_actions
        self.learner = build_learner(learner, **(learner_kwargs or {}))
        self.schedule = get_schedule(exploration)
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def epsilon(self) -> float:
        """Current exploration rate (0 in eval mode)."""
        return self.schedule.epsilon(self.epoch) if self.training else 0.0

    def set_epoch(self, epoch: int) -> None:
        """Advance the exploration schedule to ``epoch``."""
        self.epoch = int(epoch)

    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor | None]:
        """Return ``(values [B, A], state_index [B] or None)``."""
        raise NotImplementedError

    def decide(self, state: Tensor, meta: Tensor, depth: int) -> Decision:
        """One decision per sample of the batch at ``depth``."""
        values, state_index = self.values(state, meta, depth)
        actions, explored, extra = self.learner.select(values, self.epsilon, self.generator)
        return Decision(actions=actions, explored=explored, values=values, state_index=state_index, extra=extra)

    def loss(self, trajectory: Trajectory) -> Tensor:
        """The router loss of one trajectory (delegated to the learner)."""
        return self.learner.loss(trajectory)

    def get_extra_state(self) -> dict:
        return {"epoch": self.epoch, "generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])


class TabularRouter(Router):
    """Multi-agent tabular router: one table of action values per meta label (task) and depth.

    ``table[m, t, a]`` is agent m's estimate for action a at depth t. Meta labels must lie in
    ``[0, num_meta)``; anything else is an error naming the offending values.
    """

    def __init__(
        self,
        num_meta: int,
        depth: int,
        num_actions: int,
        learner: str | Learner = "qlearning",
        exploration: str | ExplorationSchedule | dict = "med",
        init: float = 0.0,
        seed: int = 0,
        learner_kwargs: dict | None = None,
    ) -> None:
        super().__init__(num_actions, learner, exploration, seed, learner_kwargs)
        if num_meta < 1 or depth < 1:
            raise ValueError(f"need num_meta >= 1 and depth >= 1, got {num_meta}, {depth}")
        self.num_meta = num_meta
        self.depth = depth
        self.table = nn.Parameter(torch.full((num_meta, depth, num_actions), float(init)))

    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        if meta is None:
            raise ValueError("TabularRouter needs meta labels (meta=None was given)")
        if depth >= self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        return self.table[meta, depth], meta * self.depth + depth

    def check_meta(self, meta: Tensor) -> None:
        """Raise a clear error if a meta label is outside the table (e.g. unseen in training)."""
        bad = (meta < 0) | (meta >= self.num_meta)
        if bool(bad.any()):
            vals = sorted(set(meta[bad].tolist()))
            raise ValueError(
                f"meta labels {vals} are outside this router's {self.num_meta} agents "
                f"(valid: 0..{self.num_meta - 1}); a meta class unseen in training cannot be routed"
            )

    def greedy_policy(self) -> Tensor:
        """``[num_meta, depth]`` greedy action of every agent at every depth."""
        return self.table.detach().argmax(-1)
