"""The routing settings every routed model shares (the base of the model configs; all CLI flags)."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exploration import get_schedule
from .registry import ROUTER_TYPES, check_router_learner

__all__ = ["RouterConfig", "RoutingCollapseWarning", "parse_learner_args"]


_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)
#: True while the library re-validates settings it already checked (no second collapse warning)
_REVALIDATING: contextvars.ContextVar[bool] = contextvars.ContextVar("nli_routing_revalidating", default=False)


@contextlib.contextmanager
def revalidating() -> Iterator[None]:
    """Settings built inside this block were validated (and warned about) before: no collapse warning again."""
    token = _REVALIDATING.set(True)
    try:
        yield
    finally:
        _REVALIDATING.reset(token)


def _caller_level() -> int:
    """The ``stacklevel`` that makes a warning name the first line outside this library (the user's script,
    recipe or test that built the config) instead of a dataclass-generated ``__init__`` (``<string>``)."""
    level, frame = 2, sys._getframe(2)  # level 1: the warn call's frame, 2: the one above it
    while frame is not None and (frame.f_code.co_filename == "<string>"
                                 or frame.f_code.co_filename.startswith(_PACKAGE_DIR)):
        level, frame = level + 1, frame.f_back
    return level if frame is not None else 2


class RoutingCollapseWarning(UserWarning):
    """Router settings known to send (nearly) every sample down one path (BENCHMARKS.md, issue 29)."""


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


def check_at_least(obj: Any, **minimums: float) -> None:
    """Raise ``ValueError`` naming the first field of ``obj`` below its minimum (``None`` passes: unset)."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if value is not None and not value >= low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass
class RouterConfig:
    """The routing settings every routed model shares (base of the model configs; all CLI flags)."""

    num_meta: int = field(default=1, metadata={"help": "number of meta classes (signatures, genres, clusters)"})
    router: str = field(default="tabular", metadata={"help": f"router architecture: one of {ROUTER_TYPES}"})
    learner: str = field(default="qlearning", metadata={"help": "decision-making algorithm (registry name)"})
    learner_args: str = field(
        default="", metadata={"help": "learner options as key=value pairs, e.g. 'entropy_coef=0.01,target=td'"}
    )
    exploration: str = field(
        default="low",
        metadata={"help": "exploration: a preset (high, med, low, none; thesis-high, thesis-med, thesis-low: Figure 7.6, "
                          "epsilon / 4 every 5 epochs) or a schedule START/ANNEAL/EVERY/FLOOR, e.g. 0.5/0.25/5/0.01"},
    )
    router_init: float = field(
        default=-1.0,
        metadata={"help": "initial table values; -1 (the worst reward) keeps greedy choices stable"},
    )
    router_balance_share: float = field(
        default=1.0,
        metadata={"help": "capacity balance of tabular routers: a block taking more than this share of a batch's "
                          "decisions at a depth gets a selection bias against it (1: off; see TabularRouter)"},
    )
    router_balance_rate: float = field(
        default=0.01, metadata={"help": "step of the capacity balance's selection bias per training batch"}
    )
    num_subrouters: int = field(default=3, metadata={"help": "subrouters of the dispatched router"})
    router_grad_to_activations: bool = field(
        default=False, metadata={"help": "let router losses backpropagate into the activations (approximators)"}
    )
    router_seed: int = field(default=0, metadata={"help": "seed of the routers (recipes set it from --seed)"})

    def __post_init__(self) -> None:
        if self.router not in ROUTER_TYPES:
            raise ValueError(f"router must be one of {ROUTER_TYPES}, got {self.router!r}")
        check_at_least(self, num_meta=1, num_subrouters=1)
        get_schedule(self.exploration)  # a preset name or START/ANNEAL/EVERY/FLOOR (a ValueError naming it otherwise)
        rho = getattr(self, "rho", 0.0)  # the collaboration reward weight of every model kind's config
        if not (isinstance(rho, (int, float)) and -1.0 <= rho <= 1.0):
            raise ValueError(f"rho must be in [-1, 1], got {rho!r}")
        if not math.isfinite(self.router_init):
            raise ValueError(f"router_init must be a finite number, got {self.router_init!r}")
        if not 0.0 < self.router_balance_share <= 1.0:
            raise ValueError(f"router_balance_share must be in (0, 1], got {self.router_balance_share!r}")
        if not (math.isfinite(self.router_balance_rate) and self.router_balance_rate >= 0.0):
            raise ValueError(f"router_balance_rate must be a number >= 0, got {self.router_balance_rate!r}")
        # fail early, when the flags are parsed: a malformed spec, an unknown option or value, a pair that cannot train
        check_router_learner(self.router, self.learner, parse_learner_args(self.learner_args))
        if (self.router in ("tabular", "dispatched") and self.num_meta > 1 and self.router_balance_share >= 1.0
                and not _REVALIDATING.get() and self.learns_tabular_routes()):
            warnings.warn(
                f"{type(self).__name__}: tabular agents for {self.num_meta} meta classes without the capacity balance "
                "(router_balance_share=1) are known to keep every class on one block when the classes conflict "
                "(the routing-helps toy and SCI, BENCHMARKS.md issue 29); set router_balance_share=0.5 unless "
                "routing is irrelevant to the task",
                RoutingCollapseWarning,
                stacklevel=_caller_level(),
            )

    def learns_tabular_routes(self) -> bool:
        """Whether a model of this config has routers that learn (a model kind whose some settings route
        nothing, e.g. a shared-bottom vision model, says so: no collapse warning for those)."""
        return True

    def router_kwargs(self, seed_offset: int = 0) -> dict[str, Any]:
        """Arguments of :func:`build_router` from this config."""
        return dict(
            router_type=self.router,
            learner=self.learner,
            exploration=self.exploration,
            seed=self.router_seed + seed_offset,
            learner_kwargs=parse_learner_args(self.learner_args),
            router_init=self.router_init,
            balance_share=self.router_balance_share,
            balance_rate=self.router_balance_rate,
            detach_state=not self.router_grad_to_activations,
            num_subrouters=self.num_subrouters,
        )
