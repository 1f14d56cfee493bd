from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import masks as vmasks
from vos.__main__ import main
from vos.methods import Method, Option
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


# ---- input checked before anything runs


class _Ranged(Method):
    """A method with bounded options, for range checks from the command line."""

    info = tests.fakes.fake_info(
        "fake_ranged",
        title="Ranged",
        variants=("default",),
        options=(
            Option("window", int, 44, "how far back", minimum=9),
            Option("ratio", float, 0.5, "a share", minimum=0, maximum=1),
        ),
    )

    def _build(self) -> None:
        pass

    def _segment(self, clip, first_mask):
        for _frame in clip.frames():
            yield first_mask


@pytest.fixture
def ranged():
    with tests.fakes.registered(_Ranged):
        yield


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dtype", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU; use --dtype bf16"),
        (["--device", "gpu"], "Unknown device 'gpu'"),
        (["--methods", "fake_ranged", "--opt", "fake_ranged.window=3"], "'window' got '3'; the valid range is 9 or"),
        (["--methods", "fake_ranged", "--opt", "fake_ranged.ratio=2"], "valid range is 0 to 1"),
    ],
)
def test_bad_settings_exit_2_and_nothing_written(tmp_path, clip_and_prompt, capsys, ranged, extra, message):
    clip, prompt, _ = clip_and_prompt
    before = listing(tmp_path)
    args = ["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", *extra, "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert listing(tmp_path) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_exit_2(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    before = listing(tmp_path)
    code = main(["run", str(clip), "--prompt", str(prompt), "--device", "cuda", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "no CUDA GPU is visible here; use --device cpu" in capsys.readouterr().err
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    "flag", [["--max-frames", "0"], ["--max-side", "0"], ["--max-side", "-5"], ["--max-seconds", "0"], ["--fps", "-1"]]
)
def test_non_positive_limits_are_argparse_errors(tmp_path, clip_and_prompt, capsys, flag):
    clip, prompt, _ = clip_and_prompt
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(clip), "--prompt", str(prompt), *flag, "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert f"argument {flag[0]}: must be above 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bench_weights_given_twice_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--weights", "random", "--weights", "hub"])
    assert exit_info.value.code == 2
    assert "--weights may be given once" in capsys.readouterr().err


def test_out_under_a_file_exit_2(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    before = listing(tmp_path)
    code = main(["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--out", str(blocker / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "Traceback" not in err
    assert listing(tmp_path) == before


def test_out_parents_are_created_and_removed_again_on_failure(tmp_path, clip_and_prompt, monkeypatch):
    clip, prompt, _ = clip_and_prompt
    from vos import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_methods", interrupted)
    before = listing(tmp_path)
    out = tmp_path / "new" / "deeper" / "run"
    assert main(["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--out", str(out)]) == 130
    assert listing(tmp_path) == before


# ---- --from


def first_run(tmp_path, clip, prompt, *extra) -> Path:
    out = tmp_path / "first"
    args = ["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--device", "cpu", "--no-video"]
    assert main([*args, *extra, "--out", str(out)]) == 0
    return out / "run.json"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json {", "Cannot read"),
        (json.dumps({"format": 1, "methods": []}), '"clip.source" is missing or malformed'),
        (json.dumps({"format": 1, "clip": {"source": "c.mp4"}, "methods": []}), '"prompt.file"'),
        (
            json.dumps(
                {"format": 1, "clip": {"source": "c.mp4"}, "prompt": {"file": "p.png"}, "settings": {}, "methods": [{}]}
            ),
            '"methods[0]".key/variant',
        ),
        (json.dumps([1, 2]), "is not a run.json written by"),
        (
            json.dumps(
                {
                    "format": 1,
                    "clip": {"source": "c.mp4"},
                    "prompt": {"file": "p.png"},
                    "settings": {"max_frames": "ten"},
                    "methods": [{"key": "fake_copy", "variant": "default"}],
                }
            ),
            '"settings.max_frames"',
        ),
    ],
)
def test_malformed_from_exit_2(tmp_path, capsys, content, message):
    bad = tmp_path / "run.json"
    bad.write_text(content)
    before = listing(tmp_path)
    assert main(["run", "--from", str(bad), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert listing(tmp_path) == before


def test_from_works_from_another_folder(tmp_path, clip_and_prompt, monkeypatch):
    clip, prompt, _ = clip_and_prompt
    monkeypatch.chdir(clip.parent)
    run_json = first_run(tmp_path, clip.name, prompt.name)
    assert json.loads(run_json.read_text())["clip"]["source"] == str(clip)  # absolute, though given relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "--from", str(run_json), "--out", str(tmp_path / "again")]) == 0


def test_from_reuses_the_recorded_device_unless_given(tmp_path, clip_and_prompt):
    clip, prompt, _ = clip_and_prompt
    run_json = first_run(tmp_path, clip, prompt)
    data = json.loads(run_json.read_text())
    assert data["settings"]["device"] == "cpu"
    data["settings"]["device"] = "meta"  # another device that every machine has (the test double runs on it)
    run_json.write_text(json.dumps(data))
    again = tmp_path / "again"
    assert main(["run", "--from", str(run_json), "--out", str(again)]) == 0
    repeated = json.loads((again / "run.json").read_text())
    assert repeated["settings"]["device"] == "meta" and repeated["methods"][0]["device"] == "meta"
    assert main(["run", "--from", str(run_json), "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert json.loads((tmp_path / "cpu" / "run.json").read_text())["settings"]["device"] == "cpu"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_from_a_cuda_run_on_a_machine_without_cuda(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    run_json = first_run(tmp_path, clip, prompt)
    data = json.loads(run_json.read_text())
    data["settings"]["device"] = "cuda"
    run_json.write_text(json.dumps(data))
    assert main(["run", "--from", str(run_json), "--out", str(tmp_path / "again")]) == 2
    assert "records --device cuda" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_from_with_overrides(tmp_path, clip_and_prompt, caplog):
    clip, prompt, _ = clip_and_prompt
    run_json = first_run(tmp_path, clip, prompt, "--opt", "fake_copy.shift=3")
    again = tmp_path / "again"
    args = ["run", "--from", str(run_json), "--opt", "fake_copy.shift=1", "--max-frames", "4", "--out", str(again)]
    with caplog.at_level("INFO", logger="vos"):
        code = main(args)
    assert code == 0
    data = json.loads((again / "run.json").read_text())
    assert data["methods"][0]["config"]["options"]["shift"] == 1
    assert data["clip"]["num_frames"] == 4
    assert "with overrides: --max-frames 4, --opt fake_copy.shift=1" in caplog.text


def test_from_refuses_methods(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    run_json = first_run(tmp_path, clip, prompt)
    code = main(["run", "--from", str(run_json), "--methods", "fake_unsup", "--out", str(tmp_path / "again")])
    assert code == 2
    assert "--methods cannot be combined with --from" in capsys.readouterr().err


def test_from_with_a_missing_clip(tmp_path, clip_and_prompt, capsys):
    clip, prompt, _ = clip_and_prompt
    run_json = first_run(tmp_path, clip, prompt)
    clip.rename(clip.with_name("moved.mp4"))
    assert main(["run", "--from", str(run_json), "--out", str(tmp_path / "again")]) == 2
    assert f"The clip {run_json} records, {clip}, is not there" in capsys.readouterr().err
    assert main(["run", str(clip.with_name("moved.mp4")), "--from", str(run_json), "--out", str(tmp_path / "b")]) == 0


# ---- method listing and bundle permissions


def test_methods_prints_type_and_range(capsys, ranged):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "--opt fake_ranged.window=44 (integer, 9 or more)  how far back" in text
    assert "--opt fake_ranged.ratio=0.5 (number, 0 to 1)" in text
    assert "--opt fake_copy.mode=fast (text, one of fast, exact) [paper: exact]" in text


def test_bundle_files_have_ordinary_permissions(tmp_path, clip_and_prompt):
    clip, prompt, _ = clip_and_prompt
    out = tmp_path / "run"
    umask = os.umask(0o022)
    try:
        assert main(["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--out", str(out)]) == 0
    finally:
        os.umask(umask)
    for path in [out, *out.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    assert (out / "side_by_side.mp4").exists()


def test_ctrl_c_keeps_the_frames_done(tmp_path, clip_and_prompt, capsys):
    """The first Ctrl+C stops after the current frame and still writes the bundle, up to that frame."""
    import signal
    import threading
    import time

    clip, prompt, _ = clip_and_prompt
    out = tmp_path / "run"
    # What the run must put back: Python's default handler, or SIG_IGN when the tests were started as a background
    # job without job control (the shell ignores SIGINT for those, and Python keeps that).
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupt_after_two_frames() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(list(tmp_path.glob(".run.*.partial/masks/.fake_copy.partial/*.png"))) >= 2:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.01)

    threading.Thread(target=interrupt_after_two_frames, daemon=True).start()
    code = main(
        [
            "run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy,fake_unsup", "--device", "cpu",
            "--weights", "random", "--opt", "fake_copy.delay=0.3", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 1
    data = json.loads((out / "run.json").read_text())
    copied, never = data["methods"]
    assert copied["status"] == "cancelled" and 2 <= copied["frames_done"] < 6 and copied["frames_total"] == 6
    pngs = sorted(p.name for p in (out / copied["partial_masks_dir"]).glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(copied["frames_done"])]
    assert never["status"] == "cancelled" and never["masks_dir"] is None and never["partial_masks_dir"] is None
    assert (out / "side_by_side.mp4").stat().st_size > 0
    assert "Stopped (Ctrl+C)" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is handler_before  # put back after the run


@pytest.mark.slow
def test_default_run_on_the_example_writes_masks_offline(tmp_path, monkeypatch, caplog):
    """`python -m vos run EXAMPLE --prompt MASK --out DIR` on a machine with no weights and no network: each method
    runs a variant that can run here (mixture: rgb), at the CPU's default size and length, and writes real masks; a
    method with no weight-free variant says what fetches its weights. (The CPU defaults are shrunk further here so
    that the test takes seconds, not the minute the real defaults are for.)"""
    from vos import runnable

    monkeypatch.setattr(runnable, "CPU_MAX_SIDE", 64)
    monkeypatch.setattr(runnable, "CPU_MAX_FRAMES", 3)
    example = ROOT / "assets" / "examples"
    out = tmp_path / "run"
    code = main(
        ["run", str(example / "shapes.mp4"), "--prompt", str(example / "shapes_00000.png"), "--methods",
         "mixture,tvos", "--out", str(out)]
    )  # fmt: skip
    assert code == 1  # tvos has no weights here
    data = json.loads((out / "run.json").read_text())
    mixture, tvos = data["methods"]
    assert mixture["status"] == "ok" and mixture["variant"] == "rgb"
    assert "default 'xcit' needs weights" in mixture["variant_note"]
    assert data["settings"]["max_side"] == 64 and data["clip"]["num_frames"] == 3
    pngs = sorted((out / "masks" / "mixture").glob("*.png"))
    assert len(pngs) == 3 and vmasks.read_palette_png(pngs[2]).any()
    assert tvos["status"] == "weights_missing" and "weights fetch tvos" in tvos["hint"]
    assert "running variant 'rgb'" in caplog.text and "On the CPU" in caplog.text


def test_missing_weights_hint_names_the_weight_free_variant():
    from vos import runnable

    hint = runnable.missing_weights_hint("mixture", "python -m vos weights fetch mixture:xcit")
    assert hint == "python -m vos weights fetch mixture:xcit (or run without weights: --variant mixture=rgb)"
    assert runnable.missing_weights_hint("tvos", "X") == "X"
