"""The command line under faults: two runs into one --out, a full disk, SIGTERM, an --out that cannot be made, and an
out-of-memory contained to its method (docs/robustness.md lists every case)."""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.fakes
from tests.test_weights import env  # noqa: F401 -- the fixture that registers the method "wtest"
from vos import masks as vmasks
from vos import runner
from vos.__main__ import main
from vos.methods import Method
from vos.synthetic import moving_shapes
from vos.video import Clip, write_mp4

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inputs(tmp_path):
    synthetic = moving_shapes(6, (48, 64), num_objects=2)
    clip = write_mp4(synthetic.frames, tmp_path / "inputs" / "shapes.mp4", fps=6)
    prompt = vmasks.write_palette_png(synthetic.masks[0], tmp_path / "inputs" / "prompt.png")
    return clip, prompt


def run_args(inputs, out: Path, *extra: str) -> list[str]:
    clip, prompt = inputs
    return ["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--device", "cpu", "--out", str(out)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "inputs")


def cli(*args: str, **kwargs) -> subprocess.Popen:
    variables = {**os.environ, "VOS_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "vos", *args]
    return subprocess.Popen(command, cwd=ROOT, env=variables, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------------------
# Two runs, one --out


@pytest.mark.slow
def test_a_second_run_into_the_same_out_is_refused_at_once_and_the_first_keeps_its_results(tmp_path, inputs, capsys):
    out = tmp_path / "run"
    slow = cli(*run_args(inputs, out), "--opt", "fake_copy.delay=3")  # 18 s: this process needs a few to start
    try:
        wait_for(lambda: any(p.name.endswith(".partial") for p in tmp_path.iterdir()))
        assert main(run_args(inputs, out)) == 2  # in this process: it starts while the first one runs
        err = capsys.readouterr().err
        assert f"error: --out {out}: another run is writing into it right now" in err and "Traceback" not in err
        _, err = slow.communicate(timeout=120)
        assert slow.returncode == 0, err
    finally:
        slow.kill()
    assert len(list((out / "masks" / "fake_copy").glob("*.png"))) == 6
    assert leftovers(tmp_path) == ["run"]


def test_a_run_into_an_out_another_run_holds_is_refused_and_touches_nothing(tmp_path, inputs, capsys):
    out = tmp_path / "run"
    with runner._claimed(out, []):  # what the other run holds while it works
        assert main(run_args(inputs, out)) == 2
    err = capsys.readouterr().err
    expected = "another run is writing into it right now; wait for it, or choose another --out."
    assert err == f"error: --out {out}: {expected}\n"
    assert leftovers(tmp_path) == ["run"] and list(out.iterdir()) == []


def test_a_bundle_whose_out_was_filled_meanwhile_is_kept_beside_it_under_a_new_name(tmp_path, inputs, capsys):
    out = tmp_path / "run"
    original = runner._move_into_place

    def filled_meanwhile(work: Path, target: Path) -> Path:
        (target / "someone_else.txt").write_text("x")  # no flock (another platform): the rename must not clobber
        return original(work, target)

    import unittest.mock

    with unittest.mock.patch.object(runner, "_move_into_place", filled_meanwhile):
        assert main(run_args(inputs, out)) == 1
    captured = capsys.readouterr()
    assert f"{out} was taken by another run meanwhile; this run's bundle is {out}-2" in captured.err
    assert (out / "someone_else.txt").exists() and (tmp_path / "run-2" / "run.json").exists()
    assert leftovers(tmp_path) == ["run", "run-2"]


# --------------------------------------------------------------------------------------------------------------
# A full disk


def disk_full(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["masks", "run.json", "video"])
def test_a_full_disk_exits_1_with_one_line_and_leaves_nothing(tmp_path, inputs, capsys, monkeypatch, writer):
    calls = {"n": 0}
    real_png = vmasks.write_palette_png

    def png_then_full(label_map, path):
        calls["n"] += 1
        if calls["n"] > 3:  # the prompt and two masks are written, then the disk is full
            disk_full()
        return real_png(label_map, path)

    if writer == "masks":
        monkeypatch.setattr(vmasks, "write_palette_png", png_then_full)
    elif writer == "run.json":
        monkeypatch.setattr(runner, "write_run_json", disk_full)
    else:
        monkeypatch.setattr(runner, "write_mp4", disk_full)
    out = tmp_path / "run"
    assert main(run_args(inputs, out)) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith(f"error: Disk full at {out} (No space left on device)")
    assert "Traceback" not in err and "bug" not in err
    assert leftovers(tmp_path) == []


def test_a_full_disk_on_a_real_tiny_file_system(tmp_path, inputs, capsys):
    """A 64 KiB tmpfs: the masks fit, the MP4 does not. Needs root (mount); skipped elsewhere."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        synthetic = moving_shapes(24, (240, 320), num_objects=2, seed=3)
        clip = write_mp4(synthetic.frames, tmp_path / "inputs" / "big.mp4", fps=8, crf=10)
        args = ["run", str(clip), "--prompt", str(vmasks.write_palette_png(synthetic.masks[0], tmp_path / "p.png"))]
        assert main([*args, "--methods", "fake_copy", "--device", "cpu", "--out", str(mount / "run")]) == 1
        err = capsys.readouterr().err
        assert f"error: Disk full at {mount / 'run'}" in err
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_in_the_app_is_a_user_error_not_a_method_failure(tmp_path, monkeypatch):
    from pages import results as rs

    clip = Clip.from_frames([np.zeros((16, 16, 3), np.uint8)] * 3)
    prompt = np.zeros((16, 16), np.uint8)
    prompt[4:8, 4:8] = 1
    monkeypatch.setattr(runner, "write_mp4", disk_full)
    request = rs.RunRequest(specs=[runner.MethodSpec("fake_copy")], device="cpu", weights="random")
    with pytest.raises(runner.DiskFull, match="Disk full at"):
        rs.run_comparison(clip, prompt, request, tmp_path / "run")


# --------------------------------------------------------------------------------------------------------------
# SIGTERM and --out that cannot be made


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c_and_leaves_no_partial_folder(tmp_path, inputs):
    out = tmp_path / "deep" / "run"
    process = cli(*run_args(inputs, out), "--opt", "fake_copy.delay=0.5")
    try:
        wait_for(lambda: (tmp_path / "deep").exists() and any((tmp_path / "deep").iterdir()))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143 and b"terminated" in err and b"Traceback" not in err
    assert leftovers(tmp_path) == []


def test_out_under_proc_is_a_one_line_error(tmp_path, inputs, capsys):
    assert main(run_args(inputs, Path("/proc/x"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out /proc/x:") and "choose another --out" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------------------
# Out of memory in one method


class OutOfMemoryAfterAllocating(Method):
    """Holds a large tensor, then raises torch.OutOfMemoryError on frame 1, as a GPU would."""

    info = tests.fakes.fake_info("fake_oom_holds")
    instances: weakref.WeakSet = weakref.WeakSet()

    def _build(self) -> None:
        OutOfMemoryAfterAllocating.instances.add(self)

    def _segment(self, clip, first_mask):
        self.held = torch.ones(16 * 2**20 // 4)  # 16 MiB, referenced from the method and this frame
        yield first_mask
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_an_out_of_memory_stays_in_its_tile_frees_its_memory_and_the_next_run_works(tmp_path):
    clip = Clip.from_frames([np.zeros((16, 16, 3), np.uint8)] * 3)
    prompt = np.zeros((16, 16), np.uint8)
    prompt[4:8, 4:8] = 1
    specs = [runner.MethodSpec("fake_oom_holds"), runner.MethodSpec("fake_copy")]
    with tests.fakes.registered(OutOfMemoryAfterAllocating):
        first = runner.run_methods(clip, prompt, specs, tmp_path / "one", device="cpu", weights="random")
        gc.collect()
        assert len(OutOfMemoryAfterAllocating.instances) == 0  # the method and its tensors are gone
        second = runner.run_methods(clip, prompt, specs[1:], tmp_path / "two", device="cpu", weights="random")
    assert [r.status for r in first.records] == [runner.OOM, runner.OK]
    assert "Ran out of memory" in first.records[0].error and "lower resolution" in first.records[0].hint
    assert not (tmp_path / "one" / "masks" / "fake_oom_holds").exists()
    assert second.records[0].status == runner.OK


# --------------------------------------------------------------------------------------------------------------
# Weights files that are no checkpoints


class RunsCode:
    """Unpickling this would run a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def wtest_args(inputs, out: Path, weights: Path) -> list[str]:
    clip, prompt = inputs
    return ["run", str(clip), "--prompt", str(prompt), "--methods", "wtest", "--weights", f"wtest={weights}",
            "--device", "cpu", "--out", str(out)]  # fmt: skip


@pytest.mark.usefixtures("env")  # tests.test_weights' method "wtest", with one network part "encoder"
def test_a_garbage_checkpoint_is_refused_before_the_run_with_exit_2(tmp_path, inputs, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    out = tmp_path / "run"
    assert main(wtest_args(inputs, out, garbage)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --weights for wtest: {garbage} is not a readable PyTorch checkpoint")
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.usefixtures("env")
def test_safetensors_with_the_wrong_tensors_are_refused_before_the_run_with_exit_2(tmp_path, inputs, capsys):
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3), "head.bias": torch.zeros(7)}, str(wrong))
    out = tmp_path / "run"
    assert main(wtest_args(inputs, out, wrong)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --weights for wtest: ") and "wrong.safetensors" in err
    assert not out.exists() and not list(tmp_path.glob(".run*"))


@pytest.mark.usefixtures("env")
def test_a_checkpoint_that_would_run_code_never_runs_it_and_nothing_is_written(tmp_path, inputs, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": RunsCode(marker)}, evil)
    out = tmp_path / "run"
    assert main(wtest_args(inputs, out, evil)) == 2
    assert not marker.exists() and not out.exists()
    assert "error: --weights for wtest:" in capsys.readouterr().err


def test_a_checkpoint_that_would_run_code_is_named_as_such(tmp_path):
    from vos import weights as vweights

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": RunsCode(tmp_path / "ran")}, evil)
    with pytest.raises(vweights.ConversionError, match=r"posix.system.*never unpickles such objects"):
        vweights.read_checkpoint(evil)
