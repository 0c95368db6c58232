"""The opt-in native CPU kernel of routed banks (``nli_routing.routing.native``, issue 33): its three
products against torch's matmuls (empty groups, rows past the last offset, strided inputs), the bad
offsets it refuses, the process switch and what ``impl="auto"`` then picks, a build that fails, and the
operators a training step no longer dispatches."""

from __future__ import annotations

import pytest
import torch

from nli_routing.experiments.bench import (
    StepSetup,
    mlp_batch,
    mlp_model,
    step_op_count,
    train_cfg,
)
from nli_routing.routing import LinearBank, native

from .helpers import assert_same_run, require_native_kernel


@pytest.fixture(autouse=True)
def _switch_off_after():
    yield
    native.disable_native_cpu_kernels()


def switched():
    """The native kernel off, then on (asserted to load): yields False, then True."""
    for on in (False, True):
        native.disable_native_cpu_kernels()
        if on:
            assert native.enable_native_cpu_kernels()
        yield on


def watch_q_loss(monkeypatch) -> list:
    """The ``from_table`` flag of every call of the native Q loss's autograd node from now on."""
    calls = []
    real = native._apply_qlearning_loss
    monkeypatch.setattr(native, "_apply_qlearning_loss", lambda *a: calls.append(a[-1]) or real(*a))
    return calls


def _reference(x, w, ends, trans=False):
    out, start = [], 0
    for g, end in enumerate(ends):
        wg = w[g].t() if trans else w[g]
        out.append(x[start:end] @ wg)
        start = end
    y = torch.cat(out)
    return torch.cat([y, y.new_zeros(x.shape[0] - start, y.shape[1])])


@pytest.mark.parametrize("ends", [[0, 4, 4, 9, 13], [13, 13, 13, 13, 13], [2, 2, 5, 5, 10]])
def test_the_three_products_equal_torch_matmuls(ends):
    """Forward, input gradient and weight gradient per group, empty groups (zero weight gradient) and
    rows past the last offset (zero output) included; x given as a transposed (strided) view."""
    require_native_kernel()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 6, 7, generator=g)
    x = torch.randn(6, 13, generator=g).t()  # not contiguous
    gy = torch.randn(13, 7, generator=g)
    offs = torch.tensor(ends, dtype=torch.int32)
    mod = native.load_native_kernel()
    torch.testing.assert_close(mod.segment_mm(x, w, offs, False), _reference(x, w, ends))
    torch.testing.assert_close(mod.segment_mm(gy, w, offs, True), _reference(gy, w, ends, trans=True))
    dw = mod.segment_weight_grad(x, gy, offs, 5)
    start = 0
    for k, end in enumerate(ends):
        torch.testing.assert_close(dw[k], x[start:end].t() @ gy[start:end])
        start = end


def test_autograd_gives_torch_gradients_and_skips_what_is_not_needed():
    require_native_kernel()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 8, 3, generator=g, requires_grad=True)
    x = torch.randn(20, 8, generator=g)  # an input without gradient: no input-gradient product
    offs = torch.tensor([5, 5, 12, 20], dtype=torch.int32)
    up = torch.randn(20, 3, generator=g)
    (native.segment_matmul(x, w, offs) * up).sum().backward()
    got = w.grad.clone()
    w.grad = None
    (_reference(x, w, [5, 5, 12, 20]) * up).sum().backward()
    torch.testing.assert_close(got, w.grad)
    assert torch.equal(got[1], torch.zeros(8, 3))


@pytest.mark.parametrize("offs,message", [([3, 2, 9], "rise"), ([3, 5, 99], "at most 9"), ([3, 9], "int32 \\[groups\\]")])
def test_bad_offsets_are_refused_with_a_message(offs, message):
    require_native_kernel()
    mod = native.load_native_kernel()
    with pytest.raises(RuntimeError, match=message):
        mod.segment_mm(torch.randn(9, 4), torch.randn(3, 4, 2), torch.tensor(offs, dtype=torch.int32), False)
    with pytest.raises(RuntimeError, match="float32"):
        mod.segment_mm(torch.randn(9, 4, dtype=torch.float64), torch.randn(3, 4, 2), torch.tensor([3, 5, 9], dtype=torch.int32), False)


def test_the_switch_makes_auto_banks_native_for_float32_cpu_rows_only():
    require_native_kernel()
    bank = LinearBank(8, 16, 16)
    x = torch.randn(64, 16)
    assert bank.resolve_impl(x) != "native"
    assert native.enable_native_cpu_kernels() and native.native_cpu_kernels_enabled()
    assert native.native_kernel_state(True) == "on"
    assert bank.resolve_impl(x) == "native"
    assert bank.resolve_impl(x.double()) in ("loop", "tiled")  # other dtypes keep torch's kernels
    assert LinearBank(8, 16, 16, impl="grouped_mm").resolve_impl(x) == "grouped_mm"  # an explicit choice stays
    native.disable_native_cpu_kernels()
    assert bank.resolve_impl(x) != "native"
    assert LinearBank(8, 16, 16, impl="native").resolve_impl(x) == "native"  # asked for by the bank itself


def test_the_loop_config_and_the_trainer_take_the_flag():
    from transformers import HfArgumentParser

    from nli_routing.training.loop import TrainConfig

    (cfg,) = HfArgumentParser(TrainConfig).parse_args_into_dataclasses(["--native_cpu_kernels"])
    assert cfg.native_cpu_kernels is True and TrainConfig().native_cpu_kernels is False
    with pytest.raises(SystemExit):
        HfArgumentParser(TrainConfig).parse_args_into_dataclasses(["--native_cpu_kernels", "maybe"])


def test_a_failed_build_warns_once_and_keeps_grouped_mm(monkeypatch):
    """No compiler (or a torch without the BLAS symbol): the switch warns with the reason and the banks
    keep torch's kernels; a bank that asks for ``impl="native"`` gets the reason as an error."""
    import torch.utils.cpp_extension as cpp

    def broken(*a, **k):
        raise RuntimeError("Error building extension 'nli_routing_segment_mm'\nc++: not found")

    monkeypatch.setattr(cpp, "load_inline", broken)
    monkeypatch.setattr(native, "_state", {"module": None, "tried": False, "enabled": False, "reason": "not built yet"})
    with pytest.warns(RuntimeWarning, match="could not be built or loaded .*Error building extension"):
        assert native.enable_native_cpu_kernels() is False
    assert not native.native_cpu_kernels_enabled()
    assert LinearBank(4, 8, 8).resolve_impl(torch.randn(8, 8)) != "native"
    with pytest.raises(RuntimeError, match=r"impl='native'.*could not be built"):
        LinearBank(4, 8, 8, impl="native").resolve_impl(torch.randn(8, 8))
    assert native.native_kernel_state(False) == "off"  # what a benchmark records
    assert native.native_kernel_state(True).startswith("asked for, not running: the native CPU kernel could not")


def test_a_kernel_that_disagrees_with_torch_is_not_used(monkeypatch):
    class Wrong:
        @staticmethod
        def segment_mm(x, w, offs, trans):
            return torch.zeros(x.shape[0], w.shape[1] if trans else w.shape[2])

        @staticmethod
        def segment_weight_grad(x, gy, offs, groups):
            return torch.zeros(groups, x.shape[1], gy.shape[1])

    assert "forward disagrees with torch.mm" in native._self_check(Wrong())


def test_a_training_step_dispatches_no_per_group_matmuls():
    """The routed MLP with 128 blocks a layer: torch's CPU grouped_mm runs ~1,000 ``mm`` a step (one per
    group and product, empty groups included); the native kernel none, and far fewer operators."""
    require_native_kernel()
    counts = {}
    for impl in ("grouped_mm", "native"):
        model = mlp_model("routing", 128, 8, dim=16)
        for bank in (m for m in model.modules() if isinstance(m, LinearBank)):
            bank.impl = impl
        counts[impl] = step_op_count(StepSetup(model, mlp_batch(64, 8, dim=16), train_cfg()))
    assert counts["grouped_mm"].get("aten::mm", 0) > 3 * 128
    assert counts["native"].get("aten::mm", 0) < 10
    assert counts["native"]["aten"] * 2 < counts["grouped_mm"]["aten"]


# ---------------------------------------------------------------------- the routed path as one native operator
def _path_run(native_on, dims, width, activation="relu", recursive=False, n=37, packed=False, **kw):
    """Output, actions and every gradient of a routed stack decided ahead (tabular routers, exploring),
    with the native switch on (the fused path) or off (grouped_mm, the sorted path)."""
    from nli_routing.models.blocks import routed_fc_stack

    native.disable_native_cpu_kernels()
    if native_on:
        assert native.enable_native_cpu_kernels()
    torch.manual_seed(0)
    layer = routed_fc_stack(dims, width, 4, activation=activation, recursive=recursive, exploration="high", **kw)
    meta = torch.randint(0, 4, (n,))
    torch.manual_seed(1)
    if packed:  # token rows of every sample, made by forward_rows (the CBOW word projection's call)
        seg = torch.randint(0, n, (3 * n,)).sort().values
        x = torch.randn(seg.shape[0], dims[0], requires_grad=True)
        y, perm, traj = layer.forward_rows(lambda idx: x if idx is None else x.index_select(0, idx), meta, seg)
        if perm is not None:  # the sorted path returns rows in its last step's order
            y = torch.empty_like(y).index_copy(0, perm, y)
    else:
        x = torch.randn(n, dims[0], requires_grad=True)
        y, traj = layer(x, meta)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), traj.actions, x.grad, [p.grad for p in layer.parameters() if p.grad is not None]


def _count_fused(monkeypatch):
    calls = []
    real = native._apply_routed_path
    monkeypatch.setattr(native, "_apply_routed_path", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("activation", ["relu", "identity", "tanh"])
@pytest.mark.parametrize("dims,width,recursive", [([8, 8, 8, 8], 5, False), ([6, 9, 4], 3, False),
                                                  ([8, 8, 8, 8], 7, True)])
def test_the_fused_path_equals_the_sorted_path(monkeypatch, activation, dims, width, recursive):
    """Values, actions and the gradients of the input, every weight and every bias: the fused operator
    against the sorted path, per-step banks of changing widths, one bank reused at every step, blocks
    no row takes (7 blocks, 4 agents: zero gradients) and every activation the kernel computes."""
    require_native_kernel()
    calls = _count_fused(monkeypatch)
    fused = _path_run(True, dims, width, activation, recursive)
    assert calls == [1]
    assert_same_run(fused, _path_run(False, dims, width, activation, recursive))
    assert calls == [1]  # switched off: the sorted path


def test_the_fused_path_takes_packed_rows_in_input_order(monkeypatch):
    """forward_rows (packed token rows, the CBOW word projection): the rows are made once in input order,
    no permutation comes back, and the values and gradients are the sorted path's."""
    require_native_kernel()
    calls = _count_fused(monkeypatch)
    fused = _path_run(True, [8, 8, 8], 4, packed=True)
    assert calls == [1]
    assert_same_run(fused, _path_run(False, [8, 8, 8], 4, packed=True))


@pytest.mark.parametrize("kw", [{"residual": True, "gate_init": 0.5}, {"allow_stop": True, "recursive": True}])
def test_what_the_kernel_does_not_compute_keeps_the_sorted_path(monkeypatch, kw):
    """A residual gate or a stop action: the switch is on but the fused operator is not used, and the
    results are the sorted path's."""
    require_native_kernel()
    calls = _count_fused(monkeypatch)
    on = _path_run(True, [8, 8, 8, 8], 4, **kw)
    assert calls == []
    assert_same_run(on, _path_run(False, [8, 8, 8, 8], 4, **kw))


def test_the_path_kernel_refuses_blocks_out_of_range_and_bad_shapes():
    require_native_kernel()
    mod = native.load_native_kernel()
    x, w, b = torch.randn(5, 4), torch.randn(3, 4, 2), torch.randn(3, 2)
    with pytest.raises(RuntimeError, match="step 0 sends a row to block 3 of 3"):
        mod.routed_path_forward(x, torch.tensor([[0], [1], [3], [0], [2]]), [w], [b], [1])
    with pytest.raises(RuntimeError, match="int64 \\[rows, steps\\]"):
        mod.routed_path_forward(x, torch.zeros(5, 2, dtype=torch.long), [w], [b], [1])
    with pytest.raises(RuntimeError, match="step 1 takes 4 columns, gets 2"):
        mod.routed_path_forward(x, torch.zeros(5, 2, dtype=torch.long), [w, w], [b, b], [1, 1])


def test_a_training_step_of_the_routed_mlp_sorts_only_for_its_heads():
    """With the switch on, the routed MLP's forward and backward run its three routed steps inside one
    operator (no sort of the path, no group offsets, no row gathers between the steps) and the decision
    finds each table row's maxima without an argsort."""
    require_native_kernel()
    counts = {}
    for on in switched():
        counts[on] = step_op_count(StepSetup(mlp_model("routing", 8, 8), mlp_batch(64, 8), train_cfg()))
    # the path's batched sort and the decision's argsort go; the task heads' grouping stays
    assert counts[True].get("aten::sort", 0) == counts[False].get("aten::sort", 0) - 2 == 1
    assert counts[True].get("aten::searchsorted", 0) == counts[False].get("aten::searchsorted", 0) - 1
    assert counts[True]["aten"] < counts[False]["aten"] - 100


# ---------------------------------------------------------------------- the tabular Q-learning loss as one operator
def _random_trajectory(seed, b=40, d=3, a=5, num_meta=4):
    from nli_routing.routing.trajectory import Trajectory

    g = torch.Generator().manual_seed(seed)
    meta = torch.randint(0, num_meta, (b,), generator=g)
    stop = torch.randint(1, d + 1, (b,), generator=g)  # samples decide 1..d steps (a prefix)
    active = torch.arange(d).unsqueeze(0) < stop.unsqueeze(1)
    actions = torch.randint(0, a, (b, d), generator=g).masked_fill(~active, -1)
    table = torch.randn(num_meta * d, a, generator=g, requires_grad=True)
    state_index = meta.unsqueeze(1) * d + torch.arange(d)
    traj = Trajectory(meta=meta, actions=actions, explored=torch.zeros(b, d, dtype=torch.bool), active=active,
                      values=table.index_select(0, state_index.flatten()).view(b, d, a), state_index=state_index,
                      num_actions=a, num_states=num_meta * d)
    traj.final_reward = torch.randn(b, generator=g)
    traj.step_rewards = torch.randn(b, d, generator=g) * active  # collaboration-like step rewards
    return traj, table


@pytest.mark.parametrize("from_table", [False, True], ids=["values", "table"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("batch_mean", ["state", "state-action"])
@pytest.mark.parametrize("d", [1, 3])
def test_the_native_q_loss_equals_the_learners_loss(gamma, batch_mean, d, from_table):
    """QLearner(target="return"): the native operator's loss and its gradient on the table against the
    learner's torch computation, with stopped samples (inactive steps), step rewards and both batch means;
    reading the trajectory's values, or the table they came from (``Trajectory.table``, as a tabular router's
    path sets it: the gradient is accumulated on the table's rows, several decisions per row)."""
    require_native_kernel()
    from nli_routing.routing.learners.qlearning import QLearner

    learner = QLearner(gamma=gamma, batch_mean=batch_mean)
    got = {}
    for on in switched():
        traj, table = _random_trajectory(3, d=d)
        if from_table:
            traj.table, traj.table_version = table, table._version
        assert native.qlearning_native_runs(traj) is on
        with pytest.MonkeyPatch.context() as mp:
            calls = watch_q_loss(mp)
            loss = learner.loss(traj)
        assert calls == ([from_table] if on else [])
        loss.backward()
        got[on] = (loss.detach(), table.grad)
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[True][1], got[False][1], rtol=1e-5, atol=1e-6)
    assert got[True][1].abs().sum() > 0


def test_the_native_q_loss_reads_the_values_once_the_table_has_changed(monkeypatch):
    """A table updated in place after the decisions (its version moved) is not read: the loss is the one of the
    values the decisions saw, as the torch computation's."""
    require_native_kernel()
    from nli_routing.routing.learners.qlearning import QLearner

    native.disable_native_cpu_kernels()
    traj, table = _random_trajectory(5)
    want = QLearner().loss(traj).detach()
    assert native.enable_native_cpu_kernels()
    traj, table = _random_trajectory(5)
    traj.table, traj.table_version = table, table._version
    with torch.no_grad():
        table.add_(1.0)  # e.g. an optimizer step between the forward pass and the router loss
    assert not traj.table_unchanged()
    calls = watch_q_loss(monkeypatch)
    got = QLearner().loss(traj)
    assert calls == [False]
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_a_tabular_routers_path_loss_reads_its_table_with_the_same_gradient():
    """A routed layer with a tabular router (whole path decided at once): its trajectory carries the table, the
    native loss reads it, and the router's table gradient and loss equal the torch computation's."""
    require_native_kernel()
    from nli_routing.routing.layer import RoutedLayer
    from nli_routing.routing.rewards import final_reward
    from nli_routing.routing.routers import TabularRouter

    got = {}
    for on in switched():
        torch.manual_seed(0)
        router = TabularRouter(num_actions=4, num_meta=3, depth=3, exploration="high", seed=1)
        with torch.no_grad():
            router.table.normal_()
        layer = RoutedLayer([torch.nn.Linear(6, 6) for _ in range(4)], router, depth=3)
        meta = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
        _, traj = layer(torch.randn(10, 6), meta)
        assert traj.table_unchanged()
        traj.final_reward = final_reward("correct", correct=torch.arange(10) % 3 == 0)
        traj.step_rewards = torch.zeros(10, 3)
        loss = router.loss(traj)
        loss.backward()
        got[on] = (loss.detach(), router.table.grad.clone(), traj.actions)
    torch.testing.assert_close(got[True][2], got[False][2])
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[True][1], got[False][1], rtol=1e-5, atol=1e-6)
    assert got[True][1].abs().sum() > 0


def test_the_native_q_loss_is_not_used_where_it_does_not_apply():
    """TD targets, a trajectory without tabular states and float64 values keep the torch computation."""
    require_native_kernel()
    from dataclasses import replace

    from nli_routing.routing.learners.qlearning import QLearner

    assert native.enable_native_cpu_kernels()
    traj, _ = _random_trajectory(0)
    assert native.qlearning_native_runs(traj)
    assert not native.qlearning_native_runs(replace(traj, state_index=None))
    assert not native.qlearning_native_runs(replace(traj, values=traj.values.double()))
    calls = []
    real = native._apply_qlearning_loss
    try:
        native._apply_qlearning_loss = lambda *a: calls.append(1) or real(*a)
        QLearner(target="td").loss(traj)
        assert calls == []
        QLearner().loss(traj)
        assert calls == [1]
    finally:
        native._apply_qlearning_loss = real
    with pytest.raises(RuntimeError, match="state 99 outside the 12 states"):
        native.load_native_kernel().qlearning_return_loss(
            traj.values.detach(), traj.actions, traj.active, traj.state_index.masked_fill(traj.active, 99),
            traj.step_rewards, traj.final_reward, 1.0, False, 12, False)
    with pytest.raises(RuntimeError, match=r"state \d+ outside the 8 states"):  # a table with fewer rows than states
        native.load_native_kernel().qlearning_return_loss(
            torch.zeros(8, 5), traj.actions, traj.active, traj.state_index, traj.step_rewards, traj.final_reward,
            1.0, False, 12, True)


# ---------------------------------------------------------------------- epsilon-greedy over table rows as one operator
@pytest.mark.parametrize("ties", ["lowest", "random"])
@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("a", [1, 2, 5])
def test_the_native_epsilon_greedy_takes_the_same_actions_for_the_same_draws(ties, epsilon, a):
    """Tables with ties (small integers), every tie rule and exploration rate, one action: the native decision
    and the torch one, each from a generator at the same seed, take the same actions and mark the same ones
    explored; the generator is left in the same state."""
    require_native_kernel()
    from nli_routing.routing.learners.base import epsilon_greedy_rows

    g = torch.Generator().manual_seed(0)
    table = torch.randint(0, 3, (12, a), generator=g).float()
    rows = torch.randint(0, 12, (500,), generator=g)
    got = {}
    for on in switched():
        assert native.greedy_rows_native_runs(table, rows) is on
        gen = torch.Generator().manual_seed(7)
        got[on] = (*epsilon_greedy_rows(table, rows, epsilon, gen, ties), gen.get_state())
    assert torch.equal(got[True][0], got[False][0]) and torch.equal(got[True][1], got[False][1])
    assert torch.equal(got[True][2], got[False][2])
    if a > 1 and epsilon == 1.0:
        assert bool(got[True][1].all())


def test_with_the_native_q_loss_every_layer_keeps_its_own_one_operator_loss():
    """CBOW with a routed word projection and a routed classifier, the switch on: each layer's Q-learning loss is
    one native operator, so the layers are not concatenated (that would dispatch more operators than it saves);
    the router loss and the table gradients equal the torch computation's, fused across the layers."""
    require_native_kernel()
    from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
    from nli_routing.routing.objective import fusion_key

    cfg = NLIModelConfig(num_meta=4, route="wp+classifier", wp_width=4, classifier_width=4, classifier_layers=2,
                         exploration="high")
    g = torch.Generator().manual_seed(1)
    batch = {"premise_ids": torch.randint(1, 50, (16, 6), generator=g), "premise_mask": torch.ones(16, 6, dtype=torch.bool),
             "hypothesis_ids": torch.randint(1, 50, (16, 5), generator=g),
             "hypothesis_mask": torch.ones(16, 5, dtype=torch.bool),
             "meta": torch.randint(0, 4, (16,), generator=g)}
    labels = torch.randint(0, 3, (16,), generator=g)
    results = {}
    for on in switched():
        torch.manual_seed(0)  # the same model (and routers' exploration streams) both times
        model = NLIRoutingModel(cfg, torch.randn(50, 16), pad_id=0).train()
        out = model(**batch)
        keys = [fusion_key(layer.router, None, t) for (_, layer), t in zip(model._routed, out.trajectories)]
        assert all(k is None for k in keys) if on else all(k is not None for k in keys)
        model.zero_grad(set_to_none=True)
        loss = model.router_loss(out, labels)
        loss.backward()
        results[on] = (loss.detach(), [r.table.grad.clone() for r in model.routers()], out.logits.detach())
    torch.testing.assert_close(results[True][2], results[False][2], rtol=1e-5, atol=1e-5)  # the same forward
    torch.testing.assert_close(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b)
