"""SCI path overlap (issue 6, thesis Figures 5.12/5.13): which signatures share routing paths.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sci_overlap.py --data_dir ../shared/data/sci/joint --epochs 8

Trains CBOW+WP routed by signature with depth 3 and width 4 (tabular Q-learning routers, the SCI
recipe's training defaults), one run per seed, into ``--run_root/seed<k>`` (metrics, checkpoint,
routing records; a run already there is reused unless ``--retrain``). Then runs the routing
analysis (``nli-routing analyze RUN --by signature``) of each seed's test split and router table
into ``--out/seed<k>/`` (path overlap between signatures with rows ordered by hierarchical
clustering, routing map, selection entropy, policy cosine similarity; PNG, CSV, JSON) and
summarises over seeds into ``--out``: ``mean_overlap.{png,csv}`` and ``summary.json`` (signature
training frequencies, each signature's mean overlap with the others, pairs ranked by overlap,
related pairs, i.e. same implication in the positive or negative environment, vs unrelated).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from nli_routing.data.sci import load_sci
from nli_routing.models.nli import NLIModelConfig
from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS, DataArgs, prepare_sci, run_method
from nli_routing.training.loop import TrainConfig

from nli_routing.experiments.bench import commit, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]




def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "sci" / "joint"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--wp_depth", type=int, default=3)
    p.add_argument("--wp_width", type=int, default=4)
    p.add_argument("--split", default="test", help="routing record analysed")
    p.add_argument("--run_root", default=str(REPO / "outputs" / "sci_overlap"), help="runs go to RUN_ROOT/seed<k>")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sci_overlap"))
    p.add_argument("--retrain", action="store_true", help="train even if --run_dir already holds a run")
    p.add_argument("--train_only", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    prepared = None
    for seed in args.seeds:
        run_dir = Path(args.run_root) / f"seed{seed}"
        if args.retrain or not (run_dir / f"routing_{args.split}.npz").exists():
            prepared = prepared or prepare_sci(DataArgs(data_dir=args.data_dir))
            model_cfg = NLIModelConfig(route="wp", wp_depth=args.wp_depth, wp_width=args.wp_width)
            train_cfg = TrainConfig(**RECIPE_TRAIN_DEFAULTS, epochs=args.epochs, seed=seed, progress=False)
            result = run_method("wp-signature", prepared, model_cfg, train_cfg, output_dir=run_dir)
            print(json.dumps(result["summary"], indent=2))
    if args.train_only:
        return {}

    from nli_routing.analysis.overlap import cluster_order
    from nli_routing.analysis.plots import plot_heatmap
    from nli_routing.analysis.report import analyze_run

    out = Path(args.out)
    train = load_sci(args.data_dir, splits=("train",))["train"]
    names = train.features["signature"].names
    freq = Counter(names[i] for i in train["signature"])
    runs, matrices = [], []
    for seed in args.seeds:
        run_dir = Path(args.run_root) / f"seed{seed}"
        analysis = analyze_run(run_dir, by="signature", split=args.split, out_dir=out / f"seed{seed}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        ov = analysis["overlap"]
        classes = sorted(ov["classes"], key=lambda c: -freq[c])  # one order for every seed: by frequency
        idx = [ov["classes"].index(c) for c in classes]
        matrices.append(np.asarray(ov["matrix"])[np.ix_(idx, idx)])
        runs.append({
            "seed": seed,
            "test_accuracy": metrics["final"].get("test", {}).get("accuracy"),
            "validation_accuracy": metrics["final"].get("validation", {}).get("accuracy"),
            "best_epoch": metrics["best_epoch"],
            "train_seconds": json.loads((run_dir / "timing.json").read_text())["train_seconds"],
            "dominant_paths": {r["class"]: r["path"] for r in analysis["dominant_paths"]},
            "dominant_share": {r["class"]: r["share"] for r in analysis["dominant_paths"]},
            "entropy": analysis["entropy"],
        })
    stack = np.stack(matrices).astype(float)
    mean = stack.mean(0)
    n = len(classes)
    order = cluster_order(mean)
    ordered = [classes[i] for i in order]
    plot_heatmap(mean[np.ix_(order, order)], ordered, ordered, out / "mean_overlap.png", cmap="Blues", vmin=0,
                 vmax=args.wp_depth, colorbar_label="shared module selections (mean over seeds)",
                 title=f"SCI joint test: dominant-path overlap by signature, mean of {len(args.seeds)} seeds")
    with (out / "mean_overlap.csv").open("w") as f:
        f.write(",".join(["signature", *ordered]) + "\n")
        for i in order:
            f.write(",".join([classes[i], *[f"{mean[i, j]:.3f}" for j in order]]) + "\n")

    def related(a: str, b: str) -> bool:  # same implication in the positive or in the negative environment
        (pa, na), (pb, nb) = a.split("|"), b.split("|")
        return pa == pb or na == nb

    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            pairs.append({
                "pair": f"{classes[i]} / {classes[j]}",
                "mean_overlap": float(mean[i, j]),
                "seeds_full_path": int((stack[:, i, j] == args.wp_depth).sum()),
                "seeds_overlap_ge_2": int((stack[:, i, j] >= 2).sum()),
                "related": related(classes[i], classes[j]),
            })
    pairs.sort(key=lambda r: -r["mean_overlap"])
    off = ~np.eye(n, dtype=bool)
    per_signature = {
        c: {
            "train_count": freq[c],
            "mean_overlap_with_others": float(mean[i][off[i]].mean()),
            "closest": classes[int(np.where(off[i], mean[i], -1).argmax())],
            "closest_overlap": float(np.where(off[i], mean[i], -1).max()),
        }
        for i, c in enumerate(classes)
    }
    counts = np.array([freq[c] for c in classes], dtype=float)
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731
    is_related = np.array([[related(a, b) for b in classes] for a in classes])

    def structure(m: np.ndarray) -> dict:
        """Mean overlap of related vs unrelated pairs, and rank correlation of frequency and overlap."""
        per_class = np.array([m[i][off[i]].mean() for i in range(n)])
        return {
            "mean_offdiagonal_overlap": float(m[off].mean()),
            "related_pairs_mean_overlap": float(m[off & is_related].mean()),
            "unrelated_pairs_mean_overlap": float(m[off & ~is_related].mean()),
            "spearman_train_count_vs_mean_overlap": float(np.corrcoef(rank(counts), rank(per_class))[0, 1]),
        }

    for run, m in zip(runs, stack):
        run["structure"] = structure(m)
    summary = {
        "command": "python benchmarks/sci_overlap.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": args.data_dir,
        "machine": machine(),
        "commit": commit(),
        "model": {"route": "wp", "wp_depth": args.wp_depth, "wp_width": args.wp_width,
                  "router": "tabular, qlearning, exploration low, init -1"},
        "train": {**RECIPE_TRAIN_DEFAULTS, "epochs": args.epochs, "seeds": args.seeds},
        "split": args.split,
        "runs": runs,
        "chance_overlap": args.wp_depth / args.wp_width,
        **structure(mean),
        "related_pairs": int((off & is_related).sum() // 2),
        "unrelated_pairs": int((off & ~is_related).sum() // 2),
        "per_signature": per_signature,
        "pairs": pairs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "pairs")}, indent=2))
    for run in runs:
        print(f"seed {run['seed']}: test {run['test_accuracy']:.3f}", json.dumps(run["structure"]))
    print("top pairs:", json.dumps(pairs[:8], indent=1))
    return summary


if __name__ == "__main__":
    main()
