"""Operator counts of one training step, by phase and by block-bank implementation (issue 33).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/op_counts.py

perf.py's FC-only MLP (``--layers`` routed FC layers of ``--dim``, ``--blocks`` blocks, ``--tasks`` tasks) at
``--batch``: the ``aten::`` operators one step of the training loop dispatches, split by the loop's
``step:*`` phases (forward, router loss, backward, optimizers), for the routed model and its unrouted
shared-bottom twin, then for the routed model with each :class:`~nli_routing.routing.bank.LinearBank`
implementation forced. Counts are exact and independent of the machine's load (no times are taken).
Writes ``--out`` (JSON) and prints the tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from nli_routing.experiments.bench import (
    PHASES,
    StepSetup,
    commit,
    machine,
    mlp_batch,
    mlp_model,
    step_op_count,
    train_cfg,
)
from nli_routing.routing.bank import BANK_IMPLS, LinearBank

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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "op_counts_issue33.json"))
    args = ap.parse_args(argv)
    for flag in ("blocks", "tasks", "dim", "layers", "batch"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    cfg = train_cfg()  # perf.py's

    def setup(kind: str, impl: str | None = None) -> StepSetup:
        model = mlp_model(kind, args.blocks, args.tasks, dim=args.dim, layers=args.layers)
        if impl is not None:
            for bank in (m for m in model.modules() if isinstance(m, LinearBank)):
                bank.impl = impl
        return StepSetup(model, mlp_batch(args.batch, args.tasks, dim=args.dim), cfg)

    phases = {kind: phase_counts(setup(kind)) for kind in ("routing", "shared-bottom")}
    impls = {}
    for impl in BANK_IMPLS:  # auto: what the model picks itself (the phases above)
        c = step_op_count(setup("routing", impl))
        impls[impl] = {"aten": c["aten"], **{k: c.get(k, 0) for k in ("aten::mm", "aten::bmm", "aten::_grouped_mm",
                                                                       "aten::item")}}
    result = {"command": "python benchmarks/op_counts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "commit": commit(), "args": vars(args), "phases": phases, "impls": impls}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    names = ["forward", "router_loss", "backward", "optimizers"]
    print(f"{'model':<16}" + "".join(f"{n:>13}" for n in names) + f"{'total':>9}")
    for kind, c in phases.items():
        print(f"{kind:<16}" + "".join(f"{c.get(n, 0):>13}" for n in names) + f"{sum(c.values()):>9}")
    print(f"\n{'bank impl':<12}{'aten':>7}{'mm':>6}{'bmm':>6}{'grouped':>9}{'item':>6}")
    for impl, c in impls.items():
        print(f"{impl:<12}{c['aten']:>7}{c['aten::mm']:>6}{c['aten::bmm']:>6}{c['aten::_grouped_mm']:>9}{c['aten::item']:>6}")
    return result


if __name__ == "__main__":
    main()
