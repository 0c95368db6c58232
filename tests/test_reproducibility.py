"""Seeds that mean something: the same command gives the same metrics.json in another process, and a
run killed with SIGKILL after a checkpoint and resumed ends with the metrics of the uninterrupted run.

Both run the main recipe in subprocesses (fresh interpreters: nothing is shared but the files).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = "wp-signature"
COMMAND = [sys.executable, str(ROOT / "recipes" / "sci_wp_dispatch.py"), "--cpu", "--methods", METHOD,
           "--epochs", "2", "--max_train_samples", "400", "--batch_size", "32", "--progress", "False",
           "--seed", "3", "--checkpoint", "True", "--checkpoint_every", "3"]


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])  # this checkout's package
    return e


def run(out: Path, *extra: str) -> Path:
    subprocess.run([*COMMAND, "--output_dir", str(out), *extra], check=True, env=env(), cwd=ROOT,
                   capture_output=True, timeout=600)
    return out / METHOD / "metrics.json"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    return run(tmp_path_factory.mktemp("first")).read_bytes()


def test_same_command_same_seed_same_metrics(reference, tmp_path):
    again = run(tmp_path).read_bytes()
    assert again == reference
    assert b'"seed": 3' in reference


def test_sigkill_after_a_checkpoint_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    ckpts = tmp_path / METHOD / "checkpoints"
    proc = subprocess.Popen([*COMMAND, "--output_dir", str(tmp_path)], env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before a checkpoint could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / METHOD / "metrics.json").exists()  # killed mid-run
    resumed = run(tmp_path, "--resume_from", "latest").read_bytes()
    assert resumed == reference
