"""The contract every registered method keeps, checked the same way for each (a new method gets it for free):
random weights, a 3-frame clip at a tiny working size, label maps of the clip's size and dtype, object ids as the
task requires, progress reported in order, a stop honoured at the next report, and each part's layout readable on
the meta device."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import vos.methods as vm
from vos.methods import base as mbase
from vos.synthetic import moving_shapes
from vos.video import Clip

BUILTIN = [key for key in mbase.DISPLAY_ORDER if key in vm.list_keys()]
SIZE = (48, 64)


def _clip() -> tuple[Clip, np.ndarray]:
    data = moving_shapes(3, SIZE, 2, seed=3)
    return Clip.from_frames(data.frames), data.masks[0]


def _tiny(key: str) -> mbase.Method:
    """The default variant at the clip's own size (through its declared resolution), random weights, CPU."""
    info = vm.get_info(key)
    value = info.resolution.override_for(SIZE)
    options = {info.resolution.option: value} if value is not None else {}
    return vm.create(key, weights="random", device="cpu", **options)


@pytest.fixture(scope="module", params=BUILTIN)
def method(request) -> mbase.Method:
    torch.manual_seed(0)
    return _tiny(request.param)


def test_info_is_complete(method):
    info = method.info
    assert info.task in (mbase.SEMI, mbase.UNSUP)
    assert info.processing in (mbase.ONLINE, mbase.OFFLINE)
    assert info.default_variant in info.variants
    assert info.reported, "the paper's figures are shown beside ours"
    for variant in info.variants:
        assert info.resolution.describe(variant)


def test_label_maps_progress_and_ids(method):
    clip, prompt = _clip()
    seen: list[mbase.Progress] = []
    outputs = list(method.segment(clip, prompt, progress=seen.append))
    assert len(outputs) == clip.num_frames
    assert all(o.dtype == np.uint8 and o.shape == clip.size for o in outputs)
    if method.info.task == mbase.SEMI:
        assert set(np.unique(np.concatenate(outputs))) <= {0, *np.unique(prompt).tolist()}
    frames = [p for p in seen if p.stage == mbase.FRAME_STAGE]
    assert [(p.done, p.total) for p in frames] == [(i + 1, clip.num_frames) for i in range(clip.num_frames)]
    last: dict[str, int] = {}
    for progress in seen:  # each stage counts up and stays within its total
        assert 0 <= progress.done <= progress.total, progress
        assert progress.done >= last.get(progress.stage, 0), progress
        last[progress.stage] = progress.done
    if method.info.offline:
        assert any(p.stage != mbase.FRAME_STAGE for p in seen[: seen.index(frames[0])]), (
            "an offline method shows its stages before frame 0"
        )


def test_stop_is_honoured_at_the_next_report(method):
    clip, prompt = _clip()
    stop = threading.Event()
    reports_after_stop = []

    def progress(report: mbase.Progress) -> None:
        if stop.is_set():
            reports_after_stop.append(report)
        stop.set()

    produced = []
    with pytest.raises(mbase.Stopped):
        for label_map in method.segment(clip, prompt, progress=progress, stop=stop):
            produced.append(label_map)
    assert not reports_after_stop
    assert len(produced) <= 1  # the frame whose report set the flag, if the first report was a frame


@pytest.mark.parametrize("key", BUILTIN)
def test_every_part_layout_is_probed_on_the_meta_device(key):
    info = vm.get_info(key)
    for variant in info.variants:
        for part in info.parts(variant):
            layout = mbase.part_layout(key, variant, part)
            assert layout and all(isinstance(shape, tuple) for shape in layout.values())


def test_the_built_parts_are_the_probed_layouts(method):
    for part, net in method.nets.items():
        built = {name: tuple(t.shape) for name, t in net.state_dict().items()}
        assert built == mbase.part_layout(method.info.key, method.variant, part)
        assert not net.training
