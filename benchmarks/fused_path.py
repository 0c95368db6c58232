"""The native kernel's fused routed path against the sorted path, and where a routed step's time goes (issue 33).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m benchmarks.fused_path \
        --out benchmarks/results/issue33_s5/fused_path.json

Three measurements on perf.py's routed MLP (3 routed layers of Linear(64, 64) blocks, 8 tasks, tabular
Q-learning, routes spread as after training), both with the native kernel switched on (``--native_cpu_kernels``
of the loop; the kernel is built on first use):

* ``ab``: the whole training step with the routed layer's path as one native operator (``fused``) against the
  same kernel run step by step through the sorted path (``sorted``: one batched sort, row gathers between the
  steps, one grouped matmul per step), for 8 and ``--blocks`` blocks at each batch size, two models per
  configuration timed in interleaved rounds; ``fused / sorted`` is the median of the per-round ratios.
* ``phases``: the routed step and its unrouted shared-bottom twin timed phase by phase (forward with the task
  loss, router loss, backward, optimizer phase: the loop's own functions called in turn), median over
  interleaved rounds, and the extra milliseconds of each phase: where what remains of routed / unrouted is paid.
* ``blocks``: the routed step phase by phase with the fewest and the most of ``--blocks`` blocks a layer, and
  each model's parameter bytes: where the many-block step's extra time is paid.

``--keep_cpu_memory`` runs it with freed CPU memory kept (process-wide). Writes ``--out`` (JSON) and prints
the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from nli_routing.experiments import bench
from nli_routing.experiments.bench import (
    BenchParser,
    StepSetup,
    check_bounds,
    check_output,
    commit,
    machine,
    mlp_batch,
    mlp_model,
    spread_routes,
    train_cfg,
)
from nli_routing.routing.bank import LinearBank
from nli_routing.routing.native import native_kernel_state

HERE = Path(__file__).resolve().parent
PHASE_NAMES = ("forward", "router_loss", "backward", "optimizer")


def _model(method: str, blocks: int) -> torch.nn.Module:
    model = mlp_model(method, blocks, 8)
    if method == "routing":
        spread_routes(model)
    return model


def _sorted_only(model: torch.nn.Module) -> None:
    """Keep this model's banks off the fused path (the native kernel still runs every step's grouped matmul)."""
    for bank in (m for m in model.modules() if isinstance(m, LinearBank)):
        bank.runs_native_path = lambda x: False  # instance attribute: this model only


def ab_rows(batches: list[int], blocks: list[int], warmup: int, rounds: int, steps: int, log) -> list[dict]:
    torch.set_flush_denormal(True)  # as the training loop does
    rows = []
    for b in batches:
        for nb in blocks:
            setups = {v: StepSetup(_model("routing", nb), mlp_batch(b, 8), train_cfg()) for v in ("fused", "sorted")}
            _sorted_only(setups["sorted"].model)
            for s in setups.values():
                for _ in range(warmup):
                    s.step()
            ms = {v: [] for v in setups}
            names = list(setups)
            for r in range(rounds):
                for v in names[r % 2:] + names[:r % 2]:
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        setups[v].step()
                    ms[v].append((time.perf_counter() - t0) * 1e3 / steps)
            ratios = [f / s for f, s in zip(ms["fused"], ms["sorted"])]
            row = {"batch": b, "blocks": nb, "ms": {v: statistics.median(x) for v, x in ms.items()},
                   "fused_over_sorted": statistics.median(ratios), "range": [min(ratios), max(ratios)]}
            log(f"batch {b:5d} blocks {nb:4d}: fused {row['ms']['fused']:6.2f} ms  sorted {row['ms']['sorted']:6.2f} ms  "
                f"fused / sorted {row['fused_over_sorted']:.3f} ({row['range'][0]:.2f}-{row['range'][1]:.2f})")
            rows.append(row)
    return rows


def _phased(setup: StepSetup) -> list[float]:
    """One training step through the loop's own functions, timed phase by phase (ms)."""
    from nli_routing.training.loop import optimizer_phase, task_loss

    model, batch, cfg = setup.model, setup.batch, setup.cfg
    t0 = time.perf_counter()
    out = model(**batch)
    loss = task_loss(out.per_sample_loss, out.trajectories, cfg.explore_kappa)
    t1 = time.perf_counter()
    router_loss = model.router_loss(out, batch["labels"])
    t2 = time.perf_counter()
    for opt in (setup.block_opt, setup.router_opt):
        if opt is not None:
            opt.zero_grad(set_to_none=True)
    (loss + router_loss).backward()
    t3 = time.perf_counter()
    optimizer_phase(model, loss, router_loss, setup.block_opt, setup.router_opt, cfg, step=setup.steps)
    setup.steps += 1
    t4 = time.perf_counter()
    return [(t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3]


def _phase_table(setups: dict[str, StepSetup], warmup: int, rounds: int, steps: int) -> dict[str, list[list[float]]]:
    """Per model, every timed step's phase times (ms), the models in interleaved rounds (their order rotating)."""
    for s in setups.values():
        for _ in range(warmup):
            _phased(s)
    got = {m: [] for m in setups}
    names = list(setups)
    for r in range(rounds):
        shift = r % len(names)
        for m in names[shift:] + names[:shift]:
            for _ in range(steps):
                got[m].append(_phased(setups[m]))
    return got


def _medians(steps: list[list[float]]) -> dict[str, float]:
    med = {p: statistics.median(x[i] for x in steps) for i, p in enumerate(PHASE_NAMES)}
    med["step"] = statistics.median(sum(x) for x in steps)
    return med


def phase_rows(batches: list[int], warmup: int, rounds: int, steps: int, log) -> list[dict]:
    torch.set_flush_denormal(True)
    rows = []
    for b in batches:
        setups = {m: StepSetup(_model(m, 8), mlp_batch(b, 8), train_cfg()) for m in ("routing", "shared-bottom")}
        got = _phase_table(setups, warmup, rounds, steps)
        med = {m: _medians(v) for m, v in got.items()}
        extra = {p: med["routing"][p] - med["shared-bottom"][p] for p in (*PHASE_NAMES, "step")}
        row = {"batch": b, "ms": med, "extra_ms": extra, "ratio": med["routing"]["step"] / med["shared-bottom"]["step"]}
        log(f"batch {b:5d}  " + "  ".join(f"{p} {med['routing'][p]:.3f}/{med['shared-bottom'][p]:.3f} (+{extra[p]:.3f})"
                                         for p in PHASE_NAMES)
            + f"  step {med['routing']['step']:.3f}/{med['shared-bottom']['step']:.3f} ms, routed/unrouted {row['ratio']:.2f}")
        rows.append(row)
    return rows


def blocks_rows(batches: list[int], blocks: list[int], warmup: int, rounds: int, steps: int, log) -> list[dict]:
    """The routed step phase by phase with the fewest and the most of ``blocks`` blocks a layer (where the many-block
    step's extra time is paid), and each model's parameter bytes (what a dense optimizer and the dense weight
    gradients touch every step)."""
    torch.set_flush_denormal(True)
    few, many = min(blocks), max(blocks)
    rows = []
    for b in batches:
        setups = {str(n): StepSetup(_model("routing", n), mlp_batch(b, 8), train_cfg()) for n in (few, many)}
        got = _phase_table(setups, warmup, rounds, steps)
        med = {n: _medians(v) for n, v in got.items()}
        extra = {p: med[str(many)][p] - med[str(few)][p] for p in (*PHASE_NAMES, "step")}
        ratio = statistics.median(a / c for a, c in zip((sum(x) for x in got[str(many)]), (sum(x) for x in got[str(few)])))
        row = {"batch": b, "blocks": [few, many], "ms": med, "extra_ms": extra, "ratio": ratio,
               "parameter_bytes": {n: s.parameter_bytes() for n, s in setups.items()}}
        log(f"batch {b:5d}  {many} vs {few} blocks  " + "  ".join(
            f"{p} {med[str(many)][p]:.3f}/{med[str(few)][p]:.3f} (+{extra[p]:.3f})" for p in PHASE_NAMES)
            + f"  step {med[str(many)]['step']:.3f}/{med[str(few)]['step']:.3f} ms, {ratio:.2f}x; parameters "
            f"{row['parameter_bytes'][str(many)] / 2**20:.1f} / {row['parameter_bytes'][str(few)] / 2**20:.1f} MiB")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = BenchParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[512, 2048], help="batch sizes")
    p.add_argument("--blocks", type=int, nargs="+", default=[8, 128],
                   help="blocks a layer (the ab part; the blocks part: the fewest against the most)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each model first")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--only", nargs="+", choices=("ab", "phases", "blocks"), default=["ab", "phases", "blocks"],
                   help="which parts")
    p.add_argument("--keep_cpu_memory", action="store_true",
                   help="glibc keeps the memory a step frees (the loop's --keep_cpu_memory; process-wide)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(HERE / "results" / "fused_path.json"), help="the JSON written")
    args = p.parse_args(argv)
    check_bounds(p, args, {"batches": 1, "blocks": 1, "warmup": 0, "rounds": 1, "steps": 1, "threads": 1})
    check_output(p, "--out", args.out)
    torch.set_num_threads(args.threads)
    bench.NATIVE_CPU_KERNELS["value"] = True  # StepSetup switches the kernel on (a failed build warns)
    bench.KEEP_CPU_MEMORY["value"] = args.keep_cpu_memory
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    log(machine())
    result: dict = {"command": "python -m benchmarks.fused_path " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "machine": machine(), "commit": commit(), "args": vars(args)}
    if "ab" in args.only:
        result["ab"] = ab_rows(args.batches, args.blocks, args.warmup, args.rounds, args.steps, log)
    if "phases" in args.only:
        result["phases"] = phase_rows(args.batches, args.warmup, args.rounds, args.steps, log)
    if "blocks" in args.only:
        result["blocks"] = blocks_rows(args.batches, args.blocks, args.warmup, args.rounds, args.steps, log)
    result["native_kernel"] = native_kernel_state(True)
    log(f"native CPU kernel: {result['native_kernel']}")
    Path(args.out).write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
