"""``keep_cpu_memory`` against glibc's defaults: step time and page faults of one model per process (issue 33).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/keep_cpu_memory.py --runs 5 --batches 512 2048 \
        --out benchmarks/results/keep_cpu_memory_issue33.jsonl

The allocator setting is process-wide and cannot be undone, so every measurement is its own process that
builds one model, as a training run does: perf.py's routed MLP with 128 and with 8 blocks per layer and its
unrouted twin, each with and without ``TrainConfig.keep_cpu_memory``, alternating, ``--runs`` times. A
process takes 30 warm-up steps, then times 10 chunks of 30 steps (the median chunk's ms per step) and
counts the minor page faults over those 300 steps. Prints per configuration the median ms and faults, and
the keep / default ratio pair by pair (the same run index, one right after the other).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CONFIGS = (("routing", 128), ("routing", 8), ("shared-bottom", 8))

ONE = """
import json, resource, statistics, sys, time, torch
from nli_routing.experiments.bench import StepSetup, mlp_batch, mlp_model, train_cfg
torch.set_num_threads(1)
torch.set_flush_denormal(True)
kind, blocks, batch, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = StepSetup(mlp_model(kind, blocks, 8), mlp_batch(batch, 8), train_cfg(keep_cpu_memory=mode == "keep"))
for _ in range(30):
    s.step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
chunks = []
for _ in range(10):
    t = time.perf_counter()
    for _ in range(30):
        s.step()
    chunks.append((time.perf_counter() - t) / 30 * 1e3)
from nli_routing.training.allocator import cpu_memory_kept
print(json.dumps({"kind": kind, "blocks": blocks, "batch": batch, "mode": mode, "ms": statistics.median(chunks),
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 300, "kept": cpu_memory_kept()}))
"""


def run_one(kind: str, blocks: int, batch: int, mode: str) -> dict:
    """One process: ``kind`` with ``blocks`` blocks at ``batch``, ``mode`` "keep" or "default" (:data:`ONE`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", ONE, kind, str(blocks), str(batch), mode],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> list[str]:
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["kind"], r["blocks"], r["batch"], r["mode"])].append(r)
    lines = []
    for kind, blocks in CONFIGS:
        for batch in sorted({r["batch"] for r in rows}):
            keep, default = by.get((kind, blocks, batch, "keep"), []), by.get((kind, blocks, batch, "default"), [])
            if not keep or not default:
                continue
            ratios = [a["ms"] / b["ms"] for a, b in zip(keep, default)]
            lines.append(f"{kind:>13} {blocks:>3} blocks batch {batch:>5}: ms keep {statistics.median(r['ms'] for r in keep):6.2f} "
                         f"default {statistics.median(r['ms'] for r in default):6.2f}  keep/default median "
                         f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})  faults per step keep "
                         f"{statistics.median(r['faults'] for r in keep):.1f} default "
                         f"{statistics.median(r['faults'] for r in default):.1f}")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="process pairs per configuration")
    ap.add_argument("--batches", nargs="+", type=int, default=[512, 2048])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "keep_cpu_memory.jsonl"))
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs must be >= 1, got {args.runs}")
    if any(b < 1 for b in args.batches):
        ap.error(f"--batches must be >= 1, got {args.batches}")
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for _ in range(args.runs):
            for batch in args.batches:
                for kind, blocks in CONFIGS:
                    for mode in ("keep", "default"):
                        row = run_one(kind, blocks, batch, mode)
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
                        f.flush()
    for line in summarise(rows):
        print(line)
    return rows


if __name__ == "__main__":
    main()
