"""Decision-making algorithms on SCI (thesis Figure 7.3(c)): WP routed by signature, depth 3.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sci_algorithms.py --data_dir ../shared/data/sci/joint \
        --seeds 0 1 2 --epochs 4 --worker 0 --workers 2 --resume --out benchmarks/results/sci_algorithms_d3/w0.json
    python benchmarks/sci_algorithms.py --report_only --inputs benchmarks/results/sci_algorithms_d3/w*.json \
        --out benchmarks/results/sci_algorithms_d3/all.json

Every registered learner (``--learners``) routes the word projection (tabular agents per signature,
depth ``--depth``, ``--width`` blocks) at the library's and the recipe's defaults otherwise, once per
``--seeds``; test and validation accuracy and the routing selection entropy (bits, mean over depths;
log2(width) is uniform use) are measured after every epoch. Every finished (learner, seed) run is
written to ``--out`` at once (``--resume`` skips the finished ones; ``--worker i --workers n`` takes
every n-th run of the (seed, learner) list, so two processes share the work). The report (also
``--report_only`` over several workers' files) prints the mean and 95% t interval over seeds per
learner and epoch, writes ``<out>.csv`` (one row per learner, seed and epoch) and ``<out>.png`` (mean
accuracy and entropy per epoch, one line per learner; value-based learners solid).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
from pathlib import Path

from scipy import stats as sps

from nli_routing.models.nli import NLIModelConfig
from nli_routing.routing import LEARNERS
from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS, DataArgs, prepare_sci, run_method
from nli_routing.training.loop import TrainConfig

from nli_routing.experiments.bench import commit, machine, merge_worker_results  # noqa: E402

VALUE_BASED = {"qlearning", "advantage"}
STARTED_AT = commit()


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t interval (0 for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, float(sps.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def run_one(name: str, seed: int, prepared, args) -> dict:
    """One learner, one seed: per-epoch accuracies and entropies."""
    model_cfg = NLIModelConfig(wp_depth=args.depth, wp_width=args.width, learner=name)
    cfg = TrainConfig(epochs=args.epochs, seed=seed, cpu=True, progress=False, select_best=False,
                      **RECIPE_TRAIN_DEFAULTS)
    res = run_method("wp-signature", prepared, model_cfg, cfg)
    epochs = [{
        "epoch": rec["epoch"],
        "test_accuracy": rec["test"]["accuracy"],
        "validation_accuracy": rec["validation"]["accuracy"],
        "entropy": rec["test"]["routing_entropy_0"]["overall"],
        "entropy_per_signature": rec["test"]["routing_entropy_0"]["per_meta"],
        "train_loss": rec["train_loss"],
    } for rec in res["history"]]
    return {"learner": name, "seed": seed, "epochs": epochs, "train_seconds": res["train_seconds"],
            "commit": STARTED_AT, "machine": machine()}


def summarize(runs: list[dict]) -> dict:
    """``{learner: [{epoch, test (mean, ci), entropy (mean, ci), n}]}``."""
    out: dict = {}
    for name in dict.fromkeys(r["learner"] for r in runs):
        rs = [r for r in runs if r["learner"] == name]
        n_epochs = min(len(r["epochs"]) for r in rs)
        out[name] = []
        for e in range(n_epochs):
            acc = mean_ci([100 * r["epochs"][e]["test_accuracy"] for r in rs])
            ent = mean_ci([r["epochs"][e]["entropy"] for r in rs])
            out[name].append({"epoch": e + 1, "test": acc, "entropy": ent, "n": len(rs),
                              "seeds": sorted(r["seed"] for r in rs)})
    return out


def table(summary: dict) -> str:
    n_epochs = max(len(v) for v in summary.values())
    head = "| learner | kind | seeds | " + " | ".join(f"epoch {e + 1}" for e in range(n_epochs)) + " | entropy, last (bits) |"
    lines = [head, "|" + "---|" * (n_epochs + 4)]
    for name, eps in summary.items():
        kind = "value" if name in VALUE_BASED else "policy / reparameterised"
        cells = [f"{ep['test'][0]:.1f} ± {ep['test'][1]:.1f}" for ep in eps]
        cells += [""] * (n_epochs - len(eps))
        last = eps[-1]["entropy"]
        lines.append(f"| `{name}` | {kind} | {eps[-1]['n']} | " + " | ".join(cells) + f" | {last[0]:.2f} ± {last[1]:.2f} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_ent) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, eps in summary.items():
        style = "-" if name in VALUE_BASED else "--"
        x = [ep["epoch"] for ep in eps]
        for ax, key in ((ax_acc, "test"), (ax_ent, "entropy")):
            m = [ep[key][0] for ep in eps]
            ci = [ep[key][1] for ep in eps]
            line, = ax.plot(x, m, style, marker="o", ms=3, label=name)
            ax.fill_between(x, [a - b for a, b in zip(m, ci)], [a + b for a, b in zip(m, ci)],
                            color=line.get_color(), alpha=0.12)
    n = max(ep["n"] for eps in summary.values() for ep in eps)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(f"test accuracy (%), mean and 95% CI over {n} seeds")
    ax_ent.set_xlabel("epoch")
    ax_ent.set_ylabel("selection entropy (bits, mean over depths)")
    ax_acc.legend(fontsize=7)
    ax_acc.set_title("SCI joint, WP routed by signature, depth 3")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(runs: list[dict], out: Path, meta: dict) -> None:
    summary = summarize(runs)
    print(table(summary))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", "seed", "epoch", "test_accuracy", "validation_accuracy", "entropy", "train_loss"])
        for r in runs:
            for ep in r["epochs"]:
                writer.writerow([r["learner"], r["seed"], ep["epoch"] + 1, ep["test_accuracy"],
                                 ep["validation_accuracy"], ep["entropy"], ep["train_loss"]])
    out.write_text(json.dumps({**meta, "runs": runs, "summary": summary}, indent=1))
    plot(summary, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="../shared/data/sci/joint")
    ap.add_argument("--learners", nargs="+", default=sorted(LEARNERS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max_train_samples", type=int, default=None)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="skip (learner, seed) runs already in --out")
    ap.add_argument("--report_only", action="store_true", help="merge --inputs (or --out) into the report")
    ap.add_argument("--inputs", nargs="+", default=None, help="result files of several workers (--report_only)")
    ap.add_argument("--out", default="benchmarks/results/sci_algorithms_d3/all.json")
    args = ap.parse_args()
    out = Path(args.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must name a .json file, got {args.out!r}")
    unknown = sorted(set(args.learners) - set(LEARNERS))
    if unknown:
        raise SystemExit(f"unknown --learners {unknown}: one of {sorted(LEARNERS)}")
    if not 0 <= args.worker < args.workers:
        raise SystemExit(f"--worker must be in [0, --workers={args.workers}), got {args.worker}")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "machine": machine(), "commit": STARTED_AT}
    if args.report_only:
        runs, metas = merge_worker_results(args.inputs or [out], key=lambda r: (r["learner"], r["seed"]))
        report(runs, out, {**meta, "workers": metas})
        return
    logging.basicConfig(level=logging.WARNING)
    runs = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    done = {(r["learner"], r["seed"]) for r in runs}
    todo = [(name, seed) for seed in args.seeds for name in args.learners]
    todo = [t for i, t in enumerate(todo) if i % args.workers == args.worker and t not in done]
    prepared = prepare_sci(DataArgs(data_dir=args.data_dir, max_train_samples=args.max_train_samples)) if todo else None
    for name, seed in todo:
        row = run_one(name, seed, prepared, args)
        runs.append(row)
        out.write_text(json.dumps({**meta, "runs": runs}, indent=1))
        last = row["epochs"][-1]
        print(f"{name:<18} seed {seed}: test per epoch {[round(100 * e['test_accuracy'], 1) for e in row['epochs']]} "
              f"entropy {last['entropy']:.2f} bits ({row['train_seconds']:.0f}s)", flush=True)
    report(runs, out, meta)


if __name__ == "__main__":
    main()
