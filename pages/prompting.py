"""The Compare page's prompt session: an uploaded clip and the objects marked on its first frame.

No Gradio here: the page's callbacks call these functions and keep the returned ``PromptSession`` in a
``gr.State``. The session holds paths and mark lists only (deep-copyable, small); frames and masks live as files
in the session's folder.

Object ids: an uploaded palette PNG keeps its own ids (1..K); objects marked by clicks, boxes and brush strokes
follow as K+1, K+2... in the order they were added, so an object keeps its id (and colour) while others are
edited, emptied or removed after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vos import click_engine
from vos import masks as vmasks
from vos import prompts as vprompts
from vos.video import Clip, Limits, VideoError, env_number, open_clip, require_regular_file

log = logging.getLogger(__name__)

INCLUDE, EXCLUDE, BOX = "include", "exclude", "box"
TOOLS = (INCLUDE, EXCLUDE, BOX)
SESSIONS_ENV = "VOS_APP_DIR"


def sessions_root() -> Path:
    """Where sessions keep their files: $VOS_APP_DIR, else a folder in the system's temporary directory."""
    root = Path(os.environ.get(SESSIONS_ENV) or Path(tempfile.gettempdir()) / "vos-compare-app")
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Mark:
    """One click (``include``/``exclude``: x, y) or box (``box``: x0, y0, x1, y1) in first-frame pixels."""

    kind: str
    coords: tuple[float, ...]


@dataclass
class MarkedObject:
    marks: list[Mark] = field(default_factory=list)
    brush: str | None = None  # PNG of the brushed pixels (0/255), at the clip's size

    @property
    def has_positive(self) -> bool:
        return self.brush is not None or any(m.kind in (INCLUDE, BOX) for m in self.marks)

    def describe(self) -> str:
        counts = {kind: sum(m.kind == kind for m in self.marks) for kind in TOOLS}
        parts = []
        if counts[INCLUDE]:
            parts.append(f"{counts[INCLUDE]} include")
        if counts[EXCLUDE]:
            parts.append(f"{counts[EXCLUDE]} exclude")
        if counts[BOX]:
            parts.append(f"{counts[BOX]} box" + ("es" if counts[BOX] > 1 else ""))
        if self.brush:
            parts.append("brush")
        return ", ".join(parts) or "empty"


@dataclass
class PromptSession:
    folder: str
    clip_path: str
    clip_name: str
    size: tuple[int, int]  # (H, W) after the upload limits: the size of the prompt and of every result
    native_size: tuple[int, int]
    num_frames: int
    fps: float
    limits: Limits
    notes: list[str] = field(default_factory=list)
    objects: list[MarkedObject] = field(default_factory=list)
    current: int = 0  # index into ``objects``
    uploaded: str | None = None  # the uploaded first-frame mask, as a palette PNG at ``size``
    uploaded_ids: list[int] = field(default_factory=list)
    corner: tuple[float, float] | None = None  # the first corner of a box being drawn
    runs: int = 0

    # ---- files
    @property
    def path(self) -> Path:
        return Path(self.folder)

    @property
    def frame_path(self) -> Path:
        return self.path / "first_frame.png"

    @property
    def prompt_path(self) -> Path:
        return self.path / "prompt.png"

    def clip(self, max_frames: int | None = None) -> Clip:
        """The clip, reopened with the limits it was uploaded under (same size, same frames), or only its first
        ``max_frames`` frames (the Compare page's frames control)."""
        limits = self.limits
        if max_frames and max_frames < self.num_frames:
            limits = dataclasses.replace(limits, max_frames=int(max_frames))
        return open_clip(self.clip_path, limits, fps=self.fps)

    def first_frame(self) -> np.ndarray:
        return np.asarray(Image.open(self.frame_path).convert("RGB"))

    # ---- ids
    @property
    def base_id(self) -> int:
        return max(self.uploaded_ids, default=0)

    def object_id(self, index: int) -> int:
        return self.base_id + index + 1

    def all_ids(self) -> list[int]:
        return [*self.uploaded_ids, *(self.object_id(i) for i in range(len(self.objects)))]


# --------------------------------------------------------------------------------------------------------------
# Starting a session


SESSION_MAX_AGE_HOURS = 24.0  # folders of sessions untouched this long are removed (a tab closed without notice)
SESSIONS_QUOTA_ENV = "VOS_SESSIONS_MB"
DEFAULT_SESSIONS_MB = 5000.0


def sessions_quota_bytes() -> int:
    """The disk all session folders together may use: $VOS_SESSIONS_MB (default 5000)."""
    return int(env_number(SESSIONS_QUOTA_ENV, DEFAULT_SESSIONS_MB) * 2**20)


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile by its own session
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def make_room(root: Path, needed: int, quota: int | None = None) -> None:
    """Remove the oldest session folders until ``needed`` more bytes fit in the sessions' quota; refuse an upload
    that could never fit. Many users at once must not fill the server's disk."""
    quota = sessions_quota_bytes() if quota is None else quota
    if needed > quota:
        raise VideoError(
            None,
            f"the upload takes {needed / 2**20:,.1f} MB, more than the {quota / 2**20:,.0f} MB this server keeps for "
            f"all sessions together (${SESSIONS_QUOTA_ENV}); upload a shorter or smaller clip.",
        )
    folders = []
    for folder in root.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if folder.is_dir():
                folders.append((folder.stat().st_mtime, folder, _folder_bytes(folder)))
    used = sum(size for *_, size in folders)
    for _, folder, size in sorted(folders, key=lambda item: item[0]):
        if used + needed <= quota:
            break
        log.info("session disk quota: removing %s (%.1f MB), the oldest session", folder.name, size / 2**20)
        shutil.rmtree(folder, ignore_errors=True)
        used -= size


def prune_sessions(root: Path, max_age_hours: float = SESSION_MAX_AGE_HOURS) -> None:
    """Remove session folders not modified for ``max_age_hours``: replaced uploads and tabs that never said goodbye
    would otherwise fill a long-running server's disk."""
    cutoff = time.time() - max_age_hours * 3600
    for folder in root.iterdir():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # another session's pruning got there first
            continue


def start_session(upload: str | Path, limits: Limits, *, root: Path | None = None) -> PromptSession:
    """Copy the upload into a new session folder, open it under ``limits`` and save its first frame.

    Raises VideoError (a VosError) when the upload is not a usable clip.
    """
    upload = Path(upload)
    root = root or sessions_root()
    prune_sessions(root)
    require_regular_file(upload)
    make_room(root, upload.stat().st_size)
    folder = Path(tempfile.mkdtemp(prefix=f"{uuid.uuid4().hex[:8]}-", dir=root))
    try:
        # The user's file name, so that messages about the clip name the file they chose.
        copy = folder / "upload" / upload.name
        copy.parent.mkdir()
        shutil.copyfile(upload, copy)
        clip = open_clip(copy, limits)
        first = clip.first_frame()
        Image.fromarray(first).save(folder / "first_frame.png")
        click_engine.prepare_in_background(first)  # the encoder runs while the user looks at the frame
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return PromptSession(
        folder=str(folder),
        clip_path=str(copy),
        clip_name=upload.stem,
        size=tuple(clip.size),
        native_size=tuple(clip.native_size),
        num_frames=clip.num_frames,
        fps=clip.fps,
        limits=limits,
        notes=list(clip.notes),
        objects=[MarkedObject()],
    )


def delete_session(session: PromptSession | None) -> None:
    """Remove a session's folder (gr.State's delete_callback: the browser tab is gone)."""
    if session is not None and session.folder and Path(session.folder).is_relative_to(sessions_root()):
        shutil.rmtree(session.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Editing (each returns a new session; the old one is never modified, as gr.State expects)


def _copy(session: PromptSession) -> PromptSession:
    return dataclasses.replace(session, objects=[dataclasses.replace(o, marks=list(o.marks)) for o in session.objects])


def add_object(session: PromptSession) -> PromptSession:
    new = _copy(session)
    # An empty last object is reused: pressing "new object" twice does not leave an empty one behind.
    if not new.objects or new.objects[-1].marks or new.objects[-1].brush:
        new.objects.append(MarkedObject())
    new.current = len(new.objects) - 1
    new.corner = None
    return new


def select_object(session: PromptSession, index: int) -> PromptSession:
    new = _copy(session)
    new.current = max(0, min(int(index), len(new.objects) - 1))
    new.corner = None
    return new


def remove_object(session: PromptSession) -> PromptSession:
    """Remove the current object; the objects after it move up one id."""
    new = _copy(session)
    if new.objects:
        del new.objects[new.current]
    if not new.objects:
        new.objects.append(MarkedObject())
    new.current = min(new.current, len(new.objects) - 1)
    new.corner = None
    return new


def clear(session: PromptSession) -> PromptSession:
    """Forget every mark, brush stroke and the uploaded mask."""
    return dataclasses.replace(
        session, objects=[MarkedObject()], current=0, uploaded=None, uploaded_ids=[], corner=None
    )


def click(session: PromptSession, x: float, y: float, tool: str) -> PromptSession:
    """A click on the first frame with ``tool``: an include/exclude point, or one corner of a box."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}")
    h, w = session.size
    x, y = float(min(max(x, 0), w - 1)), float(min(max(y, 0), h - 1))
    new = _copy(session)
    if not new.objects:
        new.objects.append(MarkedObject())
        new.current = 0
    target = new.objects[new.current]
    if tool == BOX:
        if new.corner is None:
            new.corner = (x, y)
            return new
        (x0, y0), new.corner = new.corner, None
        if abs(x - x0) < 2 or abs(y - y0) < 2:
            return new  # a double click, not a box
        target.marks.append(Mark(BOX, (min(x0, x), min(y0, y), max(x0, x), max(y0, y))))
        return new
    new.corner = None
    target.marks.append(Mark(tool, (x, y)))
    return new


def undo(session: PromptSession) -> PromptSession:
    """Take back the current object's last mark (a pending box corner first, the brush strokes last)."""
    new = _copy(session)
    if new.corner is not None:
        new.corner = None
        return new
    if not new.objects:
        return new
    target = new.objects[new.current]
    if target.marks:
        target.marks.pop()
    elif target.brush:
        target.brush = None
    return new


def add_brush(session: PromptSession, layer: np.ndarray) -> PromptSession:
    """Add painted pixels (an editor layer: RGBA, alpha = painted) to the current object's brush mask."""
    painted = vprompts.brush_from_rgba(layer)
    if painted.shape != tuple(session.size):
        painted = cv2.resize(painted.view(np.uint8), session.size[::-1], interpolation=cv2.INTER_NEAREST) > 0
    if not painted.any():
        return session
    new = _copy(session)
    if not new.objects:
        new.objects.append(MarkedObject())
        new.current = 0
    target = new.objects[new.current]
    if target.brush:
        painted |= np.asarray(Image.open(target.brush)) > 0
    path = new.path / f"brush_{uuid.uuid4().hex[:8]}.png"
    Image.fromarray(painted.astype(np.uint8) * 255).save(path)
    target.brush = str(path)
    return new


def set_uploaded_mask(session: PromptSession, path: str | Path) -> PromptSession:
    """Use an uploaded palette PNG as the prompt (its ids kept); marked objects are renumbered after it."""
    label_map = vprompts.mask_from_upload(path, session.size)
    new = _copy(session)
    new.uploaded = str(vmasks.write_palette_png(label_map, new.path / f"uploaded_{uuid.uuid4().hex[:8]}.png"))
    new.uploaded_ids = vmasks.object_ids(label_map)
    return new


def drop_uploaded_mask(session: PromptSession) -> PromptSession:
    return dataclasses.replace(_copy(session), uploaded=None, uploaded_ids=[])


# --------------------------------------------------------------------------------------------------------------
# Marks -> label map, preview


def marked_object(prompt: vprompts.ObjectPrompt) -> MarkedObject:
    """The session's form of an object given as clicks and boxes (the API's JSON)."""
    clicks = [Mark(INCLUDE if c.positive else EXCLUDE, (c.x, c.y)) for c in prompt.clicks]
    return MarkedObject(clicks + [Mark(BOX, (b.x0, b.y0, b.x1, b.y1)) for b in prompt.boxes])


def _object_prompt(obj: MarkedObject) -> vprompts.ObjectPrompt:
    clicks = [vprompts.Click(m.coords[0], m.coords[1], m.kind == INCLUDE) for m in obj.marks if m.kind != BOX]
    boxes = [vprompts.Box(*m.coords) for m in obj.marks if m.kind == BOX]
    brush = np.asarray(Image.open(obj.brush)) > 0 if obj.brush else None
    return vprompts.ObjectPrompt(clicks=clicks, boxes=boxes, brush=brush)


def label_map(session: PromptSession, frame: np.ndarray | None = None) -> np.ndarray:
    """The first-frame label map all marks and the uploaded mask make (all zeros when nothing is marked).

    Objects with no positive mark yet (new, or only exclude clicks) are left out rather than refused.
    """
    h, w = session.size
    result = vmasks.read_palette_png(session.uploaded, size=(h, w)) if session.uploaded else np.zeros((h, w), np.uint8)
    prompted = [(i, o) for i, o in enumerate(session.objects) if o.has_positive]
    if not prompted:
        return result
    if session.object_id(prompted[-1][0]) > 255:
        raise vprompts.PromptError(
            f"The uploaded mask's ids go up to {session.base_id}, which leaves no room for "
            f"{len(prompted)} more objects (ids are at most 255); remove some marked objects."
        )
    frame = session.first_frame() if frame is None else frame
    engine = click_engine.load_engine()
    marked = vprompts.prompts_to_mask(frame, [_object_prompt(o) for _, o in prompted], engine=engine)
    for rank, (index, _) in enumerate(prompted, start=1):
        result[marked == rank] = session.object_id(index)
    return result


def save_prompt(session: PromptSession, frame: np.ndarray | None = None) -> tuple[np.ndarray, Path]:
    """The label map, also written as the session's prompt.png (what a run reads)."""
    labels = label_map(session, frame)
    return labels, vmasks.write_palette_png(labels, session.prompt_path)


PREVIEW_SIDE = 960  # the editor's picture: small clips are enlarged so objects are easy to click, big ones shrunk


def preview_scale(session: PromptSession) -> float:
    """Preview pixels per first-frame pixel."""
    return PREVIEW_SIDE / max(session.size)


def from_preview(session: PromptSession, x: float, y: float) -> tuple[float, float]:
    """A click on the preview, in first-frame pixels."""
    scale = preview_scale(session)
    return x / scale, y / scale


def preview(session: PromptSession, labels: np.ndarray | None = None, frame: np.ndarray | None = None) -> np.ndarray:
    """The first frame with the prompt mask blended in and every mark drawn, ``PREVIEW_SIDE`` pixels long."""
    frame = session.first_frame() if frame is None else frame
    labels = label_map(session, frame) if labels is None else labels
    scale = preview_scale(session)
    h, w = session.size
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    interpolation = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
    image = cv2.resize(frame, size[::-1], interpolation=interpolation)
    image = vmasks.overlay(image, vmasks.resize_labels(labels, size), alpha=0.45)
    radius = max(5, round(0.012 * min(size)))
    thickness = max(2, radius // 3)
    colours = vmasks.colors_for(session.all_ids())

    def at(*coords: float) -> tuple[int, ...]:
        return tuple(round(v * scale) for v in coords)

    for index, obj in enumerate(session.objects):
        colour = colours[session.object_id(index)]
        selected = index == session.current
        for mark in obj.marks:
            if mark.kind == BOX:
                x0, y0, x1, y1 = at(*mark.coords)
                cv2.rectangle(image, (x0, y0), (x1, y1), (255, 255, 255), thickness + 2, cv2.LINE_AA)
                cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
                continue
            centre = at(*mark.coords)
            fill = (46, 204, 64) if mark.kind == INCLUDE else (230, 40, 40)
            ring = radius + thickness + (2 if selected else 0)
            cv2.circle(image, centre, ring, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(image, centre, radius, fill, -1, cv2.LINE_AA)
            arm = max(2, radius * 2 // 3)
            cv2.line(image, (centre[0] - arm, centre[1]), (centre[0] + arm, centre[1]), (255, 255, 255), 2)
            if mark.kind == INCLUDE:
                cv2.line(image, (centre[0], centre[1] - arm), (centre[0], centre[1] + arm), (255, 255, 255), 2)
    if session.corner is not None:
        corner = at(*session.corner)
        cv2.drawMarker(image, corner, (255, 255, 255), cv2.MARKER_CROSS, radius * 4 + 4, thickness + 2)
        cv2.drawMarker(image, corner, (20, 20, 20), cv2.MARKER_CROSS, radius * 4, thickness)
    return image


def engine_text() -> str:
    """Which engine turns clicks into masks here, and why not SAM 2 when it is GrabCut; while it is still loading
    (an upload starts it in the background) it says so rather than making the page wait."""
    engine = click_engine.built_engine()
    return engine.describe() if engine is not None else "the click engine (loading; the first click waits for it)"


def object_choices(session: PromptSession) -> list[tuple[str, int]]:
    """(label, index) of each marked object, for a radio: "Object 3 · 2 include, 1 box". An object not marked yet
    says what to do ("Object 3 · new: click the frame to mark it"), not "empty": after an uploaded mask with
    objects 1 and 2 it is the next object, and the legend shows only the objects that exist."""
    choices = []
    for i, o in enumerate(session.objects):
        text = o.describe() if o.marks or o.brush else "new: click the frame to mark it"
        choices.append((f"Object {session.object_id(i)} · {text}", i))
    return choices


def legend_entries(session: PromptSession, labels: np.ndarray) -> list[vmasks.LegendEntry]:
    """One entry per object present in ``labels``, uploaded ones labelled as such."""
    present = vmasks.object_ids(labels)
    names = {i: f"object {i}" + (" (uploaded)" if i in session.uploaded_ids else "") for i in present}
    return vmasks.legend(present, names)
