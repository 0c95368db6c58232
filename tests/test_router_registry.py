"""The router registry: configs name a router, a new architecture is one decorated builder."""

import pytest
import torch

from nli_routing.models.blocks import routed_fc_stack
from nli_routing.routing import ROUTER_TYPES, ROUTERS, RouterConfig, TabularRouter, build_router, register_router


def test_every_registered_router_builds_and_routes():
    x, meta = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    for name in ROUTERS:
        learner = "wpl-approx" if name in ("approx", "per-step", "dispatched") else "qlearning"
        layer = routed_fc_stack([4, 4, 4], 3, 2, router_type=name, learner=learner, exploration="none")
        out, traj = layer(x, meta)
        assert out.shape == (6, 4) and traj.actions.shape == (6, 2), name


def test_a_new_router_is_one_decorated_builder():
    @register_router("zero-table")
    def zero_table(spec):
        return TabularRouter(spec.num_meta, spec.depth, spec.actions, init=0.0, seed=spec.seed, **spec.common())

    try:
        router = build_router("zero-table", [4, 4], 3, 2, learner="qlearning", router_init=-1.0)
        assert isinstance(router, TabularRouter) and float(router.table.detach().abs().sum()) == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register_router("zero-table")(zero_table)
    finally:
        ROUTERS.pop("zero-table", None)


def test_unknown_router_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered routers"):
        build_router("nope", [4, 4], 3, 2)
    with pytest.raises(ValueError, match="router must be one of"):
        RouterConfig(router="nope")
    with pytest.raises(ValueError, match="router_init must be a finite number"):
        RouterConfig(router_init=float("nan"))
    assert set(ROUTERS) | {"soft"} == set(ROUTER_TYPES)
