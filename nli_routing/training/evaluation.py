"""Evaluation: every prediction and routing choice over a data loader (all processes gathered,
without duplicates), and the metrics computed from them."""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ..analysis.collapse import COLLAPSE_THRESHOLD, dispatch_collapse, path_collapse
from ..analysis.entropy import dispatch_statistics, selection_entropy
from ..analysis.records import LayerRecord, RoutingRecord
from ..models.base import RoutedModel


@torch.no_grad()
def collect_record(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, meta_names: list[str] | None = None
) -> RoutingRecord:
    """Predictions, labels, meta classes and every routing choice over a data loader (all processes)."""
    was_training = model.training
    model.eval()
    preds, labels, metas, dispatch, data_metas = [], [], [], [], []
    routes: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for batch in loader:
        out = model(**batch)
        preds.append(accelerator.gather_for_metrics(out.logits.argmax(-1)))
        labels.append(accelerator.gather_for_metrics(batch["labels"]))
        meta = batch.get("meta", torch.zeros_like(batch["labels"]))
        metas.append(accelerator.gather_for_metrics(meta))
        for i, traj in enumerate(out.trajectories):
            if len(routes) <= i:
                routes.append([])
            routes[i].append(
                (accelerator.gather_for_metrics(traj.actions), accelerator.gather_for_metrics(traj.active))
            )
        if out.dispatch is not None:
            dispatch.append(accelerator.gather_for_metrics(out.dispatch.actions[:, 0]))
        if "data_meta" in batch:
            data_metas.append(accelerator.gather_for_metrics(batch["data_meta"]))
    model.train(was_training)
    meta = torch.cat(metas).cpu() if metas else torch.zeros(0, dtype=torch.long)
    n_meta = max(int(meta.max()) + 1 if meta.numel() else 1, len(meta_names or []))
    names = list(meta_names or [str(i) for i in range(n_meta)])
    unwrapped: RoutedModel = accelerator.unwrap_model(model)
    named = unwrapped.named_routed_layers()
    layers = []
    for i, parts in enumerate(routes):
        name, routed = named[i]
        layers.append(
            LayerRecord(
                name=name,
                num_actions=routed.num_actions,
                actions=torch.cat([a for a, _ in parts]).cpu().numpy(),
                active=torch.cat([b for _, b in parts]).cpu().numpy(),
                stop_action=routed.stop_action,
            )
        )
    dispatcher = unwrapped.dispatcher
    return RoutingRecord(
        meta=meta.numpy(),
        meta_names=names,
        layers=layers,
        dispatch=torch.cat(dispatch).cpu().numpy() if dispatch else None,
        num_dispatch=int(dispatcher.num_dispatch) if dispatch and dispatcher is not None else 0,
        labels=torch.cat(labels).cpu().numpy() if labels else None,
        preds=torch.cat(preds).cpu().numpy() if preds else None,
        meta_column=unwrapped.config.meta_column,
        data_meta=torch.cat(data_metas).cpu().numpy() if data_metas else None,
        data_meta_names=unwrapped.config.data_meta_names if data_metas else None,
        data_meta_column=unwrapped.config.data_meta_column if data_metas else None,
    )


def record_metrics(record: RoutingRecord, collapse_threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
    """Accuracy, accuracy per meta class, selection entropy and collapse metrics per routed layer
    (``routing_entropy_<i>``, ``collapse_<i>``: :func:`~nli_routing.analysis.collapse.path_collapse`)
    and dispatch statistics with the dispatcher's collapse metrics."""
    pred, label, meta = (torch.as_tensor(x) for x in (record.preds, record.labels, record.meta))
    correct = (pred == label).float()
    n_meta = len(record.meta_names)
    per_meta = {}
    for m in range(n_meta):
        sel = meta == m
        if sel.any():
            per_meta[record.meta_names[m]] = float(correct[sel].mean())
    num_classes = int(max(int(pred.max()) if pred.numel() else 0, int(label.max()) if label.numel() else 0)) + 1
    shares = torch.bincount(pred, minlength=num_classes).float() / max(pred.numel(), 1)
    result: dict[str, Any] = {
        "accuracy": float(correct.mean()) if correct.numel() else math.nan,
        "n": int(correct.numel()),
        "accuracy_per_meta": per_meta,
        # what the model predicts (a plateau at the majority class shows as one share near 1)
        "predicted_share": [float(x) for x in shares],
    }
    for i, layer in enumerate(record.layers):
        result[f"routing_entropy_{i}"] = selection_entropy(
            torch.as_tensor(layer.actions), meta, torch.as_tensor(layer.active), layer.num_actions, n_meta
        )
        result[f"collapse_{i}"] = path_collapse(
            torch.as_tensor(layer.actions), torch.as_tensor(layer.active), meta, layer.num_actions, n_meta,
            collapse_threshold,
        )
    if record.dispatch is not None:
        stats = dispatch_statistics(record)
        stats.update(dispatch_collapse(torch.as_tensor(record.dispatch), stats["num_dispatch"], collapse_threshold))
        result["dispatch"] = stats
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    meta_names: list[str] | None = None,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
) -> dict[str, Any]:
    """Accuracy, accuracy per meta class, routing selection entropy and collapse metrics over a data loader."""
    return record_metrics(collect_record(model, loader, accelerator, meta_names), collapse_threshold)
