"""SCI joint, thesis Table 5.2: LSTM and MiniLM, each unrouted and routed, and the step-time cost of
routed attention (issue 5).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sci_table52.py --sci_root ../shared/data/sci \
        --lstm_epochs 4 --max_train_samples 5000 --minilm_epochs 1 --max_eval_samples 1000 --seeds 0

(about 30 minutes on one thread of a 2-core CPU; the full budget of issue 18 is ``--variant joint``
or ``disjoint --max_train_samples 0 --max_eval_samples 0``, 15-45 min per MiniLM row; add ``--resume`` to continue a killed run,
``--report_only`` to print the table and redraw the plot from the per-run files.)

Rows (test accuracy at the best validation epoch):

* LSTM none / classifier / I2H / H2H: the methods ``lstm``, ``lstm-classifier``, ``lstm-i2h`` and
  ``lstm-h2h`` of :data:`nli_routing.experiments.nli.METHODS`, on the full training set, run by
  :func:`~nli_routing.experiments.nli.run_method` with the recipe defaults;
* MiniLM none / classifier / attention / block / lora: the packaged MiniLM fine-tuned by
  ``recipes/finetune_routed_transformer.py`` (its job, ``nli_routing.experiments.transformer.finetune``, is called with an argument list) on the
  ``--variant`` split (joint by default), on a fixed random subset of ``--max_train_samples``
  training pairs (0: all), with ``--num_blocks`` routed copies of every attention sublayer
  (attention) or layer (block), or that many rank-``--lora_rank`` experts on every attention and
  feed-forward linear (lora; ``--lora_train_base`` also fine-tunes the pretrained weights);
* the training step time of routed attention (``--num_blocks`` copies) over the unrouted MiniLM:
  forward, router loss, backward and both optimizer steps on one identical batch of SCI pairs,
  alternating blocks of steps of the two models after a warm-up, median of ``--step_repeats``.

Every run is written to ``<output>.runs/<key>.json`` as soon as it ends; ``--resume`` skips the runs
found there, so a killed benchmark continues where it stopped. The combined results go to
``<output>.json`` and a bar chart to ``<output>.png``; ``--report_only`` rebuilds them (and prints
the table) from the per-run files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nli_routing.experiments.transformer import finetune
from nli_routing.experiments.bench import (  # noqa: E402
    StepSetup,
    commit,
    interleaved_step_times,
    machine,
    round_ratio,
    spread_routes,
    step_profile,
)

#: the code this process runs (HEAD may move while a long run goes on)
STARTED_AT = commit()

REPO_ROOT = Path(__file__).resolve().parents[1]

#: (row name, method of METHODS)
LSTM_ROWS = [
    ("LSTM none", "lstm"),
    ("LSTM classifier", "lstm-classifier"),
    ("LSTM I2H", "lstm-i2h"),
    ("LSTM H2H", "lstm-h2h"),
]
#: (row name, --route of the fine-tuning recipe)
MINILM_ROWS = [
    ("MiniLM none", "none"),
    ("MiniLM classifier", "classifier"),
    ("MiniLM attention", "attention"),
    ("MiniLM block", "block"),
    ("MiniLM lora", "lora"),
]




def step_time_ratio(
    make_model: Callable[[str], nn.Module],
    batch: dict[str, torch.Tensor],
    train_cfg: Any,
    routed: str = "attention",
    baseline: str = "none",
    warmup: int = 2,
    steps_per_block: int = 3,
    repeats: int = 5,
) -> dict[str, Any]:
    """Training step time of ``make_model(routed)`` over ``make_model(baseline)`` on the same batch.

    Both models train (dropout and exploration on) with the optimizers of the shared loop and its
    own step (:class:`common.StepSetup`); the times come from interleaved rounds
    (:func:`common.interleaved_step_times`) and the ratio is the median of the per-round ratios.
    Returns the ratio, both step times (ms), the per-round ratios and a per-phase breakdown (ms).
    """
    setups = {kind: StepSetup(make_model(kind), batch, train_cfg) for kind in (baseline, routed)}
    times = interleaved_step_times(setups, warmup=warmup, rounds=repeats, steps_per_round=steps_per_block)
    groups = None
    try:  # copies used per routed position in the last routed step (grouping cost grows with it)
        from nli_routing.models.transformer import get_controller

        traj = get_controller(setups[routed].model).last_trajectory
        if traj is not None:
            groups = [int(traj.actions[:, p].unique().numel()) for p in range(traj.actions.shape[1])]
    except (ValueError, AttributeError):
        pass
    return {
        "ratio": round_ratio(times, routed, baseline),
        "routed": routed,
        "baseline": baseline,
        "routed_ms": times["ms"][routed],
        "baseline_ms": times["ms"][baseline],
        "round_ratios": [a / b for a, b in zip(times["rounds"][routed], times["rounds"][baseline])],
        "breakdown_ms": {k: step_profile(s, steps=1)["phases_ms"] for k, s in setups.items()},
        "copies_used_per_position": groups,
        "batch_shape": list(batch["input_ids"].shape),
        "warmup": warmup,
        "steps_per_block": steps_per_block,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def profile_steps(make_model: Callable[[str], nn.Module], batch: dict, train_cfg: Any, kinds: list[str],
                  steps: int = 2, top: int = 15) -> dict[str, str]:
    """torch.profiler tables (top ops by self CPU time) of ``steps`` training steps per model kind."""
    return {kind: step_profile(StepSetup(make_model(kind), batch, train_cfg), steps, top)["top_ops"]
            for kind in kinds}


# ---------------------------------------------------------------------- runs
def lstm_run(method: str, prepared, epochs: int, seed: int) -> dict[str, Any]:
    """One LSTM method of METHODS trained and tested by run_method (recipe defaults)."""
    from nli_routing.models.nli import NLIModelConfig
    from nli_routing.models.transformer import count_parameters
    from nli_routing.experiments.nli import METHODS, RECIPE_TRAIN_DEFAULTS, build_model, run_method
    from nli_routing.training.loop import TrainConfig

    model_cfg = NLIModelConfig()
    overrides = {"num_meta": len(prepared.meta_names), "router_seed": seed, **METHODS[method][0]}
    params = count_parameters(build_model(model_cfg, overrides, prepared.vectors))  # the model run_method builds
    cfg = TrainConfig(**RECIPE_TRAIN_DEFAULTS, epochs=epochs, seed=seed, cpu=True, progress=False)
    res = run_method(method, prepared, model_cfg, cfg)
    final = res["final"]
    return {
        "test_accuracy": final["test"]["accuracy"],
        "validation_accuracy": final["validation"]["accuracy"],
        "test_rows": final["test"]["n"],
        "validation_rows": final["validation"]["n"],
        "best_epoch": res["best_epoch"],
        "train_seconds": res["train_seconds"],
        "routing_entropy": res["summary"].get("routing_entropy"),
        "validation_history": [h["validation"]["accuracy"] for h in res["history"]],
        "parameters": params,
        "train_config": {"optimizer": cfg.block_optimizer, "lr": cfg.lr, "router_lr_ratio": cfg.router_lr_ratio,
                         "batch_size": cfg.batch_size},
    }


def minilm_run(route: str, args: argparse.Namespace, seed: int, work_dir: Path) -> dict[str, Any]:
    """One route of the fine-tuning recipe (its job, called with an argument list)."""
    out = work_dir / f"minilm-{route}-seed{seed}"
    argv = ["--route", route, "--num_blocks", str(args.num_blocks), "--data_dir", str(Path(args.sci_root) / args.variant),
            "--epochs", str(args.minilm_epochs), "--seed", str(seed), "--cpu", "--progress", "false",
            "--output_dir", str(out)]
    if route == "lora":
        argv += ["--lora_rank", str(args.lora_rank), "--lora_train_base", str(args.lora_train_base)]
    if args.max_train_samples:
        argv += ["--max_train_samples", str(args.max_train_samples)]
    if args.max_eval_samples:
        argv += ["--max_eval_samples", str(args.max_eval_samples)]
    summary = finetune(argv)
    payload = json.loads((out / "results.json").read_text())
    run = payload["run"]
    train_args = payload["args"]["train"]
    for f in (out / route).glob("model.safetensors"):
        f.unlink()  # checkpoints of 90-250 MB are not kept
    return {
        "test_accuracy": summary["test_accuracy"],
        "validation_accuracy": summary["validation_accuracy"],
        "test_rows": run["final"]["test"]["n"],
        "validation_rows": run["final"]["validation"]["n"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["train_seconds"],
        "routing_entropy": summary.get("routing_entropy"),
        "routing_layers": summary.get("routing_layers"),
        "collapse_warnings": summary.get("collapse_warnings"),
        "validation_history": [h["validation"]["accuracy"] for h in run["history"]],
        "parameters": summary["parameters"],
        "recipe_argv": argv,
        "train_config": {k: train_args[k] for k in ("block_optimizer", "lr", "router_lr_ratio", "batch_size")},
    }


def sci_batch(sci_root: str, size: int, tokenizer, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``size`` random SCI joint training pairs, encoded and collated as the recipe does, and the
    signature names."""
    from nli_routing.data.sci import load_sci
    from nli_routing.models.transformer import PairCollator, encode_pairs

    train = load_sci(Path(sci_root) / "joint")["train"]
    rows = encode_pairs(train.shuffle(seed=seed).select(range(size)), tokenizer, 128)
    columns = ("input_ids", "attention_mask", "token_type_ids", "label", "signature")
    keep = [c for c in columns if c in rows.column_names]
    rows = rows.select_columns(keep).with_format(None)
    names = list(train.features["signature"].names)
    return PairCollator(tokenizer.pad_token_id, "signature")([rows[i] for i in range(size)]), names


def minilm_factory(num_blocks: int, num_meta: int, spread: bool = True) -> Callable[[str], nn.Module]:
    """Builds the packaged MiniLM NLI model per route (``spread``: random router tables, see
    :func:`common.spread_routes`)."""
    from nli_routing.models.embeddings import default_model_path
    from nli_routing.models.transformer import RoutedTransformerForNLI, TransformerNLIConfig

    path = default_model_path()

    def make(route: str) -> nn.Module:
        torch.manual_seed(0)
        model = RoutedTransformerForNLI(TransformerNLIConfig(
            route=route, num_blocks=num_blocks, num_meta=num_meta, model_name_or_path=path))
        if spread:
            spread_routes(model)
        return model

    return make


def step_time_run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from nli_routing.models.embeddings import default_model_path
    from nli_routing.models.transformer import count_parameters
    from nli_routing.training.loop import TrainConfig

    from nli_routing.experiments.transformer import TRAIN_DEFAULTS

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    batch, names = sci_batch(args.sci_root, args.step_batch, tokenizer)
    make = minilm_factory(args.num_blocks, len(names))
    cfg = TrainConfig(**TRAIN_DEFAULTS, cpu=True)
    res = step_time_ratio(make, batch, cfg, warmup=args.step_warmup, steps_per_block=args.step_block,
                          repeats=args.step_repeats)
    res["parameters"] = {k: count_parameters(make(k)) for k in ("none", "attention")}
    res["num_blocks"] = args.num_blocks
    res["train_config"] = {"block_optimizer": cfg.block_optimizer, "lr": cfg.lr, "router_lr_ratio": cfg.router_lr_ratio}
    if res["ratio"] > args.profile_above or args.profile:
        res["profile"] = profile_steps(make, batch, cfg, ["none", "attention"])
    return res


# ---------------------------------------------------------------------- report
def table(runs: list[dict], step: dict | None) -> str:
    head = (f"{'row':<19}{'seed':>5}{'test acc':>9}{'val acc':>9}{'best ep':>8}{'epochs':>7}{'train rows':>11}"
            f"{'test rows':>10}{'params':>12}{'trainable':>12}{'router':>8}{'train s':>8}")
    lines = [head, "-" * len(head)]
    for r in runs:
        p = r["parameters"]
        lines.append(
            f"{r['name']:<19}{r['seed']:>5}{100 * r['test_accuracy']:>9.1f}{100 * r['validation_accuracy']:>9.1f}"
            f"{r['best_epoch'] + 1:>8}{r['epochs']:>7}{r['train_rows']:>11,}{r['test_rows']:>10,}"
            f"{p['total']:>12,}{p['trainable']:>12,}{p['router']:>8,}{r['train_seconds']:>8.0f}"
        )
    if step:
        lines.append("")
        lines.append(
            f"step time, batch {step['batch_shape'][0]} x {step['batch_shape'][1]} tokens, 1 process "
            f"{step['threads']} thread(s): MiniLM none {step['baseline_ms']:.0f} ms, routed attention "
            f"(b={step['num_blocks']}) {step['routed_ms']:.0f} ms -> ratio {step['ratio']:.2f}x "
            f"(median of per-round ratios {statistics.median(step['round_ratios']):.2f}, range "
            f"{min(step['round_ratios']):.2f}-{max(step['round_ratios']):.2f}; copies used per position "
            f"{step['copies_used_per_position']})"
        )
        for kind, phases in step["breakdown_ms"].items():
            lines.append(f"  {kind:<10} " + "  ".join(f"{k} {v:.1f}" for k, v in phases.items()) + "  (median ms)")
    return "\n".join(lines)


def plot(runs: list[dict], step: dict | None, path: Path, majority: float | None = None,
         variant: str = "joint") -> None:
    """Bar chart of test accuracy per row (LSTM rows grey-blue, MiniLM rows green; unrouted darker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    names = [r["name"] for r in runs]
    acc = [100 * r["test_accuracy"] for r in runs]
    colors = [("#2b5c8a" if r["name"].endswith("none") else "#7fa7cf") if r["kind"] == "lstm"
              else ("#2e7d32" if r["name"].endswith("none") else "#8bc48e") for r in runs]
    bars = ax.bar(range(len(runs)), acc, color=colors)
    for b, a in zip(bars, acc):
        ax.text(b.get_x() + b.get_width() / 2, a + 0.5, f"{a:.1f}", ha="center", fontsize=8)
    if majority:
        ax.axhline(100 * majority, color="black", ls="--", lw=0.8)
        ax.text(len(runs) - 0.5, 100 * majority + 0.5, f"majority class {100 * majority:.1f}", ha="right", fontsize=7)
    ax.set_xticks(range(len(runs)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(30, 100)
    lstm = next((r for r in runs if r["kind"] == "lstm"), None)
    mini = next((r for r in runs if r["kind"] == "minilm"), None)
    parts = []
    if lstm:
        parts.append(f"LSTM: {lstm['train_rows']:,} train rows, {lstm['epochs']} ep")
    if mini:
        parts.append(f"MiniLM: {mini['train_rows']:,} train rows, {mini['epochs']} ep, {mini['test_rows']:,} test rows")
    if step:
        parts.append(f"routed attention step {step['ratio']:.2f}x")
    ax.set_title(f"SCI {variant} (Table 5.2 rows), seed " + ",".join(sorted({str(r["seed"]) for r in runs})) + "\n"
                 + "; ".join(parts), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def majority_rate(sci_root: str, variant: str = "joint") -> float | None:
    try:
        rows = [json.loads(line) for line in (Path(sci_root) / variant / "test.jsonl").read_text().splitlines() if line]
    except OSError:
        return None
    labels = [r["label"] for r in rows]
    return max(labels.count(x) for x in set(labels)) / len(labels)


def collect(runs_dir: Path) -> tuple[list[dict], dict | None]:
    order = {name: i for i, (name, _) in enumerate(LSTM_ROWS + MINILM_ROWS)}
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json")) if p.name != "steptime.json"]
    runs.sort(key=lambda r: (order.get(r["name"], 99), r["seed"]))
    step_file = runs_dir / "steptime.json"
    return runs, json.loads(step_file.read_text()) if step_file.exists() else None


def report(out: Path, runs_dir: Path, args: argparse.Namespace, wall: float | None) -> None:
    """Write ``<output>.json`` and ``.png`` from the per-run files and print the table. With
    ``--report_only`` (``wall`` None) the machine, commit, arguments and wall time of the run that
    made the files are kept from the existing ``<output>.json``."""
    runs, step = collect(runs_dir)
    majority = majority_rate(args.sci_root, args.variant)
    combined = {"machine": machine(), "commit": STARTED_AT, "command": sys.argv, "args": vars(args),
                "wall_seconds": wall}
    if wall is None and out.with_suffix(".json").exists():
        previous = json.loads(out.with_suffix(".json").read_text())
        combined.update({k: previous[k] for k in combined if k in previous})
    combined.update({"majority_class_test": majority, "runs": runs, "step_time": step})
    out.with_suffix(".json").write_text(json.dumps(combined, indent=1))
    if runs:
        plot(runs, step, out.with_suffix(".png"), majority, args.variant)
    wall = combined["wall_seconds"]
    print(f"\n{table(runs, step)}\n\nmachine: {combined['machine']}; commit {combined['commit']}"
          + (f"; wall time {wall:.0f}s" if wall is not None else "") + f"\nresults: {out.with_suffix('.json')}")
    if step and step.get("profile"):
        for kind, text in step["profile"].items():
            print(f"\nprofile ({kind}, top ops by self CPU time):\n{text}")


# ---------------------------------------------------------------------- main
def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sci_root", default="../shared/data/sci")
    ap.add_argument("--output", default="benchmarks/results/sci_table52",
                    help="results prefix: <output>.json, <output>.png and per-run files in <output>.runs/")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--variant", default="joint", choices=["joint", "disjoint", "mismatch"],
                    help="SCI split of the MiniLM rows (folder under --sci_root)")
    parts = ["steptime", "lstm", "minilm"]
    ap.add_argument("--parts", nargs="+", default=parts, choices=parts, help="what to run")
    ap.add_argument("--rows", nargs="+", default=None, help="run only these rows (e.g. 'MiniLM block')")
    ap.add_argument("--lstm_epochs", type=int, default=4)
    ap.add_argument("--lstm_max_train_samples", type=int, default=None, help="cap the LSTM training set")
    ap.add_argument("--minilm_epochs", type=int, default=1)
    ap.add_argument("--max_train_samples", type=int, default=5000,
                    help="MiniLM: fixed random subset of the training pairs (0 = all)")
    ap.add_argument("--max_eval_samples", type=int, default=1000,
                    help="MiniLM: first rows of validation and test (the files are shuffled; 0 = all)")
    ap.add_argument("--num_blocks", type=int, default=4, help="routed copies b of MiniLM attention / block / lora")
    ap.add_argument("--lora_rank", type=int, default=8, help="rank r of the routed low-rank experts (lora row)")
    ap.add_argument("--lora_train_base", type=_flag, default=True,
                    help="lora row: also fine-tune the pretrained weights (true: the same budget as the none row "
                         "plus b routed rank-r deltas; false: frozen as in LoRA)")
    ap.add_argument("--step_batch", type=int, default=32, help="pairs per batch of the step-time measurement")
    ap.add_argument("--step_warmup", type=int, default=2)
    ap.add_argument("--step_block", type=int, default=3, help="consecutive steps per timed block")
    ap.add_argument("--step_repeats", type=int, default=7, help="timed rounds (each: a block of each model)")
    ap.add_argument("--profile", action="store_true", help="always profile the step (else only above --profile_above)")
    ap.add_argument("--profile_above", type=float, default=1.2)
    ap.add_argument("--work_dir", default=None, help="recipe outputs (default: a temporary folder, removed)")
    ap.add_argument("--resume", action="store_true",
                    help="skip runs whose per-run file exists with the same settings (else runs are redone)")
    ap.add_argument("--report_only", action="store_true",
                    help="only rebuild the table, JSON and plot from the per-run files")
    args = ap.parse_args(argv)
    out = Path(args.output)
    runs_dir = out.with_name(out.name + ".runs")
    if args.report_only:
        report(out, runs_dir, args, None)
        return
    if not (Path(args.sci_root) / "joint").exists():
        raise SystemExit(f"{Path(args.sci_root) / 'joint'} does not exist (see ../shared/data/README.md)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    logging.basicConfig(level=logging.WARNING)
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tmp = tempfile.TemporaryDirectory(prefix="sci_table52_") if args.work_dir is None else None
    work_dir = Path(args.work_dir or tmp.name)

    def cached(key: str, settings: dict) -> dict | None:
        f = runs_dir / f"{key}.json"
        if args.resume and f.exists():
            old = json.loads(f.read_text())
            if old.get("settings") == settings:
                print(f"{key}: cached in {f}", flush=True)
                return old
            print(f"{key}: cached with other settings {old.get('settings')}; running again", flush=True)
        return None

    def save(key: str, record: dict) -> None:
        tmp_file = runs_dir / f"{key}.json.tmp"
        tmp_file.write_text(json.dumps(record, indent=1))
        tmp_file.replace(runs_dir / f"{key}.json")

    wanted = (lambda name: args.rows is None or name in args.rows)
    if "steptime" in args.parts:
        names = ("num_blocks", "step_batch", "step_warmup", "step_block", "step_repeats")
        settings = {k: getattr(args, k) for k in names}
        if cached("steptime", settings) is None:
            t = time.time()
            res = step_time_run(args)
            save("steptime", {"settings": settings, "wall_seconds": time.time() - t, **res})
            print(f"step time: routed attention / none = {res['ratio']:.3f} ({res['routed_ms']:.0f} / "
                  f"{res['baseline_ms']:.0f} ms; {time.time() - t:.0f}s)", flush=True)
    if "lstm" in args.parts and any(wanted(n) for n, _ in LSTM_ROWS):
        from nli_routing.experiments.nli import DataArgs, prepare_sci

        prepared = None
        for seed in args.seeds:
            for name, method in LSTM_ROWS:
                key = f"{method}_seed{seed}"
                settings = {"epochs": args.lstm_epochs, "max_train_samples": args.lstm_max_train_samples}
                if not wanted(name) or cached(key, settings) is not None:
                    continue
                if prepared is None:
                    prepared = prepare_sci(DataArgs(data_dir=str(Path(args.sci_root) / "joint"),
                                                    max_train_samples=args.lstm_max_train_samples))
                t = time.time()
                res = lstm_run(method, prepared, args.lstm_epochs, seed)
                record = {"name": name, "kind": "lstm", "method": method, "seed": seed, "epochs": args.lstm_epochs,
                          "train_rows": len(prepared.data["train"]), "settings": settings,
                          "wall_seconds": time.time() - t, **res}
                save(key, record)
                print(f"{name:<18} seed {seed}: test {res['test_accuracy']:.4f} val {res['validation_accuracy']:.4f} "
                      f"best epoch {res['best_epoch'] + 1} ({time.time() - t:.0f}s)", flush=True)
    if "minilm" in args.parts:
        from nli_routing.data.sci import load_sci

        n_train = len(load_sci(Path(args.sci_root) / args.variant)["train"])
        for seed in args.seeds:
            for name, route in MINILM_ROWS:
                key = f"minilm-{route}_seed{seed}"
                settings = {"epochs": args.minilm_epochs, "max_train_samples": args.max_train_samples,
                            "max_eval_samples": args.max_eval_samples,
                            "num_blocks": args.num_blocks if route in ("attention", "block", "lora") else None}
                if route == "lora":
                    settings.update(lora_rank=args.lora_rank, lora_train_base=args.lora_train_base)
                if args.variant != "joint":
                    settings["variant"] = args.variant
                if not wanted(name) or cached(key, settings) is not None:
                    continue
                t = time.time()
                res = minilm_run(route, args, seed, work_dir)
                train_rows = min(args.max_train_samples or n_train, n_train)
                record = {"name": name, "kind": "minilm", "route": route, "seed": seed, "epochs": args.minilm_epochs,
                          "variant": args.variant,
                          "train_rows": train_rows, "settings": settings, "wall_seconds": time.time() - t, **res}
                save(key, record)
                print(f"{name:<18} seed {seed}: test {res['test_accuracy']:.4f} val {res['validation_accuracy']:.4f} "
                      f"({time.time() - t:.0f}s)", flush=True)
    if tmp is not None:
        tmp.cleanup()
    report(out, runs_dir, args, time.time() - started)


if __name__ == "__main__":
    main()
