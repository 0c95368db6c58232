"""Routers: they estimate values for the actions of a decision state and return decisions.

A router owns its decision-making algorithm (a :class:`~nli_routing.routing.learners.Learner`,
chosen by name) and an exploration schedule; the learner owns the loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .exploration import ExplorationSchedule, get_schedule
from .learners import RELAXED_WEIGHTS, Learner, build_learner
from .trajectory import Decision, Trajectory, check_range


class Router(nn.Module):
    """Base class. Subclasses implement :meth:`values` (``[B, A]`` estimates for a state)."""

    #: the router reads the pooled activation (the routed layer then passes ``[B, D]`` states)
    reads_state = False
    #: ``values`` returns a flat tabular ``state_index`` (composite routers offset it)
    indexes_states = False
    #: number of distinct ``state_index`` values (0: no tabular states)
    num_states = 0

    def __init__(
        self,
        num_actions: int,
        learner: str | Learner | None = "qlearning",
        exploration: str | ExplorationSchedule | dict = "med",
        seed: int = 0,
        learner_kwargs: dict | None = None,
    ) -> None:
        """``learner=None``: a composite router whose parts have the learners (``DispatchedRouter``)."""
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"a router needs at least one action, got {num_actions}")
        self.num_actions = num_actions
        self.learner = None if learner is None else build_learner(learner, **(learner_kwargs or {}))
        setup = getattr(self.learner, "setup_actions", None)
        if callable(setup):  # learners with action-sized modules (e.g. RELAX's critic)
            setup(num_actions)
        self.schedule = get_schedule(exploration)
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def relaxed(self) -> bool:
        """Decisions carry straight-through weights that let the task loss reach the router."""
        return bool(getattr(self.learner, "relaxed", False))

    @property
    def epsilon(self) -> float:
        """Current exploration rate (0 in eval mode)."""
        return self.schedule.epsilon(self.epoch) if self.training else 0.0

    def set_epoch(self, epoch: int) -> None:
        """Advance the exploration schedule to ``epoch``."""
        self.epoch = int(epoch)

    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor | None]:
        """Return ``(values [B, A], state_index [B] or None)``."""
        raise NotImplementedError

    def add_heads(self, names: Sequence[str]) -> None:
        """Grow the critic heads a learner reads (``Learner.router_heads``); routers without a state
        to read (tabular agents: their learners own tables) have none."""

    def head_values(self, state: Tensor, meta: Tensor, depth: int) -> dict[str, Tensor]:
        """The critic heads' estimates for a decision state (``{}`` without heads)."""
        return {}

    def decide(self, state: Tensor, meta: Tensor, depth: int) -> Decision:
        """One decision per sample of the batch at ``depth`` (critic head estimates in ``extra``)."""
        values, state_index = self.values(state, meta, depth)
        actions, explored, extra = self.learner.select(values, self.epsilon, self.generator)
        heads = self.head_values(state, meta, depth)
        if heads:
            extra = {**extra, **heads}
        return Decision(actions=actions, explored=explored, values=values, state_index=state_index, extra=extra)

    def check_meta(self, meta: Tensor) -> None:
        """Raise a clear error for meta labels this router cannot route (default: any are fine)."""

    def decide_path(self, meta: Tensor, depth: int) -> Decision | None:
        """Every step's decision at once (``Decision`` tensors ``[B, depth, ...]``) for routers whose
        values do not read the activation (tabular agents, fixed routes); ``None`` (the default)
        makes the routed layer decide step by step."""
        return None

    def loss(self, trajectory: Trajectory) -> Tensor:
        """The router loss of one trajectory (delegated to the learner)."""
        return self.learner.loss(trajectory)

    def get_extra_state(self) -> Tensor:
        """The epoch and the exploration generator's state as one ``uint8`` tensor (8 bytes of the
        epoch as int64, then the generator state), so a state dict holds only tensors (safetensors,
        no pickle)."""
        epoch = torch.tensor([self.epoch], dtype=torch.int64).view(torch.uint8)
        return torch.cat([epoch, self.generator.get_state()])

    def set_extra_state(self, state: Tensor | dict) -> None:
        """Inverse of :meth:`get_extra_state`; also reads the ``{"epoch", "generator"}`` dict of
        state dicts written before the tensor form."""
        if isinstance(state, dict):
            self.epoch = int(state["epoch"])
            self.generator.set_state(state["generator"])
            return
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1 or state.numel() <= 8:
            raise ValueError("a router's extra state must be the uint8 tensor of get_extra_state "
                             f"(epoch + generator state), got {type(state).__name__}")
        state = state.cpu()
        self.epoch = int(state[:8].clone().view(torch.int64)[0])
        self.generator.set_state(state[8:].clone())


class TabularRouter(Router):
    """Multi-agent tabular router: one table of action values per meta label (task) and depth.

    ``table[m, t, a]`` is agent m's estimate for action a at depth t (for WPL, whose
    ``tabular_init`` is ``"uniform"``, the policy itself, initialised at ``1/A`` whatever ``init``
    says). Meta labels must lie in
    ``[0, num_meta)``; anything else is an error naming the offending values.

    Capacity balance (``balance_share < 1``, in the spirit of DeepSeek-V3's bias adjustment without
    an auxiliary loss): a bias per depth and action, ``bias [depth, A]`` (<= 0), is added to the
    table when actions are *chosen*, never to the values the learner regresses. After each training
    batch, an action that took more than ``balance_share`` of the batch's decisions at a depth, while
    at least two agents share it, has its bias lowered by ``balance_rate``; any other action has it
    raised back towards 0 at a tenth of that rate. Agents that prefer an overloaded block the least
    move first, so agents that would all sit on one block split over several blocks, while agents
    with a clear preference keep it. ``balance_share = 1`` turns it off.
    """

    indexes_states = True

    def __init__(
        self,
        num_meta: int,
        depth: int,
        num_actions: int,
        learner: str | Learner = "qlearning",
        exploration: str | ExplorationSchedule | dict = "med",
        init: float = 0.0,
        seed: int = 0,
        learner_kwargs: dict | None = None,
        balance_share: float = 1.0,
        balance_rate: float = 0.01,
    ) -> None:
        super().__init__(num_actions, learner, exploration, seed, learner_kwargs)
        if num_meta < 1 or depth < 1:
            raise ValueError(f"need num_meta >= 1 and depth >= 1, got {num_meta}, {depth}")
        if not 0.0 < balance_share <= 1.0:
            raise ValueError(f"balance_share must be in (0, 1], got {balance_share}")
        if not balance_rate >= 0.0:
            raise ValueError(f"balance_rate must be >= 0, got {balance_rate}")
        self.num_meta = num_meta
        self.depth = depth
        if getattr(self.learner, "tabular_init", None) == "uniform":
            init = 1.0 / num_actions  # the table is the policy itself (WPL)
        self.table = nn.Parameter(torch.full((num_meta, depth, num_actions), float(init)))
        self.balance_share = float(balance_share)
        self.balance_rate = float(balance_rate)
        #: selection bias of the capacity balance (see the class docstring); saved with the model when on
        self.register_buffer("balance_bias", torch.zeros(depth, num_actions), persistent=self.balancing)

    @property
    def balancing(self) -> bool:
        return self.balance_share < 1.0 and self.balance_rate > 0.0 and self.num_actions > 1

    def selection_table(self) -> Tensor:
        """``[num_meta * depth, A]`` the values actions are chosen by: the table plus the balance bias."""
        flat = self.table.view(-1, self.num_actions)
        if not self.balancing:
            return flat
        table = self.table if self.relaxed else self.table.detach()  # relaxed learners' weights need the graph
        return (table + self.balance_bias.unsqueeze(0)).view(-1, self.num_actions)

    def decide(self, state: Tensor, meta: Tensor, depth: int) -> Decision:
        """One step's decision (routed layers that decide step by step, e.g. a Transformer's layers):
        with the capacity balance the actions are chosen by the table plus the bias at ``depth``, and
        the bias of that depth moves after a training batch."""
        if not self.balancing:
            return super().decide(state, meta, depth)
        values, state_index = self.values(state, meta, depth)
        table = values if self.relaxed else values.detach()
        chosen = table + self.balance_bias[depth]
        actions, explored, extra = self.learner.select(chosen, self.epsilon, self.generator)
        if self.training:
            full = torch.full((actions.shape[0], self.depth), -1, dtype=torch.long, device=actions.device)
            full[:, depth] = actions
            self.update_balance(full, meta, depth)
        return Decision(actions=actions, explored=explored, values=values, state_index=state_index, extra=extra)

    @torch.no_grad()
    def update_balance(self, actions: Tensor, meta: Tensor, depth: int | None = None) -> None:
        """Move the selection bias after a training batch's decisions ``actions [B, depth]`` (-1: none)
        of the agents ``meta [B]`` (``depth``: only that depth's bias, for step-by-step decisions). A
        block counts as overloaded only while at least two agents share it: one agent's samples cannot
        be split, and pushing it on would only send it round the blocks."""
        valid = actions >= 0
        width = self.num_actions + 1  # one spare column for the decisions not taken
        a = actions.masked_fill(~valid, self.num_actions).long()
        cell = torch.arange(self.depth, device=a.device) * width + a  # [B, depth] (depth, action) cells
        counts = torch.bincount(cell.flatten(), minlength=self.depth * width).view(self.depth, width)[:, :-1]
        share = counts / valid.sum(0, keepdim=True).T.clamp_min(1)
        used = torch.zeros(self.num_meta * self.depth * width, device=a.device)
        used.index_fill_(0, (meta.unsqueeze(1) * (self.depth * width) + cell).flatten(), 1.0)
        agents = used.view(self.num_meta, self.depth, width).sum(0)[:, :-1]
        over = (share > self.balance_share) & (agents >= 2)
        step = torch.where(over, -self.balance_rate, 0.1 * self.balance_rate)
        if depth is not None:  # one step's decisions (``decide``): only that depth's bias moves
            step = step * (torch.arange(self.depth, device=step.device) == depth).unsqueeze(1)
        self.balance_bias.add_(step).clamp_(max=0.0)


    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        if meta is None:
            raise ValueError("TabularRouter needs meta labels (meta=None was given)")
        if depth >= self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        return self.table[meta, depth], meta * self.depth + depth

    @property
    def num_states(self) -> int:
        """Distinct decision states (``state_index`` in ``[0, num_meta * depth)``)."""
        return self.num_meta * self.depth

    def check_meta(self, meta: Tensor) -> None:
        """Raise a clear error if a meta label is outside the table (e.g. unseen in training)."""
        check_range(meta, self.num_meta, "meta labels", f"this router's {self.num_meta} agents",
                    "; a meta class unseen in training cannot be routed")

    def decide_path(self, meta: Tensor, depth: int) -> Decision:
        """Every step's decision at once. The values are rows of the table (one index_select: its
        backward is one index_add, much cheaper on the CPU than an accumulating index_put); a
        learner with ``select_rows`` decides per table row, at a cost that does not grow with the
        number of actions."""
        if meta is None:
            raise ValueError("TabularRouter needs meta labels (meta=None was given)")
        if depth > self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        b = meta.shape[0]
        state_index = meta.unsqueeze(1) * self.depth + torch.arange(depth, device=meta.device)
        rows = state_index.flatten()
        flat = self.table.view(-1, self.num_actions)
        values = flat.index_select(0, rows)
        select = self.selection_table()  # ``flat`` itself without the balance
        if self.learner.select_rows is not None:
            actions, explored, extra = self.learner.select_rows(select, rows, self.epsilon, self.generator)
        else:
            chosen = values if select is flat else select.index_select(0, rows)
            actions, explored, extra = self.learner.select(chosen, self.epsilon, self.generator)
        if self.balancing and self.training:
            self.update_balance(actions.view(b, depth), meta)
        return Decision(
            actions=actions.view(b, depth),
            explored=explored.view(b, depth),
            values=values.view(b, depth, self.num_actions),
            state_index=state_index,
            extra={k: v.reshape(b, depth, *v.shape[1:]) for k, v in extra.items()},
            table=flat,
            table_version=flat._version,
        )

    def greedy_policy(self) -> Tensor:
        """``[num_meta, depth]`` greedy action of every agent at every depth (with the balance bias)."""
        return self.selection_table().detach().view(self.num_meta, self.depth, -1).argmax(-1)


def _check_same_width(routers: Sequence[nn.Module], what: str) -> int:
    widths = {int(r.num_actions) for r in routers}
    if len(widths) != 1:
        raise ValueError(f"{what} must all have the same number of actions, got {sorted(widths)}")
    return widths.pop()


def _check_meta_all(routers: Sequence[Router], meta: Tensor) -> None:
    for r in routers:
        r.check_meta(meta)


class PerStepRouter(Router):
    """One subrouter per depth (e.g. one ``ApproxRouter`` or ``TabularRouter(depth=1)`` per step).

    At depth t, ``values`` delegates to ``routers[t]``, called with depth 0 (each subrouter is a
    single-step agent). The decision-making algorithm and exploration belong to this router (one
    learner over the whole trajectory, so Q-learning bootstraps across the steps); the subrouters
    only provide values and parameters, their own learners are unused. Tabular state indices are
    offset per step (``index * depth + t``) so they never collide; they are kept only when every
    subrouter is tabular.
    """

    def __init__(
        self,
        routers: Sequence[Router],
        learner: str | Learner = "qlearning",
        exploration: str | ExplorationSchedule | dict = "med",
        seed: int = 0,
        learner_kwargs: dict | None = None,
    ) -> None:
        if len(routers) < 1:
            raise ValueError("PerStepRouter needs at least one subrouter")
        width = _check_same_width(routers, "per-step subrouters")
        super().__init__(width, learner, exploration, seed, learner_kwargs)
        self.steps = nn.ModuleList(routers)
        self.depth = len(routers)
        self.reads_state = any(r.reads_state for r in routers)
        self.indexes_states = all(r.indexes_states for r in routers)
        if self.learner.tabular_only and not self.indexes_states:
            raise ValueError(
                f"learner {self.learner.name!r} needs tabular subrouters (its values are a policy table); "
                "use 'wpl-approx' with approximator steps"
            )
        for r in routers:  # this router's learner reads the heads of every step's subrouter
            r.add_heads(self.learner.router_heads)

    def head_values(self, state: Tensor, meta: Tensor, depth: int) -> dict[str, Tensor]:
        return self.steps[depth].head_values(state, meta, 0)

    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor | None]:
        if depth >= self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        values, index = self.steps[depth].values(state, meta, 0)
        if not self.indexes_states or index is None:
            return values, None
        return values, index * self.depth + depth

    @property
    def num_states(self) -> int:
        """Distinct state ids (``index * depth + t``) when every step is tabular, else 0."""
        if not self.indexes_states:
            return 0
        return max(int(r.num_states) for r in self.steps) * self.depth

    def check_meta(self, meta: Tensor) -> None:
        _check_meta_all(self.steps, meta)


class DispatchedRouter(Router):
    """A dispatcher assigns each sample to one of K subrouters, which then routes it at every depth.

    ``dispatcher`` is a router with K actions deciding once per sample at depth 0 (e.g.
    ``TabularRouter(num_meta, 1, K)`` over meta labels or ``ApproxRouter(..., depth=1)`` over the
    activation), with its own learner and exploration. Every subrouter (any router type, same
    number of actions, same learner family so that their ``extra`` tensors match) computes its
    decision for the whole batch; each sample takes the one of its subrouter (gather, no Python
    loop over samples). ``Decision.extra`` records ``dispatch [B]`` plus the dispatcher's
    ``dispatch_values``, ``dispatch_explored``, ``dispatch_state_index`` and its learner's extras
    (prefixed ``dispatch:``), repeated at every depth (with graph at depth 0 only).

    The dispatch is decided at depth 0 and remembered (detached) for the later depths of the same
    batch, so the depths of one batch must be decided in order. :meth:`loss` is the sum of each
    subrouter's learner loss on its own samples and the dispatcher's learner loss on the one-step
    trajectory of the dispatch decisions, rewarded with the same final reward.
    With relaxed subrouters (Gumbel/RELAX) the layer scales block outputs by the merged
    straight-through weights; a relaxed dispatcher multiplies its own weight in at depth 0.
    """

    def __init__(self, dispatcher: Router, subrouters: Sequence[Router]) -> None:
        if len(subrouters) < 1:
            raise ValueError("DispatchedRouter needs at least one subrouter")
        if dispatcher.num_actions != len(subrouters):
            raise ValueError(
                f"dispatcher has {dispatcher.num_actions} actions but there are {len(subrouters)} subrouters"
            )
        # no learner of its own: its parts have theirs
        super().__init__(_check_same_width(subrouters, "dispatched subrouters"), learner=None, exploration="none")
        self.dispatcher = dispatcher
        self.subrouters = nn.ModuleList(subrouters)
        relaxed = {bool(r.relaxed) for r in subrouters}
        if len(relaxed) != 1:
            raise ValueError("subrouters must be all relaxed (Gumbel/RELAX) or all not")
        if dispatcher.relaxed and not relaxed.issuperset({True}):
            raise ValueError("a relaxed dispatcher needs relaxed subrouters")
        self._relaxed = relaxed.pop()
        self.reads_state = any(r.reads_state for r in [dispatcher, *subrouters])
        self.indexes_states = all(r.indexes_states for r in subrouters)
        self.epoch = 0
        self.generator = torch.Generator()
        self._cache: dict[str, Tensor] | None = None

    @property
    def relaxed(self) -> bool:
        return self._relaxed

    @property
    def epsilon(self) -> float:
        return self.dispatcher.epsilon

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for r in [self.dispatcher, *self.subrouters]:
            r.set_epoch(epoch)

    @property
    def num_states(self) -> int:
        """Distinct merged state ids ``s * K + j`` (subrouter j's state s) when every subrouter is tabular."""
        if not self.indexes_states:
            return 0
        return max(int(r.num_states) for r in self.subrouters) * len(self.subrouters)

    def check_meta(self, meta: Tensor) -> None:
        _check_meta_all([self.dispatcher, *self.subrouters], meta)

    def _dispatch(self, state: Tensor, meta: Tensor, depth: int, b: int) -> dict[str, Tensor]:
        """The dispatcher's decision tensors (decided at depth 0, cached detached for later depths)."""
        if depth == 0:
            d = self.dispatcher.decide(state, meta, 0)
            out = {"dispatch": d.actions, "dispatch_explored": d.explored, "dispatch_values": d.values}
            if d.state_index is not None:
                out["dispatch_state_index"] = d.state_index
            out.update({f"dispatch:{k}": v for k, v in d.extra.items()})
            self._cache = {k: v.detach() for k, v in out.items()}
            return out
        if self._cache is None or self._cache["dispatch"].shape[0] != b:
            raise RuntimeError("DispatchedRouter dispatches at depth 0: decide depth 0 of this batch first")
        return dict(self._cache)

    def decide(self, state: Tensor, meta: Tensor, depth: int) -> Decision:
        b = meta.shape[0] if meta is not None else state.shape[0]
        disp = self._dispatch(state, meta, depth, b)
        k = disp["dispatch"]
        rows = torch.arange(b, device=k.device)
        subs = [r.decide(state, meta, depth) for r in self.subrouters]

        def pick(tensors: list[Tensor]) -> Tensor:
            return torch.stack(tensors, 0)[k, rows]

        keys = set(subs[0].extra)
        if any(set(s.extra) != keys for s in subs):
            raise ValueError("subrouters return different extra tensors: give them the same learner family")
        extra = {key: pick([s.extra[key] for s in subs]) for key in keys}
        if depth == 0 and self.dispatcher.relaxed:
            w = disp[f"dispatch:{RELAXED_WEIGHTS}"].gather(1, k.unsqueeze(1))
            extra[RELAXED_WEIGHTS] = extra[RELAXED_WEIGHTS] * w
        extra.update(disp)
        state_index = None
        if self.indexes_states and all(s.state_index is not None for s in subs):
            n = len(subs)
            state_index = pick([s.state_index * n + j for j, s in enumerate(subs)])
        return Decision(
            actions=pick([s.actions for s in subs]),
            explored=pick([s.explored for s in subs]),
            values=pick([s.values for s in subs]),
            state_index=state_index,
            extra=extra,
        )

    def values(self, state: Tensor, meta: Tensor, depth: int) -> tuple[Tensor, Tensor | None]:
        """Merged values of this batch's dispatch (depth 0 decides a new dispatch)."""
        dec = self.decide(state, meta, depth)
        return dec.values, dec.state_index

    def dispatch_trajectory(self, trajectory: Trajectory) -> Trajectory:
        """The one-step trajectory of the dispatch decisions, with the layer's final reward."""
        ex = trajectory.extra
        b = trajectory.batch_size
        device = trajectory.actions.device
        prefix = "dispatch:"
        return Trajectory(
            meta=trajectory.meta,
            actions=ex["dispatch"][:, :1],
            explored=ex["dispatch_explored"][:, :1],
            active=torch.ones(b, 1, dtype=torch.bool, device=device),
            values=ex["dispatch_values"][:, :1],
            state_index=ex["dispatch_state_index"][:, :1] if "dispatch_state_index" in ex else None,
            extra={k[len(prefix):]: v[:, :1] for k, v in ex.items() if k.startswith(prefix)},
            step_rewards=None if trajectory.final_reward is None else torch.zeros(b, 1, device=device),
            final_reward=trajectory.final_reward,
            num_actions=self.dispatcher.num_actions,
            stop_action=None,
            num_states=int(self.dispatcher.num_states) if "dispatch_state_index" in ex else 0,
        )

    def subrouter_trajectory(self, trajectory: Trajectory, j: int) -> Trajectory | None:
        """The trajectory of the samples dispatched to subrouter j, in that subrouter's own state ids
        (merged ids ``s * K + j`` mapped back to ``s``); ``None`` when no sample went there."""
        k = trajectory.extra["dispatch"][:, 0]
        idx = (k == j).nonzero().squeeze(1)
        if not idx.numel():
            return None
        sub = select_samples(trajectory, idx)
        if sub.state_index is not None:
            sub.state_index = torch.div(sub.state_index, len(self.subrouters), rounding_mode="floor")
            sub.num_states = int(self.subrouters[j].num_states)
        return sub

    def loss(self, trajectory: Trajectory) -> Tensor:
        """Subrouters' losses on their own samples plus the dispatcher's loss on its decisions."""
        total = self.dispatcher.loss(self.dispatch_trajectory(trajectory))
        for j, r in enumerate(self.subrouters):
            sub = self.subrouter_trajectory(trajectory, j)
            if sub is not None:
                total = total + r.loss(sub)
        return total


def select_samples(trajectory: Trajectory, idx: Tensor) -> Trajectory:
    """The trajectory of the samples ``idx [n]`` only (every batch tensor indexed on dim 0)."""

    def take(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.index_select(0, idx)

    return Trajectory(
        meta=take(trajectory.meta),
        actions=take(trajectory.actions),
        explored=take(trajectory.explored),
        active=take(trajectory.active),
        values=take(trajectory.values),
        state_index=take(trajectory.state_index),
        extra={k: take(v) for k, v in trajectory.extra.items()},
        step_rewards=take(trajectory.step_rewards),
        final_reward=take(trajectory.final_reward),
        num_actions=trajectory.num_actions,
        stop_action=trajectory.stop_action,
        num_states=trajectory.num_states,
    )
