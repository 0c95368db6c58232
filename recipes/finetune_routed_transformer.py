"""Fine-tune a pretrained Transformer (default: the packaged MiniLM) on SCI, routed by signature.

    python recipes/finetune_routed_transformer.py --route attention --cpu      # embedded generated data
    python recipes/finetune_routed_transformer.py --route block --num_blocks 3 --data_dir ../shared/data/sci/joint
    python recipes/finetune_routed_transformer.py --route none --max_train_samples 64 --epochs 1   # quick check

``--route``: ``none`` (plain fine-tuning), ``classifier`` (routed classifier head), ``attention``
(b routed copies of every self-attention sublayer) or ``block`` (b routed copies of every layer);
the routers are tabular over the signature by default. Uses the shared training loop; prints a
results table with parameter counts and writes ``results.json`` (plus metrics and a checkpoint)
under ``--output_dir``.
"""

from __future__ import annotations

from typing import Any

from nli_routing.experiments.transformer import finetune


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Flags: ``--output_dir`` and those of ``PairDataArgs``, ``TransformerNLIConfig`` and ``TrainConfig``
    (``--help``); the job itself is :func:`nli_routing.experiments.transformer.finetune`, which the
    benchmarks call too."""
    return finetune(argv)


if __name__ == "__main__":
    main()
