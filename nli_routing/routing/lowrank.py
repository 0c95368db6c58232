"""Low-rank experts: ``b`` LoRA-style deltas ``x A_k B_k`` of one linear layer, one chosen per sample.

:class:`LowRankBank` holds ``A [b, in, r]`` (initialised like LoRA's down projection) and
``B [b, r, out]`` (zeros, so every expert starts as the frozen layer it is added to), scaled by
``alpha / r``. ``sorted_forward`` runs rows sorted by expert through two grouped matmuls (one
kernel each whatever the number of experts, no host synchronisation), or a loop over the used
experts where ``grouped_mm`` is not available; it plugs into the ``"grouped_mm"`` execution of
:mod:`nli_routing.routing.execution` like a :class:`~nli_routing.routing.bank.LinearBank`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .bank import BANK_IMPLS, DEFAULT_TILE, LinearBank, _grouped_mm_padded, gathered_apply, resolve_bank_impl, tiled_apply, tiled_slots
from .native import segment_matmul

__all__ = ["LowRankBank"]


class LowRankBank(nn.Module):
    """``num_experts`` low-rank deltas of a ``in_dim -> out_dim`` linear map, rank ``rank``."""

    def __init__(self, num_experts: int, in_dim: int, out_dim: int, rank: int = 8, alpha: float = 16.0,
                 impl: str = "auto", generator: torch.Generator | None = None) -> None:
        super().__init__()
        if num_experts < 1 or rank < 1:
            raise ValueError(f"a low-rank bank needs >= 1 expert and rank >= 1, got {num_experts}, {rank}")
        impls = tuple(i for i in BANK_IMPLS if i != "dense")
        if impl not in impls:
            raise ValueError(f"impl must be one of {impls}, got {impl!r}")
        self.num_experts, self.in_dim, self.out_dim, self.rank = num_experts, in_dim, out_dim, rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.impl = impl
        self.A = nn.Parameter(torch.empty(num_experts, in_dim, rank))
        self.B = nn.Parameter(torch.zeros(num_experts, rank, out_dim))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """``A``: each expert's ``[rank, in]`` down projection Kaiming-uniform (a = sqrt(5)), as LoRA and
        ``nn.Linear`` draw it; ``B`` zeros."""
        bound = 1.0 / math.sqrt(self.in_dim)  # kaiming_uniform_(a=sqrt(5)) on a [rank, in] weight
        with torch.no_grad():
            for k in range(self.num_experts):
                w = torch.empty(self.rank, self.in_dim).uniform_(-bound, bound, generator=generator)
                self.A[k].copy_(w.t())
            self.B.zero_()

    def __len__(self) -> int:
        return self.num_experts

    def expert_forward(self, x: Tensor, k: int) -> Tensor:
        """Expert ``k``'s delta on all of ``x [..., in]``."""
        return (x @ self.A[k]) @ self.B[k] * self.scaling

    def sorted_forward(self, xs: Tensor, sorted_groups: Tensor, scale: Tensor | None = None, identity: bool = False,
                       offsets: Tensor | None = None) -> Tensor:
        """Row i of ``xs [N, in]`` through expert ``sorted_groups[i]`` (ascending), in the same order;
        ``scale [N]`` multiplies each row's delta (relaxed routers). There is no stop action."""
        g = self.num_experts
        impl = resolve_bank_impl(self.impl, xs, g)
        if impl == "tiled":
            slot, tile_block = tiled_slots(sorted_groups, g, DEFAULT_TILE)
            y = tiled_apply(xs, slot, tile_block, DEFAULT_TILE, [self.A, self.B])
        elif impl == "gather":
            y = gathered_apply(xs, sorted_groups, [self.A, self.B])
        elif impl in ("grouped_mm", "native"):
            offs = LinearBank.group_offsets(sorted_groups, g) if offsets is None else offsets
            mm = segment_matmul if impl == "native" else _grouped_mm_padded
            y = mm(mm(xs, self.A, offs), self.B, offs)
        else:
            sizes = torch.bincount(sorted_groups, minlength=g).tolist()
            parts = [(c @ self.A[k]) @ self.B[k] for k, c in enumerate(xs.split(sizes)) if sizes[k]]
            y = torch.cat(parts) if len(parts) > 1 else parts[0]
        y = y * self.scaling
        if scale is not None:
            y = y * scale.to(y.dtype).unsqueeze(1)
        return y

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, alpha={self.alpha}"
