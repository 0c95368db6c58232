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
        if correct.dtype == torch.bool:
            return torch.where(correct, 1.0, -1.0)  # one operator; float32 +1 / -1
        return correct.float() * 2.0 - 1.0  # a 0/1 tensor of another dtype, as before
    if kind == "neg_loss":
        if per_sample_loss is None:
            raise ValueError("reward 'neg_loss' needs the per-sample task loss")
        return -per_sample_loss.detach().float()
    raise ValueError(f"unknown reward kind {kind!r}; choose one of {REWARD_KINDS}")


class CollaborationReward(nn.Module):
    """Per-action reward ``rho * C(a) / t`` (Routing Networks' collaboration reward).

    ``C(a)`` is the share of the recent decisions that chose action a, kept as an exponential
    moving average of batch action histograms (``momentum`` close to 1 means a long memory); ``t``
    is the length of the sample's trajectory (its number of decisions), so a whole path collects at
    most ``|rho|``. ``depths``: the number of block sets the actions index. A recursive layer reuses
    one block set at every depth (``depths=1``: shares pooled over all depths); a per-step layer has
    its own blocks at every depth (``depths=d``: one share vector per depth, action a at depth 1 is
    not block a at depth 2). Positive rho rewards reusing popular blocks (collaboration), negative
    rho rewards diversity. With ``rho = 0`` the reward is zero and :func:`assign_rewards` skips the
    bookkeeping.
    """

    def __init__(self, num_actions: int, rho: float = 0.0, momentum: float = 0.9, depths: int = 1) -> None:
        super().__init__()
        if not -1.0 <= rho <= 1.0:
            raise ValueError(f"rho must be in [-1, 1], got {rho}")
        if depths < 1:
            raise ValueError(f"depths must be >= 1, got {depths}")
        self.rho = rho
        self.momentum = momentum
        self.register_buffer("share", torch.full((depths, num_actions), 1.0 / num_actions))

    def _depth_index(self, trajectory: Trajectory) -> Tensor:
        """``[B, d]`` the share row of every decision (its depth, or 0 when shares are pooled)."""
        b, d = trajectory.actions.shape
        if self.share.shape[0] == 1:
            return torch.zeros(b, d, dtype=torch.long, device=trajectory.actions.device)
        if d > self.share.shape[0]:
            raise ValueError(f"trajectory of depth {d} but collaboration shares for {self.share.shape[0]} depths")
        return torch.arange(d, device=trajectory.actions.device).expand(b, d)

    @torch.no_grad()
    def update(self, trajectory: Trajectory) -> None:
        """Fold the trajectory's decisions into the running action shares (per share row).

        In a multi-process run the histogram is summed over all processes (every process calls
        this once per training step), so the shares stay identical on every rank.
        """
        rows, a = self.share.shape
        act = trajectory.active
        key = (self._depth_index(trajectory) * a + trajectory.actions.clamp_min(0))[act]
        hist = torch.bincount(key, minlength=rows * a).float().view(rows, a)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(hist)
        total = hist.sum(1, keepdim=True)
        seen = total > 0  # a depth no sample reached keeps its shares
        new = self.share * self.momentum + (1 - self.momentum) * hist / total.clamp_min(1.0)
        self.share.copy_(torch.where(seen, new, self.share))

    def forward(self, trajectory: Trajectory) -> Tensor:
        """``[B, d]`` per-action rewards ``rho * C(a) / t`` (zero on inactive steps)."""
        act = trajectory.active
        if self.rho == 0.0:
            return torch.zeros(act.shape, device=trajectory.actions.device)
        c = self.share[self._depth_index(trajectory), trajectory.actions.clamp_min(0)]
        length = act.sum(1, keepdim=True).clamp_min(1).float()
        return (self.rho * c / length) * act.float()


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
