"""Device and dtype choice, autocast, peak-memory probes and out-of-memory detection."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from vos.errors import VosError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceUnavailable(VosError, RuntimeError):
    """The requested device does not exist on this machine."""


class DtypeUnavailable(VosError, ValueError):
    """A compute precision that is unknown or that the chosen device cannot run."""


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu. An explicit device that is missing raises DeviceUnavailable."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every backend it was built to know, most of them irrelevant here
        raise DeviceUnavailable(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("CUDA was requested but no CUDA GPU is visible here; use --device cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"{name} was requested but this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
        )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailable("MPS was requested but is not available here; use --device cpu or auto.")
    return device


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for autocast. Default fp32 everywhere: methods' specs are defined in fp32."""
    if name is None:
        return torch.float32
    try:
        dtype = DTYPES[name]
    except KeyError:
        raise DtypeUnavailable(f"Unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.") from None
    # Refused on purpose: most CPUs have no fast fp16 kernels, so bf16 is the CPU's reduced precision. Raised as a
    # user error so the CLI stops before any work instead of failing inside the first method.
    if dtype == torch.float16 and device.type == "cpu":
        raise DtypeUnavailable("fp16 is not supported on the CPU; use --dtype bf16 or fp32, or a GPU (--device cuda).")
    return dtype


def fast_dtypes(device: torch.device) -> list[str]:
    """The precisions this device has matrix units for, fp32 first: what the app offers and the benchmark measures.

    bf16 on a CPU runs everywhere but is emulated (slower than fp32) without bf16 matrix instructions (AVX512-BF16,
    AMX), so a CPU lists it only when oneDNN says it has them.
    """
    names = ["fp32"]
    if device.type == "cuda":
        names.append("fp16")
        if torch.cuda.is_bf16_supported():
            names.append("bf16")
    elif device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        names.append("bf16")
    return names


def fast_dtypes_of(devices: Iterable[torch.device | str]) -> list[str]:
    """The precisions any of ``devices`` has matrix units for, fp32 first, each once: what a page offers."""
    return list(dict.fromkeys(name for device in devices for name in fast_dtypes(torch.device(device))))


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for reduced precision, a no-op for fp32. Open it per frame, never around a ``yield``."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors and for host allocation failures."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "DefaultCPUAllocator: can't allocate memory" in text
    )


def free_memory(device: torch.device | None = None) -> None:
    gc.collect()
    release_freed_memory()
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit
_TRIM_THRESHOLD = 2 << 30


@functools.cache
def _glibc() -> Any:
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and others: nothing to tune
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks of up to 32 MB instead of returning them to the kernel at once.

    By default glibc maps large blocks afresh and unmaps them on free, so every large temporary (a 20 MB CRF message)
    is paid again in page faults on first touch, which in this project's VMs can cost more than the arithmetic: a
    step of the mixture's CRF training at 240x427 took 0.48 s instead of 0.64 s with this (CPU time, one thread,
    mean of three runs). Peak memory is unchanged; what is kept is given back by ``release_freed_memory`` (the
    memory probe calls it, so a method's baseline is honest). Blocks above 32 MB are always mapped afresh (glibc's
    cap): code that needs such buffers repeatedly should reuse them itself, as tvos does.
    Returns False where there is no glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def release_freed_memory() -> None:
    """Give the heap's free memory back to the kernel (glibc's malloc_trim); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty on Linux)."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """This machine as run bundles and benchmark results record it: CPU, cores, RAM, GPU, Python and torch."""
    import platform

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU {cpu_model()} ({os.cpu_count()} cores)"


@dataclass
class PeakMemory:
    """Peak memory during a probe, in bytes. ``kind`` says what was measured."""

    kind: str  # "cuda_allocated" or "cpu_rss"
    peak_bytes: int = 0
    reserved_bytes: int | None = None  # CUDA only
    baseline_bytes: int = 0

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


class _RssSampler(threading.Thread):
    """Samples this process's resident set size; the peak is what a CPU run really cost."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return self.peak


@contextlib.contextmanager
def memory_probe(device: torch.device) -> Iterator[PeakMemory]:
    """Measure peak memory inside the block.

    CUDA: ``max_memory_allocated`` after a reset (and the reserved peak). CPU/MPS: the process's peak resident set
    sampled every 20 ms. The result is filled in when the block exits (also on error).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = PeakMemory("cuda_allocated", baseline_bytes=torch.cuda.memory_allocated(device))
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.peak_bytes = torch.cuda.max_memory_allocated(device)
            result.reserved_bytes = torch.cuda.max_memory_reserved(device)
        return
    release_freed_memory()
    sampler = _RssSampler()
    result = PeakMemory("cpu_rss", baseline_bytes=sampler.peak)
    sampler.start()
    try:
        yield result
    finally:
        result.peak_bytes = sampler.stop()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
