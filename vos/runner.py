"""Run several methods on one clip, one after another, each isolated, and write a run bundle.

A run bundle is a folder (its layout and run.json's fields: ``vos.bundle``)::

    run.json                     clip, prompt, settings, and one record per method (status, timings, memory,
                                 variant, effective options, weights' source and sha256)
    prompt.png                   the first-frame label map (palette PNG)
    frames/00000.jpg             the input frames at the working size, so the bundle plays back anywhere
    masks/<method>/00000.png     each finished method's label maps at the clip's size (palette PNGs)
    partial/<method>/00000.png   what a method that failed or was stopped produced before it stopped
    side_by_side.mp4             input + one tile per method (H.264)

Isolation: an exception or out-of-memory in one method is recorded in its record and the others still run; memory
is freed between methods. Unsupervised methods return their own segment ids; they are matched to the prompted
objects on the first frame (Hungarian on IoU) and unmatched segments are kept as extra ids.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import vos
from vos import bundle as vbundle
from vos import device as vdevice
from vos import masks as vmasks
from vos import runnable as vrunnable
from vos.bundle import MASK_NAME, MethodRecord, Status
from vos.errors import VosError
from vos.matching import SegmentMatcher
from vos.methods import base as mbase
from vos.specs import MethodSpec, apply_overrides, check_weights_spec, parse_method_specs
from vos.text import format_table
from vos.video import Clip, Limits, VideoError, open_clip, write_mp4

log = logging.getLogger(__name__)

RUN_FORMAT = vbundle.FORMAT
# Record statuses (short names for vos.bundle.Status, which pages and tests use as runner.OK, ...)
PENDING, RUNNING, OK, FAILED, OOM = Status.PENDING, Status.RUNNING, Status.OK, Status.FAILED, Status.OOM
NO_WEIGHTS, CANCELLED = Status.NO_WEIGHTS, Status.CANCELLED


class RunError(VosError, ValueError):
    """A run that cannot start (bad output folder, bad --from file...)."""


class DiskFull(VosError, OSError):
    """The disk filled up while a run wrote its bundle: not the method's fault, and nothing is kept as if complete.
    The CLI exits with code 1 (the run started; it did not finish), not 2 (bad input)."""

    exit_code = 1

    def __init__(self, path: Path, err: OSError):
        super().__init__(
            err.errno,
            f"Disk full at {path} ({err.strerror or err}): the run stopped and its unfinished files were removed. "
            "Free some space, or write elsewhere (--out), and run again.",
        )
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_as_error(path: Path) -> Iterator[None]:
    """Turn a full disk (or quota) while writing under ``path`` into DiskFull, whichever writer hit it."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(path, err) from err
        raise


# --------------------------------------------------------------------------------------------------------------
# What happened


@dataclass
class RunResult:
    out_dir: Path
    clip: Clip
    object_ids: list[int]
    records: list[MethodRecord]
    settings: dict[str, Any]
    frames: dict[str, Any] | None = None  # run.json's "frames": the input frames saved in the bundle

    def record(self, key: str) -> MethodRecord:
        return next(r for r in self.records if r.key == key)

    def masks_dir(self, key: str) -> Path:
        return self.out_dir / vbundle.MASKS_DIR / key

    def read_mask(self, key: str, index: int) -> np.ndarray | None:
        """A finished method's label map, or what a stopped one produced for that frame; None if it made none."""
        folder = vbundle.masks_folder(self.out_dir, self.record(key))
        path = vbundle.mask_path(folder, index) if folder is not None else None
        return vmasks.read_palette_png(path) if path is not None and path.exists() else None


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class RunEvents:
    """Callbacks for a UI. Every field is optional."""

    on_start: Callable[[MethodRecord], None] | None = None
    on_frame: Callable[[MethodRecord, int, int], None] | None = None  # record, frames done, total
    on_progress: Callable[[MethodRecord, mbase.Progress], None] | None = None  # every stage a method reports
    on_finish: Callable[[MethodRecord], None] | None = None


def _explain(err: BaseException, record: MethodRecord) -> None:
    """Fill status, error and hint from an exception, in words for the user."""
    from vos import weights as vweights

    if is_disk_full(err):
        raise err  # no method's failure: the whole run stops (its caller says where: disk_full_as_error)
    if isinstance(err, getattr(vweights, "WeightsUnavailable", ())):
        record.status = NO_WEIGHTS
        record.error = str(err)
        spec = str((record.config or {}).get("weights") or "hub").strip()
        from_manifest = vweights.spec_kind(spec) == vweights.HUB
        # `weights fetch` fills the cache from the manifest's sources: it helps only when the weights were to come
        # from there (hub) and the error says such a source exists; its message carries the command exactly then.
        if from_manifest and err.fetchable:
            record.hint = vrunnable.missing_weights_hint(record.key, err.command)
        elif not from_manifest:
            record.hint = (
                f"Check --weights {spec}: it must point at this method's weights (a file, a folder of them, or an "
                "hf:// repo that holds them)."
            )
    elif isinstance(err, mbase.MethodOutputError):
        record.status = FAILED
        record.error = str(err)
        record.hint = "This is a bug in the method; please report it with the clip's size."
    elif vdevice.is_out_of_memory(err):
        record.status = OOM
        record.error = f"Ran out of memory on {record.device}."
        record.hint = "Try a lower resolution (a smaller max side), fewer frames, or another device."
    elif isinstance(err, VosError):
        record.status = FAILED
        record.error = str(err)
    else:
        record.status = FAILED
        record.error = f"{type(err).__name__}: {err}"
        record.hint = "This looks like a bug; run with --verbose (-v) to see the traceback, and please report it."
        log.debug("%s failed", record.key, exc_info=err)


def run_methods(
    clip: Clip,
    first_mask: np.ndarray,
    specs: Sequence[MethodSpec],
    out_dir: str | Path,
    *,
    device: str = "auto",
    dtype: str | None = None,
    weights: str = "hub",
    ground_truth: dict[int, np.ndarray] | None = None,
    write_video: bool = True,
    events: RunEvents | None = None,
    cancel: threading.Event | None = None,
    settings: dict[str, Any] | None = None,
) -> RunResult:
    """Run ``specs`` on ``clip`` one after another and write the bundle into ``out_dir`` (created).

    Never raises for a method's failure: it is recorded and the next method runs. ``run.json`` is rewritten after
    each method, so a UI (or a person) can follow along.
    """
    out_dir = Path(out_dir)
    first_mask = mbase.check_first_mask(first_mask, clip.size)
    events = events or RunEvents()
    torch_device = vdevice.pick_device(device)
    vdevice.pick_dtype(dtype, torch_device)  # fp16 on the CPU: a user error now, not every method failing later
    out_dir.mkdir(parents=True, exist_ok=True)
    vmasks.write_palette_png(first_mask, out_dir / vbundle.PROMPT_FILE)
    records = []
    for spec in specs:
        info = mbase.get_info(spec.key)
        records.append(
            MethodRecord(
                spec.key, info.title, info.task, spec.variant or info.default_variant, variant_note=spec.variant_note
            )
        )
    result = RunResult(
        out_dir=out_dir,
        clip=clip,
        object_ids=[int(i) for i in np.unique(first_mask) if i != 0],
        records=records,
        settings={"device": str(torch_device), "dtype": dtype or "fp32", "weights": weights, **(settings or {})},
    )
    result.frames = _save_frames(clip, out_dir)
    write_run_json(result)
    for spec, record in zip(specs, records):
        if cancel is not None and cancel.is_set():
            record.status = CANCELLED
            continue
        _run_one(spec, record, result, first_mask, torch_device, dtype, weights, ground_truth, events, cancel)
        write_run_json(result)
        vdevice.free_memory(torch_device)
    if write_video:
        write_side_by_side(result)
        write_run_json(result)
    return result


def _run_one(
    spec: MethodSpec,
    record: MethodRecord,
    result: RunResult,
    first_mask: np.ndarray,
    torch_device: Any,
    dtype: str | None,
    weights: str,
    ground_truth: dict[int, np.ndarray] | None,
    events: RunEvents,
    cancel: threading.Event | None,
) -> None:
    clip = result.clip
    final_dir = result.masks_dir(spec.key)
    partial_dir = final_dir.with_name(f".{spec.key}.partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    shutil.rmtree(final_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    record.status = RUNNING
    record.frames_total = clip.num_frames
    record.device = str(torch_device)
    # What was asked for, kept even if the method cannot be built; replaced by method.config() once it is.
    record.config = {
        "key": spec.key,
        "variant": record.variant,
        "options": mbase.get_info(spec.key).resolve_options(spec.options),
        "weights": spec.weights or weights,
    }
    if events.on_start:
        events.on_start(record)
    matcher = SegmentMatcher(first_mask) if record.task == mbase.UNSUP else None
    memory = None
    bar = tqdm(total=clip.num_frames, desc=record.title, unit="frame", leave=True, dynamic_ncols=True)
    try:
        with vdevice.memory_probe(torch_device) as memory:
            _segment_into(
                spec, record, clip, first_mask, partial_dir, torch_device, dtype, weights, matcher, bar, events, cancel
            )
        record.status = OK
    except mbase.Stopped:
        record.status = CANCELLED
    except Exception as err:  # noqa: BLE001 -- isolation: any method failure is recorded, the run goes on
        _explain(err, record)
    finally:
        bar.close()
        # A method that never got its weights did no work: the process's memory then is not the method's.
        if memory is not None and record.status != NO_WEIGHTS:
            record.memory_kind = memory.kind
            record.peak_memory_mib = round(memory.peak_mib, 1)
            if memory.reserved_bytes is not None:
                record.reserved_memory_mib = round(memory.reserved_bytes / 2**20, 1)
    if record.status == OK:
        partial_dir.rename(final_dir)
        record.masks_dir = str(final_dir.relative_to(result.out_dir))
        if matcher is not None:
            record.segment_ids = {str(k): v for k, v in matcher.mapping.items()}
            record.extra_ids = list(matcher.extra_ids)
        if ground_truth:
            try:
                record.scores = score_against(final_dir, ground_truth, record.task)
            except VosError as err:  # a scoring problem must not hide the method's results
                log.warning("%s: could not score against the ground truth: %s", record.key, err)
    else:
        vbundle.keep_partial(partial_dir, result.out_dir, record)
    if events.on_finish:
        events.on_finish(record)
    log.info("%s: %s %s", record.key, record.status, record.error or record.status_line())


_DONE = object()  # what next() returns when a method's generator ends


def _segment_into(
    spec: MethodSpec,
    record: MethodRecord,
    clip: Clip,
    first_mask: np.ndarray,
    out: Path,
    torch_device: Any,
    dtype: str | None,
    weights: str,
    matcher: SegmentMatcher | None,
    bar: tqdm,
    events: RunEvents,
    cancel: threading.Event | None,
) -> None:
    """Build the method, stream its label maps into ``out`` as palette PNGs, fill the record's timings."""
    start = time.perf_counter()
    method = mbase.create(
        spec.key, spec.variant, device=str(torch_device), weights=spec.weights or weights, dtype=dtype, **spec.options
    )
    record.config = method.config()
    vdevice.synchronize(torch_device)
    record.load_s = time.perf_counter() - start

    def show(progress: mbase.Progress) -> None:
        record.stage = str(progress)
        if progress.stage != mbase.FRAME_STAGE:  # frames move the bar itself; a stage is shown beside it
            bar.set_postfix_str(str(progress), refresh=True)
        if events.on_progress:
            events.on_progress(record, progress)

    # Only the time spent inside the method counts towards first_frame_s, segment_s and fps: matching segments
    # and writing PNGs is the runner's work, the same for every method.
    frames = method.segment(clip, first_mask, progress=show, stop=cancel)
    compute = 0.0
    try:
        for index in itertools.count():
            tick = time.perf_counter()
            label_map = next(frames, _DONE)
            compute += time.perf_counter() - tick
            if label_map is _DONE:
                break
            if index == 0:
                record.first_frame_s = compute
            if matcher is not None:
                label_map = matcher(label_map, index)
            vmasks.write_palette_png(label_map, out / MASK_NAME.format(index))
            record.frames_done = index + 1
            bar.update(1)
            if events.on_frame:
                events.on_frame(record, index + 1, clip.num_frames)
    finally:
        frames.close()  # a method's per-clip state (and device memory) goes now, also on failure or cancel
    tick = time.perf_counter()
    vdevice.synchronize(torch_device)
    record.segment_s = compute + time.perf_counter() - tick
    if record.frames_done != clip.num_frames:
        raise VosError(f"{record.title} returned {record.frames_done} of {clip.num_frames} frames.")
    record.fps = record.frames_done / record.segment_s if record.segment_s > 0 else None


def score_against(masks_dir: Path, ground_truth: dict[int, np.ndarray], task: str) -> dict[str, float]:
    """J&F of one method's masks against ground-truth label maps keyed by frame index."""
    from vos import metrics

    names = {index: MASK_NAME.format(index)[:-4] for index in ground_truth}
    gt = {names[i]: mask for i, mask in ground_truth.items()}
    pred = {}
    for index, name in names.items():
        path = masks_dir / MASK_NAME.format(index)
        if path.exists():
            pred[name] = vmasks.read_palette_png(path)
    result = metrics.evaluate_sequence(pred, gt, task="unsup" if task == mbase.UNSUP else "semi")
    summary = metrics.summarize([result])
    return {"J&F": summary["J&F-Mean"], "J": summary["J-Mean"], "F": summary["F-Mean"]}


def read_ground_truth(path: str | Path, clip: Clip) -> dict[int, np.ndarray]:
    """Ground-truth label maps (folder or zip of palette PNGs) keyed by frame index.

    Numeric file names (DAVIS's 00000.png) give the index, so sparse annotations line up; other names are taken in
    natural order. Masks made for the clip before the upload limits shrank it are resized.
    """
    masks = vmasks.read_mask_dir(path)
    numeric = all(name.isdigit() for name in masks)
    gt = {}
    for order, (name, mask) in enumerate(masks.items()):
        index = int(name) if numeric else order
        if index < clip.num_frames:
            gt[index] = vmasks.fit_to_size(mask, clip.size, f"{name}.png")
    if not gt:
        raise vmasks.MaskError(path, f"no ground-truth mask matches a frame of this {clip.num_frames}-frame clip.")
    return gt


# --------------------------------------------------------------------------------------------------------------
# Bundle files


def write_run_json(result: RunResult) -> Path:
    return vbundle.write_run_json(
        result.out_dir,
        clip=result.clip.info(),
        object_ids=result.object_ids,
        settings=result.settings,
        hardware=vdevice.machine_info(),
        records=result.records,
        frames=result.frames,
        vos_version=vos.__version__,
    )


def _save_frames(clip: Clip, out_dir: Path) -> dict[str, Any] | None:
    """The input frames at the working size, into the bundle, so that it plays back without the clip's source."""
    try:
        return vbundle.write_frames(clip.frames(), out_dir)
    except (VideoError, OSError) as err:  # the methods read the same frames: each of them will report it
        log.warning("could not save the input frames into the run bundle: %s", err)
        return None


def tile_title(record: MethodRecord) -> str:
    return f"{record.title} · {record.variant} · {record.task_words}"


def grid_frames(result: RunResult) -> Iterator[np.ndarray]:
    """Side-by-side frames: the input (with the prompt on frame 0) and one overlay tile per method."""
    prompt = vmasks.read_palette_png(result.out_dir / vbundle.PROMPT_FILE)
    for index, frame in enumerate(result.clip.output_frames()):
        tiles = [
            vmasks.Tile(
                vmasks.overlay(frame, prompt) if index == 0 else frame,
                "Input" + (" + prompt" if index == 0 else ""),
                f"frame {index} / {result.clip.num_frames - 1}",  # counted from 0 to the last, as the app's slider
            )
        ]
        for record in result.records:
            label_map = result.read_mask(record.key, index)
            image = vmasks.overlay(frame, label_map) if label_map is not None else frame
            tiles.append(vmasks.Tile(image, tile_title(record), record.status_line(), ok=record.has_masks))
        yield vmasks.compose_grid(tiles)


def write_side_by_side(result: RunResult) -> Path | None:
    try:
        return write_mp4(grid_frames(result), result.out_dir / vbundle.VIDEO_FILE, fps=result.clip.fps)
    except (OSError, ValueError) as err:
        if is_disk_full(err):
            raise  # a run missing its video must not look complete
        log.warning("could not write the side-by-side video: %s", err)
        return None


# --------------------------------------------------------------------------------------------------------------
# CLI


def _prepare_out_dir(out: str | None) -> Path:
    """Check --out before any work: new or an empty folder, somewhere a folder can be made."""
    if not out:
        raise RunError("Give the run bundle's folder with --out RUN_DIR.")
    path = Path(out).expanduser()
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(f"{path} already exists and is not an empty folder; choose another --out.")
    except OSError as err:
        raise RunError(f"--out {path}: cannot look inside it ({err.strerror or err}); choose another --out.") from None
    missing = _missing_parents(path)
    ancestor = missing[-1].parent if missing else path.parent
    if not ancestor.is_dir():
        raise RunError(f"--out {path}: {ancestor} is a file, not a folder; choose another --out.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"--out {path}: cannot create folders in {ancestor} (permission denied); choose another --out.")
    return path


def _prepare_zip(out_dir: Path) -> Path:
    """--zip writes OUT.zip beside the bundle's folder: check now that it would not replace a file."""
    archive = out_dir.with_name(out_dir.name + ".zip")
    if archive.exists():
        raise RunError(f"--zip would write {archive}, which already exists; move it or choose another --out.")
    return archive


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; return them, deepest first, so a failed run can remove them."""
    missing = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # /proc, a read-only mount...: the write check above cannot foresee every refusal
        raise RunError(
            f"--out {path}: cannot create {path.parent} ({err.strerror or err}); choose another --out."
        ) from None
    return missing


def _new_work_dir(out_dir: Path) -> Path:
    # Not mkdtemp: it makes the folder 0700, and the finished bundle keeps the mode of this folder.
    work = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(6)}.partial"
    try:
        work.mkdir()
    except OSError as err:
        if is_disk_full(err):
            raise
        raise RunError(
            f"--out {out_dir}: cannot create folders in {out_dir.parent} ({err.strerror or err}); choose another --out."
        ) from None
    return work


def _load_from(path: str) -> dict[str, Any]:
    """Read a run.json and check every field `run --from` uses, so a damaged file fails with its name, not a
    KeyError halfway through."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"Cannot read {path}: {err}.") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT or "methods" not in data:
        raise RunError(f"{path} is not a run.json written by `python -m vos run`.")

    def require(ok: bool, what: str) -> None:
        if not ok:
            raise RunError(f"{path} is not a complete run.json: {what} is missing or malformed.")

    clip, prompt, settings, methods = (data.get(k) for k in ("clip", "prompt", "settings", "methods"))
    require(isinstance(clip, dict) and isinstance(clip.get("source"), (str, type(None))), '"clip.source"')
    require(isinstance(prompt, dict) and isinstance(prompt.get("file"), str), '"prompt.file"')
    require(isinstance(settings, dict), '"settings"')
    for name, kinds in (("max_side", int), ("max_frames", int), ("max_seconds", (int, float)), ("fps", (int, float))):
        value = settings.get(name)
        ok = value is None or (isinstance(value, kinds) and not isinstance(value, bool) and value > 0)
        require(ok, f'"settings.{name}"')
    for name in ("device", "dtype", "weights", "gt"):
        require(isinstance(settings.get(name), (str, type(None))), f'"settings.{name}"')
    require(isinstance(methods, list) and len(methods) > 0, '"methods"')
    for index, record in enumerate(methods):
        where = f'"methods[{index}]"'
        require(isinstance(record, dict), where)
        require(isinstance(record.get("key"), str) and isinstance(record.get("variant"), str), f"{where}.key/variant")
        config = record.get("config")
        require(config is None or isinstance(config, dict), f"{where}.config")
        if config is not None:
            require(isinstance(config.get("options", {}), dict), f"{where}.config.options")
            require(isinstance(config.get("weights_records", []), list), f"{where}.config.weights_records")
    return data


def _spec_from_record(record: dict[str, Any]) -> MethodSpec:
    """The MethodSpec that reproduces a run.json method record: same variant, options and weights."""
    config = record.get("config") or {}
    return MethodSpec(record["key"], record["variant"], dict(config.get("options", {})), config.get("weights"))


def _verify_recorded_weights(record: dict[str, Any], run_json: str) -> None:
    """The weights files a local --weights spec pointed at must still be the bytes that run loaded."""
    from vos import weights as vweights

    config = record.get("config") or {}
    if vweights.spec_kind(config.get("weights")) != vweights.LOCAL:
        return  # hub and hf:// files are resolved (and checked against the manifest) again by loading
    for item in config.get("weights_records") or []:
        path, expected = (item.get("path"), item.get("sha256")) if isinstance(item, dict) else (None, None)
        if not (isinstance(path, str) and isinstance(expected, str) and Path(path).is_file()):
            continue
        actual = vweights.sha256_file(path)
        if actual.lower() != expected.lower():
            raise RunError(
                f"{path} changed since the run {run_json} records: its sha256 is {actual}, the run used {expected} "
                f"({record['key']}, part {item.get('part')!r}). Restore that file, or pass "
                f"--weights {record['key']}=FILE to run with another one."
            )


@dataclass
class _Plan:
    """Everything `run` needs, from the command line or from a previous run.json."""

    clip: str
    prompt: str
    specs: list[MethodSpec]
    weights: str
    device: str
    dtype: str | None
    limits: Limits
    max_side: int | None
    fps: float | None
    gt: str | None


def _plan_from_args(args) -> _Plan:
    if not args.clip or not args.prompt:
        raise RunError("Give a clip and its first-frame mask: python -m vos run CLIP --prompt MASK.png --out DIR")
    specs, default_weights = parse_method_specs(
        args.methods or "all", variants=args.variant, options=args.opt, weights=args.weights, runnable=True
    )
    return _Plan(
        clip=args.clip,
        prompt=args.prompt,
        specs=specs,
        weights=default_weights,
        device=args.device or "auto",
        dtype=args.dtype,
        limits=Limits(max_frames=args.max_frames, max_seconds=args.max_seconds),
        max_side=args.max_side,
        fps=args.fps,
        gt=args.gt,
    )


def _plan_from_run(args) -> _Plan:
    """Repeat a recorded run: its clip, prompt, methods, options, weights, device and limits. Flags given on the
    command line override what run.json records, and the log says which."""
    previous = _load_from(args.from_run)
    settings = previous["settings"]
    if args.methods:
        recorded = ", ".join(m["key"] for m in previous["methods"])
        raise RunError(
            f"--methods cannot be combined with --from: the run repeats the methods {args.from_run} records "
            f"({recorded}). Change them with --variant, --opt and --weights."
        )
    clip_path = args.clip or previous["clip"]["source"]
    if not clip_path:
        raise RunError(f"{args.from_run} records no clip file; give the clip: python -m vos run CLIP --from ...")
    if not args.clip and not Path(clip_path).exists():
        raise RunError(
            f"The clip {args.from_run} records, {clip_path}, is not there; give it: python -m vos run CLIP --from ..."
        )
    specs = [_spec_from_record(m) for m in previous["methods"]]
    recorded_weights = {spec.key: spec.weights for spec in specs}
    for spec in specs:
        spec.weights = None  # so that the ones --weights KEY=SPEC sets show afterwards
    default_weights = apply_overrides(specs, variants=args.variant, options=args.opt, weights=args.weights)
    for spec, record in zip(specs, previous["methods"]):
        if spec.weights is None and default_weights is None and recorded_weights[spec.key] is not None:
            # Overrides were checked by apply_overrides; what the run recorded is checked here, once.
            recorded = recorded_weights[spec.key]
            spec.weights = check_weights_spec(recorded, shown=f"{spec.key}'s weights {recorded}")
            _verify_recorded_weights(record, args.from_run)
        elif spec.weights is None:
            spec.weights = default_weights
    given = [
        f"{flag} {value}"
        for flag, value in (
            ("--device", args.device),
            ("--dtype", args.dtype),
            ("--max-side", args.max_side),
            ("--max-frames", args.max_frames),
            ("--max-seconds", args.max_seconds),
            ("--fps", args.fps),
            ("--gt", args.gt),
        )
        if value is not None
    ]
    given += [f"--variant {v}" for v in args.variant] + [f"--opt {o}" for o in args.opt]
    given += [f"--weights {w}" for w in args.weights]
    if given:
        log.info("Repeating %s with overrides: %s", args.from_run, ", ".join(given))

    def pick(value: Any, name: str) -> Any:
        return value if value is not None else settings.get(name)

    return _Plan(
        clip=clip_path,
        prompt=args.prompt or str(Path(args.from_run).parent / previous["prompt"]["file"]),
        specs=[spec.validated() for spec in specs],
        weights=default_weights or settings.get("weights") or "hub",
        device=args.device or settings.get("device") or "auto",
        dtype=pick(args.dtype, "dtype"),
        limits=Limits(
            max_frames=pick(args.max_frames, "max_frames"), max_seconds=pick(args.max_seconds, "max_seconds")
        ),
        max_side=pick(args.max_side, "max_side"),
        fps=pick(args.fps, "fps"),
        gt=pick(args.gt, "gt"),
    )


def command_run(args) -> int:
    """`python -m vos run`: validate everything, run into a temporary folder, move it into place when done.

    Bad input (clip, prompt, options, weights specs, device, --out, --from) raises before anything is written."""
    out_dir = _prepare_out_dir(args.out)
    archive = _prepare_zip(out_dir) if args.zip else None
    plan = _plan_from_run(args) if args.from_run else _plan_from_args(args)
    try:
        torch_device = vdevice.pick_device(plan.device)
    except vdevice.DeviceUnavailable as err:
        if args.from_run and not args.device:
            raise vdevice.DeviceUnavailable(f"{err} ({args.from_run} records --device {plan.device}.)") from None
        raise
    vdevice.pick_dtype(plan.dtype, torch_device)
    if not args.from_run:
        _apply_machine_defaults(plan, args, str(torch_device))
    clip = open_clip(plan.clip, plan.limits, fps=plan.fps).with_max_side(plan.max_side)
    prompt = vmasks.read_palette_png(plan.prompt, size=clip.size)
    mbase.check_first_mask(prompt, clip.size)
    ground_truth = read_ground_truth(plan.gt, clip) if plan.gt else None  # open_clip has logged the clip's notes
    _check_weights_files(plan.specs, plan.weights)

    created = _make_parents(out_dir)
    work = None
    cancel = threading.Event()
    try:
        with _claimed(out_dir, created), disk_full_as_error(out_dir), _stop_on_interrupt(cancel):
            work = _new_work_dir(out_dir)
            result = run_methods(
                clip,
                prompt,
                plan.specs,
                work,
                device=plan.device,
                dtype=plan.dtype,
                weights=plan.weights,
                ground_truth=ground_truth,
                write_video=not args.no_video,
                cancel=cancel,
                settings={
                    "max_side": plan.max_side,
                    "max_frames": plan.limits.max_frames,
                    "max_seconds": plan.limits.max_seconds,
                    "fps": plan.fps,
                    "gt": str(Path(plan.gt).absolute()) if plan.gt else None,
                },
            )
            final = _move_into_place(work, out_dir)
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        for folder in created:  # deepest first; only what this run made, and only while empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    print(summary_table(result.records))
    if cancel.is_set():
        print("Stopped (Ctrl+C): every method kept the frames it finished; run.json says how far each got.")
    print(f"Run bundle: {final}")
    if archive is not None:
        # Beside the bundle and named after it, also when another run took --out meanwhile.
        print(f"As one file: {vbundle.zip_bundle(final, archive if final == out_dir else None)}")
    if final != out_dir:
        print(f"warning: {out_dir} was taken by another run meanwhile; this run's bundle is {final}.", file=sys.stderr)
        return 1
    return 0 if all(r.ok for r in result.records) else 1


def _check_weights_files(specs: Sequence[MethodSpec], default: str) -> None:
    """Local weights (a file or a folder) that cannot be a method's weights fail here, before anything is written,
    and not as that method's failure in a bundle: garbage, a cut download, a pickle that would run code, or tensors
    that do not fit the method's networks. Each part is built on the meta device (no memory) and loaded strictly,
    as the run will load it; hub and hf:// weights are checked when the run loads them."""
    import torch

    from vos import weights as vweights

    for spec in specs:
        weights = spec.weights or default
        if vweights.spec_kind(weights) != vweights.LOCAL:
            continue
        cls = mbase.method_class(spec.key)
        variant = cls.info.check_variant(spec.variant)
        parts = cls.info.parts(variant)
        options = cls.info.resolve_options(spec.options)
        for part in parts:
            try:
                with torch.device("meta"):
                    module = cls.build_part(part, variant, options)
                vweights.load_into(module, weights, method=spec.key, variant=variant, part=part, parts=parts)
            except VosError as err:
                raise RunError(f"--weights for {spec.key}: {err}") from None


@contextlib.contextmanager
def _claimed(out_dir: Path, created: list[Path]) -> Iterator[None]:
    """Hold ``out_dir`` (made now if missing, and then added to ``created``) under an exclusive lock for the run, so
    that a second run into the same --out fails at once with a clear message instead of losing its results.
    Where the platform has no flock, ``_move_into_place`` still never overwrites a finished bundle."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        out_dir.mkdir()
        created.insert(0, out_dir)
    except FileExistsError:
        pass
    except OSError as err:
        raise RunError(f"--out {out_dir}: cannot create it ({err.strerror or err}); choose another --out.") from None
    handle = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"--out {out_dir}: another run is writing into it right now; wait for it, or choose another --out."
            ) from None
        if any(out_dir.iterdir()):  # a run that finished between our check and our lock
            raise RunError(f"{out_dir} already exists and is not an empty folder; choose another --out.")
        yield
    finally:
        os.close(handle)


def _move_into_place(work: Path, out_dir: Path) -> Path:
    """Rename the finished bundle to ``out_dir`` (an empty folder there is replaced atomically). When another run
    filled ``out_dir`` meanwhile, keep this bundle beside it under a new name and return that name."""
    try:
        os.rename(work, out_dir)
        return out_dir
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    for number in itertools.count(2):
        other = out_dir.with_name(f"{out_dir.name}-{number}")
        try:
            other.mkdir()
        except FileExistsError:
            continue
        os.rename(work, other)
        return other
    raise AssertionError("unreachable")


def _apply_machine_defaults(plan: _Plan, args, device: str) -> None:
    """--max-side and --max-frames the user left out take the machine's defaults (small on a CPU), said in the log."""
    defaults = vrunnable.machine_defaults(device)
    applied = False
    if args.max_side is None and defaults.max_side is not None:
        plan.max_side, applied = defaults.max_side, True
    if args.max_frames is None and args.max_seconds is None and defaults.max_frames is not None:
        plan.limits = Limits(max_frames=defaults.max_frames, max_seconds=plan.limits.max_seconds)
        applied = True
    if applied:
        log.warning("%s", defaults.describe())


@contextlib.contextmanager
def _stop_on_interrupt(cancel: threading.Event) -> Iterator[None]:
    """The first Ctrl+C stops the run after the current frame (the bundle keeps what was done); a second one
    aborts at once, leaving no bundle."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print(
            "\nStopping after the current frame; the bundle keeps what is done (Ctrl+C again to abort).",
            file=sys.stderr,
        )

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def summary_table(records: Sequence[MethodRecord]) -> str:
    header = ("method", "variant", "status", "fps", "peak MiB", "load s", "J&F")
    rows = [
        (
            r.key,
            r.variant,
            r.status,
            f"{r.fps:.2f}" if r.fps is not None else "-",
            f"{r.peak_memory_mib:,.0f}" if r.peak_memory_mib is not None else "-",
            f"{r.load_s:.1f}" if r.load_s is not None else "-",
            f"{r.scores['J&F']:.3f}" if r.scores else "-",
        )
        for r in records
    ]
    lines = [format_table(header, rows, rule=True)]
    for r in records:
        if not r.ok and r.error:
            lines.append(f"{r.key}: {r.error}" + (f"\n  -> {r.hint}" if r.hint else ""))
    return "\n".join(lines)
