"""A sweep: every point of a plan measured one after another, on named hardware, written as it goes."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vos.bench.compute import measure_gemm
from vos.bench.measure import run_point
from vos.bench.planning import (
    CANCELLED,
    FORMAT,
    FORMAT_VERSION,
    RESOURCE_LIMITS,
    SKIPPED,
    STATUS_LABELS,
    Point,
    default_memory_cap_mib,
    parse_dtypes_for,
    plan,
)
from vos.bench.results import hardware, write_results

if TYPE_CHECKING:
    from vos.specs import MethodSpec


log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# A sweep


def sweep(
    specs: Sequence[MethodSpec],
    resolutions: Sequence[int],
    *,
    frames: int = 8,
    repeats: int = 1,
    device: str = "auto",
    dtype: str | Sequence[str] = "fp32",
    weights: str = "random",
    timeout: float = 600.0,
    memory_cap_mib: float | None = None,
    skip_larger: bool = True,
    out: str | Path | None = None,
    cancel: threading.Event | None = None,
    command: str | None = None,
    count_flops: bool = True,
) -> Iterator[dict[str, Any]]:
    """Measure every point, one subprocess each; yield the results (a dict as written to JSON) after each point.

    A tqdm bar (frames as steps) follows the sweep; the app shows it through ``gr.Progress(track_tqdm=True)``.
    ``out`` is rewritten after every point, so an interrupted sweep keeps what it measured.
    """
    from tqdm.auto import tqdm

    from vos import device as vdevice

    torch_device = vdevice.pick_device(device)
    device_name = str(torch_device)
    dtypes = parse_dtypes_for(dtype, torch_device)
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
        dtype=dtypes,
        weights=weights,
        gpu_memory_cap_mib=gpu_cap,
        count_flops=count_flops,
    )
    machine = hardware(device_name)
    if count_flops and todo:
        # The compute limit's rate, measured before the points so that it is in the file from the first one.
        machine["gemm"] = measure_gemm(device_name)
    results: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "vos_version": _vos_version(),
        "hardware": machine,
        "settings": {
            "device": device_name,
            "dtype": ",".join(dtypes),
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
        "flops_per_frame",
        "first_frame_flops",
        "flops_frames",
        "flops_reason",
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
