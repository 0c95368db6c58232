"""Image multi-task models on the thesis' 'Base' convnet: routed FC layers and the MTL baselines.

Base network: 4 conv layers (3x3, 32 filters, batch norm, ReLU, 2x2 max-pool while the map is
larger than 1x1), then 3 fully connected layers of 128 and a classification head. The task id
(``meta``) picks the head: **one head per task** (``Linear(128, num_classes)``, grouped by task), so
``logits [B, num_classes]`` are the sample's own task's classes (2 for the one-vs-rest sets).

Methods (:data:`VISION_METHODS`): the routing variants of Figure 5.1 (``routing`` = routing-all-fc,
``routing-recurrent`` (recurrent + pass), ``routing-single-agent``, ``routing-dispatched``,
``soft-mixture``) and the baselines ``shared-bottom`` (= ``task-specific-1-fc``),
``task-specific-all-fc``, ``cross-stitch``, ``fixed-random-fc``, ``fixed-random-conv3``,
``task-routing-layer`` and ``no-sharing`` (every conv and FC layer per task). ``routed_convs`` routes
conv layers too (learned routing in conv 1 / 1,2,3, "Re-examining Routing Networks"). The output and
the ``router_loss``/``set_epoch``/``router_parameters`` protocol are those of :class:`~nli_routing.models.nli.NLIRoutingModel`, so the shared training
loop trains every method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from ..routing import FixedRandomRouter, LinearBank, RoutedLayer, RouterConfig, Trajectory, grouped_apply
from ..routing.registry import build_router
from ..routing.config import check_at_least
from ..routing.trajectory import check_range
from .base import RoutedModel, register_model_kind
from .blocks import fc_block, routed_fc_stack

#: method -> (what the FC part is, router type of routed methods)
VISION_METHODS: dict[str, tuple[str, str | None]] = {
    "routing": ("routed", None),  # routing-all-fc, router from the config (tabular by default)
    "routing-all-fc": ("routed", None),
    "routing-recurrent": ("recurrent", None),
    "routing-single-agent": ("routed", "approx"),
    "routing-dispatched": ("routed", "dispatched"),
    "soft-mixture": ("routed", "soft"),
    "shared-bottom": ("shared", None),
    "task-specific-1-fc": ("shared", None),
    "task-specific-all-fc": ("task-specific", None),
    "cross-stitch": ("cross-stitch", None),
    "fixed-random-fc": ("routed", "fixed-random"),
    "fixed-random-conv3": ("shared", None),
    "task-routing-layer": ("shared", None),
    # "Re-examining Routing Networks": no parameter shared between tasks (every conv and FC layer per task)
    "no-sharing": ("task-specific", None),
}


#: how VisionMTLConfig.sigma reads (the share a task keeps, or the share its mask switches off)
SIGMA_MODES = ("keep", "knockout")


def routed_conv_layers(spec: str, conv_layers: int) -> list[int]:
    """``routed_convs`` (``"1,3"``) as sorted 0-based layer indices; a clear error names a bad entry."""
    out = []
    for part in filter(None, (p.strip() for p in str(spec or "").split(","))):
        if not part.isdigit() or not 1 <= int(part) <= conv_layers:
            raise ValueError(f"routed_convs: {part!r} is not a conv layer number in 1..{conv_layers} "
                             f"(comma-separated, e.g. '1,2,3')")
        out.append(int(part) - 1)
    if len(set(out)) != len(out):
        raise ValueError(f"routed_convs lists a layer twice: {spec!r}")
    return sorted(out)


@dataclass
class VisionMTLConfig(RouterConfig):
    """Configuration of :class:`VisionMTLModel` (``num_meta`` = number of tasks)."""

    method: str = field(default="routing", metadata={"help": f"one of {sorted(VISION_METHODS)}"})
    num_classes: int = field(default=2, metadata={"help": "classes per task head"})
    in_channels: int = field(default=1, metadata={"help": "image channels"})
    image_size: int = field(default=28, metadata={"help": "image height = width"})
    conv_channels: int = field(default=32, metadata={"help": "filters of every conv layer"})
    conv_layers: int = field(default=4, metadata={"help": "conv layers (3x3, batch norm, ReLU; 0: an MLP on the flat input)"})
    pool: bool = field(default=True, metadata={"help": "2x2 max-pool after each conv while the map is > 1x1"})
    fc_hidden: int = field(default=128, metadata={"help": "units of the fully connected layers"})
    fc_layers: int = field(default=3, metadata={"help": "fully connected layers (the routed ones)"})
    fc_width: int = field(
        default=0, metadata={"help": "function blocks per routed FC layer (0: one per task, the thesis' setting)"}
    )
    sigma: float = field(
        default=0.5,
        metadata={"help": "task routing layer: with sigma_mode keep, the share of units each task keeps active; with "
                          "knockout, the share each task's mask switches off (Strezoski et al.'s code; 0: no masking)"},
    )
    sigma_mode: str = field(
        default="keep",
        metadata={"help": "how sigma reads: keep (the library's) or knockout (the Task Routing authors' code, where sigma = "
                          "0 leaves every unit on for every task)"},
    )
    trl_seed: int = field(default=0, metadata={"help": "seed of the task routing masks"})
    routed_convs: str = field(
        default="",
        metadata={"help": "conv layers (1-based, comma-separated, e.g. '1' or '1,2,3') whose block is chosen per sample "
                          "by a router ('Re-examining Routing Networks': Routing in Conv 1 / 1,2,3): conv_width blocks "
                          "each, the method's router (the config's for methods without one); state-free routers only"},
    )
    conv_width: int = field(default=0, metadata={"help": "blocks per routed conv layer (0: one per task)"})
    allow_pass: bool = field(
        default=False,
        metadata={"help": "routed FC layers get the PASS action (the ICLR paper's skip: the sample keeps its activation "
                          "for that step and goes on; needs steps that keep the size, e.g. routing-recurrent or "
                          "--conv_layers with fc dims equal)"},
    )
    cross_stitch_self: float = field(default=0.9, metadata={"help": "initial cross-stitch weight of a task's own column"})
    reward: str = field(default="correct", metadata={"help": "final reward: correct (+1/-1) or neg_loss"})
    rho: float = field(default=0.0, metadata={"help": "collaboration reward weight in [-1, 1]"})

    def learns_tabular_routes(self) -> bool:
        """Learned routers in the FC layers (the routed methods but the soft mixture, the single approximator
        and fixed random routes) or in the conv layers (``routed_convs``)."""
        kind, router = VISION_METHODS.get(self.method, ("routed", None))
        return bool(self.routed_convs) or (kind in ("routed", "recurrent") and router in (None, "dispatched"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in VISION_METHODS:
            raise ValueError(f"method must be one of {sorted(VISION_METHODS)}, got {self.method!r}")
        check_at_least(self, num_classes=2, in_channels=1, image_size=1, conv_channels=1, conv_layers=0, fc_hidden=1,
                       fc_layers=1)
        if self.fc_width < 0:
            raise ValueError(f"fc_width must be >= 0 (0: one block per task), got {self.fc_width}")
        if self.allow_pass and VISION_METHODS[self.method][0] not in ("routed", "recurrent"):
            raise ValueError(f"allow_pass adds an action to routed FC layers; method {self.method!r} routes none")
        if self.allow_pass and VISION_METHODS[self.method][1] == "soft":
            raise ValueError("allow_pass: the soft mixture has no router to choose PASS")
        if self.conv_width < 0:
            raise ValueError(f"conv_width must be >= 0 (0: one block per task), got {self.conv_width}")
        layers = routed_conv_layers(self.routed_convs, self.conv_layers)
        if layers and self.method in ("no-sharing", "fixed-random-conv3", "soft-mixture", "routing-recurrent"):
            raise ValueError(f"routed_convs does not combine with method {self.method!r}")
        if self.method == "no-sharing" and self.conv_width:
            raise ValueError("conv_width: method 'no-sharing' has one block per task in every layer")
        if self.sigma_mode not in SIGMA_MODES:
            raise ValueError(f"sigma_mode must be one of {SIGMA_MODES}, got {self.sigma_mode!r}")
        if self.sigma_mode == "keep" and not 0.0 < self.sigma <= 1.0:
            raise ValueError(f"sigma must be in (0, 1] (the share of units a task keeps), got {self.sigma}")
        if self.sigma_mode == "knockout" and not 0.0 <= self.sigma < 1.0:
            raise ValueError(f"sigma must be in [0, 1) (the share of units a task's mask switches off), got {self.sigma}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VisionMTLOutput(ModelOutput):
    """As :class:`~nli_routing.models.nli.NLIOutput`: ``loss`` (mean, with labels), ``logits``,
    ``per_sample_loss``, ``trajectories``, ``dispatch`` (always None here)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    per_sample_loss: Tensor | None = None
    trajectories: list[Trajectory] | None = None
    dispatch: Any = None


class TaskRoutingMask(nn.Module):
    """Task Routing Layer (Strezoski et al. 2019): a fixed random binary channel mask per task.

    ``masks [num_tasks, channels]`` is a buffer (never trained, saved in checkpoints); each task's
    mask has exactly ``round(sigma * channels)`` ones (active, shared units). The forward is a plain
    multiplication ``x * masks[task]``, so gradients reach ``x`` (zero for the masked units) and
    nothing is done in place or outside autograd.
    """

    def __init__(self, num_tasks: int, channels: int, sigma: float, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        active = int(round(sigma * channels))
        masks = torch.zeros(num_tasks, channels)
        for t in range(num_tasks):
            masks[t, torch.randperm(channels, generator=gen)[:active]] = 1.0
        self.sigma = sigma
        self.register_buffer("masks", masks)

    def forward(self, x: Tensor, task: Tensor) -> Tensor:
        m = self.masks[task].to(x.dtype)
        return x * m.view(*m.shape, *([1] * (x.dim() - 2)))


class ConvLayer(nn.Module):
    """``Conv3x3 -> BatchNorm [-> task routing mask] -> ReLU [-> MaxPool2d(2)]``."""

    def __init__(self, cin: int, cout: int, pool: bool, trl: TaskRoutingMask | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.trl = trl
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        x = self.conv(x)
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            # a routed block's group of one sample on a 1x1 map has no batch statistics: its running ones
            bn = self.bn
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            x = self.bn(x)
        if self.trl is not None:
            x = self.trl(x, task)
        return self.pool(F.relu(x))


class CrossStitchFC(nn.Module):
    """One FC column per task with a cross-stitch unit after each layer (Misra et al. 2016).

    Layer l computes every task's column on the whole batch (stacked weights, one batched matmul)
    and mixes the columns: ``h_t <- sum_s alpha_l[t, s] h_s``. ``alpha_l`` starts at
    ``self_weight`` on the diagonal and shares the rest evenly; it is a learned parameter (a block
    parameter, trained by the task loss). Each sample's output is its task's column.
    """

    def __init__(self, dims: list[int], num_tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.alphas = nn.ParameterList()
        off = (1.0 - self_weight) / max(num_tasks - 1, 1)
        init = torch.full((num_tasks, num_tasks), off)
        init.fill_diagonal_(self_weight if num_tasks > 1 else 1.0)
        for din, dout in zip(dims[:-1], dims[1:]):
            lin = [nn.Linear(din, dout) for _ in range(num_tasks)]
            self.weights.append(nn.Parameter(torch.stack([m.weight.detach().t() for m in lin])))  # [T, din, dout]
            self.biases.append(nn.Parameter(torch.stack([m.bias.detach() for m in lin]).unsqueeze(1)))  # [T, 1, dout]
            self.alphas.append(nn.Parameter(init.clone()))
        self.num_tasks = num_tasks

    def forward(self, x: Tensor, task: Tensor) -> Tensor:
        h = x.unsqueeze(0).expand(self.num_tasks, *x.shape)  # [T, B, D]
        for w, b, a in zip(self.weights, self.biases, self.alphas):
            h = F.relu(torch.baddbmm(b, h, w))
            h = torch.einsum("ts,sbd->tbd", a, h)
        return h[task, torch.arange(x.shape[0], device=x.device)]


class TaskHeads(nn.Module):
    """One ``Linear(dim, num_classes)`` per task (a :class:`LinearBank`), each sample through its
    task's head in one grouped matmul."""

    def __init__(self, dim: int, num_classes: int, num_tasks: int) -> None:
        super().__init__()
        self.heads = LinearBank(num_tasks, dim, num_classes, activation="identity")

    def forward(self, x: Tensor, task: Tensor) -> Tensor:
        return grouped_apply(x, task, self.heads, identity=False)


class VisionMTLModel(RoutedModel):
    """The 'Base' convnet with one of the multi-task methods of :data:`VISION_METHODS` (see the module doc)."""

    main_input_name = "pixel_values"

    def __init__(self, config: VisionMTLConfig | VisionMTLModelConfig) -> None:
        super().__init__(config)
        c = self.config
        kind, router_type = VISION_METHODS[c.method]
        tasks = c.num_meta
        width = c.fc_width or tasks  # blocks per routed FC layer
        routed: list[RoutedLayer] = []
        names: list[str] = []
        convs, size, cin = [], c.image_size, c.in_channels
        self.conv3: RoutedLayer | None = None
        #: routed conv layers (``routed_convs``, or every layer for ``no-sharing``), by 0-based index
        self.routed_convs = nn.ModuleDict()
        conv_routed = (set(range(c.conv_layers)) if c.method == "no-sharing"
                       else set(routed_conv_layers(c.routed_convs, c.conv_layers)))
        for i in range(c.conv_layers):
            pool = c.pool and size > 1
            # knockout: round(sigma * channels) units off per task, as the Task Routing authors' code counts them
            keep = c.sigma if c.sigma_mode == "keep" else (c.conv_channels - round(c.sigma * c.conv_channels)) / c.conv_channels
            trl = TaskRoutingMask(tasks, c.conv_channels, keep, c.trl_seed + i) if c.method == "task-routing-layer" else None
            if c.method == "fixed-random-conv3" and i == 2:
                blocks = [ConvLayer(cin, c.conv_channels, pool) for _ in range(tasks)]
                router = FixedRandomRouter(tasks, 1, tasks, seed=c.router_seed)
                self.conv3 = RoutedLayer([blocks], router, depth=1, recursive=False)
                routed.append(self.conv3)
                names.append("conv3")
                convs.append(nn.Identity())  # placeholder keeps layer numbering
            elif i in conv_routed:
                layer = self.routed_conv(c, cin, pool, router_type, i)
                self.routed_convs[str(i)] = layer
                routed.append(layer)
                names.append(f"conv{i + 1}")
                convs.append(nn.Identity())  # placeholder keeps layer numbering
            else:
                convs.append(ConvLayer(cin, c.conv_channels, pool, trl))
            size = size // 2 if pool else size
            cin = c.conv_channels
        self.convs = nn.ModuleList(convs)
        flat = cin * size * size  # the input channels when there is no conv layer
        dims = [flat] + [c.fc_hidden] * c.fc_layers
        self.shared_fc: nn.Module = nn.Identity()
        self.routed_fc: RoutedLayer | None = None
        self.cross_stitch: CrossStitchFC | None = None
        if kind == "shared":
            self.shared_fc = nn.Sequential(*(fc_block(a, b) for a, b in zip(dims[:-1], dims[1:])))
        elif kind == "cross-stitch":
            self.cross_stitch = CrossStitchFC(dims, tasks, c.cross_stitch_self)
        elif kind == "recurrent":  # a shared first FC layer, then recursive routing with a pass action
            self.shared_fc = fc_block(flat, c.fc_hidden)
            self.routed_fc = routed_fc_stack(
                [c.fc_hidden] * c.fc_layers, width, tasks, recursive=True, allow_stop=True, allow_pass=c.allow_pass,
                **c.router_kwargs()
            )
        elif kind == "task-specific":  # one block per task per layer, the task's own block always
            self.routed_fc = routed_fc_stack(dims, tasks, tasks, router_type="fixed-random", seed=0)
            depth = len(dims) - 1
            self.routed_fc.router.routes.copy_(torch.arange(tasks).unsqueeze(1).expand(tasks, depth))
        else:  # routed: routing-all-fc and its variants
            kwargs = c.router_kwargs()
            if router_type is not None:
                kwargs["router_type"] = router_type
            if kwargs["router_type"] == "soft":
                kwargs = {"router_type": "soft"}
            self.routed_fc = routed_fc_stack(dims, width, tasks, recursive=False, allow_pass=c.allow_pass, **kwargs)
        if self.routed_fc is not None:
            routed.append(self.routed_fc)
            names.append("fc")
        self.heads = TaskHeads(c.fc_hidden, c.num_classes, tasks)
        self.register_routed(list(zip(names, routed)))

    @staticmethod
    def routed_conv(c: "VisionMTLConfig", cin: int, pool: bool, router_type: str | None, index: int) -> RoutedLayer:
        """Conv layer ``index`` as a routed layer: ``conv_width`` (0: one per task) conv blocks and a
        state-free router (the method's; ``no-sharing``: each task always its own block)."""
        tasks = c.num_meta
        if c.method == "no-sharing":
            router = FixedRandomRouter(tasks, 1, tasks, seed=c.router_seed)
            router.routes.copy_(torch.arange(tasks).unsqueeze(1))
            width = tasks
        else:
            width = c.conv_width or tasks
            kwargs = c.router_kwargs(seed_offset=100 + index)
            if router_type is not None:
                kwargs["router_type"] = router_type
            router = build_router(kwargs.pop("router_type"), [cin, c.conv_channels], width, tasks, False, **kwargs)
            if router.reads_state:
                raise ValueError(f"routed_convs needs a router that does not read the activation (tabular, "
                                 f"fixed-random, ...); method {c.method!r} with router {c.router!r} reads it")
        blocks = [ConvLayer(cin, c.conv_channels, pool) for _ in range(width)]
        return RoutedLayer([blocks], router, depth=1, recursive=False)

    def forward(self, pixel_values: Tensor, meta: Tensor | None = None, labels: Tensor | None = None,
                **_: Tensor) -> VisionMTLOutput:
        if meta is None:
            raise ValueError("VisionMTLModel needs the task ids (meta) to pick the task heads")
        check_range(meta, self.config.num_meta, "task ids", f"the model's {self.config.num_meta} tasks")
        x = pixel_values
        trajs: list[Trajectory] = []
        for i, layer in enumerate(self.convs):
            if i == 2 and self.conv3 is not None:
                x, traj = self.conv3(x, meta)
                trajs.append(traj)
            elif str(i) in self.routed_convs:
                x, traj = self.routed_convs[str(i)](x, meta)
                trajs.append(traj)
            else:
                x = layer(x, meta)
        x = self.shared_fc(x.flatten(1))
        if self.cross_stitch is not None:
            x = self.cross_stitch(x, meta)
        if self.routed_fc is not None:
            x, traj = self.routed_fc(x, meta)
            trajs.append(traj)
        logits = self.heads(x, meta)
        loss = F.cross_entropy(logits, labels, reduction="none") if labels is not None else None
        return VisionMTLOutput(loss=None if loss is None else loss.mean(), logits=logits, per_sample_loss=loss,
                               trajectories=trajs)


class ImageMTLCollator:
    """Rows of an image multi-task set -> ``{"pixel_values" [B, C, H, W] in [0, 1], "labels", "meta"}``."""

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        images = torch.stack([torch.as_tensor(r["image"]) for r in rows]).float() / 255.0
        return {
            "pixel_values": images,
            "labels": torch.tensor([int(r["label"]) for r in rows], dtype=torch.long),
            "meta": torch.tensor([int(r["task"]) for r in rows], dtype=torch.long),
        }


VisionMTLModelConfig = register_model_kind("vision", VisionMTLConfig, VisionMTLModel, "nli-routing-vision-mtl",
                                           "VisionMTLModelConfig")
