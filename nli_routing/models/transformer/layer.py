"""Routing injected into a pretrained Transformer: each target module becomes b routed copies.

:func:`inject_routing` replaces every target module (e.g. BERT's ``encoder.layer.N.attention``)
by a :class:`RoutedModule` holding ``b`` copies of it (the original and noisy deep copies). One
router serves all routed positions (decision step ``p`` at the ``p``-th routed module, so tabular
tables are ``[num_meta, num_positions, b]``); it lives in a :class:`RoutingController`
registered on the top model as ``routing_controller``.

Meta labels reach the layers without changing the model's signature: a forward pre-hook on the top
model pops a ``meta`` keyword (``model(**inputs, meta=meta)``), or :func:`routing_context` sets it
for the calls inside a ``with`` block. The hook also defaults ``use_cache=False`` (a KV cache cannot
be split across copies). After the forward pass the routing trajectory is in
``model.routing_controller.last_trajectory``.

Execution is the ``"call"`` implementation of :mod:`nli_routing.routing.execution`, which groups the batch by chosen copy:
samples are sorted by copy, every copy runs once on its samples with the matching slice of every
batch-shaped argument (tensors of 2 or more dims whose first dim is the batch size: hidden states,
attention masks ``[B, 1, T, T]``, per-sample position ids; tensors with a broadcast batch dim of 1,
1-D tensors and non-tensors pass unchanged), and the outputs are put back with the inverse
permutation. Outputs may be tensors, tuples (``(hidden, attn_weights)``), lists, dicts or
``ModelOutput``: every batch-shaped tensor in them is reassembled, ``None`` stays ``None``, other
values come from the first group. Outputs recorded by Transformers' ``output_hidden_states`` /
``output_attentions`` hooks inside the copies are reassembled the same way.

Limitations: every routed module must run exactly once per forward pass (weight-shared layers such
as ALBERT's cannot be routed per position); gradient checkpointing of a layer that *contains* a
routed module (``route="attention"``) re-runs the decision and fails (checkpointing the copies
themselves, ``route="block"``, works); ``nn.DataParallel`` replicas share one controller (use DDP,
e.g. ``accelerate launch``); incremental decoding with a KV cache works only while a batch takes
one copy per position.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ...routing import Decision, Router, Trajectory, build_router
from ...routing.decision import RoutingPass
from ...routing.execution import CallExecution, execution_for
from ...routing.lowrank import LowRankBank
from .config import DEFAULT_TARGETS, INJECT_ROUTES, RoutedTransformerConfig

try:  # Transformers >= 5 records hidden states / attentions with hooks and a context variable
    from transformers.utils.output_capturing import _active_collector
except ImportError:  # pragma: no cover - other Transformers versions
    _active_collector = None

CONTROLLER_NAME = "routing_controller"


class RoutingController(nn.Module):
    """The router of all routed positions of one model and the state of the current forward pass.

    The routed layer of a model with injected routing (``router``, ``num_actions``, ``depth``,
    ``block_sets``; no stop action).
    """

    stop_action: int | None = None

    def __init__(self, router: Router, positions: Sequence[str], width: int) -> None:
        super().__init__()
        self.router = router
        self.positions = list(positions)
        self.depth = len(self.positions)
        self.block_sets = self.depth  # every position has its own copies
        self.width = width
        self.num_actions = router.num_actions
        self.context_meta: Tensor | None = None
        self.last_trajectory: Trajectory | None = None
        self._pass: RoutingPass | None = None
        self._mask: Tensor | None = None
        self.forward_params: list[str] = []  # parameter names of the top model's forward (set on injection)

    def begin(self, meta: Tensor | None, mask: Tensor | None) -> None:
        """Start a forward pass with these meta labels (and 2-D attention mask for state pooling)."""
        self._pass = RoutingPass(self.router, meta)
        self._mask = mask
        self.last_trajectory = None

    def decide(self, position: int, hidden: Tensor) -> Decision:
        """The decision of routed position ``position`` for the batch of activations ``hidden``."""
        rp = self._pass
        if rp is None:
            raise RuntimeError(
                "a routed module ran outside a forward pass of the model it was injected into: call "
                "model(..., meta=meta) or use routing_context(model, meta)"
            )
        if position in rp.decisions:
            raise RuntimeError(f"routed position {position} ({self.positions[position]}) ran twice in one pass")
        mask = self._mask
        ok = mask is not None and hidden.dim() == 3 and tuple(mask.shape) == tuple(hidden.shape[:2])
        return rp.decide(position, hidden, mask if ok else None)

    def finish(self) -> Trajectory | None:
        """End the pass: stack its decisions (in position order) into ``last_trajectory``."""
        rp, self._pass, self._mask = self._pass, None, None
        if rp is None:
            return None
        self.last_trajectory = rp.trajectory(self.depth, names=self.positions)
        return self.last_trajectory


# ---------------------------------------------------------------------- execution
def _has_cache(obj: Any) -> bool:
    if isinstance(obj, (tuple, list)):
        return any(_has_cache(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_cache(o) for o in obj.values())
    return hasattr(obj, "get_seq_length") and hasattr(obj, "update")  # a transformers Cache


def _refuse_cache(args: tuple, kwargs: dict) -> None:
    if _has_cache(args) or _has_cache(kwargs):
        raise NotImplementedError(
            "a KV cache cannot be split across routed copies: pass use_cache=False (or route one batch per copy)"
        )


#: the "call" execution of injected copies, recording Transformers' captured outputs per copy
COPY_EXECUTION = CallExecution(collector=_active_collector, refuse=_refuse_cache)


def routed_call(copies: Sequence[nn.Module], groups: Tensor, args: tuple, kwargs: dict, scale: Tensor | None = None) -> Any:
    """Call ``copies[g]`` on the samples of group g, each copy once; outputs in batch order."""
    return COPY_EXECUTION(copies, (args, kwargs), groups, scale)


def _delegated(module: nn.Module, name: str, child: str, pick) -> Any:
    """``module``'s attribute ``name``, or, when it has none, that of ``pick(module.<child>)`` (the
    wrapped original), so code inspecting the original module keeps working."""
    try:
        return nn.Module.__getattr__(module, name)
    except AttributeError:
        if name == child or child not in module.__dict__.get("_modules", {}):
            raise
        return getattr(pick(module._modules[child]), name)


class RoutedModule(nn.Module):
    """``b`` copies of one module; the model's router picks one per sample (see module docstring).

    Attributes the wrapper lacks are read from copy 0, so code that inspects the original module
    (``layer.attention.is_cross_attention``, ``layer_idx``, ...) keeps working.
    """

    def __init__(self, copies: Sequence[nn.Module], position: int, controller: RoutingController, name: str = ""):
        super().__init__()
        self.copies = nn.ModuleList(copies)
        self.position = position
        self.target_name = name
        object.__setattr__(self, "_controller", controller)  # lives on the top model, not a child

    @property
    def num_copies(self) -> int:
        return len(self.copies)

    def __getattr__(self, name: str) -> Any:
        return _delegated(self, name, "copies", lambda copies: copies[0])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, Tensor):
            raise TypeError(f"{self.target_name}: the first argument must be the hidden states tensor")
        ctrl = self._controller
        dec = ctrl.decide(self.position, hidden)
        return routed_call(self.copies, dec.actions, args, kwargs, ctrl._pass.scale(dec))

    def extra_repr(self) -> str:
        return f"position={self.position}, target={self.target_name!r}, copies={self.num_copies}"


class RoutedLoRALinear(nn.Module):
    """A pretrained ``nn.Linear`` plus ``b`` routed low-rank experts: ``y = base(x) + delta_k(x)`` with
    ``k`` the expert the model's router picks for the sample (``route="lora"``). The experts start at
    zero (``B = 0``), so the injected model starts as the pretrained one; all experts of the layer run
    in one grouped computation (:class:`~nli_routing.routing.lowrank.LowRankBank`).

    Attributes the wrapper lacks (``weight``, ``in_features``, ...) are read from the base layer.
    """

    def __init__(self, base: nn.Linear, experts: LowRankBank, position: int, controller: RoutingController,
                 name: str = "") -> None:
        super().__init__()
        self.base = base
        self.experts = experts
        self.position = position
        self.target_name = name
        object.__setattr__(self, "_controller", controller)

    def __getattr__(self, name: str) -> Any:
        return _delegated(self, name, "base", lambda base: base)

    def forward(self, x: Tensor) -> Tensor:
        ctrl = self._controller
        dec = ctrl.decide(self.position, x)
        delta = execution_for(self.experts)(self.experts, x, dec.actions, ctrl._pass.scale(dec), False)
        return self.base(x) + delta.to(x.dtype)

    def extra_repr(self) -> str:
        return f"position={self.position}, target={self.target_name!r}, experts={self.experts.num_experts}, rank={self.experts.rank}"


# ---------------------------------------------------------------------- injection
def _pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    ctrl: RoutingController = getattr(module, CONTROLLER_NAME)
    meta = kwargs.pop("meta", None)
    if meta is None:
        meta = ctrl.context_meta
    params = ctrl.forward_params
    mask = kwargs.get("attention_mask")
    if mask is None and "attention_mask" in params and params.index("attention_mask") < len(args):
        mask = args[params.index("attention_mask")]
    if "use_cache" in params:
        kwargs.setdefault("use_cache", False)
    ctrl.begin(meta, mask if isinstance(mask, Tensor) and mask.dim() == 2 else None)
    return args, kwargs


def _post_hook(module: nn.Module, args: tuple, output: Any) -> None:
    getattr(module, CONTROLLER_NAME).finish()


def target_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the modules matching any regex in ``patterns`` (at the end of the name, on a dot boundary)."""
    regexes = [re.compile(rf"(?:.*\.)?(?:{p})") for p in patterns]
    names = [n for n, _ in model.named_modules() if n and any(r.fullmatch(n) for r in regexes)]
    nested = [n for n in names if any(n.startswith(m + ".") for m in names)]
    if nested:
        raise ValueError(f"target modules must not contain each other; nested: {nested[:4]}")
    return names


def default_target_modules(model: nn.Module, route: str) -> list[str]:
    """The default target regex of ``model``'s architecture for ``route`` (attention or block)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(
            f"no default target modules for model type {model_type!r} (known: {sorted(DEFAULT_TARGETS)}); "
            "set target_modules"
        )
    return [DEFAULT_TARGETS[model_type][route]]


def make_copies(module: nn.Module, n: int, noise_std: float, keep_original: bool, generator: torch.Generator):
    """``n`` copies of ``module``: the module itself first, then deep copies; noise on the copies."""
    copies = [module] + [copy.deepcopy(module) for _ in range(n - 1)]
    if noise_std > 0:
        with torch.no_grad():
            for i, c in enumerate(copies):
                if i == 0 and keep_original:
                    continue
                for p in c.parameters():
                    if p.is_floating_point():
                        noise = torch.randn(p.shape, generator=generator) * noise_std
                        p.add_(noise.to(device=p.device, dtype=p.dtype))
    return copies


def inject_routing(model: nn.Module, config: RoutedTransformerConfig) -> nn.Module:
    """Replace the target modules of ``model`` by routed copies (in place); returns ``model``.

    Call the model as before plus ``meta=[B]`` labels (or inside :func:`routing_context`).
    """
    if config.route not in INJECT_ROUTES:
        raise ValueError(f"inject_routing routes one of {INJECT_ROUTES}, got {config.route!r}")
    if hasattr(model, CONTROLLER_NAME):
        raise ValueError("routing is already injected into this model")
    patterns = config.target_modules or default_target_modules(model, config.route)
    names = target_names(model, patterns)
    if not names:
        some = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(f"no module name matches {patterns}; names look like {some}")
    hidden = int(model.config.hidden_size) if hasattr(model, "config") else 0
    dims = [max(hidden, 1)] * (len(names) + 1)
    if config.route == "lora":
        linears = [model.get_submodule(n) for n in names]
        wrong = [n for n, m in zip(names, linears) if not isinstance(m, nn.Linear)]
        if wrong:
            raise ValueError(f"route='lora' routes linear layers; not nn.Linear: {wrong[:4]}")
        dims = [m.in_features for m in linears] + [linears[-1].out_features]  # what each position's router reads
    router = build_router(dims=dims, width=config.num_blocks, num_meta=config.num_meta, **config.router_kwargs())
    controller = RoutingController(router, names, config.num_blocks)
    controller.forward_params = list(inspect.signature(model.forward).parameters)
    gen = torch.Generator().manual_seed(config.noise_seed)
    for position, name in enumerate(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child)
        if config.route == "lora":
            experts = LowRankBank(config.num_blocks, original.in_features, original.out_features, config.lora_rank,
                                  config.lora_alpha, generator=gen).to(original.weight.device, original.weight.dtype)
            original.requires_grad_(config.lora_train_base)
            setattr(parent, child, RoutedLoRALinear(original, experts, position, controller, name))
            continue
        copies = make_copies(original, config.num_blocks, config.noise_std, config.keep_original, gen)
        setattr(parent, child, RoutedModule(copies, position, controller, name))
    model.add_module(CONTROLLER_NAME, controller)
    model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    model.register_forward_hook(_post_hook)
    return model


def get_controller(model: nn.Module) -> RoutingController:
    """The routing controller of an injected model (or of the injected model inside ``model``)."""
    for module in model.modules():
        if isinstance(module, RoutingController):
            return module
    raise ValueError("this model has no injected routing (call inject_routing first)")


def routed_modules(model: nn.Module) -> list[RoutedModule]:
    return [m for m in model.modules() if isinstance(m, RoutedModule)]


@contextlib.contextmanager
def routing_context(model: nn.Module, meta: Tensor | None) -> Iterator[RoutingController]:
    """Route every forward pass of ``model`` inside the block with these meta labels."""
    ctrl = get_controller(model)
    previous, ctrl.context_meta = ctrl.context_meta, meta
    try:
        yield ctrl
    finally:
        ctrl.context_meta = previous
