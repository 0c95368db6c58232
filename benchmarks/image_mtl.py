"""MNIST-MTL benchmark for issue 7 (thesis section 5, Figures 5.3 and 5.5): accuracy of every
image multi-task method over seeds, and the per-task training cost as the number of modules grows.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/image_mtl.py --seeds 0 1 2 --epochs 2 \
        --per_class 200 --out benchmarks/results/image_mtl.json

Accuracy: MNIST-MTL (ten one-vs-rest digit tasks; train ``--per_class`` positives and ``--per_class``
of each other digit per task; validation and test ``--test_per_task`` samples per task, half
positive) is built once (``--data_seed``); every method of ``--methods`` is trained with the
recipe's defaults (``recipes/image_mtl.py``: Adam 1e-3 for the blocks, routers at 10x) through the
shared loop, once per ``--seeds`` (initialisation, data order and router seed); test accuracy at the
best validation epoch.

Cost (``--cost``): for each method of ``--cost_methods`` and each N of ``--cost_modules`` a model with
N tasks (= N modules per routed layer / N cross-stitch columns / N mixture experts) is trained by
the shared loop (``train``) on ``--cost_steps`` copies of one fixed batch (``--batch_size`` real
samples of the first N tasks, balanced); ``train_seconds / steps`` is the time of one training step
(forward, router and task losses, backward, both optimizer steps). The models are measured
interleaved (rep -> method -> N) ``--cost_reps`` times; each rep's time is divided by the N=2 time
of the same method and rep, and the medians over reps are reported.

Every run is appended to ``--out`` as it finishes; ``--resume`` skips finished runs; several
workers can write separate ``--out`` files and ``--report_only --inputs a.json b.json`` merges them
into the table, the JSON summary and the plot (``--out`` with ``.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps
from torch.utils.data import DataLoader

from nli_routing.experiments.bench import commit, machine, merge_worker_results
from nli_routing.experiments.image import (
    IMAGE_TRAIN_DEFAULTS,
    ImageDataArgs,
    load_image_mtl,
    run_image_method,
)
from nli_routing.models.vision import VISION_METHODS, ImageMTLCollator, VisionMTLConfig, VisionMTLModel
from nli_routing.training.loop import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[1]

#: (row name, method); the thesis' Figure 5.3 baselines first, routing variants after
ROWS = [
    ("routing (all-fc, tabular)", "routing"),
    ("routing-recurrent", "routing-recurrent"),
    ("routing-single-agent", "routing-single-agent"),
    ("routing-dispatched", "routing-dispatched"),
    ("soft-mixture", "soft-mixture"),
    ("shared-bottom (task-spec-1-fc)", "shared-bottom"),
    ("task-specific-all-fc", "task-specific-all-fc"),
    ("cross-stitch", "cross-stitch"),
    ("fixed-random-fc", "fixed-random-fc"),
    ("fixed-random-conv3", "fixed-random-conv3"),
    ("task-routing-layer", "task-routing-layer"),
    ("no sharing", "no-sharing"),
    ("routing in conv 1 (+ all fc)", "routing-conv1"),
    ("routing in conv 1,2,3 (+ all fc)", "routing-conv123"),
    ("routing, balance 0.5", "routing/balance"),
    ("routing in conv 1, balance 0.5", "routing-conv1/balance"),
    ("routing in conv 1,2,3, balance 0.5", "routing-conv123/balance"),
]
CORE = ["routing", "shared-bottom", "task-specific-all-fc", "cross-stitch", "soft-mixture",
        "fixed-random-fc", "fixed-random-conv3", "task-routing-layer"]
EXTRA = ["routing-recurrent", "routing-single-agent", "routing-dispatched"]
#: method aliases: (VisionMTLConfig.method, other config fields); "Re-examining Routing Networks" Table 2
ALIASES = {"routing-conv1": ("routing", {"routed_convs": "1"}), "routing-conv123": ("routing", {"routed_convs": "1,2,3"})}
# the same learned rows with the capacity balance (issue 29's fix of collapse; the vision default is no balance)
for _name in ("routing", "routing-conv1", "routing-conv123"):
    _base, _fields = ALIASES.get(_name, (_name, {}))
    ALIASES[f"{_name}/balance"] = (_base, {**_fields, "router_balance_share": 0.5})
#: "Re-examining Routing Networks" Table 2's rows (MNIST-MTL), compared with Welch's t-test
REEXAMINING = ["no-sharing", "shared-bottom", "fixed-random-fc", "fixed-random-conv3", "routing", "routing-conv1",
               "routing-conv123", "routing/balance", "routing-conv1/balance", "routing-conv123/balance"]
#: thesis (Routing Networks, MNIST-MTL): routing beats these by about this many accuracy points
THESIS_MARGINS = {"task-specific-all-fc": 3.0, "cross-stitch": 9.0}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval (0 for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, float(sps.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


# ---------------------------------------------------------------- accuracy


def accuracy_runs(args, runs: list[dict], out: Path, meta: dict) -> None:
    done = {(r["method"], r["seed"]) for r in runs if r["kind"] == "accuracy"}
    todo = [(s, m) for s in args.seeds for m in args.methods if (m, s) not in done]
    if not todo:
        return
    t0 = time.time()
    dsd = load_image_mtl(ImageDataArgs(dataset="mnist-mtl", data_path=args.data_path, per_class=args.per_class,
                                       test_per_task=args.test_per_task, data_seed=args.data_seed))
    sizes = {k: len(v) for k, v in dsd.items()}
    print(f"MNIST-MTL built in {time.time() - t0:.0f}s: {sizes}", flush=True)
    meta["split_sizes"] = sizes
    for seed, method in todo:
        cfg = TrainConfig(epochs=args.epochs, seed=seed, cpu=True, progress=False, batch_size=args.batch_size,
                          **IMAGE_TRAIN_DEFAULTS)
        base, fields = ALIASES.get(method, (method, {}))
        res = run_image_method(base, dsd, VisionMTLConfig(**fields), cfg, None)
        fin = res["final"]
        runs.append({
            "kind": "accuracy", "method": method, "seed": seed,
            "test_accuracy": fin["test"]["accuracy"], "validation_accuracy": fin["validation"]["accuracy"],
            "test_per_task": fin["test"]["accuracy_per_meta"], "best_epoch": res["best_epoch"],
            "train_seconds": res["train_seconds"],
            "validation_history": [h["validation"]["accuracy"] for h in res["history"]],
            "train_loss_history": [h["train_loss"] for h in res["history"]],
            "collapse_warnings": [h.get("collapse_warnings") for h in res["history"]],
            "test_routing_entropy": {k: v for k, v in fin["test"].items() if k.startswith("routing_entropy")},
        })
        print(f"{method:<22} seed {seed}: test {fin['test']['accuracy']:.4f} val {fin['validation']['accuracy']:.4f} "
              f"best epoch {res['best_epoch']} ({res['train_seconds']:.0f}s)", flush=True)
        out.write_text(json.dumps({**meta, "runs": runs}, indent=1))


# ---------------------------------------------------------------- cost per training step


def fixed_batch(dsd, n_tasks: int, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch_size`` training samples of tasks ``0..n_tasks-1`` (as balanced as possible), collated."""
    rng = np.random.default_rng(seed)
    task = np.asarray(dsd["train"]["task"])
    per = [batch_size // n_tasks + (t < batch_size % n_tasks) for t in range(n_tasks)]
    idx = np.concatenate([rng.choice(np.flatnonzero(task == t), k, replace=False) for t, k in enumerate(per)])
    rows = dsd["train"].with_format("numpy").select(rng.permutation(idx).tolist())
    return ImageMTLCollator()([rows[i] for i in range(len(rows))])


def step_seconds(model: VisionMTLModel, batch: dict, steps: int, seed: int) -> float:
    """Mean seconds of one training step of the shared loop over ``steps`` copies of ``batch``."""
    loader = DataLoader([batch] * steps, batch_size=None)  # yields the collated batch as it is
    cfg = TrainConfig(epochs=1, seed=seed, cpu=True, progress=False, select_best=False, **IMAGE_TRAIN_DEFAULTS)
    return train(model, loader, {}, cfg)["train_seconds"] / steps


def cost_runs(args, runs: list[dict], out: Path, meta: dict) -> None:
    done = {(r["conv_layers"], r["method"], r["modules"], r["rep"]) for r in runs if r["kind"] == "cost"}
    dsd = load_image_mtl(ImageDataArgs(dataset="mnist-mtl", data_path=args.data_path, per_class=args.cost_per_class,
                                       test_per_task=10, data_seed=args.data_seed))
    models, batches = {}, {}
    for n in args.cost_modules:
        batches[n] = fixed_batch(dsd, n, args.batch_size)
        for conv in args.cost_conv_layers:
            for method in args.cost_methods:
                torch.manual_seed(0)
                # conv_channels=1 with conv_layers=0: VisionMTLModel sizes the first FC layer with
                # conv_channels even when there is no conv layer (the image has 1 channel)
                cfg = VisionMTLConfig(method=method, num_meta=n, conv_layers=conv, **({} if conv else {"conv_channels": 1}))
                models[conv, method, n] = VisionMTLModel(cfg)
                step_seconds(models[conv, method, n], batches[n], args.cost_warmup, seed=0)  # warm-up, not recorded
    for rep in range(args.cost_reps):
        for conv in args.cost_conv_layers:
            for method in args.cost_methods:
                for n in args.cost_modules:
                    if (conv, method, n, rep) in done:
                        continue
                    s = step_seconds(models[conv, method, n], batches[n], args.cost_steps, seed=rep)
                    runs.append({"kind": "cost", "conv_layers": conv, "method": method, "modules": n, "rep": rep,
                                 "step_seconds": s, "steps": args.cost_steps, "batch_size": args.batch_size})
            print(f"cost rep {rep} conv_layers={conv}: " + "  ".join(
                f"{m} " + "/".join(f"{1000 * r['step_seconds']:.1f}" for r in runs if r["kind"] == "cost"
                                   and r["rep"] == rep and r["method"] == m and r["conv_layers"] == conv)
                for m in args.cost_methods) + " ms", flush=True)
        out.write_text(json.dumps({**meta, "runs": runs}, indent=1))


# ---------------------------------------------------------------- report


def cost_key(conv_layers: int) -> str:
    return f"{conv_layers} conv + 3 FC" if conv_layers else "FC only (no conv)"


def summarize(runs: list[dict]) -> dict:
    acc: dict = {}
    for _, method in ROWS:
        sel = sorted((r for r in runs if r["kind"] == "accuracy" and r["method"] == method), key=lambda r: r["seed"])
        if not sel:
            continue
        vals = [r["test_accuracy"] for r in sel]
        m, ci = mean_ci(vals)
        acc[method] = {"mean": m, "ci95": ci, "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                       "n": len(sel), "seeds": [r["seed"] for r in sel], "values": vals,
                       "train_seconds": statistics.fmean(r["train_seconds"] for r in sel)}
    cost: dict = {}
    costs = [r for r in runs if r["kind"] == "cost"]
    for conv, method in sorted({(r["conv_layers"], r["method"]) for r in costs}, key=lambda x: (-x[0], x[1])):
        mine = [r for r in costs if r["conv_layers"] == conv and r["method"] == method]
        base = {r["rep"]: r["step_seconds"] for r in mine if r["modules"] == 2}
        for n in sorted({r["modules"] for r in mine}):
            sel = [r for r in mine if r["modules"] == n]
            ratios = [r["step_seconds"] / base[r["rep"]] for r in sel if r["rep"] in base]
            cost.setdefault(cost_key(conv), {}).setdefault(method, {})[str(n)] = {
                "median_step_ms": 1000 * statistics.median(r["step_seconds"] for r in sel),
                "median_ratio_to_2": statistics.median(ratios) if ratios else None,
                "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                "reps": len(sel),
            }
    return {"accuracy": acc, "cost": cost}


def table(summary: dict) -> str:
    lines = [f"{'method':<32}{'test acc % (mean ± 95% CI)':>28}{'seeds':>24}{'train s':>9}", "-" * 93]
    for name, method in ROWS:
        v = summary["accuracy"].get(method)
        if v:
            seeds = " ".join(f"{100 * x:.1f}" for x in v["values"])
            lines.append(f"{name:<32}{100 * v['mean']:>18.1f} ± {100 * v['ci95']:<7.1f}{seeds:>24}"
                         f"{v['train_seconds']:>9.0f}")
    for variant, by_method in summary["cost"].items():
        ns = sorted({int(n) for c in by_method.values() for n in c})
        lines += ["", f"time per training step ({variant}), median ratio to N=2 (median ms in brackets)",
                  f"{'method':<16}" + "".join(f"{'N=' + str(n):>18}" for n in ns), "-" * (16 + 18 * len(ns))]
        for method, c in by_method.items():
            cells = []
            for n in ns:
                v = c.get(str(n))
                cells.append(f"{v['median_ratio_to_2']:.2f}x ({v['median_step_ms']:.1f})" if v else "-")
            lines.append(f"{method:<16}" + "".join(f"{x:>18}" for x in cells))
    return "\n".join(lines)


def claims(summary: dict, runs: list[dict]) -> list[str]:
    acc = summary["accuracy"]
    lines = []

    def vals(m):
        return [r["test_accuracy"] for r in runs if r["kind"] == "accuracy" and r["method"] == m]

    if "routing" in acc:
        for other, margin in THESIS_MARGINS.items():
            if other not in acc:
                continue
            d = 100 * (acc["routing"]["mean"] - acc[other]["mean"])
            p = (sps.ttest_ind(vals("routing"), vals(other), equal_var=False).pvalue
                 if min(len(vals("routing")), len(vals(other))) > 1 else float("nan"))
            lines.append(f"routing - {other}: {d:+.1f} points (thesis: about +{margin:.0f}); Welch p = {p:.2f}")
        ranked = sorted(acc, key=lambda m: -acc[m]["mean"])
        lines.append(f"ranking by mean test accuracy: {', '.join(ranked)}")
    for ref in ("no-sharing", "shared-bottom"):  # "Re-examining Routing Networks" Table 2
        if ref not in acc:
            continue
        for other in REEXAMINING:
            if other == ref or other not in acc:
                continue
            d = 100 * (acc[other]["mean"] - acc[ref]["mean"])
            p = (sps.ttest_ind(vals(other), vals(ref), equal_var=False).pvalue
                 if min(len(vals(other)), len(vals(ref))) > 1 else float("nan"))
            lines.append(f"{other} - {ref}: {d:+.1f} points; Welch p = {p:.3f}")
    for variant, by_method in summary["cost"].items():
        for method, c in by_method.items():
            ns = sorted(int(n) for n in c)
            if len(ns) > 1:
                lo, hi = ns[0], ns[-1]
                lines.append(f"cost ({variant}) {method}: step time x{c[str(hi)]['median_ratio_to_2']:.2f} from "
                             f"N={lo} to N={hi} (modules x{hi / lo:.1f})")
    return lines


def plot(summary: dict, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(summary["cost"])
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    ax = axes[0, 0]
    names = [(n, m) for n, m in ROWS if m in summary["accuracy"]]
    for i, (n, m) in enumerate(names):
        v = summary["accuracy"][m]
        ax.barh(i, 100 * v["mean"], xerr=100 * v["ci95"], color="C0" if m.startswith("routing") else "C7", alpha=0.8)
        ax.plot([100 * x for x in v["values"]], [i] * len(v["values"]), "k.", ms=4)
    ax.set_yticks(range(len(names)), [n for n, _ in names])
    ax.invert_yaxis()
    lo = min((100 * min(v["values"]) for v in summary["accuracy"].values()), default=50)
    ax.set_xlim(max(0, lo - 5), 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("MNIST-MTL accuracy (mean, 95% CI, dots = seeds)")
    if summary["cost"]:
        ax = axes[0, 1]
        colors = {m: f"C{i}" for i, m in enumerate(sorted({m for v in summary["cost"].values() for m in v}))}
        for j, (variant, by_method) in enumerate(summary["cost"].items()):
            for method, c in by_method.items():
                ns = sorted(int(n) for n in c)
                ax.plot(ns, [c[str(n)]["median_ratio_to_2"] for n in ns], "o-" if j == 0 else "s--",
                        color=colors[method], label=f"{method} ({variant})")
                ax.fill_between(ns, [c[str(n)]["ratio_min"] for n in ns], [c[str(n)]["ratio_max"] for n in ns],
                                color=colors[method], alpha=0.12)
        ax.set_xlabel("tasks = modules per layer (N)")
        ax.set_ylabel("time per training step / time at N=2")
        ax.set_title("training cost vs modules (median, band = min..max over reps)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: list[dict], out: Path, meta: dict) -> None:
    summary = summarize(runs)
    plot(summary, runs, out.with_suffix(".png"))
    checked = claims(summary, runs)
    out.write_text(json.dumps({**meta, "runs": runs, "summary": summary, "claims": checked}, indent=1))
    print(f"\n{table(summary)}\n")
    print("\n".join(checked))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", default=str(REPO_ROOT.parent / "shared/data/mnist/mnist.npz"))
    ap.add_argument("--per_class", type=int, default=200, help="training samples per class and task (thesis: 1000)")
    ap.add_argument("--test_per_task", type=int, default=200)
    ap.add_argument("--data_seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=CORE + EXTRA)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--cost", action="store_true", help="run the cost-vs-modules measurement (instead of accuracy)")
    ap.add_argument("--cost_methods", nargs="+", default=["routing", "cross-stitch", "soft-mixture", "shared-bottom"],
                    help="shared-bottom: reference, only its N task heads grow with N")
    ap.add_argument("--cost_modules", nargs="+", type=int, default=[2, 3, 5, 10])
    ap.add_argument("--cost_conv_layers", nargs="+", type=int, default=[4, 0],
                    help="4: the Base convnet; 0: the FC part alone (isolates the routed/mixed layers)")
    ap.add_argument("--cost_reps", type=int, default=7)
    ap.add_argument("--cost_steps", type=int, default=20)
    ap.add_argument("--cost_warmup", type=int, default=5)
    ap.add_argument("--cost_per_class", type=int, default=20, help="data only sampled for the fixed batches")
    ap.add_argument("--out", default="benchmarks/results/image_mtl.json")
    ap.add_argument("--resume", action="store_true", help="skip runs already in --out")
    ap.add_argument("--report_only", action="store_true", help="merge --inputs (or --out) into the report")
    ap.add_argument("--inputs", nargs="+", default=None, help="result files of several workers (--report_only)")
    args = ap.parse_args()
    unknown = [m for m in args.methods if m not in ALIASES and m not in VISION_METHODS]
    if unknown:  # a wrong name fails now, in one line, not after the other methods' runs
        ap.error(f"--methods {unknown[0]}: unknown; choose from {sorted(VISION_METHODS)} or {sorted(ALIASES)}")
    out = Path(args.out)
    if args.report_only:
        unique, metas = merge_worker_results(
            args.inputs or [args.out],
            key=lambda r: (r["kind"], r["method"], r.get("seed"), r.get("conv_layers"), r.get("modules"), r.get("rep")),
            meta_keys=("machine", "commit", "args", "split_sizes", "wall_seconds"),
        )
        report(unique, out, {"workers": metas})
        return
    logging.basicConfig(level=logging.WARNING)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    meta = {"machine": machine(), "commit": commit(), "args": vars(args)}
    started = time.time()
    if args.cost:
        cost_runs(args, runs, out, meta)
    else:
        accuracy_runs(args, runs, out, meta)
    meta["wall_seconds"] = time.time() - started
    print(f"wall time {meta['wall_seconds']:.0f}s")
    report(runs, out, meta)


if __name__ == "__main__":
    main()
