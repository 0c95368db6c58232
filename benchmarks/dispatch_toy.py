"""Issue 29: every learned dispatcher kind on the dispatch toy, under each candidate training.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/dispatch_toy.py --seeds 0 1 2 \
        --out benchmarks/results/dispatch_toy.json

The toy (``nli_routing/experiments/dispatch_toy.py``): three hidden groups whose label rules conflict,
readable from the premise's words, never given to a dispatcher. Rows: the model routed on the hidden
group (oracle), its unrouted twin, the keyword twin, then each dispatcher kind (basic, the four RBAE,
two-stage) under each setting: the thesis' training (RL reward, agent on the routers' SGD), the
mutual-information term (weight 1), the same with the agent on the blocks' Adam, the best-agent target.
A dispatcher passes when its NMI with the hidden groups is >= 0.9 and its accuracy is within 2 points
of the oracle's, on every seed. Prints the table and writes every run to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nli_routing.experiments import dispatch_toy as toy
from nli_routing.experiments.bench import commit, machine

KINDS = ("basic", "rbae-cbow", "rbae-attn", "rbae-onehot", "rbae-seq", "two-stage")
SETTINGS = {
    "thesis": {},
    "mi": {"balance": 1.0},
    "mi-adam": {"balance": 1.0, "agent_optimizer": "blocks"},
    "best-agent": {"target": "best-agent"},
    "meta": {"target": "meta"},  # two-stage only
    # issue 29 (continued): the agent's input standardised, alone and with the agent training the encoder
    "mi-adam-norm": {"balance": 1.0, "agent_optimizer": "blocks", "state_norm": True},
    "mi-adam-norm-enc": {"balance": 1.0, "agent_optimizer": "blocks", "state_norm": True, "detach_state": False},
    "mi-adam-centered": {"balance": 1.0, "agent_optimizer": "blocks", "recon_reward": "agent-centered"},  # RBAE only
    # generalised EM (Kirsch et al. 2018): the class drawn from the posterior, the model trained on its path
    "em": {"target": "em"},  # online only
    "em-mi-adam": {"target": "em", "balance": 1.0, "agent_optimizer": "blocks"},  # online only
    "em-mi-adam-norm-enc": {"target": "em", "balance": 1.0, "agent_optimizer": "blocks", "state_norm": True,
                            "detach_state": False},  # online only
}
ONLINE_ONLY = ("em", "em-mi-adam", "em-mi-adam-norm-enc", "recipe-mixture", "recipe-mixture-mi", "recipe-mixture-nobalance",
               "recipe-mixture-m0.3", "recipe-mixture-m1")
#: "recipe": each kind under what the recipes resolve for it by default (``DispatchArgs().resolved``);
#: "recipe-mixture": the same with ``--dispatch_target mixture`` (its balance: the marginal entropy at 0.1)
RECIPE = "recipe"
RECIPE_SETTINGS = {
    RECIPE: {},
    "recipe-mixture": {"dispatch_target": "mixture"},
    # controls: the mixture with the mutual information as its balance, with no balance; the RL reward with the
    # marginal balance (at the reward's default weight 1)
    "recipe-mixture-mi": {"dispatch_target": "mixture", "dispatch_balance_term": "mi"},
    "recipe-mixture-nobalance": {"dispatch_target": "mixture", "dispatch_balance": 0.0},
    "recipe-marginal": {"dispatch_balance_term": "marginal"},
    # issue 29: the mixture with a stronger marginal balance (does it keep the SCI dispatchers from collapsing?)
    "recipe-mixture-m0.3": {"dispatch_target": "mixture", "dispatch_balance": 0.3},
    "recipe-mixture-m1": {"dispatch_target": "mixture", "dispatch_balance": 1.0},
}


def settings_of(kind: str, setting: str) -> dict:
    """The dispatcher keyword arguments of ``setting`` for ``kind``."""
    if setting in RECIPE_SETTINGS:
        return toy.recipe_settings(kind, **RECIPE_SETTINGS[setting])
    return SETTINGS[setting]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--settings", nargs="+", default=[*SETTINGS, RECIPE], choices=[*SETTINGS, *RECIPE_SETTINGS],
                    help="trainings to run; 'recipe': each kind at the recipes' own defaults, 'recipe-mixture': "
                         "with --dispatch_target mixture; the other recipe-* rows are its controls")
    ap.add_argument("--layout", default="premise", choices=toy.LAYOUTS,
                    help="premise: the content word in the premise (a dispatcher can read the label); split: in the "
                         "hypothesis, so the premise carries only the group (nli_routing/experiments/dispatch_toy.py)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", default="benchmarks/results/dispatch_toy.json")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    torch.set_num_threads(1)
    meta = {"machine": machine(), "commit": commit(), "args": vars(args)}  # the code that runs is the code at start
    runs = []

    def record(name: str, setting: str, seed: int, **kw) -> None:
        t = time.time()
        res = toy.run(name, seed, steps=args.steps, layout=args.layout, **kw)
        runs.append({"kind": name, "setting": setting, "seed": seed, **res, "seconds": round(time.time() - t, 1)})
        print(f"{name:<12} {setting:<11} seed {seed}: " + " ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)

    for seed in args.seeds:
        for name in ("oracle", "unrouted", "keyword"):
            record(name, "-", seed)
    for kind in args.kinds:
        for setting in args.settings:
            if setting == "meta" and kind != "two-stage":
                continue
            if setting in ONLINE_ONLY and kind == "two-stage":
                continue
            if setting == "mi-adam-centered" and not kind.startswith("rbae-"):
                continue
            for seed in args.seeds:
                record(kind, setting, seed, **settings_of(kind, setting))
    oracle = {r["seed"]: r["accuracy"] for r in runs if r["kind"] == "oracle"}
    lines = [f"{'kind':<12} {'setting':<18} {'accuracy per seed':<24} {'NMI per seed':<24} {'NMI with the label':<24} pass"]
    for kind in ("oracle", "unrouted", "keyword", *args.kinds):
        for setting in (["-"] if kind in ("oracle", "unrouted", "keyword") else args.settings):
            rows = [r for r in runs if r["kind"] == kind and r["setting"] == setting]
            if not rows:
                continue
            acc = " ".join(f"{r['accuracy']:.2f}" for r in rows)
            nmi = " ".join(f"{r['nmi']:.2f}" for r in rows) if "nmi" in rows[0] else "-"
            nmi_label = " ".join(f"{r['nmi_label']:.2f}" for r in rows) if "nmi_label" in rows[0] else "-"
            ok = "-" if "nmi" not in rows[0] else all(
                r["nmi"] >= 0.9 and r["accuracy"] >= oracle[r["seed"]] - 0.02 for r in rows)
            lines.append(f"{kind:<12} {setting:<18} {acc:<24} {nmi:<24} {nmi_label:<24} {ok}")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "runs": runs, "table": lines}
    out.write_text(json.dumps(payload, indent=1))
    return payload


if __name__ == "__main__":
    main()
