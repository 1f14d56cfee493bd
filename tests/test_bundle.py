"""The run-bundle format: what the runner writes, what readers accept, and that old bundles still open."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import bundle as vbundle
from vos import masks as vmasks
from vos.__main__ import main
from vos.bundle import BundleError, Status
from vos.runner import MethodSpec, run_methods
from vos.synthetic import moving_shapes
from vos.video import open_clip, write_mp4


@pytest.fixture
def made(tmp_path):
    """A bundle of a 5-frame clip read from an MP4: one method finishes, one fails at frame 2 (0-based)."""
    synthetic = moving_shapes(5, (48, 64), num_objects=2)
    source = write_mp4(synthetic.frames, tmp_path / "in" / "shapes.mp4", fps=5)
    clip = open_clip(source).with_max_side(32)
    specs = [MethodSpec("fake_copy", options={"shift": 3}), MethodSpec("fake_fail", options={"at": 2})]
    run_methods(clip, synthetic.masks[0], specs, tmp_path / "runs" / "shapes", device="cpu", write_video=False)
    return tmp_path / "runs" / "shapes", source, synthetic


def test_status_words_are_the_ones_run_json_always_used():
    assert [s.value for s in Status] == [
        "pending", "running", "ok", "failed", "out_of_memory", "weights_missing", "cancelled",
    ]  # fmt: skip
    assert json.dumps({"status": Status.OOM}) == '{"status": "out_of_memory"}'
    assert Status.CANCELLED.label == "stopped" and vbundle.status_label("from_the_future") == "from_the_future"


def test_the_runner_writes_a_self_contained_bundle(made):
    folder, _, synthetic = made
    data = json.loads((folder / "run.json").read_text())
    assert data["frames"] == {"dir": "frames", "name": "{:05d}.jpg", "count": 5, "size": [24, 32]}
    assert sorted(p.name for p in (folder / "frames").iterdir()) == [f"{i:05d}.jpg" for i in range(5)]
    copy, fail = data["methods"]
    assert (copy["status"], copy["masks_dir"], copy["partial_masks_dir"]) == ("ok", "masks/fake_copy", None)
    # What the failed method produced before it stopped is kept, apart from finished methods' masks.
    assert (fail["status"], fail["masks_dir"], fail["partial_masks_dir"]) == ("failed", None, "partial/fake_fail")
    assert sorted(p.name for p in (folder / "partial" / "fake_fail").iterdir()) == ["00000.png", "00001.png"]
    assert not (folder / "masks" / "fake_fail").exists()
    # Every file reference inside the bundle is relative.
    for value in (copy["masks_dir"], fail["partial_masks_dir"], data["prompt"]["file"], data["frames"]["dir"]):
        assert not value.startswith("/")


def test_a_moved_bundle_reads_its_frames_and_masks_without_the_source(made, tmp_path):
    folder, source, synthetic = made
    working = open_clip(source).with_max_side(32)
    expected = [working.frame(i).astype(np.float32) for i in range(5)]
    source.unlink()
    moved = shutil.move(folder, tmp_path / "elsewhere")
    bundle = vbundle.open_bundle(moved)
    frame = bundle.frame(3).astype(np.float32)
    assert frame.shape == (24, 32, 3)
    errors = [np.abs(frame - e).mean() for e in expected]
    assert errors[3] < 4 and int(np.argmin(errors)) == 3  # frame 3, up to JPEG's loss
    assert np.array_equal(bundle.mask("fake_copy", 4), np.roll(synthetic.masks[0], 12, axis=1))
    assert bundle.mask("fake_fail", 1) is not None and bundle.mask("fake_fail", 2) is None
    assert [r.status for r in bundle.records] == [Status.OK, Status.FAILED]


def test_zip_round_trip_and_folders_of_bundles(made, tmp_path):
    folder, _, _ = made
    archive = vbundle.zip_bundle(folder)
    assert archive == folder.with_name("shapes.zip")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert "shapes/run.json" in names and "shapes/frames/00004.jpg" in names
    assert "shapes/partial/fake_fail/00001.png" in names and not any("/." in n for n in names)
    from_zip = vbundle.open_bundle(archive)
    assert from_zip.origin == archive and from_zip.frame(0).shape == (24, 32, 3)
    assert from_zip.mask("fake_copy", 2) is not None
    # A folder with the bundle's folder and its zip beside it: both are found, each named by where it came from.
    assert [b.label for b in vbundle.find_bundles(folder.parent)] == ["shapes", "shapes — shapes.zip"]


def test_a_bundle_written_before_frames_were_saved_still_opens(made):
    folder, source, _ = made
    data = json.loads((folder / "run.json").read_text())
    for record in data["methods"]:  # the version-1 record had neither field
        record.pop("partial_masks_dir")
    del data["frames"]
    (folder / "run.json").write_text(json.dumps(data))
    shutil.rmtree(folder / "frames")
    shutil.rmtree(folder / "partial")
    old = vbundle.open_bundle(folder)
    assert not old.has_frames and old.frame(1).shape == (48, 64, 3)  # from the source, at the masks' size
    assert old.mask("fake_copy", 1) is not None and old.mask("fake_fail", 0) is None
    source.unlink()
    gone = vbundle.open_bundle(folder)
    assert gone.frame(1) is None and not gone.frames_available


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "holds no run bundle"),
        (lambda p: p / "nothing-here", "does not exist"),
        (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "is a file but not a .zip"),
        (lambda p: _zip(p / "empty.zip", {"x/readme.txt": "hi"}), "empty.zip holds no run bundle"),
        (lambda p: _zip(p / "evil.zip", {"../run.json": "{}"}), "escapes its folder"),
        (lambda p: _zip(p / "bad.zip", {"b/run.json": "{not json"}), "not valid JSON"),
        (
            lambda p: _zip(p / "new.zip", {"run.json": '{"format": 99, "clip": {}, "methods": []}'}),
            "a newer vos-compare",
        ),
    ],
)
def test_anything_else_is_refused_with_what_to_give(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(BundleError, match=message) as caught:
        vbundle.find_bundles(path)
    assert "run bundle" in str(caught.value)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return path


def test_run_zip_gives_the_bundle_as_one_file(tmp_path, capsys):
    synthetic = moving_shapes(3, (32, 40))
    clip = write_mp4(synthetic.frames, tmp_path / "clip.mp4", fps=3)
    prompt = vmasks.write_palette_png(synthetic.masks[0], tmp_path / "prompt.png")
    out = tmp_path / "talk" / "run1"
    args = ["run", str(clip), "--prompt", str(prompt), "--methods", "fake_copy", "--device", "cpu", "--no-video"]
    assert main([*args, "--out", str(out), "--zip"]) == 0
    assert str(out.with_name("run1.zip")) in capsys.readouterr().out
    # A zip already there is refused before anything runs.
    shutil.rmtree(out)
    assert main([*args, "--out", str(out), "--zip"]) == 2
    assert "already exists" in capsys.readouterr().err and not out.exists()
    clip.unlink()  # the zip alone plays back
    bundle = vbundle.open_bundle(out.with_name("run1.zip"))
    assert bundle.num_frames == 3 and bundle.frame(2) is not None


def test_the_apps_download_is_a_bundle_that_plays_anywhere(made, tmp_path):
    from pages import results as rs

    folder, source, _ = made
    files = rs.downloads(rs.load_view(folder), tmp_path / "downloads")
    source.unlink()
    bundle = vbundle.open_bundle(files.bundle)
    assert bundle.frame(4) is not None and bundle.mask("fake_fail", 1) is not None
    assert bundle.clip["source"] == "shapes.mp4"  # the server's folders stay on the server
