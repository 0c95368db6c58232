"""Checkpoints: reading saved files with errors that name the file, and the resumable training state.

Resume (:func:`save_checkpoint`, used by :func:`nli_routing.training.loop.train`): every
``checkpoint_every`` steps and at every epoch end, ``<output_dir>/checkpoints/step_<n>`` receives
``accelerator.save_state`` (models with router tables, critics and running shares, optimizers,
RNGs), the loop's counters and history, the best epoch's model and the data order's RNG states;
written to a hidden folder and renamed when complete.

:func:`~nli_routing.serialization.load_checkpoint` (reading a file with errors that name it) lives in
the package's bottom layer, :mod:`nli_routing.serialization`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

__all__ = ["capture_rng", "latest_checkpoint", "resolve_checkpoint", "restore_rng", "save_checkpoint"]


# ---------------------------------------------------------------------- resumable training state
#: checkpoints live in ``<output_dir>/checkpoints/step_<global step>``
CHECKPOINT_DIR = "checkpoints"
#: the loop's counters, best epoch and history (JSON, written last: its presence marks a complete checkpoint)
LOOP_STATE_FILE = "loop_state.json"
#: the model state of the best epoch so far (``select_best``)
BEST_STATE_FILE = "best_state.pt"
#: per process: RNG states (now and at the start of the epoch) and the epoch's loss accumulators
LOOP_RNG_FILE = "loop_rng_{}.pt"


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator``s a data loader draws its order from (its own, its samplers',
    accelerate's synchronized one, the dataset's), in a fixed order, without duplicates."""
    found: list[torch.Generator] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        for attr in ("generator", "synchronized_generator"):
            g = getattr(obj, attr, None)
            if isinstance(g, torch.Generator) and id(g) not in seen:
                seen.add(id(g))
                found.append(g)
        for attr in ("batch_sampler", "sampler", "dataset"):
            visit(getattr(obj, attr, None), depth + 1)

    visit(loader, 0)
    return found


def capture_rng(loader: Any = None) -> dict[str, Any]:
    """Every RNG state the training loop depends on: Python, NumPy, torch (CPU and CUDA) and the
    generators of ``loader`` (its shuffling order)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {  # tensors and plain values only: a weights-only load reads it back
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "loader": [g.get_state() for g in _loader_generators(loader)] if loader is not None else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], loader: Any = None) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = _loader_generators(loader) if loader is not None else []
    if len(gens) != len(state["loader"]):
        raise ValueError(
            f"the training data loader has {len(gens)} random generators but the checkpoint {len(state['loader'])}: "
            "resume with the same data loader setup"
        )
    for g, g_state in zip(gens, state["loader"]):
        g.set_state(g_state)


def resumed_batches(skipped: Any, loader: Any, epoch_rng: dict, now_rng: dict):
    """Iterate ``skipped`` (``loader`` without the batches already trained on) in the order of the
    interrupted epoch: the order is drawn on the first ``next`` from the RNG states of the epoch's
    start, then the RNGs continue from where the checkpoint left them."""
    it = iter(skipped)
    restore_rng(epoch_rng, loader)
    try:
        first = next(it)
    except StopIteration:
        restore_rng(now_rng, loader)
        return
    restore_rng(now_rng, loader)
    yield first
    yield from it


def num_batches(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint of the highest step in ``root`` (``None`` when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [
        (int(p.name[5:]), p)
        for p in root.glob("step_*")
        if p.name[5:].isdigit() and (p / LOOP_STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def resolve_checkpoint(resume_from: str, root: Path | None) -> Path | None:
    """``resume_from`` as a checkpoint folder: ``"latest"`` (``None`` when there is none yet) or a path."""
    if resume_from == "latest":
        if root is None:
            raise ValueError("resume_from='latest' looks in <output_dir>/checkpoints: give train() an output_dir")
        return latest_checkpoint(root)
    path = Path(resume_from)
    if not (path / LOOP_STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {LOOP_STATE_FILE} in it)")
    return path


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    loop_state: dict[str, Any],
    loop_rng: dict[str, Any],
    best_state: dict | None,
    keep: int,
) -> Path:
    """Write ``root/step_<global_step>`` atomically: everything goes to a hidden temporary folder
    (``accelerator.save_state`` for models, optimizers and RNGs; the loop's state and the best
    epoch's model next to it), which is renamed once complete; then only the last ``keep``
    checkpoints are kept. Every process must call it."""
    name = f"step_{loop_state['global_step']}"
    final, tmp = root / name, root / f".tmp_{name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was killed
    accelerator.wait_for_everyone()
    # every state entry is a tensor (router epochs and generators included): models go to safetensors
    accelerator.save_state(str(tmp), safe_serialization=True)
    torch.save(loop_rng, tmp / LOOP_RNG_FILE.format(accelerator.process_index))
    if accelerator.is_main_process:
        if best_state is not None:
            torch.save(best_state, tmp / BEST_STATE_FILE)
        (tmp / LOOP_STATE_FILE).write_text(json.dumps(loop_state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        complete = sorted(
            (int(p.name[5:]), p) for p in root.glob("step_*") if p.name[5:].isdigit() and p != final
        )
        for _, old in complete[: max(0, len(complete) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
