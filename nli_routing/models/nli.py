"""Premise/hypothesis NLI model: CBOW encoder (optionally routed WP) + (optionally routed) classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..routing import CollaborationReward, RoutedLayer, Trajectory, assign_rewards, final_reward
from .blocks import RouterConfig, routed_fc_stack
from .cbow import CBOWEncoder
from .classifier import Classifier

ROUTES = ("none", "wp", "classifier", "wp+classifier")


@dataclass
class NLIModelConfig(RouterConfig):
    """Configuration of :class:`NLIRoutingModel` (every field documented for the CLI)."""

    route: str = field(default="wp", metadata={"help": f"what is routed: one of {ROUTES}"})
    num_classes: int = field(default=3, metadata={"help": "output classes (entails, contradicts, permits)"})
    wp_width: int = field(default=4, metadata={"help": "number of word-projection blocks b"})
    wp_depth: int = field(default=1, metadata={"help": "routing depth d of the word projection"})
    wp_activation: str = field(default="relu", metadata={"help": "activation of the projection blocks"})
    wp_residual: bool = field(default=True, metadata={"help": "projection blocks compute x + f(x)"})
    wp_recursive: bool = field(default=True, metadata={"help": "reuse one block set at every depth"})
    wp_stop: bool = field(default=False, metadata={"help": "add a stop action to the word projection"})
    classifier_width: int = field(default=4, metadata={"help": "blocks per routed classifier layer"})
    classifier_hidden: int = field(default=600, metadata={"help": "classifier hidden size"})
    classifier_layers: int = field(default=3, metadata={"help": "classifier hidden layers"})
    pool: str = field(default="sum", metadata={"help": "CBOW pooling: sum (thesis) or mean"})
    normalize: bool = field(default=False, metadata={"help": "layer-normalise the sentence encodings"})
    meta_keyword: bool = field(default=False, metadata={"help": "add the meta label as a keyword vector"})
    freeze_embeddings: bool = field(default=True, metadata={"help": "keep the word vectors fixed"})
    reward: str = field(default="correct", metadata={"help": "final reward: correct (+1/-1) or neg_loss"})
    rho: float = field(default=0.0, metadata={"help": "collaboration reward weight in [-1, 1]"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NLIOutput:
    logits: Tensor
    per_sample_loss: Tensor | None
    trajectories: list[Trajectory]


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
                **c.router_kwargs(),
            )
            routed.append(projection)
        self.encoder = CBOWEncoder(
            weight, pad_id, projection, c.freeze_embeddings, c.pool, c.num_meta if c.meta_keyword else 0
        )
        self.build_head(dim, routed, ["wp"] * len(routed))

    def build_head(self, dim: int, routed: list[RoutedLayer], names: list[str] | None = None) -> None:
        """Normalisation, the (optionally routed) classifier on ``[p; h]`` and the reward parts.

        ``routed`` holds the encoder's routed layers (``names`` names them in routing records); a
        routed classifier is appended to it.
        """
        c = self.config
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if c.normalize else nn.Identity()
        routed_cls = None
        if "classifier" in c.route:
            routed_cls = routed_fc_stack(
                [2 * dim] + [c.classifier_hidden] * c.classifier_layers,
                c.classifier_width,
                c.num_meta,
                **c.router_kwargs(seed_offset=1),
            )
            routed.append(routed_cls)
        self.classifier = Classifier(
            2 * dim, c.num_classes, c.classifier_hidden, c.classifier_layers, routed=routed_cls
        )
        names = list(names) if names is not None else [f"encoder{i}" for i in range(len(routed))]
        self.routed_layer_names = names + ["classifier"] * (routed_cls is not None)
        self.routed_layers = routed  # plain list: the modules are registered through their parents
        self.collaboration = nn.ModuleList(CollaborationReward(layer.num_actions, c.rho) for layer in routed)

    def routers(self) -> list[nn.Module]:
        return [layer.router for layer in self.routed_layers]

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for r in self.routers() for p in r.parameters()]

    def block_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.router_parameters()}
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    def set_epoch(self, epoch: int) -> None:
        for r in self.routers():
            r.set_epoch(epoch)

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
        p, h, trajs = self.encoder(premise_ids, premise_mask, hypothesis_ids, hypothesis_mask, meta)
        logits, cls_trajs = self.classifier(torch.cat([self.norm(p), self.norm(h)], -1), meta)
        loss = F.cross_entropy(logits, labels, reduction="none") if labels is not None else None
        return NLIOutput(logits, loss, trajs + cls_trajs)

    def router_loss(self, out: NLIOutput, labels: Tensor) -> Tensor:
        """Assign rewards to every trajectory and return the summed router loss."""
        if not out.trajectories:
            return out.logits.new_zeros(())
        correct = out.logits.detach().argmax(-1) == labels
        reward = final_reward(self.config.reward, correct=correct, per_sample_loss=out.per_sample_loss)
        total = out.logits.new_zeros(())
        for layer, collab, traj in zip(self.routed_layers, self.collaboration, out.trajectories):
            assign_rewards(traj, reward, collab)
            total = total + layer.router.loss(traj)
        return total
