"""Weighted Policy Learner (Abdallah & Lesser 2008; thesis Algorithm 5.1 and its approximation 7.1).

WPL step for one state, with ``delta(a) = Q(s, a) - V(s)`` and ``V(s) = sum_a pi(s, a) Q(s, a)``::

    grad(a) = delta(a) * (1 - pi(s, a))   if delta(a) > 0   (slows down near a pure policy)
            = delta(a) * pi(s, a)         otherwise         (slows down near zero)
    pi(s) <- clip(pi(s) + eta * grad) / sum(clip(pi(s) + eta * grad)),   clip(x) = max(0, min(1, x))

The projection is the clip-and-renormalise one. (The ``pi - min(pi) + eps`` projection is not used:
it is known to produce gradients around 1e12 and freeze the router.)

Deviations from Algorithm 5.1 as printed, both deliberate:

* The weighting above is Abdallah & Lesser's original (``weighting="original"``, the default). The
  thesis prints it the other way round (``weighting="thesis"``: positive delta times ``pi``, negative
  times ``1 - pi``); there a positive delta on an action whose probability was driven to ~0 is
  scaled by ~0, so the policy cannot leave an arm that stopped being best (measured in
  ``tests/test_learner_equations.py::test_wpl_original_weighting_recovers_an_action_pushed_to_zero``).
* Every action with a Q estimate is updated with ``delta(a) = Q(s, a) - V(s)`` (the original WPL),
  not only the taken action with its return.

How the step reaches the router: routers are trained by a loss and their optimizer (plain SGD), and
the learner cannot see the router's table directly. Both learners therefore compute the projected
WPL target policy per state (detached) and return ``0.5 * sum_s (pi_router(s) - target(s))^2``
averaged per state. One SGD step at lr alpha moves a tabular row by ``alpha * (target - row)``:
exactly Algorithm 5.1 when alpha = 1, and for alpha in (0, 1] a convex combination of two points of
the simplex, so the table stays a valid policy. (Momentum, weight decay, adaptive optimizers or an
lr above 1 break this guarantee; selection re-normalises defensively.) The effective WPL rate for
small steps is ``alpha * eta``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..trajectory import Trajectory
from .base import Learner, check_choice, register_learner
from .critics import ActionValueCritic, discounted_returns, group_weights
from .policy_gradient import policy_entropy, sample_with_epsilon


def clip_projection(p: Tensor) -> Tensor:
    """Rows of ``p [..., A]`` clipped to [0, 1] and renormalised; an all-zero row becomes uniform."""
    c = p.clamp(0.0, 1.0)
    total = c.sum(-1, keepdim=True)
    uniform = torch.full_like(c, 1.0 / c.shape[-1])
    return torch.where(total > 1e-12, c / total.clamp_min(1e-12), uniform)


WPL_WEIGHTINGS = ("original", "thesis")


def wpl_target(
    pi: Tensor, q: Tensor, seen: Tensor | None = None, eta: float = 1.0, weighting: str = "original"
) -> Tensor:
    """The projected WPL policy ``clip_projection(pi + eta * grad)`` for rows ``pi, q [..., A]``.

    ``seen [..., A]`` marks the actions with a Q estimate; the others get ``delta = 0`` and ``V`` is
    the pi-weighted mean over the seen actions only (``None``: all actions seen).
    ``weighting="original"`` (Abdallah & Lesser): ``delta * (1 - pi)`` if ``delta > 0``, else
    ``delta * pi``; ``"thesis"`` (Algorithm 5.1 as printed): ``delta * pi`` if ``delta > 0``, else
    ``delta * (1 - pi)``.
    """
    check_choice("WPL weighting", weighting, WPL_WEIGHTINGS)
    pi = pi.detach().float()
    q = q.detach().float()
    if seen is None:
        seen = torch.ones_like(pi, dtype=torch.bool)
    wts = (pi.clamp_min(0.0) + 1e-8) * seen
    v = (wts * q).sum(-1, keepdim=True) / wts.sum(-1, keepdim=True).clamp_min(1e-12)
    delta = (q - v) * seen
    if weighting == "original":
        grad = torch.where(delta > 0, delta * (1.0 - pi), delta * pi)
    else:
        grad = torch.where(delta > 0, delta * pi, delta * (1.0 - pi))
    return clip_projection(pi + eta * grad)


class _WPLBase(Learner):
    """Shared parts: the Q critic and epsilon-mixed sampling from pi."""

    def __init__(
        self,
        eta: float = 1.0,
        gamma: float = 1.0,
        num_states: int | None = None,
        num_actions: int | None = None,
        q_init: float = 0.0,
        weighting: str = "original",
    ) -> None:
        super().__init__()
        if eta <= 0:
            raise ValueError(f"the WPL step eta must be positive, got {eta}")
        self.weighting = check_choice("WPL weighting", weighting, WPL_WEIGHTINGS)
        self.eta = eta
        self.gamma = gamma
        self.critic = ActionValueCritic(num_states, num_actions, q_init)

    def setup_actions(self, num_actions: int) -> None:
        """Called by the router when built: sizes the Q table if ``num_states`` was given."""
        self.critic.setup(num_actions=num_actions)

    def setup_states(self, num_states: int) -> None:
        """Size the Q table for ``num_states`` tabular states (call before building the optimizer)."""
        self.critic.setup(num_states=num_states)

    def policy(self, values: Tensor) -> Tensor:
        """``pi [..., A]`` from the router's values (with graph)."""
        raise NotImplementedError

    def select(self, values, epsilon, generator=None):
        """Sample from pi (uniform with probability epsilon); greedy in eval mode."""
        if not self.training:
            actions = self.greedy(values)
            return actions, torch.zeros_like(actions, dtype=torch.bool), {}
        actions, explored = sample_with_epsilon(self.policy(values.detach().float()), epsilon, generator)
        return actions, explored, {}

    def greedy(self, values: Tensor) -> Tensor:
        return self.policy(values.detach().float()).argmax(-1)


@register_learner("wpl")
class WPLearner(_WPLBase):
    """Tabular WPL (Algorithm 5.1): the router's values ARE the policy ``pi(s, ·)``.

    Use ``TabularRouter(..., learner="wpl", init=1/A)`` so the table starts as the uniform policy
    (selection clips and renormalises rows defensively, so other inits act as their projection).
    Q(s, ·): a learner-owned table ``critic.table [num_states, A]`` when ``num_states`` is given
    (``num_meta * depth``; A comes from the router's ``setup_actions``), trained by the router's
    optimizer towards the observed returns; else per-batch mean returns per state-action with
    ``delta = 0`` for the actions nobody took in the batch (see :class:`~.critics.ActionValueCritic`).
    Actions are sampled from pi, mixed with a uniform draw with probability epsilon (``explored``);
    greedy in eval mode. ``eta`` is the WPL step (see the module doc for how it combines with the lr).
    """

    tabular_init = "uniform"  #: init the table at 1 / num_actions
    policy_kind = "table"  #: the router's values are probabilities
    tabular_only = True  #: an MLP's outputs are no policy table: use "wpl-approx" there

    def policy(self, values: Tensor) -> Tensor:
        return clip_projection(values)

    def loss(self, trajectory: Trajectory) -> Tensor:
        g = discounted_returns(trajectory, self.gamma)
        q, seen, critic_loss = self.critic(trajectory, g)
        pi = clip_projection(trajectory.values.detach().float())
        target = wpl_target(pi, q, seen, self.eta, self.weighting)
        w = group_weights(trajectory).unsqueeze(-1)
        actor = 0.5 * (w * (trajectory.values.float() - target) ** 2).sum()
        return actor + critic_loss


@register_learner("wpl-approx")
class WPLApproxLearner(_WPLBase):
    """WPL with function approximation (Algorithm 7.1): the router's values are policy logits.

    A critic gives Q(s, ·) (learner-owned table for tabular routers given ``num_states``; the
    router's ``extra["q_values"] [B, A]`` for other routers, an error if they provide none;
    per-batch means for tabular routers without a table). Actor loss: per-state mean of ``0.5 * ||softmax(values) - target||^2``
    with the detached projected WPL target; critic loss: ``0.5 * (Q(s, a) - G)^2``; minus
    ``entropy_coef * H(pi)``.
    """

    tabular_init = 0.0
    policy_kind = "softmax"
    router_heads = ("q_values",)  #: an approximator router grows a Q(s, .) head for the critic

    def __init__(
        self,
        eta: float = 1.0,
        gamma: float = 1.0,
        num_states: int | None = None,
        num_actions: int | None = None,
        q_init: float = 0.0,
        entropy_coef: float = 0.0,
        weighting: str = "original",
    ) -> None:
        super().__init__(eta, gamma, num_states, num_actions, q_init, weighting)
        self.entropy_coef = entropy_coef

    def policy(self, values: Tensor) -> Tensor:
        return F.softmax(values, -1)

    def loss(self, trajectory: Trajectory) -> Tensor:
        g = discounted_returns(trajectory, self.gamma)
        q, seen, critic_loss = self.critic(trajectory, g)
        pi = self.policy(trajectory.values.float())
        target = wpl_target(pi, q, seen, self.eta, self.weighting)
        w = group_weights(trajectory).unsqueeze(-1)
        out = 0.5 * (w * (pi - target) ** 2).sum() + critic_loss
        if self.entropy_coef:
            out = out - self.entropy_coef * policy_entropy(trajectory)
        return out
