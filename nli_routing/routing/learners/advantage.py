"""Advantage learning, Monte Carlo version (thesis eq. 7.1 / 7.2)."""

from __future__ import annotations

from torch import Tensor

from ..trajectory import Trajectory
from .base import EpsilonGreedyLearner, check_flag, register_learner, state_action_weights
from .critics import StateValueCritic, discounted_returns


@register_learner("advantage")
class AdvantageLearner(EpsilonGreedyLearner):
    """A value learner V(s) and an advantage learner A(s, a) trained on Monte Carlo returns.

    ``V(s) <- V(s) + alpha * (G_t - V(s))`` and ``A(s, a) <- A(s, a) + alpha * (G_t - V(s) - A(s, a))``
    (V detached in the advantage target). The router's ``values`` are A(s, ·); selection is greedy
    on A with epsilon-greedy exploration. Both regressions use per-state (V) and per-state-action
    (A, :func:`state_action_weights`) batch means for tabular routers, as Q-learning does.

    V(s) comes from :class:`~.critics.StateValueCritic`: a learner-owned table when ``num_states``
    is given (``num_meta * depth`` for a TabularRouter; trained by the router's optimizer), else the
    router's ``extra["state_value"]`` (an approximator's V head, ``value_head=True``), else the batch mean of the returns of the decisions sharing
    the state (per depth for non-tabular routers).
    """

    tabular_init = 0.0
    policy_kind = None  #: value learner: the router's values are advantages
    def __init__(
        self,
        gamma: float = 1.0,
        num_states: int | None = None,
        value_init: float = 0.0,
        value_head: bool = False,
        ties: str = "lowest",
    ) -> None:
        super().__init__(ties)
        #: ``value_head=True``: an approximator router grows a learned V(s) head (else the batch mean)
        self.router_heads = ("state_value",) if check_flag("value_head", value_head) else ()
        self.gamma = gamma
        self.critic = StateValueCritic(num_states, value_init)

    def setup_states(self, num_states: int) -> None:
        """Create the V table for ``num_states`` tabular states (call before building the optimizer)."""
        self.critic.setup(num_states)

    def targets(self, trajectory: Trajectory) -> tuple[Tensor, Tensor, Tensor]:
        """``(returns G [B, d], V [B, d] detached, critic loss)``."""
        g = discounted_returns(trajectory, self.gamma)
        v, critic_loss = self.critic(trajectory, g)
        return g, v, critic_loss

    def loss(self, trajectory: Trajectory) -> Tensor:
        g, v, critic_loss = self.targets(trajectory)
        adv = trajectory.values.gather(-1, trajectory.actions.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        w = state_action_weights(trajectory)
        return 0.5 * (w * (adv - (g - v)) ** 2).sum() + critic_loss
