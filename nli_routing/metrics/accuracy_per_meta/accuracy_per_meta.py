"""Accuracy overall and per meta class (genre, signature, dispatch cluster)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy of the predictions overall and within each meta class (the meta-information a
routing network routes on: a MultiNLI genre, an SCI signature, a dispatcher's cluster)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted classes.
    references (list of int): gold classes.
    meta (list of int): meta class of each sample.
    meta_names (list of str, optional): names of the meta classes (by id); default the ids.
Returns:
    accuracy (float): accuracy over all samples.
    accuracy_per_meta (dict): meta class name -> accuracy of its samples (classes with samples only).
    count_per_meta (dict): meta class name -> number of samples.
Examples:
    >>> m = evaluate.load("nli_routing/metrics/accuracy_per_meta")
    >>> m.compute(predictions=[0, 1, 1], references=[0, 1, 0], meta=[0, 0, 1], meta_names=["a", "b"])
    {'accuracy': 0.666..., 'accuracy_per_meta': {'a': 1.0, 'b': 0.0}, 'count_per_meta': {'a': 2, 'b': 1}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyPerMeta(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "meta": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, meta, meta_names=None):
        pred, ref, meta = (np.asarray(x, dtype=np.int64) for x in (predictions, references, meta))
        correct = pred == ref
        per, count = {}, {}
        for m in np.unique(meta):
            name = meta_names[int(m)] if meta_names is not None else str(int(m))
            per[name] = float(correct[meta == m].mean())
            count[name] = int((meta == m).sum())
        return {
            "accuracy": float(correct.mean()) if correct.size else float("nan"),
            "accuracy_per_meta": per,
            "count_per_meta": count,
        }
