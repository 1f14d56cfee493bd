"""Palette PNG files, mask folders and zips, overlays and the comparison grid."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from vos import masks
from vos.errors import VosError
from vos.masks import MaskError, Tile


def label_map_with(ids: list[int], size: tuple[int, int] = (40, 60)) -> np.ndarray:
    """Vertical bands, one per id (0 first), so every id is present."""
    label_map = np.zeros(size, np.uint8)
    bands = np.array_split(np.arange(size[1]), len(ids) + 1)
    for object_id, band in zip(ids, bands[1:]):
        label_map[:, band] = object_id
    return label_map


# ---- palette


def test_palette_known_colours():
    table = masks.palette()
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[0].tolist() == [0, 0, 0]
    assert table[1].tolist() == [128, 0, 0]
    assert table[2].tolist() == [0, 128, 0]
    assert table[3].tolist() == [128, 128, 0]
    assert table[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in table}) == 256  # one id per colour: RGB masks map back unambiguously


def test_palette_is_a_copy():
    masks.palette()[1] = 0
    assert masks.palette()[1].tolist() == [128, 0, 0]


def test_round_trip_non_contiguous_ids(tmp_path):
    label_map = label_map_with([1, 3, 7])
    path = masks.write_palette_png(label_map, tmp_path / "deep" / "folder" / "00000.png")
    assert path.exists() and not list(path.parent.glob("*.part"))
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]
    back = masks.read_palette_png(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, label_map)
    assert masks.object_ids(back) == [1, 3, 7]


def test_write_rejects_bad_label_maps(tmp_path):
    with pytest.raises(MaskError, match="2-D"):
        masks.write_palette_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
    with pytest.raises(MaskError, match="between 0 and 255"):
        masks.write_palette_png(np.full((4, 4), 300, np.int32), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_rgb_png_with_palette_colours_reads_as_ids(tmp_path):
    label_map = label_map_with([1, 2, 5])
    Image.fromarray(masks.palette()[label_map]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(masks.read_palette_png(tmp_path / "rgb.png"), label_map)


def test_rgba_png_transparent_pixels_are_background(tmp_path):
    label_map = label_map_with([2])
    rgba = np.concatenate([masks.palette()[label_map], np.full((*label_map.shape, 1), 255, np.uint8)], axis=2)
    rgba[:, :5] = (10, 200, 30, 0)  # an unknown colour, but invisible
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    expected = label_map.copy()
    expected[:, :5] = 0
    np.testing.assert_array_equal(masks.read_palette_png(tmp_path / "rgba.png"), expected)


def test_rgb_png_with_unknown_colour_names_it(tmp_path):
    rgb = masks.palette()[label_map_with([1])]
    rgb[3:6, 3:6] = (12, 34, 56)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(MaskError) as caught:
        masks.read_palette_png(tmp_path / "odd.png")
    message = str(caught.value)
    assert "(12, 34, 56)" in message and "odd.png" in message and "palette" in message
    assert isinstance(caught.value, VosError) and isinstance(caught.value, ValueError)


def test_grey_masks_binary_and_small_ids(tmp_path):
    binary = np.zeros((10, 12), np.uint8)
    binary[2:5, 3:9] = 255
    Image.fromarray(binary).save(tmp_path / "binary.png")
    np.testing.assert_array_equal(masks.read_palette_png(tmp_path / "binary.png"), binary // 255)
    ids = label_map_with([1, 2, 4], (10, 12))
    Image.fromarray(ids).save(tmp_path / "ids.png")
    np.testing.assert_array_equal(masks.read_palette_png(tmp_path / "ids.png"), ids)
    Image.fromarray(binary > 0).save(tmp_path / "bits.png")  # mode "1"
    np.testing.assert_array_equal(masks.read_palette_png(tmp_path / "bits.png"), binary // 255)
    soft = binary.copy()
    soft[2, 3] = 128  # anti-aliased edge: neither ids nor binary
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.raises(MaskError, match="128"):
        masks.read_palette_png(tmp_path / "soft.png")


def test_wrong_size_names_both_sizes(tmp_path):
    path = masks.write_palette_png(label_map_with([1], (40, 60)), tmp_path / "m.png")
    assert masks.read_palette_png(path, size=(40, 60)).shape == (40, 60)
    with pytest.raises(MaskError) as caught:
        masks.read_palette_png(path, size=(48, 64))
    assert "60x40" in str(caught.value) and "64x48" in str(caught.value)


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(MaskError, match="broken.png"):
        masks.read_palette_png(tmp_path / "broken.png")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(MaskError, match="cannot be read as an image"):
        masks.read_palette_png(tmp_path / "notes.png")
    with pytest.raises(MaskError, match="no such file"):
        masks.read_palette_png(tmp_path / "absent.png")


# ---- folders and zips


def write_frames(folder, stems):
    for number, stem in enumerate(stems, start=1):
        masks.write_palette_png(label_map_with([number], (8, 10)), folder / f"{stem}.png")


def test_read_mask_dir_folder_natural_order(tmp_path):
    write_frames(tmp_path, ["frame10", "frame2", "frame1"])
    (tmp_path / "notes.txt").write_text("ignored")
    found = masks.read_mask_dir(tmp_path)
    assert list(found) == ["frame1", "frame2", "frame10"]
    assert masks.object_ids(found["frame10"]) == [1]  # frame10 was written first, with id 1
    with pytest.raises(MaskError, match="folder or a zip"):
        masks.read_mask_dir(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskError, match="no PNG masks"):
        masks.read_mask_dir(tmp_path / "empty")


def test_read_mask_dir_requires_one_size(tmp_path):
    masks.write_palette_png(label_map_with([1], (8, 10)), tmp_path / "0.png")
    masks.write_palette_png(label_map_with([1], (9, 10)), tmp_path / "1.png")
    with pytest.raises(MaskError, match="1.png"):
        masks.read_mask_dir(tmp_path)


def test_read_mask_dir_zip(tmp_path):
    write_frames(tmp_path / "src", ["00010", "00002"])
    archive = tmp_path / "masks.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in (tmp_path / "src").iterdir():
            zipped.write(file, f"clip/{file.name}")
        zipped.writestr("__MACOSX/clip/._00002.png", b"resource fork")
    found = masks.read_mask_dir(archive)
    assert list(found) == ["00002", "00010"]
    np.testing.assert_array_equal(found["00010"], label_map_with([1], (8, 10)))
    with zipfile.ZipFile(archive, "a") as zipped:
        zipped.writestr("clip/00011.png", b"not an image")
    with pytest.raises(MaskError, match=r"masks\.zip: clip/00011\.png: cannot be read"):
        masks.read_mask_dir(archive)


def test_read_mask_dir_zip_escape_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    good = tmp_path / "good.png"
    masks.write_palette_png(label_map_with([1], (8, 10)), good)
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(good, "00000.png")
        zipped.write(good, "../evil.png")
    with pytest.raises(MaskError, match="escapes"):
        masks.read_mask_dir(archive)


# ---- overlays


def test_overlay_blends_objects_and_draws_contours():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    label_map = np.zeros((60, 80), np.uint8)
    label_map[20:40, 20:50] = 2
    out = masks.overlay(frame, label_map, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    background = label_map == 0
    np.testing.assert_array_equal(out[background], frame[background])
    colour = masks.display_palette()[2].astype(int)
    interior = (slice(22, 38), slice(22, 48))
    before = np.abs(frame[interior].astype(int) - colour).sum(axis=2)
    after = np.abs(out[interior].astype(int) - colour).sum(axis=2)
    assert (after < before).all()  # every object pixel moved toward the palette colour
    edge_row = out[20, 25:45].astype(int)
    assert (np.abs(edge_row - edge_row[0]).max()) == 0  # one solid contour colour along the boundary
    assert not np.array_equal(edge_row[0], colour)  # ...a shade that differs from the fill colour
    assert masks.overlay(frame, label_map, contour=False)[20, 25:45].tolist() != edge_row.tolist()


def test_overlay_resizes_label_map_and_honours_colours():
    frame = np.full((40, 60, 3), 100, np.uint8)
    small = np.zeros((20, 30), np.uint8)
    small[5:15, 5:15] = 1
    out = masks.overlay(frame, small, alpha=1.0, contour=False, colors={1: (0, 0, 255)})
    assert out.shape == (40, 60, 3)
    assert out[20, 20].tolist() == [0, 0, 255]
    assert out[35, 50].tolist() == [100, 100, 100]


def test_legend_entries_and_strip():
    entries = masks.legend([1, 3], labels={3: "extra segment"})
    assert [(e.id, e.color, e.label) for e in entries] == [
        (1, (255, 59, 48), "object 1"),
        (3, (0, 145, 255), "extra segment"),
    ]
    assert entries[0].hex == "#ff3b30"
    strip = masks.draw_legend(entries, 200)
    assert strip.shape[1] == 200 and strip.dtype == np.uint8
    assert (strip == masks.display_palette()[3]).all(axis=2).any()  # the swatch is drawn


# ---- the grid


def solid(colour, size=(30, 40)):
    return np.full((*size, 3), colour, np.uint8)


def test_compose_grid_places_tiles_and_has_even_size():
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]
    tiles = [Tile(solid(c), f"method {i}", status="12.3 fps · 812 MiB") for i, c in enumerate(colours)]
    layout = masks.grid_layout(tiles, tile_width=81)
    grid = masks.compose_grid(tiles, layout=layout)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    assert grid.shape[0] % 2 == 0 and grid.shape[1] % 2 == 0
    assert (layout.columns, layout.rows) == (3, 2)  # near-square for five tiles
    tile_h, tile_w = layout.tile_size
    for index, colour in enumerate(colours):
        y, x = layout.origin(index)
        y += layout.header_height
        centre = grid[y + tile_h // 2, x + tile_w // 2]
        assert centre.tolist() == list(colour), index
    # The sixth cell is empty: only the dark background there.
    y, x = layout.origin(5)
    assert (grid[y + layout.header_height + tile_h // 2, x + tile_w // 2] < 40).all()
    np.testing.assert_array_equal(masks.compose_grid(tiles, tile_width=81), grid)


def test_compose_grid_marks_failed_tiles():
    image = solid((90, 90, 90), (36, 64))
    ok = masks.compose_grid([Tile(image, "a", "out of memory", ok=True)], tile_width=128)
    failed = masks.compose_grid([Tile(image, "a", "out of memory", ok=False)], tile_width=128)
    layout = masks.grid_layout([Tile(image, "a", "out of memory")], tile_width=128)
    y, x = layout.origin(0)
    status = (slice(y + layout.title_height, y + layout.header_height), slice(x, x + layout.tile_size[1]))
    red = failed[status].astype(int)
    assert (red[..., 0] - red[..., 1] > 100).mean() > 0.5  # the status line is red
    assert not ((ok[status][..., 0].astype(int) - ok[status][..., 1]) > 100).any()
    assert masks.compose_grid([Tile(None, "b", "failed: weights missing", ok=False)], tile_width=64).shape[1] > 64


def test_compose_grid_letterboxes_other_shapes_and_columns():
    tiles = [Tile(solid((200, 0, 0), (30, 40)), "input"), Tile(solid((0, 200, 0), (40, 40)), "square")]
    layout = masks.grid_layout(tiles, columns=1, tile_width=40)
    assert (layout.columns, layout.rows) == (1, 2)
    grid = masks.compose_grid(tiles, layout=layout)
    y, x = layout.origin(1)
    y += layout.header_height
    assert grid[y + 15, x + 20].tolist() == [0, 200, 0]
    assert (grid[y + 15, x + 2] < 40).all()  # a square image in a 4:3 cell leaves bars at the sides
