"""The project's promises about itself: the README's commands, CI's script, the layout."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
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


# --------------------------------------------------------------------------------------------------------------
# The usage examples (README's Python block, the package docstring) run as written


def usage_examples() -> dict[str, str]:
    import vos

    readme = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    docstring = vos.__doc__.split("::\n", 1)[1]
    return {"README.md": readme[0], "vos/__init__.py": textwrap.dedent(docstring)}


@pytest.fixture
def bear(tmp_path, monkeypatch) -> Path:
    """The examples' files in a scratch folder: bear.mp4 (a small synthetic clip) and its first-frame mask."""
    from vos import masks, synthetic, video

    clip = synthetic.moving_shapes(num_frames=3, size=(48, 64), num_objects=1)
    video.write_mp4(clip.frames, tmp_path / "bear.mp4")
    masks.write_palette_png(clip.masks[0], tmp_path / "bear_00000.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("where", ["README.md", "vos/__init__.py"])
def test_usage_example_runs(bear, monkeypatch, where):
    from vos import methods

    code = usage_examples()[where]
    assert 'methods.create("mixture", variant="rgb"' in code and ".segment(" in code
    # The example's code as written, with the method's tiny test settings added: at the release's 240-pixel short
    # side a CPU needs minutes, which says nothing more about whether the example works.
    real_create = methods.create
    tiny = {"size": 40, "num_models": 2, "crf_iters": 2, "max_iters": 5, "device": "cpu"}
    monkeypatch.setattr(methods, "create", lambda key, variant=None, **kw: real_create(key, variant, **{**kw, **tiny}))
    namespace: dict = {}
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 -- our own documentation, run as a user would
    assert namespace["label_map"].shape == (48, 64)
    if where == "README.md":
        assert sorted(p.name for p in (bear / "out").iterdir()) == ["00000.png", "00001.png", "00002.png"]


# --------------------------------------------------------------------------------------------------------------
# The import rules of docs/ARCHITECTURE.md

# (modules the rule applies to, modules they must not import); a name covers its submodules.
FORBIDDEN_IMPORTS = [
    (["vos.weights"], ["vos.methods", "vos.catalog", "vos.runner", "vos.bench", "vos.specs", "pages"]),
    (["vos.methods"], ["vos.runner", "vos.catalog", "vos.bench", "vos.specs", "vos.matching", "vos.present", "pages"]),
    (["vos.backbones", "vos.nn", "vos.nn_utils"], ["vos.methods", "vos.runner", "vos.catalog", "vos.bench", "pages"]),
    (
        ["vos.errors", "vos.text", "vos.video", "vos.masks", "vos.metrics", "vos.device", "vos.synthetic"],
        ["vos.methods", "vos.weights", "vos.runner", "vos.catalog", "vos.bench", "vos.specs", "pages"],
    ),
    (["vos.catalog", "vos.specs", "vos.matching"], ["vos.runner", "vos.bench", "vos.present", "pages"]),
    (["vos.bundle"], ["vos.methods", "vos.runner", "vos.bench", "vos.catalog", "pages"]),
    (["vos"], ["pages", "app", "gradio"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (``from vos import x`` counts as vos.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_import_layers():
    broken = []
    for path in sorted((ROOT / "vos").rglob("*.py")):
        name = module_name(path)
        imports = imported_modules(path)
        for owners, forbidden in FORBIDDEN_IMPORTS:
            if any(within(name, owner) for owner in owners):
                broken += [f"{name} imports {i}" for i in sorted(imports) if any(within(i, f) for f in forbidden)]
    assert not broken, "\n".join(broken)


def test_methods_never_import_each_other():
    methods_dir = ROOT / "vos" / "methods"
    broken = []
    for path in sorted(methods_dir.rglob("*.py")):
        name = module_name(path)
        if name in ("vos.methods", "vos.methods.base", "vos.methods.listing"):
            continue
        own = ".".join(name.split(".")[:3])  # vos.methods.<key>
        for i in sorted(imported_modules(path)):
            if (
                within(i, "vos.methods")
                and i != "vos.methods"
                and not within(i, "vos.methods.base")
                and not within(i, own)
            ):
                broken.append(f"{name} imports {i}")
    assert not broken, "\n".join(broken)
