from __future__ import annotations

import io
import os
import re
import stat
import struct
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vos.synthetic import moving_shapes
from vos.video import Clip, Limits, VideoError, _clearly_short, fit_within, natural_key, open_clip, write_mp4


def gradient_frames(n: int = 10, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """Frames whose mean brightness encodes the index, so order survives lossy encoding."""
    h, w = size
    return [np.full((h, w, 3), 20 + (220 * i) // max(1, n - 1), np.uint8) for i in range(n)]


def encode_with_pyav(path: Path, frames: list[np.ndarray], codec: str, fps: int = 10, pix_fmt: str = "yuv420p"):
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mp4", "libx264"), (".mkv", "libx264"), (".mov", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx")],
)
def test_open_video_formats(tmp_path, suffix, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec}")
    frames = gradient_frames()
    path = tmp_path / f"clip{suffix}"
    encode_with_pyav(path, frames, codec)
    clip = open_clip(path)
    assert clip.num_frames == 10
    assert clip.size == (48, 64)
    assert clip.fps == pytest.approx(10)
    decoded = list(clip.frames())
    assert len(decoded) == 10
    means = [f.mean() for f in decoded]
    assert means == sorted(means)  # order kept
    assert abs(means[3] - frames[3].mean()) < 6


def test_write_mp4_is_browser_h264(tmp_path):
    frames = [f[:47, :63] for f in gradient_frames(6)]  # odd sizes must be padded to even
    path = write_mp4(frames, tmp_path / "out.mp4", fps=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.format.name == "yuv420p"
        assert (stream.width, stream.height) == (64, 48)
        assert len(list(container.decode(stream))) == 6
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_write_mp4_failure_leaves_nothing(tmp_path):
    def broken():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_mp4(broken(), tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


def test_frames_are_lazy_and_round_trip(tmp_path):
    synthetic = moving_shapes(8, (40, 56))
    path = write_mp4(synthetic.frames, tmp_path / "shapes.mp4", fps=8)
    clip = open_clip(path)
    iterator = clip.frames()
    first = next(iterator)
    assert first.shape == (40, 56, 3) and first.dtype == np.uint8
    assert np.abs(first.astype(int) - synthetic.frames[0]).mean() < 8
    assert np.abs(clip.frame(5).astype(int) - synthetic.frames[5]).mean() < 8


def test_limits_downscale_and_truncate(tmp_path):
    path = write_mp4(gradient_frames(20, (60, 100)), tmp_path / "c.mp4", fps=10)
    clip = open_clip(path, Limits(max_side=50, max_frames=12, max_seconds=0.8))
    assert clip.num_frames == 8  # 0.8 s at 10 fps beats the frame limit
    assert clip.size == (30, 50)
    assert clip.native_size == (60, 100)
    assert len(list(clip.frames())) == 8
    assert next(clip.frames()).shape == (30, 50, 3)
    assert any("Downscaled from 100x60 to 50x30" in n for n in clip.notes)
    assert any("Kept the first 8" in n for n in clip.notes)


def test_work_size_keeps_output_size():
    clip = Clip.from_frames(gradient_frames(3, (120, 160))).with_max_side(80)
    assert clip.size == (120, 160)
    assert clip.work_size == (60, 80)
    assert next(clip.frames()).shape == (60, 80, 3)
    assert next(clip.output_frames()).shape == (120, 160, 3)
    assert clip.first_frame().shape == (120, 160, 3)


def test_fit_within_keeps_aspect():
    assert fit_within((1080, 1920), 480) == (270, 480)
    assert fit_within((480, 854), 1000) == (480, 854)
    assert fit_within((1920, 1080), 640) == (640, 360)


def test_natural_sort():
    names = ["f10.png", "f2.png", "F1.png", "f100.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f2.png", "f10.png", "f100.png"]


def save_frames(folder: Path, frames: list[np.ndarray], names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names):
        Image.fromarray(frame).save(folder / name)


def test_folder_of_frames_natural_order(tmp_path):
    frames = gradient_frames(11)
    names = [f"frame{i}.png" for i in range(11)]
    save_frames(tmp_path / "seq", frames, names)
    (tmp_path / "seq" / "notes.txt").write_text("ignored")
    clip = open_clip(tmp_path / "seq")
    assert clip.num_frames == 11 and clip.fps == 24
    decoded = list(clip.frames())
    assert [int(f[0, 0, 0]) for f in decoded] == [int(f[0, 0, 0]) for f in frames]


def test_zip_of_frames(tmp_path):
    frames = gradient_frames(4)
    save_frames(tmp_path / "seq", frames, [f"{i:05d}.jpg" for i in range(4)])
    archive = tmp_path / "seq.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((tmp_path / "seq").iterdir()):
            zf.write(p, f"bear/{p.name}")
        zf.writestr("__MACOSX/bear/._00000.jpg", b"junk")
    clip = open_clip(archive, fps=12)
    assert clip.num_frames == 4 and clip.fps == 12
    assert abs(float(clip.frame(2).mean()) - frames[2].mean()) < 3


def test_zip_escaping_paths_rejected(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.png", b"x")
    with pytest.raises(VideoError, match="escapes"):
        open_clip(archive)


def test_zip_without_images_rejected(tmp_path):
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(VideoError, match="no .*frames"):
        open_clip(archive)


def test_corrupt_and_truncated_videos(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoError) as err:
        open_clip(junk)
    assert "junk.mp4" in str(err.value) and "decodable" in str(err.value)

    good = write_mp4(gradient_frames(10), tmp_path / "good.mp4")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match="truncated.mp4"):
        open_clip(truncated)

    with pytest.raises(VideoError, match="not found"):
        open_clip(tmp_path / "missing.mp4")


def test_unreadable_frame_in_folder_fails_at_open(tmp_path):
    save_frames(tmp_path / "seq", gradient_frames(2), ["0.png", "1.png"])
    (tmp_path / "seq" / "2.png").write_bytes(b"broken")
    with pytest.raises(VideoError, match=r"'2.png' is not a readable image \(not a JPG or PNG"):
        open_clip(tmp_path / "seq")
    # A frame past the frame limit is never used, so it is not read either.
    assert open_clip(tmp_path / "seq", Limits(max_frames=2)).num_frames == 2


def test_frames_of_different_sizes_rejected_at_open(tmp_path):
    folder = tmp_path / "seq"
    save_frames(folder, gradient_frames(1, (40, 40)) + gradient_frames(1, (30, 40)), ["0.png", "1.png"])
    with pytest.raises(VideoError, match="'1.png' is 40x30 but the first frame is 40x40.*same size"):
        open_clip(folder)


def test_truncated_png_in_folder_fails_at_open(tmp_path):
    folder = tmp_path / "seq"
    save_frames(folder, gradient_frames(3), ["0.png", "1.png", "2.png"])
    data = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(data[: len(data) - 20])  # header intact, end cut off
    with pytest.raises(VideoError, match="'1.png' is not a readable image"):
        open_clip(folder)


# ---- truncated videos


def noise_frames(n: int, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """Frames that barely compress, so every frame holds a similar share of the file and a cut loses frames."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"cut_{path.name}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_video_cut_in_half_is_refused(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    if suffix == ".mp4":
        write_mp4(noise_frames(60), path, fps=10)  # our own writer: moov first, so the cut file still opens
    else:
        encode_with_pyav(path, noise_frames(60), "libx264")
    truncated = cut(path, 0.5)
    with pytest.raises(VideoError) as err:
        open_clip(truncated)
    message = str(err.value)
    assert message.startswith(f"cut_clip{suffix}: ")
    assert "looks truncated" in message
    assert re.search(r"decoded \d+ of the 60 frames the file declares", message)
    # The complete file is fine.
    assert open_clip(path).num_frames == 60


def test_truncation_within_the_callers_limit_is_not_an_error(tmp_path):
    truncated = cut(write_mp4(noise_frames(60), tmp_path / "clip.mp4", fps=10), 0.5)
    clip = open_clip(truncated, Limits(max_frames=5))
    assert clip.num_frames == 5 and len(list(clip.frames())) == 5
    clip = open_clip(truncated, Limits(max_seconds=1.0))
    assert clip.num_frames == 10


def test_a_few_frames_short_is_kept_with_a_note(tmp_path):
    path = write_mp4(noise_frames(60), tmp_path / "clip.mp4", fps=10)
    clip = open_clip(cut(path, 0.99))
    assert 54 <= clip.num_frames < 60
    assert len(list(clip.frames())) == clip.num_frames
    assert any(f"Decoding stopped after {clip.num_frames} frames of the 60" in note for note in clip.notes)
    assert open_clip(path).notes == []  # a complete file gets no such note


@pytest.mark.parametrize(
    ("decoded", "declared", "short"),
    [(60, 60, False), (58, 60, False), (55, 60, False), (50, 60, True), (8, 10, False), (7, 10, True), (1, 3, False)],
)
def test_truncation_tolerance(decoded, declared, short):
    assert _clearly_short(decoded, declared) is short


# ---- damaged zips


def frames_zip(path: Path, n: int = 3, *, size=(48, 64), compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for i, frame in enumerate(gradient_frames(n, size)):
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="PNG")
            zf.writestr(f"seq/{i:05d}.png", buffer.getvalue())
    return path


def patch_headers(path: Path, member: str, *, flag: int | None = None, method: int | None = None) -> None:
    """Rewrite one member's flag bits or compression method in both its local and its central header."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, flag_at, method_at, name_at in ((b"PK\x03\x04", 6, 8, 30), (b"PK\x01\x02", 8, 10, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + name_at : start + name_at + len(name)] == name:
                if flag is not None:
                    data[start + flag_at : start + flag_at + 2] = struct.pack("<H", flag)
                if method is not None:
                    data[start + method_at : start + method_at + 2] = struct.pack("<H", method)
            start += 4
    path.write_bytes(bytes(data))


def test_zip_member_with_bad_crc(tmp_path):
    archive = frames_zip(tmp_path / "frames.zip")
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("seq/00001.png")
        payload = zf.read(info)
    data = bytearray(archive.read_bytes())
    at = data.find(payload) + len(payload) // 2
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"frames.zip: member 'seq/00001.png' is damaged \(Bad CRC-32"):
        open_clip(archive)


def test_encrypted_zip_member(tmp_path):
    archive = frames_zip(tmp_path / "frames.zip")
    patch_headers(archive, "seq/00002.png", flag=0x1)
    with pytest.raises(VideoError, match="member 'seq/00002.png' is encrypted.*without a password"):
        open_clip(archive)


def test_zip_member_with_unknown_compression(tmp_path):
    archive = frames_zip(tmp_path / "frames.zip")
    patch_headers(archive, "seq/00000.png", method=99)  # 99: WinZip AES, which zipfile cannot read
    with pytest.raises(VideoError, match="member 'seq/00000.png' uses a compression.*re-zip"):
        open_clip(archive)


def test_zip_frames_checked_at_open(tmp_path):
    def png(frame: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        return buffer.getvalue()

    sizes = tmp_path / "sizes.zip"
    with zipfile.ZipFile(sizes, "w") as zf:
        for i, frame in enumerate(gradient_frames(2) + gradient_frames(1, (30, 40))):
            zf.writestr(f"{i}.png", png(frame))
    with pytest.raises(VideoError, match="sizes.zip: frame '2.png' is 40x30 but the first frame is 64x48"):
        open_clip(sizes)
    assert open_clip(sizes, Limits(max_frames=2)).num_frames == 2

    unreadable = tmp_path / "unreadable.zip"
    with zipfile.ZipFile(unreadable, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("0.png", png(gradient_frames(1)[0]))
        zf.writestr("1.png", b"not an image")
    with pytest.raises(VideoError, match="unreadable.zip: frame '1.png' is not a readable image"):
        open_clip(unreadable)

    good = frames_zip(tmp_path / "good.zip", compression=zipfile.ZIP_DEFLATED)
    assert len(list(open_clip(good).frames())) == 3


def test_zip_damaged_after_opening_fails_with_a_message(tmp_path):
    archive = frames_zip(tmp_path / "frames.zip")
    clip = open_clip(archive)
    archive.write_bytes(b"gone")
    with pytest.raises(VideoError, match="frames.zip: not a readable zip archive"):
        list(clip.frames())


# ---- provenance and permissions


def test_clip_info_records_an_absolute_source(tmp_path, monkeypatch):
    write_mp4(gradient_frames(3), tmp_path / "c.mp4")
    monkeypatch.chdir(tmp_path)
    info = open_clip("c.mp4").info()
    assert info["source"] == str(tmp_path / "c.mp4")


def test_write_mp4_makes_an_ordinary_file(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_mp4(gradient_frames(3), tmp_path / "out.mp4")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
