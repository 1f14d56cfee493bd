"""Bring-your-own weights from the command line: per-method specs, checks before running, and `run --from`
refusing weights files that changed since the run it repeats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.fakes
from vos import masks as vmasks
from vos.__main__ import main
from vos.methods import Method, MethodInfo
from vos.synthetic import moving_shapes
from vos.video import write_mp4
from vos.weights import sha256_file


def _info(key: str) -> MethodInfo:
    return tests.fakes.fake_info(key, title=key, variants=("default",))


class _LocalWeights(Method):
    """Records its weights file the way ``load_part`` does (path and sha256), without a network to load into."""

    info = _info("fake_byo_a")

    def _build(self) -> None:
        if self.weights != "random":
            path = Path(self.weights)
            record = {"part": "net", "file": "fake", "source": "local", "path": str(path), "converted": False}
            self.weights_records.append({**record, "sha256": sha256_file(path)})

    def _segment(self, clip, first_mask):
        for _frame in clip.frames():
            yield first_mask


class _OtherLocalWeights(_LocalWeights):
    info = _info("fake_byo_b")


@pytest.fixture(autouse=True)
def byo_methods():
    with tests.fakes.registered(_LocalWeights, _OtherLocalWeights):
        yield


@pytest.fixture
def inputs(tmp_path):
    synthetic = moving_shapes(4, (32, 48), num_objects=1)
    clip = write_mp4(synthetic.frames, tmp_path / "inputs" / "clip.mp4", fps=4)
    prompt = vmasks.write_palette_png(synthetic.masks[0], tmp_path / "inputs" / "prompt.png")
    a, b = tmp_path / "inputs" / "a.pth", tmp_path / "inputs" / "b.pth"
    a.write_bytes(b"weights of a")
    b.write_bytes(b"weights of b, longer")
    return clip, prompt, a, b


def listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def run_args(clip, prompt, out, *extra) -> list[str]:
    methods = "fake_byo_a,fake_byo_b"
    return ["run", str(clip), "--prompt", str(prompt), "--methods", methods, "--no-video", *extra, "--out", str(out)]


def test_two_per_method_weights_are_both_kept(tmp_path, inputs):
    clip, prompt, a, b = inputs
    out = tmp_path / "run"
    assert main(run_args(clip, prompt, out, "--weights", f"fake_byo_a={a}", "--weights", f"fake_byo_b={b}")) == 0
    methods = {m["key"]: m for m in json.loads((out / "run.json").read_text())["methods"]}
    assert methods["fake_byo_a"]["config"]["weights"] == str(a)
    assert methods["fake_byo_b"]["config"]["weights"] == str(b)
    assert methods["fake_byo_b"]["config"]["weights_records"][0]["sha256"] == sha256_file(b)


def test_a_default_and_a_per_method_spec_together(tmp_path, inputs):
    clip, prompt, a, _ = inputs
    out = tmp_path / "run"
    assert main(run_args(clip, prompt, out, "--weights", "random", "--weights", f"fake_byo_b={a}")) == 0
    methods = {m["key"]: m for m in json.loads((out / "run.json").read_text())["methods"]}
    assert methods["fake_byo_a"]["config"]["weights"] == "random"
    assert methods["fake_byo_b"]["config"]["weights"] == str(a)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/nonexistent.pth", "--weights /nonexistent.pth: no such file or folder"),
        ("fake_byo_a=/nonexistent.pth", "--weights fake_byo_a=/nonexistent.pth: no such file or folder"),
        ("hf://only-owner", "expected hf://OWNER/REPO"),
        ("fake_byo_c=/nonexistent.pth", "Unknown method 'fake_byo_c'"),
    ],
)
def test_bad_weights_spec_exit_2_before_anything_runs(tmp_path, inputs, capsys, spec, message):
    clip, prompt, _, _ = inputs
    before = listing(tmp_path)
    assert main(run_args(clip, prompt, tmp_path / "run", "--weights", spec)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "weights fetch" not in err and "Traceback" not in err
    assert listing(tmp_path) == before


def test_from_refuses_a_weights_file_that_changed(tmp_path, inputs, capsys):
    clip, prompt, a, b = inputs
    first = tmp_path / "first"
    assert main(run_args(clip, prompt, first, "--weights", f"fake_byo_a={a}", "--weights", f"fake_byo_b={b}")) == 0
    recorded = sha256_file(a)
    a.write_bytes(b"weights of a, retrained since")
    changed = sha256_file(a)
    before = listing(tmp_path)
    assert main(["run", "--from", str(first / "run.json"), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and recorded in err and changed in err and "fake_byo_a" in err, err
    assert listing(tmp_path) == before

    # A new file for that method, given on top of the bundle, is used instead (and b is still checked: unchanged).
    again = tmp_path / "again"
    code = main(["run", "--from", str(first / "run.json"), "--weights", f"fake_byo_a={a}", "--out", str(again)])
    assert code == 0
    methods = {m["key"]: m for m in json.loads((again / "run.json").read_text())["methods"]}
    assert methods["fake_byo_a"]["config"]["weights_records"][0]["sha256"] == changed
    assert methods["fake_byo_b"]["config"]["weights"] == str(b)


def test_from_with_a_default_weights_override(tmp_path, inputs):
    clip, prompt, a, b = inputs
    first = tmp_path / "first"
    assert main(run_args(clip, prompt, first, "--weights", f"fake_byo_a={a}", "--weights", f"fake_byo_b={b}")) == 0
    a.unlink()  # no longer needed: --weights random replaces every method's file
    again = tmp_path / "again"
    assert main(["run", "--from", str(first / "run.json"), "--weights", "random", "--out", str(again)]) == 0
    methods = json.loads((again / "run.json").read_text())["methods"]
    assert [m["config"]["weights"] for m in methods] == ["random", "random"]
    assert all(m["config"]["weights_records"] == [] for m in methods)  # nothing was loaded


def test_from_with_a_recorded_weights_file_gone(tmp_path, inputs, capsys):
    clip, prompt, a, b = inputs
    first = tmp_path / "first"
    assert main(run_args(clip, prompt, first, "--weights", f"fake_byo_a={a}", "--weights", f"fake_byo_b={b}")) == 0
    b.unlink()
    assert main(["run", "--from", str(first / "run.json"), "--out", str(tmp_path / "again")]) == 2
    assert f"fake_byo_b's weights {b}: no such file or folder" in capsys.readouterr().err


def test_relative_weights_paths_are_recorded_absolute(tmp_path, inputs, monkeypatch):
    clip, prompt, a, b = inputs
    monkeypatch.chdir(a.parent)
    first = tmp_path / "first"
    assert main(run_args(clip, prompt, first, "--weights", "fake_byo_a=a.pth", "--weights", "fake_byo_b=b.pth")) == 0
    methods = json.loads((first / "run.json").read_text())["methods"]
    assert [m["config"]["weights"] for m in methods] == [str(a), str(b)]
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--from", str(first / "run.json"), "--out", str(tmp_path / "again")]) == 0
