"""Execution of a routing step: samples grouped by their chosen block, every block run once on its group.

One interface with interchangeable implementations (the way transformers' MoE integration swaps
eager / batched_mm / grouped_mm experts):

* :class:`GroupPlan`: the grouping of a batch by block id: one stable sort, the inverse
  permutation, the group sizes (read on the host only when an implementation needs them).
* :class:`Execution`: ``run_sorted`` runs rows already in the plan's order through their blocks;
  ``__call__`` gathers, runs and restores the input order. Implementations (:data:`EXECUTIONS`):

  - ``"eager"``: a list of modules, each called once on its contiguous slice of rows;
  - ``"grouped_mm"``: a :class:`~nli_routing.routing.bank.LinearBank` (or the low-rank experts of
    :class:`~nli_routing.routing.lowrank.LowRankBank`), all groups in one grouped matmul without
    host synchronisation;
  - ``"call"``: injected modules (a pretrained Transformer's layers) called with every
    batch-shaped positional and keyword argument sliced to the group, outputs reassembled;
  - ``"path"``: a composition of one block per step for every path (path codes as groups), for
    recurrences that sort the batch by path once and run every path's composition at every time
    step on its slice (the routed LSTM's H2H).

Group id ``num_blocks`` (or higher) is the identity: stopped samples keep their activation.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .bank import LinearBank, inverse_permutation
from .lowrank import LowRankBank


def per_sample(scale: Tensor, like: Tensor) -> Tensor:
    """``scale [B]`` reshaped to broadcast over ``like [B, ...]``."""
    return scale.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class GroupPlan:
    """A batch grouped by block id: ``groups [N]`` in ``[0, num_blocks]`` (``num_blocks``: stopped).

    ``host_counts=True`` reads the group sizes once (``counts``, ``num_blocks + 1`` entries, the
    last for stopped rows) and skips the sort when the whole batch is one group (``single``).
    ``host_counts=False`` never synchronises (grouped matmul).
    """

    def __init__(self, groups: Tensor, num_blocks: int, host_counts: bool = True) -> None:
        self.num_blocks = int(num_blocks)
        self.groups = groups.clamp(max=self.num_blocks)
        self.counts: list[int] | None = None
        if host_counts:
            self.counts = torch.bincount(self.groups, minlength=self.num_blocks + 1).tolist()
        self._sorted: tuple[Tensor, Tensor] | None = None
        self._inverse: Tensor | None = None

    @property
    def single(self) -> int | None:
        """The one group of the whole batch (``num_blocks``: all stopped), or None."""
        if self.counts is None:
            return None
        nonempty = self.nonempty
        return nonempty[0] if len(nonempty) == 1 else None

    @property
    def nonempty(self) -> list[int]:
        if self.counts is None:
            raise RuntimeError("this plan did not read its group sizes (host_counts=False)")
        return [g for g, c in enumerate(self.counts) if c]

    def _sort(self) -> tuple[Tensor, Tensor]:
        if self._sorted is None:
            self._sorted = torch.sort(self.groups, stable=True)
        return self._sorted

    @property
    def sorted_groups(self) -> Tensor:
        return self._sort()[0]

    @property
    def order(self) -> Tensor:
        """Input rows sorted by group (stable: input order within a group)."""
        return self._sort()[1]

    @property
    def inverse(self) -> Tensor:
        """Each input row's position in :attr:`order`."""
        if self._inverse is None:
            self._inverse = inverse_permutation(self.order)
        return self._inverse

    def gather(self, x: Tensor) -> Tensor:
        return x.index_select(0, self.order)

    def restore(self, y: Tensor) -> Tensor:
        return y.index_select(0, self.inverse)


class Execution:
    """How the blocks of one routing step run on a batch grouped by block (see module docstring)."""

    name = ""

    def host_counts(self, blocks: Any) -> bool:
        """Whether this implementation needs the group sizes on the host."""
        return True

    def run_sorted(
        self,
        blocks: Any,
        xs: Any,
        sorted_groups: Tensor,
        scale: Tensor | None = None,
        identity: bool = True,
        counts: list[int] | None = None,
        offsets: Tensor | None = None,
    ) -> Any:
        """Rows ``xs`` already sorted by group (``sorted_groups`` ascending) through their blocks, in
        the same order. ``scale [N]`` multiplies computed rows (relaxed routers); ``identity=False``
        promises that no row is stopped; ``counts``/``offsets``: group sizes / bank offsets when known."""
        raise NotImplementedError

    def run_one(self, blocks: Any, g: int, x: Any, scale: Tensor | None) -> Any:
        """The whole batch in group ``g`` (no sorting)."""
        y = blocks[g](x)
        return y if scale is None else y * per_sample(scale, y)

    def __call__(self, blocks: Any, x: Any, groups: Tensor, scale: Tensor | None = None, identity: bool = True) -> Any:
        """``x`` in input order through the blocks of ``groups [N]``; the result in input order."""
        plan = GroupPlan(groups, len(blocks), self.host_counts(blocks))
        g = plan.single
        if g is not None:
            return x if g == plan.num_blocks else self.run_one(blocks, g, x, scale)
        ys = self.run_sorted(
            blocks, plan.gather(x), plan.sorted_groups,
            None if scale is None else scale.index_select(0, plan.order), identity, plan.counts,
        )
        return plan.restore(ys)


class EagerExecution(Execution):
    """A list of modules, each called once on its contiguous slice of the sorted rows."""

    name = "eager"

    def num_groups(self, blocks: Any) -> int:
        """Group ids below this run a block (``run_one``); the id equal to it is stopped (kept as is)."""
        return len(blocks)

    def run_sorted(self, blocks, xs, sorted_groups, scale=None, identity=True, counts=None, offsets=None):
        n = self.num_groups(blocks)
        if counts is None:
            counts = torch.bincount(sorted_groups.clamp(max=n), minlength=n + 1).tolist()
        outs, start = [], 0
        for g, c in enumerate(counts):
            if not c:
                continue
            chunk = xs.narrow(0, start, c)
            if g < n:
                chunk = self.run_one(blocks, g, chunk, None if scale is None else scale.narrow(0, start, c))
            outs.append(chunk)
            start += c
        return torch.cat(outs) if len(outs) > 1 else outs[0]


class GroupedMMExecution(Execution):
    """A :class:`LinearBank`: every group in one grouped matmul, no host synchronisation; token-level
    rows ``[N, T, D]`` follow their sample."""

    name = "grouped_mm"

    def host_counts(self, blocks: Any) -> bool:
        return False

    def __call__(self, blocks, x, groups, scale=None, identity=True):
        if isinstance(blocks, LinearBank) and blocks.uses_dense():  # no sort: every block on every row
            return blocks.dense_forward(x, groups, scale, identity)
        return super().__call__(blocks, x, groups, scale, identity)

    def run_sorted(self, blocks, xs, sorted_groups, scale=None, identity=True, counts=None, offsets=None):
        if xs.dim() == 2:
            return blocks.sorted_forward(xs, sorted_groups, scale, identity, offsets)
        rows = xs.shape[1:-1].numel()
        y = blocks.sorted_forward(
            xs.reshape(-1, xs.shape[-1]),
            sorted_groups.repeat_interleave(rows),
            None if scale is None else scale.repeat_interleave(rows),
            identity,
        )
        return y.view(*xs.shape[:-1], y.shape[-1])


class PathExecution(EagerExecution):
    """Paths as groups: ``blocks`` is a list of per-step block lists of one width ``b``; group id
    ``c`` is the path ``(a_0, ..., a_{d-1})`` with ``c = sum a_t b^(d-1-t)`` (:meth:`path_codes`),
    and its block is the composition ``blocks[d-1][a_{d-1}] o ... o blocks[0][a_0]``."""

    name = "path"

    @staticmethod
    def width(blocks: Sequence[Sequence[nn.Module]]) -> int:
        return len(blocks[0])

    @staticmethod
    def path_codes(paths: Tensor, width: int) -> Tensor:
        """``paths [N, d]`` -> ``[N]`` codes (ascending codes sort paths lexicographically)."""
        code = torch.zeros(paths.shape[0], dtype=torch.long, device=paths.device)
        for t in range(paths.shape[1]):
            code = code * width + paths[:, t]
        return code

    def plan(self, blocks: Sequence[Sequence[nn.Module]], paths: Tensor) -> GroupPlan:
        return GroupPlan(self.path_codes(paths, self.width(blocks)), self.num_groups(blocks))

    def run_one(self, blocks, g, x, scale):
        w, d = self.width(blocks), len(blocks)
        for t in range(d):
            x = blocks[t][(g // w ** (d - 1 - t)) % w](x)
        return x if scale is None else x * per_sample(scale, x)

    def num_groups(self, blocks: Sequence[Sequence[nn.Module]]) -> int:
        return self.width(blocks) ** len(blocks)  # one group per path

    def __call__(self, blocks, x, groups, scale=None, identity=True):
        raise TypeError("path execution runs inside a recurrence: build plan(blocks, paths) and call run_sorted per step")


# ---------------------------------------------------------------------- calls of injected modules
def take_samples(obj: Any, idx: Tensor, b: int) -> Any:
    """The samples ``idx`` of every batch-shaped tensor in ``obj`` (tensors of 2+ dims whose first
    dim is ``b``; nested tuples, named tuples, lists and dicts); everything else passes unchanged."""
    if isinstance(obj, Tensor):
        return obj.index_select(0, idx) if obj.dim() >= 2 and obj.shape[0] == b else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(take_samples(o, idx, b) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(take_samples(o, idx, b) for o in obj)
    if isinstance(obj, dict):
        return {k: take_samples(v, idx, b) for k, v in obj.items()}
    return obj


def merge_groups(outs: list[Any], sizes: list[int], inverse: Tensor) -> Any:
    """Reassemble per-group outputs of one structure into batch order: every tensor whose first dim
    is its group's size is concatenated and permuted back; ``None`` stays None; other values come
    from the first group. Dicts (and ``ModelOutput``), tuples, named tuples and lists nest."""
    first = outs[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        if all(isinstance(o, Tensor) and o.dim() >= 1 and o.shape[0] == n for o, n in zip(outs, sizes)):
            return torch.cat(outs).index_select(0, inverse)
        return first
    if isinstance(first, dict):
        merged = {k: merge_groups([o[k] for o in outs], sizes, inverse) for k in first.keys()}
        return merged if type(first) is dict else type(first)(**merged)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(merge_groups(list(parts), sizes, inverse) for parts in zip(*outs)))
    if isinstance(first, (tuple, list)):
        return type(first)(merge_groups(list(parts), sizes, inverse) for parts in zip(*outs))
    return first


def scale_main_output(out: Any, scale: Tensor | None) -> Any:
    """Multiply the main output (the tensor, or a tuple's first element) by a per-sample scale."""
    if scale is None:
        return out
    if isinstance(out, Tensor):
        return out * per_sample(scale, out)
    if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
        first = scale_main_output(out[0], scale)
        return type(out)(first, *out[1:]) if hasattr(out, "_fields") else (first,) + tuple(out[1:])
    raise TypeError(f"cannot scale a routed output of type {type(out).__name__} (relaxed routers)")


class CallExecution(Execution):
    """Modules called with arbitrary arguments: ``x`` is ``(args, kwargs)``; every batch-shaped
    argument is sliced to the group (:func:`take_samples`), outputs are merged (:func:`merge_groups`)
    and the main output is scaled per sample (relaxed routers).

    ``collector``: a context variable holding a dict of lists that hooks inside the modules append
    to (transformers' ``output_hidden_states`` / ``output_attentions`` capture); every group records
    into a fresh copy and the records are merged like the outputs.
    ``refuse``: called with ``(args, kwargs)`` before splitting a batch; raises for arguments that
    cannot be split (e.g. a KV cache).
    """

    name = "call"

    def __init__(self, collector: ContextVar | None = None, refuse=None) -> None:
        self.collector = collector
        self.refuse = refuse

    def __call__(self, blocks, x, groups, scale=None, identity=False):
        args, kwargs = x
        plan = GroupPlan(groups, len(blocks))
        g = plan.single
        if g is not None:
            return scale_main_output(blocks[g](*args, **kwargs), scale)
        if self.refuse is not None:
            self.refuse(args, kwargs)
        b = groups.shape[0]
        nonempty = plan.nonempty
        sizes = [plan.counts[g] for g in nonempty]
        chunks = plan.order.split(plan.counts[: plan.num_blocks])
        collector = self.collector.get() if self.collector is not None else None
        outs, captured = [], []
        for g in nonempty:
            idx = chunks[g]
            inner, token = None, None
            if collector:
                inner = {k: ([None] * len(v) if isinstance(v, list) and not k.startswith("_") else v)
                         for k, v in collector.items()}
                token = self.collector.set(inner)
            try:
                outs.append(blocks[g](*take_samples(args, idx, b), **take_samples(kwargs, idx, b)))
            finally:
                if token is not None:
                    self.collector.reset(token)
            captured.append(inner)
        if collector:
            for key, values in collector.items():
                if key.startswith("_") or not isinstance(values, list):
                    continue
                new = [c[key][len(values):] for c in captured]
                if len({len(n) for n in new}) != 1:
                    raise RuntimeError(f"routed copies recorded different numbers of {key!r}")
                values.extend(merge_groups(list(parts), sizes, plan.inverse) for parts in zip(*new))
        return scale_main_output(merge_groups(outs, sizes, plan.inverse), scale)


#: the execution implementations by name
EXECUTIONS: dict[str, Execution] = {
    e.name: e for e in (EagerExecution(), GroupedMMExecution(), CallExecution(), PathExecution())
}


def execution_for(blocks: Sequence[nn.Module] | LinearBank | LowRankBank) -> Execution:
    """The implementation for a block set: grouped matmul for a :class:`LinearBank` or a
    :class:`~nli_routing.routing.lowrank.LowRankBank`, eager otherwise."""
    return EXECUTIONS["grouped_mm" if isinstance(blocks, (LinearBank, LowRankBank)) else "eager"]


def sorted_apply(
    xs: Tensor,
    sorted_groups: Tensor,
    blocks: Sequence[nn.Module] | LinearBank,
    scale: Tensor | None = None,
    identity: bool = True,
    counts: list[int] | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Rows already sorted by group through their blocks (:meth:`Execution.run_sorted` of the
    blocks' implementation)."""
    return execution_for(blocks).run_sorted(blocks, xs, sorted_groups, scale, identity, counts, offsets)


def grouped_apply(
    x: Tensor,
    groups: Tensor,
    blocks: Sequence[nn.Module] | LinearBank,
    scale: Tensor | None = None,
    identity: bool = True,
) -> Tensor:
    """Apply ``blocks[g]`` to the samples of group g, each block once on its whole group.

    ``x [B, ...]`` (any trailing shape: every token of a sample follows the sample's block),
    ``groups [B]`` long in ``[0, len(blocks)]``; group ``len(blocks)`` (or higher) is the identity
    (stopped samples). The result and its gradients equal running every sample alone through its
    block. ``scale [B]`` multiplies each computed block output (relaxed routers' straight-through
    weights). A :class:`LinearBank` needs no host synchronisation (``identity=False`` promises that
    no sample is stopped); other blocks read the group sizes once and skip the sort when the
    batch takes a single block.
    """
    return execution_for(blocks)(blocks, x, groups, scale, identity)
