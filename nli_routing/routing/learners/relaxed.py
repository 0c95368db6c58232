"""Relaxed (reparameterised) learners: straight-through Gumbel-softmax and RELAX.

Both set ``relaxed = True``: their ``select`` returns, in ``extra[RELAXED_WEIGHTS]``, straight-through
one-hot weights ``[B, A]`` (value: the hard one-hot of the chosen action; gradient: that of the
tempered softmax of the perturbed logits). :class:`~nli_routing.routing.layer.RoutedLayer` scales
each sample's block output by its weight for the chosen action, ``y_i = w_{i,a_i} * block_{a_i}(x_i)``
(``w_{i,a_i} == 1`` in value), so ``task_loss.backward()`` reaches the router's logits while every
sample still runs through one block only. Through this cheap straight-through variant the task
loss differentiates ``w_{i,a_i}`` only, i.e. the softmax entry of the chosen action (which moves the
chosen logit and, through the softmax normalisation, all others); the unchosen blocks are never
evaluated, so their outputs take no part in the gradient.

Both learners are on-policy like ``"reinforce"``: in training mode they sample from their own
policy (the Gumbel-max trick) and ignore the router's epsilon (``explored`` is all False); in eval
mode they act greedily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..trajectory import Trajectory
from .base import Learner, register_learner
from .critics import discounted_returns

#: key of the straight-through one-hot weights in ``Decision.extra`` / ``Trajectory.extra``
RELAXED_WEIGHTS = "weights"

_EPS = 1e-10


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform draws in (0, 1) from a CPU generator, moved to ``like``'s device and dtype."""
    u = torch.rand(*shape, generator=generator).to(device=like.device, dtype=like.dtype)
    return u.clamp(_EPS, 1.0 - _EPS)


def straight_through(soft: Tensor, actions: Tensor) -> Tensor:
    """Hard one-hot of ``actions`` in value (exactly), the gradient of ``soft`` in the backward."""
    hard = F.one_hot(actions, soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


@register_learner("gumbel")
class GumbelLearner(Learner):
    """Straight-through Gumbel-softmax: the task loss trains the router (no reward is used).

    ``select`` draws ``z = logits + Gumbel noise``, takes ``argmax z`` and returns straight-through
    weights built from ``softmax(z / temperature)``. ``loss`` is ``-entropy_coef * mean entropy``
    (zero by default but connected to the graph, so ``backward`` works on it).
    """

    relaxed = True

    def __init__(self, temperature: float = 1.0, entropy_coef: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.entropy_coef = float(entropy_coef)

    def select(self, values, epsilon, generator=None):
        z = values
        if self.training:
            z = values - torch.log(-torch.log(_uniform(tuple(values.shape), generator, values)))
        actions = z.detach().argmax(-1)
        explored = torch.zeros_like(actions, dtype=torch.bool)
        soft = torch.softmax(z / self.temperature, -1)
        return actions, explored, {RELAXED_WEIGHTS: straight_through(soft, actions)}

    def loss(self, trajectory: Trajectory) -> Tensor:
        logp = torch.log_softmax(trajectory.values, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        act = trajectory.active.float()
        return -self.entropy_coef * (entropy * act).sum() / act.sum().clamp_min(1.0)


@register_learner("relax")
class RelaxLearner(Learner):
    """RELAX (Grathwohl et al., 2018) for one categorical choice per step, kept simple.

    Per decision with logits ``theta`` and ``log p = log_softmax(theta)``: ``z = log p + g``
    (Gumbel noise), ``b = argmax z``, ``z~ ~ p(z | b)`` (conditional Gumbel sample, reparameterised
    in ``theta``), and the control variate ``c(z) = r(softmax(z / temperature))`` with a small
    learned critic ``r``. The router loss (to minimise) per active step with return ``G`` is

    ``-[(G - c(z~)) log p(b) + c(z) - c(z~)]`` (critic weights frozen in this term, gradients flow
    into ``theta`` through ``z`` and ``z~``) ``+ value_coef (r(softmax(z~/T)) - G)^2``
    ``- entropy_coef H(p)``, averaged over the active steps.

    Simplifications (documented): (1) the critic is trained by regression on the return
    (``value_coef``) rather than by minimising the estimator's variance (which needs a second-order
    gradient); (2) the relaxed task loss ``f(softmax(z/T))`` of the original control variate is not
    evaluated (it would run every block on every sample): its reparameterised gradient is replaced
    by the straight-through task-loss gradient that reaches the logits through the routed layer
    (``relaxed = True``), and the matching ``f(softmax(z~/T))`` terms are dropped.

    The critic's input size is the number of actions: routers call :meth:`setup_actions` when
    they are built (or pass ``num_actions``). The critic must exist before the optimizer is made.
    """

    relaxed = True

    def __init__(
        self,
        temperature: float = 0.5,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        hidden: int = 32,
        num_actions: int | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.value_coef = float(value_coef)
        self.entropy_coef = float(entropy_coef)
        self.hidden = int(hidden)
        self.critic: nn.Module | None = None
        if num_actions is not None:
            self.setup_actions(num_actions)

    def setup_actions(self, num_actions: int) -> None:
        """Build the critic for ``num_actions`` actions (no-op if it already has that size)."""
        if self.critic is not None and self.critic[0].in_features == num_actions:
            return
        self.critic = nn.Sequential(nn.Linear(num_actions, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1))

    def _critic(self, z: Tensor, frozen: bool) -> Tensor:
        x = torch.softmax(z / self.temperature, -1)
        if frozen:
            params = {k: v.detach() for k, v in self.critic.named_parameters()}
            return functional_call(self.critic, params, (x,)).squeeze(-1)
        return self.critic(x).squeeze(-1)

    def select(self, values, epsilon, generator=None):
        if self.critic is None:
            self.setup_actions(values.shape[-1])
        explored = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
        logp = torch.log_softmax(values, -1).clamp_min(-50.0)
        if not self.training:
            actions = logp.detach().argmax(-1)
            soft = torch.softmax(logp / self.temperature, -1)
            extra = {RELAXED_WEIGHTS: straight_through(soft, actions), "relax_z": logp, "relax_ztilde": logp}
            return actions, explored, extra
        shape = tuple(values.shape)
        z = logp - torch.log(-torch.log(_uniform(shape, generator, values)))
        actions = z.detach().argmax(-1)
        # z~ ~ p(z | b): the top coordinate is a Gumbel draw, the others are truncated below it
        log_v = torch.log(_uniform(shape, generator, values))
        log_vb = log_v.gather(-1, actions.unsqueeze(-1))
        z_other = -torch.log(-log_v * torch.exp(-logp) - log_vb)
        is_b = F.one_hot(actions, shape[-1]).bool()
        z_tilde = torch.where(is_b, -torch.log(-log_vb).expand_as(z_other), z_other)
        soft = torch.softmax(z / self.temperature, -1)
        extra = {RELAXED_WEIGHTS: straight_through(soft, actions), "relax_z": z, "relax_ztilde": z_tilde}
        return actions, explored, extra

    def loss(self, trajectory: Trajectory) -> Tensor:
        if "relax_z" not in trajectory.extra:
            raise ValueError(
                "RELAX needs the trajectory's relaxed samples (extra['relax_z']): route with this learner"
            )
        g = discounted_returns(trajectory, 1.0)
        act = trajectory.active
        actions = trajectory.actions.clamp_min(0)
        logp_all = torch.log_softmax(trajectory.values, -1)
        logp_b = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        z, z_tilde = trajectory.extra["relax_z"], trajectory.extra["relax_ztilde"]
        c_z, c_zt = self._critic(z, frozen=True), self._critic(z_tilde, frozen=True)
        policy = -((g - c_zt).detach() * logp_b + c_z - c_zt)
        value = (self._critic(z_tilde.detach(), frozen=False) - g) ** 2
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        per_step = (policy + self.value_coef * value - self.entropy_coef * entropy) * act.float()
        return per_step.sum() / act.float().sum().clamp_min(1.0)
