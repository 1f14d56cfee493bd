"""The Compare page's run and its results, without Gradio: start a run in the background and follow it, then turn
its bundle into tile images, captions, a table and downloads.
"""

from __future__ import annotations

import base64
import contextvars
import copy
import datetime as _dt
import html
import logging
import re
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from vos import bundle as vbundle
from vos import masks as vmasks
from vos import runner
from vos.bundle import MethodRecord, RunBundle, Status, load_bundle
from vos.methods import UNSUP, get_info
from vos.specs import MethodSpec
from vos.video import Clip, resize_frame

log = logging.getLogger(__name__)

DISPLAY_SIDE = 640  # tiles are sent to the browser at most this long: they are shown a third of a page wide
FRAME_QUALITY = 90


@dataclass
class RunRequest:
    """What the user asked for on the Compare page (or through the API)."""

    specs: list[MethodSpec]
    device: str = "auto"
    dtype: str = "fp32"  # autocast precision: bf16 / fp16 where the device has matrix units for it
    max_side: int | None = 854  # the methods' working resolution (long side); None = the clip's size
    max_frames: int | None = None  # run on the clip's first frames only; None = all
    weights: str = "hub"
    ground_truth: str | None = None  # a zip or folder of palette PNGs
    time_budget_s: float | None = None  # methods still running then are stopped, those not started cancelled


# --------------------------------------------------------------------------------------------------------------
# Running


def new_run_dir(folder: Path, clip_name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_name)[:40] or "clip"
    path = folder / "runs" / f"{safe}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = folder / "runs" / f"{safe}-{stamp}-{suffix}"
    return path


def run_comparison(
    clip: Clip,
    prompt: np.ndarray,
    request: RunRequest,
    out_dir: Path,
    *,
    events: runner.RunEvents | None = None,
    cancel: threading.Event | None = None,
) -> runner.RunResult:
    """Run the request's methods on ``clip`` at its working resolution and write the bundle into ``out_dir``.

    Past the request's time budget the run is stopped as the Stop button stops it, and the stopped methods' records
    say why."""
    work = clip.with_max_side(request.max_side)
    ground_truth = runner.read_ground_truth(request.ground_truth, work) if request.ground_truth else None
    cancel = cancel or threading.Event()
    expired = threading.Event()
    timer = None
    if request.time_budget_s:

        def expire() -> None:
            expired.set()
            cancel.set()

        timer = threading.Timer(request.time_budget_s, expire)
        timer.daemon = True
        timer.start()
    try:
        with runner.disk_full_as_error(out_dir):
            result = runner.run_methods(
                work,
                prompt,
                request.specs,
                out_dir,
                device=request.device,
                dtype=request.dtype,
                weights=request.weights,
                ground_truth=ground_truth,
                events=events,
                cancel=cancel,
                settings={"max_side": request.max_side, "max_frames": clip.num_frames, "app": True},
            )
    finally:
        if timer is not None:
            timer.cancel()
    if expired.is_set():
        for record in result.records:
            if record.status == runner.CANCELLED:
                record.error = f"stopped: the run passed its {request.time_budget_s:g}-second budget ($VOS_RUN_SECONDS)"
                record.hint = "Run fewer methods at a time, at a lower resolution, or on fewer frames."
        runner.write_run_json(result)
    return result


@dataclass
class Timing:
    """When a running method started, and when its current stage and its frames started: the live panel's
    elapsed time and estimate of the time left."""

    started: float
    stage: str | None = None
    stage_started: float = 0.0
    first_frame_at: float | None = None  # when frame 0's label map arrived (frame 0 often costs more: not counted)

    def left_s(self, record: MethodRecord, now: float) -> float | None:
        """Seconds left: of the frames after frame 0 at the pace so far, or of the current stage before frame 0."""
        total = record.frames_total or 0
        if record.frames_done >= 2 and self.first_frame_at is not None and total:
            per_frame = (now - self.first_frame_at) / (record.frames_done - 1)
            return per_frame * (total - record.frames_done)
        progress = _stage_progress(record.stage)
        if record.frames_done == 0 and progress is not None and progress[0] > 0:
            done, steps = progress
            return (now - self.stage_started) / done * (steps - done)
        return None


def _stage_progress(stage: str | None) -> tuple[int, int] | None:
    match = re.search(r"(\d+)/(\d+)$", stage or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass
class Live:
    """A snapshot of a run in progress: one record per requested method (copies), and whether it ended."""

    records: list[MethodRecord]
    done: bool = False
    result: runner.RunResult | None = None
    error: BaseException | None = None
    timings: dict[str, Timing] = field(default_factory=dict)
    previews: dict[str, str] = field(default_factory=dict)  # key -> data: URI of its latest label map's overlay


PREVIEW_SIDE = 320  # the live tiles' pictures
PREVIEW_EVERY_S = 0.5  # at most this often per method: composing a preview must not slow the method down


@dataclass
class _Tracker:
    pending: list[MethodRecord]
    out_dir: Path | None = None
    frames_dir: Path | None = None
    started: dict[str, MethodRecord] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)
    previews: dict[str, str] = field(default_factory=dict)
    preview_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_start(self, record: MethodRecord) -> None:
        with self.lock:
            self.started[record.key] = record
            self.timings[record.key] = Timing(time.monotonic())

    def on_progress(self, record: MethodRecord, progress) -> None:
        with self.lock:
            timing = self.timings.get(record.key)
            if timing is not None and progress.stage != timing.stage:
                timing.stage, timing.stage_started = progress.stage, time.monotonic()

    def on_frame(self, record: MethodRecord, done: int, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            timing = self.timings.get(record.key)
            if timing is not None and done == 1:
                timing.first_frame_at = now
            due = now - self.preview_at.get(record.key, 0.0) >= PREVIEW_EVERY_S or done == total
        if due and self.out_dir is not None and self.frames_dir is not None:
            preview = _preview(self.out_dir, self.frames_dir, record.key, done - 1)
            with self.lock:
                self.preview_at[record.key] = now
                if preview is not None:
                    self.previews[record.key] = preview

    def snapshot(self) -> Live:
        with self.lock:
            records = [copy.copy(self.started.get(r.key, r)) for r in self.pending]
            return Live(records, timings=dict(self.timings), previews=dict(self.previews))


def _preview(out_dir: Path, frames_dir: Path, key: str, index: int) -> str | None:
    """Frame ``index`` with ``key``'s label map over it, as a small JPEG data: URI; None while either is not
    written yet (frames are extracted beside the run)."""
    mask_path = out_dir / "masks" / f".{key}.partial" / runner.MASK_NAME.format(index)
    frame_file = frame_path(frames_dir, index)
    try:
        frame = np.asarray(Image.open(frame_file).convert("RGB"))
        label_map = vmasks.read_palette_png(mask_path)
    except (OSError, ValueError, vmasks.MaskError):
        return None
    h, w = frame.shape[:2]
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = resize_frame(frame, size) if scale < 1 else frame
    image = vmasks.overlay(small, vmasks.resize_labels(label_map, size))
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else None


def run_in_background(
    clip: Clip,
    prompt: np.ndarray,
    request: RunRequest,
    out_dir: Path,
    *,
    cancel: threading.Event,
    interval: float = 0.5,
    frames_dir: Path | None = None,
) -> Iterator[Live]:
    """Run in a worker thread and yield a snapshot every ``interval`` seconds, and a last one with ``done``.

    The worker runs in a copy of the caller's context, so a progress tracker that follows tqdm through a context
    variable (Gradio's) sees the runner's per-method bars. Closing the iterator early sets ``cancel``: the runner
    stops after the frame it is on. With ``frames_dir`` the display-size frames are extracted there beside the
    run, and each snapshot carries every method's latest label map over its frame (``Live.previews``).
    """
    tracker = _Tracker([pending_record(spec) for spec in request.specs], out_dir, frames_dir)
    outcome: dict[str, object] = {}
    events = runner.RunEvents(on_start=tracker.on_start, on_frame=tracker.on_frame, on_progress=tracker.on_progress)

    def work() -> None:
        try:
            outcome["result"] = run_comparison(clip, prompt, request, out_dir, events=events, cancel=cancel)
        except BaseException as err:  # noqa: BLE001 -- handed to the caller, who raises it in its own thread
            outcome["error"] = err

    if frames_dir is not None:
        threading.Thread(target=_extract_quietly, args=(clip, frames_dir), name="vos-frames", daemon=True).start()
    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="vos-run", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(interval)
            if thread.is_alive():
                yield tracker.snapshot()
    finally:
        if thread.is_alive():  # the consumer went away (Stop, closed tab): stop the methods too
            cancel.set()
    result = outcome.get("result")
    last = tracker.snapshot()
    records = list(result.records) if isinstance(result, runner.RunResult) else last.records
    yield Live(records, True, result, outcome.get("error"), last.timings, last.previews)  # type: ignore[arg-type]


def _extract_quietly(clip: Clip, frames_dir: Path) -> None:
    try:
        extract_frames(clip, frames_dir)
    except Exception as err:  # noqa: BLE001 -- previews are a nicety; the results extract the frames again
        log.warning("could not extract the frames for the live previews: %s", err)


def pending_record(spec: MethodSpec) -> MethodRecord:
    """The record of a method that has not started yet (what the progress list shows for it)."""
    info = get_info(spec.key)
    return MethodRecord(spec.key, info.title, info.task, spec.variant or info.default_variant)


STATUS_LABELS = {status: status.label for status in Status}


def clock(seconds: float) -> str:
    """1:05, 12:00, 1:02:03."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def live_detail(r: MethodRecord, total_frames: int, timing: Timing | None = None, now: float | None = None) -> str:
    """A running method's line: its stage ("fitting the mixtures 37/100") or its frame, elapsed time, time left."""
    now = time.monotonic() if now is None else now
    done = r.frames_done if r.status != runner.PENDING else 0
    if r.status == runner.RUNNING and done == 0:
        # Before frame 0 the method's own stages ("fitting the mixtures 37/100") say how far it got.
        parts = ["loading weights…" if r.load_s is None else (r.stage or "preparing frame 0…")]
    elif r.status == runner.RUNNING:
        parts = [f"frame {done}/{total_frames}"]
    elif r.status == runner.OK:
        parts = [f"{done}/{total_frames} frames"] + ([f"{r.fps:.1f} fps"] if r.fps else [])
    elif r.status == runner.CANCELLED:
        return r.stopped_text()
    else:
        return ""
    if r.status == runner.RUNNING and timing is not None:
        parts.append(f"{clock(now - timing.started)} elapsed")
        left = timing.left_s(r, now)
        if left is not None:
            parts.append(f"~{clock(left)} left" + (" in this stage" if done == 0 else ""))
    return " · ".join(parts)


def live_html(
    records: Sequence[MethodRecord],
    total_frames: int,
    timings: dict[str, Timing] | None = None,
    previews: dict[str, str] | None = None,
) -> str:
    """The live panel while a run goes on: one tile per method with its latest label map (as it arrives), a bar,
    and its stage or frame with elapsed time and an estimate of the time left."""
    timings, previews = timings or {}, previews or {}
    now = time.monotonic()
    tiles = []
    for r in records:
        done = r.frames_done if r.status != runner.PENDING else 0
        fraction = 1.0 if r.status == runner.OK else (done / total_frames if total_frames else 0.0)
        if r.status == runner.RUNNING and done == 0:
            fraction = 0.0
        detail = live_detail(r, total_frames, timings.get(r.key), now)
        label = STATUS_LABELS.get(r.status, r.status)
        state = html.escape(detail if r.status == runner.CANCELLED else " · ".join(filter(None, (label, detail))))
        picture = previews.get(r.key)
        image = (
            f'<img src="{picture}" alt="{html.escape(r.title)}: latest label map">'
            if picture
            else '<div class="vos-live-empty"></div>'
        )
        tiles.append(
            f'<div class="vos-live-row vos-status-{html.escape(r.status)}" data-key="{html.escape(r.key)}">'
            f'<div class="vos-live-picture">{image}</div>'
            f'<span class="vos-live-name">{html.escape(r.title)} <small>{html.escape(r.variant)}</small></span>'
            f'<span class="vos-live-bar"><span style="width:{100 * fraction:.0f}%"></span></span>'
            f'<span class="vos-live-state">{state}</span></div>'
        )
    return '<div class="vos-live">' + "".join(tiles) + "</div>"


# --------------------------------------------------------------------------------------------------------------
# Reading a finished run


@dataclass
class RunView:
    bundle: RunBundle
    records: list[MethodRecord]

    @property
    def path(self) -> Path:
        return self.bundle.path

    @property
    def num_frames(self) -> int:
        return self.bundle.num_frames

    @property
    def object_ids(self) -> list[int]:
        return [int(i) for i in self.bundle.data["prompt"]["object_ids"]]

    @property
    def has_scores(self) -> bool:
        return any(r.scores for r in self.records)


def load_view(run_dir: str | Path) -> RunView:
    bundle = load_bundle(run_dir)
    return RunView(bundle, bundle.records)


def frame_path(frames_dir: Path, index: int) -> Path:
    return frames_dir / f"{index:05d}.jpg"


def extract_frames(clip: Clip, frames_dir: Path) -> Path:
    """Every frame of ``clip`` at its output size as JPEG, once: the frame slider reads these, not the video."""
    marker = frames_dir / ".complete"  # holds how many frames are there (a run may use only the first ones)
    if marker.exists() and int(marker.read_text() or 0) >= clip.num_frames:
        return frames_dir
    frames_dir.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(clip.output_frames()):
        Image.fromarray(_display(frame)).save(frame_path(frames_dir, index), quality=FRAME_QUALITY)
    marker.write_text(str(clip.num_frames))
    return frames_dir


def _display(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= DISPLAY_SIDE:
        return image
    scale = DISPLAY_SIDE / max(h, w)
    return resize_frame(image, (max(1, round(h * scale)), max(1, round(w * scale))))


def _dimmed(frame: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return (np.repeat(grey[..., None], 3, axis=2) * 0.45).astype(np.uint8)


def tile_images(view: RunView, frames_dir: Path, index: int) -> list[np.ndarray]:
    """The input frame (with the prompt on frame 0) and one overlay per method, at display size; a method without
    masks (failed, stopped) gets the frame dimmed."""
    index = max(0, min(int(index), view.num_frames - 1))
    frame = np.asarray(Image.open(frame_path(frames_dir, index)).convert("RGB"))
    tiles = []
    if index == 0:
        tiles.append(vmasks.overlay(frame, vmasks.read_palette_png(view.path / "prompt.png")))
    else:
        tiles.append(frame)
    for record in view.records:
        mask = view.bundle.mask(record.key, index) if record.has_masks else None
        tiles.append(vmasks.overlay(frame, mask) if mask is not None else _dimmed(frame))
    return tiles


def tile_files(view: RunView, frames_dir: Path, index: int) -> list[Path]:
    """``tile_images`` composed once per frame and kept as JPEG files beside the frames: scrubbing back and playing
    again serve files, and the browser swaps one picture for the next without composing anything."""
    index = max(0, min(int(index), view.num_frames - 1))
    folder = frames_dir / "tiles" / view.path.name
    paths = [folder / f"{index:05d}_{tile}.jpg" for tile in range(len(view.records) + 1)]
    if not all(p.exists() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for path, image in zip(paths, tile_images(view, frames_dir, index)):
            part = path.with_suffix(f".{threading.get_ident()}.part")
            Image.fromarray(image).save(part, format="JPEG", quality=FRAME_QUALITY)
            part.replace(path)  # a tile being written by another callback is never read half-written
    return paths


def playing_index(start_index: int, started: float, fps: float, num_frames: int, now: float | None = None) -> int:
    """The frame to show while playing: the clip's own frame rate in wall time, so a slow round trip skips frames
    instead of slowing the clip down."""
    now = time.monotonic() if now is None else now
    return (start_index + int((now - started) * fps)) % max(1, num_frames)


def tile_label(record: MethodRecord) -> str:
    return runner.tile_title(record)


def tile_subtitle(record: MethodRecord) -> str:
    return f"{record.variant} · {record.task_words}"


def _code(text: str) -> str:
    """Escape, then turn `backticked` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def swatches_html(entries: Sequence[vmasks.LegendEntry]) -> str:
    items = "".join(
        f'<span class="vos-swatch"><i style="background:{e.hex}"></i>{html.escape(e.label)}</span>' for e in entries
    )
    return f'<span class="vos-legend">{items}</span>'


def tile_caption(record: MethodRecord) -> str:
    """HTML under a method's tile: speed, memory and score; or what went wrong and what to do about it."""
    if record.ok:
        parts = []
        if record.fps is not None:
            parts.append(f"<b>{record.fps:.1f} fps</b>")
        if record.peak_memory_mib is not None:
            kind = "GPU" if record.memory_kind == "cuda_allocated" else "RAM"
            parts.append(f"{record.peak_memory_mib:,.0f} MiB peak {kind}")
        if record.load_s is not None:
            parts.append(f"load {record.load_s:.1f} s")
        if record.scores and "J&F" in record.scores:
            parts.append(f"<b>J&amp;F {record.scores['J&F']:.3f}</b>")
        text = '<div class="vos-caption vos-ok">' + " · ".join(parts) + "</div>"
        if record.task == UNSUP:
            text += _segments_html(record)
        return text
    label = STATUS_LABELS.get(record.status, record.status)
    if record.status == runner.CANCELLED:
        label = record.stopped_text() + (" (its masks are kept)" if record.has_masks else "")
    body = f'<div class="vos-caption vos-problem"><b>{html.escape(label[:1].upper() + label[1:])}</b>'
    if record.error:
        body += f'<div class="vos-error">{_code(record.error)}</div>'
    if record.hint:
        body += f'<div class="vos-hint">What to do: {_code(_hint_text(record.hint))}</div>'
    return body + "</div>"


def _hint_text(hint: str) -> str:
    """A bare command as a hint reads better in code style."""
    return f"`{hint}`" if hint.startswith("python ") and "`" not in hint else hint


MAX_EXTRA_SHOWN = 8


def _segments_html(record: MethodRecord) -> str:
    """Legend of an unsupervised method's tile: matched segments wear the prompted objects' colours."""
    matched = sorted({v for v in (record.segment_ids or {}).values()} - set(record.extra_ids))
    entries = [vmasks.legend([i], {i: f"object {i}"})[0] for i in matched]
    extras = list(record.extra_ids)
    entries += [vmasks.legend([i], {i: f"extra {i}"})[0] for i in extras[:MAX_EXTRA_SHOWN]]
    more = f" and {len(extras) - MAX_EXTRA_SHOWN} more extra segments" if len(extras) > MAX_EXTRA_SHOWN else ""
    if not entries:
        return '<div class="vos-caption">No segment matched a prompted object.</div>'
    note = "Segments matched to your objects on frame 1 wear their colours; the rest are extra segments."
    return f'<div class="vos-caption">{swatches_html(entries)}{html.escape(more)}<br><small>{note}</small></div>'


def table_rows(view: RunView) -> tuple[list[str], list[list[object]]]:
    """Per-method numbers; the J&F column only when a ground truth was scored."""
    return vbundle.table_rows(view.records)


def table_html(view: RunView) -> str:
    """The per-method numbers as a compact table that scrolls sideways on a narrow screen."""
    headers, rows = table_rows(view)
    numeric = {"fps", "Peak memory (MiB)", "Load (s)", "J&F"}

    def cell(header: str, value: object) -> str:
        cls = ' class="vos-num"' if header in numeric else ""
        if value is None:
            text = "–"
        elif header == "Peak memory (MiB)":
            text = f"{value:,}"
        else:
            text = str(value)
        if header == "Status":
            kind = "ok" if value == "done" else "bad"
            return f'<td><span class="vos-pill vos-pill-{kind}">{html.escape(text)}</span></td>'
        return f"<td{cls}>{html.escape(text)}</td>"

    head = "".join(f"<th{' class=vos-num' if h in numeric else ''}>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(h, v) for h, v in zip(headers, row)) + "</tr>" for row in rows)
    return f'<div class="vos-table-wrap"><table class="vos-table"><tr>{head}</tr>{body}</table></div>'


def memory_note(view: RunView) -> str:
    kinds = {r.memory_kind for r in view.records if r.memory_kind}
    device = view.bundle.data.get("settings", {}).get("device", "?")
    if kinds == {"cuda_allocated"}:
        what = "peak GPU memory allocated by PyTorch during the method's run"
    else:
        what = "peak resident memory of the app's process during the method's run (includes the app itself)"
    work = view.bundle.data["clip"].get("work_size")
    at = f" at {work[1]}x{work[0]}" if work else ""
    return f"Ran on {device}{at}. Memory: {what}. fps counts segmentation only; loading is timed apart."


# --------------------------------------------------------------------------------------------------------------
# Downloads


def without_server_paths(value: Any) -> Any:
    """A copy of run.json data (or part of it) in which every absolute path is cut to its file name: what the app
    gives its users must not show the server's folders (session folders, the upload cache, the weights cache)."""
    if isinstance(value, dict):
        return {key: without_server_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_server_paths(item) for item in value]
    if isinstance(value, str):
        return _SERVER_PATH.sub(lambda match: match.group(0).rstrip("/").rsplit("/", 1)[-1], value)
    return value


# An absolute POSIX path, alone or inside a message ("No weights ... Looked in: /root/.cache/..."); not "3/8".
_SERVER_PATH = re.compile(r"(?<![\w.~/:])/[^\s'\",;()]+")


@dataclass
class Downloads:
    video: Path | None  # side_by_side.mp4 (None if it could not be encoded)
    masks: Path | None  # every finished method's palette PNGs, one folder per method (None if none finished)
    bundle: Path  # the whole run bundle

    def files(self) -> list[Path]:
        return [p for p in (self.video, self.masks, self.bundle) if p is not None]


def downloads(view: RunView, dest: Path) -> Downloads:
    """Zip the run's masks and bundle into ``dest/<run>/`` under short names (``<clip>_masks.zip``)."""
    run = view.path.name
    clip = re.sub(r"[^A-Za-z0-9_.-]+", "_", view.bundle.name)[:40] or "clip"
    folder = dest / run
    masks = _zip_masks(view, folder / f"{clip}_masks.zip", root=f"{run}_masks")
    bundle = vbundle.zip_bundle(view.path, folder / f"{clip}_run.zip", run_json=without_server_paths)
    return Downloads(view.bundle.video, masks, bundle)


def _zip_masks(view: RunView, dest: Path, *, root: str) -> Path | None:
    """One folder per finished method, and per stopped one with the frames it did and a STOPPED.txt saying how far
    it got (the download must not vanish because of a Stop); a failed method's frames stay in the run bundle."""
    chosen = [r for r in view.records if r.ok or r.status == runner.CANCELLED]
    kept = [(r, vbundle.masks_folder(view.path, r)) for r in chosen]
    kept = [(r, f) for r, f in kept if f is not None and f.is_dir() and any(f.glob("*.png"))]
    if not kept:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as archive:
        for record, masks_folder in kept:
            for png in sorted(masks_folder.glob("*.png")):
                archive.write(png, f"{root}/{record.key}/{png.name}")
            if not record.ok:
                note = f"{record.title}: {record.status_text()}; frames 0 to {record.frames_done - 1} are here.\n"
                archive.writestr(f"{root}/{record.key}/STOPPED.txt", note)
    part.replace(dest)
    return dest
