"""The router registry: each router architecture is a builder registered under a name.

A builder takes a :class:`RouterSpec` (the step dims of the routed stack, its width, meta classes and the
learner settings) and returns a :class:`~nli_routing.routing.routers.Router`. Configs name a router
(``router="approx"``) and :func:`build_router` does the rest; a new architecture is one decorated
function (``@register_router("mine")``), like a learner (``@register_learner``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from .approx import ApproxRouter
from .baselines import FixedRandomRouter
from .learners import LEARNERS
from .routers import DispatchedRouter, PerStepRouter, Router, TabularRouter

__all__ = ["ROUTERS", "ROUTER_TYPES", "RouterSpec", "build_router", "check_router_learner", "register_router"]


@dataclass
class RouterSpec:
    """What a router builder needs: the routed stack's step dims (``dims[t]`` is step t's input size),
    its width (blocks per step), meta classes, whether a stop action exists, and the learner settings."""

    dims: list[int]
    width: int
    num_meta: int
    allow_stop: bool = False
    allow_pass: bool = False
    learner: str | Router = "qlearning"
    exploration: str | dict = "med"
    seed: int = 0
    learner_kwargs: dict = field(default_factory=dict)
    router_init: float = 0.0
    balance_share: float = 1.0
    balance_rate: float = 0.01
    detach_state: bool = True
    num_subrouters: int = 3

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def actions(self) -> int:
        return self.width + int(self.allow_stop) + int(self.allow_pass)

    def common(self, learner_kwargs: dict | None = None) -> dict:
        """The learner arguments every router takes."""
        kwargs = self.learner_kwargs if learner_kwargs is None else learner_kwargs
        return dict(learner=self.learner, exploration=self.exploration, learner_kwargs=kwargs)

    def tabular_kwargs(self) -> dict:
        """Learner options of a tabular router: learners with critic tables get one entry per agent and depth."""
        kwargs = dict(self.learner_kwargs)
        if "num_states" in inspect.signature(check_router_learner("tabular", self.learner, kwargs)).parameters:
            kwargs.setdefault("num_states", self.num_meta * self.depth)
        return kwargs


#: router name -> builder (``RouterSpec -> Router``)
ROUTERS: dict[str, Callable[[RouterSpec], Router]] = {}


def register_router(name: str) -> Callable:
    """Register a router builder under ``name`` (a decorator)."""

    def deco(builder: Callable[[RouterSpec], Router]) -> Callable[[RouterSpec], Router]:
        if name in ROUTERS:
            raise ValueError(f"router {name!r} is already registered")
        ROUTERS[name] = builder
        return builder

    return deco


@register_router("tabular")
def _tabular(spec: RouterSpec) -> Router:
    """One table per meta label and depth."""
    return TabularRouter(spec.num_meta, spec.depth, spec.actions, init=spec.router_init, seed=spec.seed,
                         balance_share=spec.balance_share, balance_rate=spec.balance_rate, **spec.common(spec.tabular_kwargs()))


def _per_step(spec: RouterSpec) -> Router:
    steps = [
        ApproxRouter(spec.dims[t], spec.num_meta, 1, spec.actions, detach_state=spec.detach_state, seed=spec.seed + t,
                     **spec.common())
        for t in range(spec.depth)
    ]
    return PerStepRouter(steps, seed=spec.seed, **spec.common())


@register_router("approx")
def _approx(spec: RouterSpec) -> Router:
    """One MLP over (activation, meta, depth); one per step when the step sizes differ."""
    if len(set(spec.dims[:-1])) != 1:
        return _per_step(spec)
    return ApproxRouter(spec.dims[0], spec.num_meta, spec.depth, spec.actions, detach_state=spec.detach_state,
                        seed=spec.seed, **spec.common())


register_router("per-step")(_per_step)


@register_router("dispatched")
def _dispatched(spec: RouterSpec) -> Router:
    """An MLP dispatcher (activation and meta) picks one of ``num_subrouters`` tabular subrouters per sample."""
    dispatcher = ApproxRouter(spec.dims[0], spec.num_meta, 1, spec.num_subrouters, detach_state=spec.detach_state,
                              seed=spec.seed, **spec.common())
    subrouters = [
        TabularRouter(spec.num_meta, spec.depth, spec.actions, init=spec.router_init, seed=spec.seed + 1 + k,
                      balance_share=spec.balance_share, balance_rate=spec.balance_rate,
                      **spec.common(spec.tabular_kwargs()))
        for k in range(spec.num_subrouters)
    ]
    return DispatchedRouter(dispatcher, subrouters)


@register_router("fixed-random")
def _fixed_random(spec: RouterSpec) -> Router:
    """Routes drawn per meta label at initialisation and never trained (a baseline; no learner)."""
    return FixedRandomRouter(spec.num_meta, spec.depth, spec.actions, seed=spec.seed, choices=spec.width)


#: every router a config may name; ``soft`` is not a router but a layer kind (every block on every
#: sample, softmax-gated): the FC-stack builder returns a ``SoftMixtureLayer`` for it
ROUTER_TYPES = (*ROUTERS, "soft")


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
    **settings,
) -> Router:
    """The registered router ``router_type`` for a routed stack with step dims ``dims`` (``settings``:
    the other fields of :class:`RouterSpec`: learner, exploration, seed, learner_kwargs, router_init,
    detach_state, num_subrouters). The (router, learner) pair and the learner's options are checked
    first (:func:`check_router_learner`)."""
    builder = ROUTERS.get(router_type)
    if builder is None:
        raise ValueError(f"unknown router type {router_type!r}; registered routers: {sorted(ROUTERS)}")
    spec = RouterSpec(list(dims), width, num_meta, allow_stop, **settings)
    spec.learner_kwargs = dict(spec.learner_kwargs or {})
    check_router_learner(router_type, spec.learner, spec.learner_kwargs)
    return builder(spec)
