"""Approximator, per-step, dispatched and baseline routers; Gumbel/RELAX learners; small learning tests."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nli_routing.routing import (
    RELAXED_WEIGHTS,
    ApproxRouter,
    DispatchedRouter,
    FixedRandomRouter,
    PerStepRouter,
    RoutedLayer,
    SoftMixtureLayer,
    TabularRouter,
    assign_rewards,
    Decision,
    Trajectory,
    build_learner,
    grouped_apply,
)

from .helpers import per_sample_reference

NO_EXPLORE = "none"
ALWAYS = {"start": 1.0, "anneal": 1.0, "every": 1, "floor": 1.0}


def make_blocks(n: int, dim: int) -> list[nn.Module]:
    return [nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(n)]


def params_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters()))


# ----------------------------------------------------------------------------- ApproxRouter


def test_approx_router_state_is_activation_meta_and_depth_one_hots():
    router = ApproxRouter(state_dim=4, num_meta=3, depth=2, num_actions=3)
    x = torch.randn(5, 4)
    meta = torch.tensor([0, 2, 1, 2, 0])
    s = router.build_state(x, meta, 1)
    expected = torch.cat([x, F.one_hot(meta, 3).float(), torch.tensor([[0.0, 1.0]]).expand(5, 2)], 1)
    torch.testing.assert_close(s, expected)
    dec = router.decide(x, meta, 0)
    assert dec.actions.shape == (5,) and dec.actions.dtype == torch.long
    assert dec.values.shape == (5, 3) and dec.state_index is None
    assert ((dec.actions >= 0) & (dec.actions < 3)).all()
    # without meta labels: no meta part
    plain = ApproxRouter(state_dim=4, num_meta=0, depth=2, num_actions=3)
    assert plain.build_state(x, None, 0).shape == (5, 6)
    assert plain.decide(x, None, 1).actions.shape == (5,)
    with pytest.raises(ValueError, match="needs meta labels"):
        router.build_state(x, None, 0)
    with pytest.raises(ValueError, match="pooled state"):
        router.build_state(torch.randn(5, 7), meta, 0)


@pytest.mark.parametrize("meta_given", [True, False])
def test_approx_router_recurs_with_stop_in_a_routed_layer(meta_given):
    torch.manual_seed(0)
    width, depth, dim = 3, 4, 6
    router = ApproxRouter(dim, 2 if meta_given else 0, depth, width + 1, exploration="high", seed=1)
    layer = RoutedLayer(make_blocks(width, dim), router, depth=depth, allow_stop=True)
    x = torch.randn(64, 5, dim)  # token-level: the router sees the pooled [B, D] state
    meta = torch.randint(0, 2, (64,)) if meta_given else None
    y, traj = layer(x, meta)
    assert traj.actions.shape == (64, depth)
    stopped = (traj.actions == width).any(1)
    assert stopped.any() and (~stopped).any()
    # after a stop no more decisions are taken
    first_stop = torch.where(traj.actions == width, torch.arange(depth), depth).min(1).values
    for i in torch.nonzero(stopped).squeeze(1).tolist():
        assert (traj.actions[i, first_stop[i] + 1 :] == -1).all()
    torch.testing.assert_close(y, per_sample_reference(layer, x, traj.actions))


@pytest.mark.parametrize("detach", [True, False])
def test_detach_state_controls_router_gradient_into_activations(detach):
    torch.manual_seed(1)
    router = ApproxRouter(5, 2, 2, 3, detach_state=detach, exploration="high")
    layer = RoutedLayer(make_blocks(3, 5), router, depth=2)
    x = torch.randn(16, 5, requires_grad=True)
    _, traj = layer(x, torch.randint(0, 2, (16,)))
    assign_rewards(traj, torch.randn(16))
    router.loss(traj).backward()
    assert all(p.grad is not None for p in router.net.parameters())
    if detach:
        assert x.grad is None and all(p.grad is None for p in layer.blocks.parameters())
    else:
        assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- PerStepRouter


def test_per_step_router_uses_its_own_subrouter_per_depth():
    torch.manual_seed(2)
    subs = [TabularRouter(3, 1, 4) for _ in range(2)]
    for s in subs:
        with torch.no_grad():
            s.table.normal_()
    router = PerStepRouter(subs, exploration="high")
    meta = torch.tensor([0, 1, 2, 1])
    for t in range(2):
        values, index = router.values(None, meta, t)
        assert torch.equal(values, subs[t].table[meta, 0])
        assert index.tolist() == (meta * 2 + t).tolist()  # offset per step: no collisions
    layer = RoutedLayer([nn.Linear(3, 3) for _ in range(4)], router, depth=2)
    _, traj = layer(torch.randn(40, 3), torch.randint(0, 3, (40,)))
    assign_rewards(traj, torch.randn(40))
    before = [params_of(s) for s in subs]
    opt = torch.optim.SGD(router.parameters(), lr=0.5)
    router.loss(traj).backward()
    opt.step()
    assert all(changed(b, s) for b, s in zip(before, subs))
    # approximators per step (no state indices), reading the activation
    mixed = PerStepRouter([ApproxRouter(3, 3, 1, 4), TabularRouter(3, 1, 4)])
    assert mixed.reads_state and mixed.values(torch.randn(4, 3), meta, 1)[1] is None
    with pytest.raises(ValueError, match="same number of actions"):
        PerStepRouter([TabularRouter(3, 1, 4), TabularRouter(3, 1, 3)])


# ----------------------------------------------------------------------------- DispatchedRouter


def make_dispatched(
    num_meta: int = 3, depth: int = 2, width: int = 3, dim: int = 5, approx_dispatcher: bool = False
) -> DispatchedRouter:
    if approx_dispatcher:  # decides from the activation
        dispatcher = ApproxRouter(dim, 0, 1, 2, exploration=ALWAYS, seed=3)
    else:  # decides from the meta label; a tied table under full exploration: random ties send
        # samples to both subrouters (the lowest-index default would send all to subrouter 1)
        dispatcher = TabularRouter(num_meta, 1, 2, exploration=ALWAYS, seed=3, learner_kwargs={"ties": "random"})
    tab = TabularRouter(num_meta, depth, width, exploration=NO_EXPLORE, seed=4)
    with torch.no_grad():
        tab.table.normal_()
    approx = ApproxRouter(dim, num_meta, depth, width, exploration=NO_EXPLORE, seed=5)
    return DispatchedRouter(dispatcher, [tab, approx])


@pytest.mark.parametrize("approx_dispatcher", [False, True])
def test_dispatched_router_records_dispatch_and_uses_the_chosen_subrouter(approx_dispatcher):
    torch.manual_seed(3)
    router = make_dispatched(approx_dispatcher=approx_dispatcher)
    assert router.reads_state
    layer = RoutedLayer(make_blocks(3, 5), router, depth=2)
    x = torch.randn(60, 5)
    meta = torch.randint(0, 3, (60,))
    y, traj = layer(x, meta)
    k = traj.extra["dispatch"]
    assert k.shape == (60, 2) and torch.equal(k[:, 0], k[:, 1])
    assert set(k[:, 0].tolist()) == {0, 1}
    assert traj.extra["dispatch_values"].shape == (60, 2, 2)
    torch.testing.assert_close(y, per_sample_reference(layer, x, traj.actions))
    for j, sub in enumerate(router.subrouters):
        alone = RoutedLayer(layer.blocks, sub, depth=2)
        _, traj_alone = alone(x, meta)
        mine = k[:, 0] == j
        assert torch.equal(traj.actions[mine], traj_alone.actions[mine])
    copy.deepcopy(router)  # only detached traces are kept: the module can be copied after a forward


@pytest.mark.parametrize("approx_dispatcher", [False, True])
def test_dispatched_router_loss_trains_dispatcher_and_subrouters(approx_dispatcher):
    torch.manual_seed(4)
    router = make_dispatched(approx_dispatcher=approx_dispatcher)
    layer = RoutedLayer(make_blocks(3, 5), router, depth=2)
    _, traj = layer(torch.randn(60, 5), torch.randint(0, 3, (60,)))
    assign_rewards(traj, torch.randn(60))
    dtraj = router.dispatch_trajectory(traj)
    assert dtraj.actions.shape == (60, 1) and torch.equal(dtraj.final_reward, traj.final_reward)
    parts = {"d": router.dispatcher, "s0": router.subrouters[0], "s1": router.subrouters[1]}
    before = {name: params_of(m) for name, m in parts.items()}
    opt = torch.optim.SGD(router.parameters(), lr=0.5)
    router.loss(traj).backward()
    opt.step()
    assert changed(before["d"], router.dispatcher)
    assert changed(before["s0"], router.subrouters[0]) and changed(before["s1"], router.subrouters[1])


def test_dispatched_router_with_relaxed_parts_gets_task_loss_gradients():
    torch.manual_seed(5)
    dispatcher = TabularRouter(2, 1, 2, learner="gumbel", exploration=NO_EXPLORE)
    subs = [TabularRouter(2, 2, 3, learner="gumbel", exploration=NO_EXPLORE) for _ in range(2)]
    router = DispatchedRouter(dispatcher, subs)
    assert router.relaxed
    layer = RoutedLayer(make_blocks(3, 4), router, depth=2)
    y, traj = layer(torch.randn(50, 4), torch.randint(0, 2, (50,)))
    y.pow(2).sum().backward()
    assert dispatcher.table.grad.abs().sum() > 0
    assert all(s.table.grad is not None and s.table.grad.abs().sum() > 0 for s in subs)
    with pytest.raises(ValueError, match="all relaxed"):
        DispatchedRouter(TabularRouter(2, 1, 2), [subs[0], TabularRouter(2, 2, 3)])


# ----------------------------------------------------------------------------- baselines


def test_fixed_random_router_routes_are_fixed_per_meta_and_seeded():
    torch.manual_seed(6)
    router = FixedRandomRouter(num_meta=8, depth=3, num_actions=4, seed=0)
    assert list(router.parameters()) == []
    routes = router.routes.clone()
    layer = RoutedLayer(make_blocks(4, 5), router, depth=3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    meta = torch.randint(0, 8, (30,))
    for _ in range(2):
        y, traj = layer(torch.randn(30, 5), meta)
        assert torch.equal(traj.actions, routes[meta]) and not traj.explored.any()
        assign_rewards(traj, torch.randn(30))
        loss = router.loss(traj)
        assert float(loss) == 0.0 and not loss.requires_grad
        opt.zero_grad()
        (y.pow(2).mean() + loss).backward()
        opt.step()
    assert torch.equal(router.routes, routes)
    assert "routes" in router.state_dict()
    assert torch.equal(FixedRandomRouter(8, 3, 4, seed=0).routes, routes)
    assert not torch.equal(FixedRandomRouter(8, 3, 4, seed=1).routes, routes)
    assert (FixedRandomRouter(8, 3, 4, seed=2, choices=3).routes < 3).all()  # never the stop action
    y_none, traj_none = layer(torch.randn(4, 5), None)  # no meta: label 0's route for everyone
    assert (traj_none.actions == routes[0]).all()


def test_soft_mixture_matches_hand_computed_weighted_sum_and_trains_the_gate():
    torch.manual_seed(7)
    blocks = [nn.Linear(4, 4) for _ in range(3)]
    layer = SoftMixtureLayer(blocks, depth=2, num_meta=2, init_std=1.0)
    x = torch.randn(6, 4)
    meta = torch.tensor([0, 1, 1, 0, 1, 0])
    y, traj = layer(x, meta)
    expected = []
    for i in range(6):
        h = x[i]
        for t in range(2):
            w = torch.softmax(layer.router.gate[meta[i], t], -1)
            h = sum(w[k] * blocks[k](h) for k in range(3))
        expected.append(h)
    torch.testing.assert_close(y, torch.stack(expected))
    assert torch.equal(traj.actions, layer.router.gate.detach().argmax(-1)[meta])
    assert traj.active.all() and float(layer.router.loss(traj)) == 0.0
    y.pow(2).sum().backward()
    assert layer.router.gate.grad.abs().sum() > 0
    # packed tokens give the same as padded ones, meta=None uses gate row 0
    padded = torch.randn(3, 4, 4)
    lengths = torch.tensor([2, 4, 1])
    mask = torch.arange(4) < lengths.unsqueeze(1)
    m3 = torch.tensor([0, 1, 0])
    y_pad, _ = layer(padded, m3, mask)
    y_packed, _ = layer(padded[mask], m3, segments=torch.arange(3).repeat_interleave(lengths))
    torch.testing.assert_close(y_packed, y_pad[mask])
    torch.testing.assert_close(layer(x, None)[0], layer(x, torch.zeros(6, dtype=torch.long))[0])


# ----------------------------------------------------------------------------- Gumbel / RELAX


def test_gumbel_straight_through_equals_hard_route_and_reaches_the_router():
    torch.manual_seed(8)
    router = TabularRouter(3, 2, 4, learner="gumbel", exploration=NO_EXPLORE)
    with torch.no_grad():
        router.table.normal_()
    layer = RoutedLayer(make_blocks(4, 5), router, depth=2)
    x = torch.randn(40, 5)
    meta = torch.randint(0, 3, (40,))
    y, traj = layer(x, meta)
    h = x
    for t in range(2):
        h = grouped_apply(h, traj.actions[:, t], layer.blocks)
    assert torch.equal(y, h)  # the straight-through weights are exactly 1 in value
    assert traj.extra[RELAXED_WEIGHTS].shape == (40, 2, 4)
    assert traj.actions.unique().numel() > 1  # Gumbel noise samples different routes
    y.pow(2).sum().backward()
    assert router.table.grad is not None and router.table.grad.abs().sum() > 0
    # packed tokens take the relaxed path too (greedy in eval mode: same routes as padded input)
    layer.eval()
    padded = torch.randn(4, 3, 5)
    lengths = torch.tensor([3, 1, 2, 3])
    mask = torch.arange(3) < lengths.unsqueeze(1)
    m4 = torch.tensor([0, 1, 2, 0])
    y_pad, _ = layer(padded, m4, mask)
    y_packed, _ = layer(padded[mask], m4, segments=torch.arange(4).repeat_interleave(lengths))
    torch.testing.assert_close(y_packed, y_pad[mask])


def test_grouped_apply_scale_multiplies_block_outputs_only():
    blocks = [nn.Linear(3, 3), nn.Linear(3, 3)]
    x = torch.randn(5, 3)
    groups = torch.tensor([0, 2, 1, 0, 2])
    scale = torch.tensor([2.0, 3.0, 0.5, 1.0, 4.0])
    out = grouped_apply(x, groups, blocks, scale)
    ref = grouped_apply(x, groups, blocks)
    torch.testing.assert_close(out, ref * torch.tensor([2.0, 1.0, 0.5, 1.0, 1.0]).unsqueeze(1))
    one = grouped_apply(x, torch.ones(5, dtype=torch.long), blocks, scale)  # single-group path
    torch.testing.assert_close(one, blocks[1](x) * scale.unsqueeze(1))


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_gumbel_temperature_sets_the_soft_gradient(temperature):
    learner = build_learner("gumbel", temperature=temperature)
    assert learner.temperature == temperature and learner.relaxed
    learner.eval()  # no noise: the soft sample is softmax(values / T)
    values = torch.randn(6, 4, requires_grad=True)
    actions, explored, extra = learner.select(values, 0.0)
    w = extra[RELAXED_WEIGHTS]
    assert torch.equal(actions, values.argmax(-1)) and not explored.any()
    assert torch.equal(w, F.one_hot(actions, 4).float())
    w.gather(1, actions.unsqueeze(1)).sum().backward()
    s = torch.softmax(values.detach() / temperature, -1)
    sa = s.gather(1, actions.unsqueeze(1))
    expected = sa * (F.one_hot(actions, 4).float() - s) / temperature
    torch.testing.assert_close(values.grad, expected)
    with pytest.raises(ValueError, match="temperature"):
        build_learner("gumbel", temperature=0.0)


def test_relax_training_step_trains_router_and_critic():
    torch.manual_seed(9)
    learner = build_learner("relax")
    assert (learner.temperature, learner.value_coef, learner.entropy_coef) == (0.5, 0.5, 0.01)
    router = TabularRouter(2, 2, 4, learner="relax", exploration=NO_EXPLORE, seed=2)
    assert router.relaxed and router.learner.critic is not None
    layer = RoutedLayer(make_blocks(3, 5) + [nn.Identity()], router, depth=2)
    x, meta = torch.randn(48, 5), torch.randint(0, 2, (48,))
    target = torch.randn(48, 5)
    y, traj = layer(x, meta)
    # the conditional sample z~ keeps the chosen action on top
    assert torch.equal(traj.extra["relax_ztilde"].argmax(-1), traj.actions)
    per_sample = (y - target).pow(2).mean(1)
    assign_rewards(traj, -per_sample.detach())
    opt = torch.optim.SGD(router.parameters(), lr=0.1)
    before = params_of(router)
    (per_sample.mean() + router.loss(traj)).backward()
    critic = router.learner.critic
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    assert router.table.grad.abs().sum() > 0
    opt.step()
    assert changed(before, router)


def test_relax_policy_gradient_is_unbiased_on_a_bandit():
    """Mean of the RELAX estimator (random critic as control variate) = the exact gradient."""
    torch.manual_seed(12)
    n, a = 40000, 4
    learner = build_learner("relax", value_coef=0.0, entropy_coef=0.0, num_actions=a)
    with torch.no_grad():
        for p in learner.critic.parameters():
            p.mul_(3.0)  # a control variate far from the reward: its terms must cancel in expectation
    theta = torch.tensor([0.5, -0.3, 0.1, 0.8], requires_grad=True)
    reward = torch.tensor([1.0, -0.5, 0.3, -1.0])
    values = theta.expand(n, a)
    actions, explored, extra = learner.select(values, 0.0, torch.Generator().manual_seed(0))
    assert not explored.any()
    # z~ ~ p(z | b): per chosen action, it matches the unconditional draws z that chose it
    z, zt = extra["relax_z"].detach(), extra["relax_ztilde"].detach()
    assert torch.equal(zt.argmax(-1), actions)
    for j in range(a):
        mine = actions == j
        torch.testing.assert_close(zt[mine].mean(0), z[mine].mean(0), atol=0.06, rtol=0.0)
        torch.testing.assert_close(zt[mine].std(0), z[mine].std(0), atol=0.06, rtol=0.0)
    dec = Decision(actions, explored, values, None, extra)
    meta, active = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool)
    traj = Trajectory.from_decisions(meta, [dec], [active], None)
    assign_rewards(traj, reward[actions])
    learner.loss(traj).backward()
    p = torch.softmax(theta.detach(), -1)
    exact = p * (reward - (p * reward).sum())  # d E[R] / d theta
    torch.testing.assert_close(-theta.grad, exact, atol=0.03, rtol=0.0)


# ----------------------------------------------------------------------------- learning


def regression_task(dim: int = 8, k: int = 3, seed: int = 0):
    """Block k is the right function for task k: target = block_task(x)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(k):
        lin = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(dim, dim, generator=gen) / dim**0.5)
        lin.requires_grad_(False)
        blocks.append(lin)

    def batch(n: int):
        x = torch.randn(n, dim, generator=gen)
        meta = torch.randint(0, k, (n,), generator=gen)
        return x, meta, grouped_apply(x, meta, blocks)

    return blocks, batch


def greedy_accuracy(layer: RoutedLayer, batch) -> float:
    layer.eval()
    x, meta, _ = batch(300)
    with torch.no_grad():
        _, traj = layer(x, meta)
    layer.train()
    return float((traj.actions[:, 0] == meta).float().mean())


def test_approx_router_qlearning_learns_which_block_fits_each_task():
    torch.manual_seed(10)
    blocks, batch = regression_task()
    router = ApproxRouter(8, 3, 1, 3, learner="qlearning", exploration={"start": 0.3, "floor": 0.3}, seed=0)
    layer = RoutedLayer(blocks, router, depth=1)
    opt = torch.optim.Adam(router.parameters(), lr=1e-2)
    for _ in range(150):
        x, meta, target = batch(64)
        y, traj = layer(x, meta)
        assign_rewards(traj, -(y - target).pow(2).mean(1))
        opt.zero_grad()
        router.loss(traj).backward()
        opt.step()
    assert greedy_accuracy(layer, batch) > 0.9


def test_approx_router_gumbel_learns_from_the_task_loss_alone():
    torch.manual_seed(11)
    blocks, batch = regression_task(seed=1)
    router = ApproxRouter(8, 3, 1, 3, learner="gumbel", exploration=NO_EXPLORE, seed=0)
    layer = RoutedLayer(blocks, router, depth=1)
    opt = torch.optim.Adam(router.parameters(), lr=1e-2)
    for _ in range(150):
        x, meta, target = batch(64)
        y, _ = layer(x, meta)
        opt.zero_grad()
        F.mse_loss(y, target).backward()
        opt.step()
    assert greedy_accuracy(layer, batch) > 0.9


def test_approx_router_relax_learns_from_the_reward_alone():
    torch.manual_seed(13)
    blocks, batch = regression_task(seed=2)
    router = ApproxRouter(8, 3, 1, 3, learner="relax", exploration="high", seed=0)
    layer = RoutedLayer(blocks, router, depth=1)
    opt = torch.optim.Adam(router.parameters(), lr=1e-2)
    for _ in range(150):
        x, meta, target = batch(64)
        y, traj = layer(x, meta)
        assert not traj.explored.any()  # on-policy: the router's epsilon is ignored
        assign_rewards(traj, -(y - target).pow(2).mean(1).detach())
        opt.zero_grad()
        router.loss(traj).backward()  # no task loss: the RELAX estimator alone
        opt.step()
    assert greedy_accuracy(layer, batch) > 0.9
