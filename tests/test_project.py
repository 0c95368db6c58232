"""The README's commands and CI stay in sync."""

import re

from .conftest import REPO_ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^    (python3 -m venv .*pytest.*)$", readme, flags=re.M)
    assert len(commands) == 1, commands
    assert commands[0] in ci.splitlines()


def test_readme_main_job_runs_the_recipe():
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(r"^    python3 -m venv .*accelerate launch recipes/sci_wp_dispatch.py$", readme, flags=re.M)
    assert (REPO_ROOT / "recipes" / "sci_wp_dispatch.py").exists()
