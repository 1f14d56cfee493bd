"""Talk mode: tiles, pair view, exports, the command line, and the Streamlit page under AppTest."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import bundle as vbundle
from vos import masks as vmasks
from vos import present
from vos.__main__ import main
from vos.present import Style
from vos.runner import run_methods
from vos.specs import MethodSpec
from vos.synthetic import moving_shapes
from vos.video import open_clip, write_mp4

PRESENTER = Path(present.__file__)
KEYS = ["fake_copy", "fake_unsup", "fake_fail"]


def make_run(folder: Path, source: Path, masks, *, max_side: int | None = None) -> Path:
    clip = open_clip(source).with_max_side(max_side)
    specs = [MethodSpec("fake_copy", options={"shift": 4}), MethodSpec("fake_unsup"), MethodSpec("fake_fail")]
    truth = dict(enumerate(masks))
    run_methods(clip, masks[0], specs, folder, device="cpu", ground_truth=truth, write_video=False)
    return folder


@pytest.fixture
def shapes(tmp_path):
    synthetic = moving_shapes(6, (48, 64), num_objects=2)
    source = write_mp4(synthetic.frames, tmp_path / "in" / "shapes.mp4", fps=6)
    return source, synthetic


@pytest.fixture
def bundle_root(tmp_path, shapes):
    source, synthetic = shapes
    make_run(tmp_path / "runs" / "shapes", source, synthetic.masks)
    return tmp_path / "runs"


def test_tiles_show_each_method_and_where_a_failed_one_stopped(bundle_root):
    bundle = vbundle.open_bundle(bundle_root)
    tiles = present.grid_tiles(bundle, 1, KEYS, Style.OVERLAY)
    assert [t.title for t in tiles] == ["Input", "Fake Copy", "Fake Unsup", "Fake Fail"]
    assert tiles[0].status == "frame 2/6" and tiles[1].ok and "fps" in tiles[1].status
    failed = tiles[3]
    assert not failed.ok and failed.status == "failed after 1/6 frames: RuntimeError: synthetic failure"
    # Frame 0 (before it failed): its mask over the frame. Frame 1 on: no mask, the frame dimmed.
    produced = present.grid_tiles(bundle, 0, KEYS, Style.OVERLAY)[3].image
    assert np.array_equal(produced, vmasks.overlay(bundle.frame(0), bundle.mask("fake_fail", 0)))
    assert bundle.mask("fake_fail", 1) is None and failed.image.max() < bundle.frame(1).max() * 0.5
    # The prompt shows on the input tile of frame 0 only.
    assert not np.array_equal(present.grid_tiles(bundle, 0, [], Style.OVERLAY)[0].image, bundle.frame(0))


def test_the_three_styles_draw_the_same_objects_in_the_app_colours():
    frame = np.full((40, 60, 3), 90, np.uint8)
    labels = np.zeros((40, 60), np.uint8)
    labels[10:30, 10:30], labels[5:15, 40:55] = 1, 2
    mask_only = present.draw(frame, labels, Style.MASK, (40, 60))
    assert np.array_equal(mask_only, vmasks.palette()[labels])
    contour = present.draw(frame, labels, Style.CONTOUR, (40, 60))
    assert tuple(contour[10, 20]) == tuple(vmasks.palette()[1]) and tuple(contour[20, 20]) == (90, 90, 90)
    assert np.array_equal(present.draw(frame, labels, Style.OVERLAY, (40, 60)), vmasks.overlay(frame, labels))
    # A mask at the clip's size goes over a frame at the working size.
    small = present.draw(frame[::2, ::2], labels, Style.MASK, (40, 60))
    assert small.shape == (20, 30, 3) and tuple(small[10, 10]) == tuple(vmasks.palette()[1])


def test_wipe_and_difference_map():
    left, right = np.zeros((10, 100, 3), np.uint8), np.full((10, 100, 3), 200, np.uint8)
    wiped = present.wipe_image(left, right, 0.3)
    assert wiped[0, 10].max() == 0 and wiped[0, 80].min() == 200 and wiped[0, 30].min() == 255
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[0:4, :], b[2:6, :] = 1, 1  # rows 2-3 agree; 0-1 only A; 4-5 only B
    b[8, :] = 2
    a[8, :] = 1  # different objects
    diff = present.difference_map(None, a, b)
    assert diff.agreement == pytest.approx(20 / 70)
    assert (diff.only_a, diff.only_b, diff.different) == (0.2, 0.2, 0.1)
    assert tuple(diff.image[0, 0]) == present.DISAGREE_COLOURS["only A"]
    assert tuple(diff.image[5, 0]) == present.DISAGREE_COLOURS["only B"]
    assert tuple(diff.image[8, 0]) == present.DISAGREE_COLOURS["different objects"]


def test_exports_from_the_command_line(bundle_root, tmp_path, capsys):
    png, mp4 = tmp_path / "slides" / "frame.png", tmp_path / "slides" / "grid.mp4"
    args = ["present", str(bundle_root), "--png", str(png), "--frame", "3", "--mp4", str(mp4)]
    assert main([*args, "--methods", "fake_copy,fake_fail", "--style", "contour only"]) == 0
    grid = np.asarray(Image.open(png).convert("RGB"))
    bundle = vbundle.open_bundle(bundle_root)
    assert np.array_equal(grid, present.grid_image(bundle, 2, ["fake_copy", "fake_fail"], Style.CONTOUR))
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == grid.shape
    # The frame number is burnt in: the third frame of the video is the PNG, not the first.
    errors = [np.abs(f.astype(int) - grid).mean() for f in decoded]
    assert int(np.argmin(errors)) == 2
    assert main(["present", str(bundle_root), "--png", str(png), "--frame", "9"]) == 2
    assert "outside this 6-frame run" in capsys.readouterr().err
    assert main(["present", str(bundle_root), "--png", str(png), "--methods", "tvoss"]) == 2
    assert "tvoss did not run" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["empty folder", "text file", "zip of other things"])
def test_present_command_says_what_is_wrong_without_a_traceback(tmp_path, capsys, what):
    path = tmp_path
    if what == "text file":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    elif what == "zip of other things":
        path = shutil.make_archive(str(tmp_path / "photos"), "zip", root_dir=Path(vmasks.__file__).parent)
    assert main(["present", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "run bundle" in err


# --------------------------------------------------------------------------------------------------------------
# The Streamlit page


def page(root: Path, monkeypatch, bench: str = ""):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(present.RUN_DIR_ENV, str(root))
    monkeypatch.setenv(present.BENCH_ENV, bench)
    app = AppTest.from_file(str(PRESENTER), default_timeout=60).run()
    assert not app.exception, app.exception
    return app


def shown_images(app) -> list[str]:
    """The media URLs of the images on the page: they name the image's bytes, so another image has another URL."""
    return [image.proto.imgs[0].url for image in app.get("image")]


def markdown_text(app) -> str:
    return "\n".join(m.value for m in app.markdown)


def test_page_renders_the_grid_and_the_controls_change_the_frame_shown(bundle_root, monkeypatch):
    app = page(bundle_root, monkeypatch)
    assert app.title[0].value == "shapes"
    assert len(shown_images(app)) == 4  # input + three methods
    text = markdown_text(app)
    assert "Fake Copy" in text and "failed after 1/6 frames: RuntimeError: synthetic failure" in text
    assert "1 / 6" in text
    first = shown_images(app.slider(key="frame").set_value(2).run())  # on frame 1 every tile is the prompt
    app.slider(key="frame").set_value(4).run()
    assert not app.exception
    moved = shown_images(app)
    assert all(a != b for a, b in zip(first, moved)) and "4 / 6" in markdown_text(app)
    app.radio(key="style").set_value("mask only").run()
    masks_only = shown_images(app)
    # The input and the failed method's dimmed frame stay; the two methods with masks change.
    assert masks_only[0] == moved[0] and masks_only[3] == moved[3]
    assert masks_only[1] != moved[1] and masks_only[2] != moved[2]
    # Play advances the shared frame; Pause stops it.
    app.button(key="play").click().run()
    assert app.session_state["playing"] and app.session_state["frame"] == 5
    app.button(key="play").click().run()
    assert not app.session_state["playing"]


def test_page_pair_numbers_and_failure_report(bundle_root, monkeypatch):
    app = page(bundle_root, monkeypatch)
    app.radio(key="view").set_value("Pair").run()
    assert not app.exception and len(shown_images(app)) == 1
    wipe = shown_images(app)
    app.slider(key="wipe").set_value(10).run()
    assert shown_images(app) != wipe
    app.radio(key="pair-mode").set_value("Difference").run()
    assert not app.exception and "agreement (IoU of all objects)" in markdown_text(app)
    app.radio(key="view").set_value("Numbers").run()
    assert not app.exception
    assert "<table" in markdown_text(app) and "failed" in markdown_text(app)
    assert any("failed after 1/6 frames: RuntimeError: synthetic failure" in e.value for e in app.error)


def test_a_moved_and_zipped_bundle_still_shows_frames(bundle_root, shapes, tmp_path, monkeypatch):
    source, _ = shapes
    archive = vbundle.zip_bundle(bundle_root / "shapes", tmp_path / "talk" / "shapes.zip")
    shutil.rmtree(bundle_root)
    source.unlink()
    app = page(archive, monkeypatch)
    assert not app.info  # no "holds no input frames" notice
    images = shown_images(app)
    app.slider(key="frame").set_value(2).run()
    assert shown_images(app)[0] != images[0]  # the input tile is the clip's frame, from the zip


@pytest.mark.slow
def test_several_runs_switch_in_the_sidebar_and_chart_with_the_bench_figures(tmp_path, shapes, monkeypatch):
    source, synthetic = shapes
    make_run(tmp_path / "runs" / "full", source, synthetic.masks)
    make_run(tmp_path / "runs" / "small", source, synthetic.masks, max_side=32)
    stored = sorted((Path(vbundle.__file__).parents[1] / "assets" / "bench").glob("cpu-*.json"))[0]
    app = page(tmp_path / "runs", monkeypatch, bench=str(stored))
    assert app.selectbox(key="run").options == ["shapes — full", "shapes — small"]
    app.selectbox(key="run").set_value("shapes — small").run()
    assert not app.exception and "methods ran at 32x24" in markdown_text(app)
    app.radio(key="view").set_value("Charts").run()
    assert not app.exception
    spec = app.get("plotly_chart")[0].proto.spec
    assert "Peak memory vs resolution" in spec and "runs of up to 6 frames" in spec
    app.radio(key="chart").set_value("Accuracy vs speed").run()
    assert "Accuracy vs speed" in app.get("plotly_chart")[0].proto.spec
    results = present.runs_as_results(vbundle.find_bundles(tmp_path / "runs"))
    assert sorted({p["resolution"] for p in results["points"]}) == [24, 48]
    assert {p["status"] for p in results["points"]} == {"ok", "failed"}
    scored = [p for p in results["points"] if p["scores"]]
    assert scored and all(1 < p["scores"]["J&F"] <= 100 for p in scored)  # percent, as on the papers' axis
    app.radio(key="charts-of").set_value(f"Benchmark: {stored.name}")
    app.radio(key="chart").set_value("Peak memory").run()
    assert not app.exception and "-frame synthetic clips" in app.get("plotly_chart")[0].proto.spec


def test_an_old_bundle_without_frames_or_source_shows_masks_on_black(bundle_root, shapes, monkeypatch):
    import json

    source, _ = shapes
    folder = bundle_root / "shapes"
    data = json.loads((folder / "run.json").read_text())
    del data["frames"]
    (folder / "run.json").write_text(json.dumps(data))
    shutil.rmtree(folder / "frames")
    source.unlink()
    app = page(bundle_root, monkeypatch)
    assert "masks are shown on black" in app.info[0].value
    assert len(shown_images(app)) == 4
