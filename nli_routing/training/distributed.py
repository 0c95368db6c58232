"""The Accelerator the training loop and the recipes share (DDP settings for routed models).

Multi-process training on the CPU (gloo): ``accelerate launch --multi_gpu --num_processes 2
script.py --cpu`` (or ``torchrun --nproc_per_node 2``). Note that ``accelerate launch --cpu
--num_processes 2`` starts a *single* process unless ``--mpirun_hostfile`` is given (accelerate
launches multi-CPU runs through MPI only); ``--multi_gpu`` goes through ``torch.distributed.run``,
and the script's ``Accelerator(cpu=True)`` (or ``ACCELERATE_USE_CPU=1``) then picks gloo.

How routed models stay consistent under distributed data parallel (DDP):

* Router tables, approximators, critics and dispatchers are parameters of the model, so DDP
  averages their gradients like the blocks': every rank starts from rank 0's parameters (DDP
  broadcasts them when it wraps the model) and applies the same averaged update, so routers stay
  identical on all ranks. Each rank's router loss reads that rank's trajectories; the averaged
  gradient is the update from the trajectories of all processes.
* A routed model need not use every parameter in a step (unused learners of a composite router,
  RELAX critics of unused subrouters, ...), and the router loss uses parameters outside the DDP
  forward (critics called by the learners' losses, dispatcher losses). DDP's
  ``find_unused_parameters=True`` cannot handle the latter ("Expected to mark a variable ready
  only once"), and the default (False) fails on the former. :class:`RoutingAccelerator` therefore
  keeps ``find_unused_parameters=False`` and, in multi-process runs, adds an exact zero that
  depends on every trainable parameter of the model being trained to the loss it back-propagates,
  so every parameter takes part in every step (a zero gradient where it was unused).
* Buffers: :class:`~nli_routing.routing.CollaborationReward`'s action shares are updated from the
  batch histograms of all ranks (all-reduced), and DDP broadcasts rank 0's buffers before each
  training forward (``broadcast_buffers=True``, kept).
* Each router's own ``torch.Generator`` (exploration draws) is seeded alike on every rank and is
  not synchronised: the draws only pick actions on a rank's own samples, they never change a
  parameter directly.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs


def ddp_kwargs() -> DistributedDataParallelKwargs:
    """DDP settings for routed models: no unused-parameter search (see :class:`RoutingAccelerator`),
    buffers broadcast from rank 0."""
    return DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True)


def touch_parameters(model: torch.nn.Module) -> torch.Tensor:
    """An exact zero (never NaN) whose backward gives every trainable parameter of ``model`` a zero gradient."""
    total = None
    for p in model.parameters():
        if p.requires_grad:
            z = p.reshape(-1)[:0].sum()  # empty slice: value 0 whatever p holds, dense zero gradient
            total = z if total is None else total + z
    return total


class RoutingAccelerator(Accelerator):
    """``Accelerator`` whose :meth:`backward` lets DDP see every trainable parameter in every step.

    With more than one process, the loss gets :func:`touch_parameters` of the most recently
    prepared model (the one being trained), so parameters unused in a step, or used only by the
    router loss outside the forward, never break DDP's gradient reduction.
    """

    def backward(self, loss, **kwargs):
        if self.num_processes > 1 and self._models:
            zero = touch_parameters(self._models[-1])
            if zero is not None:
                loss = loss + zero.to(loss.dtype)
        return super().backward(loss, **kwargs)


def make_accelerator(cpu: bool = False, **kwargs: Any) -> Accelerator:
    """A :class:`RoutingAccelerator` with :func:`ddp_kwargs` (other ``kwargs_handlers`` are kept)."""
    handlers = list(kwargs.pop("kwargs_handlers", None) or [])
    if not any(isinstance(h, DistributedDataParallelKwargs) for h in handlers):
        handlers.append(ddp_kwargs())
    return RoutingAccelerator(cpu=cpu, kwargs_handlers=handlers, **kwargs)
