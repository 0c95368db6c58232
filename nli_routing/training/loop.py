"""The accelerate training loop: blocks and routers trained together after each batch."""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.profiler import record_function
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .allocator import keep_freed_cpu_memory
from .checkpoint import (
    BEST_STATE_FILE,
    CHECKPOINT_DIR,
    LOOP_RNG_FILE,
    LOOP_STATE_FILE,
    capture_rng,
    num_batches,
    resolve_checkpoint,
    restore_rng,
    resumed_batches,
    save_checkpoint,
)
from ..models.base import RoutedModel
from ..routing.config import check_at_least
from ..routing.native import enable_native_cpu_kernels
from ..serialization import CheckpointError, load_checkpoint
from .distributed import make_accelerator
from .evaluation import collect_record, evaluate, record_metrics
from .numerics import NonFiniteError, check_finite_step, clip_group, optimizer_params
from .tracking import check_collapse, flat_metrics, start_tracking

__all__ = ["NonFiniteError", "TrainConfig", "collect_record", "evaluate", "make_optimizers", "record_metrics", "train",
           "train_step"]

logger = logging.getLogger(__name__)


#: optimizers of the blocks and of the routers (``TrainConfig.block_optimizer`` / ``router_optimizer``)
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")


@dataclass
class TrainConfig:
    """Training hyper-parameters (plain SGD for the blocks by default: adaptive optimizers destabilise routing)."""

    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "training batch size (per process)"})
    eval_batch_size: int = field(default=512, metadata={"help": "evaluation batch size"})
    lr: float = field(default=0.05, metadata={"help": "learning rate of the function blocks"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum of the blocks"})
    block_optimizer: str = field(default="sgd", metadata={"help": f"optimizer of the blocks: one of {OPTIMIZERS}"})
    router_optimizer: str = field(
        default="sgd",
        metadata={"help": f"optimizer of the routers (tables, critics, dispatcher agents): one of {OPTIMIZERS}; sgd is "
                          "the learners' update rule (thesis Figure 7.12 compares others)"},
    )
    router_lr_ratio: float = field(
        default=1.0, metadata={"help": "router lr = ratio * block lr (> 0; below 1 the routers learn slower, thesis Figure 7.7)"}
    )
    fused_optimizers: bool = field(
        default=True,
        metadata={"help": "use torch's fused optimizer kernels (sgd, adam, adagrad: one kernel per step instead of a loop of "
                          "tensor operations; Adam about 6x faster on a CPU, BENCHMARKS.md issue 33) where the parameters' "
                          "device supports them; the same update up to floating-point rounding"},
    )
    keep_cpu_memory: bool = field(
        default=False,
        metadata={"help": "on the CPU, let glibc's malloc keep the memory a step frees so the next step reuses it instead "
                          "of page-faulting it again (process-wide, once; the process keeps its peak heap; "
                          "nli_routing.training.allocator). Removes the page faults of many-block models (about 700 a "
                          "step to 1); their step time moved within this project's CPU's noise (BENCHMARKS.md issue 33)"},
    )
    native_cpu_kernels: bool = field(
        default=False,
        metadata={"help": "on the CPU, run routed banks' grouped matmuls (float32) with the library's C++ kernel, one BLAS call "
                          "per non-empty block instead of torch's per-group loop (process-wide; built once per machine, "
                          "20-40 s, needs a C++ compiler and ninja; a failed build warns and keeps grouped_mm; with many "
                          "blocks a layer combine it with keep_cpu_memory; nli_routing.routing.native, BENCHMARKS.md "
                          "issue 33)"},
    )
    explore_kappa: float = field(
        default=0.0,
        metadata={
            "help": "squash the task loss of exploratory trajectories (eq. 7.4): each sample's loss is scaled by "
            "(1 - exploratory actions / trajectory length) ** kappa; 0 (default) is off"
        },
    )
    router_data_fraction: float = field(
        default=0.0,
        metadata={"help": "share of training batches that update only the routers (the rest only the blocks)"},
    )
    max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "shortcut: clip the block and the router gradients, each group to this norm separately "
            "(block_max_grad_norm / router_max_grad_norm, when set, take precedence)"
        },
    )
    block_max_grad_norm: float | None = field(
        default=None, metadata={"help": "clip the total gradient norm of the blocks (None: max_grad_norm)"}
    )
    router_max_grad_norm: float | None = field(
        default=None,
        metadata={"help": "clip the total gradient norm of the routers and learners (None: max_grad_norm)"},
    )
    check_finite: bool = field(
        default=True,
        metadata={
            "help": "before the optimizers step, check the losses and gradients for NaN/inf and raise an error "
            "naming the learner and the step (one host read per step)"
        },
    )
    checkpoint: bool = field(
        default=False,
        metadata={"help": "write resumable checkpoints (accelerate save_state) to <output_dir>/checkpoints"},
    )
    checkpoint_every: int = field(
        default=0,
        metadata={"help": "with checkpoint: also save every N training steps (0: only at the end of each epoch)"},
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "number of most recent checkpoints kept (older ones are deleted)"}
    )
    resume_from: str | None = field(
        default=None,
        metadata={
            "help": "resume from a checkpoint folder, or 'latest' (the newest one in <output_dir>/checkpoints; "
            "starts from scratch when there is none)"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the blocks"})
    lr_step_epochs: int = field(
        default=0,
        metadata={"help": "divide the blocks' and the routers' learning rates by lr_step_factor every this many epochs "
                          "(0: constant rates; the thesis' image runs: 20 with factor 10)"},
    )
    lr_step_factor: float = field(default=10.0, metadata={"help": "with lr_step_epochs: the divisor (> 1)"})
    seed: int = field(default=0, metadata={"help": "seed of data order and initialisation"})
    cpu: bool = field(default=False, metadata={"help": "force the CPU even when an accelerator is present"})
    select_best: bool = field(default=True, metadata={"help": "report test metrics at the best validation epoch"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on the main process"})
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "upload every trained model folder to the Hub (repo --hub_model_id-<run folder>, e.g. "
                          "me/sci-wp-signature); needs a login (huggingface-cli login or HF_TOKEN)"},
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "with --push_to_hub: the repo prefix, e.g. me/sci (default: the run folder name)"}
    )
    log_with: str | None = field(
        default=None,
        metadata={
            "help": "report losses, accuracies, routing entropy and collapse metrics every epoch to accelerate "
            "trackers: tensorboard (offline; pip install tensorboard), wandb, mlflow, ... or all; logs go to "
            "<output_dir>"
        },
    )
    collapse_threshold: float = field(
        default=0.95,
        metadata={"help": "warn when one path (or dispatch class) takes at least this share of the validation samples"},
    )
    collapse_warmup: int = field(default=1, metadata={"help": "epochs before collapse warnings start"})

    def __post_init__(self) -> None:
        check_at_least(self, epochs=1, batch_size=1, eval_batch_size=1)
        if not self.lr >= 0:  # 0: nothing moves (gradients only, e.g. to check clipping)
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if not (math.isfinite(self.router_lr_ratio) and self.router_lr_ratio > 0.0):
            raise ValueError(f"router_lr_ratio must be a number > 0 (router lr = ratio x block lr), got {self.router_lr_ratio}")
        if not self.explore_kappa >= 0.0:
            raise ValueError(f"explore_kappa must be >= 0 (0: off), got {self.explore_kappa}")
        if not 0.0 <= self.router_data_fraction < 1.0:
            raise ValueError(f"router_data_fraction must be in [0, 1), got {self.router_data_fraction}")
        for name in ("block_optimizer", "router_optimizer"):
            if getattr(self, name) not in OPTIMIZERS:
                raise ValueError(f"{name} must be one of {OPTIMIZERS}, got {getattr(self, name)!r}")
        for name in ("max_grad_norm", "block_max_grad_norm", "router_max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (or None to not clip), got {value}")
        if self.hub_model_id is not None and not self.push_to_hub:
            raise ValueError("--hub_model_id needs --push_to_hub")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if isinstance(self.lr_step_epochs, bool) or not isinstance(self.lr_step_epochs, int) or self.lr_step_epochs < 0:
            raise ValueError(f"lr_step_epochs must be an integer >= 0 (0: constant rates), got {self.lr_step_epochs!r}")
        if not (math.isfinite(self.lr_step_factor) and self.lr_step_factor > 1.0):
            raise ValueError(f"lr_step_factor must be a number > 1 (the learning rates are divided by it), "
                             f"got {self.lr_step_factor}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.resume_from not in (None, "latest") and not (Path(self.resume_from) / LOOP_STATE_FILE).is_file():
            raise ValueError(f"--resume_from {self.resume_from}: not a complete checkpoint (no {LOOP_STATE_FILE} in it); "
                             "give a step_<N> folder under <output_dir>/checkpoints or 'latest'")
        if self.push_to_hub:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise ValueError("--push_to_hub: the Hub is unreachable with HF_HUB_OFFLINE=1; unset it, or upload the "
                                 "run folder later (huggingface-cli upload REPO OUTPUT_DIR)")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.collapse_warmup < 0:
            raise ValueError(f"collapse_warmup must be >= 0 epochs, got {self.collapse_warmup}")
        if not 0.0 < self.collapse_threshold <= 1.0:
            raise ValueError(f"collapse_threshold must be in (0, 1], got {self.collapse_threshold}")
        if self.log_with is not None:
            from accelerate.utils import LoggerType

            names = [n.strip() for n in self.log_with.split(",") if n.strip()]
            unknown = [n for n in names if n not in LoggerType.list()]
            if unknown or not names:
                raise ValueError(f"log_with: unknown tracker(s) {unknown or [self.log_with]}; choose from {LoggerType.list()}")

    def accelerator_kwargs(self, output_dir: str | Path | None = None) -> dict[str, Any]:
        """Arguments of :func:`~nli_routing.training.distributed.make_accelerator` for this config
        (the CPU flag, and the trackers with their logging folder)."""
        kwargs: dict[str, Any] = {"cpu": self.cpu}
        if self.log_with:
            kwargs["log_with"] = [n.strip() for n in self.log_with.split(",") if n.strip()]
            kwargs["project_dir"] = str(output_dir) if output_dir is not None else "."
        return kwargs

    @property
    def block_clip_norm(self) -> float | None:
        """The block gradient clipping norm (``block_max_grad_norm``, else ``max_grad_norm``)."""
        return self.block_max_grad_norm if self.block_max_grad_norm is not None else self.max_grad_norm

    @property
    def router_clip_norm(self) -> float | None:
        """The router gradient clipping norm (``router_max_grad_norm``, else ``max_grad_norm``)."""
        return self.router_max_grad_norm if self.router_max_grad_norm is not None else self.max_grad_norm


def make_optimizers(
    model: nn.Module, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None]:
    """Separate optimizers: blocks (SGD by default) and routers (SGD at ``ratio * lr``).

    Frozen parameters are left out; either optimizer is ``None`` when it has nothing to train.
    A ``torch.compile`` d model is read through the module it wraps.
    """
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, RoutedModel):
        raise TypeError(f"the loop trains routed models (nli_routing.models.base.RoutedModel), got {type(model).__name__}")
    router_params = model.router_parameters()
    ids = {id(p) for p in router_params}
    block_params = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    router_params = [p for p in router_params if p.requires_grad]
    if not block_params:
        block_opt = None  # e.g. two-stage dispatch with a parameter-free encoder: only the agent learns
    else:
        block_opt = make_optimizer(cfg.block_optimizer, block_params, cfg.lr, cfg.momentum, cfg.weight_decay,
                                   fused=getattr(cfg, "fused_optimizers", False))
    lr = cfg.lr * cfg.router_lr_ratio
    router_opt = make_optimizer(getattr(cfg, "router_optimizer", "sgd"), router_params, lr,
                                fused=getattr(cfg, "fused_optimizers", False)) if router_params else None
    return block_opt, router_opt


def lr_scale(cfg: "TrainConfig", epoch: int) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based): ``lr_step_factor ** -(epoch // lr_step_epochs)``."""
    every = getattr(cfg, "lr_step_epochs", 0)
    return 1.0 if not every else float(cfg.lr_step_factor) ** -(epoch // every)


def apply_lr_steps(optimizers, cfg: "TrainConfig", epoch: int) -> None:
    """Set each param group's rate to its starting rate times :func:`lr_scale` (a function of the epoch
    only, so a resumed run gets the same rates)."""
    scale = lr_scale(cfg, epoch)
    for opt in optimizers:
        for group in getattr(opt, "param_groups", ()):
            base = group.setdefault("initial_lr", group["lr"])
            group["lr"] = base * scale


#: the optimizers torch has a fused kernel for
FUSED_OPTIMIZERS = ("sgd", "adam", "adagrad")


def fused_supported(name: str, params: list) -> bool:
    """Whether torch runs optimizer ``name`` fused on ``params``: a fused kernel exists for it, and every
    parameter is a floating-point tensor on one device type that has the fused kernels."""
    if name not in FUSED_OPTIMIZERS or not params:
        return False
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = {p.device.type for p in params}
    return (len(devices) == 1 and devices.pop() in _get_fused_kernels_supported_devices()
            and all(p.is_floating_point() for p in params))


def make_optimizer(name: str, params: list, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                   fused: bool = False):
    """``torch.optim`` optimizer ``name`` (:data:`OPTIMIZERS`); ``momentum`` applies to sgd and rmsprop.
    ``fused``: torch's fused kernel where :func:`fused_supported` (else the default implementation)."""
    kw = {"fused": True} if fused and fused_supported(name, params) else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, **kw)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def exploration_squash(trajectories: list, kappa: float) -> torch.Tensor | None:
    """``[B]`` eq. 7.4 factors ``alpha_exp = (1 - n_explored / n_decisions) ** kappa`` (None when off).

    ``n_explored`` and ``n_decisions`` count a sample's exploratory and active decisions over all
    routed layers: kappa = 0 leaves every sample at 1, a large kappa silences any trajectory with an
    exploratory step, and a trajectory without one keeps factor 1.
    """
    if kappa == 0.0 or not trajectories:
        return None
    explored = sum(t.explored.sum(1) for t in trajectories).float()
    length = sum(t.active.sum(1) for t in trajectories).float().clamp_min(1.0)
    return (1.0 - explored / length).pow(kappa)


def task_loss(per_sample_loss: torch.Tensor, trajectories: list, kappa: float) -> torch.Tensor:
    """Mean task loss, each sample's loss scaled by its eq. 7.4 factor (see :func:`exploration_squash`).

    Squashing the blocks' learning signal on exploratory paths keeps random detours from
    training blocks on samples they will not see once the router is greedy.
    """
    alpha = exploration_squash(trajectories, kappa)
    if alpha is None:
        return per_sample_loss.mean()
    return (alpha.to(per_sample_loss.dtype) * per_sample_loss).mean()


def is_router_batch(step: int, fraction: float) -> bool:
    """Deterministic split of the batches: ``fraction`` of them go to the routers only."""
    return fraction > 0 and int((step + 1) * fraction) > int(step * fraction)


def _flush_denormals(fn: Callable) -> Callable:
    """Run ``fn`` with denormal floats flushed to zero (they slow CPU matmuls by orders of
    magnitude), then restore the process-wide default for the caller's arithmetic."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch.set_flush_denormal(True)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_flush_denormal(False)

    return wrapper


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    block_opt: torch.optim.Optimizer | None,
    router_opt: torch.optim.Optimizer | None,
    cfg: TrainConfig,
    accelerator: Accelerator | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: forward, task loss, rewards and router loss, backward, both optimizer steps.

    ``step`` (the global step) decides whether this is a routers-only batch
    (``cfg.router_data_fraction``). Returns the detached task and router losses as tensors (reading
    them is left to the caller: no host synchronisation here). The phases are labelled
    ``step:forward``, ``step:router_loss``, ``step:backward`` and ``step:optimizers`` for
    ``torch.profiler``.
    """
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    with record_function("step:forward"):
        out = model(**batch)
        loss = task_loss(out.per_sample_loss, out.trajectories, cfg.explore_kappa)
    with record_function("step:router_loss"):
        router_loss = unwrapped.router_loss(out, batch["labels"])
    with record_function("step:backward"):
        for opt in (block_opt, router_opt):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        total = loss + router_loss
        if accelerator is not None:
            accelerator.backward(total)
        else:
            total.backward()
    with record_function("step:optimizers"):
        optimizer_phase(unwrapped, loss, router_loss, block_opt, router_opt, cfg, accelerator, step)
    return loss.detach(), router_loss.detach()


def optimizer_phase(
    unwrapped: nn.Module,
    loss: torch.Tensor,
    router_loss: torch.Tensor,
    block_opt: torch.optim.Optimizer | None,
    router_opt: torch.optim.Optimizer | None,
    cfg: TrainConfig,
    accelerator: Accelerator | None = None,
    step: int = 0,
) -> None:
    """The optimizer phase of :func:`train_step` on the gradients the backward pass left: the finite
    check, clipping and both optimizer steps (the work that grows with the parameters that got a
    gradient; ``benchmarks/blocks_floor.py`` times it alone)."""
    router_only = is_router_batch(step, cfg.router_data_fraction)
    blocks_only = cfg.router_data_fraction > 0 and not router_only
    groups = {
        "blocks": optimizer_params(block_opt) if not router_only else [],
        "routers": optimizer_params(router_opt) if not blocks_only else [],
    }
    norms: dict[str, torch.Tensor | None] = {}
    if cfg.check_finite:
        # with a gradient scaler (fp16), inf/NaN gradients are expected: the scaler skips the step
        scaled = accelerator is not None and getattr(accelerator, "scaler", None) is not None
        norms = check_finite_step(
            unwrapped, {"task loss": loss, "router loss": router_loss}, groups, step, check_grads=not scaled
        )
    clip_group(groups["blocks"], cfg.block_clip_norm, accelerator, norms.get("blocks"))
    clip_group(groups["routers"], cfg.router_clip_norm, accelerator, norms.get("routers"))
    if block_opt is not None and not router_only:
        block_opt.step()
    if router_opt is not None and not blocks_only:
        router_opt.step()


@_flush_denormals
def train(
    model: nn.Module,
    train_loader: DataLoader,
    eval_loaders: dict[str, DataLoader],
    cfg: TrainConfig,
    output_dir: str | Path | None = None,
    meta_names: list[str] | None = None,
    accelerator: Accelerator | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Train blocks and routers together; evaluate every epoch; write metrics and a checkpoint.

    After each batch: the task loss (mean cross-entropy) trains the blocks, the router loss from
    the batch's trajectories trains the routers, each with its own optimizer. ``eval_loaders``
    should hold ``"validation"`` (used to pick the best epoch when ``select_best``) and ``"test"``.
    Returns ``{"history": [...], "best_epoch": k, "final": {split: metrics}, "train_seconds": s}``.

    With ``cfg.checkpoint``, resumable checkpoints go to ``<output_dir>/checkpoints/step_<n>`` at
    the end of every epoch (after its evaluation) and every ``cfg.checkpoint_every`` steps; they hold
    the models, optimizers and RNGs (``accelerator.save_state``: router tables, critics, running
    averages, exploration epoch and router generators are in the model's state dict), the data
    order, the epoch's loss sums, the history and the best epoch's model. ``cfg.resume_from``
    continues such a run (same data, model, config and number of processes) and ends exactly where
    the uninterrupted run would have (on the CPU): the epoch's already-trained batches are skipped
    with ``accelerator.skip_first_batches`` in the same order.
    """
    if accelerator is None:  # DDP settings for routed models (see nli_routing.training.distributed)
        accelerator = make_accelerator(**cfg.accelerator_kwargs(output_dir))
    if cfg.log_with and not accelerator.log_with:
        raise ValueError("log_with is set but the accelerator has no tracker: build it with "
                         "make_accelerator(**train_cfg.accelerator_kwargs(output_dir))")
    set_seed(cfg.seed)
    if cfg.keep_cpu_memory and accelerator.device.type == "cpu":
        keep_freed_cpu_memory()
    if cfg.native_cpu_kernels and accelerator.device.type == "cpu":
        enable_native_cpu_kernels()
    block_opt, router_opt = make_optimizers(model, cfg)
    model, train_loader = accelerator.prepare(model, train_loader)
    if block_opt is not None:
        block_opt = accelerator.prepare(block_opt)
    if router_opt is not None:
        router_opt = accelerator.prepare(router_opt)
    if block_opt is None and router_opt is None:
        raise ValueError("the model has no trainable parameter (everything is frozen)")
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    unwrapped = accelerator.unwrap_model(model)
    names = unwrapped.routed_layer_names
    if cfg.log_with:
        start_tracking(accelerator, Path(output_dir).name if output_dir is not None else "run", asdict(cfg))
    ckpt_root = Path(output_dir) / CHECKPOINT_DIR if output_dir is not None else None
    if cfg.checkpoint and ckpt_root is None:
        raise ValueError("checkpoint=True writes to <output_dir>/checkpoints: give train() an output_dir")
    n_batches = num_batches(train_loader)
    history: list[dict] = []
    best_score, best_epoch, best_state = -math.inf, -1, None
    start = time.perf_counter()
    global_step, start_epoch, prior_seconds = 0, 0, 0.0
    resumed: dict[str, Any] | None = None  # the checkpoint's per-process state, until its epoch starts
    path = resolve_checkpoint(cfg.resume_from, ckpt_root) if cfg.resume_from is not None else None
    if path is not None:
        try:
            accelerator.load_state(str(path))
        except Exception as err:  # a truncated or damaged file: name the checkpoint, not torch's internals
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed: a file in it is truncated or damaged ({first})"
            ) from None
        try:
            state = json.loads((path / LOOP_STATE_FILE).read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path / LOOP_STATE_FILE} is truncated or damaged: {err}") from None
        if n_batches is not None and state.get("num_batches") not in (None, n_batches):
            raise ValueError(
                f"checkpoint {path} was written with {state['num_batches']} batches per epoch, this run has "
                f"{n_batches}: resume with the same data and batch size"
            )
        history, best_epoch, global_step = state["history"], state["best_epoch"], state["global_step"]
        best_score, start_epoch = float(state["best_score"]), state["epoch"]
        prior_seconds = float(state.get("train_seconds", 0.0))
        resumed = load_checkpoint(path / LOOP_RNG_FILE.format(accelerator.process_index))
        resumed["steps"] = state["step_in_epoch"]
        if (path / BEST_STATE_FILE).is_file():
            best_state = load_checkpoint(path / BEST_STATE_FILE, map_location="cpu")
        restore_rng(resumed["rng"], train_loader)
        logger.info("resumed from %s (epoch %d, step %d)", path, start_epoch, resumed["steps"])

    def loop_state(epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "num_batches": n_batches,
            "best_score": best_score,
            "best_epoch": best_epoch,
            "history": history,
            "train_seconds": prior_seconds + time.perf_counter() - start,
        }

    for epoch in range(start_epoch, cfg.epochs):
        unwrapped.set_epoch(epoch)
        apply_lr_steps((block_opt, router_opt), cfg, epoch)
        model.train()
        total_loss, total_router, steps = 0.0, 0.0, 0
        batches, epoch_rng = train_loader, None
        if path is not None and hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)  # a fresh loader counts epochs from 0 (seedable samplers use it)
        if resumed is not None and resumed["steps"]:  # resuming inside this epoch
            steps, epoch_rng = resumed["steps"], resumed["epoch_rng"]
            total_loss, total_router = resumed["total_loss"], resumed["total_router"]
            skipped = accelerator.skip_first_batches(train_loader, steps)
            batches = resumed_batches(skipped, train_loader, epoch_rng, resumed["rng"])
        elif cfg.checkpoint and cfg.checkpoint_every:
            epoch_rng = capture_rng(train_loader)  # the order of this epoch is drawn from these
        resumed = None
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and accelerator.is_local_main_process),
            leave=False,
            total=n_batches,
            initial=steps,
        )
        for batch in bar:
            loss, router_loss = train_step(model, batch, block_opt, router_opt, cfg, accelerator, global_step)
            global_step += 1
            total_loss = total_loss + loss  # device tensors: no host sync per step
            total_router = total_router + router_loss
            steps += 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{float(total_loss) / steps:.3f}")
            if (
                cfg.checkpoint
                and cfg.checkpoint_every
                and global_step % cfg.checkpoint_every == 0
                and (n_batches is None or steps < n_batches)  # the epoch's end has its own checkpoint
            ):
                rng = {"rng": capture_rng(train_loader), "epoch_rng": epoch_rng,
                       "total_loss": total_loss, "total_router": total_router}
                save_checkpoint(accelerator, ckpt_root, loop_state(epoch, steps), rng, best_state,
                                cfg.keep_checkpoints)
        total_loss, total_router = float(total_loss), float(total_router)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": total_loss / max(steps, 1),
            "router_loss": total_router / max(steps, 1),
        }
        for name, loader in eval_loaders.items():
            if name == "test" and cfg.select_best:
                continue  # test is evaluated once, at the selected epoch
            record[name] = evaluate(model, loader, accelerator, meta_names, cfg.collapse_threshold)
        warnings = check_collapse(record, names, epoch, cfg.collapse_warmup, log=accelerator.is_main_process)
        if warnings:
            record["collapse_warnings"] = warnings
        if cfg.log_with:
            accelerator.log(flat_metrics(record, names), step=epoch)
        history.append(record)
        score = record.get("validation", {}).get("accuracy", -record["train_loss"])
        if score > best_score:
            best_score, best_epoch = score, epoch
            if cfg.select_best:
                best_state = copy.deepcopy(unwrapped.state_dict())
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if accelerator.is_main_process:
            val = record.get("validation", {}).get("accuracy")
            logger.info("epoch %d loss %.4f validation %s", epoch, record["train_loss"], val)
        if cfg.checkpoint:
            save_checkpoint(accelerator, ckpt_root, loop_state(epoch + 1, 0), {"rng": capture_rng(train_loader)},
                            best_state, cfg.keep_checkpoints)
    train_seconds = prior_seconds + time.perf_counter() - start
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    records = {name: collect_record(model, loader, accelerator, meta_names) for name, loader in eval_loaders.items()}
    final = {name: record_metrics(rec, cfg.collapse_threshold) for name, rec in records.items()}
    if cfg.log_with:
        accelerator.log(flat_metrics({f"final_{k}": v for k, v in final.items()}, names), step=len(history))
        accelerator.end_training()
    result = {"history": history, "best_epoch": best_epoch, "final": final, "train_seconds": train_seconds}
    if output_dir is not None and accelerator.is_main_process:
        save_run(unwrapped, result, cfg, output_dir, tokenizer)
        for name, rec in records.items():
            rec.save(Path(output_dir) / f"routing_{name}.npz")
    accelerator.wait_for_everyone()
    return result


def save_run(model: nn.Module, result: dict, cfg: TrainConfig, output_dir: str | Path, tokenizer: Any = None) -> None:
    """Write ``metrics.json`` (with the seed), ``timing.json``, ``train_config.json`` and the trained
    model (``model.save_pretrained``: ``config.json`` + ``model.safetensors``, and the ``tokenizer``
    files when given, so the run folder loads with ``from_pretrained`` / ``AutoModel.from_pretrained``
    and predicts with ``nli-routing predict``).

    ``metrics.json`` holds only what the seed determines, so the same command with the same seed
    writes the same file; the wall-clock time goes to ``timing.json``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"seed": cfg.seed, **{k: v for k, v in result.items() if k != "train_seconds"}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "timing.json").write_text(json.dumps({"train_seconds": result.get("train_seconds")}, indent=2))
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    hub = {}
    if cfg.push_to_hub:  # the folder as written, uploaded (HfApi.upload_folder)
        repo = f"{cfg.hub_model_id}-{out.name}" if cfg.hub_model_id else out.name
        hub = {"push_to_hub": True, "repo_id": repo, "commit_message": f"nli_routing run {out.name} (seed {cfg.seed})"}
    model.save_pretrained(out, tokenizer=tokenizer, **hub)
    if hub:
        logger.info("pushed %s to the Hub as %s", out, hub["repo_id"])
