"""Premise/hypothesis NLI model: CBOW encoder (optionally routed WP) + (optionally routed) classifier."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from ..routing import RoutedLayer, RouterConfig, Trajectory
from ..routing.bank import LinearBank
from ..routing.config import check_at_least
from ..routing.rewards import REWARD_KINDS
from .base import RoutedModel, register_model_kind
from .blocks import ACTIVATIONS, fc_block, routed_fc_stack
from .cbow import CBOWEncoder
from .classifier import Classifier
from .dispatcher import draw_classes, em_posterior

#: "projection": an unrouted (shared) word projection of depth ``wp_depth``, the equal-depth
#: unrouted counterpart of "wp"
ROUTES = ("none", "wp", "classifier", "wp+classifier", "projection")
#: how the classifier sees a pair of sentence encodings p, h: "concat" = [p; h] (the thesis),
#: "match" = [p; h; |p - h|; p * h] (the usual sentence-pair matching features)
PAIR_FEATURES = ("concat", "match")
#: initialisation of the classifier's hidden layers: "torch" = nn.Linear's default (U(+-1/sqrt(in)),
#: the signal shrinks about 2.4x per ReLU layer), "he" = Kaiming normal for ReLU with zero biases
#: (the signal keeps its scale through the layers)
CLASSIFIER_INITS = ("torch", "he")


#: how an unrouted model sees the meta label with ``meta_keyword``
KEYWORD_MODES = ("vector", "tokens")
#: how a routed classifier is routed (``classifier_paths``)
CLASSIFIER_PATHS = ("per-layer", "set")


@dataclass
class NLIModelConfig(RouterConfig):
    """Configuration of :class:`NLIRoutingModel` (every field documented for the CLI)."""

    route: str = field(default="wp", metadata={"help": f"what is routed: one of {ROUTES}"})
    router_init: float = field(
        default=-1.0,
        metadata={"help": "initial table values; -1 (the worst reward) keeps greedy choices stable; with the capacity "
                          "balance the agents still split (BENCHMARKS.md, issue 29; issue 15 used 0)"},
    )
    router_balance_share: float = field(
        default=0.5,
        metadata={"help": "capacity balance of the tabular routers: a block taking more than this share of a batch's "
                          "decisions gets a selection bias against it (1: off; the NLI models' default 0.5 splits "
                          "conflicting meta classes, BENCHMARKS.md issue 29)"},
    )
    num_classes: int = field(default=3, metadata={"help": "output classes (entails, contradicts, permits)"})
    wp_width: int = field(default=4, metadata={"help": "number of word-projection blocks b"})
    wp_depth: int = field(default=1, metadata={"help": "routing depth d of the word projection"})
    wp_activation: str = field(default="relu", metadata={"help": "activation of the projection blocks"})
    wp_residual: bool = field(default=True, metadata={"help": "projection blocks compute x + f(x)"})
    wp_gate_init: float = field(
        default=0.0, metadata={"help": "start of the residual projection blocks' gates g in x + g f(x) (0: identity)"}
    )
    wp_recursive: bool = field(default=True, metadata={"help": "reuse one block set at every depth"})
    wp_stop: bool = field(default=False, metadata={"help": "add a stop action to the word projection"})
    classifier_width: int = field(default=4, metadata={"help": "blocks per routed classifier layer"})
    classifier_hidden: int = field(default=600, metadata={"help": "classifier hidden size"})
    classifier_paths: str = field(
        default="per-layer",
        metadata={"help": "routed classifier: per-layer (one decision among classifier_width blocks at each of "
                          "classifier_layers layers) or set (an input layer, then any path through one set of "
                          "classifier_width blocks of length up to classifier_layers, with a stop action: thesis 5.3.1.1)"},
    )
    classifier_layers: int = field(
        default=1, metadata={"help": "classifier hidden layers (the thesis: 3; 3 sits on a plateau for epochs, BENCHMARKS.md)"}
    )
    pool: str = field(default="sum", metadata={"help": "CBOW pooling: sum (thesis) or mean"})
    pair_features: str = field(
        default="match",
        metadata={"help": f"classifier input from the two encodings: one of {PAIR_FEATURES} (the thesis: concat)"},
    )
    classifier_init: str = field(
        default="torch", metadata={"help": f"initialisation of the classifier's hidden layers: one of {CLASSIFIER_INITS}"}
    )
    normalize: bool = field(default=False, metadata={"help": "layer-normalise the sentence encodings"})
    meta_keyword: bool = field(default=False, metadata={"help": "the unrouted baseline sees the meta label as a keyword"})
    meta_keyword_mode: str = field(
        default="vector",
        metadata={"help": "with --meta_keyword: vector (a learned vector added to the premise encoding) or tokens (a "
                          "learned keyword token in front of each sentence before encoding, thesis 5.3.2)"},
    )
    freeze_embeddings: bool = field(default=True, metadata={"help": "keep the word vectors fixed"})
    reward: str = field(default="correct", metadata={"help": "final reward: correct (+1/-1) or neg_loss"})
    rho: float = field(default=0.0, metadata={"help": "collaboration reward weight in [-1, 1]"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, num_classes=2, wp_width=1, wp_depth=1, classifier_width=1, classifier_hidden=1)
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.pair_features not in PAIR_FEATURES:
            raise ValueError(f"pair_features must be one of {PAIR_FEATURES}, got {self.pair_features!r}")
        if self.classifier_layers < ("classifier" in self.route):
            raise ValueError(f"classifier_layers must be >= {int('classifier' in self.route)} with route "
                             f"{self.route!r}, got {self.classifier_layers}")
        if self.classifier_paths not in CLASSIFIER_PATHS:
            raise ValueError(f"classifier_paths must be one of {CLASSIFIER_PATHS}, got {self.classifier_paths!r}")
        if self.meta_keyword_mode not in KEYWORD_MODES:
            raise ValueError(f"meta_keyword_mode must be one of {KEYWORD_MODES}, got {self.meta_keyword_mode!r}")
        if self.meta_keyword and self.meta_keyword_mode == "tokens" and "wp" in self.route:
            raise ValueError("meta_keyword_mode 'tokens' is the unrouted baseline's keyword (route none, projection or "
                             f"classifier), not route {self.route!r}")
        if self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f"classifier_init must be one of {CLASSIFIER_INITS}, got {self.classifier_init!r}")
        if self.wp_activation not in ACTIVATIONS:
            raise ValueError(f"wp_activation must be one of {sorted(ACTIVATIONS)}, got {self.wp_activation!r}")
        if self.pool not in ("sum", "mean"):
            raise ValueError(f"pool must be 'sum' or 'mean', got {self.pool!r}")
        if self.reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {REWARD_KINDS}, got {self.reward!r}")
        if not math.isfinite(self.wp_gate_init):
            raise ValueError(f"wp_gate_init must be a finite number, got {self.wp_gate_init}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NLIOutput(ModelOutput):
    """A routed model's output (a transformers ``ModelOutput``): ``loss`` (mean cross-entropy, when
    labels are given: what ``transformers.Trainer`` reads), ``logits [B, C]``, ``per_sample_loss [B]``,
    ``trajectories`` (one per routed layer, in ``routed_layer_names`` order), ``dispatch`` (a learned
    dispatcher's ``DispatchOutput``, None without one), ``meta`` (``[B]`` the meta classes the model
    routed with, None when it reads none) and ``meta_source`` (where they came from: ``"given"``,
    ``"centroids"``, ``"learned"`` or ``"none"``, :mod:`nli_routing.models.meta`). ``reward_loss [B]``:
    the loss the routers' ``neg_loss`` reward reads where it is not ``per_sample_loss`` (a dispatcher of
    target "mixture": the drawn class's path), else None."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    per_sample_loss: Tensor | None = None
    trajectories: list[Trajectory] | None = None
    dispatch: Any = None
    meta: Tensor | None = None
    meta_source: str | None = None
    reward_loss: Tensor | None = None


@torch.no_grad()
def he_init(module: nn.Module) -> None:
    """Kaiming-normal (fan in, ReLU) weights and zero biases for every linear layer and linear bank
    of ``module`` (the classifier's hidden layers; routers and their parameters are left alone)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, LinearBank):
            m.weight.normal_(0.0, (2.0 / m.in_dim) ** 0.5)  # weight [blocks, in, out]: fan in = in
            m.bias.zero_()


class NLIRoutingModel(RoutedModel):
    """Encode premise and hypothesis separately, combine (``pair_features``), classify into 3 classes.

    The encoder is :meth:`build_encoder`'s (CBOW here, with an optionally routed word projection);
    subclasses with another encoder (``LSTMNLIModel``) override it and keep the head, the forward and
    the routing plumbing of :class:`~nli_routing.models.base.RoutedModel`.
    """

    main_input_name = "premise_ids"

    def __init__(self, config: NLIModelConfig | NLIRoutingConfig, weight: Tensor | None = None,
                 pad_id: int | None = None) -> None:
        """``config``: the settings (then ``weight``, the word vectors ``[V, D]``, is needed) or a saved
        model's :class:`NLIRoutingConfig` (then ``weight`` may be omitted: a zero table of the config's
        shape, which ``from_pretrained`` fills)."""
        if isinstance(config, NLIRoutingConfig):
            if weight is None:
                weight = torch.zeros(config.vocab_size, config.embedding_dim)
        elif weight is None:
            raise ValueError(f"{type(self).__name__}({type(config).__name__}) needs the word vectors (weight [V, D])")
        else:
            config = self.config_class.from_settings(config)
        config.vocab_size, config.embedding_dim = (int(n) for n in weight.shape)
        if pad_id is not None:
            config.pad_id = int(pad_id)
        super().__init__(config)
        self.encoder, dim, routed = self.build_encoder(weight, config.pad_id)
        self.build_head(dim, routed)

    @property
    def reads_meta_keyword(self) -> bool:
        return bool(self.config.meta_keyword)

    def build_encoder(self, weight: Tensor, pad_id: int) -> tuple[nn.Module, int, list[tuple[str, RoutedLayer]]]:
        """The sentence encoder, its output size and its routed layers ``(name, layer)``."""
        c = self.config
        dim = int(weight.shape[1])
        routed: list[tuple[str, RoutedLayer]] = []
        projection = None
        if "wp" in c.route:
            projection = routed_fc_stack(
                [dim] * (c.wp_depth + 1),
                c.wp_width,
                c.num_meta,
                activation=c.wp_activation,
                recursive=c.wp_recursive,
                allow_stop=c.wp_stop,
                residual=c.wp_residual,
                gate_init=c.wp_gate_init,
                **c.router_kwargs(),
            )
            routed.append(("wp", projection))
        elif c.route == "projection":
            projection = nn.Sequential(*(
                fc_block(dim, dim, c.wp_activation, residual=c.wp_residual) for _ in range(c.wp_depth)
            ))
        encoder = CBOWEncoder(
            weight, pad_id, projection, c.freeze_embeddings, c.pool, c.num_meta if c.meta_keyword else 0,
            keyword_tokens=bool(c.meta_keyword) and c.meta_keyword_mode == "tokens",
        )
        return encoder, dim, routed

    def build_head(self, dim: int, routed: list[tuple[str, RoutedLayer]]) -> None:
        """Normalisation, the (optionally routed) classifier on the pair features (``pair_features``),
        and the routed layers: the encoder's (``routed``) and the classifier's."""
        c = self.config
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if c.normalize else nn.Identity()
        routed_cls = None
        in_dim = (2 if c.pair_features == "concat" else 4) * dim
        entry = None
        if "classifier" in c.route and c.classifier_paths == "set":
            # the thesis' routed classifier: an input layer to the hidden size, then any path of length up to
            # classifier_layers through one set of classifier_width blocks, with a stop action
            entry = fc_block(in_dim, c.classifier_hidden, "relu")
            routed_cls = routed_fc_stack(
                [c.classifier_hidden] * (c.classifier_layers + 1),
                c.classifier_width,
                c.num_meta,
                recursive=True,
                allow_stop=True,
                **c.router_kwargs(seed_offset=1),
            )
        elif "classifier" in c.route:
            routed_cls = routed_fc_stack(
                [in_dim] + [c.classifier_hidden] * c.classifier_layers,
                c.classifier_width,
                c.num_meta,
                **c.router_kwargs(seed_offset=1),
            )
        self.classifier = Classifier(
            in_dim, c.num_classes, c.classifier_hidden, c.classifier_layers, routed=routed_cls, entry=entry
        )
        if c.classifier_init == "he":
            he_init(routed_cls.blocks if routed_cls is not None else self.classifier.hidden)
        self.register_routed(list(routed) + ([("classifier", routed_cls)] if routed_cls is not None else []))

    def forward(
        self,
        premise_ids: Tensor,
        premise_mask: Tensor,
        hypothesis_ids: Tensor,
        hypothesis_mask: Tensor,
        meta: Tensor | None = None,
        labels: Tensor | None = None,
        **_: Tensor,
    ) -> NLIOutput:
        dispatch = None
        inputs = (premise_ids, premise_mask, hypothesis_ids, hypothesis_mask)
        source = self.meta_source
        if source == "learned":  # the dispatcher's class replaces the meta label
            dispatch = self.dispatcher(*inputs)
            if self.dispatcher.training and labels is not None and self.dispatcher.dispatch_target == "mixture":
                return self._mixture_forward(inputs, labels, dispatch)
            if self.dispatcher.training and labels is not None:
                self.dispatcher.fill_target(dispatch, meta, lambda: self.agent_losses(inputs, labels))
            meta = dispatch.meta
        elif source == "centroids":  # the nearest offline centroid of the premise's mean word vector
            meta = self.centroids(premise_ids, premise_mask, self.encoder.embedding.weight)
        elif source == "none":
            meta = None
        logits, trajs = self.logits(inputs, meta)
        loss = F.cross_entropy(logits, labels, reduction="none") if labels is not None else None
        return NLIOutput(loss=None if loss is None else loss.mean(), logits=logits, per_sample_loss=loss,
                         trajectories=trajs, dispatch=dispatch, meta=meta, meta_source=source)

    def logits(self, inputs: tuple[Tensor, Tensor, Tensor, Tensor], meta: Tensor | None) -> tuple[Tensor, list]:
        """``(logits [B, C], trajectories)`` of the pair ``inputs`` routed on ``meta``."""
        p, h, trajs = self.encoder(*inputs, meta)
        logits, cls_trajs = self.classifier(self.pair(self.norm(p), self.norm(h)), meta)
        return logits, trajs + cls_trajs

    def _mixture_forward(self, inputs: tuple[Tensor, Tensor, Tensor, Tensor], labels: Tensor, dispatch) -> NLIOutput:
        """Training with a dispatcher of target "mixture": every sample through all K agents' paths as one
        batch of K x B rows; the per-sample loss is the posterior-weighted loss ``sum_k q(k) loss_k``
        (``q ~ pi(k | x) exp(-loss_k)``, detached), the dispatcher's target is ``q``, and the logits and
        trajectories returned (for the routers' rewards and the metrics) are those of one class per sample
        drawn from ``q``, which is also the batch's dispatch."""
        k, b = int(self.config.num_meta), labels.shape[0]
        wide = tuple(x.repeat(k, *([1] * (x.dim() - 1))) for x in inputs)
        meta = torch.arange(k, device=labels.device).repeat_interleave(b)
        logits, trajs = self.logits(wide, meta)
        losses = F.cross_entropy(logits, labels.repeat(k), reduction="none").view(k, b).t()  # [B, K]
        values = dispatch.trajectory.values[:, 0]
        q = em_posterior(values, losses)
        drawn = draw_classes(q, self.dispatcher.policy.generator)
        rows = drawn * b + torch.arange(b, device=labels.device)
        fixed = losses.detach()
        dispatch.meta, dispatch.target, dispatch.agent_losses = drawn, q, fixed
        per_sample = (q.to(losses.dtype) * losses).sum(1)
        return NLIOutput(loss=per_sample.mean(), logits=logits[rows], per_sample_loss=per_sample,
                         trajectories=[t.rows(rows) for t in trajs], dispatch=dispatch, meta=drawn, meta_source="learned",
                         reward_loss=fixed.gather(1, drawn.unsqueeze(1)).squeeze(1))

    @torch.no_grad()
    def agent_losses(self, inputs: tuple[Tensor, Tensor, Tensor, Tensor], labels: Tensor) -> Tensor:
        """``[B, num_meta]`` task loss of every sample on each agent's greedy path (a best-agent target
        for a learned dispatcher; the routers are put in eval mode for it and restored after)."""
        parts = [self.encoder, self.classifier]
        modes = [m.training for p in parts for m in p.modules()]
        for p in parts:
            p.eval()
        b = labels.shape[0]
        try:
            out = []
            for k in range(int(self.config.num_meta)):
                meta = torch.full((b,), k, dtype=torch.long, device=labels.device)
                out.append(F.cross_entropy(self.logits(inputs, meta)[0], labels, reduction="none"))
        finally:
            for m, mode in zip((m for p in parts for m in p.modules()), modes):
                m.training = mode
        return torch.stack(out, 1)

    def pair(self, p: Tensor, h: Tensor) -> Tensor:
        """The classifier's input from the two sentence encodings (``pair_features``)."""
        if self.config.pair_features == "concat":
            return torch.cat([p, h], -1)
        return torch.cat([p, h, (p - h).abs(), p * h], -1)


#: the Hugging Face config of NLIRoutingModel: NLIModelConfig's fields plus the word-vector table's shape
NLIRoutingConfig = register_model_kind("cbow", NLIModelConfig, NLIRoutingModel, "nli-routing-cbow", "NLIRoutingConfig",
                                       extra_fields={"vocab_size": 0, "embedding_dim": 0, "pad_id": 0})
