"""What every benchmark records next to its numbers: the machine and the commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU model, cores, torch threads and torch version of this process."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def commit() -> str:
    """The short hash of the repository's HEAD ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def merge_worker_results(paths, key, meta_keys=("machine", "commit", "args")) -> tuple[list[dict], list[dict]]:
    """Runs of several workers' result files, without duplicates (by ``key(run)``), and each file's metadata."""
    runs, metas = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs += data["runs"]
        metas.append({k: data.get(k) for k in meta_keys})
    seen, unique = set(), []
    for r in runs:
        k = key(r)
        if k not in seen:
            seen.add(k)
            unique.append(r)
    return unique, metas
