"""Shared pytest configuration: slow / real-data tests are opt-in with --run-slow."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest-xdist workers (``-n``) share the cores: one worker's torch (and the processes its tests start)
    # gets its share of them instead of every core each (set before any test imports torch)
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run slow and real-data tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow/real-data test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_flush_denormal():
    """Flushing denormals is process-wide state (the training loop and the step-time benchmark
    set it); reset it after every test so later tests (hypothesis' float strategies) see IEEE floats."""
    yield
    import torch

    torch.set_flush_denormal(False)
