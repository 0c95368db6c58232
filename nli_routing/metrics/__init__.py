"""Evaluation modules for ``evaluate`` shipped with the project and loaded from their local path.

``evaluate.load("accuracy")`` downloads its script from the Hub; these load offline::

    from nli_routing.metrics import load_metric
    load_metric("accuracy_per_meta").compute(predictions=[0, 1], references=[0, 0], meta=[0, 1],
                                             meta_names=["fiction", "travel"])

or ``evaluate.load(nli_routing.metrics.metric_path("routing_entropy"))``. Modules:
``accuracy_per_meta`` (accuracy overall and per meta class), ``routing_entropy`` (selection
entropy of routing decisions), ``path_overlap`` (shared module selections of the classes'
dominant paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["METRICS_DIR", "METRICS", "metric_path", "load_metric"]

METRICS_DIR = Path(__file__).resolve().parent
METRICS: tuple[str, ...] = ("accuracy_per_meta", "routing_entropy", "path_overlap")


def metric_path(name: str) -> str:
    """Local path of a shipped module (the folder ``evaluate.load`` expects)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; shipped: {list(METRICS)}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load`` of a shipped module by name (no network access needed)."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
