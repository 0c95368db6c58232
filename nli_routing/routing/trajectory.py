"""Routing decisions and trajectories as batch tensors (no per-sample Python objects)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def check_range(values: Tensor, size: int, what: str, where: str, hint: str = "") -> None:
    """Raise ``ValueError`` naming the offending ``values`` outside ``[0, size)``.

    On the CPU the check reads the values (a cheap host read). On an accelerator, and inside
    ``torch.compile``, it is an asynchronous assertion instead, so the hot path never waits for the
    device and the graph does not break (the error then names the range, not the values).
    """
    if values.device.type != "cpu" or torch.compiler.is_compiling():
        bad = (values < 0) | (values >= size)
        torch._assert_async(~bad.any(), f"{what} outside {where} (valid: 0..{size - 1}){hint}")
        return
    if values.numel() == 0:
        return
    lo, hi = torch.aminmax(values)  # one operator and two host reads on the good path
    if lo.item() < 0 or hi.item() >= size:
        bad = (values < 0) | (values >= size)
        vals = sorted(set(values[bad].tolist()))
        raise ValueError(f"{what} {vals} are outside {where} (valid: 0..{size - 1}){hint}")


@dataclass
class Decision:
    """One routing decision for a whole batch at one depth.

    ``actions [B]`` chosen action per sample (the stop action, if any, is ``num_actions - 1``);
    ``explored [B]`` whether the action was exploratory; ``values [B, A]`` the router's estimates
    (Q-values, logits, ...) with their autograd graph to the router's parameters;
    ``state_index [B]`` a flat id of the decision state for tabular routers (``None`` otherwise).
    ``extra`` holds learner-specific tensors (log-probabilities, baselines, relaxed samples).
    ``table`` (optional): the router's value table as ``[states, A]`` rows, with ``values == table[state_index]``
    (set by tabular routers deciding a whole path); ``table_version`` its version counter when the values were read.
    """

    actions: Tensor
    explored: Tensor
    values: Tensor
    state_index: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    table: Tensor | None = None
    table_version: int = -1


@dataclass
class Trajectory:
    """The decisions of one routed layer for a batch, step by step.

    Shapes: ``meta [B]``, ``actions [B, d]`` (-1 where no decision was taken because the sample had
    stopped), ``explored [B, d]``, ``active [B, d]`` (a decision was taken), ``values [B, d, A]``,
    ``state_index [B, d]`` or ``None``, ``step_rewards [B, d]``, ``final_reward [B]``.
    Rewards are filled in after the task output is known (see :mod:`nli_routing.routing.rewards`).
    """

    meta: Tensor
    actions: Tensor
    explored: Tensor
    active: Tensor
    values: Tensor
    state_index: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    step_rewards: Tensor | None = None
    final_reward: Tensor | None = None
    num_actions: int = 0
    stop_action: int | None = None
    #: number of distinct ``state_index`` values the router can produce (0: unknown); lets batch
    #: statistics count per state in a fixed-size buffer instead of sorting
    num_states: int = 0
    #: the router's value table ``[states, A]`` with ``values == table[state_index]`` (tabular routers deciding
    #: a whole path; None otherwise) and its version counter when the values were read: a learner may read the
    #: table instead of ``values`` while it is unchanged (:meth:`table_unchanged`)
    table: Tensor | None = None
    table_version: int = -1

    def table_unchanged(self) -> bool:
        """Whether :attr:`table` is set and unchanged since the decisions read it (then ``table[state_index]`` is
        ``values``, with the gradient reaching the same parameter)."""
        return self.table is not None and self.table._version == self.table_version

    @property
    def batch_size(self) -> int:
        return int(self.actions.shape[0])

    @property
    def depth(self) -> int:
        return int(self.actions.shape[1])

    @property
    def last_active(self) -> Tensor:
        """``[B, d]`` bool: the step is the last decision of its sample (terminal transition)."""
        nxt = torch.zeros_like(self.active)
        nxt[:, :-1] = self.active[:, 1:]
        return self.active & ~nxt

    @property
    def path_length(self) -> Tensor:
        """``[B]`` number of non-stop blocks each sample went through."""
        taken = self.active
        if self.stop_action is not None:
            taken = taken & (self.actions != self.stop_action)
        return taken.sum(1)

    @classmethod
    def from_decisions(
        cls,
        meta: Tensor,
        decisions: list[Decision],
        active: list[Tensor],
        stop_action: int | None,
        num_states: int = 0,
    ) -> "Trajectory":
        """Stack per-depth decisions (each over the whole batch) into batch tensors."""
        act = torch.stack(active, 1)
        actions = torch.stack([d.actions for d in decisions], 1).masked_fill(~act, -1)
        explored = torch.stack([d.explored for d in decisions], 1) & act
        values = torch.stack([d.values for d in decisions], 1)
        state_index = None
        if decisions[0].state_index is not None:
            state_index = torch.stack([d.state_index for d in decisions], 1)
        extra: dict[str, Tensor] = {}
        for key in decisions[0].extra:
            extra[key] = torch.stack([d.extra[key] for d in decisions], 1)
        return cls(
            meta=meta,
            actions=actions,
            explored=explored,
            active=act,
            values=values,
            state_index=state_index,
            extra=extra,
            num_actions=int(values.shape[-1]),
            stop_action=stop_action,
            num_states=num_states if state_index is not None else 0,
        )

    def detached(self) -> "Trajectory":
        """A copy without autograd graph (for logging and analysis)."""
        return Trajectory(
            meta=self.meta,
            actions=self.actions,
            explored=self.explored,
            active=self.active,
            values=self.values.detach(),
            state_index=self.state_index,
            extra={k: v.detach() for k, v in self.extra.items()},
            step_rewards=self.step_rewards,
            final_reward=self.final_reward,
            num_actions=self.num_actions,
            stop_action=self.stop_action,
            num_states=self.num_states,
            table=None if self.table is None else self.table.detach(),
            table_version=self.table_version,
        )

    def rows(self, index: Tensor) -> "Trajectory":
        """The trajectory of the samples ``index [n]`` (rows of the batch, in that order; the values keep
        their autograd graph). Rewards must not be assigned yet."""
        if self.step_rewards is not None or self.final_reward is not None:
            raise ValueError("Trajectory.rows: select rows before rewards are assigned")
        return Trajectory(
            meta=self.meta[index],
            actions=self.actions[index],
            explored=self.explored[index],
            active=self.active[index],
            values=self.values[index],
            state_index=None if self.state_index is None else self.state_index[index],
            extra={k: v[index] for k, v in self.extra.items()},
            num_actions=self.num_actions,
            stop_action=self.stop_action,
            num_states=self.num_states,
            table=self.table,
            table_version=self.table_version,
        )
