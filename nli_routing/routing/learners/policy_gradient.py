"""Policy-gradient learners: the router's ``values [B, A]`` are policy logits, ``pi = softmax(values)``.

* ``"reinforce"``: REINFORCE without baseline, ``-log pi(a|s) * G_t``.
* ``"aac"``: advantage actor-critic, ``-log pi(a|s) * (G_t - V(s)) + c_v * critic loss``.
* ``"egreedy-reinforce"``: epsilon-greedy REINFORCE (thesis eq. 7.3): actions come from the behaviour
  policy ``pi_eps``, which takes the greedy action ``argmax pi`` with probability ``1 - eps`` and
  samples from ``pi`` otherwise, so ``pi_eps(a) = (1 - eps) + eps * pi(a)`` for the greedy action and
  ``eps * pi(a)`` for the others (*more* greedy than ``pi``); the gradient is importance-weighted by
  ``pi / pi_eps``.

``G_t`` is the (optionally discounted) return from step t (:func:`.critics.discounted_returns`).
Every loss is a mean over the active decisions and subtracts ``entropy_coef * H(pi)`` (mean
entropy over active decisions). Log-probabilities are recomputed from the trajectory's ``values``
with ``log_softmax``, so the gradient flows to the router's parameters.

``"reinforce"`` and ``"aac"`` are on-policy: they sample from ``pi`` and ignore the router's
epsilon (their ``explored`` flags are all False); ``"egreedy-reinforce"`` uses epsilon. In eval
mode (``router.eval()``, which the learner submodule follows) all of them act greedily (argmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..trajectory import Trajectory
from .base import Learner, check_flag, register_learner
from .critics import StateValueCritic, discounted_returns, masked_mean

PROB_FLOOR = 1e-8


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``[B]`` samples from the rows of ``probs [B, A]`` (inverse CDF; uniforms from ``generator``).

    Rows need not be normalised exactly; a row summing to 0 samples uniformly.
    """
    b, a = probs.shape
    p = probs.detach().float().clamp_min(0.0)
    total = p.sum(-1, keepdim=True)
    p = torch.where(total > 0, p / total.clamp_min(1e-30), torch.full_like(p, 1.0 / a))
    u = torch.rand(b, 1, generator=generator).to(p.device)
    return (p.cumsum(-1) <= u).sum(-1).clamp_max(a - 1)


def sample_with_epsilon(
    probs: Tensor, epsilon: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample from ``probs``; with probability ``epsilon`` take a uniform action instead.

    Returns ``(actions [B], explored [B])``; ``explored`` marks the draws of the uniform part.
    """
    b, a = probs.shape
    actions = sample_categorical(probs, generator)
    if epsilon <= 0.0:
        return actions, torch.zeros(b, dtype=torch.bool, device=actions.device)
    explored = (torch.rand(b, generator=generator) < epsilon).to(actions.device)
    uniform = torch.randint(0, a, (b,), generator=generator).to(actions.device)
    return torch.where(explored, uniform, actions), explored


def taken_log_prob(trajectory: Trajectory) -> Tensor:
    """``[B, d]`` ``log pi(a_t | s_t)`` of the taken actions (with graph; 0 where inactive)."""
    logp = F.log_softmax(trajectory.values.float(), -1)
    out = logp.gather(-1, trajectory.actions.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return out.masked_fill(~trajectory.active, 0.0)


def policy_entropy(trajectory: Trajectory) -> Tensor:
    """Scalar mean entropy of ``softmax(values)`` over the active decisions (with graph)."""
    logp = F.log_softmax(trajectory.values.float(), -1)
    h = -(logp.exp() * logp).sum(-1)
    return masked_mean(h, trajectory)


class PolicyGradientLearner(Learner):
    """Shared parts: on-policy sampling from the softmax policy and the entropy bonus."""

    tabular_init = 0.0  #: table init of a TabularRouter for a uniform initial policy (logits 0)
    policy_kind = "softmax"  #: the router's values are logits of the policy

    def __init__(self, gamma: float = 1.0, entropy_coef: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.entropy_coef = entropy_coef

    def select(self, values, epsilon, generator=None):
        if self.training:
            actions = sample_categorical(F.softmax(values.detach().float(), -1), generator)
        else:
            actions = values.detach().argmax(-1)
        return actions, torch.zeros_like(actions, dtype=torch.bool), {}

    def entropy_term(self, trajectory: Trajectory) -> Tensor:
        """``-entropy_coef * H`` (a zero tensor when the coefficient is 0)."""
        if self.entropy_coef == 0.0:
            return trajectory.values.new_zeros(())
        return -self.entropy_coef * policy_entropy(trajectory)


@register_learner("reinforce")
class ReinforceLearner(PolicyGradientLearner):
    """REINFORCE without baseline: loss ``= -mean(log pi(a|s) * G_t) - entropy_coef * H``."""

    def loss(self, trajectory: Trajectory) -> Tensor:
        g = discounted_returns(trajectory, self.gamma)
        return -masked_mean(taken_log_prob(trajectory) * g, trajectory) + self.entropy_term(trajectory)


@register_learner("aac")
class ActorCriticLearner(PolicyGradientLearner):
    """Advantage actor-critic (Monte Carlo returns).

    loss ``= -mean(log pi(a|s) * (G_t - V(s)).detach()) + value_coef * critic_loss - entropy_coef * H``
    with V from :class:`~.critics.StateValueCritic` (a learner-owned table when ``num_states`` is
    given, else the router's ``extra["state_value"]`` (a V head of an approximator router, with
    ``value_head=True``) or a batch-mean baseline). The critic loss is
    ``0.5 * (V - G)^2`` averaged per state, so with ``value_coef = 1`` SGD at lr alpha moves a table
    entry by ``alpha * mean(G - V(s))``.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        entropy_coef: float = 0.0,
        value_coef: float = 1.0,
        num_states: int | None = None,
        value_init: float = 0.0,
        value_head: bool = False,
    ) -> None:
        super().__init__(gamma, entropy_coef)
        #: ``value_head=True``: an approximator router grows a learned V(s) head (else the batch mean)
        self.router_heads = ("state_value",) if check_flag("value_head", value_head) else ()
        self.value_coef = value_coef
        self.critic = StateValueCritic(num_states, value_init)

    def setup_states(self, num_states: int) -> None:
        """Create the V table for ``num_states`` tabular states (call before building the optimizer)."""
        self.critic.setup(num_states)

    def loss(self, trajectory: Trajectory) -> Tensor:
        g = discounted_returns(trajectory, self.gamma)
        v, critic_loss = self.critic(trajectory, g)
        actor = -masked_mean(taken_log_prob(trajectory) * (g - v), trajectory)
        return actor + self.value_coef * critic_loss + self.entropy_term(trajectory)


@register_learner("egreedy-reinforce")
class EpsilonGreedyReinforceLearner(PolicyGradientLearner):
    """Epsilon-greedy REINFORCE with importance weights (thesis eq. 7.3).

    Behaviour policy: with probability ``1 - eps`` the greedy action ``g = argmax pi`` (ties: the
    lowest index), with probability ``eps`` a sample from ``pi`` itself::

        pi_eps(a) = (1 - eps) + eps * pi(a)   if a == g
                  = eps * pi(a)               otherwise

    so ``eps = 1`` is plain REINFORCE and ``eps = 0`` acts greedily. Selection stores
    ``extra["behaviour_prob"] = pi_eps(a)`` with the epsilon of that moment and marks as
    ``explored`` the decisions whose action is not the greedy one. Loss
    ``= -mean((pi(a) / pi_eps(a)).detach() * log pi(a) * G_t) - entropy_coef * H``. The weight is
    at most ``1 / eps`` (for a non-greedy action) and at most 1 for the greedy one.
    """

    def select(self, values, epsilon, generator=None):
        pi = F.softmax(values.detach().float(), -1)
        greedy = pi.argmax(-1)  # the first maximum: ties go to the lowest index
        if not self.training:
            epsilon = 0.0
        if epsilon > 0.0:
            sampled = sample_categorical(pi, generator)
            from_pi = (torch.rand(pi.shape[0], generator=generator) < epsilon).to(pi.device)
            actions = torch.where(from_pi, sampled, greedy)
        else:
            actions = greedy
        pi_a = pi.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        mu = epsilon * pi_a + (1.0 - epsilon) * (actions == greedy).float()
        return actions, actions != greedy, {"behaviour_prob": mu}

    def importance_weights(self, trajectory: Trajectory) -> Tensor:
        """``[B, d]`` detached ``pi(a) / pi_eps(a)`` (1 where the behaviour probability is missing)."""
        logp = taken_log_prob(trajectory).detach()
        mu = trajectory.extra.get("behaviour_prob")
        if mu is None:
            return torch.ones_like(logp)
        return (logp.exp() / mu.float().clamp_min(PROB_FLOOR)).masked_fill(~trajectory.active, 0.0)

    def loss(self, trajectory: Trajectory) -> Tensor:
        g = discounted_returns(trajectory, self.gamma)
        w = self.importance_weights(trajectory)
        return -masked_mean(w * taken_log_prob(trajectory) * g, trajectory) + self.entropy_term(trajectory)
