from __future__ import annotations

import json
import re
import threading
import time

import av
import numpy as np
import pytest

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import masks as vmasks
from vos import runner
from vos.device import DtypeUnavailable
from vos.matching import SegmentMatcher
from vos.methods import Method, Option, OptionError, UnknownMethod
from vos.runner import RunEvents, run_methods
from vos.specs import MethodSpec, parse_method_specs
from vos.synthetic import moving_shapes
from vos.video import Clip
from vos.weights import BadWeightsSpec, WeightsUnavailable


@pytest.fixture
def shapes():
    synthetic = moving_shapes(5, (40, 56), num_objects=2)
    return Clip.from_frames(synthetic.frames, fps=5, name="shapes"), synthetic.masks


def test_isolation_one_failure_does_not_stop_the_others(tmp_path, shapes):
    clip, masks = shapes
    specs = [MethodSpec("fake_fail"), MethodSpec("fake_copy"), MethodSpec("fake_oom"), MethodSpec("fake_alloc")]
    result = run_methods(clip, masks[0], specs, tmp_path / "run", device="cpu", weights="random")
    by_key = {r.key: r for r in result.records}
    assert by_key["fake_fail"].status == runner.FAILED
    assert "synthetic failure" in by_key["fake_fail"].error
    assert by_key["fake_oom"].status == runner.OOM
    assert "lower resolution" in by_key["fake_oom"].hint
    assert by_key["fake_copy"].status == runner.OK
    assert by_key["fake_alloc"].status == runner.OK
    for key in ("fake_copy", "fake_alloc"):
        record = by_key[key]
        assert record.frames_done == 5 and record.fps > 0 and record.load_s >= 0 and record.first_frame_s >= 0
        assert record.memory_kind == "cpu_rss" and record.peak_memory_mib > 0
        assert len(list((tmp_path / "run" / "masks" / key).glob("*.png"))) == 5
    # The allocating method's peak shows its 200 MiB block above what the process held before it.
    assert by_key["fake_alloc"].peak_memory_mib > 150
    # Failed methods leave no masks folder that looks complete.
    assert not (tmp_path / "run" / "masks" / "fake_fail").exists()
    assert not list((tmp_path / "run" / "masks").glob(".*partial"))
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [m["status"] for m in saved["methods"]] == ["failed", "ok", "out_of_memory", "ok"]
    assert saved["side_by_side"] == "side_by_side.mp4"
    with av.open(str(tmp_path / "run" / "side_by_side.mp4")) as container:
        assert len(list(container.decode(video=0))) == 5


def test_masks_written_at_clip_size_with_original_ids(tmp_path):
    synthetic = moving_shapes(3, (64, 96), num_objects=2)
    clip = Clip.from_frames(synthetic.frames).with_max_side(48)
    prompt = synthetic.masks[0].copy()
    prompt[prompt == 2] = 7  # non-contiguous ids survive
    result = run_methods(clip, prompt, [MethodSpec("fake_copy")], tmp_path, device="cpu", write_video=False)
    mask = result.read_mask("fake_copy", 2)
    assert mask.shape == (64, 96)
    assert set(np.unique(mask)) == {0, 1, 7}
    assert result.object_ids == [1, 7]


def test_provenance_records_effective_options(tmp_path, shapes):
    clip, masks = shapes
    specs, default_weights = parse_method_specs(
        "fake_copy", variants=["fake_copy=other"], options=["fake_copy.shift=2", "fake_copy.size=10x20"]
    )
    result = run_methods(clip, masks[0], specs, tmp_path, device="cpu", weights=default_weights, write_video=False)
    config = result.records[0].config
    assert config["variant"] == "other"
    assert config["options"] == {"shift": 2, "delay": 0.0, "size": [10, 20], "mode": "fast"}
    assert config["weights"] == "hub"
    shifted = result.read_mask("fake_copy", 1)
    assert np.array_equal(shifted, np.roll(masks[0], 2, axis=1))


def test_parse_method_specs_errors(tmp_path):
    with pytest.raises(UnknownMethod, match="fake_copy"):
        parse_method_specs("fake_cop")
    with pytest.raises(OptionError, match="Valid options"):
        parse_method_specs("fake_copy", options=["fake_copy.nope=1"])
    with pytest.raises(OptionError, match="not among the methods to run"):
        parse_method_specs("fake_copy", options=["fake_fail.at=2"])
    with pytest.raises(OptionError, match="KEY.NAME=VALUE"):
        parse_method_specs("fake_copy", options=["fake_copy.shift"])
    checkpoint = tmp_path / "x.pth"
    checkpoint.write_bytes(b"weights")
    specs, weights = parse_method_specs("fake_copy,fake_fail", weights=["random", f"fake_fail={checkpoint}"])
    assert weights == "random"
    assert [s.weights for s in specs] == [None, str(checkpoint)]


def test_weights_specs_checked_before_anything_runs(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    specs, default = parse_method_specs("fake_copy,fake_fail", weights=[f"fake_copy={a}", f"fake_fail={b}"])
    assert default == "hub" and [s.weights for s in specs] == [str(a), str(b)]
    assert parse_method_specs("fake_copy", weights=[str(tmp_path)])[1] == str(tmp_path)  # a folder of files
    for spec, message in [
        (str(tmp_path / "missing.pth"), "missing.pth: no such file or folder"),
        (f"fake_copy={tmp_path / 'missing.pth'}", "--weights fake_copy=.*missing.pth: no such file"),
        ("hf://", "expected hf://OWNER/REPO"),
        ("hf://owner", "expected hf://OWNER/REPO"),
        ("hf://own er/repo", "alphanumeric"),
        ("hug", "hug: no such file or folder .*hub, random"),
    ]:
        with pytest.raises(BadWeightsSpec, match=message):
            parse_method_specs("fake_copy", weights=[spec])
    with pytest.raises(OptionError, match="two specs for every method"):
        parse_method_specs("fake_copy", weights=["random", "hub"])
    with pytest.raises(OptionError, match="fake_copy=... twice"):
        parse_method_specs("fake_copy", weights=[f"fake_copy={a}", f"fake_copy={b}"])
    with pytest.raises(OptionError, match="Did you mean 'fake_copy'"):
        parse_method_specs("fake_copy", weights=[f"fake_cpy={a}"])
    assert parse_method_specs("fake_copy", weights=["hf://owner/repo"])[1] == "hf://owner/repo"


def _unavailable(*, fetchable: bool) -> WeightsUnavailable:
    return WeightsUnavailable(
        file_id="tvos.davis", filename="tvos_davis.safetensors", tried=[("hub", "offline")], fetchable=fetchable
    )


@pytest.mark.parametrize(
    ("weights", "fetchable", "hint"),
    [
        ("hub", True, "python -m vos weights fetch tvos.davis"),
        ("hub", False, None),
        ("/data/mine.pth", False, "Check --weights /data/mine.pth"),
        ("hf://someone/elsewhere", True, "Check --weights hf://someone/elsewhere"),
    ],
)
def test_fetch_hint_only_when_fetching_would_help(weights, fetchable, hint):
    record = runner.MethodRecord("tvos", "TVOS", "semi", "davis", config={"weights": weights})
    runner._explain(_unavailable(fetchable=fetchable), record)
    assert record.status == runner.NO_WEIGHTS
    if hint is None:
        assert record.hint is None
    else:
        assert record.hint.startswith(hint)


class _WrongOutput(Method):
    """Yields label maps that are wrong in the way ``kind`` says."""

    info = tests.fakes.fake_info(
        "fake_wrong_output",
        variants=("default",),
        options=(Option("kind", str, "size", "what is wrong", choices=("size", "dtype", "none")),),
    )

    def _build(self) -> None:
        pass

    def _segment(self, clip, first_mask):
        for index, _frame in enumerate(clip.frames()):
            if index == 1 and self.options["kind"] == "size":
                yield first_mask[:-1]
            elif index == 1 and self.options["kind"] == "dtype":
                yield first_mask.astype(np.int64)
            elif index == 1:
                yield None
            else:
                yield first_mask


class _NoWeights(Method):
    """Cannot find its weights, as a method whose checkpoint is not here."""

    info = tests.fakes.fake_info("fake_no_weights", variants=("default",))

    def _build(self) -> None:
        raise _unavailable(fetchable=True)

    def _segment(self, clip, first_mask):
        raise AssertionError("never reached")


@pytest.fixture
def wrong_output():
    with tests.fakes.registered(_WrongOutput, _NoWeights):
        yield


def test_a_method_without_weights_gets_no_peak_memory(tmp_path, shapes, wrong_output):
    clip, masks = shapes
    specs = [MethodSpec("fake_no_weights"), MethodSpec("fake_copy")]
    missing, ran = run_methods(clip, masks[0], specs, tmp_path, device="cpu", write_video=False).records
    # It did no work: what the process held meanwhile is not the method's memory.
    assert missing.status == runner.NO_WEIGHTS and missing.peak_memory_mib is None and missing.memory_kind is None
    assert ran.status == runner.OK and ran.peak_memory_mib is not None


def test_the_python_api_checks_label_maps_too(shapes, wrong_output):
    from vos import methods

    clip, masks = shapes
    frames = methods.create("fake_wrong_output", device="cpu", weights="random").segment(clip, masks[0])
    assert next(frames).shape == clip.size
    with pytest.raises(methods.MethodOutputError, match="for frame 1"):
        next(frames)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("size", r"returned a uint8 array of shape \(39, 56\) for frame 1; a label map is a uint8 array of shape "
         r"\(40, 56\)"),
        ("dtype", r"returned a int64 array of shape \(40, 56\) for frame 1"),
        ("none", "returned a NoneType for frame 1"),
    ],
)  # fmt: skip
def test_label_maps_of_the_wrong_shape_or_dtype_fail_that_method(tmp_path, shapes, wrong_output, kind, message):
    clip, masks = shapes
    specs = [MethodSpec("fake_wrong_output", options={"kind": kind}), MethodSpec("fake_copy")]
    result = run_methods(clip, masks[0], specs, tmp_path, device="cpu", write_video=False)
    bad, good = result.records
    assert bad.status == runner.FAILED and re.search(message, bad.error), bad.error
    assert "bug in the method" in bad.hint
    assert not (tmp_path / "masks" / "fake_wrong_output").exists()
    assert good.status == runner.OK


def test_fps_counts_the_method_not_the_png_writing(tmp_path, shapes, monkeypatch):
    clip, masks = shapes
    write = vmasks.write_palette_png
    # Each PNG write "takes" 100 s on the runner's clock, without sleeping: a loaded machine cannot blur it.
    skipped = {"s": 0.0}
    real_clock = time.perf_counter

    def slow_write(label_map, path):
        skipped["s"] += 100.0
        return write(label_map, path)

    monkeypatch.setattr(vmasks, "write_palette_png", slow_write)
    monkeypatch.setattr(runner.time, "perf_counter", lambda: real_clock() + skipped["s"])
    result = run_methods(clip, masks[0], [MethodSpec("fake_copy")], tmp_path, device="cpu", write_video=False)
    record = result.records[0]
    assert record.status == runner.OK and record.frames_done == 5
    assert record.segment_s < 100  # none of the five writes is in it
    assert record.first_frame_s <= record.segment_s
    assert record.fps == pytest.approx(5 / record.segment_s)


def test_fp16_on_cpu_refused_before_anything_is_written(tmp_path, shapes):
    clip, masks = shapes
    with pytest.raises(DtypeUnavailable, match="fp16 is not supported on the CPU"):
        run_methods(clip, masks[0], [MethodSpec("fake_copy")], tmp_path / "run", device="cpu", dtype="fp16")
    assert not (tmp_path / "run").exists()


def test_unsupervised_segments_matched_to_prompt(tmp_path, shapes):
    clip, masks = shapes
    result = run_methods(clip, masks[0], [MethodSpec("fake_unsup")], tmp_path, device="cpu", write_video=False)
    record = result.records[0]
    assert record.status == runner.OK
    first = result.read_mask("fake_unsup", 0)
    corner = first[:2, :2]
    body = first.copy()
    body[:2, :2] = masks[0][:2, :2]
    assert np.array_equal(body, masks[0])  # objects came back under the prompt's ids
    assert set(np.unique(corner)) == {3}  # the extra segment gets the next free id (objects are 1, 2)
    assert record.extra_ids == [3]
    assert record.segment_ids == {"12": 1, "11": 2, "3": 3}


def test_segment_matcher_keeps_unmatched_and_new_segments():
    prompt = np.zeros((4, 6), np.uint8)
    prompt[:, :2] = 5
    matcher = SegmentMatcher(prompt)
    frame0 = np.zeros((4, 6), np.uint8)
    frame0[:, :3] = 9  # overlaps object 5
    frame0[:, 4:] = 2  # touches nothing prompted
    out0 = matcher(frame0, 0)
    assert set(np.unique(out0[:, :3])) == {5}
    later = np.full((4, 6), 4, np.uint8)  # a segment never seen before
    out1 = matcher(later, 1)
    assert matcher.extra_ids == sorted(matcher.extra_ids) and len(set(np.unique(out1))) == 1
    assert int(out1[0, 0]) not in (5, 0)


def test_cancel_between_frames(tmp_path, shapes):
    clip, masks = shapes
    cancel = threading.Event()
    seen = []

    def on_frame(record, done, total):
        seen.append(done)
        if done == 2:
            cancel.set()

    specs = [MethodSpec("fake_copy"), MethodSpec("fake_alloc")]
    result = run_methods(
        clip, masks[0], specs, tmp_path, device="cpu", events=RunEvents(on_frame=on_frame), cancel=cancel
    )
    assert [r.status for r in result.records] == [runner.CANCELLED, runner.CANCELLED]
    assert seen == [1, 2]
    # The stopped method keeps the frames it finished (under partial/); the one that never started has none.
    stopped, never = result.records
    assert stopped.frames_done == 2 and stopped.has_masks
    assert np.array_equal(result.read_mask("fake_copy", 1), masks[0])
    assert result.read_mask("fake_copy", 2) is None
    assert stopped.status_line() == f"stopped at frame 2 of {clip.num_frames}"
    assert not never.has_masks and never.status_line() == "stopped before it started"
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["methods"][0]["partial_masks_dir"] and data["methods"][0]["frames_done"] == 2


def test_ground_truth_scores(tmp_path, shapes):
    clip, masks = shapes
    gt = {i: m for i, m in enumerate(masks)}
    result = run_methods(
        clip, masks[0], [MethodSpec("fake_copy")], tmp_path, device="cpu", ground_truth=gt, write_video=False
    )
    scores = result.records[0].scores
    assert set(scores) == {"J&F", "J", "F"}
    assert 0 <= scores["J"] <= 1


def test_summary_table_mentions_errors(tmp_path, shapes):
    clip, masks = shapes
    result = run_methods(clip, masks[0], [MethodSpec("fake_fail")], tmp_path, device="cpu", write_video=False)
    table = runner.summary_table(result.records)
    assert "fake_fail" in table and "synthetic failure" in table


def test_side_by_side_grid_has_a_tile_per_method(tmp_path, shapes):
    clip, masks = shapes
    specs = [MethodSpec("fake_copy"), MethodSpec("fake_fail")]
    result = run_methods(clip, masks[0], specs, tmp_path, device="cpu", write_video=False)
    frame = next(runner.grid_frames(result))
    assert frame.ndim == 3 and frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    assert frame.shape[1] >= 2 * clip.width  # at least input + two tiles across or stacked
    assert vmasks.read_palette_png(tmp_path / "prompt.png").shape == clip.size


def test_read_ground_truth_lines_up_frames_and_sizes(tmp_path):
    synthetic = moving_shapes(4, (24, 32))
    clip = Clip.from_frames(synthetic.frames)
    folder = tmp_path / "gt"
    for index in (0, 2):  # sparse annotations, at twice the clip's size
        big = np.kron(synthetic.masks[index], np.ones((2, 2), np.uint8))
        vmasks.write_palette_png(big, folder / f"{index:05d}.png")
    gt = runner.read_ground_truth(folder, clip)
    assert sorted(gt) == [0, 2]
    assert np.array_equal(gt[2], synthetic.masks[2])
    vmasks.write_palette_png(np.ones((10, 40), np.uint8), tmp_path / "bad" / "00000.png")
    with pytest.raises(vmasks.MaskError, match="40x10"):
        runner.read_ground_truth(tmp_path / "bad", clip)
