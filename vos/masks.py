"""Label maps: DAVIS palette PNGs in and out, coloured overlays, and the labelled side-by-side grid.

A label map is a uint8 (H, W) array: 0 is background, 1..K are object ids (not necessarily contiguous: DAVIS
annotations may hold ids 1, 3 and 7). On disk a label map is an indexed ("P" mode) PNG whose palette is the
PASCAL VOC / DAVIS colour map, so pixel index = object id and any image viewer shows the usual colours.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from vos.errors import VosError
from vos.video import DecodeLimits, check_zip_members, natural_key, read_member, require_regular_file

log = logging.getLogger(__name__)

Color = tuple[int, int, int]

MASK_EXTENSIONS = (".png",)
# A grey-level mask whose values all stay below this is read as object ids; above it only 0/255 (binary) is.
MAX_GREY_ID = 64
_SAVE_AS_PALETTE = "save the mask as an indexed (palette) PNG whose pixel values are object ids, as DAVIS does"


class MaskError(VosError, ValueError):
    """A mask file or label map that cannot be used. The message names the file, the problem and the fix."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = Path(path) if path is not None else None
        self.reason = reason
        where = f"{self.path.name}: " if self.path is not None else ""
        super().__init__(f"{where}{reason}")


# --------------------------------------------------------------------------------------------------------------
# Palette


def _build_palette() -> np.ndarray:
    """PASCAL VOC colour map: the bits of the index are dealt round-robin to R, G, B, most significant bit first."""
    index = np.arange(256)
    colours = np.zeros((256, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    table = colours.astype(np.uint8)
    table.setflags(write=False)
    return table


_PALETTE = _build_palette()
# 24-bit packed colour -> id; the construction is a bijection, so every colour has exactly one id.
_PACKED_TO_ID = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(_PALETTE)}


def palette() -> np.ndarray:
    """The (256, 3) uint8 DAVIS colour map: id 1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0)..."""
    return _PALETTE.copy()


# What the app, the MP4 and the presenter draw (files keep the DAVIS palette): the DAVIS colours are dark (object 1
# is (128, 0, 0), lost on a dark cup or a hand in shadow); these are saturated and light enough to read on dark and
# bright footage alike, distinct from each other for the first ten objects, then the DAVIS colours brightened.
_VIVID = [
    (255, 59, 48),
    (52, 199, 89),
    (0, 145, 255),
    (255, 204, 0),
    (191, 90, 242),
    (255, 149, 0),
    (100, 210, 255),
    (255, 55, 145),
    (172, 142, 104),
    (160, 160, 170),
]


def _build_display_palette() -> np.ndarray:
    table = (_PALETTE.astype(np.float32) * 0.55 + 110).round().astype(np.uint8)
    table[0] = 0
    table[1 : 1 + len(_VIVID)] = np.array(_VIVID, np.uint8)
    table.setflags(write=False)
    return table


_DISPLAY = _build_display_palette()


def display_palette() -> np.ndarray:
    """The (256, 3) uint8 colours objects are drawn in (overlays, legends, the brush): id 1 -> (255, 59, 48)..."""
    return _DISPLAY.copy()


def colors_for(ids: Sequence[int] | np.ndarray, colors: Mapping[int, Color] | None = None) -> dict[int, Color]:
    """The display colour of each id: ``colors[id]`` when given, else the display palette's colour."""
    chosen = dict(colors or {})
    return {int(i): tuple(int(c) for c in chosen.get(int(i), _DISPLAY[int(i)])) for i in ids}


def object_ids(label_map: np.ndarray) -> list[int]:
    """The object ids present in a label map, background excluded, ascending."""
    present = np.flatnonzero(np.bincount(np.asarray(label_map, np.uint8).ravel(), minlength=256))
    return [int(i) for i in present if i != 0]


def resize_labels(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map to (H, W): ids are never blended into ids that do not exist."""
    label_map = np.asarray(label_map)
    if label_map.shape[:2] == tuple(size):
        return label_map
    return cv2.resize(label_map, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


# --------------------------------------------------------------------------------------------------------------
# Palette PNG files


def write_palette_png(label_map: np.ndarray, path: str | Path) -> Path:
    """Write a label map as an indexed PNG with the DAVIS palette; atomically, creating parent folders."""
    path = Path(path)
    label_map = _check_label_map(label_map, path)
    image = Image.frombytes("P", (label_map.shape[1], label_map.shape[0]), np.ascontiguousarray(label_map).tobytes())
    # Pillow writes a "P" image that has no palette as a lossy greyscale guess; always attach ours.
    image.putpalette(_PALETTE.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG")
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; a mask is an ordinary file
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _check_label_map(label_map: np.ndarray, path: Path | None = None) -> np.ndarray:
    array = np.asarray(label_map)
    if array.ndim != 2:
        raise MaskError(path, f"a label map must be 2-D (H, W), got shape {array.shape}.")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise MaskError(path, f"a label map must hold integer object ids, got {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise MaskError(path, "object ids must be between 0 and 255 to fit an indexed PNG.")
    return array.astype(np.uint8, copy=False)


def read_palette_png(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image as a label map.

    Accepted: an indexed PNG (index = id); an RGB/RGBA image whose colours are all DAVIS palette colours (fully
    transparent pixels count as background); a grey image of small ids, or a binary 0/255 one (-> ids 0/1).
    ``size`` (H, W), when given, must match.
    """
    path = Path(path)
    if not path.exists():
        raise MaskError(path, f"no such file ({path}).")
    require_regular_file(path, MaskError)
    with path.open("rb") as stream:
        return _decode_mask(stream, path, size)


def _decode_mask(stream: IO[bytes], path: Path, size: tuple[int, int] | None) -> np.ndarray:
    limits = DecodeLimits.from_env()
    try:
        with Image.open(stream) as image:
            if image.width * image.height > limits.max_pixels:
                raise MaskError(
                    path,
                    f"the mask is {image.width}x{image.height} pixels, more than the {limits.max_pixels:,} this server "
                    "decodes ($VOS_MAX_FRAME_PIXELS); make the mask at the clip's size.",
                )
            image.load()
            label_map = _image_to_ids(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise MaskError(path, f"cannot be read as an image ({err}); upload a PNG mask.") from None
    if size is not None:
        check_mask_size(label_map, size, path)
    return label_map


def check_mask_size(label_map: np.ndarray, size: tuple[int, int], path: str | Path | None = None) -> None:
    """Raise a MaskError naming both sizes when ``label_map`` is not (H, W) = ``size``."""
    if label_map.shape[:2] != tuple(size):
        h, w = label_map.shape[:2]
        raise MaskError(
            path,
            f"the mask is {w}x{h} (width x height) but {size[1]}x{size[0]} is expected; "
            "use a mask made for this clip's first frame, at the clip's size.",
        )


def fit_to_size(
    label_map: np.ndarray, size: tuple[int, int], path: str | Path | None = None, *, rescale: bool = True
) -> np.ndarray:
    """``label_map`` at (H, W) = ``size``.

    A mask of another size is an error (naming both sizes), unless ``rescale`` and it has the same aspect ratio:
    then it was made for the clip before the upload limits shrank it, and it is resized (nearest).
    """
    if label_map.shape[:2] == tuple(size):
        return label_map
    if not (rescale and _same_aspect(label_map.shape, size)):
        check_mask_size(label_map, size, path)
    log.info("Resizing the mask %s from %s to %s", Path(path).name if path else "", label_map.shape, size)
    return resize_labels(label_map, size)


def _same_aspect(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal aspect ratios up to the one-pixel rounding of a downscale."""
    return abs(a[0] * b[1] - a[1] * b[0]) <= max(*a[:2], *b[:2])


def _image_to_ids(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        return np.asarray(image, np.uint8).copy()
    if mode == "PA":
        index, alpha = np.asarray(image).transpose(2, 0, 1)
        return np.where(alpha > 0, index, 0).astype(np.uint8)
    if mode == "1":
        return np.asarray(image).astype(np.uint8)
    if mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L"):
        grey = np.asarray(image.getchannel(0) if mode == "LA" else image).astype(np.int64)
        if mode == "LA":
            grey = np.where(np.asarray(image.getchannel("A")) > 0, grey, 0)
        return _grey_to_ids(grey, path)
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB") if mode != "RGB" else image)
        visible = np.asarray(image.getchannel("A")) > 0 if mode == "RGBA" else None
        return _rgb_to_ids(rgb, visible, path)
    raise MaskError(path, f"unsupported image mode {mode!r}; {_SAVE_AS_PALETTE}.")


def _grey_to_ids(grey: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(grey)
    if set(values.tolist()) <= {0, 255} and 255 in values:
        return (grey == 255).astype(np.uint8)
    if values.max() < MAX_GREY_ID:
        return grey.astype(np.uint8)
    shown = ", ".join(str(v) for v in values[values >= MAX_GREY_ID][:5])
    raise MaskError(
        path,
        f"the grey levels ({shown}...) are neither small object ids nor a binary 0/255 mask; {_SAVE_AS_PALETTE}.",
    )


def _rgb_to_ids(rgb: np.ndarray, visible: np.ndarray | None, path: Path) -> np.ndarray:
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    if visible is not None:
        packed = np.where(visible, packed, 0)
    colours, inverse = np.unique(packed, return_inverse=True)
    ids = [_PACKED_TO_ID.get(int(c)) for c in colours]
    if all(i is not None for i in ids):
        return np.asarray(ids, np.uint8)[inverse.reshape(packed.shape)]
    # A grey RGB image (a binary or id mask saved without a palette) reads like a grey one.
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        grey = rgb[..., 0].astype(np.int64)
        return _grey_to_ids(np.where(visible, grey, 0) if visible is not None else grey, path)
    unknown = [int(c) for c, i in zip(colours, ids) if i is None]
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise MaskError(
        path,
        f"the colours {shown}{more} are not DAVIS palette colours (anti-aliasing or JPEG compression adds such "
        f"colours); {_SAVE_AS_PALETTE}.",
    )


def read_mask_dir(path: str | Path, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Every PNG mask of a folder or a zip, as {frame stem: label map}, in natural order.

    All masks must have one size: ``size`` (H, W) when given, else the first mask's.
    """
    path = Path(path)
    if path.is_dir():
        names = [p for p in path.iterdir() if p.is_file() and _is_mask_name(p.name)]
        names.sort(key=lambda p: natural_key(p.name))
        if not names:
            raise MaskError(path, "the folder holds no PNG masks; put one palette PNG per frame in it.")
        masks: dict[str, np.ndarray] = {}
        for file in names:
            masks[file.stem] = read_palette_png(file, size)
            size = size or masks[file.stem].shape
        return masks
    if path.is_file() and zipfile.is_zipfile(path):
        return _read_mask_zip(path, size)
    if path.is_file():
        raise MaskError(path, "expected a folder or a zip of PNG masks.")
    raise MaskError(path, f"no such folder or zip ({path}).")


def _is_mask_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(MASK_EXTENSIONS)


def _read_mask_zip(path: Path, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise MaskError(path, f"not a readable zip archive ({err}).") from None
    with archive:
        members: dict[str, zipfile.ZipInfo] = {}
        for member in archive.infolist():
            pure = PurePosixPath(member.filename.replace("\\", "/"))
            if pure.is_absolute() or ".." in pure.parts:
                raise MaskError(path, f"the zip holds a path that escapes its folder: {member.filename!r}.")
            if member.is_dir() or "__MACOSX" in pure.parts or not _is_mask_name(pure.name):
                continue
            if pure.stem in members:
                raise MaskError(
                    path, f"the zip holds two masks named {pure.stem!r}; put one clip's masks in one folder."
                )
            members[pure.stem] = member
        if not members:
            raise MaskError(path, "the zip holds no PNG masks; put one palette PNG per frame in it.")
        limits = DecodeLimits.from_env()
        check_zip_members(path, list(members.values()), limits, MaskError)
        masks: dict[str, np.ndarray] = {}
        for stem in sorted(members, key=natural_key):
            member = members[stem]
            try:
                data = read_member(archive, member, limits.max_member_bytes)
            except (zipfile.BadZipFile, OSError) as err:
                raise MaskError(path, f"cannot read {member.filename!r} from the zip ({err}).") from None
            try:
                masks[stem] = _decode_mask(io.BytesIO(data), path, size)
            except MaskError as err:
                raise MaskError(path, f"{member.filename}: {err.reason}") from None
            size = size or masks[stem].shape
        return masks


# --------------------------------------------------------------------------------------------------------------
# Overlays and legends


def _color_table(colors: Mapping[int, Color] | None) -> np.ndarray:
    if not colors:
        return _DISPLAY
    table = _DISPLAY.copy()
    for object_id, colour in colors.items():
        table[int(object_id)] = colour
    return table


def _contour_table(table: np.ndarray) -> np.ndarray:
    """An edge shade per colour: darker for light colours, lighter for dark ones, so the edge reads on the fill."""
    colour = table.astype(np.float32)
    luma = colour @ np.array([0.299, 0.587, 0.114], np.float32)
    darker = colour * 0.45
    lighter = colour + (255 - colour) * 0.65
    return np.where((luma > 110)[:, None], darker, lighter).round().astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return image[..., :3]
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")


def object_edges(label_map: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Bool (H, W): object pixels within ``thickness`` pixels of a pixel with another id (background included)."""
    changes = np.zeros(label_map.shape, bool)
    vertical = label_map[1:] != label_map[:-1]
    horizontal = label_map[:, 1:] != label_map[:, :-1]
    changes[1:] |= vertical
    changes[:-1] |= vertical
    changes[:, 1:] |= horizontal
    changes[:, :-1] |= horizontal
    if thickness > 1:
        kernel = np.ones((2 * thickness - 1, 2 * thickness - 1), np.uint8)
        changes = cv2.dilate(changes.view(np.uint8), kernel).view(bool)
    return changes & (label_map > 0)


def overlay(
    frame: np.ndarray,
    label_map: np.ndarray,
    *,
    alpha: float = 0.5,
    contour: bool = True,
    colors: Mapping[int, Color] | None = None,
) -> np.ndarray:
    """The frame with each object's colour blended in (``alpha``) and a thin edge around it; background untouched.

    The label map is resized (nearest) to the frame when their sizes differ.
    """
    frame = _as_rgb(frame)
    label_map = resize_labels(_check_label_map(label_map), frame.shape[:2])
    out = frame.copy()
    inside = label_map > 0
    if not inside.any():
        return out
    table = _color_table(colors)
    ids = label_map[inside]
    blended = frame[inside].astype(np.float32) * (1 - alpha) + table[ids].astype(np.float32) * alpha
    out[inside] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if contour:
        thickness = 1 if min(frame.shape[:2]) < 300 else 2
        edge = object_edges(label_map, thickness)
        out[edge] = _contour_table(table)[label_map[edge]]
    return out


@dataclass(frozen=True)
class LegendEntry:
    id: int
    color: Color
    label: str

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.color)


def legend(
    ids: Sequence[int] | np.ndarray,
    labels: Mapping[int, str] | None = None,
    colors: Mapping[int, Color] | None = None,
) -> list[LegendEntry]:
    """Which colour is which object: one entry per id, labelled ``labels[id]`` or "object <id>"."""
    shown = colors_for(ids, colors)
    names = labels or {}
    return [LegendEntry(i, shown[i], names.get(i, f"object {i}")) for i in shown]


def draw_legend(entries: Sequence[LegendEntry], width: int, *, height: int = 28) -> np.ndarray:
    """A dark strip of colour swatches with their labels, wrapped onto more rows when they do not fit ``width``."""
    font = _font(max(10, height // 2))
    swatch = height // 2
    pad = height // 4
    items = [(e, swatch + pad + int(font.getlength(e.label)) + 2 * pad) for e in entries]
    rows: list[list[tuple[LegendEntry, int]]] = [[]]
    used = pad
    for item in items:
        if rows[-1] and used + item[1] > width:
            rows.append([])
            used = pad
        rows[-1].append(item)
        used += item[1]
    strip = Image.new("RGB", (width, height * len(rows)), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, top = pad, r * height
        for entry, item_width in row:
            y0 = top + (height - swatch) // 2
            draw.rectangle((x, y0, x + swatch - 1, y0 + swatch - 1), fill=entry.color, outline=_TEXT)
            draw.text((x + swatch + pad, top + height // 2), entry.label, font=font, fill=_TEXT, anchor="lm")
            x += item_width
    return np.asarray(strip)


# --------------------------------------------------------------------------------------------------------------
# The side-by-side grid

_BACKGROUND: Color = (22, 23, 28)
_HEADER: Color = (40, 42, 50)
_TEXT: Color = (235, 235, 240)
_STATUS_TEXT: Color = (170, 175, 185)
_FAILED: Color = (185, 32, 38)
_GAP = 4
DEFAULT_TILE_WIDTH = 640  # three columns of these stay within a 1080p-wide video


@dataclass
class Tile:
    """One cell of the grid: an RGB image (None: an empty panel, e.g. a method that failed), its title and status.

    ``ok=False`` marks a failure: the status is shown white on red and the cell gets a red frame.
    """

    image: np.ndarray | None
    title: str
    status: str = ""
    ok: bool = True


@dataclass(frozen=True)
class GridLayout:
    columns: int
    rows: int
    tile_size: tuple[int, int]  # (H, W) of each image area
    title_height: int
    status_height: int
    font_size: int
    size: tuple[int, int]  # (H, W) of the whole grid, even

    @property
    def header_height(self) -> int:
        return self.title_height + self.status_height

    def origin(self, index: int) -> tuple[int, int]:
        """(y, x) of the top-left corner of cell ``index``'s header."""
        row, column = divmod(index, self.columns)
        h, w = self.tile_size
        return _GAP + row * (self.header_height + h + _GAP), _GAP + column * (w + _GAP)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (no files, no network); loaded once per size."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # a Pillow built without FreeType has only the fixed-size bitmap font
        return ImageFont.load_default()


def grid_layout(tiles: Sequence[Tile], *, columns: int | None = None, tile_width: int | None = None) -> GridLayout:
    """Cell size, columns (near-square by default) and header heights for these tiles."""
    if not tiles:
        raise ValueError("compose_grid needs at least one tile")
    count = len(tiles)
    columns = max(1, min(count, columns or math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    first = next((t.image for t in tiles if t.image is not None), None)
    h, w = first.shape[:2] if first is not None else (360, 640)
    width = tile_width or min(w, DEFAULT_TILE_WIDTH)
    width = max(32, width - width % 2)
    height = max(2, round(width * h / w / 2) * 2)
    font_size = int(np.clip(round(width / 30), 11, 20))
    line = font_size + max(6, font_size // 2)
    status_height = line if any(t.status for t in tiles) else 0
    grid_h = _GAP + rows * (line + status_height + height + _GAP)
    grid_w = _GAP + columns * (width + _GAP)
    return GridLayout(columns, rows, (height, width), line, status_height, font_size, (grid_h + grid_h % 2, grid_w))


@functools.lru_cache(maxsize=512)
def _header(title: str, status: str, ok: bool, layout: GridLayout) -> np.ndarray:
    """A cell's title bar and status line, rendered once and reused for every frame of a video."""
    width = layout.tile_size[1]
    font = _font(layout.font_size)
    bar = Image.new("RGB", (width, layout.header_height), _HEADER)
    draw = ImageDraw.Draw(bar)
    pad = max(4, layout.font_size // 2)
    draw.text((pad, layout.title_height // 2), _fit(title, font, width - 2 * pad), font=font, fill=_TEXT, anchor="lm")
    if layout.status_height:
        top = layout.title_height
        if not ok:
            draw.rectangle((0, top, width, top + layout.status_height), fill=_FAILED)
        colour = _TEXT if not ok else _STATUS_TEXT
        text = _fit(status, font, width - 2 * pad)
        draw.text((pad, top + layout.status_height // 2), text, font=font, fill=colour, anchor="lm")
    array = np.asarray(bar)
    array.setflags(write=False)
    return array


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """``text`` cut with an ellipsis so that it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(text[:middle] + "…") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…"


def _fit_image(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """``image`` scaled to fit (H, W) with its aspect ratio kept, and its (y, x) offset to centre it."""
    image = _as_rgb(image)
    h, w = image.shape[:2]
    scale = min(size[0] / h, size[1] / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)
    return image, (size[0] - new_h) // 2, (size[1] - new_w) // 2


def compose_grid(
    tiles: Sequence[Tile],
    *,
    columns: int | None = None,
    tile_width: int | None = None,
    layout: GridLayout | None = None,
) -> np.ndarray:
    """One uint8 RGB image of the tiles in a grid, each under its title and status line; even width and height.

    Cells share the first image's aspect ratio and ``tile_width`` (default: the first image's width, at most
    640); other shapes are letterboxed. For a video, build ``layout = grid_layout(tiles, ...)`` once and pass it
    for every frame (headers are cached either way).
    """
    layout = layout or grid_layout(tiles, columns=columns, tile_width=tile_width)
    if len(tiles) > layout.columns * layout.rows:
        raise ValueError(f"the layout holds {layout.columns * layout.rows} tiles, got {len(tiles)}")
    canvas = np.empty((*layout.size, 3), np.uint8)
    canvas[:] = _BACKGROUND
    tile_h, tile_w = layout.tile_size
    for index, tile in enumerate(tiles):
        y, x = layout.origin(index)
        canvas[y : y + layout.header_height, x : x + tile_w] = _header(tile.title, tile.status, tile.ok, layout)
        top = y + layout.header_height
        if tile.image is not None:
            image, dy, dx = _fit_image(tile.image, layout.tile_size)
            canvas[top + dy : top + dy + image.shape[0], x + dx : x + dx + image.shape[1]] = image
        if not tile.ok:
            frame = max(2, layout.font_size // 6)
            cell = canvas[top : top + tile_h, x : x + tile_w]
            cell[:frame], cell[-frame:], cell[:, :frame], cell[:, -frame:] = _FAILED, _FAILED, _FAILED, _FAILED
    return canvas
