"""The app: it builds offline without a GPU, its prompt session and results logic, its callbacks end to end, and its
API driven by gradio_client against a locally launched server (test-only fake methods keep it fast)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import tests.fakes  # noqa: F401 -- registers the fake_* methods
from pages import prompting as pr
from pages import results as rs
from vos import masks as vmasks
from vos import runner
from vos.bundle import MethodRecord
from vos.specs import MethodSpec, parse_method_specs
from vos.synthetic import moving_shapes
from vos.video import Limits, write_mp4

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "shapes.mp4"


@pytest.fixture(autouse=True)
def _sessions_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(pr.SESSIONS_ENV, str(tmp_path / "sessions"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def tiny_files(folder: Path) -> dict:
    """An 8-frame 128x96 clip with two objects, its masks, and a ground-truth zip (GrabCut needs a few thousand
    pixels: on a 64x48 frame a click finds noise)."""
    synthetic = moving_shapes(8, (96, 128), num_objects=2, seed=1, object_scale=0.22)
    clip = write_mp4(synthetic.frames, folder / "tiny.mp4", fps=8)
    mask = vmasks.write_palette_png(synthetic.masks[0], folder / "tiny_00000.png")
    gt = folder / "tiny_gt.zip"
    with zipfile.ZipFile(gt, "w") as archive:
        for index, label_map in enumerate(synthetic.masks):
            path = vmasks.write_palette_png(label_map, folder / "gt" / f"{index:05d}.png")
            archive.write(path, f"gt/{index:05d}.png")
    return {"clip": clip, "mask": mask, "gt": gt, "masks": synthetic.masks}


def centre_of(label_map: np.ndarray, object_id: int) -> tuple[float, float]:
    ys, xs = np.nonzero(label_map == object_id)
    return float(xs.mean()), float(ys.mean())


# --------------------------------------------------------------------------------------------------------------
# The app builds


def test_app_builds_offline_without_gpu():
    import app

    demo = app.build_app()
    assert [path for path, _, _ in demo.pages] == ["", "benchmark", "methods"]
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"prompt_mask", "compare"} <= public
    gpu = {fn.name: fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "gpu"}
    assert {"run_job", "api_compare"} <= set(gpu) and set(gpu.values()) == {1}  # one GPU job at a time
    kwargs = app.launch_kwargs()
    assert ".vos-tiles" in kwargs["css"] and kwargs["max_file_size"].endswith("mb")


def test_every_registered_method_gets_a_row_a_tile_and_generated_options():
    from pages.compare import ComparePage
    from vos.methods import available

    with gr.Blocks():
        page = ComparePage().build()
    keys = [c.info.key for c in page.methods]
    assert keys == [info.key for info in available()]
    assert len(page.tiles) == len(keys) + 1
    copy = next(c for c in page.methods if c.info.key == "fake_copy")
    widgets = {opt.name: type(component).__name__ for opt, component in copy.options}
    assert widgets == {"shift": "Number", "delay": "Number", "size": "Textbox", "mode": "Dropdown"}


def test_host_and_port_come_from_flags_then_environment(monkeypatch):
    import app

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.delenv("VOS_HOST", raising=False)
    monkeypatch.delenv("VOS_PORT", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "9000")
    monkeypatch.setenv("VOS_HOST", "0.0.0.0")
    args = app.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 9000)
    assert app.parse_args(["--port", "7001", "--host", "localhost"]).port == 7001


def test_methods_page_has_a_card_per_method_with_weights_status():
    from pages import methods
    from vos.methods import available

    page = methods.page_html()
    for info in available():
        assert f'id="method-{info.key}"' in page
        assert info.repo in page and info.paper.url in page
    assert "no weights needed" in page  # the fakes declare no weights


def test_gpu_work_goes_through_spaces_gpu_when_spaces_is_importable(monkeypatch):
    import types

    import pages

    def plain(x):
        return x + 1

    assert pages.gpu_task(plain) is plain  # no `spaces` package here
    seen = {}

    def gpu(duration):
        def wrap(fn):
            seen["duration"] = duration
            return lambda *a, **k: ("on gpu", fn(*a, **k))

        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv(pages.GPU_DURATION_ENV, "300")
    assert pages.gpu_task(plain)(1) == ("on gpu", 2) and seen["duration"] == 300


def test_user_errors_decorator_turns_vos_errors_into_modals_and_keeps_bugs():
    import pages
    from vos.errors import VosError

    @pages.user_errors
    def refuses():
        raise VosError("clip.mp4: <no frames>\ntry another")

    @pages.user_errors
    def streams():
        yield 1
        raise VosError("stopped")

    @pages.user_errors
    def buggy():
        raise KeyError("bug")

    with pytest.raises(gr.Error) as info:
        refuses()
    assert info.value.message == "clip.mp4: &lt;no frames&gt;<br>try another"
    with pytest.raises(gr.Error, match="stopped"):
        list(streams())
    with pytest.raises(KeyError):
        buggy()


# --------------------------------------------------------------------------------------------------------------
# Prompt session


def test_clicks_boxes_and_undo_make_the_label_map(tiny):
    session = pr.start_session(tiny["clip"], Limits())
    assert session.size == (96, 128) and session.num_frames == 8
    truth = tiny["masks"][0]
    x, y = centre_of(truth, 1)
    session = pr.click(session, x, y, pr.INCLUDE)
    labels = pr.label_map(session)
    iou = np.logical_and(labels == 1, truth == 1).sum() / np.logical_or(labels == 1, truth == 1).sum()
    assert iou > 0.8

    session = pr.add_object(session)
    ys, xs = np.nonzero(truth == 2)
    session = pr.click(session, xs.min() - 1, ys.min() - 1, pr.BOX)
    assert session.corner is not None and pr.label_map(session).max() == 1  # half a box marks nothing yet
    session = pr.click(session, xs.max() + 1, ys.max() + 1, pr.BOX)
    labels = pr.label_map(session)
    assert session.corner is None and (labels == 2).sum() > 0.5 * (truth == 2).sum()
    assert "1 box" in pr.object_choices(session)[1][0]

    session = pr.undo(session)
    assert not session.objects[1].marks and set(np.unique(pr.label_map(session))) == {0, 1}
    session = pr.select_object(session, 0)
    session = pr.click(session, 1, 1, pr.EXCLUDE)
    assert pr.object_choices(session)[0][0].endswith("1 include, 1 exclude")


def test_empty_objects_keep_later_ids_and_a_brush_alone_marks_exactly(tiny):
    session = pr.start_session(tiny["clip"], Limits())
    assert len(pr.add_object(session).objects) == 1  # an empty last object is reused, not stacked
    session = pr.click(session, 5, 5, pr.EXCLUDE)  # object 1: only an exclude click, so no mask yet
    session = pr.add_object(session)
    assert len(session.objects) == 2 and session.current == 1
    layer = np.zeros((96, 128, 4), np.uint8)
    layer[10:20, 30:40, 3] = 255
    session = pr.add_brush(session, layer)
    labels = pr.label_map(session)
    assert set(np.unique(labels)) == {0, 2} and (labels == 2).sum() == 100
    session = pr.undo(session)
    assert session.objects[1].brush is None


def test_uploaded_mask_keeps_its_ids_and_clicked_objects_follow(tiny):
    session = pr.set_uploaded_mask(pr.start_session(tiny["clip"], Limits()), tiny["mask"])
    assert session.uploaded_ids == [1, 2]
    assert set(np.unique(pr.label_map(session))) == {0, 1, 2}
    session = pr.click(session, 2, 93, pr.INCLUDE)  # a corner of the background
    labels = pr.label_map(session)
    assert labels[93, 2] == 3 and session.all_ids() == [1, 2, 3]
    entries = pr.legend_entries(session, labels)
    assert [e.label for e in entries] == ["object 1 (uploaded)", "object 2 (uploaded)", "object 3"]
    session = pr.clear(session)
    assert not pr.label_map(session).any() and session.uploaded is None


def test_preview_is_enlarged_and_clicks_map_back(tiny):
    session = pr.start_session(tiny["clip"], Limits())
    image = pr.preview(session)
    assert image.shape == (720, 960, 3)
    assert pr.from_preview(session, 480, 360) == (64.0, 48.0)


def test_upload_limits_downscale_and_truncate_with_notes(tiny):
    session = pr.start_session(tiny["clip"], Limits(max_side=64, max_frames=5))
    assert session.size == (48, 64) and session.num_frames == 5
    assert any("Downscaled" in n for n in session.notes) and any("first 5" in n for n in session.notes)
    assert session.clip().num_frames == 5


def test_old_session_folders_are_pruned(tiny):
    stale = pr.sessions_root() / "stale-session"
    stale.mkdir(parents=True)
    old = time.time() - (pr.SESSION_MAX_AGE_HOURS + 1) * 3600
    os.utime(stale, (old, old))
    session = pr.start_session(tiny["clip"], Limits())
    assert not stale.exists() and session.path.exists()


def test_a_bad_upload_is_a_user_error_and_leaves_no_session_folder(tmp_path):
    from vos.video import VideoError

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoError):
        pr.start_session(bad, Limits())
    assert not any(pr.sessions_root().iterdir())


# --------------------------------------------------------------------------------------------------------------
# Results


def run_fakes(tiny, keys=("fake_copy", "fake_fail", "fake_unsup"), ground_truth=None):
    session = pr.set_uploaded_mask(pr.start_session(tiny["clip"], Limits()), tiny["mask"])
    labels, _ = pr.save_prompt(session)
    request = rs.RunRequest([MethodSpec(k) for k in keys], device="cpu", max_side=None, ground_truth=ground_truth)
    out = rs.new_run_dir(session.path, session.clip_name)
    rs.run_comparison(session.clip(), labels, request, out)
    return session, rs.load_view(out)


def test_the_chosen_precision_is_offered_where_fast_and_runs(tiny):
    import torch

    from pages import compare
    from vos.device import fast_dtypes

    offered = [value for _, value in compare.precision_choices()]
    assert offered[0] == "fp32" and set(fast_dtypes(torch.device("cpu"))) <= set(offered)
    session = pr.set_uploaded_mask(pr.start_session(tiny["clip"], Limits()), tiny["mask"])
    labels, _ = pr.save_prompt(session)
    request = rs.RunRequest([MethodSpec("fake_copy")], device="cpu", dtype="bf16", max_side=None)
    out = rs.new_run_dir(session.path, session.clip_name)
    rs.run_comparison(session.clip(), labels, request, out)
    assert json.loads((out / "run.json").read_text())["settings"]["dtype"] == "bf16"


def test_results_tiles_captions_table_and_downloads(tiny):
    session, view = run_fakes(tiny, ground_truth=str(tiny["gt"]))
    frames = rs.extract_frames(session.clip(), session.path / "frames")
    tiles = rs.tile_images(view, frames, 3)
    assert len(tiles) == 4 and all(t.shape == (96, 128, 3) for t in tiles)
    failed = view.records[1]
    caption = rs.tile_caption(failed)
    assert "Failed" in caption and "synthetic failure" in caption and "What to do" in caption
    unsup = rs.tile_caption(view.records[2])
    assert "object 1" in unsup and "object 2" in unsup and "extra 3" in unsup
    headers, rows = rs.table_rows(view)
    assert headers[-1] == "J&F" and rows[1][3] == "failed" and rows[1][-1] is None
    assert 0.2 < rows[0][-1] < 1  # the objects move: repeating the first mask is partly right
    assert "<table" in rs.table_html(view)

    files = rs.downloads(view, session.path / "downloads")
    assert files.video.name == "side_by_side.mp4"
    assert (files.masks.name, files.bundle.name) == ("tiny_masks.zip", "tiny_run.zip")
    with zipfile.ZipFile(files.masks) as archive:
        members = archive.namelist()
    assert sum(m.endswith(".png") and "/fake_copy/" in m for m in members) == 8
    assert not any("fake_fail" in m for m in members)
    with zipfile.ZipFile(files.bundle) as archive:
        assert any(m.endswith("/run.json") for m in archive.namelist())


def test_running_in_background_yields_progress_and_stops_when_closed(tiny):
    import threading

    session = pr.set_uploaded_mask(pr.start_session(tiny["clip"], Limits()), tiny["mask"])
    labels, _ = pr.save_prompt(session)
    slow = MethodSpec("fake_copy", options={"delay": 0.2})
    request = rs.RunRequest([slow, MethodSpec("fake_unsup")], device="cpu")
    cancel = threading.Event()
    stream = rs.run_in_background(session.clip(), labels, request, session.path / "run", cancel=cancel, interval=0.1)
    first = next(stream)
    assert not first.done and [r.key for r in first.records] == ["fake_copy", "fake_unsup"]
    assert "Fake Copy" in rs.live_html(first.records, 8)
    stream.close()
    assert cancel.is_set()


def test_live_snapshots_carry_each_methods_latest_label_map(tiny):
    """While a run goes on, each method's tile shows its latest frame with its mask, and its line says the frame,
    the elapsed time and the time left."""
    import threading

    session = pr.set_uploaded_mask(pr.start_session(tiny["clip"], Limits()), tiny["mask"])
    labels, _ = pr.save_prompt(session)
    request = rs.RunRequest([MethodSpec("fake_copy", options={"delay": 0.3})], device="cpu")
    stream = rs.run_in_background(
        session.clip(), labels, request, session.path / "run", cancel=threading.Event(), interval=0.1,
        frames_dir=session.path / "frames",
    )  # fmt: skip
    seen, lines = [], 0
    for live in stream:
        if not live.done and live.previews.get("fake_copy"):
            seen.append((live.records[0].frames_done, live.previews["fake_copy"]))
            page = rs.live_html(live.records, live.records[0].frames_total, live.timings, live.previews)
            assert 'src="data:image/jpeg;base64,' in page
            if live.records[0].status == runner.RUNNING and live.records[0].frames_done >= 2:
                assert re.search(r"frame \d+/8 · 0:0\d elapsed · ~0:0\d left", page)
                lines += 1
    assert len({preview for _, preview in seen}) >= 2  # the picture changed as frames arrived
    assert lines > 0
    assert live.done and live.result.records[0].ok


def test_live_line_before_frame_zero_shows_the_stage_and_its_time_left():
    record = MethodRecord("m", "M", "semi", "v", status=runner.RUNNING, frames_total=10, load_s=1.0)
    record.stage = "fitting the mixtures 25/100"
    timing = rs.Timing(started=0.0, stage="fitting the mixtures", stage_started=10.0)
    line = rs.live_detail(record, 10, timing, now=20.0)
    assert line == "fitting the mixtures 25/100 · 0:20 elapsed · ~0:30 left in this stage"


# --------------------------------------------------------------------------------------------------------------
# The callbacks, end to end, without a server


def test_compare_page_callbacks_run_a_comparison(tiny):
    from pages import compare

    with gr.Blocks():
        page = compare.ComparePage().build()
    view = page.on_upload(str(tiny["clip"]))
    session = view[page.session]
    assert view[page.frame].shape == (720, 960, 3) and "tiny" in view[page.clip_info]
    x, y = centre_of(tiny["masks"][0], 1)
    scale = pr.preview_scale(session)
    event = gr.SelectData(page.frame, {"index": [x * scale, y * scale], "value": None})
    view = page.on_click(session, pr.INCLUDE, event)
    session = view[page.session]
    assert "object 1" in view[page.prompt_legend]

    values = {
        page.session: session,
        page.device: "cpu",
        page.resolution: 0,
        page.weights: "random",
        page.ground_truth: None,
    }
    for controls in page.methods:
        values[controls.enabled] = controls.info.key in {"fake_copy", "fake_oom"}
        values[controls.variant] = controls.info.default_variant
        values[controls.weights_text] = "random" if controls.info.key == "fake_oom" else ""
        values[controls.weights_files] = None
        for opt, component in controls.options:
            values[component] = 2 if (controls.info.key, opt.name) == ("fake_copy", "shift") else opt.default
    prepared = page.on_prepare(values)
    request = prepared[page.request]
    assert [s.key for s in request.specs] == ["fake_copy", "fake_oom"]
    assert request.specs[0].options == {"shift": 2} and request.weights == "random" and request.max_side is None
    # A blank checkpoint box leaves the run's choice; a typed one is that method's alone.
    assert request.specs[0].weights is None and request.specs[1].weights == "random"

    *_, (live, run_dir) = compare.run_job(session, request, prepared[page.token])
    assert run_dir and "out of memory" in live
    out = page.on_results(session, run_dir)
    assert out[page.results].visible is True
    by_title = {t.column: out[t.column].visible for t in page.tiles}
    assert sum(by_title.values()) == 3  # input, fake_copy, fake_oom
    oom_tile = next(t for t, c in zip(page.tiles[1:], page.methods) if c.info.key == "fake_oom")
    assert "lower resolution" in out[oom_tile.caption]
    assert "tiny_masks.zip" in str(out[page.download_masks].value)
    assert out[page.download_bundle].label.startswith("⬇ Run bundle (zip) · ")
    images = page.on_frame(session, run_dir, 5)
    assert sum(i is not None for i in images) == 3
    assert np.asarray(Image.open(images[0])).shape[:2] == (96, 128)
    assert page.on_frame(session, run_dir, 5) == images  # composed once, then served as files


def test_run_refuses_an_empty_prompt_and_no_methods(tiny):
    from pages import compare

    with gr.Blocks():
        page = compare.ComparePage().build()
    session = page.on_upload(str(tiny["clip"]))[page.session]
    values = {page.session: session, page.device: "cpu", page.resolution: 854, page.weights: "hub"}
    values[page.ground_truth] = None
    for controls in page.methods:
        values[controls.enabled] = False
        values[controls.variant] = controls.info.default_variant
        values[controls.weights_text], values[controls.weights_files] = "", None
        values.update({c: opt.default for opt, c in controls.options})
    with pytest.raises(gr.Error, match="Mark at least one object"):
        page.on_prepare(values)
    values[page.session] = pr.set_uploaded_mask(session, tiny["mask"])
    with pytest.raises(gr.Error, match="Tick at least one method"):
        page.on_prepare(values)
    with pytest.raises(gr.Error, match="Upload a clip first"):
        page.on_new_object(None)


def test_the_page_opens_on_a_variant_that_can_run_here(monkeypatch):
    from pages import WeightsState, compare
    from vos import runnable as vrunnable
    from vos.methods import get_info

    mixture, tvos = get_info("mixture"), get_info("tvos")
    # The test's Hugging Face home is empty: no checkpoint is here.
    assert compare.initial_variant(mixture) == "rgb"  # runs with no weights at all
    specs, _ = parse_method_specs("mixture,tvos", runnable=True)  # the CLI's and the API's choice
    assert [s.variant for s in specs] == ["rgb", tvos.default_variant]
    assert "mixture=VARIANT" in specs[0].variant_note and "weights fetch mixture:xcit" in specs[0].variant_note
    named, _ = parse_method_specs("mixture", variants=["mixture=xcit"], runnable=True)
    assert named[0].variant == "xcit"  # a variant the user names is kept
    assert compare.initial_variant(tvos) == tvos.default_variant  # nothing runs without weights: keep the default
    # One answer for the page, the CLI and the API: vos.runnable's.
    monkeypatch.setattr(vrunnable, "weights_state", lambda info, variant: WeightsState(needed=True, available=True))
    assert compare.initial_variant(mixture) == mixture.default_variant == "xcit"
    specs, _ = parse_method_specs("mixture", runnable=True)
    assert specs[0].variant == "xcit" and specs[0].variant_note is None


def test_every_method_gets_checkpoint_controls_and_uploads_win(tmp_path, monkeypatch):
    from pages import compare

    with gr.Blocks():
        page = compare.ComparePage().build()
    assert all(c.weights_text is not None and c.weights_files is not None for c in page.methods)
    info = page.methods[0].info
    one, two = tmp_path / "davis_train.pth.tar", tmp_path / "raft-things.pth"
    one.write_bytes(b"a")
    two.write_bytes(b"b")
    assert compare.method_weights(info, "  ", None, tmp_path) is None
    assert compare.method_weights(info, " hf://me/mine ", None, tmp_path) == "hf://me/mine"
    assert compare.method_weights(info, "hf://me/mine", [str(one)], tmp_path) == str(one)
    folder = Path(compare.method_weights(info, "", [str(one), str(two)], tmp_path))
    # Several files keep their names in one folder: that is how a multi-network method tells them apart.
    assert folder.parent == tmp_path / "weights" and sorted(p.name for p in folder.iterdir()) == [one.name, two.name]
    # A typed path is refused unless the app's owner allowed them (tests/test_hostile_app.py); then it is checked
    # as --weights is: a typo fails before the run, naming the method.
    with pytest.raises(gr.Error, match=re.escape(f"Checkpoint hug for {info.title}: the app takes hub, random")):
        compare.user_errors(compare.method_weights)(info, "hug", None, tmp_path)
    monkeypatch.setenv(compare.LOCAL_WEIGHTS_ENV, "1")
    with pytest.raises(gr.Error, match=re.escape(f"Checkpoint hug for {info.title}: no such file or folder")):
        compare.user_errors(compare.method_weights)(info, "hug", None, tmp_path)
    assert compare.method_weights(info, str(one), None, tmp_path) == str(one.absolute())


def test_user_errors_become_gradio_errors(tmp_path):
    from pages import compare

    with gr.Blocks():
        page = compare.ComparePage().build()
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(gr.Error) as info:
        page.on_upload(str(bad))
    assert "broken.zip" in info.value.message


# --------------------------------------------------------------------------------------------------------------
# gradio_client against a launched app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launched_app(folder: Path, plugins: str = "tests.fakes", env: dict[str, str] | None = None) -> Iterator[str]:
    """``python app.py`` in a subprocess on a free port, with the fake methods registered by default (and ``env``
    added to its environment); yields its URL."""
    port = free_port()
    log = folder / "app.log"
    env = {
        **os.environ,
        "VOS_PLUGINS": plugins,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        pr.SESSIONS_ENV: str(folder / "sessions"),
        **(env or {}),
    }
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT, env=env, stdout=stream, stderr=stream
        )
    deadline = time.monotonic() + 180  # a busy 2-core machine takes long to import torch and gradio
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"the app did not listen within 180 s:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    with launched_app(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.mark.slow
def test_gradio_client_runs_a_full_comparison(served_app, tiny, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served_app, verbose=False, download_files=str(tmp_path))
    x, y = centre_of(tiny["masks"][0], 2)
    objects = json.dumps([{"clicks": [[x, y, 1]]}])
    mask_path = client.predict(handle_file(str(tiny["clip"])), objects, api_name="/prompt_mask")
    prompt = vmasks.read_palette_png(mask_path)
    assert prompt.shape == (96, 128) and prompt[round(y), round(x)] == 1

    files, summary = client.predict(
        handle_file(str(tiny["clip"])),
        handle_file(str(tiny["mask"])),
        "fake_copy,fake_unsup,fake_fail",
        "fake_copy=other",
        "fake_copy.shift=1",
        "cpu",
        0,
        "random",
        handle_file(str(tiny["gt"])),
        api_name="/compare",
    )
    statuses = {m["key"]: m["status"] for m in summary["methods"]}
    assert statuses == {"fake_copy": runner.OK, "fake_unsup": runner.OK, "fake_fail": runner.FAILED}
    copy = next(m for m in summary["methods"] if m["key"] == "fake_copy")
    assert copy["variant"] == "other" and copy["config"]["options"]["shift"] == 1 and copy["scores"]["J&F"] < 1
    names = [Path(f).name for f in files]
    assert names[0] == "side_by_side.mp4" and names[1].endswith("_masks.zip") and names[2].endswith("_run.zip")
    assert all(Path(f).stat().st_size > 0 for f in files)


def test_every_methods_option_widgets_start_at_values_a_run_accepts():
    """The widgets' initial values, sent back untouched, must parse to no overrides for every registered method
    (ba's size, an option without a default, once came back as the word None and stopped every run with ba)."""
    import gradio as gr

    from pages import compare
    from vos.methods import base as mbase

    for key in mbase.list_keys():
        info = mbase.method_class(key).info
        values = {}
        with gr.Blocks():
            for opt in info.options:
                values[opt.name] = compare.option_component(info, opt).value
        assert compare.option_overrides(info, values) == {}, key
