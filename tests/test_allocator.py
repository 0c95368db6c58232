"""``keep_cpu_memory`` (issue 33, opt-in): glibc's malloc no longer hands a training step's buffers back
to the kernel, so the next step does not page-fault them in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nli_routing.training import allocator

STEPS = """
import json, resource, sys, torch
from nli_routing.experiments.bench import StepSetup, mlp_batch, mlp_model, train_cfg
torch.set_num_threads(1)
setup = StepSetup(mlp_model("routing", 128, 8), mlp_batch(512, 8), train_cfg(keep_cpu_memory=sys.argv[1] == "keep"))
for _ in range(5):
    setup.step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    setup.step()
from nli_routing.training.allocator import cpu_memory_kept
print(json.dumps({"kept": cpu_memory_kept(), "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="the process does not run on glibc's malloc")
def test_a_training_step_no_longer_page_faults_its_buffers():
    """The routed MLP of the performance suite with 128 blocks a layer (its gradients alone are 6 MiB),
    the loop's own step: with glibc's defaults every step faults hundreds of pages in again (240-960
    when measured); with ``keep_cpu_memory`` 0-75."""
    default, kept = _faults("default"), _faults("keep")
    assert kept["kept"] is True and default["kept"] is False
    assert default["faults"] >= 100, default
    assert kept["faults"] * 5 < default["faults"], (kept, default)


def test_the_loop_and_the_trainer_apply_it_on_request():
    from transformers import HfArgumentParser

    from nli_routing.training.loop import TrainConfig

    (cfg,) = HfArgumentParser(TrainConfig).parse_args_into_dataclasses(["--keep_cpu_memory"])
    assert cfg.keep_cpu_memory is True and TrainConfig().keep_cpu_memory is False
    assert allocator.keep_freed_cpu_memory() is (allocator._glibc() is not None)
    assert allocator.cpu_memory_kept() is (allocator._glibc() is not None)


def test_no_tuning_under_a_preloaded_allocator(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator._glibc() is None
