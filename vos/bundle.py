"""The run bundle: one folder (or one .zip of it) that holds everything needed to show a run again, anywhere.

Layout (every path inside is relative to the bundle's folder, so the folder can be moved, copied or zipped)::

    run.json                     the record: clip, prompt, settings, hardware, one record per method
    prompt.png                   the first-frame label map (DAVIS palette PNG)
    frames/00000.jpg             the input frames at the methods' working size (JPEG), so the bundle plays back
                                 without the clip it was made from
    masks/<method>/00000.png     a finished method's label maps at the clip's size (palette PNGs)
    partial/<method>/00000.png   what a method that failed or was stopped produced before it stopped
    side_by_side.mp4             input + one tile per method (H.264)

``run.json`` keeps its keys and status words across versions: fields are added, never renamed, so a bundle written
by an older vos-compare still opens (one without ``frames/`` shows its frames from the clip's source when that is
still where the run found it, else the masks alone). ``clip.source``, ``settings.gt`` and the weights paths record
where those files were on the machine that ran (``run --from`` uses them); nothing that shows a bundle reads them.

The runner writes bundles with ``write_run_json``, ``write_frames`` and ``keep_partial``; the presenter and the app
read them with ``open_bundle`` / ``find_bundles`` and ``RunBundle``; ``zip_bundle`` gives one as a single file.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from vos import masks as vmasks
from vos.errors import VosError

log = logging.getLogger(__name__)

FORMAT = 1  # run.json's "format"; raised only if a change could not be made by adding fields
RUN_JSON = "run.json"
PROMPT_FILE = "prompt.png"
MASKS_DIR = "masks"
PARTIAL_DIR = "partial"
FRAMES_DIR = "frames"
VIDEO_FILE = "side_by_side.mp4"
MASK_NAME = "{:05d}.png"
FRAME_NAME = "{:05d}.jpg"
FRAME_QUALITY = 90  # JPEG: no visible loss under an overlay, a tenth of a PNG's size
UNSUP = "unsup"  # MethodInfo.task of unsupervised methods (vos.methods.UNSUP; not imported: no torch here)
MAX_UNZIPPED_BYTES = 8 * 2**30  # a bundle is frames and masks: far more than this is not one


class Status(StrEnum):
    """A method's state in run.json. The values are the words run.json has always used."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    OOM = "out_of_memory"
    NO_WEIGHTS = "weights_missing"
    CANCELLED = "cancelled"

    @property
    def label(self) -> str:
        """The status in words for people (tiles, tables, progress lists)."""
        return _STATUS_LABELS[self]

    @property
    def stopped_early(self) -> bool:
        """The method started but did not finish: it may have produced some frames."""
        return self in (Status.FAILED, Status.OOM, Status.CANCELLED)


_STATUS_LABELS = {
    Status.PENDING: "waiting",
    Status.RUNNING: "running",
    Status.OK: "done",
    Status.FAILED: "failed",
    Status.OOM: "out of memory",
    Status.NO_WEIGHTS: "weights missing",
    Status.CANCELLED: "stopped",
}


def status_label(status: str) -> str:
    """``status`` in words; a word this version does not know (a newer bundle's) is shown as it is."""
    try:
        return Status(status).label
    except ValueError:
        return str(status)


class BundleError(VosError, ValueError):
    """A path that is not a run bundle (or holds none), or a damaged one. The message says what to give instead."""


_WHAT_TO_GIVE = (
    "give a run bundle's folder (it holds run.json), its .zip (`python -m vos run ... --zip` or the app's "
    "'Run bundle' download), or a folder of them"
)


# --------------------------------------------------------------------------------------------------------------
# One method's record


@dataclass
class MethodRecord:
    key: str
    title: str
    task: str
    variant: str
    status: str = Status.PENDING
    error: str | None = None
    hint: str | None = None  # what to do about the error
    frames_done: int = 0
    frames_total: int | None = None  # the clip's frames, so a stopped method can say how far it got
    stage: str | None = None  # the latest progress the method reported, e.g. "flow 12/80"
    variant_note: str | None = None  # why this variant and not the method's default (vos.runnable chose it)
    load_s: float | None = None
    first_frame_s: float | None = None
    segment_s: float | None = None
    fps: float | None = None
    peak_memory_mib: float | None = None
    memory_kind: str | None = None  # cuda_allocated or cpu_rss
    reserved_memory_mib: float | None = None
    device: str | None = None
    config: dict[str, Any] | None = None  # variant, effective options, weights provenance
    segment_ids: dict[str, int] | None = None  # unsupervised: raw segment id -> shown id
    extra_ids: list[int] = field(default_factory=list)  # unsupervised: shown ids of unmatched segments
    scores: dict[str, float] | None = None  # J&F etc. when a ground truth was given
    masks_dir: str | None = None  # relative to the bundle; set when the method finished
    partial_masks_dir: str | None = None  # relative to the bundle; what a failed or stopped method produced

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodRecord:
        """A record from run.json; fields a newer version added are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def has_masks(self) -> bool:
        """Finished, or stopped or failed after some frames: label maps of frames 0..frames_done-1 are kept."""
        return self.masks_dir is not None or self.partial_masks_dir is not None

    def stopped_text(self) -> str:
        """ "stopped at frame k of N": k frames were segmented (0..k-1) before the user stopped the run."""
        if self.frames_total is None:
            return "stopped before it started"
        return f"stopped at frame {self.frames_done} of {self.frames_total}"

    def status_text(self) -> str:
        """The status in words; a stopped method says how far it got."""
        return self.stopped_text() if self.status == Status.CANCELLED else status_label(self.status)

    @property
    def task_words(self) -> str:
        return "unsupervised" if self.task == UNSUP else "semi-supervised"

    def status_line(self) -> str:
        """One line for a tile: speed, memory and score, or what went wrong."""
        if self.ok:
            parts = []
            if self.fps is not None:  # a slow method on a CPU can run well under 0.1 fps: keep two digits
                parts.append(f"{self.fps:.1f} fps" if self.fps >= 1 else f"{self.fps:.2g} fps")
            if self.peak_memory_mib is not None:
                parts.append(f"{self.peak_memory_mib:,.0f} MiB")
            if self.scores and "J&F" in self.scores:
                parts.append(f"J&F {self.scores['J&F']:.3f}")
            return " · ".join(parts)
        label = self.status_text()
        return f"{label}: {self.error}" if self.error and self.status != Status.OOM else label


TABLE_HEADERS = ("Method", "Variant", "Task", "Status", "fps", "Peak memory (MiB)", "Load (s)", "J&F")


def table_rows(records: Sequence[MethodRecord]) -> tuple[list[str], list[list[object]]]:
    """The per-method numbers (the app's and the presenter's table); the J&F column only when a run was scored."""
    scored = any(r.scores for r in records)
    headers = list(TABLE_HEADERS if scored else TABLE_HEADERS[:-1])
    rows = []
    for r in records:
        row: list[object] = [
            r.title,
            r.variant,
            r.task_words,
            r.status_text(),
            None if r.fps is None else round(r.fps, 2),
            None if r.peak_memory_mib is None else round(r.peak_memory_mib),
            None if r.load_s is None else round(r.load_s, 2),
        ]
        if scored:
            row.append(None if not r.scores else round(r.scores.get("J&F", float("nan")), 3))
        rows.append(row)
    return headers, rows


# --------------------------------------------------------------------------------------------------------------
# Writing


def mask_path(folder: Path, index: int) -> Path:
    return folder / MASK_NAME.format(index)


def masks_folder(bundle_dir: Path, record: MethodRecord) -> Path | None:
    """Where a method's label maps are: its masks folder when it finished, what it produced before it stopped
    when it did not, None when it produced nothing."""
    if record.ok:
        # Bundles of older versions may lack masks_dir for a finished method: the layout says where its masks are.
        return bundle_dir / (record.masks_dir or f"{MASKS_DIR}/{record.key}")
    if record.partial_masks_dir:
        return bundle_dir / record.partial_masks_dir
    return None


def write_frames(frames: Iterable[np.ndarray], out_dir: str | Path) -> dict[str, Any]:
    """Save the input frames into ``out_dir/frames`` as JPEGs; return run.json's ``frames`` entry."""
    folder = Path(out_dir) / FRAMES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    count, size = 0, None
    for index, frame in enumerate(frames):
        Image.fromarray(np.ascontiguousarray(frame)).save(
            folder / FRAME_NAME.format(index), quality=FRAME_QUALITY, subsampling=0
        )
        count, size = index + 1, list(frame.shape[:2])
    return {"dir": FRAMES_DIR, "name": FRAME_NAME, "count": count, "size": size}


def keep_partial(partial: Path, out_dir: Path, record: MethodRecord) -> None:
    """Keep what a method that did not finish produced, under ``partial/<key>`` (never ``masks/``, where a folder
    means a finished method), and record where; nothing is kept when it produced no frame."""
    if not partial.is_dir() or not any(partial.glob("*.png")):
        shutil.rmtree(partial, ignore_errors=True)
        return
    dest = out_dir / PARTIAL_DIR / record.key
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(dest)
    record.partial_masks_dir = dest.relative_to(out_dir).as_posix()


def write_run_json(
    out_dir: str | Path,
    *,
    clip: dict[str, Any],
    object_ids: Sequence[int],
    settings: dict[str, Any],
    hardware: dict[str, Any],
    records: Sequence[MethodRecord],
    frames: dict[str, Any] | None,
    vos_version: str,
) -> Path:
    """Write (atomically) ``out_dir/run.json``; the side-by-side video is listed when it exists."""
    out_dir = Path(out_dir)
    data = {
        "format": FORMAT,
        "vos_version": vos_version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "clip": clip,
        "prompt": {"file": PROMPT_FILE, "object_ids": [int(i) for i in object_ids]},
        "settings": settings,
        "hardware": hardware,
        "methods": [asdict(r) for r in records],
        "side_by_side": VIDEO_FILE if (out_dir / VIDEO_FILE).exists() else None,
        "frames": frames,
    }
    path = out_dir / RUN_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def zip_folder(
    folder: Path,
    dest: Path,
    *,
    root: str,
    skip: Sequence[str] = (),
    run_json: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """Zip ``folder`` as ``root/...``, leaving out hidden files (work in progress). PNGs, JPEGs and MP4s are
    already compressed: stored, not deflated. ``run_json``, when given, rewrites the record at the folder's top on
    its way into the zip (the app drops the server's paths from it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_dir() or any(p.startswith(".") for p in rel.parts) or rel.parts[0] in skip:
                continue
            if run_json is not None and rel.as_posix() == RUN_JSON:
                archive.writestr(f"{root}/{RUN_JSON}", json.dumps(run_json(json.loads(path.read_text())), indent=2))
                continue
            archive.write(path, f"{root}/{rel.as_posix()}")
    part.replace(dest)
    return dest


def zip_bundle(
    folder: str | Path,
    dest: str | Path | None = None,
    *,
    run_json: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """The bundle at ``folder`` as one .zip (default: beside it, ``<folder>.zip``), under its folder's name;
    ``run_json`` as for ``zip_folder``."""
    folder = Path(folder)
    if not (folder / RUN_JSON).is_file():
        raise BundleError(f"{folder} holds no {RUN_JSON}: it is not a run bundle.")
    dest = Path(dest) if dest is not None else folder.with_name(folder.name + ".zip")
    return zip_folder(folder, dest, root=folder.name, run_json=run_json)


# --------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class RunBundle:
    """A run bundle on disk (a zip is read from its extracted copy): the record, frames and masks."""

    path: Path
    data: dict[str, Any]
    origin: Path | None = None  # the .zip it came from, if any

    @property
    def name(self) -> str:
        return str(self.data["clip"]["name"])

    @property
    def label(self) -> str:
        """How a list of bundles names this one: the clip and the bundle's own name."""
        where = (self.origin or self.path).name
        return self.name if where == self.name else f"{self.name} — {where}"

    @property
    def clip(self) -> dict[str, Any]:
        return self.data["clip"]

    @property
    def num_frames(self) -> int:
        return int(self.clip["num_frames"])

    @property
    def fps(self) -> float:
        return float(self.clip.get("fps") or 24.0)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the masks (the clip's output size)."""
        return tuple(self.clip["size"])  # type: ignore[return-value]

    @property
    def work_size(self) -> tuple[int, int]:
        return tuple(self.clip.get("work_size") or self.clip["size"])  # type: ignore[return-value]

    @property
    def methods(self) -> list[dict[str, Any]]:
        """The method records as run.json holds them."""
        return self.data["methods"]

    @property
    def records(self) -> list[MethodRecord]:
        return [MethodRecord.from_dict(m) for m in self.methods]

    @property
    def object_ids(self) -> list[int]:
        return [int(i) for i in self.data.get("prompt", {}).get("object_ids", [])]

    @property
    def settings(self) -> dict[str, Any]:
        return self.data.get("settings") or {}

    @property
    def hardware(self) -> dict[str, Any]:
        return self.data.get("hardware") or {}

    @property
    def video(self) -> Path | None:
        name = self.data.get("side_by_side")
        return self.path / name if name and (self.path / name).is_file() else None

    @property
    def prompt(self) -> np.ndarray | None:
        path = self.path / self.data.get("prompt", {}).get("file", PROMPT_FILE)
        return vmasks.read_palette_png(path) if path.is_file() else None

    # ---- masks

    def record(self, key: str) -> MethodRecord:
        for record in self.records:
            if record.key == key:
                return record
        raise KeyError(f"{key!r} did not run in {self.label}")

    def mask(self, key: str, index: int) -> np.ndarray | None:
        """Method ``key``'s label map for frame ``index``; None where it produced none (it failed or stopped
        before that frame, or never ran)."""
        folder = masks_folder(self.path, self.record(key))
        path = mask_path(folder, index) if folder is not None else None
        return vmasks.read_palette_png(path) if path is not None and path.is_file() else None

    # ---- frames

    @property
    def has_frames(self) -> bool:
        """The bundle holds its input frames (bundles before this version do not)."""
        frames = self.data.get("frames")
        return bool(frames) and (self.path / frames["dir"] / FRAME_NAME.format(0)).is_file()

    def frame(self, index: int) -> np.ndarray | None:
        """Input frame ``index`` (RGB): from the bundle, else from the clip's source when that is still where the
        run found it (older bundles), else None."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} is outside this {self.num_frames}-frame run")
        if self.has_frames:
            frames = self.data["frames"]
            path = self.path / frames["dir"] / frames.get("name", FRAME_NAME).format(index)
            if not path.is_file():
                return None
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        return self._source_frame(index)

    @functools.cached_property
    def _source_clip(self):
        """The clip the run read, when it is still where the run found it (older bundles hold no frames)."""
        from vos.video import Limits, VideoError, open_clip

        source = self.clip.get("source")
        if not source or not Path(source).exists():
            return None
        try:
            return open_clip(source, Limits(max_frames=self.num_frames), fps=self.clip.get("fps"))
        except VideoError:
            return None

    def _source_frame(self, index: int) -> np.ndarray | None:
        from vos.video import VideoError, resize_frame

        clip = self._source_clip
        if clip is None or index >= clip.num_frames:
            return None
        try:
            return resize_frame(clip.frame(index, output_size=True), self.size)
        except VideoError:
            return None

    @property
    def frames_available(self) -> bool:
        return self.has_frames or self._source_frame(0) is not None


def _read_record(path: Path) -> dict[str, Any]:
    run_json = path / RUN_JSON
    try:
        data = json.loads(run_json.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} holds no {RUN_JSON}; {_WHAT_TO_GIVE}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"Cannot read {run_json}: {err}.") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{run_json} is not valid JSON ({err}); the run bundle is damaged.") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("methods"), list)
        or not isinstance(data.get("clip"), dict)
    ):
        raise BundleError(f"{run_json} is not a run bundle's record (no clip or methods in it).")
    if isinstance(data.get("format"), int) and data["format"] > FORMAT:
        raise BundleError(
            f"{run_json} has format {data['format']}: a newer vos-compare wrote this run bundle (this one reads "
            f"format {FORMAT}); update vos-compare to show it."
        )
    clip = data["clip"]
    if not isinstance(clip.get("num_frames"), int) or not isinstance(clip.get("size"), list):
        raise BundleError(f"{run_json} is not a complete run bundle's record: clip.num_frames or clip.size is missing.")
    return data


def load_bundle(path: str | Path, *, origin: Path | None = None) -> RunBundle:
    """The bundle whose folder is ``path``."""
    path = Path(path)
    return RunBundle(path, _read_record(path), origin)


def open_bundle(path: str | Path) -> RunBundle:
    """One bundle: a folder holding run.json, or a .zip of one."""
    bundles = find_bundles(path)
    if len(bundles) > 1:
        names = ", ".join(b.label for b in bundles[:4])
        raise BundleError(f"{path} holds {len(bundles)} run bundles ({names}...); give one of them.")
    return bundles[0]


def find_bundles(path: str | Path) -> list[RunBundle]:
    """The bundles at ``path``: a bundle's folder, a bundle's .zip, or a folder (or .zip) of bundles and bundle
    zips. Raises a BundleError saying what is wrong with anything else."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BundleError(f"{path} does not exist; {_WHAT_TO_GIVE}.")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise BundleError(f"{path} is a file but not a .zip; {_WHAT_TO_GIVE}.")
        return _bundles_in_zip(path)
    return _bundles_in(path, origin=None, zips=True)


def _bundles_in_zip(path: Path) -> list[RunBundle]:
    unpacked, folder = _extract(path)
    try:
        return _bundles_in(folder, origin=path, zips=False)
    except BundleError as err:  # name the file inside the zip, not the cache folder it was unpacked into
        raise BundleError(str(err).replace(str(unpacked), str(path))) from None


def _bundles_in(folder: Path, *, origin: Path | None, zips: bool) -> list[RunBundle]:
    if (folder / RUN_JSON).is_file():
        return [load_bundle(folder, origin=origin)]
    found: list[RunBundle] = []
    problems: list[str] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        try:
            if child.is_dir() and (child / RUN_JSON).is_file():
                found.append(load_bundle(child, origin=origin))
            elif zips and child.is_file() and child.suffix.lower() == ".zip":
                found.extend(_bundles_in_zip(child))
        except BundleError as err:
            problems.append(str(err))
    for problem in problems:
        log.warning("skipped: %s", problem)
    if not found:
        detail = f" ({'; '.join(problems)})" if problems else ""
        what = f"{origin} holds" if origin else f"{folder} holds"
        raise BundleError(f"{what} no run bundle (no {RUN_JSON} in it or in its subfolders){detail}; {_WHAT_TO_GIVE}.")
    return found


def extract_root() -> Path:
    return Path(tempfile.gettempdir()) / "vos-bundles"


def _extract(archive_path: Path) -> tuple[Path, Path]:
    """Unpack a bundle zip once into a cache folder named after the file's path, size and time (a changed zip is
    unpacked again); return that folder and the one in it to look for bundles in (its single top folder, if so)."""
    stat = archive_path.stat()
    digest = hashlib.sha256(f"{archive_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = extract_root() / f"{archive_path.stem[:40]}-{digest}"
    if not dest.is_dir():
        try:
            archive = zipfile.ZipFile(archive_path)
        except (zipfile.BadZipFile, OSError) as err:
            raise BundleError(f"{archive_path} is not a readable zip ({err}); {_WHAT_TO_GIVE}.") from None
        with archive:
            members = archive.infolist()
            for member in members:
                pure = PurePosixPath(member.filename.replace("\\", "/"))
                if pure.is_absolute() or ".." in pure.parts:
                    raise BundleError(
                        f"{archive_path} holds a path that escapes its folder ({member.filename!r}): it is not a "
                        "run bundle written by vos-compare."
                    )
            if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
                raise BundleError(
                    f"{archive_path} unpacks to more than {MAX_UNZIPPED_BYTES >> 30} GiB: it is not a run bundle."
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
            try:
                archive.extractall(work)
                work.rename(dest)
            except OSError:
                shutil.rmtree(work, ignore_errors=True)
                if not dest.is_dir():  # another process unpacking the same zip at once is fine
                    raise
            except (zipfile.BadZipFile, EOFError) as err:
                shutil.rmtree(work, ignore_errors=True)
                raise BundleError(f"{archive_path} is a damaged run bundle zip ({err}).") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if not (dest / RUN_JSON).is_file() and len(entries) == 1 and entries[0].is_dir():
        return dest, entries[0]  # the usual layout: one top folder named after the bundle
    return dest, dest
