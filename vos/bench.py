"""Benchmark: peak memory and speed versus resolution for every registered method, measured on named hardware.

    python -m vos bench --methods all --resolutions 240,360,480 --frames 8 --out results.json --charts charts/

A sweep is a list of points, one per (method, variant, resolution). Each point runs in a fresh subprocess
(``python -m vos.bench --point TASK STATUS``) so its peak memory is its own: no allocator cache, no other method's
modules, nothing left over from the previous point. The child imports only the module that defines the method.

What a point records:

- memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` over the whole point
  (building the method included); on the CPU the peak resident set of the child. The child reads its own
  high-water mark (``VmHWM`` in /proc/self/status) when it ends: the kernel keeps it exactly, so no short spike is
  missed, as sampling could, and it is the child's alone (``ru_maxrss`` is not: across exec it can carry the
  parent's peak). ``baseline_memory_mib`` is what the process held before the method was built (CPU: Python,
  torch, the method's modules and the synthetic clip; CUDA: allocated tensors, usually none), so peak minus
  baseline is what the method itself cost.
  Where /proc is missing the child falls back to sampling (``vos.device.memory_probe``).
- time: load (build + weights), first-frame latency (frame 0 includes each method's initialisation on the
  prompt), steady-state fps over frames 1..N-1, median over ``repeats`` passes of the clip.
- caps: the parent kills a point that runs past ``timeout`` seconds (status ``timeout``) or whose resident set
  passes ``memory_cap_mib`` (status ``memory_cap``; default 85% of the RAM free when the sweep starts, so a sweep
  never drives the machine into swap or the kernel's OOM killer). On CUDA a cap the user gives also limits the GPU
  memory the point may allocate (``set_per_process_memory_fraction``). An out-of-memory error, a failure or
  missing weights become a point with its status and reason; larger resolutions of a method that ran out of time
  or memory are recorded as ``skipped`` rather than run.

Resolution means the frame's short side; frames are 16:9 with both sides even (480 -> 480x854). A method whose
working resolution is an option named ``size`` gets the benchmark's resolution there (int: the short side, rounded
to a multiple of 8; tuple: (H, W), multiples of 8), so every method really works at the resolution on the axis.

The results file (JSON, ``format: vos-bench``) holds the hardware, the settings and the points; ``load_results``
checks it. Figures (plotly): ``memory_figure``, ``fps_figure`` and ``accuracy_speed_figure`` (the papers' reported
accuracy and speed beside the speed measured here); ``export_charts`` writes them as PNG (kaleido) and HTML.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vos.errors import VosError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vos.methods.base import MethodInfo
    from vos.runner import MethodSpec

log = logging.getLogger(__name__)

FORMAT = "vos-bench"
FORMAT_VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
STORED_DIR = ROOT / "assets" / "bench"
ASPECT = 16 / 9
SIZE_MULTIPLE = 8
# How a point's fps is counted: online methods in the steady state (frames 1..N-1, after the first frame's set-up);
# offline methods do their work before frame 0, so over the whole clip (frames / total time).
STEADY, TOTAL = "steady", "total"

# Point statuses; the first four are the runner's words for the same outcomes.
OK, FAILED, OOM, NO_WEIGHTS = "ok", "failed", "out_of_memory", "weights_missing"
TIMEOUT, MEMORY_CAP, SKIPPED, CANCELLED = "timeout", "memory_cap", "skipped", "cancelled"
STATUSES = (OK, FAILED, OOM, NO_WEIGHTS, TIMEOUT, MEMORY_CAP, SKIPPED, CANCELLED)
# Outcomes that only get worse as the resolution grows: larger resolutions of that method are skipped.
RESOURCE_LIMITS = (OOM, TIMEOUT, MEMORY_CAP)
STATUS_LABELS = {
    OK: "ok",
    FAILED: "failed",
    OOM: "out of memory",
    NO_WEIGHTS: "weights missing",
    TIMEOUT: "timeout",
    MEMORY_CAP: "memory cap",
    SKIPPED: "skipped",
    CANCELLED: "cancelled",
}
POLL_SECONDS = 0.1


class BenchError(VosError, ValueError):
    """Bad benchmark arguments or an unreadable results file; the message says which and what to do."""


# --------------------------------------------------------------------------------------------------------------
# What to measure


def frame_size(short_side: int) -> tuple[int, int]:
    """(H, W) of a 16:9 frame whose short side is ``short_side``, both even: 240 -> (240, 426), 480 -> (480, 854)."""
    return _even(short_side), _even(short_side * ASPECT)


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def parse_resolutions(text: str | Sequence[int]) -> list[int]:
    """Short sides from "240,360,480p" -> [240, 360, 480]: short sides, sorted, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = set()
    for item in items:
        raw = str(item).strip().lower().removesuffix("p")
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            raise BenchError(
                f"Resolution {item!r} is not a number of pixels; give short sides like 240,360,480."
            ) from None
        if not 16 <= value <= 4320:
            raise BenchError(f"Resolution {value} is out of range; give short sides between 16 and 4320 pixels.")
        values.add(value)
    if not values:
        raise BenchError("Give at least one resolution, e.g. --resolutions 240,360,480.")
    return sorted(values)


def parse_methods(methods: str | Sequence[str] = "all", options: Sequence[str] = ()) -> list[MethodSpec]:
    """Validated MethodSpecs from "all" (each method's default variant) or "key,key:variant,...".

    ``options`` are "key.name=value" and apply to every entry of that method. A method may appear with several
    variants (``mixture,mixture:rgb``).
    """
    from vos.methods import base as mbase
    from vos.runner import MethodSpec, parse_method_specs

    items = methods.split(",") if isinstance(methods, str) else list(methods)
    items = [item.strip() for item in items if item.strip()]
    if not items or items == ["all"]:
        items = mbase.list_keys()
    entries: list[tuple[str, str | None]] = []
    for item in items:
        key, _, variant = item.partition(":")
        entries.append((key.strip(), variant.strip() or None))
    keys = list(dict.fromkeys(key for key, _ in entries))
    validated, _ = parse_method_specs(keys, options=options)  # checks keys (with suggestions) and options
    per_key = {spec.key: spec.options for spec in validated}
    specs, seen = [], set()
    for key, variant in entries:
        spec = MethodSpec(key, variant, dict(per_key[key])).validated()
        if (spec.key, spec.variant) not in seen:
            seen.add((spec.key, spec.variant))
            specs.append(spec)
    return specs


def size_option(info: MethodInfo, options: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """``options`` plus what puts the method at the resolution of a frame of ``size`` (its declared
    ``Resolution``), unless the user set that option."""
    rule = info.resolution
    value = rule.override_for(size)
    if value is None or rule.option in options:
        return dict(options)
    return {**options, rule.option: value}


@dataclass
class Task:
    """What one subprocess measures."""

    module: str  # the module defining the method class (imported alone in the child)
    qualname: str
    key: str
    variant: str
    options: dict[str, Any]
    weights: str
    device: str
    dtype: str
    resolution: int
    size: tuple[int, int]
    frames: int
    repeats: int
    objects: int = 2
    gpu_memory_cap_mib: float | None = None


@dataclass
class Point:
    """One measurement. Times in seconds, memory in MiB; None where not measured."""

    method: str
    variant: str
    title: str
    task: str
    resolution: int  # short side
    size: list[int]  # [H, W]
    frames: int
    repeats: int
    status: str = OK
    reason: str | None = None
    hint: str | None = None
    device: str | None = None
    dtype: str | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # what the benchmark set (size, --opt)
    load_s: float | None = None
    first_frame_s: float | None = None  # the first pass (cold); later passes in first_frame_runs
    first_frame_runs: list[float] = field(default_factory=list)
    fps: float | None = None  # median over the passes, counted as fps_basis says
    fps_runs: list[float] = field(default_factory=list)
    fps_basis: str = STEADY  # STEADY (frames 1..N-1; online methods) or TOTAL (all frames; offline methods)
    frames_done: int = 0
    peak_memory_mib: float | None = None
    memory_kind: str | None = None  # cpu_rss (VmHWM or sampled) or cuda_allocated
    reserved_memory_mib: float | None = None  # CUDA: max_memory_reserved
    baseline_memory_mib: float | None = None  # before the method was built (same kind as the peak)
    host_peak_mib: float | None = None  # CUDA points: the child's peak resident set on the host
    wall_s: float | None = None  # the whole subprocess, start-up included
    load_avg: list[float] | None = None  # the machine's 1-minute load average as the point started and ended
    scores: dict[str, float] | None = None  # accuracy, when a sweep measured it (not with random weights)
    config: dict[str, Any] | None = None  # method.config(): effective options, weights' provenance

    @property
    def series(self) -> str:
        return f"{self.method} · {self.variant}"

    @property
    def ok(self) -> bool:
        return self.status == OK

    def status_text(self) -> str:
        label = STATUS_LABELS.get(self.status, self.status)
        return f"{label}: {self.reason}" if self.reason and self.status != OK else label

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------------------------------------------
# The child: one point, in its own process


def _vm_hwm_bytes(pid: int | str = "self") -> int | None:
    """The kernel's exact peak resident set of a process (Linux), or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


class _StatusFile:
    """The child's running record, rewritten atomically as it fills so the parent can follow and keep it."""

    def __init__(self, path: Path | None, record: dict[str, Any]):
        self.path = path
        self.record = record

    def write(self, **updates: Any) -> None:
        self.record.update(updates)
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record))
        tmp.replace(self.path)


def measure_point(task: Task, status_path: Path | None = None) -> dict[str, Any]:
    """Measure one point in this process and return its record (also kept up to date in ``status_path``).

    Meant for a fresh process (``python -m vos.bench --point``): in a process that already ran other work the CPU
    peak is that process's, not the point's. Never raises for the method's errors: they become the status.
    """
    import importlib

    import torch

    from vos import device as vdevice
    from vos.synthetic import moving_shapes
    from vos.video import Clip

    cls = getattr(importlib.import_module(task.module), task.qualname)
    basis = TOTAL if cls.info.offline else STEADY
    status = _StatusFile(status_path, {"phase": "starting", "frames_done": 0, "status": OK, "fps_basis": basis})
    torch_device = vdevice.pick_device(task.device)
    if torch_device.type == "cuda" and task.gpu_memory_cap_mib:
        total = torch.cuda.get_device_properties(torch_device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, task.gpu_memory_cap_mib * 2**20 / total), torch_device)
    synthetic = moving_shapes(task.frames, tuple(task.size), task.objects)
    clip = Clip.from_frames(synthetic.frames, name=f"moving shapes {task.size[0]}x{task.size[1]}")
    first_mask = synthetic.masks[0]
    torch.manual_seed(0)
    status.write(phase="loading")
    fps_runs: list[float] = []
    first_frame_runs: list[float] = []
    memory = error = None
    try:
        with vdevice.memory_probe(torch_device) as memory:
            # What the process holds before the method exists: resident set on the CPU, allocated on CUDA.
            status.write(baseline_memory_mib=_mib(memory.baseline_bytes))
            start = time.perf_counter()
            method = cls(task.variant, device=str(torch_device), weights=task.weights, dtype=task.dtype, **task.options)
            vdevice.synchronize(torch_device)
            status.write(phase="segmenting", load_s=round(time.perf_counter() - start, 4), config=method.config())
            done = 0
            for _ in range(task.repeats):
                times = []
                last = time.perf_counter()
                # Label maps come back as numpy arrays, so each yield has waited for the device's work.
                for _label_map in method.segment(clip, first_mask):
                    now = time.perf_counter()
                    times.append(now - last)
                    last = now
                    done += 1
                    status.write(frames_done=done)
                if len(times) != clip.num_frames:
                    raise VosError(f"{cls.info.title} returned {len(times)} of {clip.num_frames} frames.")
                first_frame_runs.append(round(times[0], 4))
                counted = times if cls.info.offline else times[1:]
                if counted and sum(counted) > 0:
                    fps_runs.append(round(len(counted) / sum(counted), 4))
                status.write(first_frame_runs=first_frame_runs, fps_runs=fps_runs)
    except Exception as err:  # noqa: BLE001 -- a point records any failure; the sweep goes on
        error = err
    # Memory first: explaining the error imports more modules, which must not count.
    if memory is not None:
        peak = memory.peak_bytes
        if memory.kind == "cpu_rss":
            peak = max(peak, _vm_hwm_bytes() or 0)
        status.write(
            peak_memory_mib=_mib(peak),
            memory_kind=memory.kind,
            reserved_memory_mib=_mib(memory.reserved_bytes),
            host_peak_mib=_mib(_vm_hwm_bytes()) if memory.kind != "cpu_rss" else None,
        )
    if error is not None:
        status.write(**_explain(error, str(torch_device)))
    status.write(
        phase="done",
        first_frame_s=first_frame_runs[0] if first_frame_runs else None,
        first_frame_runs=first_frame_runs,
        fps=round(_median(fps_runs), 4) if fps_runs else None,
        fps_runs=fps_runs,
    )
    return status.record


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _explain(err: BaseException, device: str) -> dict[str, Any]:
    """Status, reason and hint for a method's exception: the runner's words, so a point reads like a run."""
    from vos.methods.base import SEMI
    from vos.runner import MethodRecord
    from vos.runner import _explain as explain_record

    record = MethodRecord("", "", SEMI, "", device=device)
    explain_record(err, record)
    if record.status == OOM:
        record.error = f"{record.error} ({type(err).__name__}: {str(err)[:300]})"
    return {"status": record.status, "reason": record.error, "hint": record.hint}


def _child_main(argv: Sequence[str]) -> int:
    """``python -m vos.bench --point TASK.json STATUS.json``."""
    if len(argv) != 3 or argv[0] != "--point":
        print(
            "usage: python -m vos.bench --point TASK.json STATUS.json (run by `python -m vos bench`)", file=sys.stderr
        )
        return 2
    data = json.loads(Path(argv[1]).read_text())
    data["size"] = tuple(data["size"])
    measure_point(Task(**data), Path(argv[2]))
    return 0


# --------------------------------------------------------------------------------------------------------------
# The parent: one subprocess per point, with caps


def _child_env() -> dict[str, str]:
    """The child finds this checkout's ``vos`` (and modules beside it, such as test methods) first."""
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_point(
    task: Task,
    *,
    timeout: float,
    memory_cap_mib: float | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Measure ``task`` in a fresh subprocess; the child's record, completed with what the parent saw."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="vos-bench-") as tmp:
        task_path, status_path, stderr_path = Path(tmp, "task.json"), Path(tmp, "status.json"), Path(tmp, "stderr")
        task_path.write_text(json.dumps(asdict(task)))
        start = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vos.bench", "--point", str(task_path), str(status_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=_child_env(),
                cwd=str(ROOT),
            )
        killed_for, watched_peak, last_mtime = None, 0, None
        try:
            child = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    rss = child.memory_info().rss
                except psutil.Error:  # it just ended
                    rss = 0
                watched_peak = max(watched_peak, rss, _vm_hwm_bytes(proc.pid) or 0)
                if cancel is not None and cancel.is_set():
                    killed_for = CANCELLED
                elif time.monotonic() - start > timeout:
                    killed_for = TIMEOUT
                elif memory_cap_mib and rss > memory_cap_mib * 2**20:
                    killed_for = MEMORY_CAP
                if killed_for:
                    proc.kill()
                    proc.wait()
                    break
                mtime = _mtime(status_path)
                if on_status is not None and mtime != last_mtime:
                    last_mtime = mtime
                    record = _read_status(status_path)
                    if record:
                        on_status(record)
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C, a cancelled app job): never leave the child behind
                proc.kill()
                proc.wait()
        wall = time.monotonic() - start
        record = _read_status(status_path) or {"frames_done": 0}
        stderr_tail = _tail(stderr_path)
    record["wall_s"] = round(wall, 3)
    total = task.frames * task.repeats
    if record.get("peak_memory_mib") is None and watched_peak:
        # Killed before it could report: the parent's readings of the child's high-water mark stand in.
        record["peak_memory_mib"] = _mib(watched_peak)
        record["memory_kind"] = "cpu_rss"
    if killed_for == TIMEOUT:
        record.update(
            status=TIMEOUT,
            reason=f"did not finish in {timeout:g} s ({_progress_words(record, total)}).",
            hint="Allow more time with --timeout, or use a lower resolution or fewer frames.",
        )
    elif killed_for == MEMORY_CAP:
        record.update(
            status=MEMORY_CAP,
            reason=f"its resident memory passed the cap of {memory_cap_mib:,.0f} MiB "
            f"({_progress_words(record, total)}).",
            hint="Raise the cap with --memory-cap if the machine has the memory, or use a lower resolution.",
        )
    elif killed_for == CANCELLED:
        record.update(status=CANCELLED, reason="stopped by the user.", hint=None)
    elif record.get("phase") != "done":
        code = proc.returncode
        if code == -signal.SIGKILL:
            record.update(
                status=OOM,
                reason="the system killed the subprocess (SIGKILL), most likely for lack of memory "
                f"({_progress_words(record, total)}).",
                hint="Use a lower resolution or fewer frames, or set --memory-cap below the machine's free memory.",
            )
        else:
            record.update(
                status=FAILED,
                reason=f"the subprocess exited with code {code} ({_progress_words(record, total)}): {stderr_tail}",
                hint="Run the point alone with -v to see the whole error.",
            )
    elif record.get("status") != OK and stderr_tail:
        log.debug("point %s %sp stderr: %s", task.key, task.resolution, stderr_tail)
    return record


def _progress_words(record: dict[str, Any], total: int) -> str:
    if record.get("phase") in (None, "starting"):
        return "still starting"
    if record.get("phase") == "loading":
        return "still building the method"
    return f"{record.get('frames_done', 0)} of {total} frames done"


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _tail(path: Path, limit: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-limit:]


# --------------------------------------------------------------------------------------------------------------
# A sweep


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict[str, Any]:
    """The machine, as the results file and the charts' titles name it."""
    from vos.runner import hardware_info

    info = hardware_info()
    info["cpu"] = cpu_model()
    info["device"] = device
    info["label"] = hardware_label(info)
    return info


def hardware_label(info: dict[str, Any]) -> str:
    if str(info.get("device", "cpu")).startswith("cuda") and info.get("gpu"):
        memory = f" {info['gpu_memory_gib']:g} GiB" if info.get("gpu_memory_gib") else ""
        return f"{info['gpu']}{memory} · CUDA {info.get('cuda', '?')} · torch {info.get('torch', '?')}"
    ram = f" · {info['ram_gib']:g} GiB RAM" if info.get("ram_gib") else ""
    return f"CPU {info.get('cpu', '?')} · {info.get('cpu_cores', '?')} cores{ram} · torch {info.get('torch', '?')}"


def hardware_slug(info: dict[str, Any]) -> str:
    """A file-name stem for a machine: cpu-amd-epyc-2c, cuda-nvidia-h100-80gb-hbm3."""
    if str(info.get("device", "cpu")).startswith("cuda") and info.get("gpu"):
        name = f"cuda-{info['gpu']}"
    else:
        name = f"cpu-{info.get('cpu', 'unknown')}-{info.get('cpu_cores', '')}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_memory_cap_mib() -> float:
    import psutil

    return round(0.85 * psutil.virtual_memory().available / 2**20)


def plan(
    specs: Sequence[MethodSpec],
    resolutions: Sequence[int],
    *,
    frames: int,
    repeats: int,
    device: str,
    dtype: str,
    weights: str,
    gpu_memory_cap_mib: float | None = None,
) -> list[tuple[Point, Task]]:
    """Every point of the sweep, method by method, resolutions ascending."""
    from vos.methods import base as mbase

    if frames < 2:
        raise BenchError("Give at least 2 frames (--frames): frame 0 is the method's start, speed is measured after.")
    if repeats < 1:
        raise BenchError("--repeats must be at least 1.")
    points = []
    for spec in specs:
        cls = mbase.method_class(spec.key)
        info = cls.info
        variant = spec.variant or info.default_variant
        for resolution in resolutions:
            size = frame_size(resolution)
            options = size_option(info, spec.options, size)
            point = Point(
                method=info.key,
                variant=variant,
                title=info.title,
                task=info.task,
                resolution=resolution,
                size=list(size),
                frames=frames,
                repeats=repeats,
                device=device,
                dtype=dtype,
                weights=spec.weights or weights,
                options={k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            )
            task = Task(
                module=cls.__module__,
                qualname=cls.__qualname__,
                key=info.key,
                variant=variant,
                options=options,
                weights=spec.weights or weights,
                device=device,
                dtype=dtype,
                resolution=resolution,
                size=size,
                frames=frames,
                repeats=repeats,
                gpu_memory_cap_mib=gpu_memory_cap_mib,
            )
            points.append((point, task))
    return points


def sweep(
    specs: Sequence[MethodSpec],
    resolutions: Sequence[int],
    *,
    frames: int = 8,
    repeats: int = 1,
    device: str = "auto",
    dtype: str = "fp32",
    weights: str = "random",
    timeout: float = 600.0,
    memory_cap_mib: float | None = None,
    skip_larger: bool = True,
    out: str | Path | None = None,
    cancel: threading.Event | None = None,
    command: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Measure every point, one subprocess each; yield the results (a dict as written to JSON) after each point.

    A tqdm bar (frames as steps) follows the sweep; the app shows it through ``gr.Progress(track_tqdm=True)``.
    ``out`` is rewritten after every point, so an interrupted sweep keeps what it measured.
    """
    from tqdm.auto import tqdm

    from vos import device as vdevice

    torch_device = vdevice.pick_device(device)
    device_name = str(torch_device)
    vdevice.pick_dtype(dtype if dtype != "fp32" else None, torch_device)  # fp16 on CPU: fail before any work
    # Only a cap the user gave limits the GPU: the default comes from the host's free RAM.
    gpu_cap = memory_cap_mib if torch_device.type == "cuda" and memory_cap_mib else None
    if memory_cap_mib is None:
        memory_cap_mib = default_memory_cap_mib()
    todo = plan(
        specs,
        resolutions,
        frames=frames,
        repeats=repeats,
        device=device_name,
        dtype=dtype,
        weights=weights,
        gpu_memory_cap_mib=gpu_cap,
    )
    results: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "vos_version": _vos_version(),
        "hardware": hardware(device_name),
        "settings": {
            "device": device_name,
            "dtype": dtype,
            "weights": weights,
            "frames": frames,
            "repeats": repeats,
            "resolutions": list(resolutions),
            "aspect": "16:9",
            "timeout_s": timeout,
            "memory_cap_mib": memory_cap_mib,
            "clip": "vos.synthetic.moving_shapes, 2 objects",
            "command": command,
        },
        "points": [],
    }
    steps_per_point = 1 + frames * repeats
    bar = tqdm(total=len(todo) * steps_per_point, desc="bench", unit="step", dynamic_ncols=True)
    limited: dict[str, Point] = {}  # series -> the point where it ran out of time or memory
    try:
        for index, (point, task) in enumerate(todo):
            bar.set_postfix_str(f"{point.series} {point.resolution}p", refresh=True)
            base = index * steps_per_point
            if cancel is not None and cancel.is_set():
                point.status, point.reason = CANCELLED, "stopped by the user."
            elif skip_larger and point.series in limited:
                stop = limited[point.series]
                point.status = SKIPPED
                point.reason = f"{STATUS_LABELS[stop.status]} at {stop.resolution}p already."
            else:

                def follow(record: dict[str, Any], base: int = base) -> None:
                    done = (1 if record.get("phase") in ("segmenting", "done") else 0) + record.get("frames_done", 0)
                    bar.update(base + min(done, steps_per_point) - bar.n)

                load_before = _load_average()
                record = run_point(
                    task, timeout=timeout, memory_cap_mib=memory_cap_mib, on_status=follow, cancel=cancel
                )
                _fill(point, record)
                if load_before is not None:
                    point.load_avg = [load_before, _load_average() or load_before]
                if point.status in RESOURCE_LIMITS:
                    limited[point.series] = point
            bar.update(base + steps_per_point - bar.n)
            results["points"].append(asdict(point))
            log.info("%s %sp: %s", point.series, point.resolution, point_words(point))
            if out is not None:
                write_results(results, out)
            yield results
    finally:
        bar.close()


def run_sweep(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``sweep`` to the end; the final results."""
    final: dict[str, Any] = {}
    for final in sweep(*args, **kwargs):  # noqa: B007 -- the last value is the answer
        pass
    return final


def _load_average() -> float | None:
    """Other work on the machine slows a point down; the load average next to it says how much there was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _fill(point: Point, record: dict[str, Any]) -> None:
    for name in (
        "status",
        "reason",
        "hint",
        "load_s",
        "first_frame_s",
        "first_frame_runs",
        "fps",
        "fps_runs",
        "fps_basis",
        "frames_done",
        "peak_memory_mib",
        "memory_kind",
        "reserved_memory_mib",
        "baseline_memory_mib",
        "host_peak_mib",
        "wall_s",
        "config",
    ):
        if name in record:
            setattr(point, name, record[name])


def point_words(point: Point) -> str:
    if not point.ok:
        return point.status_text()
    parts = [f"{point.fps:.2f} fps" if point.fps else None, f"{point.peak_memory_mib:,.0f} MiB peak"]
    return ", ".join(p for p in parts if p)


def _vos_version() -> str:
    import vos

    return vos.__version__


# --------------------------------------------------------------------------------------------------------------
# Results files


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)
    return path


_NUMBER_FIELDS = (
    "load_s",
    "first_frame_s",
    "fps",
    "peak_memory_mib",
    "reserved_memory_mib",
    "baseline_memory_mib",
    "host_peak_mib",
    "wall_s",
)


def validate_results(data: Any, source: str = "results") -> dict[str, Any]:
    """Check a results dict's shape; raise BenchError naming the first problem."""

    def fail(problem: str) -> BenchError:
        return BenchError(f"{source} is not a benchmark results file written by `python -m vos bench`: {problem}.")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise fail(f"'format' is not {FORMAT!r}")
    if data.get("version") != FORMAT_VERSION:
        raise fail(f"version {data.get('version')!r} is not {FORMAT_VERSION} (re-run the benchmark)")
    hw = data.get("hardware")
    if not isinstance(hw, dict) or not isinstance(hw.get("label"), str):
        raise fail("the hardware is missing")
    settings = data.get("settings")
    if not isinstance(settings, dict) or not {"device", "dtype", "weights", "frames"} <= settings.keys():
        raise fail("the settings are missing")
    points = data.get("points")
    if not isinstance(points, list):
        raise fail("'points' is not a list")
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise fail(f"point {i} is not an object")
        for name, kind in (("method", str), ("variant", str), ("resolution", int), ("status", str)):
            if not isinstance(p.get(name), kind):
                raise fail(f"point {i} has no valid {name!r}")
        if p["status"] not in STATUSES:
            raise fail(f"point {i} has an unknown status {p['status']!r}")
        size = p.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise fail(f"point {i} has no valid size [H, W]")
        for name in _NUMBER_FIELDS:
            value = p.get(name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value)):
                raise fail(f"point {i} has an invalid {name!r}: {value!r}")
        if p["status"] == OK and (p.get("fps") is None or p.get("peak_memory_mib") is None):
            raise fail(f"point {i} is ok but has no fps or peak memory")
    return data


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"Cannot read {path}: {err}.") from None
    return validate_results(data, str(path))


def stored_results(directory: str | Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The valid results files in ``directory`` (assets/bench by default), newest first; bad ones are logged."""
    found = []
    for path in sorted(Path(directory or STORED_DIR).glob("*.json")):
        try:
            found.append((path, load_results(path)))
        except BenchError as err:
            log.warning("%s", err)
    found.sort(key=lambda item: item[1].get("created", ""), reverse=True)
    return found


def points_of(results: dict[str, Any]) -> list[Point]:
    return [Point.from_dict(p) for p in results.get("points", [])]


def describe_settings(results: dict[str, Any]) -> str:
    s = results["settings"]
    repeats = s.get("repeats", 1)
    passes = f" · median of {repeats} passes" if repeats > 1 else ""
    return f"{s['dtype']} · {s['weights']} weights · {s['frames']}-frame synthetic clips{passes}"


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per point for tables (CLI, app)."""
    rows = []
    for p in points_of(results):
        rows.append(
            {
                "method": p.method,
                "variant": p.variant,
                "resolution": f"{p.resolution}p",
                "size": f"{p.size[0]}x{p.size[1]}",
                "status": STATUS_LABELS.get(p.status, p.status),
                "peak MiB": p.peak_memory_mib,
                "reserved MiB": p.reserved_memory_mib,
                "baseline MiB": p.baseline_memory_mib,
                "load s": p.load_s,
                "first frame s": p.first_frame_s,
                "fps": p.fps,
                "reason": p.reason or "",
            }
        )
    return rows


def rounded(value: Any) -> Any:
    """A measured number as the tables show it: whole units from 100 up, else three significant figures; still a
    number, so a table sorts it as one. Anything else unchanged."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    return round(value) if abs(value) >= 100 else float(f"{value:.3g}")


def summary_table(results: dict[str, Any]) -> str:
    rows = summary_rows(results)
    if not rows:
        return "No points."
    columns = ["method", "variant", "resolution", "size", "status", "peak MiB", "load s", "first frame s", "fps"]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{rounded(value):,}"
        return str(value)

    table = [columns] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for row in rows:
        if row["reason"]:
            lines.append(f"{row['method']} · {row['variant']} {row['resolution']}: {row['reason']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Figures

MARKERS = {OOM: "x", MEMORY_CAP: "x", TIMEOUT: "hourglass", FAILED: "triangle-down", NO_WEIGHTS: "triangle-down"}
FAILURE_TEXT = {OOM: "OOM", MEMORY_CAP: "mem cap", TIMEOUT: "timeout", FAILED: "failed", NO_WEIGHTS: "no weights"}


def _colours(keys: Sequence[str]) -> dict[str, str]:
    import plotly.express as px

    palette = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
    return {key: palette[i % len(palette)] for i, key in enumerate(keys)}


def _series(results: dict[str, Any]) -> dict[str, list[Point]]:
    grouped: dict[str, list[Point]] = {}
    for point in points_of(results):
        grouped.setdefault(point.series, []).append(point)
    for points in grouped.values():
        points.sort(key=lambda p: p.resolution)
    return grouped


def _title(what: str, results: dict[str, Any], *notes: str) -> str:
    lines = [results["hardware"]["label"], describe_settings(results) + busy_note(results), *notes]
    return _with_subtitle(what, lines)


SUBTITLE_WIDTH = 52  # characters per subtitle line: what a phone-wide chart shows without clipping
TITLE_WIDTH = 36  # the same for the title's larger letters


def _with_subtitle(title: str, lines: Sequence[str]) -> str:
    """The title and its subtitle lines, each wrapped at " · " (then at spaces) so a phone shows all of it."""
    wrapped = [piece for line in lines if line for piece in _wrap(line, SUBTITLE_WIDTH)]
    heading = "<br>".join(_wrap(title, TITLE_WIDTH))
    return heading + "".join(f"<br><sup>{line}</sup>" for line in wrapped)


def _wrap(line: str, width: int) -> list[str]:
    """Greedy lines of at most ``width`` characters: whole " · " segments where they fit, else words."""
    lines: list[str] = []

    def add(piece: str, sep: str) -> None:
        if lines and len(lines[-1]) + len(sep) + len(piece) <= width:
            lines[-1] += sep + piece
        else:
            lines.append(piece)

    for segment in line.split(" · "):
        if len(segment) <= width:
            add(segment, " · ")
            continue
        for index, word in enumerate(segment.split(" ")):
            add(word, " · " if index == 0 else " ")
    return lines


def busy_note(results: dict[str, Any]) -> str:
    """Said beside the timings when other work shared the machine during the sweep: a load average well above the
    cores (a point's own threads account for up to one per core)."""
    loads = [max(p.load_avg) for p in points_of(results) if p.load_avg]
    cores = results["hardware"].get("cpu_cores") or 0
    if not loads or not cores or max(loads) <= 1.5 * cores:
        return ""
    return f" · shared machine (load average up to {max(loads):.0f} on {cores} cores): times are pessimistic"


def _resolution_axis(fig: go.Figure, results: dict[str, Any]) -> None:
    resolutions = sorted({p.resolution for p in points_of(results)})
    fig.update_xaxes(
        title="resolution (short side; 16:9 frames)",
        type="log",
        tickvals=resolutions,
        ticktext=[f"{r}p<br>{frame_size(r)[0]}x{frame_size(r)[1]}" for r in resolutions],
    )


def _layout(fig: go.Figure, title: str) -> None:
    fig.update_layout(
        title={
            "text": title,
            "x": 0.01,
            "xanchor": "left",
            "yref": "container",
            "y": 1,
            "yanchor": "top",
            "pad": {"t": 14},
        },
        template="plotly_white",
        # Below the plot, in a row: beside it, it takes half of a phone's width from the lines.
        # At the foot of the figure (not of the plot, whose height varies), clear of the axis title.
        legend={"title": "method · variant", "orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.01},
        # Room for the title and each subtitle line: more lines must not run into the plot.
        margin={"l": 60, "r": 20, "t": 50 + 24 * title.count("<br>"), "b": 150},
        hovermode="closest",
    )


def _hover(point: Point) -> str:
    lines = [
        f"<b>{point.series}</b> {point.resolution}p ({point.size[0]}x{point.size[1]}), {point.frames} frames",
        f"status: {point.status_text()}",
    ]
    if point.peak_memory_mib is not None:
        extra = f", reserved {point.reserved_memory_mib:,.0f}" if point.reserved_memory_mib is not None else ""
        lines.append(f"peak memory: {point.peak_memory_mib:,.0f} MiB ({point.memory_kind}{extra})")
    if point.baseline_memory_mib is not None:
        lines.append(f"before building the method: {point.baseline_memory_mib:,.0f} MiB")
    if point.fps is not None:
        counted = "over the whole clip (offline method)" if point.fps_basis == TOTAL else "steady state"
        lines.append(f"fps: {point.fps:.3g} ({counted})")
    if point.first_frame_s is not None:
        lines.append(f"first frame: {point.first_frame_s:.3g} s (time to the first label map)")
    if point.load_s is not None:
        lines.append(f"load: {point.load_s:.3g} s")
    return "<br>".join(lines)


def _failure_markers(
    fig: go.Figure,
    points: list[Point],
    colour: str,
    name: str,
    y_of: Callable[[Point], float | None],
    *,
    nudge: float,
) -> None:
    """Markers for the points that did not finish, labelled with why. ``nudge`` shifts them sideways (a factor on
    the log axis) so several methods failing at one resolution stay apart. A series with no finished point shows
    in the legend through these markers."""
    failed = [p for p in points if p.status not in (OK, SKIPPED, CANCELLED)]
    if not failed:
        return
    fig.add_scatter(
        x=[p.resolution * nudge for p in failed],
        y=[y_of(p) for p in failed],
        mode="markers+text",
        marker={"symbol": [MARKERS.get(p.status, "x") for p in failed], "size": 12, "color": colour},
        text=[FAILURE_TEXT.get(p.status, p.status) for p in failed],
        textposition="top center",
        textfont={"color": colour, "size": 10},
        hovertext=[_hover(p) for p in failed],
        hoverinfo="text",
        legendgroup=name,
        showlegend=not any(p.ok for p in points),
        name=name,
    )


def _nudges(count: int) -> list[float]:
    """Sideways factors spreading ``count`` series' failure markers around each resolution."""
    return [1 + 0.025 * (i - (count - 1) / 2) for i in range(count)]


def memory_figure(results: dict[str, Any], *, log_y: bool = True) -> go.Figure:
    """Peak memory versus resolution: one line per method · variant; out-of-memory, timeouts and failures marked
    (at the memory they had reached when known, else above the highest point); CUDA's reserved peak dotted."""
    import plotly.graph_objects as go

    grouped = _series(results)
    colours = _colours(list(grouped))
    nudges = dict(zip(grouped, _nudges(len(grouped))))
    measured = [p.peak_memory_mib for pts in grouped.values() for p in pts if p.peak_memory_mib]
    top = max(measured, default=1024.0) * 1.6
    fig = go.Figure()
    cuda = str(results["settings"]["device"]).startswith("cuda")
    for name, points in grouped.items():
        ok = [p for p in points if p.ok]
        fig.add_scatter(
            x=[p.resolution for p in ok],
            y=[p.peak_memory_mib for p in ok],
            mode="lines+markers",
            name=name,
            legendgroup=name,
            line={"color": colours[name]},
            hovertext=[_hover(p) for p in ok],
            hoverinfo="text",
        )
        if cuda and any(p.reserved_memory_mib for p in ok):
            fig.add_scatter(
                x=[p.resolution for p in ok],
                y=[p.reserved_memory_mib for p in ok],
                mode="lines",
                name=f"{name} (reserved)",
                legendgroup=name,
                showlegend=False,
                line={"color": colours[name], "dash": "dot"},
                hoverinfo="skip",
            )
        _failure_markers(fig, points, colours[name], name, lambda p: p.peak_memory_mib or top, nudge=nudges[name])
    baselines = [p.baseline_memory_mib for pts in grouped.values() for p in pts if p.baseline_memory_mib]
    if baselines and min(baselines) >= 1:
        text = f"the process before building a method (Python, torch, the clip): {min(baselines):,.0f} MiB"
        _hline(fig, min(baselines), text, log_y=log_y, dash="dot")
    capacity = _capacity_mib(results)
    if capacity and max(measured, default=0) >= capacity / 4:  # far above every point it would only flatten them
        _hline(fig, capacity, f"{'GPU memory' if cuda else 'RAM'} {capacity / 1024:,.0f} GiB", log_y=log_y)
    # Short: the axis is only as tall as the chart on a phone; the subtitle and hover say the rest.
    title = "peak GPU memory, MiB (dotted: reserved)" if cuda else "peak memory, MiB (process RSS)"
    fig.update_yaxes(title=title, type="log" if log_y else "linear")
    _resolution_axis(fig, results)
    _layout(fig, _title("Peak memory vs resolution", results))
    return fig


def _hline(fig: go.Figure, y: float, text: str, *, log_y: bool, dash: str = "dash") -> None:
    """A labelled horizontal reference line. The label is placed by hand: plotly's hline annotations ignore a log
    axis (they land at y instead of log10(y))."""
    fig.add_hline(y=y, line={"dash": dash, "color": "#999", "width": 1})
    fig.add_annotation(
        x=1,
        xref="paper",
        y=math.log10(y) if log_y else y,
        yref="y",
        text=text,
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
        font={"color": "#777", "size": 10},
    )


def _capacity_mib(results: dict[str, Any]) -> float | None:
    hw = results["hardware"]
    gib = hw.get("gpu_memory_gib") if str(results["settings"]["device"]).startswith("cuda") else hw.get("ram_gib")
    return gib * 1024 if gib else None


def fps_figure(results: dict[str, Any], *, log_y: bool = True) -> go.Figure:
    """Frames per second versus resolution; failures marked below the slowest point. Online methods are charted
    in the steady state (after frame 0), offline ones over the whole clip (their work comes before frame 0);
    the subtitle says so."""
    import plotly.graph_objects as go

    grouped = _series(results)
    colours = _colours(list(grouped))
    nudges = dict(zip(grouped, _nudges(len(grouped))))
    measured = [p.fps for pts in grouped.values() for p in pts if p.fps]
    bottom = min(measured, default=1.0) / 2
    fig = go.Figure()
    for name, points in grouped.items():
        ok = [p for p in points if p.ok and p.fps]
        fig.add_scatter(
            x=[p.resolution for p in ok],
            y=[p.fps for p in ok],
            mode="lines+markers",
            name=name,
            legendgroup=name,
            line={"color": colours[name]},
            hovertext=[_hover(p) for p in ok],
            hoverinfo="text",
        )
        _failure_markers(fig, points, colours[name], name, lambda p: bottom, nudge=nudges[name])
    fig.update_yaxes(title="frames per second", type="log" if log_y else "linear")
    _resolution_axis(fig, results)
    bases = {p.fps_basis for pts in grouped.values() for p in pts if p.fps}
    counted = {
        frozenset({STEADY}): "steady state, after frame 0",
        frozenset({TOTAL}): "over the whole clip",
    }.get(frozenset(bases), "online methods: steady state after frame 0; offline methods: over the whole clip")
    _layout(fig, _title("Speed vs resolution", results, f"fps {counted}"))
    return fig


@dataclass(frozen=True)
class PaperFigure:
    """A paper's accuracy paired with its reported speed (from the same or a matching Reported entry)."""

    method: str
    variant: str | None
    dataset: str
    accuracy: float  # J&F
    fps: float | None
    hardware: str | None
    resolution: str | None

    @property
    def label(self) -> str:
        return f"{self.method}" + (f" · {self.variant}" if self.variant else "")


ACCURACY_METRIC = "J&F"


def paper_figures(infos: Sequence[MethodInfo]) -> list[PaperFigure]:
    """Every reported J&F with the speed its paper gives for that variant (the first matching speed entry)."""
    figures = []
    for info in infos:
        speeds = [r for r in info.reported if r.fps]
        for rep in info.reported:
            if ACCURACY_METRIC not in rep.metrics:
                continue
            speed = rep if rep.fps else next((s for s in speeds if s.variant == rep.variant), None)
            figures.append(
                PaperFigure(
                    method=info.key,
                    variant=rep.variant,
                    dataset=rep.dataset,
                    accuracy=float(rep.metrics[ACCURACY_METRIC]),
                    fps=speed.fps if speed else None,
                    hardware=speed.hardware if speed else None,
                    resolution=speed.resolution if speed else None,
                )
            )
    return figures


def accuracy_speed_figure(
    results: dict[str, Any] | None, infos: Sequence[MethodInfo] | None = None, *, at_resolution: int = 480
) -> go.Figure:
    """Accuracy (J&F) versus speed: the papers' reported figures as labelled markers, and the speed measured here
    (at ``at_resolution`` or the nearest measured) beside them, joined by a dotted line.

    Sweeps with random weights measure speed, not accuracy: a measured marker then sits at the paper's J&F for the
    same method and variant, and says so. A point that carries its own scores uses them.
    """
    import plotly.graph_objects as go

    if infos is None:
        from vos.methods import available

        infos = available()
    figures = paper_figures(infos)
    keys = [info.key for info in infos]
    grouped = _series(results) if results else {}
    for name in grouped:
        key = name.split(" · ")[0]
        if key not in keys:
            keys.append(key)
    colours = _colours(keys)
    fig = go.Figure()
    with_speed = [f for f in figures if f.fps]
    for key in keys:
        mine = [f for f in with_speed if f.method == key]
        if not mine:
            continue
        fig.add_scatter(
            x=[f.fps for f in mine],
            y=[f.accuracy for f in mine],
            mode="markers+text",
            marker={"symbol": "star", "size": 14, "color": colours[key]},
            text=[f"{f.label} ({f.hardware})" if f.hardware else f.label for f in mine],
            textposition="top center",
            name=f"{key} (paper)",
            legendgroup=key,
            hovertext=[
                f"<b>{f.label}</b> as its paper reports<br>{f.dataset}: J&F {f.accuracy:g}<br>"
                f"{f.fps:g} fps on {f.hardware or 'unnamed hardware'}" + (f" ({f.resolution})" if f.resolution else "")
                for f in mine
            ],
            hoverinfo="text",
        )
    defaults = {info.key: info.default_variant for info in infos}
    measured_here, unplaced = 0, []
    for name, points in grouped.items():
        key, _, variant = name.partition(" · ")
        ok = [p for p in points if p.ok and p.fps]
        if not ok:
            continue
        point = min(ok, key=lambda p: (abs(p.resolution - at_resolution), -p.resolution))
        own = (point.scores or {}).get(ACCURACY_METRIC)
        paper = _paper_accuracy(figures, key, variant, default=variant == defaults.get(key))
        accuracy = own if own is not None else (paper.accuracy if paper else None)
        if accuracy is None:
            unplaced.append(name)
            continue
        measured_here += 1
        source = "measured" if own is not None else f"the paper's ({paper.dataset})"
        fig.add_scatter(
            x=[point.fps],
            y=[accuracy],
            mode="markers+text",
            marker={"symbol": "circle-open", "size": 13, "line": {"width": 2}, "color": colours[key]},
            text=[f"{name} here, {point.resolution}p"],
            textposition="bottom center",
            name=f"{name} (measured here)",
            legendgroup=key,
            hovertext=[_hover(point) + f"<br>J&F: {accuracy:g}, {source}"],
            hoverinfo="text",
        )
        if paper is not None and paper.fps:
            fig.add_scatter(
                x=[paper.fps, point.fps],
                y=[paper.accuracy, accuracy],
                mode="lines",
                line={"dash": "dot", "color": colours[key], "width": 1},
                showlegend=False,
                hoverinfo="skip",
                legendgroup=key,
            )
    missing = [f for f in figures if not f.fps]
    notes = []
    if results:
        notes.append(f"circles: speed measured on {results['hardware']['label']} at ~{at_resolution}p")
        details = []
        if measured_here and all(not p.scores for p in points_of(results)):
            details.append("at the paper's J&F for that variant (random weights measure speed, not accuracy)")
        if unplaced:
            details.append(f"no reported J&F to place {', '.join(unplaced)}")
        notes.append("; ".join(details))
    if missing:
        notes.append(f"{len(missing)} reported accuracies without a reported speed are not shown")
    xs = [x for trace in fig.data for x in (trace.x or ()) if x]
    ys = [y for trace in fig.data for y in (trace.y or ()) if y is not None]
    # Room around the markers for their centred labels (a log axis' range is in decades); the papers' labels name
    # the hardware too, so the fastest (rightmost) ones need the most.
    x_range = [math.log10(min(xs)) - 0.4, math.log10(max(xs)) + 0.7] if xs else None
    y_range = [min(ys) - 1.5, max(ys) + 1.5] if ys else None
    fig.update_xaxes(title="frames per second (log)", type="log", range=x_range)
    fig.update_yaxes(title=f"{ACCURACY_METRIC} (DAVIS-style, %)", range=y_range)
    _layout(fig, _with_subtitle("Accuracy vs speed: papers (stars) and this machine (circles)", notes))
    fig.update_layout(legend={"title": "method"}, showlegend=True, margin={"b": 150})
    return fig


def _paper_accuracy(figures: Sequence[PaperFigure], key: str, variant: str, *, default: bool) -> PaperFigure | None:
    """The paper's figure for this method and variant, preferring one with a speed and DAVIS-2017 val. A figure
    that names no variant stands for the default variant only when the method names no variant at all (otherwise
    it is some other configuration, described in its note)."""
    named = any(f.variant for f in figures if f.method == key)
    accepted = (variant,) if named or not default else (variant, None)
    candidates = [f for f in figures if f.method == key and f.variant in accepted]
    candidates.sort(key=lambda f: (f.variant != variant, f.fps is None, "DAVIS-2017" not in f.dataset))
    return candidates[0] if candidates else None


CHARTS = {"memory": memory_figure, "fps": fps_figure}


def export_charts(
    results: dict[str, Any], out_dir: str | Path, *, stem: str | None = None, png: bool = True
) -> list[Path]:
    """Write the memory, speed and accuracy-vs-speed charts as HTML and (with kaleido and a Chrome) PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or hardware_slug(results["hardware"])
    figures = {name: build(results) for name, build in CHARTS.items()}
    figures["accuracy"] = accuracy_speed_figure(results)
    for noisy in ("choreographer", "kaleido", "logistro"):  # kaleido's Chrome driver logs every temp folder
        logging.getLogger(noisy).setLevel(logging.WARNING)
    written = []
    for name, fig in figures.items():
        html_path = out_dir / f"{stem}-{name}.html"
        fig.write_html(html_path, include_plotlyjs="cdn")
        written.append(html_path)
        if png:
            png_path = out_dir / f"{stem}-{name}.png"
            try:
                fig.write_image(png_path, width=1000, height=560, scale=1)
            except Exception as err:  # noqa: BLE001 -- kaleido/Chrome problems vary; the HTML is still there
                raise BenchError(
                    f"Could not write {png_path.name} ({type(err).__name__}: {err}). PNG export needs kaleido "
                    "(pip install kaleido) and a Chrome or Chromium (set BROWSER_PATH=/usr/bin/chromium)."
                ) from err
            written.append(png_path)
    return written


# --------------------------------------------------------------------------------------------------------------
# CLI


def command_bench(args) -> int:
    """`python -m vos bench`: measure a sweep (or read one with --from) and optionally write its charts."""
    if getattr(args, "from_file", None):
        results = load_results(args.from_file)
    else:
        specs = parse_methods(args.methods, args.opt)
        resolutions = parse_resolutions(args.resolutions)
        from vos import device as vdevice
        from vos.runner import check_weights_spec

        weights = check_weights_spec(args.weights)  # a missing path fails now, not once per point
        torch_device = vdevice.pick_device(args.device)
        vdevice.pick_dtype(args.dtype, torch_device)  # fp16 on the CPU fails here, not in every point
        device = str(torch_device)
        out = Path(args.out) if args.out else Path(f"bench-{hardware_slug(hardware(device))}.json")
        results = run_sweep(
            specs,
            resolutions,
            frames=args.frames,
            repeats=args.repeats,
            device=device,
            dtype=args.dtype,
            weights=weights,
            timeout=args.timeout,
            memory_cap_mib=getattr(args, "memory_cap", None),
            out=out,
            command=_command_line(args),
        )
        print(summary_table(results))
        print(f"Results: {out}")
    if getattr(args, "charts", None):
        for path in export_charts(results, args.charts, png=not getattr(args, "no_png", False)):
            print(f"Chart: {path}")
    failed = [p for p in points_of(results) if p.status in (FAILED, NO_WEIGHTS)]
    return 1 if failed else 0


def _command_line(args) -> str:
    """The command that repeats this sweep, for the results file."""
    parts = ["python -m vos bench", f"--methods {args.methods}", f"--resolutions {args.resolutions}"]
    parts += [f"--frames {args.frames}", f"--repeats {args.repeats}", f"--device {args.device}"]
    parts += [f"--dtype {args.dtype}", f"--weights {args.weights}", f"--timeout {args.timeout:g}"]
    if getattr(args, "memory_cap", None):
        parts.append(f"--memory-cap {args.memory_cap:g}")
    parts += [f"--opt {opt}" for opt in args.opt]
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
