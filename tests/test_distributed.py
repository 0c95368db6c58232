"""Two CPU processes (gloo) through ``accelerate launch``: routers stay identical on every rank and
evaluation counts every sample exactly once.

``accelerate launch --cpu --num_processes 2`` starts a single process unless MPI is set up
(``--mpirun_hostfile``), so the test launches with ``--multi_gpu`` (``torch.distributed.run``) and
``ACCELERATE_USE_CPU=1``: the worker's ``Accelerator(cpu=True)`` then runs multi-CPU with gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")

CASES = {
    # the SCI recipe's router (tabular Q-learning), WP and classifier routed, collaboration reward on
    "tabular": {"epochs": 2},
    # parameters unused in every step (the subrouters' own RELAX critics) and parameters used only by
    # the router loss, outside the DDP forward (the per-step router's RELAX critic)
    "per-step-relax": {"epochs": 1, "model": {"router": "per-step", "learner": "relax"}},
}


def launch(out: Path, opts: dict) -> subprocess.CompletedProcess:
    free_port = _free_port()
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port),
        str(WORKER), str(out), json.dumps(opts),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_run_keeps_routers_identical_and_counts_eval_samples(tmp_path, case):
    proc = launch(tmp_path, CASES[case])
    assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], "accelerate did not start two processes"
    r0, r1 = ranks

    # every router tensor (tables, approximators, critics, collaboration shares) equal on both ranks
    assert r0["final"].keys() == r1["final"].keys() and r0["final"]
    for name in r0["final"]:
        assert torch.equal(r0["final"][name], r1["final"][name]), f"{name} differs between ranks"
    # ... and so is the rest of the model
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), f"{name} differs between ranks"
    # the routers learned (the tables moved away from their initial values)
    routers = [k for k in r0["final"] if k.startswith("router")]
    assert routers
    assert any(not torch.equal(r0["initial"][k], r0["final"][k]) for k in routers)
    if case == "tabular":
        tables = [k for k in routers if k.endswith("table")]
        assert tables and all(not torch.equal(r0["initial"][k], r0["final"][k]) for k in tables)

    # evaluation: gather_for_metrics keeps every sample exactly once (split sizes are not
    # multiples of 2 processes x eval batch size, so the last batch is padded with duplicates)
    sizes = r0["split_sizes"]
    assert sizes["validation"] % (2 * 12) and sizes["test"] % (2 * 12)
    for r in ranks:
        assert r["eval_n"] == {"validation": sizes["validation"], "test": sizes["test"]}
        assert all(h["validation"] == sizes["validation"] for h in r["history_n"])

    # the run's files (written by the main process) hold the exact sample counts
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {s: m["n"] for s, m in metrics["final"].items()} == r0["eval_n"]
    import numpy as np

    rec = np.load(tmp_path / "run" / "routing_test.npz")
    assert len(rec["preds"]) == len(rec["meta"]) == sizes["test"]
    assert rec["layer0_actions"].shape[0] == sizes["test"]
