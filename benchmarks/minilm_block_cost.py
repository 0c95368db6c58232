"""What the routed MiniLM block route pays over the unrouted model, by route distribution (issue 33).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m benchmarks.minilm_block_cost --rounds 15 \
        --out benchmarks/results/issue33_s3/minilm_block_cost.json

perf.py's MiniLM step (``--minilm_blocks`` copies of every layer, 16 pairs of 32 tokens, the fine-tuning
recipe's optimizer) for four models in the same interleaved rounds:

* ``none``: the unrouted model;
* ``block``: the block route as perf.py builds it (fresh router tables, the recipe's exploration);
* ``block_pinned``: the same, every router table pinned to copy 0 by a margin the router's updates cannot
  close during the run, and no exploration: every sample on copy 0 at every step, so the step pays the
  routing machinery (decisions, the group plan's host read, the router loss) and nothing of a split;
* ``block_spread``: random router tables (:func:`~nli_routing.experiments.bench.spread_routes`): the
  samples spread over the copies as after training.

For each: the median step time and its ratio to ``none`` round by round, the copies' groups per routed
position in the timed steps, the parameters that received a gradient in the last step (what the optimizer
updates), and the phases of one profiled step (forward, backward, optimizers) with its ``mm``/``addmm``
call counts. Then one encoder layer's forward and backward alone, on the whole batch and split into the spread
route's group sizes of the first layer, through one module and through the copies: what a split costs without any
routing. Writes ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nli_routing.experiments.bench import (
    BenchParser,
    StepSetup,
    check_bounds,
    check_output,
    commit,
    interleaved_step_times,
    machine,
    round_ratio,
    spread_routes,
    step_profile,
    train_cfg,
)

HERE = Path(__file__).resolve().parent


def build(kind: str, blocks: int):
    from nli_routing.models.embeddings import default_model_path
    from nli_routing.models.transformer import (
        RoutedTransformerForNLI,
        TransformerNLIConfig,
    )
    from nli_routing.routing.routers import TabularRouter

    torch.manual_seed(0)
    route = "none" if kind == "none" else "block"
    extra = {"exploration": "none"} if kind == "block_pinned" else {}
    model = RoutedTransformerForNLI(TransformerNLIConfig(route=route, num_blocks=blocks, num_meta=8,
                                                         model_name_or_path=default_model_path(), **extra))
    if kind == "block_spread":
        spread_routes(model)
    if kind == "block_pinned":
        for m in model.modules():
            if isinstance(m, TabularRouter):
                with torch.no_grad():
                    m.table.fill_(-1e4)
                    m.table[..., 0] = 1e4
    return model


def batch(size: int, length: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (size, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 3, (size,), generator=g), "meta": torch.randint(0, 8, (size,), generator=g)}


def groups_per_position(setup: StepSetup) -> list[list[int]]:
    from nli_routing.models.transformer.layer import RoutingController

    ctrl = next(m for m in setup.model.modules() if isinstance(m, RoutingController))
    actions = ctrl.last_trajectory.actions
    return [torch.bincount(actions[:, d], minlength=ctrl.width).tolist() for d in range(actions.shape[1])]


def layer_split(setup: StepSetup, sizes: list[int], rounds: int) -> dict[str, float]:
    """One encoder layer's forward + backward on the batch's hidden states (random, ``[B, T, d]``): whole, split
    into groups of ``sizes`` samples through the same module, and split through the route's copies (median ms of
    ``rounds`` interleaved calls): what a split costs without any routing."""
    from nli_routing.models.transformer.layer import RoutedModule

    routed = next(m for m in setup.model.modules() if isinstance(m, RoutedModule))
    copies = list(routed.copies)
    ids = setup.batch["input_ids"]
    hidden = torch.randn(ids.shape[0], ids.shape[1], copies[0].attention.self.query.in_features,
                         generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(hidden.shape[0], generator=torch.Generator().manual_seed(1))

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    def split(modules):
        parts, start = [], 0
        for module, n in zip(modules, sizes):
            if n:
                parts.append(first(module(hidden.index_select(0, perm[start:start + n]))))
            start += n
        return torch.cat(parts)

    cases = {"whole": lambda: first(copies[0](hidden)), "split_one_module": lambda: split([copies[0]] * len(sizes)),
             "split_copies": lambda: split(copies)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(rounds + 2):
        for k, f in cases.items():
            for q in (q for c in copies for q in c.parameters()):
                q.grad = None
            t0 = time.perf_counter()
            f().sum().backward()
            if r >= 2:  # two warm-up rounds
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    from nli_routing.experiments.transformer import TRAIN_DEFAULTS

    p = BenchParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--keep_cpu_memory", action="store_true",
                   help="keep freed CPU memory (TrainConfig.keep_cpu_memory): the copies' fresh gradient buffers "
                        "are not page-faulted in again every step")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(HERE / "results" / "minilm_block_cost.json"))
    args = p.parse_args(argv)
    check_bounds(p, args, {"blocks": 1, "batch": 1, "length": 1, "rounds": 1, "warmup": 0})
    check_output(p, "--out", args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = batch(args.batch, args.length)
    kinds = ("none", "block", "block_pinned", "block_spread")
    cfg = train_cfg(**TRAIN_DEFAULTS, keep_cpu_memory=args.keep_cpu_memory)
    setups = {k: StepSetup(build(k, args.blocks), data, cfg) for k in kinds}
    times = interleaved_step_times(setups, warmup=args.warmup, rounds=args.rounds, steps_per_round=1)
    rows = {}
    for k, s in setups.items():
        prof = step_profile(s, steps=1, top=0)
        counts = {}
        with profile(activities=[ProfilerActivity.CPU]) as pr:
            s.step()
        for e in pr.key_averages():
            if e.key in ("aten::mm", "aten::addmm"):
                counts[e.key] = e.count
        rows[k] = {"ms": times["ms"][k], "ratio": round_ratio(times, k, "none"),
                   "ratio_range": [min(a / b for a, b in zip(times["rounds"][k], times["rounds"]["none"])),
                                   max(a / b for a, b in zip(times["rounds"][k], times["rounds"]["none"]))],
                   "groups_per_position": None if k == "none" else groups_per_position(s),
                   "params_with_grad": sum(q.numel() for q in s.model.parameters() if q.grad is not None),
                   "phases_ms": prof["phases_ms"], "matmul_calls": counts}
    sizes = rows["block_spread"]["groups_per_position"][0]
    split = layer_split(setups["block_spread"], sizes, args.rounds)
    split_row = {"group_sizes": sizes, "ms": split,
                 "split_one_module_over_whole": split["split_one_module"] / split["whole"],
                 "split_copies_over_whole": split["split_copies"] / split["whole"]}
    result = {"command": "python -m benchmarks.minilm_block_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "commit": commit(), "args": vars(args), "rows": rows, "rounds": times["rounds"], "layer_split": split_row}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'model':<14}{'ms':>8}{'ratio':>7}{'range':>13}{'params w/ grad':>16}{'fwd':>7}{'bwd':>7}{'opt':>6}{'mm+addmm':>10}")
    for k, r in rows.items():
        ph = r["phases_ms"]
        print(f"{k:<14}{r['ms']:8.1f}{r['ratio']:7.3f}  {r['ratio_range'][0]:5.2f}-{r['ratio_range'][1]:4.2f}"
              f"{r['params_with_grad']:>16,}{ph.get('forward', 0):7.0f}{ph.get('backward', 0):7.0f}"
              f"{ph.get('optimizers', 0):6.0f}{sum(r['matmul_calls'].values()):>10}")
        if r["groups_per_position"] is not None:
            print(f"{'':<14}groups per position (last step): {r['groups_per_position']}")
    print(f"one encoder layer, forward + backward, groups {sizes}: whole {split['whole']:.1f} ms, split through one "
          f"module {split_row['split_one_module_over_whole']:.3f}x, through the copies {split_row['split_copies_over_whole']:.3f}x")
    return result


if __name__ == "__main__":
    main()
