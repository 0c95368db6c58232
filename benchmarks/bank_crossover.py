"""Which kernel runs a bank's routed rows fastest, per shape (issue 19: dense or grouped; issue 33: tiles,
gathered weights).

    HF_HUB_OFFLINE=1 python benchmarks/bank_crossover.py            # the grid, under a minute of one core
    HF_HUB_OFFLINE=1 python benchmarks/bank_crossover.py --impls grouped_mm dense tiled:8 tiled:32 gather \
        --blocks 8 32 128 --routes uniform                           # issue 33's grid
    HF_HUB_OFFLINE=1 python benchmarks/bank_crossover.py --quick    # a smoke run (numbers meaningless)

A :class:`~nli_routing.routing.bank.LinearBank` can run its routed rows two ways:

* ``grouped_mm`` (what ``impl="auto"`` picks): sort the rows by block, one grouped matmul over the
  groups, unsort; the arithmetic of the unrouted step plus the sort/gather plumbing;
* ``dense``: every block on every row in one matmul ``x @ [W_0 | ... | W_{G-1}]`` and a gather of
  each row's own block: G times the arithmetic, but a handful of operations per step.

* ``tiled:T``: every group padded to whole tiles of T rows, each tile's weight gathered, one batched
  matmul (about 10 operators whatever G; padding of up to T - 1 rows per group);
* ``gather``: each row's own weight gathered into one batched matmul of single rows.
* ``compiled``: ``grouped_mm`` with the bank's forward compiled by ``torch.compile`` (``dynamic=True``;
  inductor on the CPU; its backward is compiled with it; the compile happens in the warm-up steps).

The trade depends on the block shape, the number of blocks G, the batch and the device. This script
times the full training step (the loop's own :func:`~nli_routing.training.loop.train_step`) of the
routed MLP of ``benchmarks/perf.py`` (``nli_routing.experiments.bench.mlp_model``: 3 routed layers of G blocks dim x dim, tabular Q-learning over
8 tasks) with every bank set to each of ``--impls`` in turn (default ``grouped_mm`` and ``dense``), same
weights, same batch, in interleaved rounds, and reports each impl's time over grouped_mm's per (dim, G,
batch): below 1 it wins. ``--routes uniform`` (default) breaks the fresh tables' ties at random, so every
sample takes a uniformly random block (every block used, groups of about batch / G rows); ``fresh``
keeps the routers' tie rule (the lowest block: the greedy samples share block 0). Run it on the
machine you train on before setting ``impl="dense"``; the result on this project's CPU is in
BENCHMARKS.md ("Issue 19: dense or grouped").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from nli_routing.experiments.bench import (
    BenchParser,
    StepSetup,
    check_bounds,
    commit,
    interleaved_step_times,
    machine,
    mlp_batch,
    mlp_model,
    round_ratio,
    train_cfg,
)
from nli_routing.routing.bank import LinearBank
from nli_routing.routing.layer import RoutedLayer

HERE = Path(__file__).resolve().parent


def parse_impl(spec: str) -> tuple[str, int]:
    """``"tiled:16"`` -> ``("tiled", 16)``; other names -> ``(name, 0)``."""
    name, _, tile = spec.partition(":")
    if name not in ("grouped_mm", "loop", "dense", "tiled", "gather", "compiled", "native") or (tile and not tile.isdigit()) \
            or (tile and name != "tiled") or (tile and int(tile) < 1):
        raise ValueError(f"unknown kernel {spec!r}: grouped_mm, loop, dense, gather, compiled, native or tiled:<rows per tile>")
    return name, int(tile or 0)


def routed_mlp(impl: str, dim: int, blocks: int, routes: str = "fresh"):
    """The routed MLP with the banks of its routed layers set to ``impl`` (``"tiled:T"`` sets the tile;
    the same weights for every impl: the model is built under the same seed; the per-task heads stay
    as they are); ``routes="uniform"`` breaks the routers' ties at random."""
    name, tile = parse_impl(impl)
    model = mlp_model("routing", blocks, 8, dim=dim)
    if routes == "uniform":
        for layer in model.modules():
            if isinstance(layer, RoutedLayer) and hasattr(layer.router.learner, "ties"):
                layer.router.learner.ties = "random"
    banks = [m for layer in model.modules() if isinstance(layer, RoutedLayer)
             for m in layer.modules() if isinstance(m, LinearBank)]
    if not banks:
        raise RuntimeError("the routed MLP has no LinearBank: nothing to compare")
    for bank in banks:
        bank.impl = "grouped_mm" if name == "compiled" else name
        bank.tile = tile or bank.tile
        if name == "compiled":  # issue 33: the grouped bank's forward (and so its backward) through torch.compile
            bank.sorted_forward = torch.compile(bank.sorted_forward, dynamic=True)
    return model


def main(argv: list[str] | None = None) -> dict:
    p = BenchParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", nargs="+", type=int, default=[16, 64])
    p.add_argument("--blocks", nargs="+", type=int, default=[2, 4, 8])
    p.add_argument("--batches", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps_per_round", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--impls", nargs="+", default=["grouped_mm", "dense"],
                   help="kernels to time (grouped_mm is always the reference): grouped_mm, loop, dense, gather, compiled, "
                        "native (the C++ kernel, nli_routing.routing.native; built on first use), tiled:T")
    p.add_argument("--routes", choices=("uniform", "fresh"), default="uniform",
                   help="uniform: ties broken at random (every block used); fresh: the routers' own tie rule")
    p.add_argument("--quick", action="store_true", help="tiny grid and one round (a smoke test)")
    p.add_argument("--output", default=str(HERE / "results" / "bank_crossover.json"))
    args = p.parse_args(argv)
    if args.quick:  # only what the command line left at its default
        quick = {"dims": [16], "blocks": [2, 4], "batches": [32], "warmup": 1, "rounds": 1, "steps_per_round": 1}
        for name, value in quick.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    check_bounds(p, args, {"dims": 1, "blocks": 1, "batches": 1, "rounds": 1, "steps_per_round": 1, "warmup": 0})
    try:
        for spec in args.impls:
            parse_impl(spec)
    except ValueError as e:
        p.error(f"--impls: {e}")
    impls = ["grouped_mm"] + [i for i in dict.fromkeys(args.impls) if i != "grouped_mm"]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch build sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = {"machine": machine(), "commit": commit(), "args": vars(args), "rows": []}
    print(result["machine"], flush=True)
    for dim in args.dims:
        for g in args.blocks:
            for b in args.batches:
                batch = mlp_batch(b, 8, dim=dim)
                setups = {impl: StepSetup(routed_mlp(impl, dim, g, args.routes), batch, train_cfg(), args.device)
                          for impl in impls}
                times = interleaved_step_times(setups, warmup=args.warmup, rounds=args.rounds,
                                               steps_per_round=args.steps_per_round)
                over = {impl: round_ratio(times, impl, "grouped_mm") for impl in impls}
                row = {"dim": dim, "blocks": g, "batch": b, "ms": times["ms"], "over_grouped": over,
                       "best": min(impls, key=lambda i: (over[i], i != "grouped_mm")),
                       "grouped_ms": times["ms"]["grouped_mm"], "rounds": times["rounds"]}
                if "dense" in impls:  # issue 19's fields
                    row.update(dense_ms=times["ms"]["dense"], dense_over_grouped=over["dense"])
                result["rows"].append(row)
                others = "  ".join(f"{i} {over[i]:5.2f}" for i in impls[1:])
                print(f"dim {dim:>4}  G {g:>3}  batch {b:>5}: grouped {row['grouped_ms']:8.2f} ms  /grouped: {others}"
                      f"  best {row['best']}", flush=True)
    if "dense" in impls:
        result["dense_wins"] = [(r["dim"], r["blocks"], r["batch"]) for r in result["rows"] if r["dense_over_grouped"] < 1]
    result["wins"] = {i: [(r["dim"], r["blocks"], r["batch"]) for r in result["rows"] if r["best"] == i] for i in impls}
    result["seconds"] = time.perf_counter() - start
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    wins = ", ".join(f"{i} {len(w)}" for i, w in result["wins"].items())
    print(f"fastest per shape ({len(result['rows'])} shapes): {wins}; wrote {out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
