"""Training-step time of the authors' reference implementation, PytorchRouting, beside ours on the same
routed MLP (one process, interleaved rounds, one torch thread).

    HF_HUB_OFFLINE=1 python benchmarks/pytorchrouting_compare.py --pytorchrouting /path/to/RoutingNetworks \
        --pytorchrouting_commit <sha>     # batches 512 and 2048, 7 rounds (a few minutes)
    HF_HUB_OFFLINE=1 python benchmarks/pytorchrouting_compare.py --quick ...   # seconds; numbers meaningless

PytorchRouting (github cle-ros/RoutingNetworks) is not on PyPI and stays outside this repository:
``--pytorchrouting`` (default ``$PYTORCHROUTING_PATH``) names a checkout; its package is loaded from there
by file location (``sys.path`` untouched). Both sides: 3 routed layers of 8 blocks ``Linear(64,64)+ReLU``,
tabular Q-learning, one agent per task (8 tasks, exploration 0.1), one ``Linear(64,10)`` head per task,
final reward +1/-1 (correct classification). Theirs: ``Initialization`` -> ``PerTaskAssignment`` -> 3 x
(``QLearning(policy_storage_type='tabular', num_agents=8)`` -> ``Selection``) -> ``Selection`` of the heads
(by task), ``Loss(CrossEntropyLoss(), CorrectClassifiedReward())``. Ours: ``mlp_model("routing", 8, 8)`` (``nli_routing.experiments.bench``, as in perf.py)
and its unrouted twin ``shared-bottom``. A step, both sides: forward, module + routing loss, backward, the
blocks' and the routers' SGD steps (learning rates of ``perf.train_cfg()``). Batch: ``perf.mlp_batch`` with
labels from a fixed random linear teacher. GC: the collector's time inside each step during the timed
rounds (``gc.callbacks``), and step time with it enabled / after ``gc.freeze()`` / disabled.

Shims for torch 2.13: none needed by their API. Their uint8 index masks and uint8 ``torch.where``
conditions still work but warn; only those two warnings are silenced (their code runs unchanged).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from nli_routing.experiments.bench import BenchParser, StepSetup, commit, interleaved_step_times, machine

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
BLOCKS, TASKS, LAYERS, DIM, CLASSES, EXPLORATION = 8, 8, 3, 64, 10, 0.1
SHIMS = ["warnings.filterwarnings('ignore') for torch's deprecation warnings about uint8 index masks "
         "and uint8 torch.where conditions (their code still runs unchanged)"]


def fail(msg: str) -> None:
    print(f"pytorchrouting_compare: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_module(name: str, path: Path, package_dir: Path | None = None):
    """``path`` as module ``name`` (a package when ``package_dir`` is given), registered in sys.modules."""
    if name in sys.modules:
        return sys.modules[name]
    kw = {"submodule_search_locations": [str(package_dir)]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: the package's own absolute imports look it up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name)
        raise
    return module


def load_pytorchrouting(path: str | None):
    """The checkout's ``PytorchRouting`` package and the submodules the script uses (exit 2 if absent)."""
    flag = "--pytorchrouting PATH (or PYTORCHROUTING_PATH)"
    if not path:
        fail(f"{flag} is required: a checkout of github cle-ros/RoutingNetworks (not on PyPI)")
    root = Path(path).expanduser().resolve()
    if not (root / "PytorchRouting" / "__init__.py").is_file():
        fail(f"{flag}: {root} is no RoutingNetworks checkout (no PytorchRouting/__init__.py in it)")
    if root == REPO_ROOT or REPO_ROOT in root.parents:
        fail(f"{flag}: {root} lies inside this repository; keep the reference code outside it")
    loaded = sys.modules.get("PytorchRouting")
    if loaded is not None and Path(loaded.__file__).resolve().parent != root / "PytorchRouting":
        fail(f"{flag}: another PytorchRouting ({loaded.__file__}) is already imported")
    warnings.filterwarnings("ignore", message="indexing with dtype torch.uint8")
    warnings.filterwarnings("ignore", message="where received a uint8 condition")
    try:
        load_module("PytorchRouting", root / "PytorchRouting" / "__init__.py", root / "PytorchRouting")
        import PytorchRouting.CoreLayers as core
        import PytorchRouting.DecisionLayers as decisions
        import PytorchRouting.RewardFunctions.Final as rewards
    except Exception as err:  # noqa: BLE001 - one clear line instead of a traceback
        fail(f"{flag}: cannot import PytorchRouting from {root}: {type(err).__name__}: {err}")
    return root, core, decisions, rewards


def checkout_commit(root: Path, explicit: str | None) -> str:
    """``explicit``, else the HEAD of ``root`` when ``root`` is the top of a git work tree."""
    git = ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"]
    try:
        out = subprocess.run(git, capture_output=True, text=True) if not explicit else None
    except OSError:
        out = None
    lines = out.stdout.split() if out is not None and out.returncode == 0 else []
    if explicit or (len(lines) == 2 and Path(lines[0]).resolve() == root):
        return explicit or lines[1]
    return "unknown (not a git checkout)"


def split_params(model) -> tuple[list, list]:
    """(router parameters, all the others: the blocks and heads)."""
    routers = model.router_parameters()
    ids = {id(q) for q in routers}
    return routers, [q for q in model.parameters() if id(q) not in ids]


class TheirRoutedMLP(nn.Module):
    """The routed MLP from PytorchRouting's layers (see the module doc)."""

    def __init__(self, pr) -> None:
        super().__init__()
        core, decisions, rewards = pr
        torch.manual_seed(0)
        self.initialization = core.Initialization()
        self.assignment = decisions.PerTaskAssignment()  # task id -> agent id
        self.decisions = nn.ModuleList(
            decisions.QLearning(BLOCKS, DIM, num_agents=TASKS, exploration=EXPLORATION, policy_storage_type="tabular")
            for _ in range(LAYERS))
        self.selections = nn.ModuleList(
            core.Selection(*[nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU()) for _ in range(BLOCKS)])
            for _ in range(LAYERS))
        self.heads = core.Selection(*[nn.Linear(DIM, CLASSES) for _ in range(TASKS)])
        self.loss = core.Loss(nn.CrossEntropyLoss(), rewards.CorrectClassifiedReward())
        self._decision_cls = decisions.Decision

    def forward(self, x, tasks: list[int]):
        y, meta, _ = self.initialization(x, tasks=tasks)
        y, meta, task_actions = self.assignment(y, meta, None)
        for decide, select in zip(self.decisions, self.selections):
            y, meta, actions = decide(y, meta, task_actions)
            y, meta, _ = select(y, meta, actions)
        y, meta, _ = self.heads(y, meta, task_actions)
        return y, meta

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() if isinstance(m, self._decision_cls) for p in m.parameters()]


class TheirStep:
    """Their full training step on one fixed batch, with the interface ``interleaved_step_times`` uses."""

    def __init__(self, pr, batch: dict, cfg) -> None:
        self.model = TheirRoutedMLP(pr).train()
        self.x = batch["pixel_values"].flatten(1)
        self.tasks = batch["meta"].tolist()  # their data loaders hand over task ids as a list of ints
        self.labels = batch["labels"]
        routers, blocks = split_params(self.model)  # the two optimizers of our loop's make_optimizers
        self.block_opt = torch.optim.SGD(blocks, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.router_opt = torch.optim.SGD(routers, lr=cfg.lr * cfg.router_lr_ratio)
        self.sync = lambda: None  # CPU only

    def step(self) -> tuple[float, float]:
        out, meta = self.model(self.x, self.tasks)
        module_loss, routing_loss = self.model.loss(out, meta, self.labels)
        self.block_opt.zero_grad(set_to_none=True)
        self.router_opt.zero_grad(set_to_none=True)
        (module_loss + routing_loss).backward()
        self.block_opt.step()
        self.router_opt.step()
        return module_loss.detach(), routing_loss.detach()


def make_batch(perf, size: int) -> dict:
    batch = perf.mlp_batch(size, TASKS, dim=DIM, classes=CLASSES)
    teacher = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(1))
    batch["labels"] = (batch["pixel_values"].flatten(1) @ teacher).argmax(1)
    return batch


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def training_check(perf, pr, size: int, steps: int) -> dict:
    """Both steps learn: the task loss over ``steps`` steps on one batch, and how far the router tables moved."""
    from nli_routing.training.loop import train_step

    batch, out = make_batch(perf, size), {}
    ours = StepSetup(perf.mlp_model("routing", BLOCKS, TASKS), batch, perf.train_cfg())
    theirs = TheirStep(pr, batch, perf.train_cfg())
    for name, model in (("ours", ours.model), ("pytorchrouting", theirs.model)):
        routers, blocks = split_params(model)
        before, blocks_before = flat(routers), flat(blocks)
        losses = [float(train_step(ours.model, ours.batch, ours.block_opt, ours.router_opt, ours.cfg, step=i)[0]
                        if name == "ours" else theirs.step()[0]) for i in range(steps)]
        change, block_change = float((flat(routers) - before).norm()), float((flat(blocks) - blocks_before).norm())
        k = max(1, steps // 3)  # exploration makes single steps noisy: compare the first and the last third
        first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
        out[name] = {"batch": size, "steps": steps, "loss_first": first, "loss_last": last, "losses": losses,
                     "router_table_change_norm": change, "block_change_norm": block_change,
                     "trains": last < first and change > 0 and block_change > 0}
    return out


class GcMeter:
    """Time Python's garbage collector spends inside each setup's steps (a ``gc.callbacks`` hook);
    ``wrap(name, setup)`` returns the setup with its steps counted (two clock reads a step)."""

    def __init__(self) -> None:
        self.current, self.t0, self.gc_s, self.step_s = None, 0.0, {}, {}

    def __call__(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
        elif self.current is not None:
            self.gc_s[self.current] += time.perf_counter() - self.t0

    def wrap(self, name: str, setup):
        self.gc_s[name] = self.step_s[name] = 0.0
        return type("Metered", (), {"sync": lambda _: setup.sync(), "step": lambda _: self.step(name, setup)})()

    def step(self, name: str, setup) -> None:
        self.current, t0 = name, time.perf_counter()
        setup.step()
        self.step_s[name] += time.perf_counter() - t0
        self.current = None


def gc_modes(setup, steps: int, repeats: int) -> dict:
    """ms per step with the collector enabled, enabled after ``gc.freeze()`` (full collections then skip every
    object that existed before, the imported libraries among them) and disabled, in rotating order."""
    ms: dict[str, list] = {"enabled": [], "frozen": [], "disabled": []}
    modes = list(ms)
    setup.step()  # after another implementation's steps, the first one pays for cold caches
    for r in range(repeats):
        for mode in modes[r % 3:] + modes[:r % 3]:  # rotating, as the interleaved rounds do
            gc.freeze() if mode == "frozen" else gc.disable() if mode == "disabled" else None
            t0 = time.perf_counter()
            try:
                for _ in range(steps):
                    setup.step()
            finally:
                ms[mode].append(1000 * (time.perf_counter() - t0) / steps)
                gc.enable()
                gc.unfreeze()
                if mode == "disabled":
                    gc.collect()  # the garbage left over is not charged to the next mode
    med = {k: statistics.median(v) for k, v in ms.items()}
    return {"steps": steps, "repeats": repeats, "ms": med, "saved_by_disabling": 1 - med["disabled"] / med["enabled"],
            "saved_by_freezing": 1 - med["frozen"] / med["enabled"]}


def per_round_ratio(rounds: dict, num: str, den: str) -> list[float]:
    return [a / b for a, b in zip(rounds[num], rounds[den])]


def main(argv: list[str] | None = None) -> dict:
    p = BenchParser(description=__doc__.split("\n")[0])
    p.add_argument("--pytorchrouting", default=os.environ.get("PYTORCHROUTING_PATH"),
                   help="root of a cle-ros/RoutingNetworks checkout (default: $PYTORCHROUTING_PATH)")
    p.add_argument("--pytorchrouting_commit", default=None, help="the checkout's commit (default: its git HEAD)")
    p.add_argument("--batches", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps_per_round", type=int, default=3)
    p.add_argument("--check_steps", type=int, default=20, help="steps of the training check")
    p.add_argument("--gc_steps", type=int, default=6, help="steps per gc enabled/frozen/disabled block (0: skip)")
    p.add_argument("--gc_repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--native_cpu_kernels", action="store_true",
                   help="our banks on the library's C++ kernel (TrainConfig.native_cpu_kernels; built on first use)")
    p.add_argument("--keep_cpu_memory", action="store_true",
                   help="our steps with freed CPU memory kept (TrainConfig.keep_cpu_memory; process-wide, both libraries)")
    p.add_argument("--quick", action="store_true", help="batch 64, 2 rounds (a smoke test; numbers meaningless)")
    p.add_argument("--output", default=str(HERE / "results" / "pytorchrouting_compare"))
    args = p.parse_args(argv)
    root, *pr = load_pytorchrouting(args.pytorchrouting)
    if args.quick:
        args.batches, args.rounds, args.warmup, args.steps_per_round = [64], 2, 1, 1
        args.check_steps, args.gc_steps, args.gc_repeats = 5, 1, 1
    torch.set_num_threads(args.threads)
    from nli_routing.experiments import bench as perf  # the routed MLP of benchmarks/perf.py
    perf.NATIVE_CPU_KERNELS["value"] = args.native_cpu_kernels
    perf.KEEP_CPU_MEMORY["value"] = args.keep_cpu_memory
    if args.keep_cpu_memory:  # process-wide from here on: PytorchRouting's steps run under it too
        from nli_routing.training.allocator import keep_freed_cpu_memory

        keep_freed_cpu_memory()
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    result = {"machine": machine(), "commit": commit(),
              "pytorchrouting": {"path": str(root), "commit": checkout_commit(root, args.pytorchrouting_commit)},
              "args": vars(args), "shims": SHIMS,
              "model": f"{LAYERS} routed layers x {BLOCKS} blocks Linear({DIM},{DIM})+ReLU, tabular Q-learning, "
                       f"{TASKS} tasks (one agent each), per-task heads Linear({DIM},{CLASSES}), reward +1/-1",
              "results": []}
    log(f"{result['machine']}; PytorchRouting {result['pytorchrouting']['commit']} from {root}")
    result["check"] = training_check(perf, pr, min(args.batches), args.check_steps)
    for name, c in result["check"].items():
        log(f"check {name:<14} batch {c['batch']}, {c['steps']} steps: loss {c['loss_first']:.4f} -> "
            f"{c['loss_last']:.4f} (first/last third), change norm of router tables "
            f"{c['router_table_change_norm']:.4f}, of blocks {c['block_change_norm']:.4f}"
            f"  {'trains' if c['trains'] else 'DOES NOT TRAIN'}")
    torch.manual_seed(0)
    for b in args.batches:
        batch = make_batch(perf, b)
        setups = {"pytorchrouting": TheirStep(pr, batch, perf.train_cfg()),
                  "ours": StepSetup(perf.mlp_model("routing", BLOCKS, TASKS), batch, perf.train_cfg()),
                  "ours-unrouted": StepSetup(perf.mlp_model("shared-bottom", BLOCKS, TASKS), batch, perf.train_cfg())}
        meter = GcMeter()
        gc.collect()
        gc.callbacks.append(meter)
        try:
            t = interleaved_step_times({n: meter.wrap(n, st) for n, st in setups.items()}, warmup=args.warmup,
                                       rounds=args.rounds, steps_per_round=args.steps_per_round)
        finally:
            gc.callbacks.remove(meter)
        ratios = per_round_ratio(t["rounds"], "pytorchrouting", "ours")
        routed = per_round_ratio(t["rounds"], "ours", "ours-unrouted")
        row = {"batch": b, "ms_median": t["ms"], "ms_min": {n: min(v) for n, v in t["rounds"].items()},
               "ms_max": {n: max(v) for n, v in t["rounds"].items()}, "rounds_ms": t["rounds"],
               "theirs_over_ours": statistics.median(ratios), "theirs_over_ours_rounds": ratios,
               "routed_over_unrouted": statistics.median(routed), "routed_over_unrouted_rounds": routed}
        row["gc_share_in_rounds"] = {n: meter.gc_s[n] / meter.step_s[n] for n in setups}  # warm-up included
        row["gc_tracked_objects"] = len(gc.get_objects())
        if args.gc_steps:
            row["gc_modes"] = {n: gc_modes(setups[n], args.gc_steps, args.gc_repeats)
                               for n in ("pytorchrouting", "ours")}
        result["results"].append(row)
        for n in setups:
            log(f"batch {b:>5} {n:<14} {row['ms_median'][n]:9.2f} ms/step (min {row['ms_min'][n]:8.2f}, "
                f"max {row['ms_max'][n]:8.2f})  in gc {row['gc_share_in_rounds'][n]:5.1%}" + (
                f"; time saved: gc off {g['saved_by_disabling']:+5.1%}, gc.freeze() {g['saved_by_freezing']:+5.1%}"
                if (g := row.get("gc_modes", {}).get(n)) else ""))
        log(f"batch {b:>5} theirs/ours {row['theirs_over_ours']:6.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"
            f"   ours routed/unrouted {row['routed_over_unrouted']:5.2f}")
        del setups
    from nli_routing.routing.native import native_kernel_state

    result["native_cpu_kernels"] = native_kernel_state(args.native_cpu_kernels)  # asked for vs what ran
    result["seconds"] = time.perf_counter() - start
    out = Path(args.output).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
