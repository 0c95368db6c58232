"""The routing objective of a whole model computed once over its routed layers (issue 33): the fused
loss equals the sum of the per-layer losses in value and in every router's gradient, layers that
cannot share one computation keep their own, and a model with several routed layers dispatches fewer
operators per step."""

from __future__ import annotations

import pytest
import torch

from nli_routing.models.blocks import routed_fc_stack
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.routing import CollaborationReward, routing_objective
from nli_routing.routing.objective import concat_trajectories, fusion_key


def _layers(specs, num_meta=3, n=24, seed=0):
    """Routed stacks (dims, width, learner kwargs) run on one batch: (router, None, trajectory) parts."""
    torch.manual_seed(seed)
    meta = torch.randint(0, num_meta, (n,))
    parts = []
    for i, (dims, width, kw) in enumerate(specs):
        layer = routed_fc_stack(dims, width, num_meta, exploration="high", seed=i, **kw)
        _, traj = layer(torch.randn(n, dims[0]), meta)
        parts.append((layer.router, None, traj))
    return parts


def _loss_and_grads(parts, reward, fuse):
    for router, _, _ in parts:
        router.zero_grad(set_to_none=True)
    loss = routing_objective(parts, reward, fuse=fuse)
    loss.backward(retain_graph=True)
    return loss.detach(), [router.table.grad.clone() for router, _, _ in parts]


def _fresh(parts):
    """The same trajectories without rewards (a loss assigns them in place)."""
    out = []
    for router, collab, traj in parts:
        t = traj.detached()
        t.values = traj.values
        t.final_reward = t.step_rewards = None
        out.append((router, collab, t))
    return out


@pytest.mark.parametrize("learner_kwargs", [
    {},  # the defaults: returns as targets, per-state batch means
    {"learner_kwargs": {"target": "td", "gamma": 0.9}},
    {"learner_kwargs": {"batch_mean": "state-action"}},
])
def test_fused_loss_equals_the_sum_of_per_layer_losses(learner_kwargs):
    """Three routed stacks of different depths (1, 2, 3 steps), a stopping one among them: one fused
    computation, the value and every table's gradient of the per-layer losses."""
    parts = _layers([([8, 8], 4, learner_kwargs), ([8, 8, 8], 4, learner_kwargs),
                     ([8, 8, 8, 8], 4, learner_kwargs)])
    keys = {fusion_key(r, c, t) for r, c, t in parts}
    assert len(keys) == 1 and None not in keys
    reward = torch.randint(0, 2, (24,)).float() * 2 - 1
    fused, g_fused = _loss_and_grads(_fresh(parts), reward, True)
    alone, g_alone = _loss_and_grads(_fresh(parts), reward, False)
    torch.testing.assert_close(fused, alone, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_fused, g_alone):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_every_trajectory_holds_its_rewards_afterwards():
    parts = _fresh(_layers([([8, 8], 4, {}), ([8, 8, 8], 4, {})]))
    reward = torch.tensor([1.0, -1.0] * 12)
    routing_objective(parts, reward)
    for _, _, traj in parts:
        assert torch.equal(traj.final_reward, reward) and traj.step_rewards.shape == traj.actions.shape
        assert torch.all(traj.step_rewards == 0)


def test_state_ids_stay_per_layer_and_padding_is_inactive():
    parts = _layers([([8, 8], 4, {}), ([8, 8, 8], 4, {})])
    a, b = parts[0][2], parts[1][2]
    t = concat_trajectories([a, b])
    assert t.num_states == a.num_states + b.num_states and t.depth == 2 and t.batch_size == 48
    assert int(t.state_index[:24, 0].max()) < a.num_states <= int(t.state_index[24:, 0].min())
    assert not t.active[:24, 1].any() and torch.all(t.actions[:24, 1] == -1)
    assert torch.equal(t.values[24:], b.values) and t.values.requires_grad


def test_layers_that_cannot_share_a_computation_keep_their_own_loss():
    """A collaboration reward, another learner, or another number of actions: no fusion, same loss."""
    other = _layers([([8, 8], 4, {"learner": "reinforce"})])[0]
    assert fusion_key(*other) is None  # its loss is a batch mean, not a sum over rows with per-state weights
    parts = _layers([([8, 8], 4, {}), ([8, 8], 5, {}), ([8, 8, 8], 4, {}), ([8, 8], 4, {})])
    collab = CollaborationReward(4, rho=0.5).eval()  # eval: its shares stay as they are between the two runs
    parts[3] = (parts[3][0], collab, parts[3][2])
    assert fusion_key(*parts[3]) is None and fusion_key(*parts[0]) != fusion_key(*parts[1])
    assert fusion_key(*parts[0]) == fusion_key(*parts[2])
    reward = torch.randint(0, 2, (24,)).float() * 2 - 1
    fused, g_fused = _loss_and_grads(_fresh(parts), reward, True)
    alone, g_alone = _loss_and_grads(_fresh(parts), reward, False)
    torch.testing.assert_close(fused, alone)
    for a, b in zip(g_fused, g_alone):
        torch.testing.assert_close(a, b)


def test_a_model_with_two_routed_layers_computes_its_objective_once_with_fewer_operators():
    """CBOW with a routed word projection and a routed classifier: the same router loss and router
    gradients fused or not, and fewer operators in the router loss fused."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=4, route="wp+classifier", wp_width=4, classifier_width=4, classifier_layers=2,
                         exploration="high")
    model = NLIRoutingModel(cfg, torch.randn(50, 16), pad_id=0).train()
    g = torch.Generator().manual_seed(1)
    batch = {"premise_ids": torch.randint(1, 50, (16, 6), generator=g), "premise_mask": torch.ones(16, 6, dtype=torch.bool),
             "hypothesis_ids": torch.randint(1, 50, (16, 5), generator=g),
             "hypothesis_mask": torch.ones(16, 5, dtype=torch.bool),
             "meta": torch.randint(0, 4, (16,), generator=g), "labels": torch.randint(0, 3, (16,), generator=g)}
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert len(out.trajectories) == 2
    results = {}
    for fuse in (True, False):
        model.fuse_routing_objective = fuse
        for t in out.trajectories:
            t.final_reward = t.step_rewards = None
        model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss = model.router_loss(out, batch["labels"])
        ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        loss.backward(retain_graph=True)
        results[fuse] = (loss.detach(), [r.table.grad.clone() for r in model.routers()], ops)
    torch.testing.assert_close(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b)
    assert results[True][2] < results[False][2], (results[True][2], results[False][2])
