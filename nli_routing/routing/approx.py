"""Single function-approximator router (Rosenbaum's thesis, ch. 3): an MLP over the routing state."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exploration import ExplorationSchedule
from .learners import Learner
from .routers import Router
from .trajectory import check_range


class ApproxRouter(Router):
    """One MLP for all agents: state = [activation, one_hot(meta), one_hot(depth)] -> ``[B, A]``.

    ``state_dim`` is the width D of the pooled activation ``[B, D]`` (the routed layer pools
    token-level activations); ``num_meta = 0`` drops the meta part (and ``meta`` may be ``None``);
    ``depth`` is the number of decision steps it serves (the depth one-hot's size). With
    ``num_actions = width + 1`` it recurs with a stop action (``RoutedLayer(allow_stop=True)``).

    ``detach_state=True`` (default) keeps the router loss out of the activations; with ``False``
    gradients flow from the router (its loss, or the task loss of a relaxed learner) into the
    activations and hence into the blocks that produced them.

    Learners that need a critic (``Learner.router_heads``: WPL-approx's Q(s, .), AAC's and advantage
    learning's V(s)) get one extra MLP head each over the same router state (:meth:`add_heads`);
    its estimates travel in ``Decision.extra``. ``learner="wpl"`` (the tabular policy table) is
    refused: use ``"wpl-approx"``.
    """

    reads_state = True

    def __init__(
        self,
        state_dim: int,
        num_meta: int,
        depth: int,
        num_actions: int,
        hidden: int = 64,
        detach_state: bool = True,
        learner: str | Learner = "qlearning",
        exploration: str | ExplorationSchedule | dict = "med",
        seed: int = 0,
        learner_kwargs: dict | None = None,
    ) -> None:
        super().__init__(num_actions, learner, exploration, seed, learner_kwargs)
        if self.learner.tabular_only:
            raise ValueError(
                f"learner {self.learner.name!r} needs a TabularRouter (its values are a policy table); "
                "ApproxRouter gives MLP outputs: use 'wpl-approx'"
            )
        if state_dim < 1 or num_meta < 0 or depth < 1:
            raise ValueError(
                f"need state_dim >= 1, num_meta >= 0, depth >= 1; got {state_dim}, {num_meta}, {depth}"
            )
        self.state_dim = state_dim
        self.num_meta = num_meta
        self.depth = depth
        self.detach_state = detach_state
        self.hidden = hidden
        self.net = self._mlp(num_actions)
        self.heads = nn.ModuleDict()
        self.add_heads(self.learner.router_heads)

    def _mlp(self, out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(self.state_dim + self.num_meta + self.depth, self.hidden), nn.ReLU(), nn.Linear(self.hidden, out)
        )

    def add_heads(self, names: Sequence[str]) -> None:
        """One MLP over the router state per critic head: ``q_values`` gives ``[B, A]``,
        ``state_value`` ``[B]`` (the learner's critic trains it through the router's optimizer)."""
        sizes = {"q_values": self.num_actions, "state_value": 1}
        for name in names:
            if name not in sizes:
                raise ValueError(f"unknown critic head {name!r}; ApproxRouter offers {sorted(sizes)}")
            if name not in self.heads:
                self.heads[name] = self._mlp(sizes[name])

    def head_values(self, state: Tensor, meta: Tensor | None, depth: int) -> dict[str, Tensor]:
        if not len(self.heads):
            return {}
        s = self.build_state(state, meta, depth)
        out = {name: head(s) for name, head in self.heads.items()}
        if "state_value" in out:
            out["state_value"] = out["state_value"].squeeze(-1)
        return out

    def build_state(self, state: Tensor, meta: Tensor | None, depth: int) -> Tensor:
        """``[B, state_dim + num_meta + depth]`` router input (activation detached if configured)."""
        if state is None or state.dim() != 2 or state.shape[1] != self.state_dim:
            shape = None if state is None else tuple(state.shape)
            raise ValueError(f"ApproxRouter needs a pooled state [B, {self.state_dim}], got {shape}")
        if depth >= self.depth:
            raise ValueError(f"depth {depth} is beyond this router's {self.depth} steps")
        s = state.detach() if self.detach_state else state
        parts = [s]
        if self.num_meta:
            if meta is None:
                raise ValueError(f"this ApproxRouter has num_meta={self.num_meta} and needs meta labels")
            parts.append(F.one_hot(meta, self.num_meta).to(s.dtype))
        step = torch.zeros(s.shape[0], self.depth, dtype=s.dtype, device=s.device)
        step[:, depth] = 1.0
        parts.append(step)
        return torch.cat(parts, 1)

    def values(self, state: Tensor, meta: Tensor | None, depth: int) -> tuple[Tensor, None]:
        return self.net(self.build_state(state, meta, depth)), None

    def check_meta(self, meta: Tensor) -> None:
        """Raise a clear error for meta labels outside ``[0, num_meta)`` (ignored if num_meta=0)."""
        if not self.num_meta:
            return
        check_range(meta, self.num_meta, "meta labels", f"this router's {self.num_meta} meta classes")
