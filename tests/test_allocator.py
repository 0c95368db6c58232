"""``keep_cpu_memory`` (issue 33, opt-in): glibc's malloc no longer hands a training step's buffers back
to the kernel, so the next step does not page-fault them in again."""

from __future__ import annotations

import importlib

import pytest

from nli_routing.training import allocator


@pytest.mark.skipif(allocator._glibc() is None, reason="the process does not run on glibc's malloc")
def test_a_training_step_no_longer_page_faults_its_buffers():
    """The routed MLP of the performance suite with 128 blocks a layer (its gradients alone are 6 MiB),
    the loop's own step, 300 steps after 30 (``benchmarks/keep_cpu_memory.py``): with glibc's defaults every step
    faults hundreds of pages in again (525-696 when measured); with ``keep_cpu_memory`` about 1."""
    bench = importlib.import_module("benchmarks.keep_cpu_memory")  # its one-model process, as benchmarked
    default, kept = (bench.run_one("routing", 128, 512, mode) for mode in ("default", "keep"))
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
