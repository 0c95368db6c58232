"""Q-learning for tabular and function-approximation routers.

Two targets:

* ``target="return"`` (default): the estimate of the taken action regresses on the sample's return
  from that step (later step rewards plus the final reward). Right for the multi-agent tabular
  routers of Routing Networks, whose state (task, depth) does not record the actions taken so far:
  there, a one-step target ``max_a Q(task, t+1, a)`` is the same for every action at step t and
  gives earlier steps no signal.
* ``target="td"``: Watkins' one-step targets ``r_t + gamma * max_a Q(s_{t+1}, a)``, for routers
  whose state carries the path (approximators reading the activation). Identical to ``"return"``
  at depth 1. Bootstrapping discounts: with ``gamma < 1`` the final reward reaches step t through
  the next step's estimate, scaled by ``gamma`` per step, while ``"return"`` targets add it
  undiscounted (Algorithm 5.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..native import qlearning_native_runs, qlearning_return_loss
from ..trajectory import Trajectory
from .base import (
    EpsilonGreedyLearner,
    check_choice,
    register_learner,
    state_action_weights,
)
from .critics import discounted_returns, group_weights

Q_TARGETS = ("return", "td")
#: "state-action": a visited table entry moves by lr * mean(target - Q) over the samples that took it,
#: however few; "state": each decision weighs 1 / n(s), so an entry moves by lr * (n(s, a) / n(s)) *
#: mean(target - Q): a rarely explored action moves in proportion to its visits
Q_BATCH_MEANS = ("state-action", "state")


def q_targets(trajectory: Trajectory, gamma: float = 1.0) -> Tensor:
    """``[B, d]`` one-step (Watkins) Q-learning targets (detached).

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
class QLearner(EpsilonGreedyLearner):
    """Epsilon-greedy selection; the router's estimate of the taken action regresses on a target.

    For tabular routers each table entry moves by ``lr * mean(target - Q)`` over the samples of
    the batch that took that state-action pair (see :func:`state_action_weights`); for approximators
    the loss is the mean squared error over all active decisions.
    """

    def __init__(
        self, gamma: float = 1.0, target: str = "return", ties: str = "lowest", batch_mean: str = "state"
    ) -> None:
        super().__init__(ties)
        self.batch_mean = check_choice("batch_mean", batch_mean, Q_BATCH_MEANS)
        self.target = check_choice("Q-learning target", target, Q_TARGETS)
        self.gamma = gamma

    def fusion_settings(self) -> tuple | None:
        """What the loss depends on besides the trajectory: layers under Q-learners with equal settings
        share one loss computation (:func:`nli_routing.routing.objective.routing_objective`; the loss is a
        sum over decisions with per-state weights, and the learner has no parameters). None in
        subclasses, which must declare it themselves."""
        if type(self) is not QLearner or any(True for _ in self.parameters()):
            return None
        return (self.gamma, self.target, self.batch_mean)

    def loss_is_one_operator(self, trajectory: Trajectory) -> bool:
        """Whether :meth:`loss` runs as the native kernel's single operator for this trajectory once its rewards
        are assigned (the switch on, return targets, tabular states): then fusing layers' trajectories saves
        nothing (:func:`~nli_routing.routing.objective.fusion_key`)."""
        return self.target == "return" and qlearning_native_runs(trajectory, rewards=False)

    def targets(self, trajectory: Trajectory) -> Tensor:
        if self.target == "td":
            return q_targets(trajectory, self.gamma)
        return discounted_returns(trajectory, self.gamma)

    def loss(self, trajectory: Trajectory) -> Tensor:
        if self.target == "return" and qlearning_native_runs(trajectory):  # the same loss as one native operator
            return qlearning_return_loss(trajectory, self.gamma, self.batch_mean)
        y = self.targets(trajectory)
        q = trajectory.values.gather(-1, trajectory.actions.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        w = state_action_weights(trajectory) if self.batch_mean == "state-action" else group_weights(trajectory)
        return 0.5 * (w * (q - y) ** 2).sum()
