"""First-frame prompts -> label map: GrabCut from clicks and boxes, brush strokes, uploaded masks, bad prompts."""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np
import pytest

from vos import masks, prompts
from vos.masks import MaskError
from vos.methods.base import PromptError
from vos.prompts import Box, Click, ObjectPrompt, brush_from_rgba, mask_from_upload, prompts_to_mask
from vos.synthetic import moving_shapes, textured_background


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def textured_fill(image, mask, colour, rng, noise=18.0):
    """Paint ``mask`` with a noisy colour: an object with texture of its own, not a flat fill."""
    texture = rng.normal(0, noise, (*mask.shape, 1))
    painted = np.clip(np.asarray(colour, np.float64) + texture, 0, 255).astype(np.uint8)
    image[mask] = painted[mask]


def star_scene(size=(180, 240), seed=0):
    """A ten-pointed textured star on a textured background: its box is far from its shape."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = textured_background(size, rng).copy()
    angles = np.linspace(0, 2 * np.pi, 11)[:-1]
    radii = 0.28 * min(h, w) * (0.65 + 0.35 * (np.arange(10) % 2))
    points = np.stack([0.45 * w + radii * np.cos(angles), 0.5 * h + radii * np.sin(angles)], 1)
    mask = np.zeros(size, np.uint8)
    cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    mask = mask.astype(bool)
    textured_fill(image, mask, (200, 120, 50), rng)
    return image, mask


def tight_box(mask: np.ndarray, pad: int = 4) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(xs.min() - pad, ys.min() - pad, xs.max() + pad, ys.max() + pad)


def centre_click(mask: np.ndarray) -> Click:
    ys, xs = np.nonzero(mask)
    return Click(float(xs.mean()), float(ys.mean()))


def box_area(box: Box, size) -> np.ndarray:
    area = np.zeros(size, bool)
    area[int(box.y0) : int(box.y1) + 1, int(box.x0) : int(box.x1) + 1] = True
    return area


# ---- GrabCut from boxes and clicks


def test_box_recovers_shape():
    image, truth = star_scene()
    box = tight_box(truth)
    assert iou(box_area(box, truth.shape), truth) < 0.6  # so returning the box would fail below
    label_map = prompts_to_mask(image, [ObjectPrompt(boxes=[box])])
    assert label_map.dtype == np.uint8 and label_map.shape == truth.shape
    assert set(np.unique(label_map).tolist()) == {0, 1}
    assert iou(label_map == 1, truth) >= 0.9


def test_positive_click_alone_recovers_compact_shape():
    image, truth = star_scene(seed=1)
    label_map = prompts_to_mask(image, [ObjectPrompt(clicks=[centre_click(truth)])])
    assert iou(label_map == 1, truth) >= 0.8


def test_click_on_an_object_larger_than_any_neighbourhood():
    rng = np.random.default_rng(3)
    image = textured_background((180, 320), rng).copy()
    truth = np.zeros((180, 320), np.uint8)
    cv2.ellipse(truth, (160, 90), (130, 75), 0, 0, 360, 1, -1)
    truth = truth.astype(bool)
    textured_fill(image, truth, (60, 90, 200), rng)
    label_map = prompts_to_mask(image, [ObjectPrompt(clicks=[Click(160, 90)])])
    assert iou(label_map == 1, truth) >= 0.8


def test_click_takes_only_the_clicked_one_of_two_look_alikes():
    rng = np.random.default_rng(4)
    size = (150, 260)
    image = textured_background(size, rng).copy()
    left, right = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    cv2.circle(left, (65, 75), 35, 1, -1)
    cv2.circle(right, (195, 75), 35, 1, -1)
    left, right = left.astype(bool), right.astype(bool)
    textured_fill(image, left | right, (60, 180, 90), rng)
    label_map = prompts_to_mask(image, [ObjectPrompt(clicks=[Click(65, 75)])])
    assert iou(label_map == 1, left) >= 0.85
    assert (label_map[right] == 1).mean() < 0.05


def test_negative_click_removes_a_region():
    rng = np.random.default_rng(5)
    size = (160, 220)
    image = textured_background(size, rng).copy()
    disk = np.zeros(size, np.uint8)
    cv2.circle(disk, (80, 80), 35, 1, -1)
    square = np.zeros(size, np.uint8)
    square[50:110, 112:172] = 1  # touches the disk: one connected blob inside the box
    disk, square = disk.astype(bool), square.astype(bool) & ~disk.astype(bool)
    textured_fill(image, disk, (220, 60, 40), rng)
    textured_fill(image, square, (40, 80, 220), rng)
    box = tight_box(disk | square)

    both = prompts_to_mask(image, [ObjectPrompt(boxes=[box])]) == 1
    assert both[square].mean() > 0.8  # without the negative click the square is part of the object

    square_centre = Click(142, 80, positive=False)
    only_disk = prompts_to_mask(image, [ObjectPrompt(boxes=[box], clicks=[square_centre])]) == 1
    assert only_disk[square].mean() < 0.1
    assert iou(only_disk, disk) >= 0.85


def test_two_objects_get_ids_one_and_two():
    clip = moving_shapes(1, (120, 160), 2, seed=2)
    image, truth = clip.frames[0], clip.masks[0]
    objects = [ObjectPrompt(boxes=[tight_box(truth == 1)]), ObjectPrompt(clicks=[centre_click(truth == 2)])]
    label_map = prompts_to_mask(image, objects)
    assert masks.object_ids(label_map) == [1, 2]
    assert iou(label_map == 1, truth == 1) >= 0.9
    assert iou(label_map == 2, truth == 2) >= 0.9


def test_marked_pixels_keep_their_object_in_overlaps():
    image, truth = star_scene(seed=2)
    click = centre_click(truth)
    objects = [ObjectPrompt(clicks=[click]), ObjectPrompt(boxes=[tight_box(truth)])]
    label_map = prompts_to_mask(image, objects)
    assert label_map[int(click.y), int(click.x)] == 1  # object 2's box covers it, but the click says object 1
    assert (label_map == 2).sum() > (label_map == 1).sum()  # ...and otherwise the later object wins


def test_full_hd_frame_is_segmented_on_a_small_copy():
    clip = moving_shapes(1, (1080, 1920), 1, seed=4)
    image, truth = clip.frames[0], clip.masks[0] == 1
    start = time.perf_counter()
    label_map = prompts_to_mask(image, [ObjectPrompt(clicks=[centre_click(truth)])])
    elapsed = time.perf_counter() - start
    assert label_map.shape == (1080, 1920)
    assert iou(label_map == 1, truth) >= 0.95
    assert elapsed < 10, f"a 1080p prompt took {elapsed:.1f} s; GrabCut should run on a <= 640 px copy"


# ---- brush strokes


def test_brush_alone_passes_through_exactly():
    image, _ = star_scene()
    brush = np.zeros(image.shape[:2], bool)
    brush[10:20, 30:35] = True
    brush[100, 200] = True
    label_map = prompts_to_mask(image, [ObjectPrompt(brush=brush)])
    np.testing.assert_array_equal(label_map == 1, brush)


def test_brush_combined_with_clicks_is_kept():
    image, truth = star_scene(seed=3)
    brush = np.zeros(image.shape[:2], bool)
    brush[5:9, 5:60] = True  # background stroke far from the star: the user wants it in the object
    label_map = prompts_to_mask(image, [ObjectPrompt(clicks=[centre_click(truth)], brush=brush)])
    assert (label_map[brush] == 1).all()
    assert iou(label_map == 1, truth | brush) >= 0.8


def test_brush_from_editor_layers():
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[1:3, 2:5] = (255, 0, 0, 255)
    rgba[4, 6] = (0, 0, 0, 10)  # faint but painted
    expected = np.zeros((6, 8), bool)
    expected[1:3, 2:5] = True
    expected[4, 6] = True
    np.testing.assert_array_equal(brush_from_rgba(rgba), expected)
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[1:3, 2:5] = (0, 255, 0)
    np.testing.assert_array_equal(brush_from_rgba(rgb), expected & (np.arange(8) < 5) & (np.arange(6) < 3)[:, None])
    with pytest.raises(PromptError, match="RGBA or RGB"):
        brush_from_rgba(np.zeros((2, 3, 2), np.uint8))


# ---- never empty, never silent


def test_empty_engine_result_falls_back_to_the_click(monkeypatch, caplog):
    image, truth = star_scene()
    click = centre_click(truth)
    monkeypatch.setitem(prompts.ENGINES, "grabcut", lambda image, prompt: np.zeros(image.shape[:2], bool))
    with caplog.at_level(logging.WARNING, logger="vos.prompts"):
        label_map = prompts_to_mask(image, [ObjectPrompt(clicks=[click])])
    assert label_map[int(click.y), int(click.x)] == 1
    assert 0 < (label_map == 1).sum() < 0.05 * label_map.size  # a small disk
    assert "found nothing" in caplog.text


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([], "No objects"),
        ([ObjectPrompt(clicks=[Click(500, 10)])], r"outside the 240x180 image"),
        ([ObjectPrompt(clicks=[Click(10, -1)])], r"outside"),
        ([ObjectPrompt(boxes=[Box(10, 10, 10, 80)])], "no area"),
        ([ObjectPrompt(boxes=[Box(300, 10, 400, 80)])], "outside"),
        ([ObjectPrompt(clicks=[Click(5, 5, positive=False)])], "Object 1 has no positive prompt"),
        ([ObjectPrompt(clicks=[Click(5, 5)]), ObjectPrompt()], "Object 2 has no positive prompt"),
        ([ObjectPrompt(brush=np.ones((10, 10), bool))], "brush layer"),
    ],
)
def test_bad_prompts_raise_clear_errors(objects, message):
    image, _ = star_scene()
    with pytest.raises(PromptError, match=message):
        prompts_to_mask(image, objects)


def test_unknown_engine_says_what_exists():
    image, truth = star_scene()
    with pytest.raises(PromptError, match="'sam'.*grabcut"):
        prompts_to_mask(image, [ObjectPrompt(clicks=[centre_click(truth)])], engine="sam")


def test_reversed_box_corners_are_fine():
    image, truth = star_scene()
    box = tight_box(truth)
    flipped = Box(box.x1, box.y1, box.x0, box.y0)
    np.testing.assert_array_equal(
        prompts_to_mask(image, [ObjectPrompt(boxes=[flipped])]), prompts_to_mask(image, [ObjectPrompt(boxes=[box])])
    )


# ---- uploaded masks


def test_mask_from_upload(tmp_path):
    label_map = np.zeros((48, 64), np.uint8)
    label_map[10:20, 10:30] = 3
    path = masks.write_palette_png(label_map, tmp_path / "first.png")
    np.testing.assert_array_equal(mask_from_upload(path, (48, 64)), label_map)
    # Same aspect ratio: the clip was shrunk by the upload limits, the mask follows.
    smaller = mask_from_upload(path, (24, 32))
    assert smaller.shape == (24, 32) and masks.object_ids(smaller) == [3]
    with pytest.raises(MaskError, match="48x64"):
        mask_from_upload(path, (64, 48))
    with pytest.raises(MaskError, match="64x48"):
        mask_from_upload(path, (24, 32), rescale=False)
    empty = masks.write_palette_png(np.zeros((48, 64), np.uint8), tmp_path / "empty.png")
    with pytest.raises(MaskError, match="no objects"):
        mask_from_upload(empty, (48, 64))
