"""Single function-approximator router (Rosenbaum's thesis, ch. 3): an MLP over the routing state."""

from __future__ import annotations

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
        if state_dim < 1 or num_meta < 0 or depth < 1:
            raise ValueError(
                f"need state_dim >= 1, num_meta >= 0, depth >= 1; got {state_dim}, {num_meta}, {depth}"
            )
        self.state_dim = state_dim
        self.num_meta = num_meta
        self.depth = depth
        self.detach_state = detach_state
        self.net = nn.Sequential(
            nn.Linear(state_dim + num_meta + depth, hidden), nn.ReLU(), nn.Linear(hidden, num_actions)
        )

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
