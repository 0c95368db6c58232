"""Performance suite (issue 8): routed training steps against their unrouted limit, as ratios.

    HF_HUB_OFFLINE=1 python benchmarks/perf.py                  # everything, < 10 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/perf.py --only mlp cbow  # some sections
    HF_HUB_OFFLINE=1 python benchmarks/perf.py --quick          # a smoke run (seconds; numbers meaningless)

A routed model does the arithmetic of the unrouted model of the same depth (each sample passes
through one block per step), so the unrouted training step is the limit of the routed one. Every
figure is a ratio of two step times measured in the same process, in interleaved rounds (see
:func:`common.interleaved_step_times`). A step is the training loop's own
:func:`~nli_routing.training.loop.train_step`: forward, rewards, router loss, backward, both
optimizer steps. Sections:

1. ``mlp``: a plain routed MLP (3 routed layers of 8 blocks 64x64, tabular Q-learning routers over
   8 tasks, one head per task) vs the same network unrouted (3 shared layers), batch 64/512/2048;
   ``cbow``: the CBOW+WP NLI model (routed word projection, b=4 blocks 300x300, d=1, per-signature
   tabular router, routed over every token) vs CBOW with an unrouted projection of the same depth.
2. ``scaling`` (batch 512 and 2048): the routed MLP's step as the number of blocks per layer grows (2, 8, 32, 128;
   8 tasks) and as the number of tasks grows (2 to 64, one block per task per layer as in the
   thesis' Figure 5.5), next to the soft mixture (every block on every sample) and cross-stitch
   networks (one column per task); each relative to its 8-block (8-task) configuration.
3. ``minilm``: routed attention (4 copies of every attention sublayer; the target row), block (4
   copies of every layer) and lora (4 rank-8 low-rank experts on every attention projection and
   feed-forward linear, base frozen) vs the unrouted MiniLM: fine-tuning step on a batch of 16
   pairs of 32 tokens, parameters added, peak step memory.
4. peak memory of every configuration: the parameters, and the peak of what one step allocates on
   top (activations, gradients, temporaries).
5. ``compile``: the routed and unrouted MLP under ``torch.compile`` (inductor) against eager.
6. ``predict``: inference through :class:`~nli_routing.inference.RoutedNLIPredictor` (tokenizing,
   meta lookup, forward, the route of every sample) from saved model folders, pairs per second at
   ``--predict_batch`` (512): CBOW+WP (routed by signature) vs CBOW with the unrouted projection of
   the same depth, the H2H-routed LSTM vs the plain LSTM, routed-attention MiniLM vs MiniLM; the
   pairs are the embedded SCI test split, repeated to ``--predict_pairs``.

``mlp-256`` repeats section 1's MLP with blocks of 256x256 (no target: it shows how the fixed cost of
routing shrinks against the arithmetic).

Routers start fresh at the library's defaults: their tables tie and ties go to the lowest index (the
learners' ``ties="lowest"``), so greedy decisions take block 0 and only the exploring share of the
samples spreads over the other blocks (about 90% of the MLP rows take block 0: a skewed batch, not
the worst case for grouping; ``benchmarks/bank_crossover.py --routes uniform`` measures that). Writes ``<output>.json`` and a
plot of the scaling section to ``<output>.png``; where a target is missed, the JSON holds a profile
of the routed step (time per phase and the top operators).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nli_routing.experiments.bench import (  # noqa: E402
    BenchParser,
    KEEP_CPU_MEMORY,
    NATIVE_CPU_KERNELS,
    StepSetup,
    cbow_batch,
    cbow_cfg,
    cbow_model,
    commit,
    interleaved_step_times,
    machine,
    mlp_batch,
    mlp_model,
    peak_step_memory,
    round_ratio,
    step_op_count,
    step_profile,
    train_cfg,
)
from nli_routing.routing.native import native_cpu_kernels_enabled, native_kernel_reason  # noqa: E402
from nli_routing.training.allocator import cpu_memory_kept  # noqa: E402

SECTIONS = ("mlp", "cbow", "scaling", "minilm", "compile", "predict")
#: the bars of the latest performance issue (33): routed / unrouted, 128 vs 8 blocks, MiniLM attention (issue 19's,
#: "not worse" in 33) and block routes
TARGETS = {"ratio": 1.3, "blocks_128_vs_8": 1.3, "minilm": 1.2, "minilm_block": 1.1}


# ---------------------------------------------------------------------- measurements
def measure(setups: dict[str, StepSetup], args, memory: bool = True) -> dict[str, Any]:
    """Interleaved step times of ``setups`` and, with ``memory``, their memory."""
    times = interleaved_step_times(setups, warmup=args.warmup, rounds=args.rounds,
                                   steps_per_round=args.steps_per_round)
    out = {"ms": times["ms"], "rounds": times["rounds"]}
    if memory:
        out["param_mb"] = {n: s.parameter_bytes() / 2**20 for n, s in setups.items()}
        out["step_peak_mb"] = {n: peak_step_memory(s) / 2**20 for n, s in setups.items()}
    return out


def ratio_section(name: str, make: Callable[[str], nn.Module], batch_fn: Callable[[int], dict], cfg_fn,
                  routed: str, unrouted: str, batches: list[int], args, log, target: bool = True) -> list[dict]:
    """Routed over unrouted step time per batch size (``target``: the issue's target applies)."""
    rows = []
    for b in batches:
        batch = batch_fn(b)
        setups = {k: StepSetup(make(k), batch, cfg_fn(), args.device) for k in (unrouted, routed)}
        m = measure(setups, args)
        ratio = round_ratio(m, routed, unrouted)
        row = {"model": name, "batch": b, "target": target, "ratio": ratio, "routed_ms": m["ms"][routed],
               "unrouted_ms": m["ms"][unrouted], **{k: m[k] for k in ("rounds", "param_mb", "step_peak_mb")},
               "aten_ops": {k: step_op_count(s)["aten"] for k, s in setups.items()}}
        if target and b >= 512 and ratio > TARGETS["ratio"] or args.profile:
            row["profile"] = {k: step_profile(s) for k, s in setups.items()}
        log(f"{name:<8} batch {b:>5}: routed {row['routed_ms']:8.2f} ms  unrouted {row['unrouted_ms']:8.2f} ms"
            f"  ratio {ratio:5.2f}   peak MB {m['step_peak_mb'][routed]:7.1f} vs {m['step_peak_mb'][unrouted]:7.1f}"
            f"   ops {row['aten_ops'][routed]} vs {row['aten_ops'][unrouted]}")
        rows.append(row)
        del setups
    return rows


def scaling_section(args, log) -> list[dict]:
    """Step time vs number of blocks (8 tasks) and vs number of tasks (one block per task)."""
    return [row for b in args.scaling_batches for row in scaling_rows(b, args, log)]


def scaling_rows(b: int, args, log) -> list[dict]:
    rows = []
    sweeps = [
        ("blocks", args.blocks, [("routing", "routing"), ("soft-mixture", "soft-mixture")]),
        ("tasks", args.tasks, [("routing", "routing"), ("soft-mixture", "soft-mixture"),
                               ("cross-stitch", "cross-stitch")]),
    ]
    for sweep, values, methods in sweeps:
        ref = 8 if 8 in values else values[0]
        for label, method in methods:
            setups = {}
            for v in values:
                blocks, tasks = (v, 8) if sweep == "blocks" else (v, v)
                batch = mlp_batch(b, tasks)
                setups[str(v)] = StepSetup(mlp_model(method, blocks, tasks), batch, train_cfg(), args.device)
            m = measure(setups, args)
            rel = {v: round_ratio(m, v, str(ref)) for v in setups}
            row = {"sweep": sweep, "method": label, "batch": b, "reference": ref, "ms": m["ms"],
                   "relative": rel, "param_mb": m["param_mb"], "step_peak_mb": m["step_peak_mb"],
                   "rounds": m["rounds"]}
            top = str(max(values))
            if label == "routing" and sweep == "blocks" and rel[top] > TARGETS["blocks_128_vs_8"] or args.profile:
                row["profile"] = {k: step_profile(setups[k]) for k in (str(ref), top)}
            log(f"{sweep:<6} {label:<13} batch {b}: " + "  ".join(f"{v}: {rel[v]:5.2f}x" for v in rel)
                + f"   (ref {ref}: {m['ms'][str(ref)]:.2f} ms)")
            rows.append(row)
            del setups
    return rows


def compile_section(args, log) -> dict:
    """The routed and the unrouted MLP under ``torch.compile`` (inductor) next to eager, batch 2048."""
    b = max(args.batches)
    batch = mlp_batch(b, 8)
    setups = {}
    for kind in ("shared-bottom", "routing"):
        setups[f"{kind} eager"] = StepSetup(mlp_model(kind, 8, 8), batch, train_cfg(), args.device)
        compiled = torch.compile(mlp_model(kind, 8, 8))
        setups[f"{kind} compiled"] = StepSetup(compiled, batch, train_cfg(), args.device)
    start = time.perf_counter()
    try:
        for name, s in setups.items():
            if name.endswith("compiled"):
                s.step()  # compilation
    except Exception as err:  # no C++ compiler, an unsupported op, ...
        log(f"compile  failed: {type(err).__name__}: {err}")
        return {"error": f"{type(err).__name__}: {err}"}
    compile_s = time.perf_counter() - start
    m = measure(setups, args, memory=False)
    row = {"batch": b, "compile_seconds": compile_s, "ms": m["ms"], "rounds": m["rounds"],
           "routed_over_unrouted_compiled": round_ratio(m, "routing compiled", "shared-bottom compiled"),
           "routed_over_unrouted_eager": round_ratio(m, "routing eager", "shared-bottom eager"),
           "routed_compiled_over_eager": round_ratio(m, "routing compiled", "routing eager"),
           "unrouted_compiled_over_eager": round_ratio(m, "shared-bottom compiled", "shared-bottom eager")}
    log(f"compile  batch {b}: routed/unrouted compiled {row['routed_over_unrouted_compiled']:.2f} "
        f"(eager {row['routed_over_unrouted_eager']:.2f}); compiled/eager routed "
        f"{row['routed_compiled_over_eager']:.2f}, unrouted {row['unrouted_compiled_over_eager']:.2f} "
        f"(compilation {compile_s:.0f} s)")
    return row


def minilm_section(args, log) -> dict:
    """Routed MiniLM vs the unrouted one, one fine-tuning step on synthetic pairs, all routes of
    ``--minilm_routes`` in the same interleaved rounds: attention (``--minilm_blocks`` copies of every
    attention sublayer; the row with the target), block (copies of every layer) and lora (that many
    rank-8 experts on every attention projection and feed-forward linear). Each row: step time
    ratio, parameters added over the unrouted model, peak step memory."""
    from sci_table52 import minilm_factory  # the Table 5.2 benchmark's model builder

    from nli_routing.models.transformer import count_parameters

    recipe_defaults = _finetune_defaults()
    make = minilm_factory(args.minilm_blocks, 8, spread=False)
    g = torch.Generator().manual_seed(0)
    size, length = args.minilm_batch, args.minilm_length
    ids = torch.randint(1000, 30000, (size, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.randint(0, 3, (size,), generator=g), "meta": torch.randint(0, 8, (size,), generator=g)}
    kinds = ["none", *dict.fromkeys(["attention", *args.minilm_routes])]
    setups = {k: StepSetup(make(k), batch, train_cfg(**recipe_defaults), args.device) for k in kinds}
    counts = {k: count_parameters(s.model) for k, s in setups.items()}
    m = measure(setups, args)
    routes = {}
    for k in kinds[1:]:
        routes[k] = {"ratio": round_ratio(m, k, "none"), "routed_ms": m["ms"][k],
                     "added_parameters": counts[k]["total"] - counts["none"]["total"],
                     "trainable_parameters": counts[k]["trainable"], "param_mb": m["param_mb"][k],
                     "step_peak_mb": m["step_peak_mb"][k]}
        log(f"minilm {k:<9} batch {size}x{length}: {m['ms'][k]:8.1f} ms vs {m['ms']['none']:8.1f} ms  ratio "
            f"{routes[k]['ratio']:5.2f}  +{routes[k]['added_parameters']:>11,} params  peak MB "
            f"{m['step_peak_mb'][k]:7.1f} vs {m['step_peak_mb']['none']:7.1f}")
    ratio = routes["attention"]["ratio"]
    row = {"model": "minilm", "batch": [size, length], "num_blocks": args.minilm_blocks, "ratio": ratio,
           "routed_ms": m["ms"]["attention"], "unrouted_ms": m["ms"]["none"], "routes": routes,
           "unrouted_parameters": counts["none"]["total"],
           **{k: m[k] for k in ("rounds", "param_mb", "step_peak_mb")}}
    if ratio > TARGETS["minilm"] or args.profile:
        row["profile"] = {k: step_profile(setups[k], steps=1) for k in ("none", "attention")}
    return row


def predict_section(args, log) -> list[dict]:
    """Pairs per second of ``predict`` for routed models vs their unrouted counterparts (same run)."""
    import tempfile

    from transformers import AutoTokenizer

    from nli_routing.experiments.nli import DataArgs, build_model, prepare_sci
    from nli_routing.inference import RoutedNLIPredictor
    from nli_routing.models.embeddings import default_model_path
    from nli_routing.models.nli import NLIModelConfig
    from nli_routing.models.transformer import RoutedTransformerForNLI, TransformerNLIConfig

    prepared = prepare_sci(DataArgs())
    test = prepared.data["test"].with_format(None)
    names = prepared.meta_names
    rows = [{"premise": r["premise"], "hypothesis": r["hypothesis"], "signature": names[r["signature"]]} for r in test]
    pairs = (rows * (args.predict_pairs // len(rows) + 1))[: args.predict_pairs]
    base = NLIModelConfig(num_meta=len(names), classifier_hidden=600)
    kinds = {
        "cbow+wp": ({"route": "wp"}, {"route": "projection"}),
        "lstm-h2h": ({"model": "lstm", "route": "none", "lstm_route": "h2h"},
                     {"model": "lstm", "route": "none", "lstm_route": "none"}),
    }
    tmp = Path(tempfile.mkdtemp(prefix="perf_predict_"))
    predictors: dict[str, RoutedNLIPredictor] = {}
    for name, (routed, unrouted) in kinds.items():
        for tag, over in (("routed", routed), ("unrouted", unrouted)):
            model = build_model(base, over, prepared.vectors)
            model.describe(label_names=prepared.label_names, meta_names=names, meta_column="signature",
                           data_meta_column="signature", input_max_length=prepared.max_length)
            model.save_pretrained(tmp / f"{name}-{tag}", tokenizer=prepared.vectors.tokenizer)
            predictors[f"{name}/{tag}"] = RoutedNLIPredictor.from_pretrained(tmp / f"{name}-{tag}")
    if "minilm" in args.predict_models:
        tok = AutoTokenizer.from_pretrained(default_model_path())
        for tag, route in (("routed", "attention"), ("unrouted", "none")):
            torch.manual_seed(0)
            model = RoutedTransformerForNLI(TransformerNLIConfig(route=route, num_blocks=args.minilm_blocks,
                                                                 num_meta=len(names)))
            model.describe(label_names=prepared.label_names, meta_names=names, meta_column="signature",
                           data_meta_column="signature", input_max_length=128)
            model.save_pretrained(tmp / f"minilm-{tag}", tokenizer=tok)
            predictors[f"minilm/{tag}"] = RoutedNLIPredictor.from_pretrained(tmp / f"minilm-{tag}")
    predictors = {k: v for k, v in predictors.items() if k.split("/")[0] in args.predict_models}
    times: dict[str, list[float]] = {k: [] for k in predictors}
    for k, p in predictors.items():  # warm-up
        p.predict(pairs[: args.predict_batch], batch_size=args.predict_batch)
    for _ in range(args.predict_rounds):  # interleaved rounds: drift hits every configuration alike
        for k, p in predictors.items():
            t0 = time.perf_counter()
            p.predict(pairs, batch_size=args.predict_batch)
            times[k].append(time.perf_counter() - t0)
    out = []
    for name in dict.fromkeys(k.split("/")[0] for k in predictors):
        r, u = times[f"{name}/routed"], times[f"{name}/unrouted"]
        ratios = sorted(a / b for a, b in zip(r, u))  # round by round, routed time over unrouted time
        row = {"model": name, "batch": args.predict_batch, "pairs": len(pairs), "rounds": args.predict_rounds,
               "routed_pairs_per_s": len(pairs) / min(r), "unrouted_pairs_per_s": len(pairs) / min(u),
               "time_ratio_median": ratios[len(ratios) // 2], "time_ratio_min": ratios[0], "time_ratio_max": ratios[-1]}
        log(f"predict  {name:<9} batch {args.predict_batch}: routed {row['routed_pairs_per_s']:8.0f} pairs/s  unrouted "
            f"{row['unrouted_pairs_per_s']:8.0f} pairs/s  time ratio {row['time_ratio_median']:.2f} "
            f"({row['time_ratio_min']:.2f}-{row['time_ratio_max']:.2f})")
        out.append(row)
    return out


def _finetune_defaults() -> dict:
    from nli_routing.experiments.transformer import TRAIN_DEFAULTS  # the fine-tuning recipe's defaults

    return dict(TRAIN_DEFAULTS)


# ---------------------------------------------------------------------- report
def verdicts(result: dict) -> list[str]:
    lines = []
    for row in result.get("ratios", []):
        if row["batch"] >= 512 and row.get("target", True):
            ok = row["ratio"] <= TARGETS["ratio"]
            lines.append(f"{row['model']} batch {row['batch']}: routed/unrouted {row['ratio']:.2f} "
                         f"(target <= {TARGETS['ratio']}) {'met' if ok else 'MISSED'}")
    for row in result.get("scaling", []):
        if row["sweep"] == "blocks" and row["method"] == "routing":
            top = str(max(int(k) for k in row["relative"]))
            v = row["relative"][top]
            lines.append(f"routing {top} vs 8 blocks, batch {row['batch']}: {v:.2f}x (target <= "
                         f"{TARGETS['blocks_128_vs_8']}) {'met' if v <= TARGETS['blocks_128_vs_8'] else 'MISSED'}")
    if "minilm" in result:
        v = result["minilm"]["ratio"]
        lines.append(f"MiniLM attention routed/unrouted: {v:.2f} (target <= {TARGETS['minilm']}) "
                     f"{'met' if v <= TARGETS['minilm'] else 'MISSED'}")
        block = result["minilm"].get("routes", {}).get("block")
        if block is not None:
            v = block["ratio"]
            lines.append(f"MiniLM block routed/unrouted: {v:.2f} (target <= {TARGETS['minilm_block']}) "
                         f"{'met' if v <= TARGETS['minilm_block'] else 'MISSED'}")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.get("scaling", [])
    if not rows:
        return
    panels = sorted({(r["sweep"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (sweep, batch) in zip(axes[0], panels):
        for row in (r for r in rows if r["sweep"] == sweep and r["batch"] == batch):
            xs = sorted(int(k) for k in row["relative"])
            ax.plot(xs, [row["relative"][str(x)] for x in xs], marker="o", label=row["method"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("blocks per layer (8 tasks)" if sweep == "blocks" else "tasks (one block per task)")
        ax.set_ylabel("step time / step time at 8")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.suptitle(f"training step cost ({result['machine']})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = BenchParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--batches", nargs="+", type=int, default=[64, 512, 2048])
    p.add_argument("--blocks", nargs="+", type=int, default=[2, 8, 32, 128])
    p.add_argument("--tasks", nargs="+", type=int, default=[2, 8, 32, 64])
    p.add_argument("--scaling_batches", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--minilm_blocks", type=int, default=4)
    p.add_argument("--minilm_batch", type=int, default=16)
    p.add_argument("--minilm_length", type=int, default=32)
    p.add_argument("--minilm_routes", nargs="+", default=["attention", "block", "lora"],
                   choices=["attention", "block", "lora"], help="routed MiniLM rows (attention always runs)")
    p.add_argument("--predict_batch", type=int, default=512)
    p.add_argument("--predict_pairs", type=int, default=4096)
    p.add_argument("--predict_rounds", type=int, default=5)
    p.add_argument("--predict_models", nargs="+", default=["cbow+wp", "lstm-h2h", "minilm"],
                   choices=["cbow+wp", "lstm-h2h", "minilm"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps_per_round", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="profile every configuration, not only misses")
    p.add_argument("--keep_cpu_memory", action="store_true",
                   help="let glibc's malloc keep freed memory (the loop's TrainConfig.keep_cpu_memory; process-wide, "
                        "so the whole run)")
    p.add_argument("--native_cpu_kernels", action="store_true",
                   help="run the routed banks with the library's C++ kernel (the loop's TrainConfig.native_cpu_kernels; "
                        "process-wide, so the whole run; built on first use)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one round (a smoke test)")
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "perf"))
    args = p.parse_args(argv)
    KEEP_CPU_MEMORY["value"] = args.keep_cpu_memory
    NATIVE_CPU_KERNELS["value"] = args.native_cpu_kernels
    if args.quick:
        args.batches, args.blocks, args.tasks = [32], [2, 8], [2, 8]
        args.scaling_batches, args.minilm_batch, args.minilm_length = [64], 2, 8
        args.warmup, args.rounds, args.steps_per_round = 1, 1, 1
        args.predict_batch, args.predict_pairs, args.predict_rounds = 16, 32, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    result: dict[str, Any] = {"machine": machine(), "commit": commit(), "args": vars(args),
                              "targets": TARGETS, "ratios": []}
    log(result["machine"])
    if "mlp" in args.only:
        result["ratios"] += ratio_section(
            "mlp", lambda k: mlp_model(k, 8, 8), lambda b: mlp_batch(b, 8), train_cfg,
            "routing", "shared-bottom", args.batches, args, log)
        # the same network with wider blocks: where the fixed routing overhead stops mattering
        result["ratios"] += ratio_section(
            "mlp-256", lambda k: mlp_model(k, 8, 8, dim=256), lambda b: mlp_batch(b, 8, dim=256), train_cfg,
            "routing", "shared-bottom", args.batches, args, log, target=False)
    if "cbow" in args.only:
        result["ratios"] += ratio_section(
            "cbow+wp", lambda k: cbow_model(k), lambda b: cbow_batch(b), cbow_cfg,
            "wp", "projection", args.batches, args, log)
    if "scaling" in args.only:
        result["scaling"] = scaling_section(args, log)
    if "minilm" in args.only:
        result["minilm"] = minilm_section(args, log)
    if "compile" in args.only:
        result["compile"] = compile_section(args, log)
    if "predict" in args.only:
        result["predict"] = predict_section(args, log)
    result["seconds"] = time.perf_counter() - start
    result["cpu_memory_kept"] = cpu_memory_kept()
    result["native_cpu_kernels"] = native_cpu_kernels_enabled() if args.native_cpu_kernels else False
    if args.native_cpu_kernels and not result["native_cpu_kernels"]:
        result["native_cpu_kernels_reason"] = native_kernel_reason()
    result["verdicts"] = verdicts(result)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    for line in result["verdicts"]:
        log(line)
    log(f"wrote {out.with_suffix('.json')} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
