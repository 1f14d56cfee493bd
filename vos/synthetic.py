"""Synthetic clips with exact ground truth: coloured shapes moving over a textured background.

Used by the tests (tracking checks without weights or downloads) and the benchmark (clips of any size).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Saturated colours far from the background's muted texture, so a colour feature can tell them apart.
SHAPE_COLOURS = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 80, 240], [240, 210, 30], [200, 40, 220], [30, 210, 220]],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class SyntheticClip:
    frames: list[np.ndarray]  # uint8 RGB (H, W, 3)
    masks: list[np.ndarray]  # uint8 label maps (H, W), ids 1..num_objects


def textured_background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth, low-saturation noise: texture for features to see, no colour that matches a shape."""
    h, w = size
    coarse = rng.uniform(60, 150, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    grey = smooth.mean(axis=2, keepdims=True)
    muted = 0.75 * grey + 0.25 * smooth  # keep saturation low
    fine = rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
    return np.clip(muted + fine, 0, 255).astype(np.uint8)


def moving_shapes(
    num_frames: int = 30,
    size: tuple[int, int] = (96, 128),
    num_objects: int = 2,
    *,
    seed: int = 0,
    object_scale: float = 0.18,
    speed: float = 0.02,
) -> SyntheticClip:
    """Ellipses and rectangles of distinct colours gliding (and bouncing) over a fixed textured background.

    ``object_scale`` is a shape's radius relative to the short side; ``speed`` its motion per frame relative to the
    frame size. Later objects are drawn over earlier ones, and the masks say so.
    """
    if not 1 <= num_objects <= len(SHAPE_COLOURS):
        raise ValueError(f"num_objects must be between 1 and {len(SHAPE_COLOURS)}")
    rng = np.random.default_rng(seed)
    h, w = size
    background = textured_background(size, rng)
    radius = max(2.0, object_scale * min(h, w))
    margin = radius + 1
    pos = rng.uniform([margin, margin], [max(margin + 1, h - margin), max(margin + 1, w - margin)], (num_objects, 2))
    angle = rng.uniform(0, 2 * np.pi, num_objects)
    vel = np.stack([np.sin(angle), np.cos(angle)], 1) * speed * np.array([h, w])
    frames, masks = [], []
    for _ in range(num_frames):
        frame = background.copy()
        mask = np.zeros(size, np.uint8)
        for k in range(num_objects):
            cy, cx = pos[k]
            layer = np.zeros(size, np.uint8)
            if k % 2 == 0:
                cv2.ellipse(
                    layer,
                    (round(cx), round(cy)),
                    (round(radius * 1.2), round(radius * 0.8)),
                    0,
                    0,
                    360,
                    1,
                    -1,
                )
            else:
                r = round(radius * 0.9)
                cv2.rectangle(layer, (round(cx) - r, round(cy) - r), (round(cx) + r, round(cy) + r), 1, -1)
            inside = layer.astype(bool)
            frame[inside] = SHAPE_COLOURS[k]
            mask[inside] = k + 1
        frames.append(frame)
        masks.append(mask)
        pos += vel
        for axis, limit in ((0, h), (1, w)):
            low, high = pos[:, axis] < margin, pos[:, axis] > limit - margin
            vel[low | high, axis] *= -1
            pos[:, axis] = np.clip(pos[:, axis], margin, max(margin, limit - margin))
    return SyntheticClip(frames, masks)
