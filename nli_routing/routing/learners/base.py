"""Learner base class and the registry that maps config names to decision-making algorithms."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..trajectory import Trajectory

LEARNERS: dict[str, type["Learner"]] = {}


def register_learner(name: str) -> Callable[[type["Learner"]], type["Learner"]]:
    """Class decorator: make a learner selectable as ``learner="<name>"`` in configs."""

    def wrap(cls: type["Learner"]) -> type["Learner"]:
        if name in LEARNERS:
            raise ValueError(f"learner {name!r} is already registered")
        LEARNERS[name] = cls
        cls.name = name
        return cls

    return wrap


def build_learner(name: str | "Learner", **kwargs) -> "Learner":
    """Instantiate a registered learner by name (an instance is returned unchanged)."""
    if isinstance(name, Learner):
        return name
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; registered learners: {sorted(LEARNERS)}")
    return LEARNERS[name](**kwargs)


class Learner(nn.Module):
    """A decision-making algorithm: turns router estimates into actions and rewards into a loss.

    ``select`` gets the router's estimates ``values [B, A]`` for one step and returns the actions,
    whether each was exploratory, and any extra tensors the loss needs later. ``loss`` gets the
    whole trajectory (with rewards filled in) and returns a scalar for the router optimizer.
    """

    name = "base"

    def select(
        self, values: Tensor, epsilon: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def loss(self, trajectory: Trajectory) -> Tensor:
        raise NotImplementedError

    def greedy(self, values: Tensor) -> Tensor:
        """The action the learner would take without exploration."""
        return values.argmax(-1)


def epsilon_greedy(
    values: Tensor, epsilon: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Greedy actions with random tie-breaking; with probability epsilon a uniform random action.

    Random draws come from ``generator`` (a CPU generator) so runs are reproducible.

    Returns ``(actions [B], explored [B] bool)``. An exploratory draw that happens to equal the greedy
    action still counts as explored (it was not chosen by the policy).
    """
    b, a = values.shape
    device = values.device
    v = values.detach()
    # random tie-breaking among maximal values (tables start at zero: without it everyone picks 0)
    noise = torch.rand(b, a, generator=generator).to(device)
    is_max = v >= v.max(-1, keepdim=True).values
    greedy = torch.where(is_max, noise, torch.full_like(noise, -1.0)).argmax(-1)
    if epsilon <= 0.0:
        return greedy, torch.zeros(b, dtype=torch.bool, device=device)
    explored = torch.rand(b, generator=generator).to(device) < epsilon
    rand_actions = torch.randint(0, a, (b,), generator=generator).to(device)
    return torch.where(explored, rand_actions, greedy), explored


def state_action_weights(trajectory: Trajectory) -> Tensor:
    """``[B, d]`` weights ``1 / n(s, a)`` over the active decisions of a tabular trajectory.

    With these weights a summed squared error under SGD with learning rate alpha moves each table
    entry by ``alpha * mean(target - Q)`` over the samples that visited it: the Watkins update
    with the batch-averaged target, independent of how many samples shared the state.
    """
    act = trajectory.active
    if trajectory.state_index is None:
        n = act.sum().clamp_min(1)
        return act.float() / n
    a = trajectory.num_actions
    key = (trajectory.state_index * a + trajectory.actions.clamp_min(0)).masked_fill(~act, 0)
    counts = torch.bincount(key[act], minlength=int(key.max()) + 1 if key.numel() else 1)
    w = 1.0 / counts[key].clamp_min(1).float()
    return w * act.float()
