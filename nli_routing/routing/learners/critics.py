"""Returns, per-state batch statistics and learner-owned critics shared by the learners.

A *state* is ``trajectory.state_index`` for tabular routers (one id per agent and depth). Routers
without state ids have no shared states; where a batch statistic is needed there, the samples of
the same depth are grouped together (a per-depth batch baseline).

Learner-owned tables (``V [num_states]``, ``Q [num_states, num_actions]``) are ``nn.Parameter``s of
the learner, which is a submodule of its router, so the router's optimizer trains them together
with the router. They must be sized at construction (an optimizer created before a lazily-grown
parameter would never see it): pass ``num_states = num_meta * depth`` through
``TabularRouter(..., learner_kwargs={"num_states": ...})`` (routers give ``num_actions`` through the
learner's ``setup_actions`` hook), or call the learner's ``setup_states(num_states)`` before building
the optimizer. Without ``num_states`` the learners fall back to batch means.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..trajectory import Trajectory
from .base import inverse_counts, state_action_weights


def discounted_returns(trajectory: Trajectory, gamma: float = 1.0) -> Tensor:
    """``[B, d]`` returns ``G_t = sum_{k >= t} gamma^(k - t) r_k + R_final`` (0 where inactive).

    Step rewards (collaboration rewards) are discounted; the final reward is not: every decision of
    a sample regresses on the same ``R_final`` whatever its distance to the end of the path, as in
    the thesis' Algorithm 5.1 (with the default ``gamma = 1`` the two readings agree).
    """
    if trajectory.final_reward is None or trajectory.step_rewards is None:
        raise ValueError("trajectory has no rewards: call assign_rewards(...) before the router loss")
    act = trajectory.active
    r = trajectory.step_rewards.float() * act
    d = trajectory.depth
    steps = torch.arange(d, device=r.device)
    lag = steps.unsqueeze(1) - steps.unsqueeze(0)  # [k, t]: k - t
    discount = torch.where(lag >= 0, torch.full_like(r[:1, :1], gamma).pow(lag.clamp_min(0)), torch.zeros_like(r[:1, :1]))
    # a sample's decisions are a prefix of the steps, so nothing follows its last one
    return (r @ discount + trajectory.final_reward.float().unsqueeze(1)) * act


def group_keys(trajectory: Trajectory) -> Tensor:
    """``[B, d]`` long ids of the decision states: ``state_index``, else the depth (see module doc)."""
    if trajectory.state_index is not None:
        return trajectory.state_index.long()
    b, d = trajectory.actions.shape
    return torch.arange(d, device=trajectory.actions.device).expand(b, d)


def _group(keys: Tensor, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unique sorted keys of the active decisions, the inverse index and the group sizes."""
    uniq, inv = torch.unique(keys[active], return_inverse=True)
    counts = torch.bincount(inv, minlength=uniq.numel())
    return uniq, inv, counts


def group_mean(x: Tensor, trajectory: Trajectory) -> Tensor:
    """``[B, d]`` mean of ``x [B, d]`` over the active decisions sharing a state (0 where inactive)."""
    act = trajectory.active
    out = torch.zeros_like(x)
    if not bool(act.any()):
        return out
    _, inv, counts = _group(group_keys(trajectory), act)
    sums = torch.zeros(counts.numel(), dtype=x.dtype, device=x.device).index_add_(0, inv, x[act])
    out[act] = (sums / counts.clamp_min(1).to(x.dtype))[inv]
    return out


def group_weights(trajectory: Trajectory) -> Tensor:
    """``[B, d]`` weights ``1 / n(s)`` over active decisions: a summed loss becomes a per-state mean.

    With these weights and SGD at learning rate alpha, a table row regressing on a per-state target
    moves by ``alpha * (target - row)`` whatever the number of samples that visited the state.
    """
    size = trajectory.num_states if trajectory.state_index is not None else trajectory.actions.shape[1]
    return inverse_counts(group_keys(trajectory), trajectory.active, size or None)


def group_action_mean(x: Tensor, trajectory: Trajectory) -> tuple[Tensor, Tensor]:
    """Per-state, per-action batch means of ``x [B, d]`` for every action of each decision's row.

    Returns ``(mean [B, d, A], seen [B, d, A] bool)``: ``mean[b, t, a]`` is the mean of ``x`` over the
    active decisions of the batch in the state of ``(b, t)`` that took action ``a``; ``seen`` is
    False (and the mean 0) where no decision of the batch took that action in that state.
    """
    a = trajectory.num_actions
    act = trajectory.active
    b, d = act.shape
    mean = torch.zeros(b, d, a, dtype=x.dtype, device=x.device)
    seen = torch.zeros(b, d, a, dtype=torch.bool, device=x.device)
    if not bool(act.any()):
        return mean, seen
    keys = group_keys(trajectory)
    sa = keys * a + trajectory.actions.clamp_min(0)
    uniq, inv, counts = _group(sa, act)
    sums = torch.zeros(counts.numel(), dtype=x.dtype, device=x.device).index_add_(0, inv, x[act])
    means = sums / counts.clamp_min(1).to(x.dtype)
    query = keys.unsqueeze(-1) * a + torch.arange(a, device=x.device)
    pos = torch.searchsorted(uniq, query.reshape(-1)).reshape(query.shape)
    found = (pos < uniq.numel()) & (uniq[pos.clamp_max(uniq.numel() - 1)] == query)
    found = found & act.unsqueeze(-1)
    mean = torch.where(found, means[pos.clamp_max(uniq.numel() - 1)], mean)
    return mean, found


def masked_mean(x: Tensor, trajectory: Trajectory) -> Tensor:
    """Scalar mean of ``x [B, d]`` over the active decisions (0 when there is none)."""
    act = trajectory.active.to(x.dtype)
    return (x * act).sum() / act.sum().clamp_min(1.0)


def _table_index(trajectory: Trajectory, num_states: int) -> Tensor:
    """``state_index`` with inactive entries zeroed, checked against the size of a learner table."""
    if trajectory.state_index is None:
        raise ValueError(
            "this learner was given num_states (a learner-owned table) but the router has no "
            "state_index (not tabular); drop num_states for non-tabular routers"
        )
    idx = trajectory.state_index.long().masked_fill(~trajectory.active, 0)
    if idx.numel() and (int(idx.max()) >= num_states or int(idx.min()) < 0):
        raise ValueError(
            f"state ids range over [{int(idx.min())}, {int(idx.max())}] but the learner's table has "
            f"{num_states} states; use num_states = num_meta * depth of the TabularRouter"
        )
    return idx


class StateValueCritic(nn.Module):
    """V(s) used as a baseline by the advantage and actor-critic learners.

    Sources, in order: a learner-owned table ``V [num_states]`` (when ``num_states`` is given;
    tabular routers) regressing on the returns with per-state weights, so SGD at lr alpha moves
    ``V(s)`` by ``alpha * mean(G - V(s))``; the router's ``extra["state_value"] [B, d]`` (a value head
    of a non-tabular router; mean squared error over active decisions); otherwise the batch mean of
    the returns over the decisions sharing the state (per depth without state ids), which has no
    parameters (and includes the sample itself, a small bias for small groups).
    """

    def __init__(self, num_states: int | None = None, init: float = 0.0) -> None:
        super().__init__()
        self.init = float(init)
        self.table: nn.Parameter | None = None
        if num_states:
            self.setup(num_states)

    def setup(self, num_states: int) -> None:
        """Create the table (before the optimizer is built); no-op if it already has that size."""
        if self.table is not None and self.table.numel() == num_states:
            return
        self.table = nn.Parameter(torch.full((int(num_states),), self.init))

    def forward(self, trajectory: Trajectory, returns: Tensor) -> tuple[Tensor, Tensor]:
        """``(V [B, d] detached, critic loss scalar)`` for the trajectory's decisions."""
        act = trajectory.active
        if self.table is not None:
            v = self.table[_table_index(trajectory, self.table.numel())]
            loss = 0.5 * (group_weights(trajectory) * (v - returns) ** 2).sum()
        elif "state_value" in trajectory.extra:
            v = trajectory.extra["state_value"].reshape(act.shape).float()
            loss = 0.5 * masked_mean((v - returns) ** 2, trajectory)
        else:
            return group_mean(returns, trajectory), returns.new_zeros(())
        return v.detach().masked_fill(~act, 0.0), loss


class ActionValueCritic(nn.Module):
    """Q(s, ·) rows used by the WPL learners.

    Sources, in order: a learner-owned table ``Q [num_states, num_actions]`` (tabular routers)
    regressing on the returns of the taken actions with :func:`state_action_weights` (SGD at lr
    alpha moves ``Q(s, a)`` by ``alpha * mean(G - Q(s, a))``); the router's ``extra["q_values"]``
    ``[B, d, A]`` (a Q head of a non-tabular router; mean squared error over active decisions);
    otherwise, for tabular routers only, per-batch mean returns per state-action, with the actions
    not taken in the batch marked unseen.
    """

    def __init__(self, num_states: int | None = None, num_actions: int | None = None, init: float = 0.0) -> None:
        super().__init__()
        self.init = float(init)
        self.num_states = num_states
        self.num_actions = num_actions
        self.table: nn.Parameter | None = None
        self.setup(num_states, num_actions)

    def setup(self, num_states: int | None = None, num_actions: int | None = None) -> None:
        """Fill in the table's sizes; the table is created once both are known (before the optimizer).

        Routers call the learner's ``setup_actions(num_actions)`` when they are built, so
        ``num_states`` alone is enough in ``learner_kwargs``.
        """
        self.num_states = num_states or self.num_states
        self.num_actions = num_actions or self.num_actions
        if not (self.num_states and self.num_actions):
            return
        shape = (int(self.num_states), int(self.num_actions))
        if self.table is None or tuple(self.table.shape) != shape:
            self.table = nn.Parameter(torch.full(shape, self.init))

    def forward(self, trajectory: Trajectory, returns: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(Q rows [B, d, A] detached, seen [B, d, A] bool, critic loss scalar)``."""
        act = trajectory.active
        taken = trajectory.actions.clamp_min(0).unsqueeze(-1)
        if self.num_states and self.table is None:
            raise ValueError("the learner's Q table needs num_actions (routers pass it via setup_actions)")
        if self.table is not None:
            if self.table.shape[1] != trajectory.num_actions:
                raise ValueError(
                    f"the learner's Q table has {self.table.shape[1]} actions, the router {trajectory.num_actions}"
                )
            q = self.table[_table_index(trajectory, self.table.shape[0])]
            q_taken = q.gather(-1, taken).squeeze(-1)
            loss = 0.5 * (state_action_weights(trajectory) * (q_taken - returns) ** 2).sum()
        elif "q_values" in trajectory.extra:
            q = trajectory.extra["q_values"].float()
            q_taken = q.gather(-1, taken).squeeze(-1)
            loss = 0.5 * masked_mean((q_taken - returns) ** 2, trajectory)
        elif trajectory.state_index is not None:
            mean, seen = group_action_mean(returns, trajectory)
            return mean, seen, returns.new_zeros(())
        else:
            raise ValueError(
                "WPL needs Q(s, ·): a tabular router (state_index), or a router that puts "
                "extra['q_values'] [B, A] into its decisions"
            )
        seen = act.unsqueeze(-1).expand_as(q)
        return q.detach().masked_fill(~seen, 0.0), seen, loss
