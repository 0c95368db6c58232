"""Learner base class and the registry that maps config names to decision-making algorithms."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..native import epsilon_greedy_rows as native_epsilon_greedy_rows
from ..native import greedy_rows_native_runs
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

    #: per-decision estimates the learner reads from ``Decision.extra`` when its router has no
    #: tabular states (``"q_values"``: Q(s, .) ``[B, A]``; ``"state_value"``: V(s) ``[B]``); routers that
    #: read a state (:class:`~nli_routing.routing.approx.ApproxRouter`) grow one critic head per name
    router_heads: tuple[str, ...] = ()
    #: the learner reads the router's values as a probability table and needs a TabularRouter
    tabular_only = False

    def select(
        self, values: Tensor, epsilon: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def loss(self, trajectory: Trajectory) -> Tensor:
        raise NotImplementedError

    #: optional ``fusion_settings() -> tuple | None``: the settings the loss depends on, for learners whose loss
    #: over several layers' concatenated trajectories equals the sum of their losses (they then share one
    #: computation, :mod:`nli_routing.routing.objective`); None (default): every layer alone
    fusion_settings = None

    #: optional ``select_rows(table [R, A], rows [N], epsilon, generator)``: :meth:`select` for
    #: values that are rows of a table (tabular routers use it when the learner defines it)
    select_rows = None

    def greedy(self, values: Tensor) -> Tensor:
        """The action the learner would take without exploration."""
        return values.argmax(-1)


TIE_BREAKS = ("random", "lowest")


def check_choice(what: str, value, choices: tuple):
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming the option."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def check_flag(what: str, value) -> bool:
    """``value`` if it is a bool (learner options come as ``key=true|false``), else a ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def epsilon_greedy(
    values: Tensor, epsilon: float, generator: torch.Generator | None = None, ties: str = "lowest"
) -> tuple[Tensor, Tensor]:
    """Epsilon-greedy selection as in thesis eq. 3.3: the greedy action with probability ``1 - eps``,
    each of the ``A - 1`` other actions with probability ``eps / (A - 1)``.

    Greedy ties are broken uniformly at random per decision (``ties="random"``) or by the lowest
    index (``ties="lowest"``: every sample of a state takes the same action while its values are
    tied, e.g. at initialisation). Random draws come from ``generator`` (a CPU
    generator) so runs are reproducible: three uniform numbers per decision (tie-break, explore,
    random action), whatever the number of actions.

    Returns ``(actions [B], explored [B] bool)``; ``explored`` marks exactly the non-greedy actions
    (with a single action nothing is ever explored).
    """
    b, a = values.shape
    device = values.device
    # actions along dim 0: the reductions over a few actions run vectorised over the samples
    v = values.detach().t().contiguous()
    u = torch.rand(3, b, generator=generator).to(device)
    is_max = v >= v.max(0).values
    rank = is_max.cumsum(0, dtype=torch.int32)  # [A, B]: maximal actions seen up to each action
    n_max = rank[-1]
    if ties == "lowest":
        pick = torch.zeros_like(n_max)
    else:
        pick = (u[0] * n_max).to(torch.int32).clamp_max(n_max - 1)  # which of the tied maxima, uniform
    greedy = (rank <= pick).sum(0)  # index of the (pick + 1)-th maximal action
    return _explore(greedy, u, epsilon, a)


def epsilon_greedy_rows(
    table: Tensor, rows: Tensor, epsilon: float, generator: torch.Generator | None = None, ties: str = "lowest"
) -> tuple[Tensor, Tensor]:
    """:func:`epsilon_greedy` for decisions whose values are rows of a table: ``table [R, A]``,
    ``rows [N]`` each decision's row. Same random draws and same actions as
    ``epsilon_greedy(table[rows], ...)``, but the greedy sets are found once per table row, so the
    per-decision work does not grow with the number of actions A.
    """
    n = rows.shape[0]
    a = table.shape[1]
    device = table.device
    if greedy_rows_native_runs(table, rows):  # the same draws, the rest as one native operator
        return native_epsilon_greedy_rows(table, rows, torch.rand(3, n, generator=generator), epsilon, ties)
    v = table.detach()
    is_max = v >= v.max(-1, keepdim=True).values  # [R, A]
    n_max = is_max.sum(-1)
    maxima = torch.argsort((~is_max).to(torch.int8), dim=-1, stable=True)  # each row's maxima first, in order
    u = torch.rand(3, n, generator=generator).to(device)
    k = n_max.index_select(0, rows)
    pick = torch.zeros_like(k) if ties == "lowest" else (u[0] * k).long().clamp_max(k - 1)
    greedy = maxima.view(-1).index_select(0, rows * a + pick)
    return _explore(greedy, u, epsilon, a)


def _explore(greedy: Tensor, u: Tensor, epsilon: float, a: int) -> tuple[Tensor, Tensor]:
    """Replace each greedy action, with probability epsilon, by one of the ``a - 1`` other actions
    drawn uniformly (eq. 3.3), from the draws ``u[1]`` (explore?) and ``u[2]`` (which action)."""
    if epsilon <= 0.0 or a < 2:
        return greedy, torch.zeros_like(greedy, dtype=torch.bool)
    explored = u[1] < epsilon
    other = (u[2] * (a - 1)).long().clamp_max(a - 2)  # one of the a - 1 non-greedy actions
    other = other + (other >= greedy).to(other.dtype)
    return torch.where(explored, other, greedy), explored


class EpsilonGreedyLearner(Learner):
    """A value learner that acts epsilon-greedily on the router's values (eq. 3.3); ``ties`` says how
    greedy ties are broken (see :func:`epsilon_greedy`)."""

    def __init__(self, ties: str = "lowest") -> None:
        super().__init__()
        self.ties = check_choice("ties", ties, TIE_BREAKS)

    def select(self, values, epsilon, generator=None):
        actions, explored = epsilon_greedy(values, epsilon, generator, self.ties)
        return actions, explored, {}

    def select_rows(self, table, rows, epsilon, generator=None):
        actions, explored = epsilon_greedy_rows(table, rows, epsilon, generator, self.ties)
        return actions, explored, {}


def inverse_counts(keys: Tensor, active: Tensor, size: int | None) -> Tensor:
    """``[B, d]`` ``1 / n(key)`` over the active decisions (0 elsewhere), without host synchronisation.

    ``size`` (the number of distinct keys, when known) counts in a fixed histogram; ``None`` counts
    by sorting the keys.
    """
    if size:
        flat = keys.long().masked_fill(~active, size).flatten()  # inactive decisions count in a spare bin
        counts = torch.zeros(size + 1, device=keys.device).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
        return active.float() / counts.index_select(0, flat).view_as(active)
    flat = keys.long().masked_fill(~active, -1).flatten()
    ordered = flat.sort().values
    counts = torch.searchsorted(ordered, flat, right=True) - torch.searchsorted(ordered, flat)
    return active.float() / counts.view_as(active).float()


def state_action_weights(trajectory: Trajectory) -> Tensor:
    """``[B, d]`` weights ``1 / n(s, a)`` over the active decisions of a tabular trajectory.

    With these weights a summed squared error under SGD with learning rate alpha moves each table
    entry by ``alpha * mean(target - Q)`` over the samples that visited it: the Watkins update
    with the batch-averaged target, independent of how many samples shared the state.
    Counted in a histogram of ``num_states * num_actions`` bins when the trajectory knows its number of
    states, by sorting the keys otherwise (no host synchronisation either way).
    """
    act = trajectory.active
    if trajectory.state_index is None:
        n = act.sum().clamp_min(1)
        return act.float() / n
    a = trajectory.num_actions
    key = trajectory.state_index * a + trajectory.actions.clamp_min(0)
    return inverse_counts(key, act, trajectory.num_states * a if trajectory.num_states else None)
