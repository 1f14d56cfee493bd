from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import masks as vmasks
from vos.__main__ import main
from vos.synthetic import moving_shapes
from vos.video import write_mp4

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clip_and_prompt(tmp_path):
    synthetic = moving_shapes(6, (48, 64), num_objects=2)
    clip = write_mp4(synthetic.frames, tmp_path / "inputs" / "shapes.mp4", fps=6)
    prompt = vmasks.write_palette_png(synthetic.masks[0], tmp_path / "inputs" / "prompt.png")
    return clip, prompt, synthetic


def listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_run_end_to_end(tmp_path, clip_and_prompt, capsys):
    clip, prompt, synthetic = clip_and_prompt
    out = tmp_path / "run"
    code = main(
        [
            "run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy,fake_unsup", "--device", "cpu",
            "--weights", "random", "--opt", "fake_copy.shift=1", "--max-side", "32", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "run.json").read_text())
    assert [m["key"] for m in data["methods"]] == ["fake_copy", "fake_unsup"]
    assert data["clip"]["size"] == [48, 64] and data["clip"]["work_size"] == [24, 32]
    assert data["methods"][0]["config"]["options"]["shift"] == 1
    assert data["methods"][0]["config"]["weights"] == "random"
    for key in ("fake_copy", "fake_unsup"):
        pngs = sorted((out / "masks" / key).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(6)]
        assert vmasks.read_palette_png(pngs[0]).shape == (48, 64)  # the clip's original size
    assert (out / "side_by_side.mp4").stat().st_size > 0
    assert "Run bundle" in capsys.readouterr().out
    # Nothing but the bundle appeared beside the inputs.
    assert {p.name for p in tmp_path.iterdir()} == {"inputs", "run"}


def test_run_reproduces_from_run_json(tmp_path, clip_and_prompt):
    clip, prompt, _ = clip_and_prompt
    first = tmp_path / "first"
    args = ["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--device", "cpu"]
    assert main([*args, "--opt", "fake_copy.shift=3", "--variant", "fake_copy=other", "--out", str(first)]) == 0
    again = tmp_path / "again"
    assert main(["run", "--from", str(first / "run.json"), "--out", str(again)]) == 0
    a, b = (json.loads((d / "run.json").read_text())["methods"][0]["config"] for d in (first, again))
    assert a["options"] == b["options"] and a["variant"] == b["variant"] == "other"
    for i in range(6):
        name = f"{i:05d}.png"
        assert np.array_equal(
            vmasks.read_palette_png(first / "masks" / "fake_copy" / name),
            vmasks.read_palette_png(again / "masks" / "fake_copy" / name),
        )


def test_failed_method_gives_exit_code_1_and_a_complete_bundle(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    out = tmp_path / "run"
    code = main(["run", str(clip), "--prompt", str(prompt), "--methods", "fake_fail,fake_copy", "--out", str(out)])
    assert code == 1
    statuses = [m["status"] for m in json.loads((out / "run.json").read_text())["methods"]]
    assert statuses == ["failed", "ok"]
    assert "synthetic failure" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clip": "corrupt"}, "not a decodable video"),
        ({"prompt": "wrong_size"}, "40x30"),
        ({"prompt": "unknown_colours"}, "colour"),
        ({"methods": "fake_cpy"}, "Did you mean 'fake_copy'"),
        ({"opt": "fake_copy.nope=1"}, "Valid options: shift, delay, size, mode"),
        ({"opt": "fake_copy.shift=abc"}, "expects an integer"),
        ({"zip": "escaping"}, "escapes"),
        ({"zip": "empty"}, "no .*frames"),
    ],
)
def test_bad_input_exit_2_and_nothing_written(tmp_path, clip_and_prompt, capsys, change, message):
    import zipfile

    from PIL import Image

    clip, prompt, synthetic = clip_and_prompt
    if change.get("clip") == "corrupt":
        clip = tmp_path / "inputs" / "corrupt.mp4"
        clip.write_bytes(b"garbage" * 50)
    if change.get("prompt") == "wrong_size":
        prompt = vmasks.write_palette_png(np.ones((30, 40), np.uint8), tmp_path / "inputs" / "small.png")
    if change.get("prompt") == "unknown_colours":
        rgb = np.zeros((48, 64, 3), np.uint8)
        rgb[5:10, 5:10] = (12, 34, 56)
        prompt = tmp_path / "inputs" / "rgb.png"
        Image.fromarray(rgb).save(prompt)
    if "zip" in change:
        clip = tmp_path / "inputs" / "frames.zip"
        with zipfile.ZipFile(clip, "w") as zf:
            zf.writestr("../evil.png" if change["zip"] == "escaping" else "readme.txt", b"x")
    args = ["run", str(clip), "--prompt", str(prompt), "--methods", change.get("methods", "fake_copy")]
    if "opt" in change:
        args += ["--opt", change["opt"]]
    before = listing(tmp_path)
    code = main([*args, "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err
    assert listing(tmp_path) == before  # nothing written, not even the --out folder


def test_out_must_be_new_or_empty(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_methods_lists_variants_and_options(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "fake_copy" in text and "--opt fake_copy.size=32x48" in text and "[paper: exact]" in text
    assert main(["methods", "fake_copy"]) == 0
    assert "variants: default (default), other" in capsys.readouterr().out


def test_help_lists_every_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "vos", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for command in ("run", "eval", "bench", "weights", "methods", "present"):
        assert command in result.stdout
