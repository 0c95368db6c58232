"""NLI on a (routed) pretrained Transformer: pair encoding, pooling, (routed) classifier head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


if TYPE_CHECKING:  # (datasets is imported by the functions that read data: inference does not pay for it)
    from datasets import Dataset, DatasetDict
from ...routing import Router
from ...serialization import CheckpointError, join_state
from ..blocks import routed_fc_stack
from ..classifier import Classifier
from ..embeddings import default_model_path
from ..base import RoutedModel, read_weights, register_model_kind
from ..nli import NLIOutput
from .config import INJECT_ROUTES, TransformerNLIConfig
from .layer import RoutedLoRALinear, RoutedModule, get_controller, inject_routing

#: the folder layout of older versions (routing_config.json, backbone/config.json, model.safetensors,
#: extra_state.json): still read by from_pretrained; a pickled extra_state.pt is refused with a message
LEGACY_CONFIG_FILE = "routing_config.json"
LEGACY_EXTRA_STATE_FILE = "extra_state.json"
LEGACY_PICKLE_FILE = "extra_state.pt"
LEGACY_EXTRA_PREFIX = "__extra__."
LEGACY_BACKBONE_DIR = "backbone"


def pool_hidden(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """``[B, T, D]`` -> ``[B, D]``: ``cls`` (first token), ``mean`` (real tokens) or ``last`` real token."""
    if how == "cls":
        return hidden[:, 0]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "last":  # right padding: the last real token (token 0 for an all-padding row)
        last = (mask.long().sum(1) - 1).clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}")


class RoutedTransformerForNLI(RoutedModel):
    """A pretrained encoder reads ``[CLS] premise [SEP] hypothesis [SEP]``; pooled -> classifier -> 3 classes.

    ``route``: ``"attention"`` / ``"block"`` inject routed copies into the encoder (one
    trajectory per batch over all routed positions), ``"classifier"`` routes the classifier's hidden
    layers (:func:`routed_fc_stack`), ``"none"`` is the plain fine-tuned model. The training-loop
    interface (``router_loss``, ``routers``, ``router_parameters``, ``set_epoch``) is inherited
    from :class:`~nli_routing.models.base.RoutedModel`; the routed layers are the injected routing
    controller (``encoder-attention`` / ``encoder-block``) and/or
    the routed classifier (each with ``router`` and ``num_actions``).
    """


    def __init__(self, config: TransformerNLIConfig | RoutedTransformerNLIConfig,
                 backbone: nn.Module | None = None) -> None:
        """``backbone``: the encoder; by default the pretrained ``model_name_or_path`` (the packaged
        MiniLM), or, for a saved model's config, an untrained encoder of its ``encoder_layout``."""
        from transformers import AutoConfig, AutoModel

        super().__init__(config)
        c = self.config
        if backbone is None:
            if c.encoder_layout is not None:
                values = dict(c.encoder_layout)
                backbone = AutoModel.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
            else:
                backbone = AutoModel.from_pretrained(c.model_name_or_path or default_model_path())
        c.encoder_layout = backbone.config.to_dict()
        self.backbone = backbone
        routed: list[tuple[str, nn.Module]] = []
        if c.route in INJECT_ROUTES:
            inject_routing(backbone, c)
            routed.append((f"encoder-{c.route}", get_controller(backbone)))
        dim = int(backbone.config.hidden_size)
        self.dropout = nn.Dropout(c.dropout)
        routed_cls = None
        if c.route == "classifier":
            routed_cls = routed_fc_stack(
                [dim] + [c.classifier_hidden] * c.classifier_layers, c.classifier_width, c.num_meta,
                **c.router_kwargs(seed_offset=1),
            )
            routed.append(("classifier", routed_cls))
        self.classifier = Classifier(dim, c.num_classes, c.classifier_hidden, c.classifier_layers, routed=routed_cls)
        self.register_routed(routed)

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
        meta: Tensor | None = None,
    ) -> tuple[Tensor, list]:
        """Pooled pair encodings ``[B, D]`` and the encoder's routing trajectories."""
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        trajectories = []
        if self.config.route in INJECT_ROUTES:
            out = self.backbone(**inputs, meta=meta)
            trajectories.append(get_controller(self.backbone).last_trajectory)
        else:
            out = self.backbone(**inputs)
        return pool_hidden(out.last_hidden_state, attention_mask, self.config.pooling), trajectories

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        meta: Tensor | None = None,
        labels: Tensor | None = None,
        **_: Tensor,
    ) -> NLIOutput:
        pooled, trajectories = self.encode(input_ids, attention_mask, token_type_ids, meta)
        logits, cls_trajs = self.classifier(self.dropout(pooled), meta)
        loss = F.cross_entropy(logits, labels, reduction="none") if labels is not None else None
        source = self.meta_source
        return NLIOutput(loss=None if loss is None else loss.mean(), logits=logits, per_sample_loss=loss,
                         trajectories=trajectories + cls_trajs, meta=meta if source == "given" else None,
                         meta_source=source)

    # ------------------------------------------------------------------ persistence (older layout)
    @classmethod
    def _legacy_folder(cls, folder: Path) -> "RoutedTransformerForNLI | None":
        """Read the layout of older versions (``routing_config.json`` + ``backbone/``; JSON and
        safetensors only). ``save_pretrained`` it to get the current layout."""
        from transformers import AutoConfig, AutoModel

        if (folder / "config.json").exists() or not (folder / LEGACY_CONFIG_FILE).exists():
            return None
        if (folder / LEGACY_PICKLE_FILE).exists() and not (folder / LEGACY_EXTRA_STATE_FILE).exists():
            raise CheckpointError(
                f"{folder} was saved by an older nli_routing (pickled {LEGACY_PICKLE_FILE}, which is not loaded "
                "because unpickling can run code): load it with that version and save_pretrained it again"
            )
        settings = TransformerNLIConfig.from_dict(json.loads((folder / LEGACY_CONFIG_FILE).read_text()))
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder / LEGACY_BACKBONE_DIR))
        model = cls(settings, backbone)
        state: dict[str, Any] = read_weights(folder)
        extra = {k: state.pop(k) for k in [k for k in state if k.startswith(LEGACY_EXTRA_PREFIX)]}
        if (folder / LEGACY_EXTRA_STATE_FILE).exists():
            try:
                structure = json.loads((folder / LEGACY_EXTRA_STATE_FILE).read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{folder / LEGACY_EXTRA_STATE_FILE} is truncated or not JSON: {err}") from None
            state.update(join_state(structure, extra))
        model.load_state_dict(state, strict=True)
        model.eval()
        return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``router`` (all routers), ``routed`` (all copies at routed
    positions, or the routed linear layers and their low-rank experts), ``copies`` (what injection
    added: all copies but copy 0, or the low-rank experts), ``base`` (total minus routers and added
    parameters, i.e. the unrouted model) and ``trainable``."""
    router_ids = {id(p) for m in model.modules() if isinstance(m, Router) for p in m.parameters()}
    routed, added = set(), set()
    for m in model.modules():
        if isinstance(m, RoutedModule):
            for i, c in enumerate(m.copies):
                ids = {id(p) for p in c.parameters()}
                routed |= ids
                if i:
                    added |= ids
        elif isinstance(m, RoutedLoRALinear):
            experts = {id(p) for p in m.experts.parameters()}
            routed |= experts | {id(p) for p in m.base.parameters()}
            added |= experts
    params = {id(p): p for p in model.parameters()}

    def size(ids: set) -> int:
        return sum(params[i].numel() for i in ids if i in params)

    total = size(set(params))
    return {
        "total": total,
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "router": size(router_ids),
        "routed": size(routed),
        "copies": size(added),
        "base": total - size(router_ids | added),
    }


# ---------------------------------------------------------------------- data
def encode_pairs(dataset: Dataset | DatasetDict, tokenizer: Any, max_length: int = 128,
                 num_proc: int | None = None) -> Dataset | DatasetDict:
    """Add ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer makes them) of
    ``tokenizer(premise, hypothesis)``, truncated to ``max_length`` tokens, to every split."""
    if max_length < 4:
        raise ValueError(f"max_length must be >= 4, got {max_length}")

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        premise = [t or "" for t in batch["premise"]]
        hypothesis = [t or "" for t in batch["hypothesis"]]
        enc = tokenizer(premise, hypothesis, truncation=True, max_length=max_length)
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {k: enc[k] for k in keys if k in enc}

    return dataset.map(tokenize, batched=True, num_proc=num_proc, desc="tokenizing pairs")


class PairCollator:
    """Right-pad encoded pairs into ``input_ids`` / ``attention_mask`` / ``token_type_ids`` ``[B, T]``
    (long), plus ``labels`` from ``label`` and ``meta`` from ``meta_column`` when present."""

    def __init__(self, pad_id: int, meta_column: str | None = "signature") -> None:
        self.pad_id = int(pad_id)
        self.meta_column = meta_column

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        if not features:
            raise ValueError("PairCollator got an empty batch")
        width = max(max(len(f["input_ids"]) for f in features), 1)
        batch: dict[str, Tensor] = {}
        for key, fill in (("input_ids", self.pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key not in features[0]:
                continue
            rows = [list(f[key]) + [fill] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if "attention_mask" not in batch:
            lengths = torch.tensor([len(f["input_ids"]) for f in features])
            batch["attention_mask"] = (torch.arange(width) < lengths.unsqueeze(1)).long()
        if "label" in features[0]:
            batch["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        if self.meta_column is not None and self.meta_column in features[0]:
            batch["meta"] = torch.tensor([int(f[self.meta_column]) for f in features], dtype=torch.long)
        return batch

    def __repr__(self) -> str:
        return f"PairCollator(pad_id={self.pad_id}, meta_column={self.meta_column!r})"


#: TransformerNLIConfig's fields plus ``encoder_layout`` (the encoder's own config as a dict, so a saved
#: model rebuilds its encoder without downloading it)
RoutedTransformerNLIConfig = register_model_kind(
    "transformer", TransformerNLIConfig, RoutedTransformerForNLI, "nli-routing-transformer", "RoutedTransformerNLIConfig",
    extra_fields={"encoder_layout": None})
