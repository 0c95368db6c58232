"""A bank of fully connected function blocks with stacked weights, run as one grouped matmul.

``LinearBank(G, in, out)`` holds G blocks ``act(x @ W_g + b_g)`` (optionally residual,
``x + gate_g * act(x @ W_g + b_g)``) in three tensors: ``weight [G, in, out]``, ``bias [G, out]``
and ``gate [G]``. A routed layer (or :func:`~nli_routing.routing.execution.grouped_apply`) hands it
the rows sorted by block id; the bank computes every block's group in one call, whatever G is:

* ``impl="grouped_mm"``: :func:`torch.nn.functional.grouped_mm` over the sorted rows (one call with
  the group offsets as a tensor: no host synchronisation, so it also runs under ``torch.compile``;
  one kernel on recent GPUs, a loop over the groups inside torch on the CPU);
* ``impl="loop"``: one matmul per non-empty block (reads the group sizes on the host: one sync);
* ``impl="dense"``: no sort at all: every block on every row in one matmul, each row's own block
  gathered (G times the arithmetic, a handful of operations per step; :meth:`LinearBank.dense_forward`);
  on this project's CPU it is slower than grouping at every measured shape (``benchmarks/bank_crossover.py``),
  so it is an explicit choice for machines where the measurement says otherwise;
* ``impl="tiled"``: the sorted rows scattered into tiles of ``tile`` rows (every group padded to a whole
  number of tiles; one host read for the number of tiles), each tile's block weight gathered, one
  batched matmul ``[tiles, tile, in] @ [tiles, in, out]`` with the bias, and the rows gathered back:
  about 10 operators whatever G, at the cost of the padding (at most ``tile - 1`` rows per group) and
  of one weight copy per tile;
* ``impl="gather"``: each row's own weight gathered (``[N, in, out]``) into one batched matmul of
  ``[N, 1, in]`` rows: no padding, no host read, N weight copies of memory traffic;
* ``impl="native"``: the opt-in C++ kernel of :mod:`nli_routing.routing.native` (one BLAS call per
  non-empty group, no per-group operators; float32 CPU rows, other rows as ``auto``); built on first use.
  A routed layer whose banks all run it (and that needs no residual gate, dropout, stop or PASS action or
  relaxed weights) runs its whole path decided ahead as one operator (:meth:`runs_native_path`);
* ``impl="auto"`` (default): the native kernel for float32 CPU rows where the process switched it on
  (:func:`~nli_routing.routing.native.enable_native_cpu_kernels`, ``TrainConfig.native_cpu_kernels``),
  else per shape, by the crossover measured on this project's CPU
  (:data:`AUTO_TILED`, ``benchmarks/bank_crossover.py``): ``tiled`` for many narrow blocks with
  few rows each, else ``grouped_mm`` where this torch build supports it for the
  input (CPU float32/bfloat16/float16, CUDA bfloat16 on compute capability >= 9), else ``loop``. On a
  GPU ``grouped_mm`` (one kernel, no host read) is kept whenever it is supported.

Every implementation gives the same values and gradients as running every sample alone through its block (tested).
Unused blocks receive zero gradients (not ``None``): with momentum, weight decay or Adam an
optimizer still moves them, as it moves every parameter of a dense model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .native import (
    PATH_ACTIVATIONS,
    load_native_kernel,
    native_cpu_kernels_enabled,
    native_kernel_reason,
    native_runs,
    segment_matmul,
)

BANK_ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "identity": lambda x: x}
BANK_IMPLS = ("auto", "grouped_mm", "loop", "dense", "tiled", "gather", "native")
#: where ``impl="auto"`` tiles on the CPU (else grouped_mm): blocks of input width at most ``max_in_dim``,
#: at least ``min_blocks`` of them, at most ``max_rows_per_group`` rows per block (``N / G``). Measured by
#: ``benchmarks/bank_crossover.py --impls grouped_mm dense tiled:8 tiled:32 gather`` on this project's CPU
#: (BENCHMARKS.md "Issue 33"): tiles of 32 won only with 16-wide blocks and 128 of them (0.81x at 4 rows
#: per block, 0.92x at 16); with 64-wide blocks, or 8 and 32 blocks, grouped_mm was as fast or faster.
AUTO_TILED: dict[str, int] = {"max_in_dim": 63, "min_blocks": 128, "max_rows_per_group": 16}
#: rows per tile of ``impl="tiled"`` (every group padded to whole tiles); measured like the crossover
DEFAULT_TILE = 32


def resolve_bank_impl(impl: str, x: Tensor, num_blocks: int = 1) -> str:
    """The kernel a bank of ``num_blocks`` blocks runs sorted rows ``x [N, in]`` with: ``impl`` itself,
    or for ``"auto"`` (and ``"dense"`` rows that arrive sorted) the measured choice: ``"native"`` for
    float32 CPU rows where the process switched the native kernel on, ``"tiled"`` on the CPU in the
    region of :data:`AUTO_TILED`, else ``"grouped_mm"`` where this torch build runs it for ``x``, else
    ``"loop"``. ``"native"`` builds the kernel on first use (a RuntimeError with the reason where it
    cannot) and runs rows it does not take (other dtypes and devices) as ``"auto"`` without it."""
    if impl == "native":
        if load_native_kernel() is None:
            raise RuntimeError(f"LinearBank(impl='native'): {native_kernel_reason()}")
        if native_runs(x):
            return "native"
        impl = "grouped_mm" if grouped_mm_supported(x) else "loop"
    if impl not in ("auto", "dense"):
        return impl
    if native_cpu_kernels_enabled() and native_runs(x):
        return "native"
    if (x.device.type == "cpu" and x.shape[-1] <= AUTO_TILED["max_in_dim"] and num_blocks >= AUTO_TILED["min_blocks"]
            and x.shape[0] <= num_blocks * AUTO_TILED["max_rows_per_group"]):
        return "tiled"
    return "grouped_mm" if grouped_mm_supported(x) else "loop"


def tiled_slots(block: Tensor, num_blocks: int, tile: int) -> tuple[Tensor, Tensor]:
    """For rows sorted by block id ``block [N]`` (ascending, in ``[0, G)``): every group padded to a
    whole number of tiles of ``tile`` rows. Returns each row's slot in the ``[tiles * tile]`` layout
    (row ``r`` of group ``g`` at ``g``'s first tile * ``tile`` + ``r``) and ``tile_block [tiles]``, the
    block of every tile. One host read (the number of tiles, for the buffer's shape)."""
    counts = torch.bincount(block, minlength=num_blocks)
    tiles = (counts + (tile - 1)).div_(tile, rounding_mode="floor")
    ends = tiles.cumsum(0)
    n_tiles = int(ends[-1]) if num_blocks else 0
    tile_block = torch.repeat_interleave(torch.arange(num_blocks, device=block.device), tiles, output_size=n_tiles)
    shift = (ends - tiles) * tile - (counts.cumsum(0) - counts)
    return torch.arange(block.shape[0], device=block.device) + shift.index_select(0, block), tile_block


def tiled_apply(xs: Tensor, slot: Tensor, tile_block: Tensor, tile: int, weights: list[Tensor],
                bias: Tensor | None = None) -> Tensor:
    """Rows ``xs [N, in]`` through their blocks' linear maps in tiles: scattered to their ``slot`` of a
    ``[tiles, tile, in]`` buffer (:func:`tiled_slots`), each tile multiplied by its block's weight of
    every ``[G, k, m]`` of ``weights`` in turn (a low-rank pair: ``[A, B]``; the weights gathered per
    tile) in one batched matmul, ``bias [G, out]`` added with the last, gathered back to ``[N, out]``."""
    n_tiles, d = tile_block.shape[0], xs.shape[1]
    h = xs.new_zeros(n_tiles * tile, d).index_copy_(0, slot, xs).view(n_tiles, tile, d)
    for k, w in enumerate(weights):
        wt = w.index_select(0, tile_block)
        if k == len(weights) - 1 and bias is not None:
            h = torch.baddbmm(bias.index_select(0, tile_block).unsqueeze(1), h, wt)
        else:
            h = torch.bmm(h, wt)
    return h.view(n_tiles * tile, h.shape[-1]).index_select(0, slot)


def gathered_apply(xs: Tensor, block: Tensor, weights: list[Tensor], bias: Tensor | None = None) -> Tensor:
    """Rows ``xs [N, in]`` (any order) through ``block [N]``'s linear maps, each row's own weights
    gathered into one batched matmul of single rows (``bias [G, out]`` added with the last)."""
    h = xs.unsqueeze(1)
    for k, w in enumerate(weights):
        wk = w.index_select(0, block)
        last = k == len(weights) - 1
        h = torch.baddbmm(bias.index_select(0, block).unsqueeze(1), h, wk) if last and bias is not None \
            else torch.bmm(h, wk)
    return h.squeeze(1)


def grouped_mm_supported(x: Tensor) -> bool:
    """Whether :func:`torch.nn.functional.grouped_mm` runs for ``x``'s device and dtype here."""
    if not hasattr(F, "grouped_mm"):
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return False


@torch.library.custom_op("nli_routing::grouped_mm", mutates_args=())
def _grouped_mm_op(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """``F.grouped_mm`` as an opaque op for ``torch.compile``: its own meta kernel accepts only
    bfloat16, which would stop the compiler on float32 CPU banks."""
    return F.grouped_mm(x, weight, offs=offs)


@_grouped_mm_op.register_fake
def _(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[2])


def _grouped_mm_setup(ctx, inputs, output) -> None:
    x, weight, offs = inputs
    ctx.save_for_backward(x, weight, offs)


@torch.library.custom_op("nli_routing::grouped_mm_weight_grad", mutates_args=())
def _grouped_mm_weight_grad(x: Tensor, grad: Tensor, offs: Tensor) -> Tensor:
    """Per group ``x_g^T grad_g`` -> ``[G, K, N]`` (the weight gradient of :func:`_grouped_mm_op`)."""
    return F.grouped_mm(x.t(), grad, offs=offs)


@_grouped_mm_weight_grad.register_fake
def _(x: Tensor, grad: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(offs.shape[0], x.shape[1], grad.shape[1])


def _grouped_mm_backward(ctx, grad: Tensor):
    x, weight, offs = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = _grouped_mm_op(grad, weight.transpose(1, 2).contiguous(), offs)
    return grad_x, _grouped_mm_weight_grad(x, grad, offs), None


_grouped_mm_op.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


def _grouped_mm(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    if torch.compiler.is_compiling():
        return _grouped_mm_op(x, weight, offs)
    return F.grouped_mm(x, weight, offs=offs)


def _grouped_mm_padded(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """``grouped_mm(x, weight, offs)``, zero-padding the inner and outer dims to 16-byte strides
    (the kernel's requirement; e.g. 2- or 10-class heads) and cutting the padding off again."""
    align = max(1, 16 // x.element_size())
    k, n = weight.shape[1], weight.shape[2]
    pad_k, pad_n = -k % align, -n % align
    if pad_k or pad_n:
        weight = F.pad(weight, (0, pad_n, 0, pad_k))
        x = F.pad(x, (0, pad_k)) if pad_k else x
    y = _grouped_mm(x, weight, offs)
    return y[:, :n] if pad_n else y


class BankBlock:
    """Block ``index`` of a :class:`LinearBank` as a callable (``bank[i](x)``), for code that runs
    one block on a whole input (analysis, tests, per-block loops)."""

    def __init__(self, bank: "LinearBank", index: int) -> None:
        self.bank = bank
        self.index = index

    def __call__(self, x: Tensor) -> Tensor:
        return self.bank.block_forward(x, self.index)

    def __repr__(self) -> str:
        return f"BankBlock({self.index} of {self.bank!r})"


class LinearBank(nn.Module):
    """G fully connected blocks ``in -> out`` with stacked parameters (see the module doc).

    ``activation`` one of ``relu``/``tanh``/``gelu``/``identity``; ``residual=True`` (needs
    ``in == out``) adds a ReZero gate per block starting at ``gate_init`` (default 0: every block starts
    as the identity; a non-zero start makes the randomly initialised blocks differ from the first step);
    ``dropout`` applies after the activation in training mode; ``tile``: rows per tile of
    ``impl="tiled"`` (0: :data:`DEFAULT_TILE`).
    """

    def __init__(
        self,
        num_blocks: int,
        in_dim: int,
        out_dim: int,
        activation: str = "relu",
        residual: bool = False,
        dropout: float = 0.0,
        impl: str = "auto",
        gate_init: float = 0.0,
        tile: int = 0,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"a bank needs at least one block, got {num_blocks}")
        if activation not in BANK_ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(BANK_ACTIVATIONS)}")
        if residual and in_dim != out_dim:
            raise ValueError(f"a residual block keeps the dimension, got {in_dim} -> {out_dim}")
        if impl not in BANK_IMPLS:
            raise ValueError(f"impl must be one of {BANK_IMPLS}, got {impl!r}")
        self.num_blocks, self.in_dim, self.out_dim = num_blocks, in_dim, out_dim
        self.activation = activation
        self.residual = residual
        self.dropout = dropout
        if tile < 0:
            raise ValueError(f"tile must be >= 1 rows (0: the default, {DEFAULT_TILE}), got {tile}")
        self.impl = impl
        self.tile = int(tile) or DEFAULT_TILE
        self.weight = nn.Parameter(torch.empty(num_blocks, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_blocks, out_dim))
        self.gate = nn.Parameter(torch.full((num_blocks,), float(gate_init))) if residual else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every block initialised as ``nn.Linear(in, out)`` is (the same random stream as G Linears)."""
        bound = 1.0 / math.sqrt(self.in_dim) if self.in_dim else 0.0
        with torch.no_grad():
            for g in range(self.num_blocks):
                # nn.Linear: kaiming_uniform(a=sqrt(5)) on [out, in] == U(-1/sqrt(in), 1/sqrt(in))
                w = torch.empty(self.out_dim, self.in_dim)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                self.weight[g].copy_(w.t())
                self.bias[g].uniform_(-bound, bound)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> BankBlock:
        if not -self.num_blocks <= index < self.num_blocks:
            raise IndexError(f"block {index} of a bank of {self.num_blocks}")
        return BankBlock(self, index % self.num_blocks)

    def __iter__(self):
        return (self[g] for g in range(self.num_blocks))

    def extra_repr(self) -> str:
        return (f"num_blocks={self.num_blocks}, in_dim={self.in_dim}, out_dim={self.out_dim}, "
                f"activation={self.activation}, residual={self.residual}, impl={self.impl}")

    # ------------------------------------------------------------------ arithmetic
    def _finish(self, x: Tensor, y: Tensor, gate: Tensor | None, inplace: bool = False) -> Tensor:
        """Activation, dropout and the residual connection on the linear output ``y`` (``inplace``:
        ``y`` is a fresh buffer the activation may overwrite)."""
        if inplace and self.activation == "relu":
            y = y.relu_()
        else:
            y = BANK_ACTIVATIONS[self.activation](y)
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        if gate is not None:
            y = x + gate * y
        return y

    def _routed_rows(self, x: Tensor, y: Tensor, groups: Tensor, block: Tensor, scale: Tensor | None,
                     identity: bool) -> Tensor:
        """Finish routed rows ``y`` (the linear part of row i through ``block[i]``, bias added): the
        block's gate, activation and residual, the relaxed ``scale``, and stopped rows (``groups >= G``,
        with ``identity``) back to their input ``x``."""
        gate = None if self.gate is None else self.gate.index_select(0, block).unsqueeze(1)
        y = self._finish(x, y, gate, inplace=True)
        if scale is not None:
            y = y * scale.to(y.dtype).unsqueeze(1)
        if identity:
            y = torch.where((groups >= self.num_blocks).unsqueeze(1), x, y)
        return y

    def block_forward(self, x: Tensor, index: int) -> Tensor:
        """Block ``index`` on all of ``x [..., in]``."""
        y = x @ self.weight[index] + self.bias[index]
        return self._finish(x, y, None if self.gate is None else self.gate[index])

    def all_blocks(self, x: Tensor) -> Tensor:
        """Every block on every row: ``x [N, in] -> [N, G, out]`` (one batched matmul; soft mixtures)."""
        y = torch.einsum("ni,gio->ngo", x, self.weight) + self.bias
        return self._finish(x.unsqueeze(1), y, None if self.gate is None else self.gate.unsqueeze(-1))

    def resolve_impl(self, x: Tensor) -> str:
        return resolve_bank_impl(self.impl, x, self.num_blocks)

    def runs_native_path(self, x: Tensor) -> bool:
        """Whether rows ``x`` can go through this bank inside the native kernel's fused path
        (:func:`~nli_routing.routing.native.routed_path`): the bank resolves to ``"native"`` for them, 2-D
        rows, no residual gate, no dropout in training, an activation the kernel computes."""
        return (x.dim() == 2 and self.gate is None and not (self.dropout > 0 and self.training)
                and self.activation in PATH_ACTIVATIONS and self.resolve_impl(x) == "native")

    def uses_dense(self) -> bool:
        """Whether routed rows run as one dense matmul over every block (:meth:`dense_forward`): only
        with ``impl="dense"``. ``"auto"`` never picks it: measured on the CPU it is slower than grouping
        for every shape tried (BENCHMARKS.md "Issue 19: dense or grouped"; ``benchmarks/bank_crossover.py``
        measures it on another machine)."""
        return self.impl == "dense"

    def dense_forward(self, x: Tensor, groups: Tensor, scale: Tensor | None = None, identity: bool = True) -> Tensor:
        """Row i of ``x [N, in]`` (or ``[N, T, in]``) through block ``groups[i]`` in input order, without sorting: every
        block on every row in one matmul ``x @ [W_0 | ... | W_{G-1}]`` (G times the arithmetic of a
        routed step, one kernel), then each row's own block picked out by one gather. Group ids
        ``>= G`` keep the row as it is (stopped; needs ``in == out``); ``scale [N]`` multiplies
        computed rows. Same values and gradients as :meth:`sorted_forward` (tested)."""
        if x.dim() > 2:  # token-level [N, T, in]: every token follows its sample's block
            rows = x.shape[1:-1].numel()
            y = self.dense_forward(x.reshape(-1, x.shape[-1]), groups.repeat_interleave(rows),
                                   None if scale is None else scale.repeat_interleave(rows), identity)
            return y.view(*x.shape[:-1], y.shape[-1])
        g, n, out = self.num_blocks, x.shape[0], self.out_dim
        identity = identity and self.in_dim == self.out_dim
        block = groups.clamp(max=g - 1) if identity else groups
        w = self.weight.transpose(0, 1).reshape(self.in_dim, g * out)
        y = torch.addmm(self.bias.reshape(-1), x, w).view(n, g, out)
        y = y.gather(1, block.view(n, 1, 1).expand(n, 1, out)).view(n, out)
        return self._routed_rows(x, y, groups, block, scale, identity)

    @staticmethod
    def group_offsets(sorted_groups: Tensor, num_blocks: int) -> Tensor:
        """``int32`` end offset of every block's rows in ``sorted_groups [..., N]`` (ascending), for
        :func:`torch.nn.functional.grouped_mm` (static shape, no host read). Rows of ids
        ``>= num_blocks`` (stopped, sorted last) count with the last block: every row must lie inside
        the offsets, grouped_mm leaves rows past the last one uninitialised (values and gradients)."""
        bounds = torch.arange(1, num_blocks, device=sorted_groups.device, dtype=sorted_groups.dtype)
        bounds = bounds.expand(*sorted_groups.shape[:-1], num_blocks - 1).contiguous()
        ends = torch.searchsorted(sorted_groups, bounds, out_int32=True)
        last = ends.new_full((*sorted_groups.shape[:-1], 1), sorted_groups.shape[-1])
        return torch.cat([ends, last], -1)

    def sorted_forward(
        self,
        xs: Tensor,
        sorted_groups: Tensor,
        scale: Tensor | None = None,
        identity: bool = True,
        offsets: Tensor | None = None,
    ) -> Tensor:
        """Row i of ``xs [N, in]`` through block ``sorted_groups[i]`` (ascending; ``>= G`` last: stopped
        rows kept as they are, needs ``in == out``), returned in the same order (a routed layer chains
        steps without restoring the order between; :func:`~nli_routing.routing.execution.grouped_apply`
        sorts and unsorts). ``scale [N]`` multiplies computed rows (relaxed routers);
        ``identity=False`` promises that no row is stopped (skips one masking op).
        ``offsets``: :meth:`group_offsets` of ``sorted_groups`` when the caller has them already."""
        g = self.num_blocks
        identity = identity and self.in_dim == self.out_dim
        block = sorted_groups.clamp(max=g - 1) if identity else sorted_groups
        impl = self.resolve_impl(xs)
        if impl == "tiled":  # stopped rows (sorted last) ride with the last block and are replaced below
            slot, tile_block = tiled_slots(block, g, self.tile)
            y = tiled_apply(xs, slot, tile_block, self.tile, [self.weight], self.bias)
        elif impl == "gather":
            y = gathered_apply(xs, block, [self.weight], self.bias)
        else:
            if impl in ("grouped_mm", "native"):
                offs = self.group_offsets(sorted_groups, g) if offsets is None else offsets
                # stopped rows (counted with the last block) are replaced below
                y = segment_matmul(xs, self.weight, offs) if impl == "native" else _grouped_mm_padded(xs, self.weight, offs)
            else:
                sizes = torch.bincount(sorted_groups.clamp(max=g), minlength=g + 1).tolist()
                ws = self.weight.unbind(0)  # one view per block: the backward stacks their gradients once
                parts = [c @ ws[k] if k < g else c.new_zeros(c.shape[0], self.out_dim)
                         for k, c in enumerate(xs.split(sizes)) if sizes[k]]
                y = torch.cat(parts) if len(parts) > 1 else parts[0]
            y = y.add_(self.bias.index_select(0, block))  # in place: fresh buffers cost page faults on the CPU
        return self._routed_rows(xs, y, sorted_groups, block, scale, identity)


def inverse_permutation(order: Tensor) -> Tensor:
    """``inv`` with ``inv[order[i]] = i`` (one scatter, no sort)."""
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
