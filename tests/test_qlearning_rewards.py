"""Q-learning updates against hand-computed values, rewards and exploration schedules."""

import pytest
import torch

from nli_routing.routing import (
    EXPLORATION_PRESETS,
    CollaborationReward,
    ExplorationSchedule,
    TabularRouter,
    Trajectory,
    assign_rewards,
    final_reward,
)
from nli_routing.routing.learners import q_targets
from .helpers import sgd_step


def make_traj(router: TabularRouter, meta, actions, active) -> Trajectory:
    meta = torch.tensor(meta)
    actions = torch.tensor(actions)
    active = torch.tensor(active)
    d = actions.shape[1]
    values = torch.stack([router.table[meta, t] for t in range(d)], 1)
    state_index = torch.stack([meta * router.depth + t for t in range(d)], 1)
    return Trajectory(
        meta=meta,
        actions=actions.masked_fill(~active, -1),
        explored=torch.zeros_like(active),
        active=active,
        values=values,
        state_index=state_index,
        num_actions=router.num_actions,
        stop_action=None,
    )


def test_q_targets_bootstrap_and_terminal():
    router = TabularRouter(1, 2, 2)
    with torch.no_grad():
        router.table[0, 1] = torch.tensor([0.3, 0.7])
    traj = make_traj(router, [0, 0], [[0, 1], [1, 0]], [[True, True], [True, False]])
    traj.final_reward = torch.tensor([1.0, -1.0])
    traj.step_rewards = torch.tensor([[0.1, 0.0], [0.0, 0.0]])
    y = q_targets(traj)
    # sample 0: step 0 bootstraps with max Q(depth 1) = 0.7 plus its step reward; step 1 is terminal
    # sample 1: stopped after one decision, so step 0 is terminal
    torch.testing.assert_close(y, torch.tensor([[0.8, 1.0], [-1.0, 0.0]]))


def test_tabular_qlearning_update_matches_watkins_by_hand():
    router = TabularRouter(2, 2, 3, learner_kwargs={"target": "td", "batch_mean": "state-action"})
    with torch.no_grad():
        router.table.copy_(torch.tensor([[[0.0, 0.5, 0.0], [0.2, 0.0, -0.4]], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]))
    before = router.table.detach().clone()
    # three samples of agent 0 (two share the same first step), one of agent 1
    traj = make_traj(
        router, [0, 0, 0, 1], [[1, 0], [1, 2], [0, 0], [2, 0]], [[True] * 2] * 4
    )
    assign_rewards(traj, torch.tensor([1.0, -1.0, 1.0, -1.0]))
    alpha = 0.5
    sgd_step(router, traj, alpha)
    exp = before.clone()
    # agent 0, depth 0, action 1: two samples, target = 0 + max(Q[0,1]) = 0.2 for both
    exp[0, 0, 1] += alpha * (0.2 - 0.5)
    # agent 0, depth 0, action 0: target 0.2
    exp[0, 0, 0] += alpha * (0.2 - 0.0)
    # agent 0, depth 1, action 0: samples 0 and 2 both terminal with R = +1: mean target 1
    exp[0, 1, 0] += alpha * (1.0 - 0.2)
    # agent 0, depth 1, action 2: sample 1, R = -1
    exp[0, 1, 2] += alpha * (-1.0 - (-0.4))
    # agent 1: depth 0 action 2 bootstraps from max Q[1,1] = 1.0; depth 1 action 0 terminal R = -1
    exp[1, 0, 2] += alpha * (1.0 - 0.0)
    exp[1, 1, 0] += alpha * (-1.0 - 1.0)
    torch.testing.assert_close(router.table.detach(), exp)


def test_mean_target_when_state_action_visited_with_mixed_rewards():
    router = TabularRouter(1, 1, 2, learner_kwargs={"batch_mean": "state-action"})
    traj = make_traj(router, [0, 0, 0, 0], [[0], [0], [0], [1]], [[True]] * 4)
    assign_rewards(traj, torch.tensor([1.0, 1.0, -1.0, -1.0]))
    sgd_step(router, traj, 1.0)
    # lr 1 moves each entry to the batch-mean target of the samples that took it
    torch.testing.assert_close(router.table.detach()[0, 0], torch.tensor([1.0 / 3.0, -1.0]))


def test_default_batch_mean_moves_an_entry_by_its_share_of_the_state():
    """batch_mean="state" (default): Q(s, a) += lr * n(s, a) / n(s) * mean(target - Q) over its samples."""
    router = TabularRouter(1, 1, 2)
    traj = make_traj(router, [0, 0, 0, 0], [[0], [0], [0], [1]], [[True]] * 4)
    assign_rewards(traj, torch.tensor([1.0, 1.0, -1.0, -1.0]))
    sgd_step(router, traj, 1.0)
    # action 0: 3 of 4 samples, mean target 1/3 -> 0 + 3/4 * 1/3; action 1: 1 of 4, target -1 -> -1/4
    torch.testing.assert_close(router.table.detach()[0, 0], torch.tensor([0.25, -0.25]))


def test_final_rewards():
    correct = torch.tensor([True, False, True])
    torch.testing.assert_close(final_reward("correct", correct=correct), torch.tensor([1.0, -1.0, 1.0]))
    loss = torch.tensor([0.5, 2.0, 0.0], requires_grad=True)
    r = final_reward("neg_loss", per_sample_loss=loss)
    assert not r.requires_grad
    torch.testing.assert_close(r, torch.tensor([-0.5, -2.0, 0.0]))
    with pytest.raises(ValueError, match="unknown reward kind"):
        final_reward("accuracy", correct=correct)


def test_collaboration_reward_is_rho_share_over_trajectory_length():
    """r_t = rho * C(a_t) / t with t the sample's trajectory length (not the maximum depth)."""
    collab = CollaborationReward(num_actions=3, rho=0.5, momentum=0.0)  # memory of one batch
    router = TabularRouter(1, 2, 3)
    traj = make_traj(router, [0, 0], [[0, 0], [0, 1]], [[True, True], [True, False]])
    collab.update(traj)  # pooled shares: action 0 -> 3/3 decisions, action 1 -> 0
    torch.testing.assert_close(collab.share, torch.tensor([[1.0, 0.0, 0.0]]))
    traj2 = make_traj(router, [0, 0], [[0, 2], [0, 1]], [[True, True], [True, False]])
    r = collab(traj2)
    # sample 0 has 2 decisions: 0.5 * 1 / 2 and 0.5 * 0 / 2; sample 1 stopped after 1: 0.5 * 1 / 1
    torch.testing.assert_close(r, torch.tensor([[0.25, 0.0], [0.5, 0.0]]))
    collab.rho = -1.0  # negative rho penalises popular actions
    torch.testing.assert_close(collab(traj2), torch.tensor([[-0.5, 0.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="rho must be in"):
        CollaborationReward(3, rho=1.5)


def test_collaboration_shares_per_depth_for_per_step_layers():
    """A per-step layer's action a at depth 0 and at depth 1 are different blocks: one share row each."""
    collab = CollaborationReward(num_actions=2, rho=1.0, momentum=0.0, depths=2)
    router = TabularRouter(1, 2, 2)
    traj = make_traj(router, [0, 0, 0, 0], [[0, 1], [0, 1], [0, 1], [1, 0]], [[True, True]] * 4)
    collab.update(traj)
    torch.testing.assert_close(collab.share, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    r = collab(make_traj(router, [0], [[0, 0]], [[True, True]]))
    torch.testing.assert_close(r, torch.tensor([[0.75 / 2, 0.25 / 2]]))
    # a depth nobody reached keeps its shares; momentum mixes the old shares in
    collab.momentum = 0.5
    collab.update(make_traj(router, [0], [[1, 0]], [[True, False]]))
    torch.testing.assert_close(collab.share, torch.tensor([[0.375, 0.625], [0.25, 0.75]]))


def test_return_targets_give_each_agent_its_path_return():
    # default target: the return from each step (per-entry means: each entry lands on its target)
    router = TabularRouter(1, 2, 2, learner_kwargs={"batch_mean": "state-action"})
    traj = make_traj(router, [0, 0], [[0, 1], [1, 1]], [[True, True], [True, False]])
    assign_rewards(traj, torch.tensor([1.0, -1.0]))
    traj.step_rewards = torch.tensor([[0.25, 0.5], [0.0, 0.0]])
    sgd_step(router, traj, 1.0)
    # sample 0: G_0 = 0.25 + 0.5 + 1, G_1 = 0.5 + 1; sample 1 stopped after one decision: G_0 = -1
    torch.testing.assert_close(router.table.detach()[0], torch.tensor([[1.75, -1.0], [0.0, 1.5]]))
    with pytest.raises(ValueError, match="target must be one of"):
        TabularRouter(1, 1, 2, learner_kwargs={"target": "sarsa"})


def test_collaboration_reward_enters_q_targets():
    router = TabularRouter(1, 1, 2)
    collab = CollaborationReward(2, rho=1.0, momentum=0.0)
    collab.share.copy_(torch.tensor([1.0, 0.0]))
    collab.eval()
    traj = make_traj(router, [0], [[0]], [[True]])
    assign_rewards(traj, torch.tensor([-1.0]), collab)
    torch.testing.assert_close(q_targets(traj), torch.tensor([[-1.0 + 1.0]]))


def test_exploration_schedule_and_presets():
    s = ExplorationSchedule(start=0.8, anneal=0.5, every=2, floor=0.15)
    assert [s.epsilon(e) for e in range(6)] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2]
    assert s.epsilon(100) == 0.15
    assert EXPLORATION_PRESETS["high"].start > EXPLORATION_PRESETS["med"].start > EXPLORATION_PRESETS["low"].start
    with pytest.raises(ValueError):
        ExplorationSchedule(start=0.1, floor=0.2)
    router = TabularRouter(1, 1, 2, exploration="low")
    router.set_epoch(3)
    assert router.epsilon == pytest.approx(0.1 * 0.9**3)
    router.eval()
    assert router.epsilon == 0.0


def test_qlearning_finds_best_action_of_a_bandit_per_task():
    """Each task (agent) has a different best block; Q-learning with exploration finds it."""
    torch.manual_seed(0)
    num_tasks, num_actions = 3, 4
    best = torch.tensor([2, 0, 3])
    router = TabularRouter(num_tasks, 1, num_actions, exploration="high", seed=1)
    opt = torch.optim.SGD(router.parameters(), lr=0.3)
    for _ in range(200):
        meta = torch.randint(0, num_tasks, (64,))
        dec = router.decide(None, meta, 0)
        p_correct = torch.where(dec.actions == best[meta], 0.9, 0.3)
        correct = torch.rand(64) < p_correct
        traj = Trajectory.from_decisions(meta, [dec], [torch.ones(64, dtype=torch.bool)], None)
        assign_rewards(traj, final_reward("correct", correct=correct))
        opt.zero_grad()
        router.loss(traj).backward()
        opt.step()
    assert router.greedy_policy()[:, 0].tolist() == best.tolist()
