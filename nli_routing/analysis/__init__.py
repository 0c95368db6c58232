"""Analysis of routing decisions: entropy, path overlap, routing maps, policy similarity, plots.

``nli-routing analyze RUN_DIR --by signature|genre|meta|dispatch`` runs them all on a training run
(:func:`~nli_routing.analysis.report.analyze_run`).
"""

from .entropy import dispatch_statistics, selection_entropy
from .overlap import dominant_paths, path_overlap, regroup, routing_map, soft_path_overlap
from .policies import policy_cosine, router_tables, table_policies
from .records import LayerRecord, RoutingRecord, load_routing_record

__all__ = [
    "selection_entropy",
    "dispatch_statistics",
    "dominant_paths",
    "path_overlap",
    "soft_path_overlap",
    "routing_map",
    "regroup",
    "policy_cosine",
    "router_tables",
    "table_policies",
    "LayerRecord",
    "RoutingRecord",
    "load_routing_record",
]
