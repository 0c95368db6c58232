"""Worker of ``tests/test_distributed.py``: two CPU processes (gloo) under ``accelerate launch``.

Trains a routed WP (+ routed classifier) model for a few steps on the embedded synthetic SCI data
through :func:`nli_routing.training.loop.train`, then every rank writes ``<out>/rank<k>.pt``: its
initial and final router states (every tensor of every router's ``state_dict``, the collaboration
reward shares), every model parameter, the evaluation sample counts and the split sizes.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/distributed_worker.py OUT [JSON]

(``accelerate launch --cpu --num_processes 2`` would start one process: multi-CPU launches go
through MPI there.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def router_tensors(model) -> dict[str, torch.Tensor]:
    """Every tensor (parameters and buffers) of every router and collaboration reward, detached."""
    out = {}
    for i, router in enumerate(model.routers()):
        for k, v in router.state_dict().items():
            if isinstance(v, torch.Tensor):
                out[f"router{i}.{k}"] = v.detach().clone()
    for k, v in model.collaboration.state_dict().items():
        out[f"collaboration.{k}"] = v.detach().clone()
    return out


def main() -> None:
    out = Path(sys.argv[1])
    opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    from nli_routing.models.nli import NLIModelConfig
    from nli_routing.training.distributed import make_accelerator
    from nli_routing.experiments.nli import DataArgs, build_model, make_loaders, prepare_sci
    from nli_routing.training.loop import TrainConfig, train

    handlers = None
    if "find_unused" in opts:  # compare DDP settings by hand
        from accelerate.utils import DistributedDataParallelKwargs

        handlers = [DistributedDataParallelKwargs(find_unused_parameters=opts["find_unused"])]
    accelerator = make_accelerator(cpu=True, kwargs_handlers=handlers)
    prepared = prepare_sci(DataArgs(max_train_samples=opts.get("train", 256), max_length=32))
    dsd = prepared.data
    # evaluation splits whose sizes are not multiples of 2 processes x eval batch size
    dsd["validation"] = dsd["validation"].select(range(opts.get("validation", 101)))
    dsd["test"] = dsd["test"].select(range(opts.get("test", 77)))
    cfg = TrainConfig(epochs=opts.get("epochs", 2), batch_size=16, eval_batch_size=opts.get("eval_batch_size", 12),
                      cpu=True, progress=False, seed=0, block_optimizer="adam", lr=0.002, router_lr_ratio=5.0,
                      select_best=opts.get("select_best", True))
    model_opts = dict(route="wp+classifier", wp_width=3, classifier_width=2, classifier_hidden=16,
                      classifier_layers=1, exploration="high", rho=0.5, router_seed=0)
    model_opts.update(opts.get("model", {}))
    model_cfg = NLIModelConfig(num_meta=len(prepared.meta_names), **model_opts)
    model = build_model(model_cfg, {}, prepared.vectors)
    initial = router_tensors(model)
    train_loader, eval_loaders = make_loaders(dsd, prepared.vectors.pad_id, prepared.meta_column, cfg)
    result = train(model, train_loader, eval_loaders, cfg, out / "run", prepared.meta_names, accelerator)
    rank = accelerator.process_index
    state = {
        "world_size": accelerator.num_processes,
        "initial": initial,
        "final": router_tensors(model),
        "params": {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
        "eval_n": {split: m["n"] for split, m in result["final"].items()},
        "history_n": [{s: r[s]["n"] for s in ("validation", "test") if s in r} for r in result["history"]],
        "split_sizes": {split: len(dsd[split]) for split in ("train", "validation", "test")},
        "generators": [r.generator.get_state() for r in model.routers()],
    }
    torch.save(state, out / f"rank{rank}.pt")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
