"""Chapter 7's hyperparameter figures on SCI: one setting swept at the thesis preset (issue 32).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m benchmarks.sci_hyper --figure 7.6 --seeds 0 1 2 \
        --worker 0 --workers 2 --resume --out benchmarks/results/sci_fig76/w0.json
    python -m benchmarks.sci_hyper --report_only --inputs benchmarks/results/sci_fig76/w*.json \
        --out benchmarks/results/sci_fig76/all.json

``--figure 7.6`` sweeps the exploration schedule (``thesis-high`` / ``thesis-med`` / ``thesis-low``: epsilon
0.5 / 0.25 / 0.1 divided by 4 every 5 epochs, floors 0.01 / 0.005 / 0.002); ``--figure 7.7`` the router
learning rate as a multiple of the block rate (0.1, 1, 10: below, at and above it; the seeds do not quote the
thesis' values). ``--setting NAME --values V ...`` sweeps any field of the model, training or dispatch
configuration instead. Each value is run for every ``--methods`` row (default: WP routed by signature and
WP dispatched online by the basic dispatcher; any ``sci_dispatch`` row name or alias) and ``--seeds`` on
one SCI column, at ``--preset`` (``thesis`` by default; ``none``: the recipe defaults), validation after
every epoch, test at the best validation epoch (as Table 5.2). Every finished (value, method, seed) run
is written to ``--out`` at once (``--resume`` skips finished ones; ``--worker i --workers n`` takes every
n-th run). The report prints, per method and value, the test accuracy (mean, 95% t interval, per seed),
the epoch each seed left the plateau (validation >= 75%), the routers' selection entropy and the
dispatch entropy; the verdict compares the best value with each other one by Welch's t-test; the plot
(``<out>.png``) draws the validation accuracy per epoch, one panel per method, one line per value.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import MISSING, fields, replace
from pathlib import Path

from scipy import stats as sps

from nli_routing.experiments.bench import commit, machine
from nli_routing.experiments.nli import (
    DataArgs,
    DispatchArgs,
    prepare_sci,
    resolve_method,
    run_method,
)
from nli_routing.models.nli import NLIModelConfig
from nli_routing.training.loop import TrainConfig

from .sci_dispatch import (
    dispatch_k_of,
    dispatch_nmi,
    escape_epoch,
    mean_ci,
    run_configs,
)

#: the thesis' figures: the setting they sweep and its values
FIGURES = {
    "7.6": ("exploration", ["thesis-high", "thesis-med", "thesis-low"]),
    "7.7": ("router_lr_ratio", ["0.1", "1", "10"]),
}
CONFIGS = (NLIModelConfig, TrainConfig, DispatchArgs)


def setting_owner(name: str):
    """The configuration class that has field ``name`` (a ValueError naming the known fields otherwise)."""
    for cls in CONFIGS:
        if any(f.name == name for f in fields(cls)):
            return cls
    known = sorted({f.name for cls in CONFIGS for f in fields(cls)})
    raise ValueError(f"--setting {name!r} is not a field of the model, training or dispatch configuration "
                     f"(e.g. {', '.join(k for k in known if k in ('exploration', 'router_lr_ratio', 'lr', 'learner'))})")


def parse_value(cls, name: str, text: str):
    """``text`` as the type of ``cls.name`` (judged by its default: bool, int, float or text)."""
    field = next(f for f in fields(cls) if f.name == name)
    default = field.default if field.default is not MISSING else None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError as err:
        raise ValueError(f"--values {text!r}: not a value of {name} ({err})") from None
    return text


def configs(setting: str, value, preset: dict, seed: int, epochs: int, stage2_epochs: int, method: str):
    """``(base method, model config, train config, dispatch args)`` of one run: sci_dispatch's configuration
    of the row (recipe defaults, preset, the row's own settings) with the swept setting last. Building the
    configurations validates the value (a ValueError naming it)."""
    base, model, train, dispatch = run_configs(method, preset, seed, epochs, stage2_epochs)
    owner = setting_owner(setting)
    if owner is NLIModelConfig:
        model = replace(model, **{setting: value})
    elif owner is TrainConfig:
        train = replace(train, **{setting: value})
    else:
        dispatch = replace(dispatch, **{setting: value})
    return base, model, train, dispatch


def run_record(value: str, method: str, seed: int, res: dict) -> dict:
    """The stored record of one finished run."""
    s = res["summary"]
    disp = res["final"].get("test", {}).get("dispatch")
    return {
        "value": value, "method": method, "seed": seed,
        "test_accuracy": s["test_accuracy"], "validation_accuracy": s["validation_accuracy"],
        "best_epoch": s["best_epoch"], "train_seconds": s["train_seconds"],
        "routing_entropy": s["routing_entropy"], "routing_layers": s["routing_layers"],
        "dispatch_entropy": s["dispatch_entropy"], "dispatch_nmi": dispatch_nmi(disp),
        "validation_history": [h["validation"]["accuracy"] for h in res["history"]],
        "validation_history_stage1": [h["validation"]["accuracy"] for h in res.get("stage1", {}).get("history", [])]
        or None,
        "collapse_warnings": [h.get("collapse_warnings") for h in res["history"]],
    }


def summarize(runs: list[dict], values: list[str]) -> dict:
    """``{method: {value: {mean, ci95, n, seeds, per_seed, escape, routing_entropy, dispatch_entropy}}}``."""
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        for value in values:
            sel = sorted((r for r in runs if r["method"] == method and r["value"] == value), key=lambda r: r["seed"])
            if not sel:
                continue
            m, ci = mean_ci([r["test_accuracy"] for r in sel])
            rent = [r["routing_entropy"] for r in sel if r.get("routing_entropy") is not None]
            dent = [r["dispatch_entropy"] for r in sel if r.get("dispatch_entropy") is not None]
            out.setdefault(method, {})[value] = {
                "mean": m, "ci95": ci, "n": len(sel), "seeds": [r["seed"] for r in sel],
                "per_seed": [r["test_accuracy"] for r in sel],
                "escape": [escape_epoch(r["validation_history_stage1"] or r["validation_history"]) for r in sel],
                "routing_entropy": statistics.fmean(rent) if rent else None,
                "dispatch_entropy": statistics.fmean(dent) if dent else None,
            }
    return out


def verdicts(summary: dict, setting: str) -> list[str]:
    """Per method: the best value against each other one (Welch's t-test over seeds)."""
    lines = []
    for method, rows in summary.items():
        best = max(rows, key=lambda v: rows[v]["mean"])
        parts = []
        significant, testable = False, True
        for value, row in rows.items():
            if value == best:
                continue
            a, b = rows[best]["per_seed"], row["per_seed"]
            diff = 100 * (row["mean"] - rows[best]["mean"])
            if len(a) < 2 or len(b) < 2:
                testable = False
                parts.append(f"{value} {diff:+.1f} (one seed: no test)")
            elif statistics.pstdev(a + b) == 0:
                parts.append(f"{value} {diff:+.1f} (the same accuracy on every seed)")
            else:
                p = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
                significant |= p < 0.05
                parts.append(f"{value} {diff:+.1f} (Welch p = {p:.3f})")
        word = ("the setting matters (p < 0.05)" if significant else
                "no significant difference at these seeds" if testable else "not tested")
        lines.append(f"{method}: best {setting} = {best} ({100 * rows[best]['mean']:.1f}); "
                     + "; ".join(parts) + f": {word}")
    return lines


def table(summary: dict, setting: str) -> list[str]:
    lines = [f"{'method':<16}{setting:>16}{'test (%)':>18}  {'per seed':<22}{'escape epochs':<16}{'route H':>8}{'disp H':>8}"]
    for method, rows in summary.items():
        for value, v in rows.items():
            seeds = " / ".join(f"{100 * a:.1f}" for a in v["per_seed"])
            h = f"{v['routing_entropy']:.2f}" if v["routing_entropy"] is not None else "-"
            d = f"{v['dispatch_entropy']:.2f}" if v["dispatch_entropy"] is not None else "-"
            lines.append(f"{method:<16}{value:>16}{100 * v['mean']:>10.1f} ± {100 * v['ci95']:<5.1f}  {seeds:<22}"
                         f"{v['escape']!s:<16}{h:>8}{d:>8}")
    return lines


def plot(runs: list[dict], values: list[str], setting: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        for i, value in enumerate(values):
            hist = [r["validation_history_stage1"] or r["validation_history"] for r in runs
                    if r["method"] == method and r["value"] == value]
            if not hist:
                continue
            n = min(len(h) for h in hist)
            mean = [100 * statistics.fmean(h[e] for h in hist) for e in range(n)]
            lo = [100 * min(h[e] for h in hist) for e in range(n)]
            hi = [100 * max(h[e] for h in hist) for e in range(n)]
            xs = list(range(1, n + 1))
            ax.plot(xs, mean, marker="o", color=f"C{i}", label=f"{value} (n={len(hist)})")
            ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15)
        ax.axhline(75, color="grey", lw=0.8, ls=":")
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs, not 1.5
        ax.legend(title=setting, fontsize=8)
    axes[0][0].set_ylabel("validation accuracy (%), mean and seed range")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: list[dict], values: list[str], setting: str, out: Path, meta: dict) -> None:
    summary = summarize(runs, values)
    lines = table(summary, setting) + [""] + verdicts(summary, setting)
    print("\n".join(lines))
    out.write_text(json.dumps({**meta, "setting": setting, "values": values, "summary": summary, "runs": runs},
                              indent=1))
    if runs:
        plot(runs, values, setting, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--figure", choices=sorted(FIGURES), default=None,
                    help="7.6: exploration schedules; 7.7: router learning rates (sets --setting and --values)")
    ap.add_argument("--setting", default=None, help="the configuration field to sweep (instead of --figure)")
    ap.add_argument("--values", nargs="+", default=None, help="its values (instead of --figure's)")
    ap.add_argument("--methods", nargs="+", default=["wp-signature", "wp-basic"])
    ap.add_argument("--preset", default="thesis", help="recipe preset under the sweep (none: the recipe defaults)")
    ap.add_argument("--sci_root", default="../shared/data/sci")
    ap.add_argument("--variant", default="joint", choices=["joint", "disjoint", "mismatch"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--stage2_epochs", type=int, default=3)
    ap.add_argument("--max_train_samples", type=int, default=0, help="cap the training set (0: all of it)")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="skip runs already in --out")
    ap.add_argument("--report_only", action="store_true", help="merge --inputs (or --out) into the report")
    ap.add_argument("--inputs", nargs="+", default=None)
    ap.add_argument("--out", default="benchmarks/results/sci_hyper.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.is_dir() or any(p.exists() and not p.is_dir() for p in out.parents):
        ap.error(f"--out {out}: {'a folder, not a file' if out.is_dir() else 'a parent of it is a file'}")
    if args.report_only:
        runs, metas, seen = [], [], set()
        for item in args.inputs or [args.out]:
            try:
                data = json.loads(Path(item).read_text())
                new = data["runs"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                ap.error(f"--inputs {item}: not a sci_hyper result file ({type(err).__name__}: {err})")
            metas.append({k: data.get(k) for k in ("machine", "commit", "args", "setting")})
            for r in new:
                if (r["value"], r["method"], r["seed"]) not in seen:
                    seen.add((r["value"], r["method"], r["seed"]))
                    runs.append(r)
        settings = {m["setting"] for m in metas}
        if len(settings) != 1:
            ap.error(f"--inputs sweep different settings: {sorted(map(str, settings))}")
        values = list(dict.fromkeys(v for m in metas for v in (m["args"] or {}).get("values") or []))
        values += [v for v in dict.fromkeys(r["value"] for r in runs) if v not in values]
        report(runs, values, settings.pop(), out, {"workers": metas})
        return
    if args.figure:
        setting, values = FIGURES[args.figure]
        if args.setting and args.setting != setting:
            ap.error(f"--figure {args.figure} sweeps {setting}; drop --setting {args.setting} or --figure")
        values = args.values or values
    elif args.setting and args.values:
        setting, values = args.setting, args.values
    else:
        ap.error("give --figure 7.6|7.7, or --setting NAME with --values V ...")
    if len(set(values)) != len(values):
        ap.error(f"--values {' '.join(values)}: a value is repeated")
    if not 0 <= args.worker < args.workers:
        ap.error(f"--worker {args.worker}: must be in 0..{args.workers - 1} (--workers {args.workers})")
    preset: dict = {}
    if args.preset != "none":  # ('' is a bad name, not "no preset")
        from nli_routing.experiments.presets import preset_values

        known = {f.name for cls in CONFIGS for f in fields(cls)}
        try:
            preset = preset_values(args.preset, "nli", known)
        except ValueError as err:
            ap.error(str(err))
    parsed = {}
    for method in args.methods:  # every value and method is checked now, in one line, not after hours of runs
        for value in values:
            try:
                owner = setting_owner(setting)
                parsed[value] = parse_value(owner, setting, value)
                resolve_method(configs(setting, parsed[value], preset, 0, args.epochs, args.stage2_epochs, method)[0])
            except (ValueError, TypeError) as err:
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                ap.error(msg if msg.startswith("--") else f"--setting {setting} --values {value} --methods {method}: {msg}")
    if any(seed < 0 for seed in args.seeds):
        ap.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed must be >= 0")
    if args.max_train_samples < 0:
        ap.error(f"--max_train_samples {args.max_train_samples}: must be >= 0 (0: all of it)")
    data_dir = Path(args.sci_root) / args.variant
    if not data_dir.is_dir():
        ap.error(f"--sci_root {args.sci_root}: no folder {args.variant} in it ({data_dir} "
                 f"{'is a file' if data_dir.exists() else 'does not exist'})")
    args.values, args.setting = values, setting
    logging.basicConfig(level=logging.WARNING)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = json.loads(out.read_text())["runs"] if args.resume and out.exists() else []
    done = {(r["value"], r["method"], r["seed"]) for r in runs}
    meta = {"machine": machine(), "commit": commit(), "args": vars(args), "setting": setting}
    try:  # data the flags cannot refute alone (no SCI files there, too few samples for the classes): one line
        prepared = prepare_sci(DataArgs(data_dir=str(data_dir), max_train_samples=args.max_train_samples or None,
                                        allow_unseen_meta=True))
    except (ValueError, OSError) as err:
        ap.error(f"--sci_root {args.sci_root} --variant {args.variant}: {str(err).splitlines()[0]}")
    started = time.time()
    index = -1
    for seed in args.seeds:
        for value in values:
            for method in args.methods:
                index += 1
                if index % args.workers != args.worker or (value, method, seed) in done:
                    continue
                base, model, train, dispatch = configs(setting, parsed[value], preset, seed, args.epochs,
                                                       args.stage2_epochs, method)
                res = run_method(base, prepared, model, train, dispatch_k=dispatch_k_of(method), dispatch_args=dispatch)
                rec = run_record(value, method, seed, res)
                rec.update(commit=meta["commit"], machine=meta["machine"])
                runs.append(rec)
                print(f"{setting}={value:<12} {method:<16} seed {seed}: test {rec['test_accuracy']:.4f} "
                      f"escape {escape_epoch(rec['validation_history_stage1'] or rec['validation_history'])} "
                      f"({rec['train_seconds']:.0f}s)", flush=True)
                out.write_text(json.dumps({**meta, "runs": runs}, indent=1))
    print(f"wall time {time.time() - started:.0f}s")
    report(runs, values, setting, out, meta)


if __name__ == "__main__":
    main()
