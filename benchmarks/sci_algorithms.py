"""Decision-making algorithms on SCI (thesis Figure 7.3(c)): WP routed by signature, depth 3.

    HF_HUB_OFFLINE=1 python benchmarks/sci_algorithms.py --data_dir ../shared/data/sci/joint \
        --max_train_samples 10000 --epochs 6

Every registered learner routes the word projection (tabular agents per signature, depth 3,
4 blocks); test accuracy and routing selection entropy are measured after every epoch. Writes
``<out>.csv`` (one row per algorithm and epoch), ``<out>.json`` and ``<out>.png`` (two panels:
accuracy and entropy per epoch).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from nli_routing.models.nli import NLIModelConfig
from nli_routing.routing import LEARNERS
from nli_routing.training.experiment import RECIPE_TRAIN_DEFAULTS, DataArgs, prepare_sci, run_method
from nli_routing.training.loop import TrainConfig

VALUE_BASED = {"qlearning", "advantage"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_ent) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["learner"] for r in rows):
        rs = [r for r in rows if r["learner"] == name]
        style = "-" if name in VALUE_BASED else "--"
        epochs = [r["epoch"] + 1 for r in rs]
        ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in rs], style, marker="o", ms=3, label=name)
        ax_ent.plot(epochs, [r["entropy"] for r in rs], style, marker="o", ms=3, label=name)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_ent.set_xlabel("epoch")
    ax_ent.set_ylabel("selection entropy (bits, mean over depths)")
    ax_acc.legend(fontsize=7)
    ax_acc.set_title("SCI, WP routed by signature, depth 3")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="../shared/data/sci/joint")
    ap.add_argument("--learners", nargs="+", default=sorted(LEARNERS))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_train_samples", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/sci_algorithms")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prepared = prepare_sci(DataArgs(data_dir=args.data_dir, max_train_samples=args.max_train_samples))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.time()
    for name in args.learners:
        model_cfg = NLIModelConfig(wp_depth=args.depth, wp_width=args.width, learner=name)
        cfg = TrainConfig(epochs=args.epochs, seed=args.seed, cpu=True, progress=False, select_best=False,
                          **RECIPE_TRAIN_DEFAULTS)
        res = run_method("wp-signature", prepared, model_cfg, replace(cfg))
        for rec in res["history"]:
            rows.append({
                "learner": name,
                "epoch": rec["epoch"],
                "test_accuracy": rec["test"]["accuracy"],
                "validation_accuracy": rec["validation"]["accuracy"],
                "entropy": rec["test"]["routing_entropy_0"]["overall"],
                "entropy_per_signature": rec["test"]["routing_entropy_0"]["per_meta"],
                "train_loss": rec["train_loss"],
            })
        last = rows[-1]
        print(f"{name:<18} final test {last['test_accuracy']:.4f}  entropy {last['entropy']:.2f} bits  "
              f"({res['train_seconds']:.0f}s)", flush=True)
        with open(out.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"\nwrote {out.with_suffix('.csv')}, {out.with_suffix('.png')} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
