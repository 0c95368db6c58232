"""The thesis' rules the audit found broken or undocumented, each against its equation.

Exploration (eq. 3.3), WPL's weighting (Algorithm 5.1 vs Abdallah & Lesser), WPL with function
approximation on an ApproxRouter (Algorithm 7.1), per-subrouter state ids of the DispatchedRouter,
the stop action of relaxed routers, and the baselines that do not learn.
"""

import pytest
import torch
from torch import nn

from nli_routing.routing import build_router
from nli_routing.routing import (
    ApproxRouter,
    DispatchedRouter,
    RoutedLayer,
    TabularRouter,
    Trajectory,
    assign_rewards,
    final_reward,
)
from nli_routing.routing.learners import LEARNERS, clip_projection, epsilon_greedy, wpl_target
from nli_routing.routing.learners.base import epsilon_greedy_rows

from .helpers.known_answer import greedy_hit_rate, make_layer, train_layer

# ------------------------------------------------------------------------- exploration, eq. 3.3


def test_epsilon_greedy_spreads_epsilon_over_the_other_actions():
    """pi(greedy) = 1 - eps, pi(a) = eps / (A - 1) otherwise; explored marks exactly the non-greedy draws."""
    values = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).expand(40000, 4)
    gen = torch.Generator().manual_seed(0)
    actions, explored = epsilon_greedy(values, 0.4, gen)
    freq = torch.bincount(actions, minlength=4).float() / 40000
    torch.testing.assert_close(freq, torch.tensor([0.4 / 3, 0.6, 0.4 / 3, 0.4 / 3]), atol=0.01, rtol=0)
    assert torch.equal(explored, actions != 1)
    # the per-row variant draws the same actions from the same generator state
    table = torch.tensor([[0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    rows = torch.randint(0, 2, (500,), generator=torch.Generator().manual_seed(1))
    a1, e1 = epsilon_greedy(table[rows], 0.5, torch.Generator().manual_seed(2))
    a2, e2 = epsilon_greedy_rows(table, rows, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a1, a2) and torch.equal(e1, e2)
    assert bool((a1[e1] != table[rows].argmax(-1)[e1]).all())
    # a single action cannot be explored
    one, ex = epsilon_greedy(torch.zeros(10, 1), 1.0, gen)
    assert bool((one == 0).all()) and not bool(ex.any())


# ------------------------------------------------------------------------- WPL weighting


def test_wpl_thesis_weighting_by_hand():
    pi = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([1.0, 0.0, -1.0])
    # V = 0.3; delta = (0.7, -0.3, -1.3); as printed in Algorithm 5.1: positive * pi, negative * (1 - pi)
    raw = pi + torch.tensor([0.7 * 0.5, -0.3 * 0.7, -1.3 * 0.8])
    exp = raw.clamp(0, 1) / raw.clamp(0, 1).sum()
    torch.testing.assert_close(wpl_target(pi, q, weighting="thesis"), exp)
    with pytest.raises(ValueError, match="weighting must be one of"):
        TabularRouter(1, 1, 3, learner="wpl", learner_kwargs={"weighting": "inverse"})


def _switching_bandit(weighting: str, seed: int, phase: int = 150) -> torch.Tensor:
    """WPL on a 4-armed bandit whose best arm moves from 0 to 2 halfway; the final policy."""
    env = torch.Generator().manual_seed(seed)
    router = TabularRouter(1, 1, 4, learner="wpl", exploration={"start": 0.1, "floor": 0.1}, seed=seed,
                           learner_kwargs={"num_states": 1, "weighting": weighting})
    opt = torch.optim.SGD(router.parameters(), lr=0.3)
    on = torch.ones(64, dtype=torch.bool)
    meta = torch.zeros(64, dtype=torch.long)
    for best in (0, 2):
        for _ in range(phase):
            dec = router.decide(None, meta, 0)
            correct = torch.rand(64, generator=env) < torch.where(dec.actions == best, 0.9, 0.2)
            traj = Trajectory.from_decisions(meta, [dec], [on], None, num_states=1)
            assign_rewards(traj, final_reward("correct", correct=correct))
            opt.zero_grad()
            router.loss(traj).backward()
            opt.step()
    return clip_projection(router.table.detach()[0, 0])


def test_wpl_original_weighting_recovers_an_action_pushed_to_zero():
    """Why "original" (Abdallah & Lesser) is the default: after the best arm changes, its
    probability, driven to ~0 in the first phase, grows back; with the weighting printed in
    Algorithm 5.1 a positive delta is scaled by pi ~ 0 and the policy stays on the old arm."""
    for seed in range(3):
        assert _switching_bandit("original", seed)[2] > 0.9
        assert _switching_bandit("thesis", seed)[0] > 0.4


# ------------------------------------------------------------------------- WPL-approx on an ApproxRouter


def test_wpl_approx_trains_an_approx_router_and_its_q_head():
    """Algorithm 7.1 needs Q(s, .): the ApproxRouter grows a critic head for it (was a ValueError)."""
    torch.manual_seed(0)
    router = ApproxRouter(5, 2, 1, 3, learner="wpl-approx", exploration="none")
    assert set(router.heads) == {"q_values"}
    layer = RoutedLayer([nn.Linear(5, 5) for _ in range(3)], router, depth=1)
    _, traj = layer(torch.randn(8, 5), torch.randint(0, 2, (8,)))
    assert traj.extra["q_values"].shape == (8, 1, 3)
    assign_rewards(traj, torch.randn(8))
    router.loss(traj).backward()
    assert router.heads["q_values"][-1].weight.grad.abs().sum() > 0  # the critic learns
    assert router.net[-1].weight.grad.abs().sum() > 0  # and the actor
    # the learner's known answer: every task's best path (the known-answer matrix runs all routers)
    layer = make_layer("approx", "wpl-approx", 2, 0)
    train_layer(layer, 2, 0, 300, 1.0)
    assert bool((greedy_hit_rate(layer, 2) >= 0.9).all())


@pytest.mark.parametrize("name", ["aac", "advantage"])
def test_value_baselines_of_approx_routers_can_be_learned_heads(name):
    assert not len(ApproxRouter(4, 0, 2, 3, learner=name).heads)  # default: the batch-mean baseline
    router = ApproxRouter(4, 0, 2, 3, learner=name, learner_kwargs={"value_head": True})
    assert set(router.heads) == {"state_value"}
    layer = RoutedLayer([nn.Identity() for _ in range(3)], router, depth=2)
    _, traj = layer(torch.randn(6, 4), None)
    assert traj.extra["state_value"].shape == (6, 2)
    assign_rewards(traj, torch.ones(6))
    router.loss(traj).backward()
    assert router.heads["state_value"][-1].weight.grad.abs().sum() > 0
    layer = make_layer("approx", name, 2, 0, learner_kwargs={"value_head": True})  # and it learns
    train_layer(layer, 2, 0, 300, 1.0, reward="neg_loss")
    assert bool((greedy_hit_rate(layer, 2) >= 0.9).all())


def test_tabular_wpl_is_refused_by_approximators_with_a_clear_error():
    with pytest.raises(ValueError, match="needs a TabularRouter.*wpl-approx"):
        ApproxRouter(4, 1, 1, 3, learner="wpl")
    with pytest.raises(ValueError, match="num_states is for tabular routers"):
        build_router("approx", [4, 4], 3, 2, learner="aac", learner_kwargs={"num_states": 2})


# ------------------------------------------------------------------------- DispatchedRouter state ids


def test_dispatched_subrouters_see_their_own_state_ids():
    """Each subrouter's learner-owned V table is indexed by that subrouter's (meta, depth) ids.

    AAC's critic moves V(s) by lr * mean(G - V(s)) over its samples in state s: with V = 0, lr = 1,
    the row of state (meta m, depth t) of subrouter j becomes the mean return of the samples of
    task m dispatched to j. (With merged ids s * K + j the tables raised or wrote other rows.)
    """
    torch.manual_seed(0)
    num_meta, depth = 3, 2
    dispatcher = TabularRouter(num_meta, 1, 2, exploration={"start": 1.0, "anneal": 1.0, "floor": 1.0}, seed=1,
                               learner_kwargs={"ties": "random"})  # full exploration, both subrouters
    subs = [TabularRouter(num_meta, depth, 3, learner="aac", exploration="none", seed=2 + j,
                          learner_kwargs={"num_states": num_meta * depth}) for j in range(2)]
    router = DispatchedRouter(dispatcher, subs)
    layer = RoutedLayer([nn.Identity() for _ in range(3)], router, depth=depth)
    meta = torch.arange(24) % num_meta
    _, traj = layer(torch.randn(24, 4), meta)
    reward = torch.randn(24)
    assign_rewards(traj, reward)
    opt = torch.optim.SGD(router.parameters(), lr=1.0)
    opt.zero_grad()
    router.loss(traj).backward()
    opt.step()
    k = traj.extra["dispatch"][:, 0]
    for j, sub in enumerate(subs):
        v = sub.learner.critic.table.detach().view(num_meta, depth)
        for m in range(num_meta):
            mine = (k == j) & (meta == m)
            exp = reward[mine].mean() if mine.any() else torch.tensor(0.0)
            torch.testing.assert_close(v[m], exp.expand(depth))
        assert router.num_states == 2 * num_meta * depth
        sub_traj = router.subrouter_trajectory(traj, j)
        assert int(sub_traj.state_index.max()) < sub.num_states and sub_traj.num_states == sub.num_states


# ------------------------------------------------------------------------- relaxed routers and stop


@pytest.mark.parametrize("router_kind", ["tabular", "approx"])
@pytest.mark.parametrize("name", ["gumbel", "relax"])
def test_relaxed_stop_action_gets_the_task_loss_gradient(name, router_kind):
    """Every sample stops at step 0: the output is the input, and the task loss still reaches the
    router's logits through the stop action's straight-through weight."""
    torch.manual_seed(0)
    if router_kind == "tabular":
        router = TabularRouter(1, 2, 3, learner=name, exploration="none", seed=0)
        with torch.no_grad():
            router.table[:, :, 2] = 6.0  # stop is the likely action
        params = [router.table]
    else:
        router = ApproxRouter(4, 0, 2, 3, learner=name, exploration="none", seed=0)
        with torch.no_grad():
            router.net[-1].bias.copy_(torch.tensor([-6.0, -6.0, 6.0]))
        params = [router.net[-1].bias]
    layer = RoutedLayer([nn.Linear(4, 4) for _ in range(2)], router, depth=2, allow_stop=True)
    x = torch.randn(32, 4)
    y, traj = layer(x, torch.zeros(32, dtype=torch.long))
    assert bool((traj.actions[:, 0] == 2).all()), "the seed must make every sample stop"
    torch.testing.assert_close(y, x)
    y.pow(2).sum().backward()
    assert params[0].grad is not None and float(params[0].grad.abs().sum()) > 0


def test_relaxed_stop_scaling_matches_the_straight_through_weight_by_hand():
    """With one sample stopping at step 0: d(sum y)/d(logits) = sum(x) * d w_stop / d logits."""
    router = TabularRouter(1, 1, 2, learner="gumbel", exploration="none", seed=0)
    router.eval()  # no Gumbel noise: argmax of the logits, soft = softmax(logits / T)
    with torch.no_grad():
        router.table[0, 0] = torch.tensor([0.0, 1.0])  # stop (index 1) wins
    layer = RoutedLayer([nn.Linear(3, 3)], router, depth=1, allow_stop=True)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    y, _ = layer(x, torch.zeros(1, dtype=torch.long))
    y.sum().backward()
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    exp = 6.0 * p[1] * (torch.tensor([0.0, 1.0]) - p)  # d softmax_1 / d logits
    torch.testing.assert_close(router.table.grad[0, 0], exp)


# ------------------------------------------------------------------------- baselines without a learner


@pytest.mark.parametrize("name", sorted(n for n in LEARNERS if n != "wpl"))
def test_fixed_random_routes_never_change_whatever_the_learner(name):
    router = build_router("fixed-random", [4, 4, 4], 3, 2, learner=name)
    before = router.routes.clone()
    layer = RoutedLayer([[nn.Linear(4, 4) for _ in range(3)] for _ in range(2)], router, depth=2, recursive=False)
    _, traj = layer(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    assign_rewards(traj, torch.randn(8))
    assert float(router.loss(traj)) == 0.0 and not list(router.parameters())
    assert torch.equal(router.routes, before)


def test_relax_critic_regresses_on_the_return():
    """RELAX's control variate r(softmax(z~ / T)) is fitted to the return G (value_coef * (r - G)^2)."""
    torch.manual_seed(0)
    router = TabularRouter(1, 1, 3, learner="relax", exploration="none", seed=0)
    opt = torch.optim.SGD(router.learner.critic.parameters(), lr=0.05)  # the critic only
    meta = torch.zeros(64, dtype=torch.long)
    on = torch.ones(64, dtype=torch.bool)
    for _ in range(300):
        dec = router.decide(None, meta, 0)
        traj = Trajectory.from_decisions(meta, [dec], [on], None)
        assign_rewards(traj, torch.full((64,), 1.5))
        opt.zero_grad()
        router.loss(traj).backward()
        opt.step()
    with torch.no_grad():
        fitted = router.learner._critic(traj.extra["relax_ztilde"][:, 0], frozen=False)
    torch.testing.assert_close(fitted, torch.full((64,), 1.5), atol=0.05, rtol=0)


def test_ties_lowest_takes_the_first_maximum_and_keeps_the_random_stream():
    values = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]]).repeat(200, 1)
    actions, explored = epsilon_greedy(values, 0.0, torch.Generator().manual_seed(0), ties="lowest")
    assert bool((actions == 1).all()) and not bool(explored.any())
    table = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    rows = torch.tensor([0, 1, 0, 1])
    a1, e1 = epsilon_greedy(table[rows], 0.3, torch.Generator().manual_seed(5), ties="lowest")
    a2, e2 = epsilon_greedy_rows(table, rows, 0.3, torch.Generator().manual_seed(5), ties="lowest")
    assert torch.equal(a1, a2) and torch.equal(e1, e2)
    router = TabularRouter(2, 2, 3, learner_kwargs={"ties": "lowest"}, exploration="none")
    path = router.decide_path(torch.tensor([0, 1, 1]), 2)
    assert bool((path.actions == 0).all())  # tied tables: every agent starts on block 0
    with pytest.raises(ValueError, match="ties must be one of"):
        TabularRouter(1, 1, 2, learner_kwargs={"ties": "first"})


def test_qlearning_state_batch_mean_moves_entries_by_their_visit_share():
    """batch_mean="state": Q(s, a) += lr * n(s, a) / n(s) * mean(target - Q) (a rare action moves little)."""
    for mode, exp in (("state-action", [1.0, -1.0]), ("state", [0.75, -0.25])):
        router = TabularRouter(1, 1, 2, learner_kwargs={"batch_mean": mode}, init=0.0)
        meta = torch.zeros(4, dtype=torch.long)
        values, index = router.values(None, meta, 0)
        dec_actions = torch.tensor([0, 0, 0, 1])
        from nli_routing.routing import Decision

        traj = Trajectory.from_decisions(meta, [Decision(dec_actions, torch.zeros(4, dtype=torch.bool), values, index)],
                                         [torch.ones(4, dtype=torch.bool)], None, num_states=1)
        assign_rewards(traj, torch.tensor([1.0, 1.0, 1.0, -1.0]))
        opt = torch.optim.SGD(router.parameters(), lr=1.0)
        router.loss(traj).backward()
        opt.step()
        torch.testing.assert_close(router.table.detach()[0, 0], torch.tensor(exp))
    with pytest.raises(ValueError, match="batch_mean must be one of"):
        TabularRouter(1, 1, 2, learner_kwargs={"batch_mean": "sample"})
