"""Clips in, MP4s out.

A ``Clip`` is a video file (decoded with PyAV), a folder or a zip of JPG/PNG frames (natural sort), or frames
held in memory. Frames are decoded lazily, one at a time. Limits on the long side, the number of frames and the
duration are applied when the clip is opened, and what was changed is reported in ``clip.notes``.

Two sizes matter: ``clip.size`` is the clip's size after the upload limits, the size every result is returned
at; ``clip.work_size`` is what ``clip.frames()`` yields, smaller when a run asks for a lower working resolution
(``clip.with_max_side``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import secrets
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Protocol

import av
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vos.errors import VosError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".ogv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 24.0  # DAVIS and YouTube-VOS frames carry no rate; 24 is DAVIS's


class VideoError(VosError, ValueError):
    """A clip that cannot be used. The message names the file and the reason and is meant for the user."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = Path(path) if path is not None else None
        self.reason = reason
        where = f"{self.path.name}: " if self.path is not None else ""
        super().__init__(f"{where}{reason}")


def env_number(name: str, default: float) -> float:
    """A positive number from the environment, or ``default`` when unset; a bad value is the operator's error."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise VosError(f"${name}={text!r}: expected a positive number (unset it for the default, {default:g}).")
    return value


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding an upload may cost, whatever the upload limits: every clip, mask and frame zip is checked
    against these before (declared sizes) and while (actual bytes) it is decoded, so that a small file that
    inflates to gigabytes (a zip bomb, a PNG of 100000x100000 pixels) is refused instead of filling the memory.

    From the environment: $VOS_MAX_FRAME_PIXELS (pixels of one decoded frame or mask, default 40 million, a bit
    more than 8K), $VOS_MAX_DECODED_MB (bytes inflated from one zip, all members together, default 4096) and
    $VOS_MAX_ZIP_RATIO (how many times larger a member may inflate than it is stored, default 200)."""

    max_pixels: int = 40_000_000
    max_zip_bytes: int = 4096 * 2**20
    max_ratio: float = 200.0

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_zip_bytes", "max_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"DecodeLimits.{name} must be a positive number, got {value!r}.")

    @classmethod
    def from_env(cls) -> DecodeLimits:
        return cls(
            max_pixels=int(env_number("VOS_MAX_FRAME_PIXELS", cls.max_pixels)),
            max_zip_bytes=int(env_number("VOS_MAX_DECODED_MB", cls.max_zip_bytes / 2**20) * 2**20),
            max_ratio=env_number("VOS_MAX_ZIP_RATIO", cls.max_ratio),
        )

    @property
    def max_member_bytes(self) -> int:
        """The largest image file worth reading: an image file bigger than its raw 16-bit RGBA pixels (8 bytes a
        pixel) at the pixel limit is no frame. A small allowance covers headers and metadata."""
        return min(self.max_zip_bytes, 8 * self.max_pixels + 2**20)

    def check_pixels(self, path: Path | str | None, width: int, height: int, what: str) -> None:
        """Refuse an image or video frame whose header declares more pixels than ``max_pixels``, before decoding."""
        if width * height > self.max_pixels:
            raise VideoError(
                path,
                f"{what} is {width}x{height} pixels, more than the {self.max_pixels:,} this server decodes "
                "($VOS_MAX_FRAME_PIXELS); downscale it before uploading.",
            )


# Compressed data this small cannot inflate into trouble; the ratio cap would only catch flat test images.
_RATIO_FLOOR = 8 * 2**20


def check_zip_members(path: Path, members: Sequence[zipfile.ZipInfo], limits: DecodeLimits, error=None) -> None:
    """Refuse a zip whose members, as declared in its directory, would inflate past ``limits``: one member larger
    than an image file can be, all of them together past $VOS_MAX_DECODED_MB, or a member that inflates more than
    $VOS_MAX_ZIP_RATIO times (the mark of a zip bomb). ``read_member`` checks the actual bytes while inflating,
    since a directory can lie. ``error`` builds the exception (default VideoError)."""
    error = error or VideoError
    total = 0
    for member in members:
        if member.file_size > limits.max_member_bytes:
            raise error(
                path,
                f"the zip member {member.filename!r} inflates to {_mib(member.file_size)}, more than the "
                f"{_mib(limits.max_member_bytes)} an image file may take here; zip the frames as JPG or PNG files.",
            )
        if member.file_size > _RATIO_FLOOR and member.file_size > limits.max_ratio * max(1, member.compress_size):
            raise error(
                path,
                f"the zip member {member.filename!r} inflates {member.file_size / max(1, member.compress_size):,.0f}"
                f" times ({_mib(member.compress_size)} to {_mib(member.file_size)}), more than the "
                f"{limits.max_ratio:g} times allowed ($VOS_MAX_ZIP_RATIO); this is no zip of image frames.",
            )
        total += member.file_size
    if total > limits.max_zip_bytes:
        raise error(
            path,
            f"the zip's files inflate to {_mib(total)} together, more than the {_mib(limits.max_zip_bytes)} "
            "allowed ($VOS_MAX_DECODED_MB); send fewer or smaller frames.",
        )


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo | str, limit: int) -> bytes:
    """A member's bytes, inflating at most ``limit`` of them: a member that gives more than it declares (or more
    than ``limit``) raises zipfile.BadZipFile instead of filling the memory."""
    info = member if isinstance(member, zipfile.ZipInfo) else archive.getinfo(member)
    with archive.open(info) as stream:
        data = stream.read(min(limit, info.file_size) + 1)
    if len(data) > min(limit, info.file_size):
        raise zipfile.BadZipFile(f"member {info.filename!r} inflates past its declared {info.file_size} bytes")
    return data


def _mib(size: int) -> str:
    """A byte count for a message: KiB, MiB or GiB, whichever reads best."""
    if size < 2**20:
        return f"{size / 2**10:,.1f} KiB"
    return f"{size / 2**20:,.1f} MiB" if size < 2**30 else f"{size / 2**30:,.1f} GiB"


def require_regular_file(path: Path, error=None) -> None:
    """Refuse what is not a regular file (a device such as /dev/zero, a FIFO, a socket): reading it may never end.
    A symbolic link counts as what it points at."""
    error = error or VideoError
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise error(path, f"cannot be read ({err.strerror or err}).") from None
    if not stat.S_ISREG(mode):
        raise error(path, "is not a regular file (a device, pipe or socket); give a video file, a zip or a folder.")


@dataclass(frozen=True)
class Limits:
    """Upload limits. None means no limit; a limit must be positive. ``decode`` bounds what decoding may cost."""

    max_side: int | None = None
    max_frames: int | None = None
    max_seconds: float | None = None
    decode: DecodeLimits = field(default_factory=DecodeLimits.from_env)

    def __post_init__(self) -> None:
        # 0 used to give empty or 1x1 clips; a limit that leaves nothing is a mistake to report.
        for name in ("max_side", "max_frames", "max_seconds"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise VideoError(
                    None, f"Limits({name}={value!r}): a limit must be a positive number, or None for none."
                )


def natural_key(name: str) -> list:
    """Sort key that puts frame2.png before frame10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(H, W) scaled down so the long side is at most ``max_side``, keeping the aspect ratio."""
    h, w = size
    if max_side is None or max(h, w) <= max_side:
        return size
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB frame to (H, W); area averaging when shrinking, bilinear when growing."""
    if frame.shape[:2] == tuple(size):
        return frame
    shrinking = size[0] * size[1] < frame.shape[0] * frame.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(frame, (size[1], size[0]), interpolation=interp)


# --------------------------------------------------------------------------------------------------------------
# Frame sources: where native frames come from


class FrameSource(Protocol):
    def __len__(self) -> int: ...

    def iter_frames(self, count: int) -> Iterator[np.ndarray]: ...

    def read(self, index: int) -> np.ndarray: ...


class _ArraySource:
    def __init__(self, frames: Sequence[np.ndarray]):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def iter_frames(self, count: int) -> Iterator[np.ndarray]:
        for i in range(count):
            yield self.frames[i]

    def read(self, index: int) -> np.ndarray:
        return self.frames[index]


class _ImageListSource:
    """Frames stored as image files, in a folder or in a zip (read member by member, never extracted)."""

    def __init__(self, path: Path, names: list[str], zip_path: Path | None, limits: DecodeLimits):
        self.path = path
        self.names = names
        self.zip_path = zip_path
        self.limits = limits

    def __len__(self) -> int:
        return len(self.names)

    @contextlib.contextmanager
    def _archive(self) -> Iterator[zipfile.ZipFile | None]:
        if self.zip_path is None:
            yield None
            return
        try:
            archive = zipfile.ZipFile(self.zip_path)
        except (zipfile.BadZipFile, OSError) as err:
            raise VideoError(self.path, f"not a readable zip archive ({err}).") from None
        with archive:
            yield archive

    def _bytes(self, name: str, archive: zipfile.ZipFile | None) -> bytes:
        limit = self.limits.max_member_bytes
        if archive is None:
            file = self.path / name
            require_regular_file(file)
            try:
                with file.open("rb") as stream:
                    data = stream.read(limit + 1)
            except OSError as err:
                raise VideoError(self.path, f"frame {name!r} cannot be read ({err.strerror or err}).") from None
            if len(data) > limit:
                raise VideoError(
                    self.path, f"frame {name!r} is larger than the {_mib(limit)} an image file may take here."
                )
            return data
        try:
            return read_member(archive, name, limit)
        except NotImplementedError as err:  # before RuntimeError, its base class
            raise VideoError(
                self.path, f"member {name!r} uses a compression this reader lacks ({err}); re-zip it with deflate."
            ) from None
        except RuntimeError:  # zipfile's way of saying "encrypted, password required"
            raise VideoError(self.path, f"member {name!r} is encrypted; zip the frames without a password.") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise VideoError(self.path, f"member {name!r} is damaged ({err}); the zip may be cut or corrupt.") from None

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as image:
                self.limits.check_pixels(self.path, *image.size, f"frame {name!r}")
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise VideoError(self.path, f"frame {name!r} is not a readable image ({_image_reason(err)}).") from None

    def check(self, count: int, size: tuple[int, int]) -> None:
        """Check frames 1..count-1 (frame 0 is decoded already) without decoding their pixels, so that a damaged or
        non-image frame, or one of another size than ``size`` (H, W), fails when the clip is opened and not halfway
        through a run.

        Each frame's bytes are read whole: for a zip member that checks its CRC (the usual way a zip is damaged),
        and ``verify`` checks a PNG's chunk checksums. A JPEG whose pixel data is cut short passes the header
        check; it still fails, naming the frame, when the run decodes it."""
        with self._archive() as archive:
            for name in self.names[1:count]:
                data = self._bytes(name, archive)
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        width, height = image.size
                        self.limits.check_pixels(self.path, width, height, f"frame {name!r}")
                        image.verify()
                except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
                    reason = _image_reason(err)
                    raise VideoError(self.path, f"frame {name!r} is not a readable image ({reason}).") from None
                if (height, width) != tuple(size):
                    raise VideoError(
                        self.path,
                        f"frame {name!r} is {width}x{height} but the first frame is {size[1]}x{size[0]}; "
                        "all frames of a clip must have the same size.",
                    )

    def iter_frames(self, count: int) -> Iterator[np.ndarray]:
        with self._archive() as archive:
            for name in self.names[:count]:
                yield self._decode(name, self._bytes(name, archive))

    def read(self, index: int) -> np.ndarray:
        with self._archive() as archive:
            name = self.names[index]
            return self._decode(name, self._bytes(name, archive))


def _image_reason(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):  # its text is "cannot identify image file <_io.BytesIO ...>"
        return "not a JPG or PNG that can be read"
    if isinstance(err, Image.DecompressionBombError):
        return f"{err}; the server's limit is $VOS_MAX_FRAME_PIXELS, downscale the image"
    return str(err) or type(err).__name__


class _VideoFileSource:
    """A video file decoded sequentially with PyAV (seeking is not frame-exact in every container)."""

    def __init__(self, path: Path, num_frames: int):
        self.path = path
        self.num_frames = num_frames

    def __len__(self) -> int:
        return self.num_frames

    def iter_frames(self, count: int) -> Iterator[np.ndarray]:
        produced = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
                    produced += 1
                    if produced >= count:
                        return
        except av.FFmpegError as err:
            raise VideoError(self.path, f"decoding failed at frame {produced} ({err}).") from None
        if produced < count:
            raise VideoError(self.path, f"the video ended after {produced} frames, {count} were expected.")

    def read(self, index: int) -> np.ndarray:
        *_, last = self.iter_frames(index + 1)
        return last


# --------------------------------------------------------------------------------------------------------------
# The clip


class Clip:
    """A video clip: lazily decoded frames, an fps, an output size and a working size.

    Build one with ``open_clip(path)`` or ``Clip.from_frames(frames)``.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        name: str,
        fps: float,
        native_size: tuple[int, int],
        num_frames: int,
        size: tuple[int, int] | None = None,
        work_size: tuple[int, int] | None = None,
        path: Path | None = None,
        notes: Sequence[str] = (),
    ):
        self._source = source
        self.name = name
        self.fps = float(fps)
        self.native_size = tuple(native_size)
        self.num_frames = int(num_frames)
        self.size: tuple[int, int] = tuple(size or native_size)
        self.work_size: tuple[int, int] = tuple(work_size or self.size)
        self.path = path
        self.notes: list[str] = list(notes)

    @classmethod
    def from_frames(cls, frames: Sequence[np.ndarray], *, fps: float = DEFAULT_FPS, name: str = "clip") -> Clip:
        """A clip over frames already in memory (uint8 RGB, all the same size)."""
        if len(frames) == 0:
            raise VideoError(None, "a clip needs at least one frame.")
        first = np.asarray(frames[0])
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape != first.shape:
                expected = f"{first.shape}" if first.ndim == 3 and first.shape[2:] == (3,) else "(H, W, 3)"
                raise VideoError(None, f"frame {i} must be RGB of shape {expected}, got shape {frame.shape}.")
            if frame.dtype != np.uint8:
                raise VideoError(
                    None,
                    f"frame {i} must hold uint8 values (0-255), got {frame.dtype}; convert with .astype(np.uint8).",
                )
        return cls(_ArraySource(frames), name=name, fps=fps, native_size=first.shape[:2], num_frames=len(frames))

    # ---- sizes
    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"Clip({self.name!r}, {self.num_frames} frames, {self.size[1]}x{self.size[0]}"
            + (f", working at {self.work_size[1]}x{self.work_size[0]}" if self.work_size != self.size else "")
            + f", {self.fps:g} fps)"
        )

    def with_max_side(self, max_side: int | None) -> Clip:
        """The same clip with frames yielded at most ``max_side`` on the long side; results stay at ``size``."""
        work = fit_within(self.size, max_side)
        notes = list(self.notes)
        if work != self.size:
            notes.append(f"Methods ran at {work[1]}x{work[0]}; results were resized to {self.size[1]}x{self.size[0]}.")
        return Clip(
            self._source,
            name=self.name,
            fps=self.fps,
            native_size=self.native_size,
            num_frames=self.num_frames,
            size=self.size,
            work_size=work,
            path=self.path,
            notes=notes,
        )

    def with_frames(self, count: int) -> Clip:
        """The first ``count`` frames of this clip (benchmarks sweep clip length with it)."""
        count = max(1, min(count, self.num_frames))
        return Clip(
            self._source,
            name=self.name,
            fps=self.fps,
            native_size=self.native_size,
            num_frames=count,
            size=self.size,
            work_size=self.work_size,
            path=self.path,
            notes=self.notes,
        )

    # ---- frames
    def frames(self) -> Iterator[np.ndarray]:
        """Every frame at ``work_size`` (uint8 RGB), decoded one at a time."""
        for frame in self._source.iter_frames(self.num_frames):
            yield resize_frame(self._checked(frame), self.work_size)

    def output_frames(self) -> Iterator[np.ndarray]:
        """Every frame at ``size``, the size results are returned at (for overlays and videos)."""
        for frame in self._source.iter_frames(self.num_frames):
            yield resize_frame(self._checked(frame), self.size)

    def frame(self, index: int, *, output_size: bool = False) -> np.ndarray:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} is outside this {self.num_frames}-frame clip")
        frame = self._checked(self._source.read(index))
        return resize_frame(frame, self.size if output_size else self.work_size)

    def first_frame(self) -> np.ndarray:
        """Frame 0 at the output size: the frame prompts are drawn on."""
        return self.frame(0, output_size=True)

    def _checked(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape[:2] != self.native_size:
            raise VideoError(
                self.path,
                f"frames change size: {frame.shape[1]}x{frame.shape[0]} after {self.native_size[1]}x"
                f"{self.native_size[0]}; all frames of a clip must have the same size.",
            )
        return frame

    def info(self) -> dict:
        """A JSON-able description (run.json)."""
        return {
            "name": self.name,
            # Absolute, so that `run --from` finds the clip from any working folder.
            "source": str(self.path.absolute()) if self.path else None,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "native_size": list(self.native_size),
            "size": list(self.size),
            "work_size": list(self.work_size),
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------------------------
# Opening


def open_clip(path: str | Path, limits: Limits | None = None, *, fps: float | None = None) -> Clip:
    """Open a video file, a folder of frames or a zip of frames, applying ``limits``.

    ``fps`` overrides the rate (frame folders and zips have none; they default to 24).
    Raises VideoError with a message for the user when the input cannot be used.
    """
    limits = limits if limits is not None else Limits()  # read now: the decode limits follow the environment
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "file not found.")
    if not path.is_dir():
        require_regular_file(path)
    if path.is_dir():
        names = sorted(
            (p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=natural_key,
        )
        if not names:
            raise VideoError(path, f"the folder holds no {'/'.join(IMAGE_EXTENSIONS)} frames.")
        source: FrameSource = _ImageListSource(path, names, None, limits.decode)
        rate = fps or DEFAULT_FPS
    elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        source = _ImageListSource(path, _zip_frame_names(path, limits.decode), path, limits.decode)
        rate = fps or DEFAULT_FPS
    else:
        _check_still_image(path, limits.decode)
        source, rate, notes = _probe_video(path, limits)
        return _apply_limits(source, path, fps or rate, limits, notes)
    return _apply_limits(source, path, rate, limits)


def _check_still_image(path: Path, limits: DecodeLimits) -> None:
    """A single PNG/JPEG given as a clip: its header's size is checked before anything decodes it (probing the
    file with FFmpeg decodes the whole picture). Not an image: nothing to check here, the video probe follows."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise VideoError(path, f"not a usable frame ({_image_reason(err)}).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return
    limits.check_pixels(path, width, height, "the image")


def _zip_frame_names(path: Path, limits: DecodeLimits) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise VideoError(path, f"not a readable zip archive ({err}).") from None
    names, frames = [], []
    for member in members:
        pure = PurePosixPath(member.filename.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise VideoError(path, f"the zip holds a path that escapes its folder: {member.filename!r}.")
        if pure.name.startswith(".") or "__MACOSX" in pure.parts:
            continue
        if pure.suffix.lower() in IMAGE_EXTENSIONS:
            names.append(member.filename)
            frames.append(member)
    check_zip_members(path, frames, limits)
    if not names:
        raise VideoError(path, f"the zip holds no {'/'.join(IMAGE_EXTENSIONS)} frames.")
    folders = {str(PurePosixPath(n).parent) for n in names}
    if len(folders) > 1:
        raise VideoError(
            path,
            f"the zip holds frames in {len(folders)} folders ({', '.join(sorted(folders)[:3])}...); "
            "put one clip's frames in one folder.",
        )
    return sorted(names, key=natural_key)


def _probe_video(path: Path, limits: Limits) -> tuple[FrameSource, float, list[str]]:
    """Open, validate and count a video file: decodes up to the frame limit so that a truncated or corrupt file
    fails here, with a clear message, and not halfway through a run. Also returns notes for the user."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoError(path, f"not a decodable video ({_reason(err)}).") from None
    notes = []
    with container:
        if not container.streams.video:
            raise VideoError(path, "the file has no video stream.")
        stream = container.streams.video[0]
        limits.decode.check_pixels(path, stream.width, stream.height, "a frame")
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(DEFAULT_FPS)
        rate = float(rate) if float(rate) > 0 else DEFAULT_FPS
        declared = _declared_frames(container, stream, rate)
        cap = _frame_cap(limits, rate)
        count = 0
        stopped_by_cap = False
        error = None
        try:
            for _ in container.decode(stream):
                count += 1
                if cap is not None and count >= cap + 1:  # one more than kept, so truncation is reported
                    stopped_by_cap = True
                    break
        except av.FFmpegError as err:
            if count == 0:
                raise VideoError(path, f"not a decodable video ({_reason(err)}).") from None
            error = _reason(err)
    if count == 0:
        raise VideoError(path, "the video holds no decodable frames.")
    if not stopped_by_cap and declared is not None and _clearly_short(count, declared):
        raise VideoError(
            path,
            f"the video looks truncated: decoded {count} of the {declared} frames the file declares"
            + (f" ({error})" if error else "")
            + ". The upload or copy may have been cut short; use the complete file.",
        )
    short = not stopped_by_cap and declared is not None and declared - count > _TRUNCATED_SLACK
    if error is not None or short:
        of_declared = f" of the {declared} the file declares" if short else ""
        because = f" ({error})" if error is not None else ""
        notes.append(f"Decoding stopped after {count} frames{of_declared}{because}; the clip uses those {count}.")
    return _VideoFileSource(path, count), rate, notes


# Containers round their frame counts and durations (edit lists, B-frame delays, a duration taken from the last
# timestamp), so a few frames short of the declared count is normal. A cut upload loses far more.
_TRUNCATED_BELOW = 0.9  # fraction of the declared frames
_TRUNCATED_SLACK = 2  # frames short that are always tolerated (short clips)


def _clearly_short(count: int, declared: int) -> bool:
    return count < _TRUNCATED_BELOW * declared and declared - count > _TRUNCATED_SLACK


def _declared_frames(container, stream, rate: float) -> int | None:
    """How many frames the file says its video stream holds, or None when it does not say.

    The smallest of what it states: the stream's frame count and duration, a Matroska/WebM DURATION tag, and the
    container's duration (only when the video is its only stream: an audio track may run longer). The smallest,
    because a count can include frames an edit list hides (a clip trimmed without re-encoding keeps its lead-in
    from the previous keyframe), and calling such a file truncated would be wrong."""
    counts = []
    if stream.frames and stream.frames > 0:
        counts.append(int(stream.frames))
    seconds = []
    if stream.duration and stream.time_base:
        seconds.append(float(stream.duration * stream.time_base))
    if (tag := _parse_clock(stream.metadata.get("DURATION", ""))) is not None:
        seconds.append(tag)
    if container.duration and len(container.streams) == 1:
        seconds.append(container.duration / av.time_base)
    counts += [round(s * rate) for s in seconds if s > 0]
    return min(counts) if counts else None


def _parse_clock(text: str) -> float | None:
    """'HH:MM:SS.fraction' (Matroska's DURATION tag) -> seconds."""
    match = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", text.strip())
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _reason(err: BaseException) -> str:
    text = str(err)
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).split(": '")[0] or type(err).__name__


def _frame_cap(limits: Limits, fps: float) -> int | None:
    caps = []
    if limits.max_frames is not None:
        caps.append(limits.max_frames)
    if limits.max_seconds is not None:
        caps.append(max(1, math.floor(limits.max_seconds * fps + 1e-6)))
    return min(caps) if caps else None


def _apply_limits(source: FrameSource, path: Path, fps: float, limits: Limits, notes: Sequence[str] = ()) -> Clip:
    first = source.read(0)
    native = first.shape[:2]
    notes = list(notes)
    total = len(source)
    cap = _frame_cap(limits, fps)
    kept = total if cap is None else min(total, cap)
    if kept < total:
        why = []
        if limits.max_frames is not None and kept == limits.max_frames:
            why.append(f"the {limits.max_frames}-frame limit")
        if limits.max_seconds is not None and kept < (limits.max_frames or total + 1):
            why.append(f"the {limits.max_seconds:g}-second limit")
        of_total = (
            "" if isinstance(source, _VideoFileSource) else f" of {total}"
        )  # a video is decoded only up to the cap
        notes.append(f"Kept the first {kept}{of_total} frames ({' and '.join(why)}).")
    if isinstance(source, _ImageListSource):
        source.check(kept, native)
    size = fit_within(native, limits.max_side)
    if size != native:
        notes.append(
            f"Downscaled from {native[1]}x{native[0]} to {size[1]}x{size[0]} (long side limit {limits.max_side} px)."
        )
    for note in notes:
        log.info("%s: %s", path.name, note)
    if isinstance(source, _VideoFileSource):
        source = _VideoFileSource(path, kept)
    return Clip(
        source,
        name=path.stem,
        fps=fps,
        native_size=native,
        num_frames=kept,
        size=size,
        path=path,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------------------
# Encoding


def even_pad(frame: np.ndarray) -> np.ndarray:
    """Pad the bottom/right edge by one pixel where needed: yuv420p needs even dimensions."""
    h, w = frame.shape[:2]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = DEFAULT_FPS, *, crf: int = 20) -> Path:
    """Encode RGB frames to an H.264 (yuv420p, +faststart) MP4 that browsers play.

    Written to a temporary name and renamed at the end, so a failure never leaves a file that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A random name rather than mkstemp's: mkstemp makes the file 0600, and the finished video must be ordinary.
    tmp = path.parent / f".{path.stem}-{secrets.token_hex(8)}.mp4"
    rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(int(DEFAULT_FPS))
    written = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = None
            for frame in frames:
                frame = even_pad(np.ascontiguousarray(frame, dtype=np.uint8))
                if stream is None:
                    stream = container.add_stream("libx264", rate=rate)
                    stream.height, stream.width = frame.shape[:2]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
                written += 1
            if stream is None:
                raise ValueError("no frames to encode")
            for packet in stream.encode():
                container.mux(packet)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s (%d frames)", path, written)
    return path
