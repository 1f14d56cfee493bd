"""Test-only methods: small, deterministic, and each misbehaving in one known way.

Importing this module registers them (keys start with ``fake_``); set VOS_PLUGINS=tests.fakes to make a
subprocess (the benchmark's points) see them too.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np
import torch

from vos import click_engine
from vos.methods import OFFLINE, SEMI, UNSUP, Method, MethodInfo, Option, Paper, register, unregister

PAPER = Paper(title="A test double", authors="vos-compare tests", venue="tests", year=2026, url="https://example.org")


@contextlib.contextmanager
def registered(*classes: type[Method]) -> Iterator[None]:
    """Register test-only method classes for the duration of a ``with`` block (a fixture's body)."""
    for cls in classes:
        register(cls)
    try:
        yield
    finally:
        for cls in classes:
            unregister(cls.info.key)


def fake_info(key: str, task: str = SEMI, **kwargs) -> MethodInfo:
    """A test-only method's MethodInfo: defaults for everything but the key; ``kwargs`` override them."""
    defaults = dict(
        key=key,
        title=key.replace("_", " ").title(),
        task=task,
        summary="Test-only method.",
        variants=("default", "other"),
        default_variant="default",
        paper=PAPER,
        repo="https://example.org/repo",
        licence="MIT",
    )
    defaults.update(kwargs)
    return MethodInfo(**defaults)


@register
class CopyFirstMask(Method):
    """Repeats the first mask, shifted right by ``shift`` pixels per frame; ``delay`` seconds per frame."""

    info = fake_info(
        "fake_copy",
        options=(
            Option("shift", int, 0, "pixels to move the mask right per frame"),
            # The app in the browser tests runs slowly when told, so a run can be watched and stopped.
            Option("delay", float, float(os.environ.get("VOS_FAKE_DELAY", 0)), "seconds to sleep per frame"),
            Option("size", tuple, (32, 48), "a size option, for parsing tests"),
            Option("mode", str, "fast", "a choice option", choices=("fast", "exact"), paper="exact"),
        ),
    )

    def _build(self) -> None:
        self.net = torch.nn.Linear(2, 2).to(self.device)

    def _segment(self, clip, first_mask):
        for index, _frame in enumerate(clip.frames()):
            time.sleep(self.options["delay"])
            yield np.roll(first_mask, self.options["shift"] * index, axis=1)


@register
class FailsAtFrame(Method):
    """Raises a plain bug-like error at frame ``at``."""

    info = fake_info("fake_fail", options=(Option("at", int, 1, "frame index that fails"),))

    def _build(self) -> None:
        pass

    def _segment(self, clip, first_mask):
        for index, _frame in enumerate(clip.frames()):
            if index == self.options["at"]:
                raise RuntimeError("synthetic failure")
            yield first_mask


@register
class RunsOutOfMemory(Method):
    """Raises torch.OutOfMemoryError on the second frame, as a GPU would."""

    info = fake_info("fake_oom")

    def _build(self) -> None:
        pass

    def _segment(self, clip, first_mask):
        yield first_mask
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@register
class Allocates(Method):
    """Holds ``mib`` MiB of host memory while it runs, so peak-memory probes have something to see."""

    info = fake_info("fake_alloc", options=(Option("mib", int, 200, "MiB to allocate"),))

    def _build(self) -> None:
        pass

    def _segment(self, clip, first_mask):
        block = np.ones(self.options["mib"] * 2**20, np.uint8)  # ones, so the pages are really touched
        for _frame in clip.frames():
            yield first_mask
        del block


@register
class ShuffledSegments(Method):
    """Unsupervised double: returns the first mask's objects under other ids, plus one extra corner segment."""

    info = fake_info("fake_unsup", task=UNSUP)

    def _build(self) -> None:
        pass

    def _segment(self, clip, first_mask):
        ids = [int(i) for i in np.unique(first_mask) if i]
        segments = np.zeros_like(first_mask)
        for rank, obj in enumerate(ids):
            segments[first_mask == obj] = 10 + len(ids) - rank  # reversed order, far-away ids
        segments[:2, :2] = 3
        for _frame in clip.frames():
            yield segments


@register
class WholeClipFirst(Method):
    """Offline double: ``delay`` seconds of whole-clip work (reported as a stage) before frame 0, then every frame."""

    info = fake_info("fake_offline", processing=OFFLINE, options=(Option("delay", float, 0.2, "seconds of work"),))

    def _segment(self, clip, first_mask):
        steps = 4
        for step in range(steps):
            time.sleep(self.options["delay"] / steps)
            self.report("whole clip", step + 1, steps)
        for _frame in clip.frames():
            yield first_mask


TINY_SAM2_SIDE = 256  # the tiny model's input side (the release's is 1024)


def tiny_sam2() -> click_engine.Sam2Engine:
    """SAM 2 with the release's structure, shrunk, random weights: four Hiera stages, a windowed and a global
    block, 32 channels. The click engine of the tests (``VOS_CLICK_ENGINE=tiny-random``); nothing is downloaded."""
    torch.manual_seed(0)
    side = TINY_SAM2_SIDE
    config = click_engine.sam2_config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=16,
                image_size=[side, side],
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[16, 32, 64, 128],
                num_attention_heads_per_stage=[1, 1, 2, 2],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[4, 4],
            ),
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=side),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2),
    )
    return click_engine.Sam2Engine(click_engine._sam2_model(None, config), "tiny SAM 2 (random weights)")


click_engine.register_engine("tiny-random", tiny_sam2)
