"""Q-learning (Watkins, one-step) for tabular and function-approximation routers."""

from __future__ import annotations

import torch
from torch import Tensor

from ..trajectory import Trajectory
from .base import Learner, epsilon_greedy, register_learner, state_action_weights


def q_targets(trajectory: Trajectory, gamma: float = 1.0) -> Tensor:
    """``[B, d]`` one-step Q-learning targets (detached).

    ``y_t = r_t + gamma * max_a Q(s_{t+1}, a)`` while the sample goes on, and
    ``y_t = r_t + R_final`` on its last decision (a stop action or the maximum depth).
    """
    if trajectory.final_reward is None or trajectory.step_rewards is None:
        raise ValueError("trajectory has no rewards: call assign_rewards(...) before the router loss")
    v = trajectory.values.detach()
    r = trajectory.step_rewards
    nxt = torch.zeros_like(r)
    nxt[:, :-1] = v[:, 1:].max(-1).values
    terminal = trajectory.last_active
    bootstrap = torch.where(terminal, trajectory.final_reward.unsqueeze(1).expand_as(r), gamma * nxt)
    return (r + bootstrap).masked_fill(~trajectory.active, 0.0)


@register_learner("qlearning")
class QLearner(Learner):
    """Epsilon-greedy selection; the router's estimate regresses on the one-step target.

    For tabular routers each table entry moves by ``lr * mean(target - Q)`` over the samples of
    the batch that took that state-action pair (see :func:`state_action_weights`); for approximators
    the loss is the mean squared error over all active decisions.
    """

    def __init__(self, gamma: float = 1.0) -> None:
        super().__init__()
        self.gamma = gamma

    def select(self, values, epsilon, generator=None):
        actions, explored = epsilon_greedy(values, epsilon, generator)
        return actions, explored, {}

    def loss(self, trajectory: Trajectory) -> Tensor:
        y = q_targets(trajectory, self.gamma)
        q = trajectory.values.gather(-1, trajectory.actions.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        w = state_action_weights(trajectory)
        return 0.5 * (w * (q - y) ** 2).sum()
