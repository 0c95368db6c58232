"""SCI benchmark for issue 2: CBOW vs CBOW+WP (signature / offline dispatch), seeds and an ablation.

    HF_HUB_OFFLINE=1 python benchmarks/sci_wp.py --sci_root ../shared/data/sci --variants joint disjoint \
        --seeds 0 1 2 --epochs 8

Prints a table (mean and standard deviation of test accuracy over seeds, at the best validation
epoch) and writes every run's summary to ``--out`` (JSON) as it goes, so a long run can be resumed
with ``--resume`` and partial results are never lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path


from nli_routing.models.nli import NLIModelConfig
from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS, DataArgs, prepare_sci, run_method
from nli_routing.training.loop import TrainConfig

from nli_routing.experiments.bench import commit, machine  # noqa: E402

#: (name, method, model overrides) of the main comparison
MAIN = [
    ("cbow", "cbow", {}),
    ("wp-shared", "wp-shared", {}),
    ("wp-signature", "wp-signature", {}),
    ("wp-signature-kw", "wp-signature-kw", {}),
    ("wp-kmeans", "wp-kmeans", {}),
]
#: WP routed by signature: depth x width ablation (d=1, b=4 is the default: the wp-signature row)
ABLATION = [
    (f"wp-signature d={d} b={b}", "wp-signature", {"wp_depth": d, "wp_width": b})
    for d, b in ((1, 15), (3, 4), (3, 15))
]




def summarize(runs: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (variant, name)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["name"]), []).append(r)
    rows = []
    for (variant, name), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        ent = [r["routing_entropy"] for r in rs if r["routing_entropy"] is not None]
        rows.append(
            {
                "variant": variant,
                "name": name,
                "seeds": len(rs),
                "test_mean": statistics.mean(acc),
                "test_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "test_min": min(acc),
                "test_max": max(acc),
                "entropy_mean": statistics.mean(ent) if ent else None,
                "train_seconds_mean": statistics.mean(r["train_seconds"] for r in rs),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'variant':<10}{'model':<28}{'seeds':>6}{'test acc (mean ± sd)':>24}{'entropy':>9}{'train s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ent = f"{r['entropy_mean']:.2f}" if r["entropy_mean"] is not None else "-"
        acc = f"{100 * r['test_mean']:.1f} ± {100 * r['test_std']:.1f}"
        lines.append(f"{r['variant']:<10}{r['name']:<28}{r['seeds']:>6}{acc:>24}{ent:>9}{r['train_seconds_mean']:>9.0f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, runs: list[dict] | None = None) -> None:
    """Bar chart of mean test accuracy per variant; error bars: sd over seeds; dots: each seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 4.5), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        rs = [r for r in rows if r["variant"] == variant]
        ax.bar(range(len(rs)), [100 * r["test_mean"] for r in rs], yerr=[100 * r["test_std"] for r in rs],
               color=["#888" if not r["name"].startswith("wp-sig") else "#3a7" for r in rs], capsize=3)
        for i, r in enumerate(rs):
            seeds = [x["test_accuracy"] for x in runs or [] if x["variant"] == variant and x["name"] == r["name"]]
            ax.plot([i] * len(seeds), [100 * a for a in seeds], "o", color="black", ms=4, zorder=3)
        ax.set_xticks(range(len(rs)), [r["name"] for r in rs], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(40, 100)
        ax.set_title(f"SCI {variant}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sci_root", default="../shared/data/sci")
    ap.add_argument("--variants", nargs="+", default=["joint", "disjoint"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--ablation_variant", default="joint", help="variant for the depth/width ablation ('' = none)")
    ap.add_argument("--only_ablation", action="store_true", help="run only the depth/width ablation")
    ap.add_argument("--models", nargs="+", default=None, help="run only these rows of the main comparison")
    ap.add_argument("--max_train_samples", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/sci_wp.json")
    ap.add_argument("--resume", action="store_true", help="skip runs already in --out")
    ap.add_argument("--report_only", action="store_true", help="only print the table and plot of --out")
    args = ap.parse_args()
    if args.report_only:
        data = json.loads(Path(args.out).read_text())
        rows = summarize(data["runs"])
        plot(rows, Path(args.out).with_suffix(".png"), data["runs"])
        print(f"{table(rows)}\n\nmachine: {data['machine']}; commit {data.get('commit')}")
        return
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    done = {(r["variant"], r["name"], r["seed"]) for r in runs}
    model_cfg = NLIModelConfig()
    started = time.time()
    for variant in args.variants:
        prepared = prepare_sci(DataArgs(data_dir=str(Path(args.sci_root) / variant), max_train_samples=args.max_train_samples))
        main_jobs = [] if args.only_ablation else [j for j in MAIN if args.models is None or j[0] in args.models]
        jobs = main_jobs + (ABLATION if variant == args.ablation_variant else [])
        for seed in args.seeds:
            for name, method, overrides in jobs:
                if (variant, name, seed) in done:
                    continue
                cfg = TrainConfig(epochs=args.epochs, seed=seed, cpu=True, progress=False, **RECIPE_TRAIN_DEFAULTS)
                res = run_method(method, prepared, replace(model_cfg, **overrides), cfg)
                s = res["summary"]
                run = {"variant": variant, "name": name, "seed": seed, **s,
                       "validation_history": [h["validation"]["accuracy"] for h in res["history"]]}
                runs.append(run)
                print(f"{variant:<9} {name:<26} seed {seed}: test {s['test_accuracy']:.4f} "
                      f"val {s['validation_accuracy']:.4f} best epoch {s['best_epoch']} ({s['train_seconds']:.0f}s)",
                      flush=True)
                out.write_text(json.dumps({"machine": machine(), "commit": commit(), "args": vars(args), "runs": runs}, indent=1))
    rows = summarize(runs)
    plot(rows, out.with_suffix(".png"), runs)
    out.write_text(json.dumps({"machine": machine(), "commit": commit(), "args": vars(args), "runs": runs, "summary": rows}, indent=1))
    print(f"\n{table(rows)}\n\nmachine: {machine()}; wall time {time.time() - started:.0f}s; results: {out}")


if __name__ == "__main__":
    main()
