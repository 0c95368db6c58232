"""LinearBank (stacked FC blocks in one grouped matmul) and the engine's speed paths: exactness
against per-sample references, no host synchronisation in the routed hot path, torch.compile."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nli_routing.models.blocks import routed_fc_stack
from nli_routing.routing import (
    LinearBank,
    RoutedLayer,
    SoftMixtureLayer,
    TabularRouter,
    assign_rewards,
)
from nli_routing.routing.decision import RoutingPass
from nli_routing.routing.layer import grouped_apply

from .helpers import assert_same_run, require_native_kernel


def per_row(bank: LinearBank, x: torch.Tensor, groups: torch.Tensor, scale=None) -> torch.Tensor:
    rows = []
    for i in range(x.shape[0]):
        g = int(groups[i])
        if g >= len(bank):
            rows.append(x[i])
            continue
        y = bank[g](x[i : i + 1])[0]
        rows.append(y if scale is None else y * scale[i])
    return torch.stack(rows)


@pytest.mark.parametrize("impl", ["grouped_mm", "loop", "dense", "tiled", "gather", "native"])
@pytest.mark.parametrize("activation,residual", [("relu", False), ("tanh", True), ("gelu", False), ("identity", True)])
@pytest.mark.parametrize("stopped", [False, True])
def test_bank_matches_per_row_blocks_values_and_gradients(impl, activation, residual, stopped):
    if impl == "native":
        require_native_kernel()
    torch.manual_seed(0)
    bank = LinearBank(5, 8, 8, activation, residual=residual, impl=impl)
    if residual:
        with torch.no_grad():
            bank.gate.normal_()  # the ReZero gates start at 0: make the blocks matter
    x = torch.randn(41, 8, requires_grad=True)
    groups = torch.randint(0, 5 + int(stopped), (41,))
    scale = torch.rand(41, requires_grad=True)
    up = torch.randn(41, 8)
    (grouped_apply(x, groups, bank, scale) * up).sum().backward()
    got = [t.grad.clone() for t in (x, scale, bank.weight, bank.bias)]
    for t in (x, scale, bank.weight, bank.bias):
        t.grad = None
    (per_row(bank, x, groups, scale) * up).sum().backward()
    ref = [x.grad, scale.grad, bank.weight.grad, bank.bias.grad]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_stopped_rows_get_exactly_the_identity_gradient():
    """grouped_mm leaves rows past its last offset uninitialised (values and gradients); stopped rows
    must still pass through untouched with an exact identity gradient."""
    torch.manual_seed(0)
    bank = LinearBank(3, 4, 4, "tanh", impl="grouped_mm")
    x = torch.randn(10, 4, requires_grad=True)
    groups = torch.tensor([0, 3, 1, 3, 2, 3, 0, 3, 3, 1])
    for _ in range(3):  # fresh garbage memory each time
        y = grouped_apply(x, groups, bank)
        up = torch.randn_like(y)
        x.grad = None
        (y * up).sum().backward()
        stopped = groups == 3
        assert torch.equal(y[stopped], x[stopped].detach())
        assert torch.equal(x.grad[stopped], up[stopped])
        assert torch.isfinite(bank.weight.grad).all()


@pytest.mark.parametrize("out_dim,in_dim", [(3, 8), (10, 5), (2, 6)])
def test_unaligned_dims_are_padded_for_grouped_mm(out_dim, in_dim):
    """grouped_mm needs 16-byte strides: 2-, 3- or 10-class heads are padded and cut back."""
    torch.manual_seed(1)
    bank = LinearBank(4, in_dim, out_dim, "identity", impl="grouped_mm")
    x = torch.randn(17, in_dim, requires_grad=True)
    groups = torch.randint(0, 4, (17,))
    y = grouped_apply(x, groups, bank, identity=False)
    assert y.shape == (17, out_dim)
    y.sum().backward()
    torch.testing.assert_close(y, per_row(bank, x.detach(), groups), rtol=1e-5, atol=1e-5)
    assert bank.weight.grad.shape == (4, in_dim, out_dim)


def test_bank_initialises_like_separate_linears():
    """Same random stream as G nn.Linear blocks (runs seeded before the bank keep their init)."""
    torch.manual_seed(3)
    bank = LinearBank(3, 6, 4)
    torch.manual_seed(3)
    lins = [torch.nn.Linear(6, 4) for _ in range(3)]
    for g, lin in enumerate(lins):
        assert torch.equal(bank.weight[g], lin.weight.t())
        assert torch.equal(bank.bias[g], lin.bias)


def test_soft_mixture_over_a_bank_equals_the_weighted_sum_of_blocks():
    torch.manual_seed(0)
    layer = SoftMixtureLayer([LinearBank(3, 6, 6, "tanh")], depth=1, num_meta=2, recursive=False, init_std=1.0)
    x = torch.randn(9, 6)
    meta = torch.randint(0, 2, (9,))
    y, _ = layer(x, meta)
    w = torch.softmax(layer.router.gate[meta, 0], -1)
    bank = layer.blocks[0]
    ref = sum(w[:, k : k + 1] * bank[k](x) for k in range(3))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


class HostReads(TorchDispatchMode):
    """Records operators that read tensor data on the host (``.item()``, ``.tolist()``, ``bool()``) or
    whose output size depends on the data (``nonzero``, ``unique``, boolean masks)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "unique", "masked_select", "bincount")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if any(s in name for s in self.SYNCING):
            self.seen.append(name)
        if name.startswith("index") and any(  # boolean-mask indexing: a data-dependent size
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a
        ):
            self.seen.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        # .tolist() reads the data without going through the dispatcher: watch it directly
        self._tolist = torch.Tensor.tolist
        seen = self.seen

        def tolist(t, *a, **k):
            seen.append("tolist")
            return self._tolist(t, *a, **k)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def _routed_stack_run(impl, width, num_meta, n, allow_stop, token_level=False, tile=0):
    """Output, actions, input gradient and parameter gradients of a routed residual stack (3 steps of
    ``width`` 8x8 blocks, exploring tabular routers) over banks of ``impl``, from fixed seeds."""
    torch.manual_seed(0)
    layer = routed_fc_stack([8, 8, 8, 8], width, num_meta, recursive=allow_stop, allow_stop=allow_stop,
                            exploration="high", impl=impl, residual=True, gate_init=0.5)
    for bank in layer.modules():
        if isinstance(bank, LinearBank):
            bank.tile = tile or bank.tile
    meta = torch.randint(0, num_meta, (n,))
    torch.manual_seed(1)
    x = torch.randn(n, 6, 8, requires_grad=True) if token_level else torch.randn(n, 8, requires_grad=True)
    y, traj = layer(x, meta)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), traj.actions, x.grad, [p.grad for p in layer.parameters() if p.grad is not None]


@pytest.mark.parametrize("allow_stop", [False, True])
@pytest.mark.parametrize("token_level", [False, True])
def test_dense_banks_route_a_stack_exactly_like_grouped_ones(allow_stop, token_level):
    """``impl="dense"`` (every block on every row, no sort) gives a routed stack the values and
    gradients of the grouped path, decided ahead (tabular) or step by step, token rows included."""
    a = _routed_stack_run("grouped_mm", 5, 4, 37, allow_stop, token_level)
    b = _routed_stack_run("dense", 5, 4, 37, allow_stop, token_level)
    assert_same_run(a, b)


def test_dense_path_makes_rows_in_input_order():
    """``forward_rows`` over dense banks builds every row once in input order (no permutation)."""
    torch.manual_seed(0)
    layer = routed_fc_stack([8, 8], 4, 3, exploration="none", impl="dense")
    meta, seg = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1, 2, 2, 2])
    x = torch.randn(6, 8)
    asked = []
    y, perm, _ = layer.forward_rows(lambda idx: asked.append(idx) or (x if idx is None else x[idx]), meta, seg)
    assert perm is None and asked == [None]
    torch.testing.assert_close(y, layer(x, meta, segments=seg)[0])


@pytest.mark.parametrize("impl", ["grouped_mm", "dense"])
@pytest.mark.parametrize("allow_stop", [False, True])
def test_routed_hot_path_has_no_host_synchronisation(allow_stop, impl):
    """Decisions, grouped execution, rewards, the router loss and the backward of a bank-routed
    stack read nothing back to the host (on an accelerator nothing waits for the device)."""
    torch.manual_seed(0)
    dims = [16, 16, 16, 16]
    layer = routed_fc_stack(dims, 8, 4, recursive=allow_stop, allow_stop=allow_stop, exploration="high", impl=impl)
    meta = torch.randint(0, 4, (64,))
    x = torch.randn(64, 16, requires_grad=True)
    path = layer.router.decide_path(meta, layer.depth)  # meta checked by forward(); here the path alone
    rp = RoutingPass(layer.router, meta)  # checks the meta labels (a host read) before the hot path
    with HostReads() as mode:
        path = layer.router.decide_path(meta, layer.depth)
        y, traj = layer.forward_path(x, rp, None, path)
        assign_rewards(traj, torch.randn(64))
        (y.sum() + layer.router.loss(traj)).backward()
    assert mode.seen == [], f"host reads in the routed hot path: {sorted(set(mode.seen))}"
    assert layer.router.table.grad is not None and x.grad is not None


def test_path_decided_ahead_equals_the_step_by_step_semantics():
    """A tabular path decided at once is what step-by-step decisions would give: each step's action
    comes from that step's table row, and greedy decisions follow the tables exactly."""
    torch.manual_seed(0)
    router = TabularRouter(3, 4, 5, exploration="none")
    with torch.no_grad():
        router.table.normal_()
    meta = torch.tensor([0, 1, 2, 2, 1])
    path = router.decide_path(meta, 4)
    assert torch.equal(path.actions, router.table.argmax(-1)[meta])
    assert torch.equal(path.state_index, meta.unsqueeze(1) * 4 + torch.arange(4))
    for t in range(4):
        step = router.decide(None, meta, t)
        assert torch.equal(step.actions, path.actions[:, t])
        torch.testing.assert_close(step.values, path.values[:, t])


def test_epsilon_greedy_breaks_ties_uniformly_and_explores_at_rate():
    from nli_routing.routing.learners.base import epsilon_greedy

    g = torch.Generator().manual_seed(0)
    values = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]]).repeat(30000, 1)
    actions, explored = epsilon_greedy(values, 0.0, g, ties="random")
    counts = torch.bincount(actions, minlength=5).float() / 30000
    torch.testing.assert_close(counts, torch.tensor([0.0, 1 / 3, 1 / 3, 0.0, 1 / 3]), atol=0.015, rtol=0)
    assert not explored.any()
    lowest, _ = epsilon_greedy(values, 0.0, g)  # the default: the lowest tied index, for every sample
    assert torch.equal(lowest, torch.ones(30000, dtype=torch.long))
    actions, explored = epsilon_greedy(values, 0.2, g, ties="random")
    assert abs(explored.float().mean().item() - 0.2) < 0.015
    # eq. 3.3: an exploratory draw is one of the 4 actions other than the (tie-broken) greedy one,
    # so the tied maxima appear there with probability 2/3 * 1/4, the others with 1/4
    others = torch.bincount(actions[explored], minlength=5).float() / explored.sum()
    exp = torch.tensor([1 / 4, 1 / 6, 1 / 6, 1 / 4, 1 / 6])
    torch.testing.assert_close(others, exp, atol=0.03, rtol=0)
    strict = torch.randn(500, 7)
    assert torch.equal(epsilon_greedy(strict, 0.0, g)[0], strict.argmax(-1))


def test_routed_stack_runs_under_torch_compile_and_matches_eager():
    """The compile path: the grouped matmul is an opaque custom op with its own autograd, group sizes
    have a static shape and meta checks become asynchronous assertions, so torch.compile traces the
    routed stack (aot_eager here: the tracing, without code generation)."""
    torch.manual_seed(0)
    layer = routed_fc_stack([12, 12, 12], 4, 3, exploration="none")
    with torch.no_grad():
        layer.router.table.normal_()
    x = torch.randn(20, 12)
    meta = torch.randint(0, 3, (20,))
    y_ref, traj_ref = layer(x, meta)
    y_ref.sum().backward()
    g_ref = layer.blocks[0].weight.grad.clone()
    layer.zero_grad()
    compiled = torch.compile(layer, backend="aot_eager")
    y, traj = compiled(x, meta)
    y.sum().backward()
    assert torch.equal(traj.actions, traj_ref.actions)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.blocks[0].weight.grad, g_ref, rtol=1e-5, atol=1e-6)


def test_layer_accepts_one_bank_per_step_and_checks_widths():
    router = TabularRouter(2, 2, 3)
    layer = RoutedLayer([LinearBank(3, 4, 5), LinearBank(3, 5, 6)], router, depth=2, recursive=False)
    y, _ = layer(torch.randn(7, 4), torch.randint(0, 2, (7,)))
    assert y.shape == (7, 6)
    with pytest.raises(ValueError, match="same width"):
        RoutedLayer([LinearBank(3, 4, 4), LinearBank(2, 4, 4)], router, depth=2, recursive=False)


@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_table_row_decisions_equal_the_generic_epsilon_greedy(epsilon):
    """epsilon_greedy_rows (per table row) draws the same numbers and picks the same actions as
    epsilon_greedy on the gathered values, ties included."""
    from nli_routing.routing.learners.base import epsilon_greedy, epsilon_greedy_rows

    table = torch.tensor([[0.0, 1.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0], [0.5, -3.0, 0.1, 0.4]])
    rows = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(1))
    a, ea = epsilon_greedy_rows(table, rows, epsilon, torch.Generator().manual_seed(7))
    b, eb = epsilon_greedy(table[rows], epsilon, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(ea, eb)


def test_float64_banks_fall_back_to_the_loop_kernel():
    """grouped_mm has no float64 kernel: ``impl="auto"`` picks the per-block loop and stays exact."""
    torch.manual_seed(0)
    bank = LinearBank(3, 4, 4, "tanh").double()
    x = torch.randn(9, 4, dtype=torch.float64)
    groups = torch.randint(0, 3, (9,))
    assert bank.resolve_impl(x) in ("loop", "tiled")
    torch.testing.assert_close(grouped_apply(x, groups, bank, identity=False), per_row(bank, x, groups))


@pytest.mark.parametrize("impl,tile", [("tiled", 1), ("tiled", 3), ("tiled", 32), ("gather", 0), ("native", 0)])
@pytest.mark.parametrize("allow_stop", [False, True])
def test_tiled_and_gathered_banks_route_a_stack_exactly_like_grouped_ones(impl, tile, allow_stop):
    """Issue 33's kernels for many small groups: a routed stack decided ahead (tabular, the sorted
    path) gives the values, actions and gradients of grouped_mm, stopped rows included; among 64
    blocks most groups hold one or two rows and many are empty; tiles of 1 (one weight per row), 3
    (groups split over several tiles) and 32 (one tile per group); the native C++ kernel."""
    if impl == "native":
        require_native_kernel()
    a = _routed_stack_run("grouped_mm", 64, 6, 45, allow_stop)
    b = _routed_stack_run(impl, 64, 6, 45, allow_stop, tile=tile)
    assert_same_run(a, b)


def test_tiled_slots_pad_every_group_to_whole_tiles_in_order():
    from nli_routing.routing.bank import tiled_slots

    block = torch.tensor([0, 0, 2, 2, 2, 3])
    slot, tile_block = tiled_slots(block, 5, 2)  # group 0: one tile, group 2: two, group 3: one
    assert tile_block.tolist() == [0, 2, 2, 3] and slot.tolist() == [0, 1, 2, 3, 4, 6]
    slot, tile_block = tiled_slots(block, 5, 4)
    assert tile_block.tolist() == [0, 2, 3] and slot.tolist() == [0, 1, 4, 5, 6, 8]
    slot, tile_block = tiled_slots(torch.zeros(0, dtype=torch.long), 3, 4)
    assert slot.numel() == 0 and tile_block.numel() == 0


def test_auto_tiles_many_narrow_small_groups_on_the_cpu_and_groups_the_rest(monkeypatch):
    """``impl="auto"`` follows the measured crossover region: tiled for many narrow blocks with few
    rows each, grouped_mm elsewhere."""
    from nli_routing.routing import bank as bank_mod

    monkeypatch.setattr(bank_mod, "AUTO_TILED", {"max_in_dim": 16, "min_blocks": 8, "max_rows_per_group": 4})
    narrow, wide, few = LinearBank(8, 16, 16), LinearBank(8, 32, 32), LinearBank(4, 16, 16)
    assert narrow.resolve_impl(torch.randn(32, 16)) == "tiled"
    assert narrow.resolve_impl(torch.randn(33, 16)) == "grouped_mm"  # more than 4 rows per block
    assert wide.resolve_impl(torch.randn(8, 32)) == "grouped_mm"  # too wide
    assert few.resolve_impl(torch.randn(8, 16)) == "grouped_mm"  # too few blocks
    assert LinearBank(8, 16, 16, impl="tiled").resolve_impl(torch.randn(999, 16)) == "tiled"  # asked for


def test_residual_gates_start_at_gate_init():
    from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel

    assert torch.equal(LinearBank(3, 4, 4, residual=True).gate, torch.zeros(3))  # identity blocks by default
    bank = LinearBank(3, 4, 4, residual=True, gate_init=0.5)
    torch.testing.assert_close(bank.gate.detach(), torch.full((3,), 0.5))
    x = torch.randn(5, 4)
    y = bank.all_blocks(x)  # [N, G, out]: now the blocks differ from the identity and from each other
    assert not torch.allclose(y[:, 0], x) and not torch.allclose(y[:, 0], y[:, 1])
    model = NLIRoutingModel(NLIModelConfig(num_meta=2, wp_gate_init=0.25, classifier_hidden=8), torch.randn(20, 4), 0)
    torch.testing.assert_close(model.routed_layers[0].blocks.gate.detach(), torch.full((4,), 0.25))
