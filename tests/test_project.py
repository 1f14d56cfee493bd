"""The project's promises about itself: the README's commands, CI's script, the layout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .venv && [^\n]+)\n```", text)


def test_readme_has_the_two_fresh_machine_commands():
    commands = readme_commands()
    assert len(commands) == 2
    app, tests = commands
    assert app.endswith("app.py") and "requirements.txt" in app
    assert "pytest" in tests and "requirements-dev.txt" in tests


def test_ci_runs_exactly_the_readme_test_command():
    test_command = readme_commands()[1]
    script = (ROOT / ".ci" / "run").read_text()
    assert test_command in script.splitlines()
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


@pytest.mark.parametrize(("pytest_exit", "ci_exit"), [(0, 0), (1, 1), (5, 1)])
def test_ci_fails_when_pytest_collects_nothing(tmp_path, pytest_exit, ci_exit):
    """Run .ci/run in a scratch copy where python3, pip and pytest are stand-ins returning a chosen exit code."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    stubs = {
        fake_bin / "python3": "exit 0",  # `python3 -m venv .venv`: keep the stand-in venv
        fake_bin / "chromium": "exit 0",  # pretend it is installed: no apt-get in a test
        bin_dir / "pip": "exit 0",
        bin_dir / "python": f"exit {pytest_exit}",
    }
    for path, body in stubs.items():
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", ".ci/run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == ci_exit, result.stderr
    if pytest_exit == 5:
        assert "no tests" in result.stderr


def test_layout():
    for path in ("requirements.txt", "requirements-dev.txt", "README.md", "app.py", "pages", "vos", "weights",
                 "assets", "tests", ".ci/run", ".gitignore"):  # fmt: skip
        assert (ROOT / path).exists(), path
    ignored = (ROOT / ".gitignore").read_text().split()
    for entry in (".venv/", "runs/", "__pycache__/"):
        assert entry in ignored


def test_readme_is_a_space_card():
    head = (ROOT / "README.md").read_text().split("---")[1]
    for key in ("sdk: gradio", "app_file: app.py"):
        assert key in head


def test_package_imports_without_the_app():
    code = (
        "import vos.runner, vos.methods, sys; assert 'gradio' not in sys.modules, 'the library must not import gradio'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
