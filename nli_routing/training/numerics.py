"""Numerical guards of a training step: non-finite losses and gradients, gradient clipping per group.

:func:`check_finite_step` runs after the backward and before any optimizer step: one fused check
(and one host read) per step; when it fails, a slower pass names every culprit (the routed layer,
the learner, the parameter) in a :class:`NonFiniteError`, and no parameter has changed.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from ..models.base import RoutedModel
from ..routing import Router


class NonFiniteError(FloatingPointError):
    """A loss or gradient of a training step is NaN or infinite (raised before any parameter changes)."""


def optimizer_params(opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The parameters an optimizer updates (all its groups)."""
    if opt is None:
        return []
    return [p for group in opt.param_groups for p in group["params"]]


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _learner_owners(model: RoutedModel) -> dict[int, tuple[str, str]]:
    """``id(parameter) -> (owner description, parameter name)`` for every router/learner parameter.

    The owner of a parameter is the outermost module with a ``learner`` below the model (a
    dispatched router's dispatcher and subrouters each have their own), described by the routed
    layer it belongs to (``routed_layer_names``) and its learner's registered name.
    """
    module_names = {id(m): n for n, m in model.named_modules()}
    layer_prefix = {module_names[id(layer)]: name for name, layer in model.named_routed_layers()
                    if id(layer) in module_names}
    owners: dict[int, tuple[str, str]] = {}
    claimed: list[str] = []
    for qn, module in model.named_modules():
        if not isinstance(module, Router) or module.learner is None or any(qn == c or qn.startswith(c + ".") for c in claimed):
            continue
        learner = module.learner
        claimed.append(qn)
        layer = next(
            (label for prefix, label in sorted(layer_prefix.items(), key=lambda kv: -len(kv[0]))
             if qn.startswith(prefix + ".") or prefix == qn),
            None,
        )
        where = f"router of layer {layer!r}" if layer is not None else f"router {qn!r}"
        desc = f"{where} (learner {learner.name!r})"
        for pn, param in module.named_parameters():
            owners[id(param)] = (desc, f"{qn}.{pn}" if qn else pn)
    return owners


def _describe_nonfinite(
    model: nn.Module, losses: dict[str, torch.Tensor], groups: dict[str, list[torch.Tensor]], step: int
) -> str | None:
    """The error message for a step with non-finite values, or ``None`` when no element is
    non-finite (a total norm that merely overflowed)."""
    losses = {name: torch.as_tensor(v).detach() for name, v in losses.items()}
    problems = [f"{name} = {float(v)}" for name, v in losses.items() if not bool(torch.isfinite(v).all())]
    owners = _learner_owners(model)
    param_names = {id(p): n for n, p in model.named_parameters()}
    by_owner: dict[str, list[str]] = {}
    for group, params in groups.items():
        for p in params:
            if p.grad is None or bool(torch.isfinite(p.grad).all()):
                continue
            desc, name = owners.get(id(p), (group, param_names.get(id(p), "<unnamed>")))
            by_owner.setdefault(desc, []).append(name)
    for desc, names in by_owner.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        problems.append(f"non-finite gradient in the {desc}: {shown}")
    if not problems:
        return None
    return (
        f"non-finite values at training step {step} (global step, 0-based); no parameter was updated: "
        + "; ".join(problems)
    )


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The total 2-norm of ``grads`` (``torch.nn.utils.get_total_norm``); one tensor's is its own norm, the value
    ``get_total_norm`` gives (its per-tensor norm, then the norm of that one number) in one operator: a
    tabular router's group is often its one table."""
    if len(grads) == 1:
        return torch.linalg.vector_norm(grads[0], 2.0)
    return torch.nn.utils.get_total_norm(grads)


def check_finite_step(
    model: nn.Module,
    losses: dict[str, torch.Tensor],
    groups: dict[str, list[torch.Tensor]],
    step: int,
    check_grads: bool = True,
) -> dict[str, torch.Tensor | None]:
    """Raise :class:`NonFiniteError` if a loss or a gradient of ``groups`` is NaN/inf.

    One fused check (the losses and each group's total gradient norm, stacked) and a single host
    read; the slow diagnosis that names the learners only runs when the check fails. Returns each
    group's total gradient norm (``None`` when it has no gradient or ``check_grads`` is off), which
    the caller may reuse for clipping.
    """
    norms: dict[str, torch.Tensor | None] = {}
    values = [torch.as_tensor(v).detach().float().reshape(()) for v in losses.values()]
    for name, params in groups.items():
        grads = _grads(params) if check_grads else []
        norms[name] = _total_norm(grads) if grads else None
        if norms[name] is not None:
            values.append(norms[name].float().reshape(()))
    if not values:
        return norms
    device = values[0].device
    if bool(torch.isfinite(torch.stack([v.to(device) for v in values])).all()):
        return norms
    message = _describe_nonfinite(model, losses, groups if check_grads else {}, step)
    if message is not None:
        raise NonFiniteError(message)
    return norms


#: accelerate setups whose gradients are whole and unscaled on every process (plain torch clipping
#: applies); the others (FSDP, DeepSpeed, XLA, ...) go through ``accelerator.clip_grad_norm_``
_PLAIN_CLIP_TYPES = frozenset(
    {"NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_MLU", "MULTI_NPU", "MULTI_MUSA", "MULTI_SDAA", "MULTI_HPU"}
)


def clip_group(
    params: list[torch.Tensor],
    max_norm: float | None,
    accelerator: Accelerator | None,
    norm: torch.Tensor | None = None,
) -> None:
    """Clip the total gradient norm of ``params`` (one group) to ``max_norm``.

    ``norm`` (the group's total norm, computed by the finite check) is reused when plain
    ``torch`` clipping applies (no accelerator, or one without a gradient scaler or sharded model).
    """
    if max_norm is None or not params:
        return
    plain = accelerator is None or (
        getattr(accelerator, "scaler", None) is None
        and getattr(accelerator.distributed_type, "name", "") in _PLAIN_CLIP_TYPES
    )
    if not plain:
        accelerator.clip_grad_norm_(params, max_norm)
        return
    if norm is None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
