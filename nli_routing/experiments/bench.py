"""What every benchmark records next to its numbers (the machine, the commit of the code that ran) and
the training-step timing the ratio benchmarks share (interleaved rounds, profiles, peak memory)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: the folder of the code that runs (a checkout or a worktree): its git HEAD is the commit benchmarks record
CODE_ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU model, cores, torch threads and torch version of this process."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def commit() -> str:
    """The short hash of the HEAD of the checkout the running ``nli_routing`` comes from ("unknown" outside one)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=CODE_ROOT)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def embedded_pairs(n: int, premise: str = "premise", hypothesis: str = "hypothesis", meta: str = "signature") -> list[dict]:
    """``n`` pairs of the embedded joint test set with their signatures (mixed within any batch), repeated
    as needed; the keys are the names a consumer reads (the pipeline's ``text`` / ``text_pair`` / ``meta``)."""
    from ..data import EMBEDDED_SCI

    rows = [json.loads(line) for line in (Path(EMBEDDED_SCI) / "joint" / "test.jsonl").read_text().splitlines()]
    pairs = [{premise: r["premise"], hypothesis: r["hypothesis"], meta: r["signature"]} for r in rows]
    return (pairs * (n // len(pairs) + 1))[:n]


def merge_worker_results(paths, key, meta_keys=("machine", "commit", "args")) -> tuple[list[dict], list[dict]]:
    """Runs of several workers' result files, without duplicates (by ``key(run)``), and each file's metadata."""
    runs, metas = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs += data["runs"]
        metas.append({k: data.get(k) for k in meta_keys})
    seen, unique = set(), []
    for r in runs:
        k = key(r)
        if k not in seen:
            seen.add(k)
            unique.append(r)
    return unique, metas


# ---------------------------------------------------------------------- training-step timing
PHASES = ("step:forward", "step:router_loss", "step:backward", "step:optimizers")


class StepSetup:
    """A model in training mode with the shared loop's optimizers and one fixed batch, ready to step.

    ``step()`` runs :func:`nli_routing.training.loop.train_step` (the loop's own step) once.
    """

    def __init__(self, model, batch: dict, cfg, device: str = "cpu") -> None:
        from nli_routing.training.allocator import keep_freed_cpu_memory
        from nli_routing.training.loop import make_optimizers

        self.model = model.to(device).train()
        self.batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        self.cfg = cfg
        self.device = torch.device(device)
        if getattr(cfg, "keep_cpu_memory", False) and self.device.type == "cpu":  # as the training loop does
            keep_freed_cpu_memory()
        if getattr(cfg, "native_cpu_kernels", False) and self.device.type == "cpu":
            from nli_routing.routing.native import enable_native_cpu_kernels

            enable_native_cpu_kernels()
        self.block_opt, self.router_opt = make_optimizers(self.model, cfg)
        self.steps = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> None:
        from nli_routing.training.loop import train_step

        train_step(self.model, self.batch, self.block_opt, self.router_opt, self.cfg, step=self.steps)
        self.steps += 1

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


class BenchParser(argparse.ArgumentParser):
    """The benchmarks' argument parser: a bad flag exits (status 2, as argparse) with one line naming it, without
    the usage block (``--help`` shows that)."""

    def error(self, message: str):  # argparse's hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def check_output(parser, flag: str, path: str) -> None:
    """``parser.error`` before any work when the JSON ``path`` given by ``flag`` cannot be written: a folder, or a
    folder that cannot be made or written to (the run would otherwise end in a traceback after its timings)."""
    out = Path(path)
    if out.is_dir():
        parser.error(f"{flag} {path}: is a folder; give the JSON file's name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"{flag} {path}: cannot make its folder ({e.strerror or e})")
    if not os.access(out.parent, os.W_OK):
        parser.error(f"{flag} {path}: its folder is not writable")


def check_bounds(parser, args, bounds: dict[str, int]) -> None:
    """``parser.error`` for the first flag below its bound: ``bounds`` maps a flag's dest to the least value it
    takes; a list flag (``nargs``) is checked element by element."""
    for name, least in bounds.items():
        value = getattr(args, name)
        if min(value if isinstance(value, list) else [value]) < least:
            parser.error(f"--{name} must be >= {least}, got {value}")


def interleaved_step_times(
    setups: dict[str, StepSetup], warmup: int = 2, rounds: int = 5, steps_per_round: int = 3
) -> dict[str, Any]:
    """Median training-step time of every setup, measured in interleaved rounds.

    After ``warmup`` steps each, every round times ``steps_per_round`` consecutive steps of each
    setup, the order of the setups rotating from round to round (slow drifts of a shared machine
    hit all of them alike). Returns ``{"ms": {name: median over rounds of the mean step}, "rounds":
    {name: [per-round mean ms]}}``; ratios between setups should be taken round by round
    (:func:`round_ratio`).
    """
    torch.set_flush_denormal(True)  # as the training loop does
    names = list(setups)
    for s in setups.values():
        for _ in range(warmup):
            s.step()
        s.sync()
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            s = setups[name]
            s.sync()
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                s.step()
            s.sync()
            per_round[name].append(1000 * (time.perf_counter() - t0) / steps_per_round)
    return {"ms": {n: statistics.median(v) for n, v in per_round.items()}, "rounds": per_round}


def round_ratio(times: dict[str, Any], num: str, den: str) -> float:
    """Median over rounds of ``num``'s step time over ``den``'s in the same round."""
    return statistics.median(a / b for a, b in zip(times["rounds"][num], times["rounds"][den]))


def step_profile(setup: StepSetup, steps: int = 2, top: int = 12) -> dict[str, Any]:
    """Where a step's time goes: ms per phase of the loop's step (median over ``steps`` profiled
    steps) and the ``top`` operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    setup.step()  # optimizer state exists before profiling
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            setup.step()
    setup.sync()
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    for e in prof.events():
        if e.name in phases:
            phases[e.name].append(e.cpu_time_total / 1000.0)
    return {
        "phases_ms": {p.split(":", 1)[1]: statistics.median(v) for p, v in phases.items() if v},
        "top_ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top),
    }


def step_op_count(setup: StepSetup) -> dict[str, int]:
    """Operators one training step dispatches: ``{"aten": total, name: count, ...}`` over the ``aten::``
    operators the profiler records (forward, router loss, backward, optimizers). Counts do not drift
    with the machine's load, so a regression in the number of small operations shows in a test."""
    from torch.profiler import ProfilerActivity, profile

    setup.step()  # optimizer state exists before counting
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        setup.step()
    counts = {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
    return {"aten": sum(counts.values()), **dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def peak_step_memory(setup: StepSetup) -> int:
    """Peak bytes allocated during one training step beyond what was allocated before it
    (activations, gradients, temporaries; parameters and optimizer state existed already).

    CUDA: the allocator's peak statistic. CPU: the profiler's allocation events, replayed in order.
    """
    setup.step()  # optimizer state exists before measuring
    if setup.device.type == "cuda":
        setup.sync()
        base = torch.cuda.memory_allocated(setup.device)
        torch.cuda.reset_peak_memory_stats(setup.device)
        setup.step()
        setup.sync()
        return int(torch.cuda.max_memory_allocated(setup.device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        setup.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def spread_routes(model, seed: int = 0) -> None:
    """Random tabular router values, so the meta classes of a batch take different blocks, as after
    training (fresh tables tie, and with a large negative init every sample could take block 0)."""
    from nli_routing.routing.routers import TabularRouter

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, TabularRouter):
            with torch.no_grad():
                m.table.copy_(torch.randn(m.table.shape, generator=g))


# ---------------------------------------------------------------------- the benchmarks' models and batches
# (shared by benchmarks/perf.py, benchmarks/bank_crossover.py and the tests' smoke runs)
def mlp_model(method: str, blocks: int, tasks: int, dim: int = 64, layers: int = 3, classes: int = 10) -> nn.Module:
    """The FC-only 'Base' network: ``layers`` FC layers of ``dim`` (routed, soft mixture, cross-stitch
    or shared) and one head per task, on ``dim``-dimensional inputs."""
    from nli_routing.models.vision import VisionMTLConfig, VisionMTLModel
    from nli_routing.routing.config import RoutingCollapseWarning

    torch.manual_seed(0)
    with warnings.catch_warnings():  # a timed model, never trained to accuracy: where its routes go is not the point
        warnings.simplefilter("ignore", RoutingCollapseWarning)
        return VisionMTLModel(VisionMTLConfig(
            num_meta=tasks, method=method, num_classes=classes, in_channels=dim, image_size=1, conv_layers=0,
            fc_hidden=dim, fc_layers=layers, fc_width=blocks, exploration="low"))


def mlp_batch(size: int, tasks: int, dim: int = 64, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(size, dim, 1, 1, generator=g),
            "labels": torch.randint(0, classes, (size,), generator=g),
            "meta": torch.randint(0, tasks, (size,), generator=g)}


def cbow_model(route: str, width: int = 4, depth: int = 1, vocab: int = 20000, dim: int = 300,
               num_meta: int = 8) -> nn.Module:
    """CBOW NLI model with a routed (``route="wp"``) or unrouted (``"projection"``) word projection."""
    from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel

    torch.manual_seed(0)
    weight = torch.randn(vocab, dim) * 0.3
    cfg = NLIModelConfig(num_meta=num_meta, route=route, wp_width=width, wp_depth=depth, exploration="low")
    return NLIRoutingModel(cfg, weight, pad_id=0)


def cbow_batch(size: int, vocab: int = 20000, num_meta: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """SCI-like pairs: premises of 6-14 tokens, hypotheses of 5-13 (SCI averages 10.3 and 9.5 words)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (lo, hi) in (("premise", (6, 15)), ("hypothesis", (5, 14))):
        lengths = torch.randint(lo, hi, (size,), generator=g)
        mask = torch.arange(hi - 1).unsqueeze(0) < lengths.unsqueeze(1)
        out[f"{name}_ids"] = torch.randint(1, vocab, mask.shape, generator=g) * mask
        out[f"{name}_mask"] = mask
    out["labels"] = torch.randint(0, 3, (size,), generator=g)
    out["meta"] = torch.randint(0, num_meta, (size,), generator=g)
    return out


#: ``keep_cpu_memory`` of :func:`train_cfg`'s configs (off, the loop's default; perf.py's ``--keep_cpu_memory`` turns
#: it on for a whole process: the allocator setting is process-wide)
KEEP_CPU_MEMORY = {"value": False}
#: ``native_cpu_kernels`` of :func:`train_cfg`'s configs (off, the loop's default; perf.py's ``--native_cpu_kernels``
#: turns it on for a whole process: the switch is process-wide)
NATIVE_CPU_KERNELS = {"value": False}


def train_cfg(**kw):
    from nli_routing.training.loop import TrainConfig

    kw.setdefault("keep_cpu_memory", KEEP_CPU_MEMORY["value"])
    kw.setdefault("native_cpu_kernels", NATIVE_CPU_KERNELS["value"])
    return TrainConfig(cpu=True, progress=False, **kw)


def cbow_cfg():
    from nli_routing.experiments.nli import RECIPE_TRAIN_DEFAULTS

    return train_cfg(**RECIPE_TRAIN_DEFAULTS)
