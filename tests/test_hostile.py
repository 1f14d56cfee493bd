"""Hostile and faulty input: bounded decoding (zip bombs, huge images, devices), bounded prompts, options that are
not finite numbers, limits that leave nothing. docs/robustness.md lists every case with its test."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tests.fakes  # noqa: F401 -- registers the fake_* methods
from vos import masks as vmasks
from vos import prompts as vprompts
from vos.methods import OptionError, get_info
from vos.methods.base import PromptError
from vos.video import Clip, DecodeLimits, Limits, VideoError, open_clip

# --------------------------------------------------------------------------------------------------------------
# Files made to hurt


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, rows: int = 0) -> bytes:
    """A valid RGB PNG header of ``width`` x ``height`` whose pixel data holds ``rows`` black rows (0: a token)."""
    squeeze = zlib.compressobj(9)
    row = b"\0" * (width * 3 + 1)
    data = b"".join(squeeze.compress(row) for _ in range(rows)) + squeeze.flush() if rows else zlib.compress(b"\0" * 64)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def frame_png(size=(24, 32), value=90) -> bytes:
    return encode_png(np.full((*size, 3), value, np.uint8))


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# --------------------------------------------------------------------------------------------------------------
# Zip bombs


def test_a_zip_member_declaring_more_than_an_image_file_can_take_is_refused_before_inflating(tmp_path):
    limits = Limits(decode=DecodeLimits(max_pixels=10_000))  # an image file may then take about 1 MiB
    bomb = zip_of(tmp_path / "bomb.zip", {"f/00000.png": frame_png(), "f/00001.png": b"\0" * (4 * 2**20)})
    with pytest.raises(VideoError, match=r"'f/00001.png' inflates to 4.0 MiB, more than the .* an image file"):
        open_clip(bomb, limits)


def test_a_zip_member_inflating_hundreds_of_times_is_refused(tmp_path):
    bomb = zip_of(tmp_path / "bomb.zip", {"00000.png": frame_png(), "00001.png": b"\0" * (16 * 2**20)})
    with pytest.raises(VideoError, match=r"inflates 1,0\d\d times .* more than the 200 times allowed"):
        open_clip(bomb, Limits(decode=DecodeLimits(max_pixels=10**7)))


def test_a_zip_whose_members_together_pass_the_total_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VOS_MAX_DECODED_MB", "0.01")  # 10 KiB, through the documented variable
    noise = np.random.default_rng(0).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)  # PNG cannot squeeze noise
    members = {f"{i:05d}.png": encode_png(frame) for i, frame in enumerate(noise)}
    with pytest.raises(VideoError, match=r"inflate to .* together, more than .*VOS_MAX_DECODED_MB"):
        open_clip(zip_of(tmp_path / "many.zip", members))


def test_a_zip_member_that_inflates_past_what_it_declares_is_cut_off(tmp_path):
    """A central directory can lie: the member is read only up to what it declares, and the CRC then fails."""
    real = frame_png((48, 64))
    path = zip_of(tmp_path / "liar.zip", {"00000.png": frame_png(), "00001.png": real})
    raw = bytearray(path.read_bytes())
    size = struct.pack("<I", len(real))
    small = struct.pack("<I", 100)
    assert raw.count(size) == 2  # the local header and the central directory
    raw = raw.replace(size, small)
    path.write_bytes(bytes(raw))
    with pytest.raises(VideoError, match=r"'00001.png' is damaged"):
        open_clip(path)


def test_a_mask_zip_is_bounded_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setenv("VOS_MAX_FRAME_PIXELS", "10000")
    bomb = zip_of(tmp_path / "gt.zip", {"00000.png": b"\0" * (4 * 2**20)})
    with pytest.raises(vmasks.MaskError, match="inflates to 4.0 MiB"):
        vmasks.read_mask_dir(bomb)


# --------------------------------------------------------------------------------------------------------------
# Huge images and things that are not files


def test_a_huge_png_as_a_clip_is_refused_from_its_header(tmp_path):
    """9000x9000 black pixels in a 240 KB PNG: refused before FFmpeg (which would decode all 243 MB to probe)."""
    path = tmp_path / "big.png"
    path.write_bytes(png_declaring(9000, 9000, rows=9000))
    assert path.stat().st_size < 2**20
    with pytest.raises(VideoError, match=r"9000x9000 pixels, more than the 40,000,000 .*VOS_MAX_FRAME_PIXELS"):
        open_clip(path)


def test_a_png_declaring_ten_billion_pixels_is_refused_as_clip_frame_and_mask(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(VideoError, match="VOS_MAX_FRAME_PIXELS"):
        open_clip(path)
    with pytest.raises(vmasks.MaskError, match="VOS_MAX_FRAME_PIXELS|could be decompression bomb"):
        vmasks.read_palette_png(path)
    zipped = zip_of(tmp_path / "frames.zip", {"00000.png": path.read_bytes()})
    with pytest.raises(VideoError, match="VOS_MAX_FRAME_PIXELS"):
        open_clip(zipped)


def test_frames_and_masks_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("VOS_MAX_FRAME_PIXELS", "500")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i:05d}.png").write_bytes(frame_png((24, 32)))
    with pytest.raises(VideoError, match=r"frame '00000.png' is 32x24 pixels, more than the 500"):
        open_clip(folder)
    mask = vmasks.write_palette_png(np.ones((24, 32), np.uint8), tmp_path / "mask.png")
    with pytest.raises(vmasks.MaskError, match=r"32x24 pixels, more than the 500"):
        vmasks.read_palette_png(mask)


def test_a_device_is_refused_and_never_read(tmp_path):
    with pytest.raises(VideoError, match="not a regular file"):
        open_clip("/dev/zero")
    with pytest.raises(vmasks.MaskError, match="not a regular file"):
        vmasks.read_palette_png("/dev/zero")


def test_a_fifo_or_a_link_to_a_device_among_the_frames_is_never_read(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "00000.png").write_bytes(frame_png())
    os.mkfifo(folder / "00001.png")  # reading it would block for ever
    (folder / "00002.png").symlink_to("/dev/zero")  # reading it would never end
    clip = open_clip(folder)
    assert len(clip) == 1 and len(list(clip.frames())) == 1


def test_bad_decode_limits_from_the_environment_say_which_variable(monkeypatch):
    monkeypatch.setenv("VOS_MAX_FRAME_PIXELS", "lots")
    with pytest.raises(Exception, match=r"\$VOS_MAX_FRAME_PIXELS='lots': expected a positive number"):
        DecodeLimits.from_env()


# --------------------------------------------------------------------------------------------------------------
# Limits and in-memory frames


@pytest.mark.parametrize("field", ["max_side", "max_frames", "max_seconds"])
@pytest.mark.parametrize("value", [0, -1, float("nan")])
def test_limits_that_leave_nothing_are_refused(field, value):
    with pytest.raises(VideoError, match=f"Limits\\({field}=.*must be a positive number"):
        Limits(**{field: value})


def test_from_frames_names_the_dtype_when_only_the_dtype_is_wrong():
    frames = [np.zeros((4, 4, 3), np.float32)]
    with pytest.raises(VideoError, match=r"frame 0 must hold uint8 values \(0-255\), got float32"):
        Clip.from_frames(frames)
    with pytest.raises(VideoError, match=r"frame 1 must be RGB of shape \(4, 4, 3\), got shape \(4, 5, 3\)"):
        Clip.from_frames([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)])


# --------------------------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_float_options_refuse_values_that_are_not_finite(text):
    option = get_info("fake_copy").option("delay")
    with pytest.raises(OptionError, match="must be a finite number"):
        option.parse(text)
    with pytest.raises(OptionError, match="must be a finite number"):
        option.parse(float(text))


# --------------------------------------------------------------------------------------------------------------
# Prompts


def test_objects_json_of_every_malformed_shape_says_where_and_what(monkeypatch):
    cases = {
        "{": "objects must be JSON",
        '{"clicks": []}': "must be a JSON list of objects, got an object",
        "[1]": r"objects\[0\] must be a JSON object",
        '[{"click": [[1, 2]]}]': r"objects\[0\] has unknown keys 'click'",
        '[{"clicks": 5}]': r"objects\[0\].clicks must be a list, got a number",
        '[{"clicks": [[1]]}]': r"objects\[0\].clicks\[0\] must be \[x, y\] or \[x, y, 1 or 0\]",
        '[{"clicks": [["a", 2]]}]': r"clicks\[0\] must be",
        '[{"clicks": [[1, 2, 5]]}]': "the third value must be 1 \\(include\\) or 0 \\(exclude\\)",
        '[{"clicks": [[NaN, 2]]}]': "finite numbers",
        '[{"clicks": [[1e999, 2]]}]': "finite numbers",
        '[{"clicks": [[' + "9" * 400 + ", 2]]}]": "finite numbers",
        '[{"boxes": [[1, 2, 3]]}]': r"objects\[0\].boxes\[0\] must be \[x0, y0, x1, y1\]",
        '[{"boxes": [[true, 2, 3, 4]]}]': "boxes\\[0\\] must be",
    }
    for text, message in cases.items():
        with pytest.raises(PromptError, match=message):
            vprompts.objects_from_json(text)
    parsed = vprompts.objects_from_json('[{"clicks": [[1, 2], [3, 4, 0]], "boxes": [[0, 0, 5, 5]]}]')
    assert parsed[0].clicks == [vprompts.Click(1, 2, True), vprompts.Click(3, 4, False)]
    assert parsed[0].boxes == [vprompts.Box(0, 0, 5, 5)]


def test_prompts_are_bounded_in_objects_marks_and_size(monkeypatch):
    many = json.dumps([{"clicks": [[1, 1]]}] * 300)
    with pytest.raises(PromptError, match=r"300 objects are prompted; at most 20 are allowed \(\$VOS_MAX_OBJECTS\)"):
        vprompts.objects_from_json(many)
    monkeypatch.setenv("VOS_MAX_OBJECTS", "255")
    with pytest.raises(PromptError, match="at most 255"):
        vprompts.objects_from_json(many)
    monkeypatch.setenv("VOS_MAX_OBJECTS", "256")
    with pytest.raises(PromptError, match="VOS_MAX_OBJECTS='256': expected a whole number from 1 to 255"):
        vprompts.max_objects()
    monkeypatch.delenv("VOS_MAX_OBJECTS")
    with pytest.raises(PromptError, match="Object 1 has 51 clicks and boxes; at most 50"):
        vprompts.objects_from_json(json.dumps([{"clicks": [[1, 1]] * 51}]))
    with pytest.raises(PromptError, match="characters long; at most 65,536"):
        vprompts.objects_from_json("[" + " " * 70_000 + "]")


def test_prompts_to_mask_refuses_more_objects_than_allowed_before_running_grabcut(monkeypatch):
    monkeypatch.setattr(vprompts, "ENGINES", {"grabcut": lambda *_: pytest.fail("GrabCut ran")})
    image = np.zeros((32, 32, 3), np.uint8)
    objects = [vprompts.ObjectPrompt(clicks=[vprompts.Click(5, 5)])] * 21
    with pytest.raises(PromptError, match="21 objects are prompted; at most 20"):
        vprompts.prompts_to_mask(image, objects)


def test_every_number_option_of_a_real_method_declares_its_range():
    from vos.methods import available

    unbounded = [
        f"{info.key}.{opt.name}"
        for info in available()
        if not info.key.startswith("fake_")
        for opt in info.options
        if opt.type in (int, float) and opt.choices is None and opt.minimum is None and opt.maximum is None
    ]
    assert unbounded == []
