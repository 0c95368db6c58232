"""Configurations of routing injected into pretrained Transformers and of the NLI model on top."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ...routing import ROUTER_TYPES, RouterConfig
from ...routing.config import check_at_least

INJECT_ROUTES = ("attention", "block", "lora")
NLI_ROUTES = ("none", "classifier") + INJECT_ROUTES
POOLINGS = ("mean", "cls", "last")
ROUTERS = tuple(t for t in ROUTER_TYPES if t != "soft")  # the soft mixture is no router

#: model_type -> {route: regex of the routed module names}; names are matched on a dot boundary at
#: the end of the full module name, so ``encoder.layer.3`` matches ``bert.encoder.layer.3`` too.
DEFAULT_TARGETS: dict[str, dict[str, str]] = {
    "bert": {"block": r"encoder\.layer\.\d+", "attention": r"encoder\.layer\.\d+\.attention",
             # every linear layer of the attention (query, key, value, output) and the feed-forward
             "lora": r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                     r"intermediate\.dense|output\.dense)"},
    "gpt2": {"block": r"h\.\d+", "attention": r"h\.\d+\.attn"},
    "distilbert": {"block": r"transformer\.layer\.\d+", "attention": r"transformer\.layer\.\d+\.attention",
                   "lora": r"transformer\.layer\.\d+\.(attention\.(q_lin|k_lin|v_lin|out_lin)|ffn\.lin1|ffn\.lin2)"},
}
for _alias in ("roberta", "xlm-roberta", "electra", "camembert"):
    DEFAULT_TARGETS[_alias] = DEFAULT_TARGETS["bert"]


@dataclass
class RoutedTransformerConfig(RouterConfig):
    """How :func:`~nli_routing.models.transformer.inject_routing` routes a pretrained Transformer.

    Each target module is replaced by ``num_blocks`` copies of itself; one router with one
    decision step per routed position (depth = number of routed modules) picks a copy per sample.
    """

    route: str = field(
        default="attention",
        metadata={"help": "what is routed: attention sublayers or whole layers (block) get routed copies; lora "
                          "gives every linear layer of the attention and feed-forward b routed low-rank experts; "
                          "classifier routes only the head; none is the plain fine-tuned model",
                  "choices": list(NLI_ROUTES)},
    )
    num_blocks: int = field(default=2, metadata={"help": "copies b of every routed module (route=lora: experts per layer)"})
    noise_std: float = field(
        default=3e-4, metadata={"help": "std of the Gaussian noise added to each copy's weights (variance < 1e-7)"}
    )
    keep_original: bool = field(
        default=True, metadata={"help": "copy 0 keeps the pretrained weights exactly (no noise)"}
    )
    target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "regexes of the routed module names (matched at the end of the full name on a dot "
                          "boundary); default per architecture, e.g. BERT encoder.layer.N[.attention], "
                          "GPT-2 h.N[.attn]"},
    )
    noise_seed: int = field(default=0, metadata={"help": "seed of the copies' noise (and of the low-rank experts' A)"})
    lora_rank: int = field(default=8, metadata={"help": "route=lora: rank r of every low-rank expert"})
    lora_alpha: float = field(default=16.0, metadata={"help": "route=lora: experts' deltas are scaled by alpha / r"})
    lora_train_base: bool = field(
        default=False, metadata={"help": "route=lora: also train the pretrained weights (default: frozen, as LoRA)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.route not in NLI_ROUTES:
            raise ValueError(f"route must be one of {NLI_ROUTES}, got {self.route!r}")
        check_at_least(self, num_blocks=1, lora_rank=1)
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0 (the experts' deltas are scaled by alpha / r), got {self.lora_alpha}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        for pattern in self.target_modules or []:
            re.compile(pattern)  # fail early on a bad regex

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TransformerNLIConfig(RoutedTransformerConfig):
    """:class:`RoutedTransformerConfig` plus the NLI model around the Transformer."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "pretrained encoder (hub id or folder); default: the packaged MiniLM"}
    )
    pooling: str = field(
        default="mean", metadata={"help": "pair encoding: mean of the real tokens, [CLS] (cls) or last real token",
                                  "choices": list(POOLINGS)}
    )
    num_classes: int = field(default=3, metadata={"help": "output classes (entails, contradicts, permits)"})
    classifier_hidden: int = field(default=256, metadata={"help": "classifier hidden size"})
    classifier_layers: int = field(default=1, metadata={"help": "classifier hidden layers"})
    classifier_width: int = field(default=4, metadata={"help": "blocks per routed classifier layer"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the pooled pair encoding"})
    reward: str = field(default="correct", metadata={"help": "final reward: correct (+1/-1) or neg_loss"})
    rho: float = field(default=0.0, metadata={"help": "collaboration reward weight in [-1, 1]"})
    router_balance_share: float = field(
        default=0.5,
        metadata={"help": "capacity balance of the tabular routers (1: off); the routed Transformers' default 0.5 keeps "
                          "the meta classes from all staying on one block (BENCHMARKS.md, issue 29)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, num_classes=2, classifier_hidden=1, classifier_layers=0, classifier_width=1)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.route == "classifier" and self.classifier_layers < 1:
            raise ValueError("a routed classifier needs classifier_layers >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TransformerNLIConfig":
        """Rebuild from :meth:`to_dict` output (unknown keys are an error)."""
        return cls(**values)
