"""Property tests over every registered learner: arbitrary rewards never break a tabular router.

Learners are collected from ``LEARNERS`` at collection time, so learners registered later are
included automatically. Optional class attributes a learner can set for this test:

* ``tabular_init``: the TabularRouter init giving a uniform initial policy (a number, or
  ``"uniform"`` for ``1 / num_actions``); default 0 (value tables / logits);
* ``policy_kind``: ``"softmax"`` (values are logits) or ``"table"`` (values are probabilities)
  to have the policy checked as a distribution; absent or None for value learners;
* ``property_test_kwargs``: extra ``learner_kwargs``;
* ``property_test_skip``: a reason string, only for learners that cannot run on a TabularRouter.

A learner whose ``__init__`` takes ``num_states`` is run both with and without a learner-owned table.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import nli_routing.routing  # noqa: F401  (imports every learner module, so all are registered)
from nli_routing.routing import TabularRouter, Trajectory
from nli_routing.routing.learners import LEARNERS

NAMES = sorted(LEARNERS)

REWARDS = st.one_of(
    st.sampled_from([-10.0, 0.0, 10.0]),
    st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False),
)


def tabular_init(cls: type, num_actions: int) -> float:
    init = getattr(cls, "tabular_init", 0.0)
    return 1.0 / num_actions if init == "uniform" else float(init)


def build_router(name: str, num_meta: int, depth: int, num_actions: int, use_table: bool, eps: float, seed: int):
    cls = LEARNERS[name]
    reason = getattr(cls, "property_test_skip", None)
    if reason:
        pytest.skip(f"{name}: {reason}")
    kwargs = dict(getattr(cls, "property_test_kwargs", None) or {})
    if use_table and "num_states" in inspect.signature(cls.__init__).parameters:
        kwargs["num_states"] = num_meta * depth
    return TabularRouter(
        num_meta,
        depth,
        num_actions,
        learner=name,
        exploration={"start": eps, "anneal": 1.0, "floor": eps},
        init=tabular_init(cls, num_actions),
        seed=seed,
        learner_kwargs=kwargs,
    )


def check_policy(router: TabularRouter) -> None:
    kind = getattr(router.learner, "policy_kind", None)
    table = router.table.detach()
    if kind == "softmax":
        pi = F.softmax(table, -1)
    elif kind == "table":
        pi = table  # the WPL table itself must stay on the simplex (up to SGD rounding)
    else:
        return
    assert bool((pi >= -1e-6).all()), f"negative probabilities: {pi.min().item()}"
    torch.testing.assert_close(pi.sum(-1), torch.ones(pi.shape[:-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_learner_stays_finite_and_valid(name, data):
    num_meta = data.draw(st.integers(1, 3), label="num_meta")
    depth = data.draw(st.integers(1, 3), label="depth")
    num_actions = data.draw(st.integers(2, 5), label="num_actions")
    batch = data.draw(st.integers(1, 6), label="batch")
    lr = data.draw(st.sampled_from([0.01, 0.1, 0.5, 1.0]), label="lr")
    eps = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="epsilon")
    use_table = data.draw(st.booleans(), label="use_table")
    router = build_router(name, num_meta, depth, num_actions, use_table, eps, seed=data.draw(st.integers(0, 99)))
    opt = torch.optim.SGD(router.parameters(), lr=lr)
    for _ in range(data.draw(st.integers(1, 4), label="steps")):
        meta = torch.tensor(data.draw(st.lists(st.integers(0, num_meta - 1), min_size=batch, max_size=batch)))
        lengths = torch.tensor(data.draw(st.lists(st.integers(1, depth), min_size=batch, max_size=batch)))
        final = torch.tensor(data.draw(st.lists(REWARDS, min_size=batch, max_size=batch)), dtype=torch.float)
        steps = data.draw(st.lists(REWARDS, min_size=batch * depth, max_size=batch * depth))
        decisions = [router.decide(None, meta, t) for t in range(depth)]
        active = [lengths > t for t in range(depth)]
        traj = Trajectory.from_decisions(meta, decisions, active, None)
        traj.final_reward = final
        traj.step_rewards = torch.tensor(steps, dtype=torch.float).view(batch, depth) * traj.active.float()
        opt.zero_grad()
        loss = router.loss(traj)
        assert torch.isfinite(loss).all(), f"{name}: loss {loss}"
        if loss.requires_grad:
            loss.backward()
        for pname, p in router.named_parameters():
            assert p.grad is None or bool(torch.isfinite(p.grad).all()), f"{name}: gradient of {pname}"
        opt.step()
        for pname, p in router.named_parameters():
            assert bool(torch.isfinite(p).all()), f"{name}: parameter {pname} is not finite"
        check_policy(router)
