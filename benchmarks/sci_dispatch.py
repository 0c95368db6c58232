"""SCI dispatch benchmark for issue 4 (thesis Table 6.1 layout): every dispatching strategy on joint,
disjoint, mismatch and the generated nested set, mean and 95% confidence interval over seeds.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/sci_dispatch.py --seeds 0 1 2 3 4 \
        --epochs 3 --max_train_samples 8000 --out benchmarks/results/sci_dispatch.json

Rows: the unrouted CBOW baseline (signature keyword), WP routed by signature, WP+D (two-stage:
signatures, then a dispatcher with the model fixed; tested without signatures), offline k-means and
agglomerative dispatch, and the learned online dispatchers (basic, RBAE with CBOW / attention /
one-hot / seq2seq encoders). Columns: joint, disjoint, mismatch (training lacks four signatures,
whose agents stay untrained: ``allow_unseen_meta``), and nested: each model trained on joint is
fine-tuned on ``nli_routing/data/sci_synthetic/nested`` for ``--nested_epochs`` (the nested corpus' signature
names are added to joint's, so signature agents exist for every class).

Every run's summary (accuracy, routing and dispatch entropy, the test dispatch distribution per
signature) is written to ``--out`` as it goes; ``--resume`` skips finished runs, several workers can
write separate ``--out`` files (e.g. one per seed set) and ``--report_only --inputs a.json b.json``
merges them into the table, the JSON summary and the plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from scipy import stats as sps

from nli_routing.analysis.plots import plot_dispatch_distribution
from nli_routing.data import EMBEDDED_SCI
from nli_routing.models.nli import NLIModelConfig
from nli_routing.experiments.nli import (
    RECIPE_TRAIN_DEFAULTS,
    DataArgs,
    DispatchArgs,
    align_meta,
    prepare_sci,
    resolve_method,
    run_method,
)
from nli_routing.training.loop import TrainConfig

from nli_routing.experiments.bench import commit, machine  # noqa: E402

#: (row name of Table 6.1, method)
ROWS = [
    ("CBOW (unrouted, keyword)", "cbow"),
    ("WP signature", "wp-signature"),
    ("Classifier signature", "classifier-signature"),
    ("WP signature, thesis Q-learning", "wp-signature/thesis-q"),
    ("WP signature, tables at -1", "wp-signature/init-1"),
    ("Classifier signature, tables at -1", "classifier-signature/init-1"),
    ("WP+D (two-stage)", "wp-signature+D"),
    ("WP k-means", "wp-kmeans"),
    ("WP agglomerative", "wp-agglomerative"),
    ("WP basic dispatcher", "wp-basic"),
    ("WP RBAE-CBOW", "wp-rbae-cbow"),
    ("WP RBAE-attn", "wp-rbae-attn"),
    ("WP RBAE-onehot", "wp-rbae-onehot"),
    ("WP RBAE-seq", "wp-rbae-seq"),
    ("WP signature, tables at 0, no balance", "wp-signature/init0"),
    ("WP+D, best-agent target", "wp-signature+D/best-agent"),
    ("WP+D, meta target", "wp-signature+D/meta"),
    ("WP+D, meta target, pair input", "wp-signature+D/meta-pair"),
    ("WP+D, pair input", "wp-signature+D/pair"),
    ("WP basic, pair input", "wp-basic/pair"),
    ("WP RBAE-onehot, pair input", "wp-rbae-onehot/pair"),
    ("WP basic, MI 1", "wp-basic/mi"),
    ("WP RBAE-CBOW, MI 1", "wp-rbae-cbow/mi"),
    ("WP basic, MI 1, agent Adam", "wp-basic/mi-adam"),
    ("WP RBAE-CBOW, MI 1, agent Adam", "wp-rbae-cbow/mi-adam"),
    ("WP RBAE-onehot, MI 1, agent Adam", "wp-rbae-onehot/mi-adam"),
    ("WP basic, 13 classes", "wp-basic/k13"),
    ("WP RBAE-onehot, 13 classes", "wp-rbae-onehot/k13"),
    ("WP+D, thesis dispatcher training", "wp-signature+D/thesis"),
    ("WP basic, thesis dispatcher training", "wp-basic/thesis"),
    ("WP RBAE-CBOW, thesis dispatcher training", "wp-rbae-cbow/thesis"),
    # Table 5.2's RNN rows (issue 32): the LSTM unrouted (signature keyword) and routed by signature
    ("RNN (unrouted, keyword)", "lstm"),
    ("RNN classifier", "lstm-classifier"),
    ("RNN I2H", "lstm-i2h"),
    ("RNN H2H", "lstm-h2h"),
]
RNN_ROUTED = ("lstm-classifier", "lstm-i2h", "lstm-h2h")
COLUMNS = ["joint", "disjoint", "mismatch", "nested"]
#: rows that are a method with model overrides: "<method>/<variant>" -> (method, overrides).
#: thesis-q: the Q-learning of the thesis' era in this library (greedy ties at random, every visited
#: entry moved by its own batch mean), under which signature agents keep distinct paths
VARIANTS = {
    "wp-signature/thesis-q": ("wp-signature", {"learner_args": "ties=random,batch_mean=state-action", "router_init": -1.0,
                                               "router_balance_share": 1.0}),
    # the defaults before router_init 0 (issue 15): tables start at the worst reward and routers collapse
    "wp-signature/init-1": ("wp-signature", {"router_init": -1.0, "router_balance_share": 1.0}),
    "classifier-signature/init-1": ("classifier-signature", {"router_init": -1.0, "router_balance_share": 1.0}),
    # issue 29: the defaults before the capacity balance (tables at 0, no balance)
    "wp-signature/init0": ("wp-signature", {"router_init": 0.0, "router_balance_share": 1.0}),
}
#: issue 29: dispatcher settings per method alias (DispatchArgs fields); the method is the alias before the "/"
THESIS_DISPATCH = {"dispatch_balance": 0.0, "dispatch_agent_optimizer": "routers", "dispatch_target": "reward",
                   "dispatch_input": "premise", "dispatch_state_norm": False}
#: the online (one-stage) dispatcher rows, for the aliases that apply to each of them
ONLINE_ROWS = ("wp-basic", "wp-rbae-seq", "wp-rbae-cbow", "wp-rbae-attn", "wp-rbae-onehot")
DISPATCH_VARIANTS = {
    "wp-signature+D/best-agent": {**THESIS_DISPATCH, "dispatch_target": "best-agent"},
    "wp-signature+D/meta": {"dispatch_balance": 0.0, "dispatch_agent_optimizer": "blocks", "dispatch_target": "meta",
                            "dispatch_input": "premise"},
    # issue 29: the construction is in the hypothesis for about a third of the pairs, so a dispatcher
    # that reads the premise only cannot recover the signature (premise: 72% / NMI 0.41, pair: 99% / 0.98)
    "wp-signature+D/meta-pair": {"dispatch_balance": 0.0, "dispatch_agent_optimizer": "blocks", "dispatch_target": "meta",
                                 "dispatch_input": "pair"},
    "wp-signature+D/pair": {"dispatch_input": "pair", "dispatch_target": "reward", "dispatch_balance": 1.0},
    "wp-rbae-onehot/pair": {"dispatch_input": "pair", "dispatch_target": "reward", "dispatch_balance": 1.0},
    "wp-basic/pair": {"dispatch_input": "pair", "dispatch_target": "reward", "dispatch_balance": 1.0},
    "wp-basic/mi": {**THESIS_DISPATCH, "dispatch_balance": 1.0},
    "wp-rbae-cbow/mi": {**THESIS_DISPATCH, "dispatch_balance": 1.0},
    "wp-basic/mi-adam": {**THESIS_DISPATCH, "dispatch_balance": 1.0, "dispatch_agent_optimizer": "blocks"},
    "wp-rbae-cbow/mi-adam": {**THESIS_DISPATCH, "dispatch_balance": 1.0, "dispatch_agent_optimizer": "blocks"},
    "wp-rbae-onehot/mi-adam": {**THESIS_DISPATCH, "dispatch_balance": 1.0, "dispatch_agent_optimizer": "blocks"},
    # issue 29: the reconstruction reward centred per dispatch class (the recipe defaults otherwise)
    **{f"{m}/centered": {"dispatch_recon_reward": "agent-centered"} for m in ("wp-rbae-seq", "wp-rbae-cbow",
                                                                            "wp-rbae-attn", "wp-rbae-onehot")},
    # issue 29: the agent's input standardised (dispatch_state_norm), alone and with the centred reward
    **{f"{m}/norm": {"dispatch_state_norm": True} for m in (*ONLINE_ROWS, "wp-signature+D")},
    # ... and the agent's loss training the RBAE encoder too (its input no longer saturates)
    **{f"{m}/norm-enc": {"dispatch_state_norm": True, "dispatch_agent_to_encoder": True}
       for m in ("wp-rbae-seq", "wp-rbae-cbow", "wp-rbae-attn", "wp-rbae-onehot")},
    **{f"{m}/norm-centered": {"dispatch_state_norm": True, "dispatch_recon_reward": "agent-centered"}
       for m in ("wp-rbae-seq", "wp-rbae-cbow", "wp-rbae-attn", "wp-rbae-onehot")},
    # generalised EM (Kirsch et al. 2018): the class drawn from the posterior, the model trained on its path;
    # alone (the balance resolves to 0 off the reward target) and with the mutual-information term
    **{f"{m}/em": {"dispatch_target": "em"} for m in ONLINE_ROWS},
    **{f"{m}/em-mi": {"dispatch_target": "em", "dispatch_balance": 1.0} for m in ONLINE_ROWS},
    # issue 29: the mixture of experts trained as soft EM (every path on every sample, weighted by the posterior;
    # the dispatcher predicts the posterior; the balance resolves to the marginal entropy at 0.1)
    **{f"{m}/mixture": {"dispatch_target": "mixture"} for m in ONLINE_ROWS},
    # ... with a stronger marginal balance (0.3, 1; the default 0.1 let RBAE-seq collapse on SCI)
    **{f"{m}/mixture-m{w:g}": {"dispatch_target": "mixture", "dispatch_balance": w} for m in ONLINE_ROWS for w in (0.3, 1.0)},
    # the thesis' dispatcher training, whatever the recipe defaults are
    **{f"{m}/thesis": dict(THESIS_DISPATCH) for m in ("wp-signature+D", *ONLINE_ROWS)},
}


#: issue 29: online dispatchers with more virtual classes than the recipes' 5 (13 = the signatures of SCI joint's
#: training set, so a dispatcher could give each signature its own class); the default elsewhere
DISPATCH_K = {f"{m}/k13": 13 for m in ("wp-basic", "wp-rbae-onehot")}


def dispatch_k_of(name: str) -> int:
    """The number of virtual dispatch classes (and offline clusters) of the row ``name``."""
    return DISPATCH_K.get(name, 5)


def method_of(name: str) -> tuple[str, dict]:
    """``(method, model overrides)`` of a row name (a method, a VARIANTS or a DISPATCH_VARIANTS alias)."""
    if name in DISPATCH_VARIANTS or name in DISPATCH_K:
        return name.split("/")[0], {}
    return VARIANTS.get(name, (name, {}))


def preset_part(preset: dict, cls) -> dict:
    """The settings of ``preset`` that are fields of the config class ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in preset.items() if k in names}


def run_configs(name: str, preset: dict, seed: int, epochs: int, stage2_epochs: int):
    """``(base method, model config, train config, dispatch args)`` of one run of the row ``name``: the recipe
    defaults, the preset over them, the row's own settings (VARIANTS / DISPATCH_VARIANTS) over that."""
    base, overrides = method_of(name)
    model = replace(NLIModelConfig(**preset_part(preset, NLIModelConfig)), **overrides)
    train = TrainConfig(epochs=epochs, seed=seed, cpu=True, progress=False, select_best=True,
                        **{**RECIPE_TRAIN_DEFAULTS, **preset_part(preset, TrainConfig)})
    dispatch = DispatchArgs(stage2_epochs=stage2_epochs,
                            **{**preset_part(preset, DispatchArgs), **DISPATCH_VARIANTS.get(name, {})})
    return base, model, train, dispatch


def dispatch_nmi(dispatch: dict | None) -> float | None:
    """Normalised mutual information (arithmetic mean of the entropies, as scikit-learn's default)
    between the signature and the dispatch class, from a run's test contingency table
    ``{"distribution": {signature: [count per class]}}``; None without a dispatcher."""
    if not dispatch or not dispatch.get("distribution"):
        return None
    table = np.array(list(dispatch["distribution"].values()), dtype=float)
    n = table.sum()
    if n == 0:
        return None
    p = table / n
    rows, cols = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(rows, cols)[nz])).sum())
    h = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    denom = (h(rows) + h(cols)) / 2
    return mi / denom if denom > 0 else 0.0
DISPATCHING = [m for _, m in ROWS if m not in ("cbow", "wp-signature", "classifier-signature", "lstm", *RNN_ROUTED,
                                                 *VARIANTS)]
#: issue 15: a run has left the plateau at the first epoch whose validation accuracy reaches this
ESCAPE = 0.75


def escape_epoch(history: list[float]) -> int | None:
    """First epoch (1-based) with validation accuracy >= ``ESCAPE`` (``None``: never)."""
    return next((i + 1 for i, a in enumerate(history) if a >= ESCAPE), None)


def escape_table(runs: list[dict], column: str = "joint") -> list[str]:
    """Per method: escape epochs over seeds (stage 1's for two-stage methods) and best epochs."""
    lines = [f"escape from the plateau ({column}; first epoch with validation >= {ESCAPE:.0%}):"]
    for name, method in ROWS:
        sel = sorted((r for r in runs if r["method"] == method and r["column"] == column), key=lambda r: r["seed"])
        if not sel:
            continue
        esc = [escape_epoch(r.get("validation_history_stage1") or r["validation_history"]) for r in sel]
        by3 = sum(e is not None and e <= 3 for e in esc)
        collapsed = sum(bool((r.get("collapse_warnings") or [None])[-1]) for r in sel)
        lines.append(f"  {name:<26} {by3}/{len(esc)} by epoch 3, escape epochs {esc}, "
                     f"best epochs {[r['best_epoch'] for r in sel]}, collapse warning in the last epoch: "
                     f"{collapsed}/{len(sel)}")
    return lines


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval (0 for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, float(sps.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def summarize(runs: list[dict]) -> dict:
    """``{method: {column: {mean, ci, n, dispatch_entropy, routing_entropy}}}``."""
    out: dict = {}
    for _, method in ROWS:
        for col in COLUMNS:
            sel = [r for r in runs if r["method"] == method and r["column"] == col]
            if not sel:
                continue
            m, ci = mean_ci([r["test_accuracy"] for r in sel])
            ent = [r["dispatch_entropy"] for r in sel if r.get("dispatch_entropy") is not None]
            rent = [r["routing_entropy"] for r in sel if r.get("routing_entropy") is not None]
            out.setdefault(method, {})[col] = {
                "mean": m, "ci95": ci, "n": len(sel), "seeds": sorted(r["seed"] for r in sel),
                "dispatch_entropy": statistics.fmean(ent) if ent else None,
                "routing_entropy": statistics.fmean(rent) if rent else None,
            }
    return out


def table(summary: dict) -> str:
    head = f"{'strategy':<28}" + "".join(f"{c:>17}" for c in COLUMNS) + f"{'disp H (joint)':>16}"
    lines = [head, "-" * len(head)]
    for name, method in ROWS:
        row = summary.get(method)
        if not row:
            continue
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            cells.append(f"{100 * v['mean']:>8.1f} ± {100 * v['ci95']:<5.1f}(n{v['n']})" if v else f"{'-':>17}")
        h = (row.get("joint") or {}).get("dispatch_entropy")
        lines.append(f"{name:<28}" + "".join(f"{c:>17}" for c in cells) + (f"{h:>16.2f}" if h is not None else f"{'-':>16}"))
    return "\n".join(lines)


def claims(summary: dict, runs: list[dict]) -> list[str]:
    """The thesis' claims of Table 6.1, checked on the means and with Welch's t-test over seeds."""

    def accs(method: str, col: str) -> list[float]:
        return [r["test_accuracy"] for r in runs if r["method"] == method and r["column"] == col]

    lines = []
    base = summary.get("cbow", {})
    for col in COLUMNS:
        if col not in base:
            continue
        present = [m for m in DISPATCHING if col in summary.get(m, {})]
        above = [m for m in present if summary[m][col]["mean"] > base[col]["mean"]]
        signif = [m for m in above if len(accs(m, col)) > 1 and len(accs("cbow", col)) > 1
                  and sps.ttest_ind(accs(m, col), accs("cbow", col), equal_var=False).pvalue < 0.05]
        lines.append(f"{col}: {len(above)}/{len(present)} dispatching strategies have a higher mean than unrouted "
                     f"CBOW ({100 * base[col]['mean']:.1f}), {len(signif)} of them significantly (Welch p < 0.05: "
                     f"{signif}); not above: {sorted(set(present) - set(above))}")
    d, s = summary.get("wp-signature+D", {}), summary.get("wp-signature", {})
    for col in COLUMNS:
        if col in d and col in s:
            p = sps.ttest_ind(accs("wp-signature+D", col), accs("wp-signature", col), equal_var=False).pvalue
            lines.append(f"{col}: WP+D {100 * d[col]['mean']:.1f} vs WP signature {100 * s[col]['mean']:.1f} "
                         f"({'>=' if d[col]['mean'] >= s[col]['mean'] else '<'}; Welch p = {p:.2f})")
    if all(c in d for c in ("joint", "disjoint", "mismatch")) and all(c in s for c in ("joint", "disjoint", "mismatch")):
        for name, row in (("WP+D", d), ("WP signature", s)):
            lines.append(f"{name} loss joint->disjoint {100 * (row['joint']['mean'] - row['disjoint']['mean']):.1f}, "
                         f"joint->mismatch {100 * (row['joint']['mean'] - row['mismatch']['mean']):.1f} points")
    return lines + rnn_claims(summary, accs)


def rnn_claims(summary: dict, accs) -> list[str]:
    """Table 5.2's RNN claims (thesis 5.3.2/5.3.3): classifier routing helps the RNN on joint (71.02 vs
    67.04), and routing beats the unrouted RNN by 18% on nested; Welch's t-test over seeds."""
    lines = []
    none = summary.get("lstm", {})
    for col in COLUMNS:
        if col not in none:
            continue
        for m in RNN_ROUTED:
            if col not in summary.get(m, {}):
                continue
            a, b = accs(m, col), accs("lstm", col)
            p = sps.ttest_ind(a, b, equal_var=False).pvalue if min(len(a), len(b)) > 1 else float("nan")
            diff = summary[m][col]["mean"] - none[col]["mean"]
            lines.append(f"{col}: {m} {100 * summary[m][col]['mean']:.1f} vs unrouted RNN {100 * none[col]['mean']:.1f} "
                         f"({100 * diff:+.1f} points, {100 * diff / none[col]['mean']:+.1f}% relative; Welch p = {p:.3f})")
    return lines


def plot(summary: dict, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4.2 * len(COLUMNS), 4.6), sharey=True)
    for ax, col in zip(axes, COLUMNS):
        names = [(n, m) for n, m in ROWS if col in summary.get(m, {})]
        for i, (n, m) in enumerate(names):
            v = summary[m][col]
            ax.barh(i, 100 * v["mean"], xerr=100 * v["ci95"], color="C0" if m in DISPATCHING else "C7", alpha=0.8)
            pts = [100 * r["test_accuracy"] for r in runs if r["method"] == m and r["column"] == col]
            ax.plot(pts, [i] * len(pts), "k.", ms=3)
        ax.set_yticks(range(len(names)), [n for n, _ in names])
        ax.set_title(col)
        ax.set_xlabel("test accuracy (%)")
        ax.invert_yaxis()
    fig.suptitle("SCI: dispatching strategies (mean, 95% CI, dots = seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histories(runs: list[dict], path: Path, column: str = "joint") -> None:
    """Validation accuracy per epoch of every method on ``column`` (one line per seed; stage 1 for
    two-stage methods), with the plateau threshold: where each run leaves the plateau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [(n, m) for n, m in ROWS if any(r["method"] == m and r["column"] == column for r in runs)]
    if not methods:
        return
    cols = 4
    rows_n = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.8 * rows_n), sharex=True, sharey=True, squeeze=False)
    for ax, (name, method) in zip(axes.flat, methods):
        for r in sorted((r for r in runs if r["method"] == method and r["column"] == column), key=lambda r: r["seed"]):
            hist = r.get("validation_history_stage1") or r["validation_history"]
            ax.plot(range(1, len(hist) + 1), [100 * a for a in hist], marker=".", lw=1, label=f"seed {r['seed']}")
        ax.axhline(100 * ESCAPE, color="k", ls=":", lw=0.8)
        ax.set_title(name, fontsize=9)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    fig.suptitle(f"SCI {column}: validation accuracy per epoch (dotted: the plateau threshold {ESCAPE:.0%})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dispatch_nmi_null(dispatch: dict | None, reps: int = 200, seed: int = 0) -> float | None:
    """The 99th percentile of the NMI between signature and dispatch class when the classes are shuffled
    across the test samples (same class and signature frequencies, no information): an NMI above it says the
    dispatch carries information about the signature, at or below it that it carries none. None without a
    dispatcher."""
    if dispatch_nmi(dispatch) is None:
        return None
    table = np.array(list(dispatch["distribution"].values()), dtype=np.int64)
    signature = np.repeat(np.arange(table.shape[0]), table.sum(1))
    classes = np.concatenate([np.repeat(np.arange(table.shape[1]), row) for row in table])
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(reps):
        shuffled = np.zeros_like(table)
        np.add.at(shuffled, (signature, rng.permutation(classes)), 1)
        null.append(dispatch_nmi({"distribution": dict(enumerate(shuffled.tolist()))}))
    return float(np.percentile(null, 99))


def dispatch_table(runs: list[dict]) -> list[str]:
    """Issue 29: per dispatcher row and column, the test dispatch entropy (bits), the NMI between dispatch
    and signature beside its shuffled-class null (99th percentile, :func:`dispatch_nmi_null`) with the runs
    above it, and the runs whose last epoch had a collapse warning."""
    lines = ["dispatch (test): entropy bits min-max, NMI with the signature mean (min-max), the shuffled null's "
             "99th percentile (max over runs) and the runs above it, collapse warning in the last epoch"]
    keys = sorted({(r["method"], r["column"]) for r in runs if r.get("dispatch_entropy") is not None})
    for method, column in keys:
        sel = [r for r in runs if r["method"] == method and r["column"] == column]
        h = [r["dispatch_entropy"] for r in sel]
        nmi = [r["dispatch_nmi"] for r in sel if r.get("dispatch_nmi") is not None]
        warned = sum(1 for r in sel if (r.get("collapse_warnings") or [None])[-1])
        ever = sum(1 for r in sel if any(r.get("collapse_warnings") or []))
        nmi_text = f"{statistics.mean(nmi):.3f} ({min(nmi):.3f}-{max(nmi):.3f})" if nmi else "-"
        nulls = [(r["dispatch_nmi"], dispatch_nmi_null(r.get("dispatch"))) for r in sel
                 if r.get("dispatch_nmi") is not None]
        nulls = [(v, z) for v, z in nulls if z is not None]
        if nulls:
            above = sum(1 for v, z in nulls if v > z)
            nmi_text += f" null99 {max(z for _, z in nulls):.3f}, above {above}/{len(nulls)}"
        lines.append(f"  {method:<28} {column:<9} n={len(sel)}  H {min(h):.2f}-{max(h):.2f}  NMI {nmi_text}  "
                     f"collapse {warned}/{len(sel)} (any epoch {ever}/{len(sel)})")
    return lines


def merge_inputs(items: list[str], renames: dict[str, str], keep: list[str] | None) -> tuple[list[dict], list[dict]]:
    """The runs of several result files for one report: ``FILE`` or ``FILE:m1,m2`` (only those methods, as
    they ran), each run renamed by ``renames`` (``ran_as`` keeps its name) and kept when its method is in
    ``keep`` (all when None); the first file that holds a (method, column, seed) wins; every run and
    every file's metadata records its ``source``."""
    known = {m for _, m in ROWS}
    for name in [*renames.values(), *(keep or [])]:
        if name not in known:
            raise ValueError(f"--rename/--keep {name}: not a row of the report (the rows: {sorted(known)})")
    runs, metas = [], []
    for item in items:
        path, only = item, None
        if not Path(item).is_file() and ":" in item:
            path, _, names = item.rpartition(":")
            only = set(names.split(","))
        if not Path(path).is_file():
            raise ValueError(f"--inputs {item}: no such file")
        try:
            data = json.loads(Path(path).read_text())
            file_runs = data["runs"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--inputs {path}: not a result file of this script ({type(err).__name__}: {err})") from None
        missing = sorted((only or set()) - {r["method"] for r in file_runs})
        if missing:
            raise ValueError(f"--inputs {item}: {path} has no runs of {missing}")
        runs += [{**r, "source": str(path)} for r in file_runs if only is None or r["method"] in only]
        metas.append({"machine": data.get("machine"), "commit": data.get("commit"), "args": data.get("args"),
                      "source": str(path)})
    for r in runs:
        if r["method"] in renames:
            r["ran_as"], r["method"] = r["method"], renames[r["method"]]
    seen, unique = set(), []
    for r in runs:
        key = (r["method"], r["column"], r["seed"])
        if key not in seen and (keep is None or r["method"] in keep):
            seen.add(key)
            unique.append(r)
    return unique, metas


def report(runs: list[dict], out: Path, meta: dict) -> None:
    summary = summarize(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(summary, runs, out.with_suffix(".png"))
    plot_histories(runs, out.with_name(out.stem + "_escape.png"))
    figdir = out.with_suffix("")
    for _, method in ROWS:  # Figure 6.5: dispatch per signature, joint test set, lowest seed
        sel = sorted((r for r in runs if r["method"] == method and r["column"] == "joint" and r.get("dispatch")),
                     key=lambda r: r["seed"])
        if sel:
            plot_dispatch_distribution(sel[0]["dispatch"], figdir / f"{method}_joint_seed{sel[0]['seed']}.png",
                                       title=f"{method}: dispatch per signature (joint test, seed {sel[0]['seed']})")
    checked = claims(summary, runs) + escape_table(runs) + dispatch_table(runs)
    out.write_text(json.dumps({**meta, "runs": runs, "summary": summary, "claims": checked}, indent=1))
    print(f"\n{table(summary)}\n")
    print("\n".join(checked))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sci_root", default="../shared/data/sci")
    ap.add_argument("--nested_dir", default=str(EMBEDDED_SCI / "nested"))
    ap.add_argument("--variants", nargs="+", default=["joint", "disjoint", "mismatch"])
    ap.add_argument("--methods", nargs="+", default=[m for _, m in ROWS])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--stage2_epochs", type=int, default=2)
    ap.add_argument("--nested_epochs", type=int, default=2)
    ap.add_argument("--max_train_samples", type=int, default=8000, help="cap the training set (0: all of it)")
    ap.add_argument("--worker", type=int, default=0, help="with --workers n: run every n-th (variant, seed, method)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/sci_dispatch.json")
    ap.add_argument("--resume", action="store_true", help="skip runs already in --out")
    ap.add_argument("--report_only", action="store_true", help="merge --inputs (or --out) into the report")
    ap.add_argument("--inputs", nargs="+", default=None,
                    help="result files of several workers (--report_only); FILE:m1,m2 takes only those methods of FILE "
                         "(as they ran, before --rename)")
    ap.add_argument("--rename", nargs="+", default=[], metavar="OLD=NEW",
                    help="--report_only: report the runs of method OLD as NEW (an alias whose settings became NEW's "
                         "default, e.g. wp-rbae-seq/norm-enc=wp-rbae-seq); each run keeps its name in 'ran_as'")
    ap.add_argument("--keep", nargs="+", default=None, metavar="METHOD",
                    help="--report_only: report only these methods (after --rename); the first input holding a "
                         "(method, column, seed) wins, and every run records the file it came from in 'source'")
    ap.add_argument("--preset", default=None, help="run every method at a recipe preset (thesis: the thesis' settings, "
                    "nli_routing/experiments/presets.py); a method's own settings still apply on top")
    args = ap.parse_args()
    out = Path(args.out)
    renames = {}
    for item in args.rename:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            ap.error(f"--rename {item}: expected OLD=NEW (two method names)")
        renames[old] = new
    if (renames or args.keep) and not args.report_only:
        ap.error("--rename and --keep apply to --report_only (runs are recorded under the name they ran as)")
    if args.report_only:
        try:
            unique, metas = merge_inputs(args.inputs or [args.out], renames, args.keep)
        except ValueError as err:
            ap.error(str(err))
        report(unique, out, {"workers": metas, "renamed": renames, "kept": args.keep})
        return
    for method in args.methods:  # a wrong name fails now, in one line, not after hours of runs
        try:
            resolve_method(method_of(method)[0])
        except ValueError as err:
            raise SystemExit(f"--methods {method}: {err}") from None
    preset = {}
    if args.preset is not None:  # ('' is a bad name, not "no preset")
        from nli_routing.experiments.presets import preset_values

        known = {f.name for cls in (NLIModelConfig, TrainConfig, DispatchArgs) for f in fields(cls)}
        try:
            preset = preset_values(args.preset, "nli", known)
        except ValueError as err:
            raise SystemExit(str(err)) from None

    logging.basicConfig(level=logging.WARNING)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    done = {(r["method"], r["column"], r["seed"]) for r in runs}
    meta = {"machine": machine(), "commit": commit(), "args": vars(args)}
    started = time.time()
    data_args = dict(max_train_samples=args.max_train_samples or None, allow_unseen_meta=True)
    index = -1
    nested = None
    for variant in args.variants:
        prepared = prepare_sci(DataArgs(data_dir=str(Path(args.sci_root) / variant), **data_args))
        if variant == "joint" and args.nested_dir:
            nested = prepare_sci(DataArgs(data_dir=args.nested_dir, allow_unseen_meta=True))
            align_meta(prepared, nested)
        for seed in args.seeds:
            for method in args.methods:
                index += 1
                if index % args.workers != args.worker:
                    continue
                want_nested = variant == "joint" and nested is not None
                if (method, variant, seed) in done and (not want_nested or (method, "nested", seed) in done):
                    continue
                base, model_cfg, cfg, dispatch_args = run_configs(method, preset, seed, args.epochs, args.stage2_epochs)
                res = run_method(base, prepared, model_cfg, cfg, dispatch_k=dispatch_k_of(method),
                                 dispatch_args=dispatch_args, finetune=nested if want_nested else None,
                                 finetune_epochs=args.nested_epochs)
                res["summary"]["method"] = method
                if "finetune" in res:
                    res["finetune"]["summary"]["method"] = method
                parts = [(variant, res)] + ([("nested", res["finetune"])] if "finetune" in res else [])
                for column, r in parts:
                    s = r["summary"]
                    runs.append({"column": column, "seed": seed, **s,
                                 "dispatch": r["final"].get("test", {}).get("dispatch"),
                                 "dispatch_nmi": dispatch_nmi(r["final"].get("test", {}).get("dispatch")),
                                 "validation_history": [h["validation"]["accuracy"] for h in r["history"]],
                                 "validation_history_stage1": [h["validation"]["accuracy"] for h in
                                                               r.get("stage1", {}).get("history", [])] or None,
                                 "collapse_warnings": [h.get("collapse_warnings") for h in r["history"]]})
                    print(f"{column:<9} {method:<18} seed {seed}: test {s['test_accuracy']:.4f} "
                          f"disp H {s['dispatch_entropy'] if s['dispatch_entropy'] is not None else '-'} "
                          f"({s['train_seconds']:.0f}s)", flush=True)
                out.write_text(json.dumps({**meta, "runs": runs}, indent=1))
    print(f"wall time {time.time() - started:.0f}s")
    report(runs, out, meta)


if __name__ == "__main__":
    main()
