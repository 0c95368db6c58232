"""How much of 128 blocks' cost over 8 is the optimizer phase over 16x the parameters (issue 33).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m benchmarks.blocks_floor --native_cpu_kernels \
        --out benchmarks/results/issue33_s3/blocks_floor.json

perf.py's routed MLP (3 routed layers of Linear(64, 64) blocks, 8 tasks, tabular Q-learning) with 8 and with
``--blocks`` blocks a layer, at each batch size. In interleaved rounds it times, for each model, the whole
training step (the loop's ``train_step``) and, on the gradients that step left, the step's optimizer phase
alone (the loop's ``optimizer_phase``: the finite check's gradient norms, clipping, both optimizer steps).
Every block that receives a row gets a gradient, and at 512 rows over 128 blocks almost every block does,
so a dense optimizer touches all of them: the optimizer phase's growth is paid by any implementation of
the banks. ``floor`` is the ratio 128 vs 8 blocks would have if everything but the optimizer phase cost
what it costs with 8 blocks: ``(step_8 + opt_128 - opt_8) / step_8`` (a lower bound: the weight
gradients written in the backward pass and the weights read in the forward pass grow with the blocks too).
Writes ``--out`` (JSON) and prints a table.
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
    train_cfg,
)
from nli_routing.routing.native import native_kernel_state

HERE = Path(__file__).resolve().parent


def timed_rounds(setups: dict[str, StepSetup], warmup: int, rounds: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """Per round and model: the mean ms of ``steps`` whole steps, then of ``steps`` optimizer phases alone
    on the last step's gradients; the order of the models rotates from round to round."""
    from nli_routing.training.loop import optimizer_phase

    torch.set_flush_denormal(True)  # as the training loop does
    names = list(setups)
    for s in setups.values():
        for _ in range(warmup):
            s.step()
    out = {n: {"step": [], "optimizer": []} for n in names}
    zero = torch.zeros(())
    for r in range(rounds):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            s = setups[n]
            t0 = time.perf_counter()
            for _ in range(steps):
                s.step()
            t1 = time.perf_counter()
            for _ in range(steps):
                optimizer_phase(s.model, zero, zero, s.block_opt, s.router_opt, s.cfg, step=s.steps)
            t2 = time.perf_counter()
            out[n]["step"].append((t1 - t0) * 1e3 / steps)
            out[n]["optimizer"].append((t2 - t1) * 1e3 / steps)
    return out


def used_groups(setup: StepSetup) -> dict[str, list[int]]:
    """Per routed depth, after the timed steps: the blocks holding at least one row, and the rows of the fullest."""
    with torch.no_grad():
        actions = setup.model(**setup.batch).trajectories[0].actions
    counts = [torch.bincount(actions[:, d]) for d in range(actions.shape[1])]
    return {"non_empty": [int((c > 0).sum()) for c in counts], "largest": [int(c.max()) for c in counts]}


def main(argv: list[str] | None = None) -> dict:
    p = BenchParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="floor: what the many-block step would cost relative to the 8-block step if only its optimizer phase "
               "grew, (step_8 + optimizer_many - optimizer_8) / step_8, median over rounds (range in brackets)")
    p.add_argument("--blocks", type=int, default=128, help="blocks a layer, compared with 8")
    p.add_argument("--batches", type=int, nargs="+", default=[512, 2048], help="batch sizes, one model pair each")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each model first")
    p.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds")
    p.add_argument("--steps", type=int, default=5, help="steps (and optimizer phases) per round")
    p.add_argument("--native_cpu_kernels", action="store_true", help="the banks on the library's C++ kernel")
    p.add_argument("--keep_cpu_memory", action="store_true",
                   help="keep freed CPU memory in the process (TrainConfig.keep_cpu_memory): no page faults on the "
                        "weight gradients' fresh buffers")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(HERE / "results" / "blocks_floor.json"), help="the JSON written")
    args = p.parse_args(argv)
    check_bounds(p, args, {"blocks": 1, "batches": 1, "rounds": 1, "steps": 1, "threads": 1, "warmup": 0})
    check_output(p, "--out", args.out)
    torch.set_num_threads(args.threads)
    bench.NATIVE_CPU_KERNELS["value"] = args.native_cpu_kernels
    bench.KEEP_CPU_MEMORY["value"] = args.keep_cpu_memory
    rows, native = [], "off"
    for b in args.batches:
        setups = {str(k): StepSetup(mlp_model("routing", k, 8), mlp_batch(b, 8), train_cfg()) for k in (8, args.blocks)}
        native = native_kernel_state(args.native_cpu_kernels)  # the setups built (or failed to build) it
        if args.native_cpu_kernels and b == args.batches[0]:
            print(f"native CPU kernel: {native}", flush=True)
        t = timed_rounds(setups, args.warmup, args.rounds, args.steps)
        few, many = t["8"], t[str(args.blocks)]
        ratio = [m / f for m, f in zip(many["step"], few["step"])]
        floor = [(fs + mo - fo) / fs for fs, fo, mo in zip(few["step"], few["optimizer"], many["optimizer"])]
        row = {"batch": b, "ms": {n: {k: statistics.median(v) for k, v in d.items()} for n, d in t.items()},
               "ratio": statistics.median(ratio), "floor": statistics.median(floor),
               "floor_range": [min(floor), max(floor)], "ratio_range": [min(ratio), max(ratio)],
               "params_with_grad": {n: sum(q.numel() for q in s.model.parameters() if q.grad is not None)
                                    for n, s in setups.items()},
               "groups_used": {n: used_groups(s) for n, s in setups.items()}, "rounds_ms": t}
        rows.append(row)
        print(f"batch {b:>5}: step {row['ms']['8']['step']:6.2f} / {row['ms'][str(args.blocks)]['step']:6.2f} ms, "
              f"optimizer phase {row['ms']['8']['optimizer']:5.2f} / {row['ms'][str(args.blocks)]['optimizer']:5.2f} ms "
              f"(8 / {args.blocks} blocks); {args.blocks} vs 8: {row['ratio']:.2f}x, floor {row['floor']:.2f}x "
              f"({row['floor_range'][0]:.2f}-{row['floor_range'][1]:.2f}); non-empty groups per depth "
              f"{row['groups_used']['8']['non_empty']} / {row['groups_used'][str(args.blocks)]['non_empty']}", flush=True)
    result = {"command": "python -m benchmarks.blocks_floor " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "commit": commit(), "args": vars(args), "native_cpu_kernels": native,
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
