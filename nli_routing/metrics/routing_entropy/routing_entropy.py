"""Selection entropy (bits) of a routed layer's decisions, overall and per meta class."""

import datasets
import evaluate
import torch

from nli_routing.analysis.entropy import selection_entropy

_DESCRIPTION = """Entropy (bits) of the modules a router selected over a data set (thesis section 5.4):
overall (0 = every sample takes the same module at a depth; log2(A) = uniform use) and per meta class
(0 = each class always takes the same path). Wraps nli_routing.analysis.entropy.selection_entropy."""

_KWARGS_DESCRIPTION = """
Args:
    actions (list of list of int): per sample, the module chosen at each depth (-1 after a stop).
    meta (list of int): meta class of each sample.
    num_actions (int): number of actions of the router (blocks, plus a stop action if any).
    active (list of list of bool, optional): whether the sample decided at each depth; default actions >= 0.
    num_meta (int, optional): number of meta classes; default max(meta) + 1.
Returns:
    overall (float), per_meta (float), per_depth (list of float): see selection_entropy.
Examples:
    >>> m = evaluate.load("nli_routing/metrics/routing_entropy")
    >>> m.compute(actions=[[0, 1], [1, 1]], meta=[0, 1], num_actions=2)
    {'overall': 0.5, 'per_meta': 0.0, 'per_depth': [1.0, 0.0]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RoutingEntropy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"actions": datasets.Sequence(datasets.Value("int64")), "meta": datasets.Value("int64")}
            ),
        )

    def _compute(self, actions, meta, num_actions, active=None, num_meta=None):
        acts = torch.as_tensor(actions, dtype=torch.long)
        if acts.ndim != 2:
            raise ValueError(f"actions must have the same depth for every sample, got shape {tuple(acts.shape)}")
        act = acts >= 0 if active is None else torch.as_tensor(active, dtype=torch.bool)
        meta_t = torch.as_tensor(meta, dtype=torch.long)
        n_meta = int(num_meta) if num_meta is not None else int(meta_t.max()) + 1 if meta_t.numel() else 1
        return selection_entropy(acts, meta_t, act, int(num_actions), n_meta)
