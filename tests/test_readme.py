"""Every command and Python block of the README runs as written (issue 31), so the README cannot drift.

The commands are read from the README itself: indented lines that start a command (``nli-routing``,
``accelerate launch``, ``python``, with an optional ``HF_HUB_OFFLINE=1``) and every fenced
``python`` block. They run in a scratch folder (``recipes/`` and ``benchmarks/`` linked in), in README
order, so ``outputs/`` holds what the main job wrote when ``nli-routing predict`` reads it. Two things
change, each named here: the main job and the performance suite get small flags (``QUICK``), and the
install prefix (``python3 -m venv ... && pip install ...``) is not re-run (``.ci/run`` runs exactly it);
the test command itself (``python -m pytest``) is not run from inside the tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
COMMAND = re.compile(r"^    ((?:HF_HUB_OFFLINE=1 )?(?:nli-routing|accelerate launch|python3? )\S*.*)$", re.M)
INSTALL = re.compile(r"^    python3 -m venv .*?&& (HF_HUB_OFFLINE=1 .*)$", re.M)
#: small flags for the long jobs (the same code paths, a fraction of the data and epochs)
QUICK = {
    "recipes/sci_wp_dispatch.py": ["--max_train_samples", "400", "--epochs", "1"],
    "benchmarks/perf.py": ["--quick", "--output", "perf_quick.json"],
}
NOT_RUN = ("python -m pytest",)


def readme_commands() -> list[str]:
    """The README's shell commands in order (the job after an install prefix)."""
    found = []
    for m in re.finditer(r"^    .*$", README, re.M):
        line = m.group(0)
        install = INSTALL.match(line)
        if install:
            found.append((m.start(), install.group(1)))
        elif COMMAND.match(line) and not line.strip().startswith("python3 -m venv"):
            found.append((m.start(), COMMAND.match(line).group(1)))
    return [c for _, c in sorted(found) if not any(n in c for n in NOT_RUN)]


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_has_its_commands_and_blocks():
    commands = readme_commands()
    assert any(c.startswith("HF_HUB_OFFLINE=1 accelerate launch recipes/sci_wp_dispatch.py") for c in commands)
    assert any("nli-routing predict" in c and '--meta "-|+"' in c for c in commands)
    assert len(readme_python_blocks()) >= 2


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    for name in ("recipes", "benchmarks"):
        (root / name).symlink_to(REPO_ROOT / name)
    rows = [json.loads(line) for line in (REPO_ROOT / "nli_routing/data/sci_synthetic/joint/test.jsonl").read_text()
            .splitlines()[:5]]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    for script, flags in QUICK.items():
        if script in argv:
            argv += flags
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0] in ("nli-routing", "accelerate"):
        argv[0] = str(Path(sys.executable).parent / argv[0])
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_every_readme_command_and_block_runs_as_written(scratch):
    for cmd in readme_commands():
        res = run(cmd, scratch)
        assert res.returncode == 0, f"README command failed: {cmd}\n{res.stderr[-3000:]}"
        if cmd.startswith("HF_HUB_OFFLINE=1 nli-routing predict") and "--meta" in cmd:
            out = json.loads(res.stdout.strip().splitlines()[-1])
            assert out["meta"] == "-|+" and out["meta_source"] == "given", out
    assert (scratch / "outputs/sci_wp_dispatch/wp-signature/config.json").exists()
    for i, block in enumerate(readme_python_blocks()):
        res = subprocess.run([sys.executable, "-c", block], cwd=scratch, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert res.returncode == 0, f"README python block {i} failed:\n{block}\n{res.stderr[-3000:]}"
        assert "'label':" in res.stdout, res.stdout[-2000:]
