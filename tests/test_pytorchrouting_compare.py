"""The PytorchRouting comparison (benchmarks/pytorchrouting_compare.py): without a checkout of the reference
code it fails with one line naming the flag; with one (``PYTORCHROUTING_PATH``) a quick run writes its report.

The script runs in subprocesses: it loads the reference package into ``sys.modules`` and sets torch's threads.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "pytorchrouting_compare.py"


def run(*args: str, checkout: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTORCHROUTING_PATH"}
    env["HF_HUB_OFFLINE"] = "1"
    if checkout:
        env["PYTORCHROUTING_PATH"] = checkout
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("checkout", [None, "missing"])
def test_without_a_checkout_it_exits_2_with_one_line_naming_the_flag(tmp_path, checkout):
    proc = run("--quick", "--output", str(tmp_path / "out"), checkout=str(tmp_path / checkout) if checkout else None)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--pytorchrouting" in lines[0], proc.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.skipif(not os.environ.get("PYTORCHROUTING_PATH"), reason="set PYTORCHROUTING_PATH to a checkout of "
                    "github cle-ros/RoutingNetworks to run the comparison")
def test_quick_run_with_a_checkout_writes_both_implementations(tmp_path):
    out = tmp_path / "compare"
    proc = run("--quick", "--output", str(out), "--pytorchrouting_commit", "test-commit",
               checkout=os.environ["PYTORCHROUTING_PATH"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["pytorchrouting"]["commit"] == "test-commit"
    assert Path(saved["pytorchrouting"]["path"]) == Path(os.environ["PYTORCHROUTING_PATH"]).expanduser().resolve()
    assert saved["machine"] and saved["commit"] and saved["args"]["quick"]
    for name in ("ours", "pytorchrouting"):
        assert saved["check"][name]["router_table_change_norm"] > 0 and saved["check"][name]["block_change_norm"] > 0
    [row] = saved["results"]
    assert row["batch"] == 64
    assert set(row["ms_median"]) == {"pytorchrouting", "ours", "ours-unrouted"}
    assert all(v > 0 for v in row["ms_median"].values())
    assert len(row["theirs_over_ours_rounds"]) == 2 and row["theirs_over_ours"] > 0 and row["routed_over_unrouted"] > 0
    assert set(row["gc_modes"]) == {"pytorchrouting", "ours"}
