"""Operator counts of one training step, by phase and by block-bank implementation (issue 33).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m benchmarks.op_counts

perf.py's FC-only MLP (``--layers`` routed FC layers of ``--dim``, ``--blocks`` blocks, ``--tasks`` tasks) at
``--batch``: the ``aten::`` operators one step of the training loop dispatches, split by the loop's
``step:*`` phases (forward, router loss, backward, optimizers), for the routed model and its unrouted
shared-bottom twin, then for the routed model with each :class:`~nli_routing.routing.bank.LinearBank`
implementation forced; and, for two models with several routed layers, the counts with the routing
objective fused across the layers and per layer (:mod:`nli_routing.routing.objective`). Counts are exact
and independent of the machine's load; ``--time_objective 64 512`` adds a timing of the fused objective
against the per-layer one (run that on quiet cores). Writes ``--out`` (JSON) and prints the tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from nli_routing.experiments.bench import (
    PHASES,
    BenchParser,
    StepSetup,
    check_bounds,
    commit,
    machine,
    mlp_batch,
    mlp_model,
    step_op_count,
    train_cfg,
)
from nli_routing.routing.bank import BANK_IMPLS, LinearBank
from nli_routing.routing.native import (
    enable_native_cpu_kernels,
    load_native_kernel,
    native_kernel_reason,
    native_kernel_state,
)

REPO = Path(__file__).resolve().parents[1]


def phase_counts(setup: StepSetup) -> dict[str, int]:
    """``{phase: aten operators}`` of one step (after one step that creates the optimizer state)."""
    from torch.profiler import ProfilerActivity, profile

    setup.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        setup.step()
    events = prof.events()
    ranges = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.name in PHASES]
    counts: collections.Counter = collections.Counter()
    for e in events:
        if e.name.startswith("aten::"):
            phase = next((n for n, a, b in ranges if a <= e.time_range.start and e.time_range.end <= b), "other")
            counts[phase.removeprefix("step:")] += 1
    return dict(counts)


def top_level_counts(setup: StepSetup) -> dict[str, dict[str, int]]:
    """``{phase: {operator: count}}`` of the operators Python dispatched itself in one step (``aten::`` operators
    not called by another ``aten::`` operator): the op-by-op view of what a phase does."""
    from torch.profiler import ProfilerActivity, profile

    setup.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        setup.step()
    events = prof.events()
    ranges = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.name in PHASES]
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for e in events:
        parent = e.cpu_parent
        if e.name.startswith("aten::") and not (parent is not None and parent.name.startswith("aten::")):
            phase = next((n for n, a, b in ranges if a <= e.time_range.start and e.time_range.end <= b), "other")
            out[phase.removeprefix("step:")][e.name] += 1
    return {phase: dict(sorted(c.items())) for phase, c in out.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = BenchParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--time_objective", nargs="*", type=int, metavar="BATCH",
                    help="also time one training step with the routing objective fused and per layer (interleaved "
                         "rounds, the ratio per round; a timing: run it on quiet cores) at these batch sizes")
    ap.add_argument("--rounds", type=int, default=9, help="with --time_objective: interleaved rounds")
    ap.add_argument("--native_cpu_kernels", action="store_true",
                    help="switch the library's C++ kernel on for the whole process (the fused path, Q-learning loss and "
                         "decision where they apply; a failed build is said and counted without)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "op_counts_issue33.json"))
    args = ap.parse_args(argv)
    for size in args.time_objective or []:
        if size < 1:
            ap.error(f"--time_objective batch sizes must be >= 1, got {size}")
    check_bounds(ap, args, {"rounds": 1, "blocks": 1, "tasks": 1, "dim": 1, "layers": 1, "batch": 1})
    cfg = train_cfg()  # perf.py's
    if args.native_cpu_kernels:
        enable_native_cpu_kernels()  # a failed build warns and the counts are torch's

    def setup(kind: str, impl: str | None = None) -> StepSetup:
        model = mlp_model(kind, args.blocks, args.tasks, dim=args.dim, layers=args.layers)
        if impl is not None:
            for bank in (m for m in model.modules() if isinstance(m, LinearBank)):
                bank.impl = impl
        return StepSetup(model, mlp_batch(args.batch, args.tasks, dim=args.dim), cfg)

    phases = {kind: phase_counts(setup(kind)) for kind in ("routing", "shared-bottom")}
    top = {kind: top_level_counts(setup(kind)) for kind in ("routing", "shared-bottom")}
    impls = {}
    for impl in BANK_IMPLS:  # auto: what the model picks itself (the phases above)
        if impl == "native" and load_native_kernel() is None:  # no compiler here: said, not counted
            print(f"native: not counted ({native_kernel_reason()})")
            continue
        c = step_op_count(setup("routing", impl))
        impls[impl] = {"aten": c["aten"], **{k: c.get(k, 0) for k in ("aten::mm", "aten::bmm", "aten::_grouped_mm",
                                                                       "aten::item")}}
    objective = objective_counts(args.batch)
    timed = {f"{name} batch {size}": t for size in (args.time_objective or [])
             for name, t in objective_times(size, args.rounds).items()}
    result = {"command": "python benchmarks/op_counts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "commit": commit(), "args": vars(args),
              "native_kernel": native_kernel_state(args.native_cpu_kernels), "phases": phases, "top_level": top,
              "impls": impls,
              "objective": objective, "objective_times": timed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    names = ["forward", "router_loss", "backward", "optimizers"]
    print(f"{'model':<16}" + "".join(f"{n:>13}" for n in names) + f"{'total':>9}")
    for kind, c in phases.items():
        print(f"{kind:<16}" + "".join(f"{c.get(n, 0):>13}" for n in names) + f"{sum(c.values()):>9}")
    print("\noperators Python dispatched itself, where the routed step differs from the unrouted (routed / unrouted):")
    for phase in names:
        r, u = top["routing"].get(phase, {}), top["shared-bottom"].get(phase, {})
        diff = [f"{op.removeprefix('aten::')} {r.get(op, 0)}/{u.get(op, 0)}" for op in sorted(set(r) | set(u))
                if r.get(op, 0) != u.get(op, 0)]
        print(f"  {phase:<12} {sum(r.values()):>4} / {sum(u.values()):<4} " + ", ".join(diff))
    print(f"\n{'bank impl':<12}{'aten':>7}{'mm':>6}{'bmm':>6}{'grouped':>9}{'item':>6}")
    for impl, c in impls.items():
        print(f"{impl:<12}{c['aten']:>7}{c['aten::mm']:>6}{c['aten::bmm']:>6}{c['aten::_grouped_mm']:>9}{c['aten::item']:>6}")
    print(f"\n{'model (routed layers)':<36}{'router loss fused':>18}{'per layer':>11}{'step fused':>12}{'per layer':>11}")
    for name, c in objective.items():
        print(f"{name:<36}{c['fused']['router_loss']:>18}{c['per_layer']['router_loss']:>11}"
              f"{sum(c['fused'].values()):>12}{sum(c['per_layer'].values()):>11}")
    for name, t in timed.items():
        print(f"{name:<44} fused {t['ms']['fused']:.3f} ms  per layer {t['ms']['per_layer']:.3f} ms  "
              f"fused / per layer {t['ratio']:.3f} (median of rounds)")
    return result


def objective_models(batch: int) -> dict[str, tuple]:
    """``{name: (make model, batch)}``: the models with several routed layers of :func:`objective_counts`."""
    import torch

    from nli_routing.experiments.bench import cbow_batch, cbow_model
    from nli_routing.models.vision import VisionMTLConfig, VisionMTLModel

    def vision() -> torch.nn.Module:
        import warnings

        from nli_routing.routing.config import RoutingCollapseWarning

        torch.manual_seed(0)
        with warnings.catch_warnings():  # a counted model, never trained: where its routes go is not the point
            warnings.simplefilter("ignore", RoutingCollapseWarning)
            return VisionMTLModel(VisionMTLConfig(num_meta=8, method="routing", image_size=8, conv_layers=3,
                                                  conv_channels=8, routed_convs="1,2,3", fc_hidden=16, fc_layers=2,
                                                  fc_width=4, exploration="low"))

    g = torch.Generator().manual_seed(0)
    images = {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g),
              "labels": torch.randint(0, 2, (batch,), generator=g), "meta": torch.randint(0, 8, (batch,), generator=g)}
    return {"cbow wp+classifier (2)": (lambda: cbow_model("wp+classifier", vocab=2000, dim=64),
                                       cbow_batch(batch, vocab=2000)),
            "mnist-mtl conv 1-3 + fc (4)": (vision, images)}


def _setup(make, batch: dict, fuse: bool) -> StepSetup:
    model = make()
    model.fuse_routing_objective = fuse
    return StepSetup(model, batch, train_cfg())


def objective_times(batch: int, rounds: int) -> dict[str, dict]:
    """Step time with the routing objective fused and per layer, same model and batch, interleaved rounds."""
    from nli_routing.experiments.bench import interleaved_step_times, round_ratio

    out = {}
    for name, (make, data) in objective_models(batch).items():
        times = interleaved_step_times({"fused": _setup(make, data, True), "per_layer": _setup(make, data, False)},
                                       rounds=rounds, steps_per_round=5)
        out[name] = {"ms": times["ms"], "rounds": times["rounds"], "ratio": round_ratio(times, "fused", "per_layer")}
    return out


def objective_counts(batch: int) -> dict[str, dict]:
    """Step operators by phase with the routing objective fused across routed layers and per layer
    (``RoutedModel.fuse_routing_objective``), for models with several routed layers: CBOW with a routed
    word projection and a routed 2-layer classifier (2 layers), and the MNIST-MTL network with routed
    conv layers 1-3 and the routed FC stack (4 layers)."""
    return {name: {"fused" if fuse else "per_layer": phase_counts(_setup(make, data, fuse)) for fuse in (True, False)}
            for name, (make, data) in objective_models(batch).items()}


if __name__ == "__main__":
    main()
