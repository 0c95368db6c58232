"""Premise/hypothesis NLI model: CBOW encoder (optionally routed WP) + (optionally routed) classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..routing import CollaborationReward, RoutedLayer, Trajectory, assign_rewards, final_reward
from ..routing.bank import LinearBank
from ..routing import RouterConfig
from .blocks import fc_block, routed_fc_stack
from .cbow import CBOWEncoder
from .classifier import Classifier

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


@dataclass
class NLIModelConfig(RouterConfig):
    """Configuration of :class:`NLIRoutingModel` (every field documented for the CLI)."""

    route: str = field(default="wp", metadata={"help": f"what is routed: one of {ROUTES}"})
    router_init: float = field(
        default=0.0,
        metadata={"help": "initial table values (the library's RouterConfig: -1, the worst reward); 0 lets an agent "
                          "whose block earns less than 0 move on, so agents split by signature (BENCHMARKS.md, issue 15)"},
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
    meta_keyword: bool = field(default=False, metadata={"help": "add the meta label as a keyword vector"})
    freeze_embeddings: bool = field(default=True, metadata={"help": "keep the word vectors fixed"})
    reward: str = field(default="correct", metadata={"help": "final reward: correct (+1/-1) or neg_loss"})
    rho: float = field(default=0.0, metadata={"help": "collaboration reward weight in [-1, 1]"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.pair_features not in PAIR_FEATURES:
            raise ValueError(f"pair_features must be one of {PAIR_FEATURES}, got {self.pair_features!r}")
        if self.classifier_layers < ("classifier" in self.route):
            raise ValueError(f"classifier_layers must be >= {int('classifier' in self.route)} with route "
                             f"{self.route!r}, got {self.classifier_layers}")
        if self.classifier_init not in CLASSIFIER_INITS:
            raise ValueError(f"classifier_init must be one of {CLASSIFIER_INITS}, got {self.classifier_init!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NLIOutput:
    logits: Tensor
    per_sample_loss: Tensor | None
    trajectories: list[Trajectory]
    dispatch: Any = None  # DispatchOutput of a learned dispatcher (None without one)


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


class NLIRoutingModel(nn.Module):
    """Encode premise and hypothesis separately, concatenate, classify into 3 classes."""

    def __init__(self, config: NLIModelConfig, weight: Tensor, pad_id: int) -> None:
        super().__init__()
        self.config = c = config
        dim = int(weight.shape[1])
        routed: list[RoutedLayer] = []
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
            routed.append(projection)
        elif c.route == "projection":
            projection = nn.Sequential(*(
                fc_block(dim, dim, c.wp_activation, residual=c.wp_residual) for _ in range(c.wp_depth)
            ))
        self.encoder = CBOWEncoder(
            weight, pad_id, projection, c.freeze_embeddings, c.pool, c.num_meta if c.meta_keyword else 0
        )
        self.build_head(dim, routed, ["wp"] * len(routed))

    def build_head(self, dim: int, routed: list[RoutedLayer], names: list[str] | None = None) -> None:
        """Normalisation, the (optionally routed) classifier on the pair features (``pair_features``) and the reward parts.

        ``routed`` holds the encoder's routed layers (``names`` names them in routing records); a
        routed classifier is appended to it.
        """
        c = self.config
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if c.normalize else nn.Identity()
        routed_cls = None
        in_dim = (2 if c.pair_features == "concat" else 4) * dim
        if "classifier" in c.route:
            routed_cls = routed_fc_stack(
                [in_dim] + [c.classifier_hidden] * c.classifier_layers,
                c.classifier_width,
                c.num_meta,
                **c.router_kwargs(seed_offset=1),
            )
            routed.append(routed_cls)
        self.classifier = Classifier(
            in_dim, c.num_classes, c.classifier_hidden, c.classifier_layers, routed=routed_cls
        )
        if c.classifier_init == "he":
            he_init(routed_cls.blocks if routed_cls is not None else self.classifier.hidden)
        names = list(names) if names is not None else [f"encoder{i}" for i in range(len(routed))]
        self.routed_layer_names = names + ["classifier"] * (routed_cls is not None)
        self.routed_layers = routed  # plain list: the modules are registered through their parents
        self.collaboration = nn.ModuleList(CollaborationReward(layer.num_actions, c.rho, depths=layer.block_sets) for layer in routed)

    #: stage 2 of two-stage dispatch: blocks and routers fixed, only the dispatcher learns
    #: (class defaults, so every subclass has them whatever its ``__init__`` builds)
    routing_frozen = False
    _unfrozen: tuple = ()

    @property
    def dispatcher(self) -> nn.Module | None:
        """The learned dispatcher choosing each sample's meta class (see :meth:`attach_dispatcher`)."""
        return self._modules.get("dispatcher")

    def attach_dispatcher(self, dispatcher: nn.Module) -> None:
        """Route with the meta class a learned dispatcher picks from the tokens (the batch's meta
        labels are then never read by the model; they stay in the batch for per-class reports).

        The dispatcher's number of classes must equal the routers' number of meta classes.
        """
        if dispatcher.num_dispatch != self.config.num_meta:
            raise ValueError(
                f"the dispatcher chooses among {dispatcher.num_dispatch} classes but the model's routers "
                f"have {self.config.num_meta} meta classes"
            )
        self._modules["dispatcher"] = dispatcher  # a registered submodule (saved, moved, trained)

    def freeze_routing(self) -> None:
        """Fix every parameter and router outside the dispatcher (stage 2 of two-stage dispatch).

        The frozen parts stay in eval mode (greedy routers, no dropout) even under ``model.train()``
        and their router losses are not computed; only the dispatcher trains.
        """
        if self.dispatcher is None:
            raise ValueError("attach a dispatcher before freezing the routing (nothing would learn)")
        keep = {id(p) for p in self.dispatcher.parameters()}
        self._unfrozen = [p for p in self.parameters() if id(p) not in keep and p.requires_grad]
        for p in self._unfrozen:
            p.requires_grad_(False)
        self.routing_frozen = True
        self.train(self.training)

    def detach_dispatcher(self) -> nn.Module | None:
        """Remove the dispatcher (routing reads the batch's meta labels again) and undo
        :meth:`freeze_routing`; returns the removed dispatcher."""
        dispatcher = self._modules.pop("dispatcher", None)
        for p in self._unfrozen:
            p.requires_grad_(True)
        self._unfrozen = ()
        self.routing_frozen = False
        self.train(self.training)
        return dispatcher

    def train(self, mode: bool = True) -> "NLIRoutingModel":
        super().train(mode)
        if self.routing_frozen:
            for name, child in self.named_children():
                if child is not self.dispatcher:
                    child.train(False)
        return self

    def routers(self) -> list[nn.Module]:
        return [layer.router for layer in self.routed_layers]

    def router_parameters(self) -> list[nn.Parameter]:
        params = [p for r in self.routers() for p in r.parameters()]
        if self.dispatcher is not None:
            params += self.dispatcher.router_parameters()
        return params

    def block_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.router_parameters()}
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    def set_epoch(self, epoch: int) -> None:
        for r in self.routers():
            r.set_epoch(epoch)
        if self.dispatcher is not None:
            self.dispatcher.set_epoch(epoch)

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
        if self.dispatcher is not None:  # the dispatcher's class replaces the meta label
            dispatch = self.dispatcher(premise_ids, premise_mask, hypothesis_ids, hypothesis_mask)
            meta = dispatch.meta
        p, h, trajs = self.encoder(premise_ids, premise_mask, hypothesis_ids, hypothesis_mask, meta)
        logits, cls_trajs = self.classifier(self.pair(self.norm(p), self.norm(h)), meta)
        loss = F.cross_entropy(logits, labels, reduction="none") if labels is not None else None
        return NLIOutput(logits, loss, trajs + cls_trajs, dispatch)

    def pair(self, p: Tensor, h: Tensor) -> Tensor:
        """The classifier's input from the two sentence encodings (``pair_features``)."""
        if self.config.pair_features == "concat":
            return torch.cat([p, h], -1)
        return torch.cat([p, h, (p - h).abs(), p * h], -1)

    def router_loss(self, out: NLIOutput, labels: Tensor) -> Tensor:
        """Assign rewards to every trajectory and return the summed router (and dispatcher) loss."""
        if not out.trajectories and out.dispatch is None:
            return out.logits.new_zeros(())
        correct = out.logits.detach().argmax(-1) == labels
        reward = final_reward(self.config.reward, correct=correct, per_sample_loss=out.per_sample_loss)
        total = out.logits.new_zeros(())
        if not self.routing_frozen:
            for layer, collab, traj in zip(self.routed_layers, self.collaboration, out.trajectories):
                assign_rewards(traj, reward, collab)
                total = total + layer.router.loss(traj)
        if out.dispatch is not None and self.dispatcher.training:
            total = total + self.dispatcher.loss(out.dispatch, reward)
        return total
