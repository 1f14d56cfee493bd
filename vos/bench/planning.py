"""What to measure: resolutions, method specs, the points of a sweep and their statuses."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from vos.errors import VosError

if TYPE_CHECKING:
    from vos.methods.base import MethodInfo
    from vos.specs import MethodSpec


log = logging.getLogger(__name__)


FORMAT = "vos-bench"
FORMAT_VERSION = 1
ASPECT = 16 / 9
SIZE_MULTIPLE = 8
# How a point's fps is counted: online methods in the steady state (frames 1..N-1, after the first frame's set-up);
# offline methods do their work before frame 0, so over the whole clip (frames / total time).
STEADY, TOTAL = "steady", "total"


class PointStatus(StrEnum):
    """How a point ended (the results file stores the value); the first four are the runner's words for the same
    outcomes."""

    OK = "ok"
    FAILED = "failed"
    OOM = "out_of_memory"
    NO_WEIGHTS = "weights_missing"
    TIMEOUT = "timeout"
    MEMORY_CAP = "memory_cap"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


OK, FAILED, OOM, NO_WEIGHTS = PointStatus.OK, PointStatus.FAILED, PointStatus.OOM, PointStatus.NO_WEIGHTS
TIMEOUT, MEMORY_CAP, SKIPPED, CANCELLED = (
    PointStatus.TIMEOUT,
    PointStatus.MEMORY_CAP,
    PointStatus.SKIPPED,
    PointStatus.CANCELLED,
)
STATUSES = tuple(PointStatus)
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


def parse_dtypes(text: str | Sequence[str]) -> list[str]:
    """Precisions from "fp32,bf16" -> ["fp32", "bf16"]: in the order given, without repeats. A sweep measures each
    point in each of them, so a reduced precision's speed-up sits beside fp32 in one results file."""
    from vos.device import DTYPES

    items = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [name for name in names if name not in DTYPES]
    if unknown or not names:
        raise BenchError(f"Unknown precision {', '.join(unknown) or '(none)'}; give some of {', '.join(DTYPES)}.")
    return names


def parse_dtypes_for(text: str | Sequence[str], device: Any) -> list[str]:
    """``parse_dtypes``, each checked against the torch ``device``: fp16 on a CPU fails here, before any work."""
    from vos.device import pick_dtype

    names = parse_dtypes(text)
    for name in names:
        pick_dtype(name, device)
    return names


def parse_methods(methods: str | Sequence[str] = "all", options: Sequence[str] = ()) -> list[MethodSpec]:
    """Validated MethodSpecs from "all" (each method's default variant) or "key,key:variant,...".

    ``options`` are "key.name=value" and apply to every entry of that method. A method may appear with several
    variants (``mixture,mixture:rgb``).
    """
    from vos.methods import base as mbase
    from vos.specs import MethodSpec, parse_method_specs

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
    count_flops: bool = True  # one more pass after the timed ones, under torch's FLOP counter


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
    # Work counted by torch's FlopCounterMode in a pass of its own (vos.bench.compute): per frame over the frames the
    # fps counts (fps_basis), frame 0's alone, and every frame's; flops_reason says why a point has none.
    flops_per_frame: float | None = None
    first_frame_flops: float | None = None
    flops_frames: list[float] = field(default_factory=list)
    flops_reason: str | None = None
    config: dict[str, Any] | None = None  # method.config(): effective options, weights' provenance

    @property
    def method_variant(self) -> str:
        return f"{self.method} · {self.variant}"

    @property
    def series(self) -> str:
        """The chart line and skip group: method · variant, and the precision where it is not the reference fp32
        (a sweep may measure bf16 beside fp32)."""
        reduced = self.dtype not in (None, "fp32")
        return f"{self.method_variant} · {self.dtype}" if reduced else self.method_variant

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
    dtype: str | Sequence[str],
    weights: str,
    gpu_memory_cap_mib: float | None = None,
    count_flops: bool = True,
) -> list[tuple[Point, Task]]:
    """Every point of the sweep, method by method, then precision by precision (``dtype``: one or several),
    resolutions ascending."""
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
        for dtype_name, resolution in itertools.product(parse_dtypes(dtype), resolutions):
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
                dtype=dtype_name,
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
                dtype=dtype_name,
                resolution=resolution,
                size=size,
                frames=frames,
                repeats=repeats,
                gpu_memory_cap_mib=gpu_memory_cap_mib,
                count_flops=count_flops,
            )
            points.append((point, task))
    return points
