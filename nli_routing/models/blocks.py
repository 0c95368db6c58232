"""Function blocks and the helpers that build routed layers from a small spec."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..routing import (
    LEARNERS,
    LinearBank,
    ApproxRouter,
    DispatchedRouter,
    FixedRandomRouter,
    PerStepRouter,
    RoutedLayer,
    Router,
    SoftMixtureLayer,
    TabularRouter,
)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}


class Residual(nn.Module):
    """``x + g * f(x)`` with a learned scalar gate ``g`` starting at 0 (ReZero).

    The block is the identity at initialisation, so a routed projection starts as plain CBOW and
    the blocks grow apart as they learn; without the gate, Adam steps on a freshly initialised
    projection kept the SCI models on a plateau near 0.58 accuracy.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.gate * self.inner(x)


def fc_block(
    in_dim: int, out_dim: int, activation: str = "relu", dropout: float = 0.0, residual: bool = False
) -> nn.Module:
    """``Linear -> activation [-> dropout]``: the thesis' fully connected function block.

    ``residual=True`` (same in and out dims) returns ``x + activation(Linear(x))``.
    """
    if residual:
        if in_dim != out_dim:
            raise ValueError(f"a residual block keeps the dimension, got {in_dim} -> {out_dim}")
        return Residual(fc_block(in_dim, out_dim, activation, dropout))
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim), ACTIVATIONS[activation]()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


ROUTER_TYPES = ("tabular", "approx", "per-step", "dispatched", "fixed-random", "soft")


@dataclass
class RouterConfig:
    """The routing settings every routed model shares (base of the model configs; all CLI flags)."""

    num_meta: int = field(default=1, metadata={"help": "number of meta classes (signatures, genres, clusters)"})
    router: str = field(default="tabular", metadata={"help": f"router architecture: one of {ROUTER_TYPES}"})
    learner: str = field(default="qlearning", metadata={"help": "decision-making algorithm (registry name)"})
    learner_args: str = field(
        default="", metadata={"help": "learner options as key=value pairs, e.g. 'entropy_coef=0.01,target=td'"}
    )
    exploration: str = field(default="low", metadata={"help": "exploration preset: high, med, low, none"})
    router_init: float = field(
        default=-1.0,
        metadata={"help": "initial table values; -1 (the worst reward) keeps greedy choices stable"},
    )
    num_subrouters: int = field(default=3, metadata={"help": "subrouters of the dispatched router"})
    router_grad_to_activations: bool = field(
        default=False, metadata={"help": "let router losses backpropagate into the activations (approximators)"}
    )
    router_seed: int = field(default=0, metadata={"help": "seed of the routers (recipes set it from --seed)"})

    def __post_init__(self) -> None:
        if self.router not in ROUTER_TYPES:
            raise ValueError(f"router must be one of {ROUTER_TYPES}, got {self.router!r}")
        # fail early, when the flags are parsed: a malformed spec, an unknown option or value, a pair that cannot train
        check_router_learner(self.router, self.learner, parse_learner_args(self.learner_args))

    def router_kwargs(self, seed_offset: int = 0) -> dict[str, Any]:
        """Arguments of :func:`build_router` from this config."""
        return dict(
            router_type=self.router,
            learner=self.learner,
            exploration=self.exploration,
            seed=self.router_seed + seed_offset,
            learner_kwargs=parse_learner_args(self.learner_args),
            router_init=self.router_init,
            detach_state=not self.router_grad_to_activations,
            num_subrouters=self.num_subrouters,
        )


def parse_learner_args(spec: str) -> dict:
    """``"entropy_coef=0.01,target=td"`` -> ``{"entropy_coef": 0.01, "target": "td"}``."""
    out: dict = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if "=" not in item:
            raise ValueError(f"learner argument {item!r} is not of the form key=value")
        key, value = (x.strip() for x in item.split("=", 1))
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def check_router_learner(router_type: str, learner: str | Router, learner_kwargs: dict | None = None) -> type:
    """The learner's class, after checking that the (router, learner) pair can train and that the
    learner accepts its options (a ``ValueError`` naming the pair or the option otherwise)."""
    if not isinstance(learner, str):
        return type(learner)
    learner_cls = LEARNERS.get(learner)
    if learner_cls is None:
        raise ValueError(f"unknown learner {learner!r}; registered learners: {sorted(LEARNERS)}")
    kwargs = dict(learner_kwargs or {})
    if router_type in ("approx", "per-step", "dispatched"):
        if learner_cls.tabular_only:
            raise ValueError(
                f"learner {learner!r} does not work with router {router_type!r}: it reads the router's values as "
                "a policy table (Algorithm 5.1); use --router tabular, or --learner wpl-approx"
            )
        if "num_states" in kwargs:
            raise ValueError(
                f"learner option num_states is for tabular routers; router {router_type!r} reads the activation "
                "and its learner's critic is a head of the router"
            )
    try:  # the options themselves: names and values (a learner is a small module, cheap to build)
        learner_cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"learner {learner!r}: {err} (check --learner_args)") from None
    return learner_cls


def build_router(
    router_type: str,
    dims: list[int],
    width: int,
    num_meta: int,
    allow_stop: bool = False,
    learner: str = "qlearning",
    exploration: str | dict = "med",
    seed: int = 0,
    learner_kwargs: dict | None = None,
    router_init: float = 0.0,
    detach_state: bool = True,
    num_subrouters: int = 3,
) -> Router:
    """A router of the given architecture for a routed stack with step dims ``dims``.

    ``tabular``: one table per meta label and depth; ``approx``: one MLP over (activation,
    meta, depth; one per step when the step sizes differ); ``per-step``: one MLP per depth; ``dispatched``: an MLP dispatcher (activation
    and meta) picks one of ``num_subrouters`` tabular subrouters per sample; ``fixed-random``:
    routes drawn per meta label at initialisation and never trained (a baseline: the learner is
    not used). Tabular learners with critic tables get ``num_states = num_meta * depth``; the
    tabular-only ``wpl`` with an approximator router is refused, naming the pair.
    """
    depth = len(dims) - 1
    actions = width + int(allow_stop)
    kwargs = dict(learner_kwargs or {})
    common = dict(learner=learner, exploration=exploration, learner_kwargs=kwargs)
    learner_cls = check_router_learner(router_type, learner, kwargs)
    takes_states = "num_states" in inspect.signature(learner_cls).parameters
    if router_type == "tabular":
        if takes_states:
            kwargs.setdefault("num_states", num_meta * depth)  # critic table: one entry per agent and depth
        return TabularRouter(num_meta, depth, actions, init=router_init, seed=seed, **common)
    if router_type == "approx" and len(set(dims[:-1])) == 1:
        return ApproxRouter(dims[0], num_meta, depth, actions, detach_state=detach_state, seed=seed, **common)
    if router_type in ("approx", "per-step"):  # approx with changing state sizes: one MLP per step
        steps = [
            ApproxRouter(dims[t], num_meta, 1, actions, detach_state=detach_state, seed=seed + t, **common)
            for t in range(depth)
        ]
        return PerStepRouter(steps, seed=seed, **common)
    if router_type == "dispatched":
        dispatcher = ApproxRouter(dims[0], num_meta, 1, num_subrouters, detach_state=detach_state, seed=seed,
                                  **common)
        sub_kwargs = dict(kwargs, num_states=num_meta * depth) if takes_states else kwargs
        subrouters = [
            TabularRouter(num_meta, depth, actions, init=router_init, seed=seed + 1 + k,
                          learner=learner, exploration=exploration, learner_kwargs=sub_kwargs)
            for k in range(num_subrouters)
        ]
        return DispatchedRouter(dispatcher, subrouters)
    if router_type == "fixed-random":
        return FixedRandomRouter(num_meta, depth, actions, seed=seed, choices=width)
    raise ValueError(f"unknown router type {router_type!r}; choose one of {ROUTER_TYPES}")


def routed_fc_stack(
    dims: list[int],
    width: int,
    num_meta: int,
    activation: str = "relu",
    recursive: bool = False,
    allow_stop: bool = False,
    residual: bool = False,
    router_type: str = "tabular",
    impl: str = "auto",
    gate_init: float = 0.0,
    **router_kwargs,
) -> RoutedLayer:
    """A routed stack of FC blocks; the router comes from :func:`build_router` (``router_kwargs``).

    The blocks of a step are one :class:`~nli_routing.routing.bank.LinearBank` (stacked weights,
    one grouped matmul per step whatever the width; ``impl`` picks its kernel; ``gate_init`` is the
    starting value of residual blocks' ReZero gates).

    ``dims = [d0, d1, ..., dk]`` gives k steps. Recursive mode needs all dims equal and reuses one
    set of ``width`` blocks at every step; per-step mode gives each step its own ``width`` blocks.
    ``router_type="soft"`` returns a :class:`SoftMixtureLayer` (every block on every sample,
    softmax-gated per meta label and depth) instead of a routed layer.
    """
    depth = len(dims) - 1
    if depth < 1:
        raise ValueError(f"need at least two dims for one routed step, got {dims}")
    if recursive:
        if len(set(dims)) != 1:
            raise ValueError(f"recursive routing keeps the dimension; got dims {dims}")
        blocks = LinearBank(width, dims[0], dims[0], activation, residual=residual, impl=impl, gate_init=gate_init)
    else:
        blocks = [LinearBank(width, dims[t], dims[t + 1], activation, residual=residual, impl=impl, gate_init=gate_init)
                  for t in range(depth)]
    if router_type == "soft":
        return SoftMixtureLayer(blocks, depth, num_meta, recursive=recursive)
    router = build_router(router_type, dims, width, num_meta, allow_stop, **router_kwargs)
    return RoutedLayer(blocks, router, depth=depth, recursive=recursive, allow_stop=allow_stop)
