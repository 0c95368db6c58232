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
    objective = objective_counts(args.batch)
    result = {"command": "python benchmarks/op_counts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "commit": commit(), "args": vars(args), "phases": phases, "impls": impls,
              "objective": objective}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    names = ["forward", "router_loss", "backward", "optimizers"]
    print(f"{'model':<16}" + "".join(f"{n:>13}" for n in names) + f"{'total':>9}")
    for kind, c in phases.items():
        print(f"{kind:<16}" + "".join(f"{c.get(n, 0):>13}" for n in names) + f"{sum(c.values()):>9}")
    print(f"\n{'bank impl':<12}{'aten':>7}{'mm':>6}{'bmm':>6}{'grouped':>9}{'item':>6}")
    for impl, c in impls.items():
        print(f"{impl:<12}{c['aten']:>7}{c['aten::mm']:>6}{c['aten::bmm']:>6}{c['aten::_grouped_mm']:>9}{c['aten::item']:>6}")
    print(f"\n{'model (routed layers)':<36}{'router loss fused':>18}{'per layer':>11}{'step fused':>12}{'per layer':>11}")
    for name, c in objective.items():
        print(f"{name:<36}{c['fused']['router_loss']:>18}{c['per_layer']['router_loss']:>11}"
              f"{sum(c['fused'].values()):>12}{sum(c['per_layer'].values()):>11}")
    return result


def objective_counts(batch: int) -> dict[str, dict]:
    """Step operators by phase with the routing objective fused across routed layers and per layer
    (``RoutedModel.fuse_routing_objective``), for models with several routed layers: CBOW with a routed
    word projection and a routed 2-layer classifier (2 layers), and the MNIST-MTL network with routed
    conv layers 1-3 and the routed FC stack (4 layers)."""
    import torch

    from nli_routing.experiments.bench import cbow_batch, cbow_model
    from nli_routing.models.vision import VisionMTLConfig, VisionMTLModel

    def vision() -> torch.nn.Module:
        torch.manual_seed(0)
        return VisionMTLModel(VisionMTLConfig(num_meta=8, method="routing", image_size=8, conv_layers=3, conv_channels=8,
                                              routed_convs="1,2,3", fc_hidden=16, fc_layers=2, fc_width=4,
                                              exploration="low"))

    def vision_batch() -> dict:
        g = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g),
                "labels": torch.randint(0, 2, (batch,), generator=g), "meta": torch.randint(0, 8, (batch,), generator=g)}

    def cbow() -> torch.nn.Module:
        model = cbow_model("wp+classifier", vocab=2000, dim=64)
        return model

    models = {"cbow wp+classifier (2)": (cbow, lambda: cbow_batch(batch, vocab=2000)),
              "mnist-mtl conv 1-3 + fc (4)": (vision, vision_batch)}
    out = {}
    for name, (make, make_batch) in models.items():
        counts = {}
        for fuse in (True, False):
            model = make()
            model.fuse_routing_objective = fuse
            counts["fused" if fuse else "per_layer"] = phase_counts(StepSetup(model, make_batch(), train_cfg()))
        out[name] = counts
    return out


if __name__ == "__main__":
    main()
