"""Rewards for routing trajectories, computed as batch tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .trajectory import Trajectory

REWARD_KINDS = ("correct", "neg_loss")


def final_reward(kind: str, correct: Tensor | None = None, per_sample_loss: Tensor | None = None) -> Tensor:
    """``[B]`` final reward: +1/-1 for correct/incorrect (``"correct"``) or the negative task loss."""
    if kind == "correct":
        if correct is None:
            raise ValueError("reward 'correct' needs the per-sample correctness")
        return correct.float() * 2.0 - 1.0
    if kind == "neg_loss":
        if per_sample_loss is None:
            raise ValueError("reward 'neg_loss' needs the per-sample task loss")
        return -per_sample_loss.detach().float()
    raise ValueError(f"unknown reward kind {kind!r}; choose one of {REWARD_KINDS}")


class CollaborationReward(nn.Module):
    """Per-action reward ``rho * C(a) / d`` (Routing Networks' collaboration reward).

    ``C(a)`` is the share of the recent decisions (all agents, all depths) that chose action a,
    kept as an exponential moving average of batch action histograms (``momentum`` close to 1
    means a long memory); ``d`` is the maximum depth, so a whole path collects at most ``|rho|``.
    Positive rho rewards reusing popular blocks (collaboration), negative rho rewards diversity.
    With ``rho = 0`` the reward is zero and :func:`assign_rewards` skips the bookkeeping.
    """

    def __init__(self, num_actions: int, rho: float = 0.0, momentum: float = 0.9) -> None:
        super().__init__()
        if not -1.0 <= rho <= 1.0:
            raise ValueError(f"rho must be in [-1, 1], got {rho}")
        self.rho = rho
        self.momentum = momentum
        self.register_buffer("share", torch.full((num_actions,), 1.0 / num_actions))

    @torch.no_grad()
    def update(self, trajectory: Trajectory) -> None:
        """Fold the trajectory's decisions into the running action shares.

        In a multi-process run the histogram is summed over all processes (every process calls
        this once per training step), so the shares stay identical on every rank.
        """
        acts = trajectory.actions[trajectory.active]
        hist = torch.bincount(acts, minlength=self.share.numel()).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(hist)
        total = hist.sum()
        if total == 0:
            return
        self.share.mul_(self.momentum).add_((1 - self.momentum) * hist / total)

    def forward(self, trajectory: Trajectory) -> Tensor:
        """``[B, d]`` per-action rewards (zero on inactive steps)."""
        if self.rho == 0.0:
            return torch.zeros(trajectory.actions.shape, device=trajectory.actions.device)
        c = self.share[trajectory.actions.clamp_min(0)]
        return (self.rho * c / trajectory.depth) * trajectory.active.float()


def assign_rewards(
    trajectory: Trajectory, final: Tensor, collaboration: CollaborationReward | None = None
) -> Trajectory:
    """Fill ``final_reward`` and ``step_rewards`` of a trajectory in place and return it."""
    trajectory.final_reward = final.to(trajectory.actions.device).float()
    if collaboration is not None and collaboration.rho != 0.0:
        trajectory.step_rewards = collaboration(trajectory)
        if collaboration.training:
            collaboration.update(trajectory)
    else:
        trajectory.step_rewards = torch.zeros(trajectory.actions.shape, device=trajectory.actions.device)
    return trajectory
