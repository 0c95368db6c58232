"""Issue 30: the ``routed-nli`` pipeline batched (``batch_size=64``) against one pair per forward.

    HF_HUB_OFFLINE=1 accelerate launch recipes/sci_wp_dispatch.py              # the main job's folders
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/pipeline_batching.py \
        --models outputs/sci_wp_dispatch/{cbow,wp-signature,wp-kmeans} --pairs 2000 --repeats 3

The pairs are the embedded joint test split (signatures given, mixed in every batch), repeated up to
``--pairs``. Each repeat times ``batch_size=1`` then ``--batch_size`` over the same pairs in one
process; the ratio is per repeat, the median is reported. Both must give the same labels and routes
(and scores within 1e-5). Prints one line per model and writes ``--out`` when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="saved model folders (or Hub ids)")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import nli_routing.inference.pipeline  # noqa: F401  (registers the task)
    from transformers import pipeline

    from nli_routing.experiments.bench import commit, embedded_pairs, machine

    pairs = embedded_pairs(args.pairs, "text", "text_pair", "meta")
    result = {"machine": machine(), "commit": commit(), "torch_threads": torch.get_num_threads(), "args": vars(args),
              "models": {}}
    for folder in args.models:
        nli = pipeline("routed-nli", model=folder)
        one, batched, ratios = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            a = nli(pairs, batch_size=1)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            b = nli(pairs, batch_size=args.batch_size)
            tb = time.perf_counter() - t
            one.append(t1), batched.append(tb), ratios.append(t1 / tb)
        same = all(x[0]["label"] == y[0]["label"] and x[0]["route"] == y[0]["route"]
                   and abs(x[0]["score"] - y[0]["score"]) < 1e-5 for x, y in zip(a, b))
        entry = {"pairs": len(pairs), "seconds_batch_1": one, f"seconds_batch_{args.batch_size}": batched,
                 "ratio_per_repeat": ratios, "median_ratio": statistics.median(ratios),
                 "same_labels_and_routes": same, "meta_source": b[0][0]["meta_source"]}
        result["models"][folder] = entry
        print(f"{folder}: {len(pairs)} pairs, batch 1 {statistics.median(one):.2f} s, batch {args.batch_size} "
              f"{statistics.median(batched):.2f} s, ratio {entry['median_ratio']:.1f}x (per repeat "
              f"{', '.join(f'{r:.1f}' for r in ratios)}), same labels and routes: {same}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
