"""Per-epoch monitoring of a training run: collapse warnings in the log and metrics to accelerate trackers.

Trackers are accelerate's (``TrainConfig.log_with``: ``tensorboard``, ``wandb``, ``mlflow``, ...,
``all``, or a ``GeneralTracker``); they are opt-in and receive, once per epoch, the losses and every
numeric metric of each evaluated split, flattened to ``split/name`` keys (routing entropies, collapse
metrics per routed layer, dispatch entropy and collapse).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from accelerate import Accelerator

from ..analysis.collapse import collapse_warnings

logger = logging.getLogger(__name__)

def flat_metrics(record: dict[str, Any], layer_names: list[str]) -> dict[str, float]:
    """``{"train_loss": .., "validation/accuracy": .., "validation/wp/top_path_share": .., ...}``."""
    out: dict[str, float] = {}
    for key in ("train_loss", "router_loss"):
        if key in record:
            out[key] = float(record[key])

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            out[prefix] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                put(f"{prefix}/{k}", v)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            for j, v in enumerate(value):
                put(f"{prefix}/{j}", v)

    for split, metrics in record.items():
        if not isinstance(metrics, dict) or "accuracy" not in metrics:
            continue
        for key, value in metrics.items():
            if key in ("n", "accuracy_per_meta"):
                continue
            name = key
            for i, layer in enumerate(layer_names):  # routing_entropy_0 -> <layer name>/routing_entropy
                for kind in ("routing_entropy", "collapse"):
                    if key == f"{kind}_{i}":
                        name = f"{i}-{layer}/{kind}"
            if key == "dispatch" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "distribution"}
            put(f"{split}/{name}", value)
    return out


def check_collapse(
    record: dict[str, Any], layer_names: list[str], epoch: int, warmup: int, log: bool = True
) -> list[str]:
    """The routers and dispatchers collapsed on the validation split (else the first evaluated
    split) from epoch ``warmup`` on, one line each; logged as warnings when ``log``."""
    if epoch < warmup:
        return []
    splits = [s for s, m in record.items() if isinstance(m, dict) and "accuracy" in m]
    if not splits:
        return []
    split = "validation" if "validation" in splits else splits[0]
    lines = collapse_warnings(record[split], layer_names, split, epoch)
    for line in lines if log else ():
        logger.warning(line)
    return lines


def start_tracking(accelerator: Accelerator, run_name: str, config: dict[str, Any]) -> None:
    """``init_trackers`` with the run's hyper-parameters (scalars only: what trackers accept)."""
    params = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
    accelerator.trackers = []  # one accelerator may train several runs (a recipe's methods): one run each
    accelerator.init_trackers(run_name, config=params)
    if not accelerator.trackers:
        logger.warning("log_with was given but no tracker is available here (e.g. pip install tensorboard)")
