"""The one decision loop (RoutingPass) and the one execution interface (routing/execution.py): every
implementation equals running each sample alone through its block, and every routed part of every
model kind decides through RoutingPass."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn

from nli_routing.routing import EXECUTIONS, GroupPlan, LinearBank, RoutingPass, TabularRouter, execution_for
from nli_routing.routing.execution import PathExecution

from .helpers import build_model

Out = namedtuple("Out", "hidden extra")


def test_group_plan_sorts_stably_and_restores():
    groups = torch.tensor([2, 0, 1, 0, 3, 2, 0])
    plan = GroupPlan(groups, 3)
    assert plan.counts == [3, 1, 2, 1]
    assert plan.order.tolist() == [1, 3, 6, 2, 0, 5, 4]  # input order within a group
    x = torch.arange(7.0)
    assert torch.equal(plan.restore(plan.gather(x)), x)
    assert GroupPlan(torch.full((4,), 1), 3).single == 1
    assert GroupPlan(groups, 3, host_counts=False).counts is None


@pytest.mark.parametrize("kind", ["eager", "grouped_mm"])
def test_tensor_executions_equal_each_row_alone(kind):
    torch.manual_seed(0)
    if kind == "eager":
        blocks = nn.ModuleList(nn.Sequential(nn.Linear(5, 5), nn.Tanh()) for _ in range(3))
    else:
        blocks = LinearBank(3, 5, 5, activation="tanh")
    assert execution_for(blocks).name == kind
    x = torch.randn(9, 5)
    groups = torch.tensor([0, 2, 3, 1, 0, 3, 2, 2, 1])  # 3: stopped (identity)
    scale = torch.rand(9) + 0.5
    y = EXECUTIONS[kind](blocks, x, groups, scale)
    for i in range(9):
        g = int(groups[i])
        if g == 3:
            ref = x[i]
        elif kind == "eager":
            ref = blocks[g](x[i : i + 1])[0] * scale[i]
        else:  # the bank on one row alone
            ref = blocks.sorted_forward(x[i : i + 1], groups[i : i + 1], scale[i : i + 1])[0]
        torch.testing.assert_close(y[i], ref)


class TwoArgBlock(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, hidden, mask=None, note="n"):
        return Out(hidden * self.k + mask.sum(-1, keepdim=True), note)


def test_call_execution_slices_batch_arguments_and_merges_outputs():
    blocks = [TwoArgBlock(1.0), TwoArgBlock(2.0), TwoArgBlock(-1.0)]
    h = torch.randn(5, 4, 3)
    mask = torch.randint(0, 2, (5, 4, 1)).float()
    groups = torch.tensor([1, 0, 2, 1, 0])
    out = EXECUTIONS["call"](blocks, ((h,), {"mask": mask, "note": "x"}), groups, torch.full((5,), 2.0))
    assert isinstance(out, Out) and out.extra == "x"
    for i in range(5):
        ref = blocks[int(groups[i])](h[i : i + 1], mask[i : i + 1]).hidden[0] * 2.0
        torch.testing.assert_close(out.hidden[i], ref)


def test_path_execution_runs_every_paths_composition_on_its_rows():
    torch.manual_seed(0)
    steps = nn.ModuleList(nn.ModuleList(nn.Linear(4, 4) for _ in range(3)) for _ in range(2))
    paths = torch.tensor([[0, 2], [1, 1], [0, 2], [2, 0], [1, 1], [2, 2]])
    ex = EXECUTIONS["path"]
    plan = ex.plan(steps, paths)
    assert plan.counts[PathExecution.path_codes(paths[:1], 3).item()] == 2
    h = torch.randn(6, 4)
    y = plan.restore(ex.run_sorted(steps, plan.gather(h), plan.sorted_groups, counts=plan.counts))
    for i in range(6):
        a, b = paths[i].tolist()
        torch.testing.assert_close(y[i], steps[1][b](steps[0][a](h[i])))
    with pytest.raises(TypeError, match="recurrence"):
        ex(steps, h, paths[:, 0])


def test_routing_pass_checks_steps_and_meta():
    router = TabularRouter(3, 2, 4, exploration="none")
    rp = RoutingPass(router, torch.tensor([0, 1, 2]))
    x = torch.randn(3, 5)
    rp.decide(0, x)
    with pytest.raises(RuntimeError, match="decided twice"):
        rp.decide(0, x)
    with pytest.raises(RuntimeError, match=r"\['b'\]"):
        rp.trajectory(2, names=["a", "b"])
    with pytest.raises(ValueError, match="3 labels for a batch of 2"):
        rp.decide(1, x[:2])
    with pytest.raises(ValueError):
        RoutingPass(router, torch.tensor([0, 7]))  # meta class 7 of a 3-class router


@pytest.mark.parametrize(
    "case",
    [("cbow", "wp+classifier", "per-step", "aac"), ("lstm", "h2h", "tabular", "reinforce"),
     ("lstm", "i2h", "approx", "qlearning"), ("transformer", "attention", "approx", "qlearning"),
     ("vision", "routing", "approx", "qlearning")],
    ids="-".join,
)
def test_every_routed_part_decides_through_the_routing_pass(case, monkeypatch):
    model, batch = build_model(*case)
    calls = []
    decide, path = RoutingPass.decide, RoutingPass.decide_path
    monkeypatch.setattr(RoutingPass, "decide", lambda self, t, *a, **k: calls.append(t) or decide(self, t, *a, **k))
    monkeypatch.setattr(RoutingPass, "decide_path", lambda self, d: calls.append(("path", d)) or path(self, d))
    out = model.eval()(**batch)
    assert calls, f"{case}: no decision went through RoutingPass"
    assert len(out.trajectories) == len(model.routed_layer_names)
