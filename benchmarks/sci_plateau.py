"""Leaving the plateau on SCI (issue 15, sections 1-2): the escape epoch of each setting over seeds.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sci_plateau.py --data_dir ../shared/data/sci/joint \
        --settings default ties-lowest --seeds 0 1 2 3 4 --epochs 5 [--worker 0 --workers 2]

A *setting* is a method of ``experiments/nli.py`` plus recipe flags (``SETTINGS``). Each
(setting, seed) run trains on the full training set with the recipe defaults and records validation
accuracy per epoch; the *escape epoch* is the first epoch (1-based) with validation accuracy >= 75%
(``None``: never). Runs are resumable: each finished run is one JSON file under ``--out``, and runs
already there are skipped; ``--worker i --workers n`` takes every n-th run, so two processes (one
thread each) share the list. ``--summary`` prints the table (escape epochs per seed, final accuracy)
and writes ``<out>/summary.json`` from the files alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path


from nli_routing.experiments.bench import commit, machine  # noqa: E402

from nli_routing.models.nli import NLIModelConfig  # noqa: E402
from nli_routing.experiments.nli import (  # noqa: E402
    RECIPE_TRAIN_DEFAULTS,
    DataArgs,
    prepare_sci,
    resolve_method,
    run_method,
)
from nli_routing.training.loop import TrainConfig  # noqa: E402

ESCAPE = 0.75
STARTED_AT = commit()  # the code this process runs (HEAD may move while it runs)
#: The settings below were measured before the defaults changed (issue 15): each runs on top of
#: ``THESIS`` (the thesis' classifier on [p; h] with 3 hidden layers, Q-learning ties broken at random
#: and table entries moved by their own batch mean), so they reproduce what they measured.
THESIS_MODEL = {"pair_features": "concat", "classifier_layers": 3, "router_init": -1.0}
THESIS_LEARNER = {"ties": "random", "batch_mean": "state-action"}


def _thesis(method: str, model_over: dict, train_over: dict) -> tuple[str, dict, dict]:
    learner = dict(THESIS_LEARNER)
    for kv in filter(None, model_over.get("learner_args", "").split(",")):
        key, value = kv.split("=")
        learner[key] = value
    args = ",".join(f"{k}={v}" for k, v in learner.items())
    return method, {**THESIS_MODEL, **model_over, "learner_args": args}, train_over


#: setting -> (method, model config overrides, train config overrides)
SETTINGS: dict[str, tuple[str, dict, dict]] = {name: _thesis(*spec) for name, spec in {
    "cbow": ("cbow", {}, {}),
    "default": ("wp-signature", {}, {}),
    "ties-lowest": ("wp-signature", {"learner_args": "ties=lowest"}, {}),
    "ties-lowest-noexplore": ("wp-signature", {"learner_args": "ties=lowest", "exploration": "none"}, {}),
    "no-explore": ("wp-signature", {"exploration": "none"}, {}),
    "state-mean": ("wp-signature", {"learner_args": "batch_mean=state"}, {}),
    "ties-lowest-state-mean": ("wp-signature", {"learner_args": "ties=lowest,batch_mean=state"}, {}),
    "keyword": ("wp-signature-kw", {}, {}),
    "normalize": ("wp-signature", {"normalize": True}, {}),
    "mean-pool": ("wp-signature", {"pool": "mean"}, {}),
    "gate0.1": ("wp-signature", {"wp_gate_init": 0.1}, {}),
    "gate0.5": ("wp-signature", {"wp_gate_init": 0.5}, {}),
    "cbow-mean-pool": ("cbow", {"pool": "mean"}, {}),
    "lr5e-3": ("wp-signature", {}, {"lr": 0.005}),
    "cbow-lr5e-3": ("cbow", {}, {"lr": 0.005}),
    "match": ("wp-signature", {"pair_features": "match"}, {}),
    "cbow-match": ("cbow", {"pair_features": "match"}, {}),
    "match-lr1e-3": ("wp-signature", {"pair_features": "match"}, {"lr": 0.001}),
    "match-lr5e-4": ("wp-signature", {"pair_features": "match"}, {"lr": 0.0005}),
    "match-bs32": ("wp-signature", {"pair_features": "match"}, {"batch_size": 32}),
    "cbow-match-lr1e-3": ("cbow", {"pair_features": "match"}, {"lr": 0.001}),
    "cbow-match-bs32": ("cbow", {"pair_features": "match"}, {"batch_size": 32}),
    "cbow-match-lr5e-4": ("cbow", {"pair_features": "match"}, {"lr": 0.0005}),
    "match-lr2e-4": ("wp-signature", {"pair_features": "match"}, {"lr": 0.0002}),
    "match-cls1": ("wp-signature", {"pair_features": "match", "classifier_layers": 1}, {}),
    "match-cls2": ("wp-signature", {"pair_features": "match", "classifier_layers": 2}, {}),
    "match-unfrozen": ("wp-signature", {"pair_features": "match", "freeze_embeddings": False}, {}),
    "match-he": ("wp-signature", {"pair_features": "match", "classifier_init": "he"}, {}),
    "cbow-match-he": ("cbow", {"pair_features": "match", "classifier_init": "he"}, {}),
    "match-he-lr5e-4": ("wp-signature", {"pair_features": "match", "classifier_init": "he"}, {"lr": 0.0005}),
    "he": ("wp-signature", {"classifier_init": "he"}, {}),
    "match-lr5e-4-ties": ("wp-signature", {"pair_features": "match", "learner_args": "ties=lowest"}, {"lr": 0.0005}),
    "match-lr5e-4-state": ("wp-signature", {"pair_features": "match", "learner_args": "batch_mean=state"}, {"lr": 0.0005}),
    "match-lr5e-4-unfrozen": ("wp-signature", {"pair_features": "match", "freeze_embeddings": False}, {"lr": 0.0005}),
    "match-lr5e-4-cls1": ("wp-signature", {"pair_features": "match", "classifier_layers": 1}, {"lr": 0.0005}),
    "match-lr5e-4-qfix-r20": ("wp-signature", {"pair_features": "match", "learner_args": "ties=lowest,batch_mean=state"},
                              {"lr": 0.0005, "router_lr_ratio": 20.0}),
    "cls1": ("wp-signature", {"classifier_layers": 1}, {}),
    "match-cls1-qfix": ("wp-signature", {"pair_features": "match", "classifier_layers": 1,
                                         "learner_args": "ties=lowest,batch_mean=state"}, {}),
    "match-lr5e-4-cls1-qfix": ("wp-signature", {"pair_features": "match", "classifier_layers": 1,
                                                "learner_args": "ties=lowest,batch_mean=state"}, {"lr": 0.0005}),
    "match-lr5e-4-qfix": ("wp-signature", {"pair_features": "match", "learner_args": "ties=lowest,batch_mean=state"}, {"lr": 0.0005}),
}.items()}


#: settings on top of the defaults of commit 36b2743 (issue 15: match features, one hidden layer,
#: ties by lowest index, state means), with the tables at -1 as they then started
PREVIOUS = {"router_init": -1.0}
SETTINGS.update({name: (method, {**PREVIOUS, **model_over}, train_over) for name, (method, model_over, train_over) in {
    "cls-sig-he": ("classifier-signature", {"classifier_init": "he"}, {}),
    "cls-sig-kappa2": ("classifier-signature", {}, {"explore_kappa": 2.0}),
    "cls-sig-noexplore": ("classifier-signature", {"exploration": "none"}, {}),
    "cls-sig-lr5e-3": ("classifier-signature", {}, {"lr": 0.005}),
    "cls-sig-normalize": ("classifier-signature", {"normalize": True}, {}),
    # the routers' starting table value (router_init: -1 the worst reward, then 0, the default now)
    "cls-sig-init0": ("classifier-signature", {"router_init": 0.0}, {}),
    "cls-sig-init1": ("classifier-signature", {"router_init": 1.0}, {}),
    "cls-sig-ties-random": ("classifier-signature", {"learner_args": "ties=random"}, {}),
    "wp-init0": ("wp-signature", {"router_init": 0.0}, {}),
    "wp-init1": ("wp-signature", {"router_init": 1.0}, {}),
}.items()})


def resolve_setting(name: str) -> tuple[str, dict, dict]:
    """A named setting of ``SETTINGS``, or ``m:<method>``: that method at the library's and the
    recipes' defaults (no overrides; e.g. ``m:wp-signature+D``)."""
    if name.startswith("m:"):
        try:
            resolve_method(name[2:])
        except ValueError as err:
            raise SystemExit(f"--settings {name}: {err}") from None
        return name[2:], {}, {}
    if name not in SETTINGS:
        raise SystemExit(f"unknown setting {name!r}: one of {sorted(SETTINGS)} or m:<method>")
    return SETTINGS[name]


def escape_epoch(history: list[dict]) -> int | None:
    for rec in history:
        if rec["validation"]["accuracy"] >= ESCAPE:
            return rec["epoch"] + 1
    return None


def run_one(setting: str, seed: int, prepared, epochs: int, out: Path) -> dict:
    method, model_over, train_over = resolve_setting(setting)
    model_cfg = replace(NLIModelConfig(), **model_over)
    cfg = TrainConfig(epochs=epochs, seed=seed, cpu=True, progress=False, select_best=True,
                      **{**RECIPE_TRAIN_DEFAULTS, **train_over})
    started = time.time()
    res = run_method(method, prepared, model_cfg, cfg)
    # a two-stage method ("+D"): the plateau is stage 1's (model and routers learn); the reported
    # accuracy is stage 2's (a dispatcher instead of the meta labels)
    history = res.get("stage1", res)["history"]
    row = {
        "setting": setting, "method": method, "seed": seed, "model_overrides": model_over,
        "train_overrides": train_over, "epochs": epochs,
        "validation_per_epoch": [rec["validation"]["accuracy"] for rec in history],
        "escape_epoch": escape_epoch(history),
        "validation_predicted_share_per_epoch": [rec["validation"].get("predicted_share") for rec in history],
        "validation_accuracy_per_signature_per_epoch": [rec["validation"]["accuracy_per_meta"] for rec in history],
        "collapse_per_epoch": [{k: v for k, v in rec["validation"].items() if k.startswith("collapse") or k == "dispatch"}
                               for rec in history],
        "test_accuracy": res["final"]["test"]["accuracy"],
        "test_accuracy_with_meta": res.get("stage1", {}).get("final", {}).get("test", {}).get("accuracy"),
        "best_epoch": res["best_epoch"], "seconds": time.time() - started,
        "commit": STARTED_AT, "machine": machine(),
    }
    (out / f"{setting.replace(':', '_')}_seed{seed}.json").write_text(json.dumps(row, indent=1))
    return row


def summary(out: Path) -> dict:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*_seed*.json"))]
    table: dict[str, dict] = {}
    for r in rows:
        t = table.setdefault(r["setting"], {"seeds": [], "escape": [], "test": [], "validation": []})
        t["seeds"].append(r["seed"])
        t["escape"].append(r["escape_epoch"])
        t["test"].append(r["test_accuracy"])
        t["validation"].append(r["validation_per_epoch"])
    for name, t in table.items():
        escaped = [e for e in t["escape"] if e is not None]
        t["escaped"] = f"{len(escaped)}/{len(t['escape'])}"
        t["test_mean"] = statistics.fmean(t["test"])
        print(f"{name:<24} escaped {t['escaped']:>5}  escape epochs {t['escape']}  "
              f"test {', '.join(f'{100 * a:.1f}' for a in t['test'])}")
    (out / "summary.json").write_text(json.dumps(table, indent=1))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="../shared/data/sci/joint")
    ap.add_argument("--settings", nargs="+", default=["default", "ties-lowest"], help=f"named settings {sorted(SETTINGS)} or m:<method>")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/sci_plateau")
    ap.add_argument("--summary", action="store_true", help="only summarise the finished runs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summary:
        summary(out)
        return
    logging.basicConfig(level=logging.WARNING)
    for name in args.settings:
        resolve_setting(name)
    todo = [(s, seed) for seed in args.seeds for s in args.settings]
    todo = [t for i, t in enumerate(todo) if i % args.workers == args.worker]
    todo = [(s, seed) for s, seed in todo if not (out / f"{s.replace(':', '_')}_seed{seed}.json").exists()]
    if not todo:
        print("nothing to run")
        return
    prepared = prepare_sci(DataArgs(data_dir=args.data_dir))
    for setting, seed in todo:
        row = run_one(setting, seed, prepared, args.epochs, out)
        print(f"{setting:<24} seed {seed}: validation {[round(100 * v, 1) for v in row['validation_per_epoch']]} "
              f"escape {row['escape_epoch']} test {100 * row['test_accuracy']:.1f} ({row['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
