"""Smoke test of the performance suite (benchmarks/perf.py): it runs and writes its report."""

import importlib
import json

import pytest



def load_bench(name: str):
    """``benchmarks/<name>.py`` as a module of the ``benchmarks`` package."""
    return importlib.import_module(f"benchmarks.{name}")


def test_perf_suite_quick_run_writes_its_report(tmp_path):
    perf = load_bench("perf")
    out = tmp_path / "perf"
    result = perf.main(["--quick", "--only", "mlp", "cbow", "scaling", "--output", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert {r["model"] for r in saved["ratios"]} == {"mlp", "mlp-256", "cbow+wp"}
    for r in saved["ratios"]:
        assert r["ratio"] > 0 and r["routed_ms"] > 0 and r["step_peak_mb"]["wp" if r["model"] == "cbow+wp" else "routing"] > 0
    methods = {(r["sweep"], r["method"]) for r in saved["scaling"]}
    assert methods == {("blocks", "routing"), ("blocks", "soft-mixture"), ("tasks", "routing"),
                       ("tasks", "soft-mixture"), ("tasks", "cross-stitch")}
    assert out.with_suffix(".png").exists() and result["verdicts"]


def test_operators_per_routed_step_stay_within_their_budget():
    """The number of aten operators one training step dispatches (a count, not a time: it does not
    drift with the machine's load). Budgets are the counts measured with torch 2.13 plus about 3%:
    a change that adds small operations per step fails here before it shows in the timings."""
    import torch

    if not torch.__version__.startswith("2.13"):
        pytest.skip(f"budgets were counted with torch 2.13 (this is {torch.__version__})")
    from nli_routing.experiments.bench import StepSetup, step_op_count

    perf = load_bench("perf")
    # (model, kind): (measured at the commit that added the budget, budget)
    budgets = {("mlp", "routing"): (1945, 2000), ("mlp", "shared-bottom"): (701, 725),
               # issue 29: the NLI models' capacity balance (the selection bias and its update) adds 95 (1012 -> 1107)
               ("cbow", "wp"): (1107, 1140), ("cbow", "projection"): (580, 597)}
    counts = {}
    for (model, kind), (_, budget) in budgets.items():
        if model == "mlp":
            setup = StepSetup(perf.mlp_model(kind, 8, 8), perf.mlp_batch(64, 8), perf.train_cfg())
        else:
            setup = StepSetup(perf.cbow_model(kind, vocab=500, dim=32), perf.cbow_batch(64, vocab=500), perf.cbow_cfg())
        counts[(model, kind)] = step_op_count(setup)["aten"]
    over = {k: (counts[k], b) for k, (_, b) in budgets.items() if counts[k] > b}
    assert not over, f"operators per step over budget (count, budget): {over}"


def test_bank_crossover_quick_run_writes_its_grid(tmp_path):
    """benchmarks/bank_crossover.py (issue 19: dense or grouped): a smoke run times both
    implementations on every shape of its grid and writes the ratio."""
    bench = load_bench("bank_crossover")
    out = tmp_path / "crossover.json"
    result = bench.main(["--quick", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert [(r["dim"], r["blocks"], r["batch"]) for r in saved["rows"]] == [(16, 2, 32), (16, 4, 32)]
    for r in saved["rows"]:
        assert r["grouped_ms"] > 0 and r["dense_ms"] > 0 and r["dense_over_grouped"] > 0
    wins = [(r["dim"], r["blocks"], r["batch"]) for r in saved["rows"] if r["dense_over_grouped"] < 1]
    assert [tuple(w) for w in saved["dense_wins"]] == wins and result["rows"] == saved["rows"]


def test_bank_crossover_compares_every_kernel_it_is_given(tmp_path):
    """Issue 33: tiles and gathered weights beside grouped_mm, each shape's fastest named."""
    bench = load_bench("bank_crossover")
    out = tmp_path / "kernels.json"
    result = bench.main(["--quick", "--impls", "tiled:4", "gather", "--output", str(out)])
    for r in result["rows"]:
        assert set(r["ms"]) == set(r["over_grouped"]) == {"grouped_mm", "tiled:4", "gather"}
        assert r["over_grouped"]["grouped_mm"] == 1.0 and r["best"] == min(r["over_grouped"], key=r["over_grouped"].get)
    assert "dense_wins" not in result and sum(len(w) for w in result["wins"].values()) == len(result["rows"])


@pytest.mark.parametrize("spec", ["tiled:0", "tiled:x", "gather:4", "sparse", "compiled:8"])
def test_bank_crossover_refuses_unknown_kernels(spec, capsys):
    bench = load_bench("bank_crossover")
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--impls", spec])
    assert e.value.code == 2 and f"--impls: unknown kernel {spec!r}" in capsys.readouterr().err


def test_bank_crossover_sets_every_bank_of_the_routed_mlp():
    from nli_routing.routing.bank import LinearBank

    bench = load_bench("bank_crossover")
    model = bench.routed_mlp("dense", 16, 4)
    banks = {n: m for n, m in model.named_modules() if isinstance(m, LinearBank)}
    routed = [m for n, m in banks.items() if n.startswith("routed_fc.")]
    assert len(routed) == 3 and all(b.uses_dense() and b.num_blocks == 4 for b in routed)
    assert not banks["heads.heads"].uses_dense()  # the per-task heads are not what is compared


def test_bank_crossover_compiled_kernel_matches_the_eager_bank_values_and_gradients():
    """Issue 33: the ``compiled`` kernel (torch.compile of the grouped bank's forward) computes what the
    eager bank computes, forward and backward, stopped rows included."""
    import torch

    from nli_routing.routing.bank import LinearBank

    bench = load_bench("bank_crossover")
    eager, compiled = (bench.routed_mlp(impl, 16, 4) for impl in ("grouped_mm", "compiled"))
    pairs = [(a, b) for a, b in zip(eager.modules(), compiled.modules()) if isinstance(a, LinearBank)]
    a, b = pairs[0]
    assert b.impl == "grouped_mm" and hasattr(b.sorted_forward, "_torchdynamo_orig_callable")
    assert not hasattr(a.sorted_forward, "_torchdynamo_orig_callable")
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    groups = torch.sort(torch.randint(0, 5, (40,))).values  # 4 = stopped: the row passes unchanged
    outs, grads = [], []
    for bank in (a, b):
        xi = x.clone().requires_grad_(True)
        y = bank.sorted_forward(xi, groups)
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append((xi.grad, bank.weight.grad.clone()))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag", [["--blocks", "0"], ["--dims", "-4"], ["--rounds", "0"]])
def test_bank_crossover_rejects_a_bad_grid_in_one_line(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_bench("bank_crossover").main(["--quick", *flag, "--output", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag[0]} must be >= 1" in err[0] and not (tmp_path / "x.json").exists()


def test_op_counts_split_a_step_by_phase_and_by_bank_implementation(tmp_path):
    """benchmarks/op_counts.py (issue 33): the phases add up to the step's count, every implementation counted."""
    bench = load_bench("op_counts")
    out = tmp_path / "ops.json"
    res = bench.main(["--blocks", "4", "--tasks", "4", "--dim", "16", "--layers", "2", "--batch", "32", "--out", str(out)])
    assert json.loads(out.read_text())["impls"] == res["impls"]
    assert sum(res["phases"]["routing"].values()) == res["impls"]["auto"]["aten"]
    assert res["phases"]["routing"]["router_loss"] > res["phases"]["shared-bottom"].get("router_loss", 0)
    from nli_routing.routing.native import load_native_kernel

    expected = {"auto", "grouped_mm", "loop", "dense", "tiled", "gather"}  # and native where it builds
    assert set(res["impls"]) == (expected | {"native"} if load_native_kernel() is not None else expected)
    for name, counts in res["objective"].items():  # several routed layers: the fused objective dispatches fewer
        assert counts["fused"]["router_loss"] < counts["per_layer"]["router_loss"], name
        assert counts["fused"]["forward"] == counts["per_layer"]["forward"], name


@pytest.mark.parametrize("flags,message", [(["--time_objective", "0"], "--time_objective batch sizes must be >= 1, got 0"),
                                           (["--time_objective", "8", "--rounds", "0"], "--rounds must be >= 1, got 0")])
def test_op_counts_rejects_bad_timing_flags_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_bench("op_counts").main([*flags, "--out", str(tmp_path / "x.json")])
    assert message in capsys.readouterr().err.strip().splitlines()[-1] and not (tmp_path / "x.json").exists()


def test_op_counts_times_the_fused_objective_against_per_layer(tmp_path):
    bench = load_bench("op_counts")
    res = bench.objective_times(8, rounds=1)
    assert set(res) == set(bench.objective_models(8))
    for t in res.values():
        assert set(t["ms"]) == {"fused", "per_layer"} and t["ratio"] > 0


@pytest.mark.parametrize("flags,message", [(["--runs", "0"], "--runs must be >= 1, got 0"),
                                           (["--batches", "512", "-4"], "--batches must be >= 1, got [512, -4]")])
def test_keep_cpu_memory_bench_rejects_bad_values_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_bench("keep_cpu_memory").main([*flags, "--out", str(tmp_path / "x.jsonl")])
    assert message in capsys.readouterr().err.strip().splitlines()[-1] and not (tmp_path / "x.jsonl").exists()


def test_keep_cpu_memory_bench_pairs_runs_by_index():
    bench = load_bench("keep_cpu_memory")
    rows = [{"kind": "routing", "blocks": 128, "batch": 512, "mode": m, "ms": ms, "faults": f}
            for m, ms, f in (("keep", 2.0, 1.0), ("default", 4.0, 700.0), ("keep", 3.0, 0.0), ("default", 3.0, 600.0))]
    (line,) = bench.summarise(rows)
    assert "keep/default median 0.750 (0.500-1.000)" in line and "faults per step keep 0.5 default 650.0" in line


@pytest.mark.parametrize("flag,value", [("--rounds", "0"), ("--blocks", "0"), ("--batch", "-1"), ("--warmup", "-1")])
def test_minilm_block_cost_rejects_a_bad_flag_in_one_line(flag, value, tmp_path, capsys):
    """benchmarks/minilm_block_cost.py refuses before it loads MiniLM and writes nothing."""
    with pytest.raises(SystemExit):
        load_bench("minilm_block_cost").main([flag, value, "--out", str(tmp_path / "x.json")])
    bound = 0 if flag == "--warmup" else 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} must be >= {bound}, got {value}" in err[0], err
    assert not (tmp_path / "x.json").exists()


def test_blocks_floor_times_the_step_and_its_optimizer_phase(tmp_path):
    """benchmarks/blocks_floor.py: the floor is the 8-block step plus the optimizer phase's growth, round by round."""
    out = tmp_path / "floor.json"
    res = load_bench("blocks_floor").main(["--blocks", "16", "--batches", "32", "--rounds", "2", "--steps", "1",
                                           "--warmup", "1", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == res["rows"] and res["native_cpu_kernels"] == "off"
    row = res["rows"][0]
    t = row["rounds_ms"]
    want = [(s + m - o) / s for s, o, m in zip(t["8"]["step"], t["8"]["optimizer"], t["16"]["optimizer"])]
    assert row["floor_range"] == [min(want), max(want)]
    assert all(v > 0 for d in t.values() for series in d.values() for v in series)
    assert row["params_with_grad"]["16"] > row["params_with_grad"]["8"]  # the blocks that took rows got gradients
    for n, used in row["groups_used"].items():
        assert all(1 <= k <= int(n) for k in used["non_empty"]) and all(1 <= m <= 32 for m in used["largest"])


@pytest.mark.parametrize("flag,value,message", [("--rounds", "0", "--rounds must be >= 1, got 0"),
                                                ("--blocks", "0", "--blocks must be >= 1, got 0"),
                                                ("--warmup", "-1", "--warmup must be >= 0, got -1"),
                                                ("--batches", "0", "--batches must be >= 1, got [0]")])
def test_blocks_floor_rejects_a_bad_flag_in_one_line(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_bench("blocks_floor").main([flag, value, "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("bench", ["blocks_floor", "minilm_block_cost"])
def test_new_benchmarks_refuse_an_output_they_cannot_write_before_timing(bench, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out, message in ((tmp_path, "is a folder; give the JSON file's name"),
                         (blocker / "x.json", "cannot make its folder")):
        with pytest.raises(SystemExit):
            load_bench(bench).main(["--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--out {out}: {message}" in err[0], err


def test_op_counts_with_the_native_kernel_count_fewer_operators(tmp_path):
    """``--native_cpu_kernels``: the routed step's count falls (the path, the Q-learning loss and the decision are
    one operator each) and the run records the kernel's state; the switch is process-wide, so it is put back."""
    from nli_routing.routing import native

    from .helpers import require_native_kernel

    require_native_kernel()
    bench = load_bench("op_counts")
    flags = ["--blocks", "4", "--tasks", "4", "--dim", "16", "--layers", "2", "--batch", "32"]
    try:
        off = bench.main([*flags, "--out", str(tmp_path / "off.json")])
        on = bench.main([*flags, "--native_cpu_kernels", "--out", str(tmp_path / "on.json")])
    finally:
        native.disable_native_cpu_kernels()
    assert off["native_kernel"] == "off" and on["native_kernel"] == "on"
    routed = {name: sum(r["phases"]["routing"].values()) for name, r in (("off", off), ("on", on))}
    assert routed["on"] < routed["off"] - 50
    assert on["phases"]["routing"]["router_loss"] < off["phases"]["routing"]["router_loss"]
    # the unrouted twin's per-task heads are a bank too (the kernel's grouped matmul): never more operators
    assert sum(on["phases"]["shared-bottom"].values()) <= sum(off["phases"]["shared-bottom"].values())


def test_fused_path_bench_times_both_paths_and_the_phases(tmp_path):
    """benchmarks/fused_path.py (issue 33): a tiny run writes both parts; the kernel's state is recorded."""
    from nli_routing.experiments import bench as bench_mod
    from nli_routing.routing import native

    out = tmp_path / "fp.json"
    try:
        res = load_bench("fused_path").main(["--batches", "16", "--blocks", "4", "--warmup", "0", "--rounds", "2",
                                             "--steps", "1", "--out", str(out)])
    finally:
        native.disable_native_cpu_kernels()
        bench_mod.NATIVE_CPU_KERNELS["value"] = False
    assert json.loads(out.read_text())["ab"] == res["ab"]
    assert [(r["batch"], r["blocks"]) for r in res["ab"]] == [(16, 4)] and res["ab"][0]["fused_over_sorted"] > 0
    row = res["phases"][0]
    assert set(row["ms"]) == {"routing", "shared-bottom"} and row["ratio"] > 0
    assert abs(sum(row["extra_ms"][p] for p in ("forward", "router_loss", "backward", "optimizer"))
               - (sum(row["ms"]["routing"][p] for p in ("forward", "router_loss", "backward", "optimizer"))
                  - sum(row["ms"]["shared-bottom"][p] for p in ("forward", "router_loss", "backward", "optimizer")))) < 1e-9
    assert res["native_kernel"].startswith(("on", "asked for"))
    (blocks,) = res["blocks"]  # one block count: the fewest and the most are the same model size
    assert blocks["blocks"] == [4, 4] and blocks["ratio"] > 0 and set(blocks["ms"]) == {"4"}


def test_fused_path_bench_blocks_part_compares_the_fewest_and_the_most_blocks(tmp_path):
    """The blocks part: the routed step phase by phase with 2 and 6 blocks a layer, the extra time of each phase
    and the parameter bytes of both models (the one with more blocks has more)."""
    from nli_routing.experiments import bench as bench_mod
    from nli_routing.routing import native

    try:
        res = load_bench("fused_path").main(["--only", "blocks", "--batches", "16", "--blocks", "6", "2", "--warmup", "0",
                                             "--rounds", "2", "--steps", "1", "--out", str(tmp_path / "b.json")])
    finally:
        native.disable_native_cpu_kernels()
        bench_mod.NATIVE_CPU_KERNELS["value"] = False
    assert set(res) >= {"blocks"} and "ab" not in res and "phases" not in res
    (row,) = res["blocks"]
    assert row["blocks"] == [2, 6] and set(row["ms"]) == {"2", "6"}
    assert row["parameter_bytes"]["6"] > row["parameter_bytes"]["2"]
    for p in ("forward", "router_loss", "backward", "optimizer", "step"):
        assert abs(row["extra_ms"][p] - (row["ms"]["6"][p] - row["ms"]["2"][p])) < 1e-9


@pytest.mark.parametrize("flags,message", [(["--rounds", "0"], "--rounds must be >= 1, got 0"),
                                           (["--only", "nothing"], "argument --only: invalid choice")])
def test_fused_path_bench_rejects_bad_flags_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_bench("fused_path").main([*flags, "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "x.json").exists()
