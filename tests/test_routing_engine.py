"""Routing engine: grouped execution against a per-sample reference, stop action, token-level routing."""

import pytest
import torch
from torch import nn

from nli_routing.routing import LinearBank, RoutedLayer, TabularRouter, grouped_apply
from .helpers import per_sample_reference


def make_blocks(n: int, dim: int, kind: str = "modules") -> list[nn.Module] | LinearBank:
    """``n`` tanh FC blocks: separate modules, or one :class:`LinearBank` with a given kernel."""
    if kind == "modules":
        return [nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(n)]
    return LinearBank(n, dim, dim, activation="tanh", impl=kind)


def clone_grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


@pytest.mark.parametrize("kind", ["modules", "grouped_mm", "loop"])
@pytest.mark.parametrize("shape", [(37, 8), (23, 5, 8)])
@pytest.mark.parametrize("allow_stop", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_execution_matches_per_sample_reference(kind, shape, allow_stop, seed):
    torch.manual_seed(seed)
    width, depth, num_meta = 4, 3, 5
    router = TabularRouter(num_meta, depth, width + allow_stop, exploration="high", seed=seed)
    with torch.no_grad():
        router.table.normal_()  # different greedy paths per agent
    layer = RoutedLayer(make_blocks(width, shape[-1], kind), router, depth=depth, allow_stop=allow_stop)
    x = torch.randn(*shape, requires_grad=True)
    meta = torch.randint(0, num_meta, (shape[0],))
    y, traj = layer(x, meta)
    assert traj.actions.shape == (shape[0], depth)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    gx, gparams = x.grad.clone(), clone_grads(layer.blocks)

    layer.zero_grad()
    x2 = x.detach().clone().requires_grad_(True)
    y_ref = per_sample_reference(layer, x2, traj.actions)
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, x2.grad, rtol=1e-5, atol=1e-6)
    for g, g_ref in zip(gparams, clone_grads(layer.blocks)):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_grouped_apply_identity_group_and_single_group():
    blocks = [nn.Linear(3, 3), nn.Linear(3, 3)]
    x = torch.randn(6, 3)
    # all samples stopped: activation unchanged, no block computed
    assert torch.equal(grouped_apply(x, torch.full((6,), 2), blocks), x)
    # all samples in one block: same as calling the block
    torch.testing.assert_close(grouped_apply(x, torch.ones(6, dtype=torch.long), blocks), blocks[1](x))


def test_stop_action_keeps_activation_and_ends_trajectory():
    torch.manual_seed(0)
    width, depth = 3, 4
    router = TabularRouter(2, depth, width + 1, exploration="none")
    with torch.no_grad():
        router.table.zero_()
        router.table[0, :, 0] = 1.0  # agent 0: block 0 at every depth
        router.table[1, 0, 1] = 1.0  # agent 1: block 1, then stop
        router.table[1, 1:, width] = 1.0
    layer = RoutedLayer(make_blocks(width, 6), router, depth=depth, allow_stop=True)
    layer.eval()
    x = torch.randn(4, 6)
    meta = torch.tensor([0, 1, 0, 1])
    y, traj = layer(x, meta)
    assert traj.actions[1].tolist() == [1, width, -1, -1]
    assert traj.active[1].tolist() == [True, True, False, False]
    assert traj.last_active[1].tolist() == [False, True, False, False]
    assert traj.path_length.tolist() == [4, 1, 4, 1]
    torch.testing.assert_close(y[1], layer.blocks[1](x[1]))
    expected0 = x[0]
    for _ in range(depth):
        expected0 = layer.blocks[0](expected0)
    torch.testing.assert_close(y[0], expected0)


def test_token_level_routing_every_token_follows_its_sample():
    torch.manual_seed(3)
    router = TabularRouter(3, 2, 3, exploration="high")
    layer = RoutedLayer([nn.Linear(4, 4) for _ in range(3)], router, depth=2)
    x = torch.randn(10, 7, 4)
    meta = torch.randint(0, 3, (10,))
    y, traj = layer(x, meta)
    for i in range(10):
        expected = x[i]
        for t in range(2):
            expected = layer.blocks[int(traj.actions[i, t])](expected)
        torch.testing.assert_close(y[i], expected)


def test_per_step_mode_uses_its_own_blocks_per_depth():
    torch.manual_seed(0)
    dims = [5, 7, 3]
    blocks = [[nn.Linear(dims[t], dims[t + 1]) for _ in range(2)] for t in range(2)]
    router = TabularRouter(2, 2, 2, exploration="high")
    layer = RoutedLayer(blocks, router, depth=2, recursive=False)
    x = torch.randn(9, 5)
    y, traj = layer(x, torch.randint(0, 2, (9,)))
    assert y.shape == (9, 3)
    torch.testing.assert_close(y, per_sample_reference(layer, x, traj.actions))


def test_layer_checks_router_width_and_meta_range():
    with pytest.raises(ValueError, match="router has 3 actions but the layer needs 4"):
        RoutedLayer([nn.Linear(2, 2)] * 3, TabularRouter(1, 1, 3), depth=1, allow_stop=True)
    layer = RoutedLayer([nn.Linear(2, 2)] * 2, TabularRouter(2, 1, 2), depth=1)
    with pytest.raises(ValueError, match=r"meta labels \[5\] are outside this router's 2 agents"):
        layer(torch.randn(3, 2), torch.tensor([0, 5, 1]))


def test_trajectory_records_exploration():
    router = TabularRouter(1, 2, 4, exploration={"start": 1.0, "anneal": 1.0, "every": 1, "floor": 1.0})
    layer = RoutedLayer([nn.Identity()] * 4, router, depth=2)
    _, traj = layer(torch.zeros(500, 2), torch.zeros(500, dtype=torch.long))
    assert traj.explored.all()
    # full exploration (eq. 3.3): uniform over the actions other than the greedy one (tied table:
    # the lowest index by default)
    counts = torch.bincount(traj.actions.flatten(), minlength=4).float()
    assert counts[0] == 0
    assert (counts[1:] / counts.sum() - 1 / 3).abs().max() < 0.05
    layer.eval()
    _, traj = layer(torch.zeros(50, 2), torch.zeros(50, dtype=torch.long))
    assert not traj.explored.any()


def test_packed_tokens_follow_their_sample_path_like_padded_input():
    torch.manual_seed(5)
    router = TabularRouter(4, 3, 3, exploration="none")
    with torch.no_grad():
        router.table.normal_()
    layer = RoutedLayer(make_blocks(3, 6), router, depth=3)
    layer.eval()
    lengths = torch.tensor([3, 0, 5, 1])
    padded = torch.randn(4, 5, 6)
    mask = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)
    meta = torch.tensor([0, 1, 2, 3])
    y_pad, traj_pad = layer(padded, meta, mask)
    segments = torch.arange(4).repeat_interleave(lengths)
    y_packed, traj_packed = layer(padded[mask], meta, segments=segments)
    assert torch.equal(traj_pad.actions, traj_packed.actions)
    torch.testing.assert_close(y_packed, y_pad[mask])


@pytest.mark.parametrize("kind", ["modules", "grouped_mm"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("allow_stop", [False, True])
@pytest.mark.parametrize("learner", ["qlearning", "gumbel"])
def test_rows_in_the_layers_order_equal_the_input_order_output(kind, depth, allow_stop, learner):
    """forward_rows makes the rows in the first step's order and returns them in the last one's:
    permuted back, output and gradients equal forward's (packed tokens, relaxed and stopping routers)."""
    torch.manual_seed(depth + 2 * allow_stop)
    width, num_meta = 4, 5
    router = TabularRouter(num_meta, depth, width + allow_stop, learner=learner, exploration="high", seed=1)
    with torch.no_grad():
        router.table.normal_()
    layer = RoutedLayer(make_blocks(width, 6, kind), router, depth=depth, allow_stop=allow_stop)
    lengths = torch.tensor([3, 1, 5, 2, 4, 2])
    segments = torch.arange(6).repeat_interleave(lengths)
    meta = torch.randint(0, num_meta, (6,))
    table = torch.randn(20, 6, requires_grad=True)  # an embedding whose gradient must come back too
    ids = torch.randint(0, 20, (segments.numel(),))
    upstream = torch.randn(ids.numel(), 6)

    router.generator.manual_seed(7)
    y, perm, traj = layer.forward_rows(lambda idx: table[ids if idx is None else ids[idx]], meta, segments)
    assert perm is not None and sorted(perm.tolist()) == list(range(ids.numel()))
    (y * upstream[perm]).sum().backward()
    g_rows = table.grad.clone()
    table.grad = None
    router.generator.manual_seed(7)
    y_ref, traj_ref = layer(table[ids], meta, segments=segments)
    (y_ref * upstream).sum().backward()
    assert torch.equal(traj.actions, traj_ref.actions)
    torch.testing.assert_close(y, y_ref[perm])
    torch.testing.assert_close(g_rows, table.grad)


def test_rows_of_a_state_reading_router_come_in_input_order():
    from nli_routing.routing.approx import ApproxRouter

    torch.manual_seed(0)
    router = ApproxRouter(6, 3, 1, 3)
    layer = RoutedLayer(make_blocks(3, 6), router, depth=1)
    x = torch.randn(7, 6)
    y, perm, _ = layer.forward_rows(lambda idx: x if idx is None else x[idx], torch.zeros(3, dtype=torch.long),
                                    torch.tensor([0, 0, 1, 1, 1, 2, 2]))
    assert perm is None and y.shape == x.shape


@pytest.mark.parametrize("kind", ["modules", "grouped_mm", "loop"])
@pytest.mark.parametrize("allow_stop", [False, True])
def test_pass_action_keeps_the_activation_for_one_step_and_the_sample_goes_on(kind, allow_stop):
    """The PASS action (ICLR paper, thesis 3.4.2): the sample skips the step (activation unchanged) and
    still decides at the next one, unlike stop. Agent 0: pass, block 1, pass; agent 1: block 2, pass,
    block 0; agent 2 (with stop): pass, then stop."""
    torch.manual_seed(0)
    width, depth = 3, 3
    pass_a = width + int(allow_stop)
    router = TabularRouter(3, depth, width + int(allow_stop) + 1, exploration="none")
    with torch.no_grad():
        router.table.zero_()
        for agent, path in enumerate([[pass_a, 1, pass_a], [2, pass_a, 0], [pass_a, width if allow_stop else 0, 0]]):
            for t, a in enumerate(path):
                router.table[agent, t, a] = 1.0
    layer = RoutedLayer(make_blocks(width, 6, kind), router, depth=depth, allow_stop=allow_stop, allow_pass=True)
    assert layer.num_actions == width + int(allow_stop) + 1 and layer.pass_action == pass_a
    layer.eval()
    x = torch.randn(5, 6)
    meta = torch.tensor([0, 1, 2, 0, 1])
    y, traj = layer(x, meta)

    def block(i, v):
        return layer.blocks[i](v.unsqueeze(0)).squeeze(0) if isinstance(layer.blocks, LinearBank) else layer.blocks[i](v)

    torch.testing.assert_close(y[0], block(1, x[0]))
    torch.testing.assert_close(y[1], block(0, block(2, x[1])))
    if allow_stop:
        torch.testing.assert_close(y[2], x[2])  # pass, then stop: untouched
        assert traj.active[2].tolist() == [True, True, False]
    else:
        torch.testing.assert_close(y[2], block(0, block(0, x[2])))
    assert traj.active[0].tolist() == [True, True, True]  # passing never ends a path
    assert traj.actions[0].tolist() == [pass_a, 1, pass_a]


def test_pass_action_needs_a_router_with_the_extra_action_and_shape_keeping_steps():
    from nli_routing.models.blocks import routed_fc_stack

    with pytest.raises(ValueError, match=r"3 blocks \+ pass"):
        RoutedLayer([nn.Linear(2, 2)] * 3, TabularRouter(1, 1, 3), depth=1, allow_pass=True)
    with pytest.raises(ValueError, match="every step must keep its size"):
        routed_fc_stack([8, 4], 2, 1, allow_pass=True)
    # a router that reads the activation decides step by step (forward_steps): same rule
    torch.manual_seed(1)
    layer = routed_fc_stack([4, 4, 4], 2, 3, allow_pass=True, router_type="approx", exploration="high")
    assert layer.router.num_actions == 3
    x = torch.randn(40, 4)
    y, traj = layer(x, torch.randint(0, 3, (40,)))
    assert (traj.actions == 2).any() and (traj.actions < 2).any()
    for i in range(40):
        v = x[i:i + 1]
        for t in range(2):
            a = int(traj.actions[i, t])
            if a != 2:
                v = layer.blocks[t][a](v)
        torch.testing.assert_close(y[i:i + 1], v)
