"""First-frame prompts -> the label map every semi-supervised method starts from.

Each object is prompted by any mix of positive/negative clicks, boxes and a brush stroke, or the whole label map
comes from an uploaded palette PNG. Clicks and boxes become a mask through an engine; the default, ``grabcut``,
is OpenCV's GrabCut seeded by the prompts: no weights, works offline, and interactive (a few tenths of a second
for a 1080p frame on 2 cores) because it runs on a copy at most ``WORK_SIDE`` pixels long. A better engine (e.g.
SAM from the Hub) plugs into ``ENGINES``.

Coordinates are pixels of the full-size image: ``x`` is the column, ``y`` the row.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vos.masks import MaskError, fit_to_size, read_palette_png
from vos.methods.base import PromptError

log = logging.getLogger(__name__)

WORK_SIDE = 640  # GrabCut's cost grows with the pixel count; the long side of the copy it runs on
GRABCUT_ITERATIONS = 5  # at most; GrabCut stops earlier once its labels settle
SETTLED = 0.002  # ...that is, when fewer than this fraction of the window's pixels change in an iteration
SEED_RADIUS = 0.012  # sure-foreground / sure-background disk around a click, relative to the short side
CLICK_REACH = 0.036  # radius of the probably-foreground disk around a click outside any box, relative to the short side
LOOK_ALIKE = 24  # colour distance (per channel) within which pixels connected to a click look like it
CONTEXT_MARGIN = 0.25  # background kept around the prompted region, relative to the region's size

# Bounds on a prompt, so that one request cannot hold the server for minutes: GrabCut runs once per object (about
# 0.1-2 s each), and ids are uint8 (at most 255 objects in any case).
MAX_OBJECTS_ENV = "VOS_MAX_OBJECTS"
DEFAULT_MAX_OBJECTS = 20
MAX_MARKS = 50  # clicks and boxes of one object
MAX_JSON_CHARS = 64 * 1024  # an objects JSON text; 20 objects of 50 marks take about 20 KB


def max_objects() -> int:
    """How many objects a prompt may hold: $VOS_MAX_OBJECTS (default 20), never more than 255 (uint8 ids)."""
    text = os.environ.get(MAX_OBJECTS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_OBJECTS
    if not text.isdigit() or not 1 <= int(text) <= 255:
        raise PromptError(f"${MAX_OBJECTS_ENV}={text!r}: expected a whole number from 1 to 255.")
    return int(text)


@dataclass(frozen=True)
class Click:
    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """Two opposite corners, in any order."""

    x0: float
    y0: float
    x1: float
    y1: float

    def ordered(self) -> Box:
        return Box(min(self.x0, self.x1), min(self.y0, self.y1), max(self.x0, self.x1), max(self.y0, self.y1))


@dataclass
class ObjectPrompt:
    clicks: list[Click] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    brush: np.ndarray | None = None  # bool (H, W): painted pixels, taken as they are


def brush_from_rgba(layer: np.ndarray) -> np.ndarray:
    """Painted pixels of an editor layer as a bool (H, W) mask: alpha > 0 for RGBA, non-black for RGB."""
    layer = np.asarray(layer)
    if layer.ndim == 2:
        return layer > 0
    if layer.ndim == 3 and layer.shape[2] == 4:
        return layer[..., 3] > 0
    if layer.ndim == 3 and layer.shape[2] == 3:
        return layer.any(axis=2)
    raise PromptError(f"A brush layer must be an RGBA or RGB image, got an array of shape {layer.shape}.")


def mask_from_upload(path: str | Path, size: tuple[int, int], *, rescale: bool = True) -> np.ndarray:
    """An uploaded first-frame mask (palette PNG) as the label map for a clip of ``size`` (H, W).

    A mask of another size is an error, unless ``rescale`` and it has the clip's aspect ratio: then it was made
    for the clip before the upload limits shrank it, and it is resized (nearest).
    """
    path = Path(path)
    label_map = fit_to_size(read_palette_png(path), size, path, rescale=rescale)
    if not label_map.any():
        raise MaskError(path, "the mask holds no objects (every pixel is background); mark at least one object.")
    return label_map


# --------------------------------------------------------------------------------------------------------------
# Prompts -> label map


def prompts_to_mask(
    image: np.ndarray, objects: Sequence[ObjectPrompt], *, engine: str | PromptEngine = "grabcut"
) -> np.ndarray:
    """A uint8 label map (H, W) of ``image``: object ``i`` of ``objects`` gets id ``i + 1``.

    Overlaps: later objects win, except that what the user marked directly (brush pixels and the seed disk of a
    positive click) always keeps its object, so a click on a part inside another object's box claims that part.
    """
    image = _check_image(image)
    if not callable(engine) and engine not in ENGINES:
        raise PromptError(
            f"Unknown prompt engine {engine!r}. Available: {', '.join(ENGINES)}. "
            "(SAM 2 is an engine object: vos.click_engine.load_engine().)"
        )
    if not objects:
        raise PromptError("No objects prompted: click, box or paint at least one object on the first frame.")
    check_counts(objects)
    size = image.shape[:2]
    for number, prompt in enumerate(objects, start=1):
        _check_prompt(prompt, number, size)
    label_map = np.zeros(size, np.uint8)
    marked = []
    for object_id, prompt in enumerate(objects, start=1):
        mask = engine(image, prompt) if callable(engine) else ENGINES[engine](image, prompt)  # vos.click_engine
        if not mask.any():
            mask = _fallback(prompt, size, object_id)
        label_map[mask] = object_id
        marked.append(_marked_pixels(prompt, size))
    for object_id, sure in enumerate(marked, start=1):
        label_map[sure] = object_id
    return label_map


def check_counts(objects: Sequence[ObjectPrompt]) -> None:
    """At most ``max_objects()`` objects of at most ``MAX_MARKS`` clicks and boxes each."""
    limit = max_objects()
    if len(objects) > limit:
        raise PromptError(
            f"{len(objects)} objects are prompted; at most {limit} are allowed (${MAX_OBJECTS_ENV}). "
            "Mark fewer objects, or run the rest in a second pass."
        )
    for number, prompt in enumerate(objects, start=1):
        marks = len(prompt.clicks) + len(prompt.boxes)
        if marks > MAX_MARKS:
            raise PromptError(
                f"Object {number} has {marks} clicks and boxes; at most {MAX_MARKS} are allowed. A box and a few "
                "clicks are usually enough."
            )


def objects_from_json(text: str | None) -> list[ObjectPrompt]:
    """Objects from the API's JSON: ``[{"clicks": [[x, y, 1], [x, y, 0]], "boxes": [[x0, y0, x1, y1]]}, ...]``
    (pixels; 1 = include, 0 = exclude; the third click value may be left out, meaning include).

    Every malformed shape is a PromptError that says where it is and what was expected; the counts are bounded
    (``check_counts``) and so is the text's length."""
    text = (text or "").strip() or "[]"
    if len(text) > MAX_JSON_CHARS:
        raise PromptError(
            f"objects: the JSON is {len(text):,} characters long; at most {MAX_JSON_CHARS:,} are allowed."
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptError(f"objects must be JSON ({err}); e.g. {_EXAMPLE}.") from None
    if not isinstance(data, list):
        raise PromptError(f"objects must be a JSON list of objects, got {_json_kind(data)}; e.g. {_EXAMPLE}.")
    if len(data) > max_objects():
        check_counts([ObjectPrompt()] * len(data))  # before parsing thousands of entries
    objects = []
    for number, entry in enumerate(data, start=1):
        where = f"objects[{number - 1}]"
        if not isinstance(entry, dict):
            raise PromptError(f'{where} must be a JSON object with "clicks" and/or "boxes", got {_json_kind(entry)}.')
        unknown = sorted(set(entry) - {"clicks", "boxes"})
        if unknown:
            raise PromptError(f'{where} has unknown keys {", ".join(map(repr, unknown))}; use "clicks" and "boxes".')
        clicks, boxes = entry.get("clicks", []), entry.get("boxes", [])
        for name, items in (("clicks", clicks), ("boxes", boxes)):
            if not isinstance(items, list):
                raise PromptError(f"{where}.{name} must be a list, got {_json_kind(items)}.")
        if len(clicks) + len(boxes) > MAX_MARKS:
            check_counts(
                [*objects, ObjectPrompt(clicks=[Click(0, 0)] * len(clicks), boxes=[Box(0, 0, 1, 1)] * len(boxes))]
            )
        prompt = ObjectPrompt()
        for index, click in enumerate(clicks):
            values = _numbers(click, f"{where}.clicks[{index}]", (2, 3), "[x, y] or [x, y, 1 or 0]")
            if len(values) == 3 and values[2] not in (0, 1):
                raise PromptError(f"{where}.clicks[{index}]: the third value must be 1 (include) or 0 (exclude).")
            prompt.clicks.append(Click(values[0], values[1], positive=len(values) == 2 or values[2] == 1))
        for index, box in enumerate(boxes):
            prompt.boxes.append(Box(*_numbers(box, f"{where}.boxes[{index}]", (4,), "[x0, y0, x1, y1]")))
        objects.append(prompt)
    return objects


_EXAMPLE = '[{"clicks": [[120, 80, 1]], "boxes": [[10, 20, 200, 180]]}]'


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _numbers(value: object, where: str, lengths: tuple[int, ...], shape: str) -> list[float]:
    """A list of finite numbers of one of ``lengths``, else a PromptError naming ``where`` and ``shape``."""
    if (
        not isinstance(value, list)
        or len(value) not in lengths
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(_finite(v) for v in value)
    ):
        raise PromptError(f"{where} must be {shape} (finite numbers, in pixels), got {json.dumps(value)[:80]}.")
    return [float(v) for v in value]


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        return False


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise PromptError(f"The first frame must be a uint8 RGB image, got {image.dtype} of shape {image.shape}.")
    return np.ascontiguousarray(image[..., :3])


def _check_prompt(prompt: ObjectPrompt, number: int, size: tuple[int, int]) -> None:
    h, w = size
    for click in prompt.clicks:
        if not (0 <= click.x < w and 0 <= click.y < h):
            raise PromptError(
                f"Object {number}: the click at ({click.x:g}, {click.y:g}) lies outside the {w}x{h} image; "
                "click on the frame itself."
            )
    for box in prompt.boxes:
        b = box.ordered()
        if b.x1 - b.x0 < 1 or b.y1 - b.y0 < 1:
            raise PromptError(f"Object {number}: the box {_box_text(box)} has no area; drag a box around the object.")
        if b.x1 <= 0 or b.y1 <= 0 or b.x0 >= w or b.y0 >= h:
            raise PromptError(
                f"Object {number}: the box {_box_text(box)} lies outside the {w}x{h} image; draw it on the frame."
            )
    if prompt.brush is not None:
        brush = np.asarray(prompt.brush)
        if brush.shape != size:
            raise PromptError(
                f"Object {number}: the brush layer has shape {brush.shape} but the image is {w}x{h} (H, W = {h}, {w}); "
                "paint on the first frame at its own size."
            )
    if not (any(c.positive for c in prompt.clicks) or prompt.boxes or _brush(prompt).any()):
        raise PromptError(
            f"Object {number} has no positive prompt (only negative clicks or nothing); "
            "add a positive click, a box or a brush stroke on it, or remove the object."
        )


def _box_text(box: Box) -> str:
    return f"({box.x0:g}, {box.y0:g})-({box.x1:g}, {box.y1:g})"


def _brush(prompt: ObjectPrompt) -> np.ndarray:
    return np.zeros((0, 0), bool) if prompt.brush is None else np.asarray(prompt.brush, bool)


def _seed_radius(size: tuple[int, int]) -> int:
    return max(2, round(SEED_RADIUS * min(size)))


def _disks(clicks: Sequence[Click], size: tuple[int, int], radius: int, scale: float = 1.0) -> np.ndarray:
    canvas = np.zeros(size, np.uint8)
    for click in clicks:
        cv2.circle(canvas, (int(click.x * scale), int(click.y * scale)), radius, 1, -1)
    return canvas.astype(bool)


def _marked_pixels(prompt: ObjectPrompt, size: tuple[int, int]) -> np.ndarray:
    """What the user marked directly as this object: brush pixels and positive click seeds."""
    sure = _disks([c for c in prompt.clicks if c.positive], size, _seed_radius(size))
    if prompt.brush is not None:
        sure |= _brush(prompt)
    return sure


def _fallback(prompt: ObjectPrompt, size: tuple[int, int], object_id: int) -> np.ndarray:
    """Never an empty object when the user prompted one: the click seeds, else the boxes themselves."""
    mask = _marked_pixels(prompt, size)
    for box in prompt.boxes:
        b = box.ordered()
        mask[max(0, int(b.y0)) : int(np.ceil(b.y1)), max(0, int(b.x0)) : int(np.ceil(b.x1))] = True
    log.warning("Object %d: the prompt engine found nothing; using the clicked disks / boxes as the mask.", object_id)
    return mask


# --------------------------------------------------------------------------------------------------------------
# GrabCut engine


def grabcut_object(image: np.ndarray, prompt: ObjectPrompt) -> np.ndarray:
    """One object's bool mask (H, W) by GrabCut seeded with its prompt.

    Seeds: a box is "probably foreground" inside and sure background outside; a positive click is a sure-foreground
    disk that GrabCut grows over what looks alike (see ``_seed_map``); negative clicks are sure-background disks;
    brush pixels are sure foreground. Only the connected parts holding a positive click or brush pixel, and each
    box's largest part, are kept: GrabCut's stray specks go.
    """
    size = image.shape[:2]
    brush = _brush(prompt) if prompt.brush is not None else np.zeros(size, bool)
    positives = [c for c in prompt.clicks if c.positive]
    negatives = [c for c in prompt.clicks if not c.positive]
    if not positives and not prompt.boxes:
        return brush.copy()  # a brush stroke alone is taken exactly as painted

    scale = min(1.0, WORK_SIDE / max(size))
    small_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    small = cv2.resize(image, small_size[::-1], interpolation=cv2.INTER_AREA) if scale < 1 else image
    unbounded = [c for c in positives if not any(_inside(c, box) for box in prompt.boxes)]
    alike = _look_alike(small, unbounded, scale) if unbounded else None
    seeds = _seed_map(small, prompt, brush, scale, unbounded, alike)

    top, bottom, left, right = _work_window(seeds)
    window = np.ascontiguousarray(seeds[top:bottom, left:right])
    foreground = _run_grabcut(np.ascontiguousarray(small[top:bottom, left:right]), window)
    found_small = np.zeros(small_size, bool)
    found_small[top:bottom, left:right] = foreground
    if alike is not None:
        found_small = _rescue_lone_seeds(found_small, alike, unbounded, scale)

    if scale < 1:  # bilinear then threshold: smoother edges than nearest on the 640-px result
        found = cv2.resize(found_small.astype(np.float32), size[::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
    else:
        found = found_small
    found &= ~_disks(negatives, size, _seed_radius(size))
    found |= brush
    return _keep_prompted_parts(found, prompt, positives, brush)


def _seed_map(
    image: np.ndarray,
    prompt: ObjectPrompt,
    brush: np.ndarray,
    scale: float,
    unbounded: list[Click],
    alike: np.ndarray | None,
) -> np.ndarray:
    """GrabCut's initial labels on the working copy.

    Outside the boxes is sure background, unless a positive click lies outside every box (or there is no box):
    then the object is not bounded by a box, everything not prompted is only probably background, and the area
    around such clicks (``unbounded``) that looks like them (``alike``) starts as probably foreground.

    Tried and dropped: a square around such a click, probably foreground like a box, sure background outside. It
    fails on objects larger than the square (their colours land in the background model) and, on photos, takes
    in chunks of background; growing alike from the click is predictable, and more clicks or a box extend it.
    """
    size = image.shape[:2]
    h, w = size
    seeds = np.full(size, cv2.GC_BGD, np.uint8)
    for box in prompt.boxes:
        b = box.ordered()
        x0, y0 = max(0, int(b.x0 * scale)), max(0, int(b.y0 * scale))
        x1, y1 = min(w, max(x0 + 1, int(np.ceil(b.x1 * scale)))), min(h, max(y0 + 1, int(np.ceil(b.y1 * scale))))
        seeds[y0:y1, x0:x1] = cv2.GC_PR_FGD

    if unbounded:
        seeds[seeds == cv2.GC_BGD] = cv2.GC_PR_BGD
        # The disk makes sure GrabCut's object model gets more than a few pixels even where alike is tiny.
        grow = _disks(unbounded, size, round(CLICK_REACH * min(size)), scale)
        if alike is not None:
            grow |= alike
        seeds[grow & (seeds == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD
    if brush.any():
        small_brush = cv2.resize(brush.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        seeds[small_brush] = cv2.GC_FGD
    positives = [c for c in prompt.clicks if c.positive]
    negatives = [c for c in prompt.clicks if not c.positive]
    if negatives:
        # A small sure-background disk barely moves GrabCut's colour models; starting the look-alike area around
        # a negative click as background does, so the click removes the part it was put on.
        seeds[_look_alike(image, negatives, scale) & (seeds != cv2.GC_BGD)] = cv2.GC_PR_BGD
    seeds[_disks(positives, size, _seed_radius(size), scale)] = cv2.GC_FGD
    seeds[_disks(negatives, size, _seed_radius(size), scale)] = cv2.GC_BGD
    return seeds


def _inside(click: Click, box: Box) -> bool:
    b = box.ordered()
    return b.x0 <= click.x <= b.x1 and b.y0 <= click.y <= b.y1


def _rescue_lone_seeds(found: np.ndarray, alike: np.ndarray, clicks: Sequence[Click], scale: float) -> np.ndarray:
    """Where GrabCut kept little more than a click's seed disk (its colour models could not tell the object from
    the rest), take the look-alike area around the click instead, as a magic wand would."""
    h, w = found.shape
    seed_area = np.pi * _seed_radius((h, w)) ** 2
    _, parts = cv2.connectedComponents(found.view(np.uint8), connectivity=8)
    _, alike_parts = cv2.connectedComponents(alike.view(np.uint8), connectivity=4)
    areas = np.bincount(parts.ravel())
    found = found.copy()
    for click in clicks:
        y, x = min(h - 1, int(click.y * scale)), min(w - 1, int(click.x * scale))
        if parts[y, x] == 0 or areas[parts[y, x]] < 4 * seed_area:
            log.info(
                "GrabCut kept only the seed of the click at (%g, %g); using the look-alike area.", click.x, click.y
            )
            found |= alike_parts == alike_parts[y, x]
    return found


def _look_alike(image: np.ndarray, clicks: Sequence[Click], scale: float) -> np.ndarray:
    """Pixels connected to a click whose (smoothed) colour is within ``LOOK_ALIKE`` of the clicked colour."""
    h, w = image.shape[:2]
    smooth = cv2.GaussianBlur(image, (5, 5), 0)
    filled = np.zeros((h + 2, w + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    for click in clicks:
        seed = (min(w - 1, int(click.x * scale)), min(h - 1, int(click.y * scale)))
        cv2.floodFill(smooth, filled, seed, 0, (LOOK_ALIKE,) * 3, (LOOK_ALIKE,) * 3, flags)
    return filled[1:-1, 1:-1].astype(bool)


def _work_window(seeds: np.ndarray) -> tuple[int, int, int, int]:
    """The prompted region plus a margin of background for GrabCut to learn from; the rest stays background."""
    ys, xs = np.nonzero(seeds != cv2.GC_BGD)
    h, w = seeds.shape
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    margin_y = max(8, round(CONTEXT_MARGIN * (bottom - top)))
    margin_x = max(8, round(CONTEXT_MARGIN * (right - left)))
    return max(0, top - margin_y), min(h, bottom + margin_y), max(0, left - margin_x), min(w, right + margin_x)


def _run_grabcut(image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Foreground (bool) of GrabCut from ``seeds``; when the seeds leave GrabCut no background to model
    (a box over the whole frame), the window's border is taken as probable background."""
    labels = seeds.copy()
    background = (labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)
    if background.sum() < 64:
        border = np.zeros(labels.shape, bool)
        border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
        labels[border & (labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
    foreground = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if foreground.sum() < 16 or ((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)).sum() < 16:
        return foreground  # too few pixels for GrabCut's colour models to be fitted
    cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's global generator: same prompt, same mask
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    cv2.grabCut(image, labels, None, background_model, foreground_model, 1, cv2.GC_INIT_WITH_MASK)
    for _ in range(GRABCUT_ITERATIONS - 1):
        before = labels.copy()
        cv2.grabCut(image, labels, None, background_model, foreground_model, 1, cv2.GC_EVAL)
        if np.count_nonzero(before != labels) < SETTLED * labels.size:
            break
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _keep_prompted_parts(
    found: np.ndarray, prompt: ObjectPrompt, positives: list[Click], brush: np.ndarray
) -> np.ndarray:
    count, parts = cv2.connectedComponents(found.view(np.uint8), connectivity=8)
    if count <= 2:
        return found
    keep = np.zeros(count, bool)
    for click in positives:
        keep[parts[int(click.y), int(click.x)]] = True
    keep[np.unique(parts[brush])] = True
    areas = np.bincount(parts.ravel(), minlength=count)
    for box in prompt.boxes:
        b = box.ordered()
        inside = parts[max(0, int(b.y0)) : int(np.ceil(b.y1)), max(0, int(b.x0)) : int(np.ceil(b.x1))]
        candidates = np.unique(inside)
        candidates = candidates[candidates != 0]
        if candidates.size:
            keep[candidates[np.argmax(areas[candidates])]] = True
    keep[0] = False
    return keep[parts]


PromptEngine = Callable[[np.ndarray, ObjectPrompt], np.ndarray]
"""``engine(image, prompt) -> bool (H, W)``: one object's mask on the full-size RGB image."""

ENGINES: dict[str, PromptEngine] = {"grabcut": grabcut_object}
