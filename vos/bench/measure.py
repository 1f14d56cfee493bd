"""Measuring one point in a child process of its own (``python -m vos.bench --point TASK STATUS``), and the parent
that starts it and enforces the time and memory caps."""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vos.bench.compute import frame_flops, per_frame
from vos.bench.planning import CANCELLED, FAILED, MEMORY_CAP, OK, OOM, POLL_SECONDS, STEADY, TIMEOUT, TOTAL, Task
from vos.errors import VosError

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the checkout, first on the child's path

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
    # Memory first: explaining the error imports more modules, and counting FLOPs runs the method again, neither of
    # which may count.
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
        first_frame_s=first_frame_runs[0] if first_frame_runs else None,
        first_frame_runs=first_frame_runs,
        fps=round(statistics.median(fps_runs), 4) if fps_runs else None,
        fps_runs=fps_runs,
    )
    if error is None and task.count_flops:
        # A pass of its own, after the timed ones: the counter's Python hook on every operation must not be timed.
        status.write(phase="counting")
        try:
            counts = frame_flops(method, clip, first_mask)
        except Exception as err:  # noqa: BLE001 -- the timings stand without a count
            status.write(flops_reason=f"not counted ({type(err).__name__}: {str(err)[:200]})")
        else:
            status.write(**per_frame(counts, offline=cls.info.offline))
    status.write(phase="done")
    return status.record


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


def child_main(argv: Sequence[str]) -> int:
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
    if killed_for and record.get("phase") == "counting":
        # Its timings and memory were complete: only the extra counting pass was cut short.
        why = {TIMEOUT: f"the point's {timeout:g} s ran out", MEMORY_CAP: "the memory cap was reached"}
        record.update(phase="done", flops_reason=f"not counted: {why.get(killed_for, 'stopped by the user')}.")
        killed_for = None
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
