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

Figure 5.13 (issue 32) adds the nested signatures: ``--nested_dir`` (default: the project's generated
nested corpus) is added to every split with its signatures renamed ``N<signature>`` (``N+|-``), so
nested implicatives get agents of their own, as in the thesis, and the question "do nested
signatures route near their unnested counterparts" can be asked. ``--shuffle_signatures`` is the
control: every split's signature column permuted at random (seeded), so the meta carries no
information while its class frequencies stay. ``--control DIR`` reads a control's ``summary.json``
and tests the thesis' statements against it (Welch's t over seeds): the named pairs, ``+|+``
isolated, nested signatures nearer their counterparts than other signatures.

    python benchmarks/sci_overlap.py --seeds 0 1 2 3 4 --run_root outputs/fig513 --out benchmarks/results/sci_fig513/real
    python benchmarks/sci_overlap.py --seeds 0 1 2 3 4 --shuffle_signatures --run_root outputs/fig513_shuffled \
        --out benchmarks/results/sci_fig513/shuffled
    python benchmarks/sci_overlap.py --seeds 0 1 2 3 4 --run_root outputs/fig513 --out benchmarks/results/sci_fig513/real \
        --control benchmarks/results/sci_fig513/shuffled
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np

from nli_routing.data import EMBEDDED_SCI
from nli_routing.data.encoding import encode_nli
from nli_routing.data.sci import SIGNATURES, load_sci
from nli_routing.experiments.bench import commit, machine
from nli_routing.experiments.nli import (
    RECIPE_TRAIN_DEFAULTS,
    DataArgs,
    PreparedData,
    prepare_sci,
    run_method,
)
from nli_routing.models.embeddings import load_word_vectors
from nli_routing.models.nli import NLIModelConfig
from nli_routing.training.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NESTED_PREFIX = "N"
#: pairs named by the thesis (section 5.3.4) and the analogue in this corpus where one is missing
THESIS_PAIRS = [("+|.4", "+|.5"), ("-|.7", "-|.9")]
ANALOGUE_PAIRS = [(".9|-", ".4|-")]  # the same implication with two probabilities, as the thesis' pairs


def combined_names() -> list[str]:
    """Joint signatures, then their nested twins ``N<signature>``: one meta class (one agent) each."""
    return [*SIGNATURES, *(NESTED_PREFIX + s for s in SIGNATURES)]


def joint_with_nested(joint: datasets.DatasetDict, nested: datasets.DatasetDict | None,
                      shuffle_seed: int | None) -> datasets.DatasetDict:
    """Each split of ``joint`` with ``nested``'s appended (its signatures renamed ``N<sig>``); with
    ``shuffle_seed`` every split's signature column is then permuted at random (the control)."""
    names = combined_names()
    out = {}
    for split in joint:
        parts = [joint[split]]
        if nested is not None:
            shifted = nested[split].map(lambda b: {"signature": [i + len(SIGNATURES) for i in b["signature"]]},
                                        batched=True, features=datasets.Features(
                                            {**nested[split].features, "signature": datasets.ClassLabel(names=names)}))
            parts.append(shifted)
        parts = [d.cast_column("signature", datasets.ClassLabel(names=names)) for d in parts]
        ds = datasets.concatenate_datasets(parts)
        if shuffle_seed is not None:
            rng = np.random.default_rng(shuffle_seed + {"train": 0, "validation": 1, "test": 2}.get(split, 3))
            sig = np.asarray(ds["signature"])
            ds = ds.remove_columns("signature").add_column(
                "signature", rng.permutation(sig).tolist(), feature=datasets.ClassLabel(names=names))
        out[split] = ds
    return datasets.DatasetDict(out)


def prepare(args: argparse.Namespace, seed: int) -> PreparedData:
    """The data a seed's run trains on (joint, + nested, shuffled for the control)."""
    data_args = DataArgs(data_dir=args.data_dir)  # the recipe's word vectors and sentence length
    if not args.nested_dir and not args.shuffle_signatures:
        return prepare_sci(data_args)
    joint = load_sci(args.data_dir)
    nested = load_sci(args.nested_dir) if args.nested_dir else None
    dsd = joint_with_nested(joint, nested, 1000 + seed if args.shuffle_signatures else None)
    vectors = load_word_vectors(data_args.embeddings)
    dsd = encode_nli(dsd, vectors.tokenizer, max_length=data_args.max_length)
    return PreparedData(dsd, vectors, combined_names(), max_length=data_args.max_length)




def router_settings(run_dir: Path) -> dict:
    """The routers' settings as the run saved them (its model config), not as this script assumes."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        return {}
    cfg = json.loads(cfg_path.read_text())
    keys = ("router", "learner", "exploration", "init_value", "table_init", "router_init", "router_balance_share")
    return {k: v for k, v in cfg.items() if any(w in k for w in keys)}


def prepare_counts(args: argparse.Namespace) -> list[str]:
    """The training split's signature names (the control's permutation keeps their counts)."""
    names = combined_names() if args.nested_dir or args.shuffle_signatures else list(SIGNATURES)
    ids = list(load_sci(args.data_dir, splits=("train",))["train"]["signature"])
    if args.nested_dir:
        ids += [i + len(SIGNATURES) for i in load_sci(args.nested_dir, splits=("train",))["train"]["signature"]]
    return [names[i] for i in ids]


def thesis_checks(classes: list[str], stack: np.ndarray) -> dict:
    """Per seed, the quantities the thesis' statements about Figure 5.13 are about.

    ``stack[k, i, j]``: shared selections of classes i and j in seed k. Returns the named pairs
    (absent when a signature is not in the corpus), ``+|+``'s mean overlap with the others against
    the other signatures' mean, and each nested signature's overlap with its unnested counterpart
    against its mean overlap with the other unnested signatures.
    """
    idx = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    off = ~np.eye(n, dtype=bool)
    out: dict = {"pairs": {}}
    for a, b in THESIS_PAIRS + ANALOGUE_PAIRS:
        key = f"{a} / {b}"
        missing = [c for c in (a, b) if c not in idx]
        out["pairs"][key] = ({"absent": missing} if missing else
                             {"per_seed": stack[:, idx[a], idx[b]].tolist(),
                              "thesis": (a, b) in THESIS_PAIRS})
    if "+|+" in idx:
        i = idx["+|+"]
        others = [j for j in range(n) if j != i and not classes[j].startswith(NESTED_PREFIX)]
        out["isolated_++"] = {
            "per_seed_++_mean_overlap": stack[:, i, others].mean(1).tolist(),
            "per_seed_others_mean_overlap": [
                float(np.mean([m[j][off[j] & ~np.isin(np.arange(n), [i])].mean() for j in others])) for m in stack],
        }
    unnested = [c for c in classes if not c.startswith(NESTED_PREFIX)]
    twins = [c for c in unnested if NESTED_PREFIX + c in idx]
    if twins:
        counterpart, other = [], []
        for m in stack:
            counterpart.append(float(np.mean([m[idx[NESTED_PREFIX + c], idx[c]] for c in twins])))
            other.append(float(np.mean([np.mean([m[idx[NESTED_PREFIX + c], idx[t]] for t in unnested if t != c])
                                        for c in twins])))
        out["nested"] = {"twins": twins, "per_seed_counterpart_overlap": counterpart,
                         "per_seed_other_unnested_overlap": other}
    return out


def compare_to_control(real: dict, control: dict) -> dict:
    """Welch's t-test over seeds of each statistic of :func:`thesis_checks`, real vs control, and the
    paired within-run contrasts (``+|+`` vs the others, a nested signature's counterpart vs the rest)."""
    from scipy import stats as sps

    def test(a: list[float], b: list[float]) -> dict:
        a, b = np.asarray(a, float), np.asarray(b, float)
        t = sps.ttest_ind(a, b, equal_var=False) if len(a) > 1 and len(b) > 1 else None
        p = float(t.pvalue) if t is not None and np.isfinite(t.pvalue) else None
        return {"real_mean": float(a.mean()), "control_mean": float(b.mean()), "difference": float(a.mean() - b.mean()),
                "welch_p": p}

    def paired(a: list[float], b: list[float]) -> dict:
        d = np.asarray(a, float) - np.asarray(b, float)
        t = sps.ttest_1samp(d, 0.0) if len(d) > 1 else None
        p = float(t.pvalue) if t is not None and np.isfinite(t.pvalue) else None
        return {"mean_difference": float(d.mean()), "paired_p": p}

    out: dict = {"pairs": {}}
    for key, r in real["pairs"].items():
        c = control["pairs"].get(key, {})
        out["pairs"][key] = ({"absent": r["absent"]} if "absent" in r else
                             test(r["per_seed"], c["per_seed"]) if "per_seed" in c else {"control": "absent"})
    for key, a, b in (("isolated_++", "per_seed_++_mean_overlap", "per_seed_others_mean_overlap"),
                      ("nested", "per_seed_counterpart_overlap", "per_seed_other_unnested_overlap")):
        if key in real and key in control:
            r, c = real[key], control[key]
            out[key] = {
                "real_contrast": paired(r[a], r[b]), "control_contrast": paired(c[a], c[b]),
                "contrast_real_vs_control": test(np.subtract(r[a], r[b]).tolist(), np.subtract(c[a], c[b]).tolist()),
            }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "sci" / "joint"))
    p.add_argument("--nested_dir", default=str(EMBEDDED_SCI / "nested"),
                   help="nested SCI folder added with signatures N<sig> ('' for joint only, the issue 6 runs)")
    p.add_argument("--shuffle_signatures", action="store_true",
                   help="control: permute every split's signature column (seeded by the run's seed)")
    p.add_argument("--control", default=None, help="a control's --out folder: test the thesis' statements against it")
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
    for flag in ("data_dir", "nested_dir"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_dir():
            p.error(f"--{flag} {getattr(args, flag)}: not a folder")
    if args.control and not (Path(args.control) / "summary.json").is_file():
        p.error(f"--control {args.control}: no summary.json there (run the control with --shuffle_signatures first)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    for seed in args.seeds:
        run_dir = Path(args.run_root) / f"seed{seed}"
        data_key = {"data_dir": str(Path(args.data_dir).resolve()),
                    "nested_dir": str(Path(args.nested_dir).resolve()) if args.nested_dir else None,
                    "shuffle_signatures": args.shuffle_signatures}
        marker = run_dir / "overlap_data.json"
        if marker.is_file() and not args.retrain and json.loads(marker.read_text()) != data_key:
            p.error(f"--run_root {args.run_root}: seed{seed} was trained on other data ({marker}); "
                    "use another --run_root or --retrain")
        if args.retrain or not (run_dir / f"routing_{args.split}.npz").exists():
            prepared = prepare(args, seed)
            model_cfg = NLIModelConfig(route="wp", wp_depth=args.wp_depth, wp_width=args.wp_width)
            train_cfg = TrainConfig(**RECIPE_TRAIN_DEFAULTS, epochs=args.epochs, seed=seed, progress=False)
            result = run_method("wp-signature", prepared, model_cfg, train_cfg, output_dir=run_dir)
            marker.write_text(json.dumps(data_key))
            print(json.dumps(result["summary"], indent=2))
    if args.train_only:
        return {}

    from nli_routing.analysis.overlap import cluster_order
    from nli_routing.analysis.plots import plot_heatmap
    from nli_routing.analysis.report import analyze_run

    out = Path(args.out)
    train = prepare_counts(args)
    freq = Counter(train)
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
                 title=(f"SCI joint{' + nested' if args.nested_dir else ''} test{' (signatures shuffled)' if args.shuffle_signatures else ''}: "
                        f"dominant-path overlap, mean of {len(args.seeds)} seeds"))
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
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)
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
        "nested_dir": args.nested_dir or None,
        "shuffle_signatures": args.shuffle_signatures,
        "machine": machine(),
        "commit": commit(),
        "model": {"route": "wp", "wp_depth": args.wp_depth, "wp_width": args.wp_width,
                  "router": router_settings(Path(args.run_root) / f"seed{args.seeds[0]}")},
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
    summary["classes"] = classes
    summary["matrices"] = stack.tolist()
    summary["thesis_checks"] = thesis_checks(classes, stack)
    if args.control:
        control = json.loads((Path(args.control) / "summary.json").read_text())
        summary["control"] = {"dir": args.control, "commit": control.get("commit"),
                              "versus_control": compare_to_control(
                                  summary["thesis_checks"],
                                  thesis_checks(control["classes"], np.asarray(control["matrices"], float)))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "pairs")}, indent=2))
    for run in runs:
        print(f"seed {run['seed']}: test {run['test_accuracy']:.3f}", json.dumps(run["structure"]))
    print("top pairs:", json.dumps(pairs[:8], indent=1))
    print("thesis checks:", json.dumps(summary.get("control", {}).get("versus_control", summary["thesis_checks"]), indent=1))
    return summary


if __name__ == "__main__":
    main()
