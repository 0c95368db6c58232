"""Path overlap between meta classes: module selections shared by their dominant paths."""

import datasets
import evaluate
import numpy as np

from nli_routing.analysis.overlap import path_overlap
from nli_routing.analysis.records import LayerRecord, RoutingRecord

_DESCRIPTION = """For each pair of meta classes, the number of module selections their dominant (most
frequent) paths share (thesis Figures 5.12/5.13); the diagonal is each dominant path's length.
Classes are ordered by hierarchical clustering. Wraps nli_routing.analysis.overlap.path_overlap; to
compare paths through several routed layers, concatenate each sample's actions of all layers."""

_KWARGS_DESCRIPTION = """
Args:
    actions (list of list of int): per sample, the module chosen at each depth (-1 = stopped).
    meta (list of int): meta class of each sample.
    meta_names (list of str, optional): names of the meta classes (by id); default the ids.
    match (str, optional): "depth" (same module at the same depth, default) or "module" (shared modules
        at any depth).
    stop_action (int, optional): an action that means "stop" (not a module selection).
Returns:
    classes (list of str): the classes with samples, in clustered order.
    overlap (list of list of int): shared selections, rows and columns in that order.
    dominant_paths (dict): class -> its dominant path (list of int).
    share (dict): class -> fraction of its samples on the dominant path.
Examples:
    >>> m = evaluate.load("nli_routing/metrics/path_overlap")
    >>> m.compute(actions=[[0, 1], [0, 2]], meta=[0, 1], meta_names=["a", "b"])["overlap"]
    [[2, 1], [1, 2]]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PathOverlap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"actions": datasets.Sequence(datasets.Value("int64")), "meta": datasets.Value("int64")}
            ),
        )

    def _compute(self, actions, meta, meta_names=None, match="depth", stop_action=None):
        acts = np.asarray(actions, dtype=np.int64)
        if acts.ndim != 2:
            raise ValueError(f"actions must have the same depth for every sample, got shape {acts.shape}")
        meta = np.asarray(meta, dtype=np.int64)
        names = list(meta_names) if meta_names is not None else [str(i) for i in range(int(meta.max()) + 1)]
        num_actions = int(acts.max()) + 1 if acts.size else 1
        layer = LayerRecord("path", num_actions, acts, acts >= 0, stop_action)
        ov = path_overlap(RoutingRecord(meta=meta, meta_names=names, layers=[layer]), match=match)
        order = ov["order"]
        classes = [ov["classes"][i] for i in order]
        return {
            "classes": classes,
            "overlap": ov["overlap"][np.ix_(order, order)].tolist(),
            "dominant_paths": {ov["classes"][i]: ov["paths"][i].tolist() for i in order},
            "share": {ov["classes"][i]: float(ov["share"][i]) for i in order},
        }
