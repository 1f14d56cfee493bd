"""The compute limit: the machine's measured matrix-multiply rate, and the work a method does per frame, counted.

A method's compute limit at a point is the fps it would reach if all of its counted work ran at the machine's GEMM
rate: rate / FLOPs per frame. Real methods also move memory, run element-wise kernels and Python, so they stay
below it; the gap says how much of their time is not arithmetic.

- The rate: ``torch.mm`` of square matrices (``GEMM_SIZES``), warm, repeated for a short while, the best time
  taken, per precision the device has matrix units for (``vos.device.fast_dtypes``). A sweep measures it once in a
  fresh process of its own (``python -m vos.bench --gemm DEVICE``), so it has the threads a point has.
- The work: torch's ``FlopCounterMode`` over one pass of the clip. Each frame's count is the counter's total when
  its label map came out minus the total at the previous one, so frame 0's set-up (or, for an offline method, the
  whole clip's work) is counted apart from the later frames. Counted: matrix products, convolutions and attention
  (multiply-adds as 2 FLOPs); element-wise work is not, which is what makes the limit a limit.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from vos.methods.base import Method
    from vos.video import Clip


log = logging.getLogger(__name__)

GEMM_SIZES = (1024, 2048)
GEMM_SECONDS = 0.5  # per size and precision: long enough for a few repeats of the largest on a 2-core CPU


# --------------------------------------------------------------------------------------------------------------
# The machine's rate


def gemm_rate(device: torch.device | str, dtype: str, sizes: Sequence[int] = GEMM_SIZES, seconds: float = GEMM_SECONDS):
    """The best matrix-multiply rate, GFLOP/s, of square ``torch.mm`` at ``sizes`` in ``dtype`` on ``device``."""
    import torch

    from vos import device as vdevice

    device = torch.device(device)
    torch_dtype = vdevice.DTYPES[dtype]
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(torch_dtype)
        b = torch.randn(n, n, device=device).to(torch_dtype)
        out = torch.empty(n, n, device=device, dtype=torch_dtype)
        torch.mm(a, b, out=out)  # warm: first calls pick kernels and fault pages in
        vdevice.synchronize(device)
        start = time.perf_counter()
        repeats = 0
        while repeats < 3 or time.perf_counter() - start < seconds:
            began = time.perf_counter()
            torch.mm(a, b, out=out)
            vdevice.synchronize(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - began) / 1e9)
            repeats += 1
    return round(best, 1)


def gemm_rates(device: torch.device | str, sizes: Sequence[int] = GEMM_SIZES, seconds: float = GEMM_SECONDS):
    """This process's GEMM rate for every fast precision of ``device``: the record a results file keeps."""
    import torch

    from vos import device as vdevice

    torch_device = vdevice.pick_device(device)
    dtypes = vdevice.fast_dtypes(torch_device)
    return {
        "gflops": {dtype: gemm_rate(torch_device, dtype, sizes, seconds) for dtype in dtypes},
        "sizes": list(sizes),
        "threads": torch.get_num_threads(),
        "how": f"best torch.mm of {' and '.join(f'{n}x{n}' for n in sizes)} matrices, warm, repeated",
    }


def measure_gemm(device: str, *, timeout: float = 120.0) -> dict[str, Any] | None:
    """``gemm_rates`` measured in a fresh process (a point's conditions), or None when it fails: a sweep goes on
    without its compute-limit line rather than stop."""
    from vos.bench.measure import ROOT, _child_env

    try:
        done = subprocess.run(
            [sys.executable, "-m", "vos.bench", "--gemm", device],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            cwd=str(ROOT),
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, json.JSONDecodeError, IndexError) as err:
        log.warning("could not measure the GEMM rate (%s): the charts will have no compute-limit line", err)
        return None


# --------------------------------------------------------------------------------------------------------------
# A method's work


def _extra_formulas() -> dict[Any, Any]:
    """FLOP formulas torch's counter lacks: the CPU's fused attention (it counts only the CUDA kernels, so every
    ViT block's attention on the CPU would count as 0)."""
    import torch
    from torch.utils import flop_counter

    # The counter wraps these to receive shapes; torch's own sdpa_flop is wrapped already, so its counts are used.
    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    aten = torch.ops.aten
    formulas = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return formulas


def frame_flops(method: Method, clip: Clip, first_mask: np.ndarray) -> list[int]:
    """FLOPs counted for each label map of one pass of ``clip``: frame t's is the work done since frame t-1's map."""
    from torch.utils.flop_counter import FlopCounterMode

    counts: list[int] = []
    before = 0
    with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        for _label_map in method.segment(clip, first_mask):
            total = counter.get_total_flops()
            counts.append(total - before)
            before = total
    return counts


def per_frame(counts: Sequence[int], *, offline: bool) -> dict[str, Any]:
    """A point's work from its per-frame counts, counted over the frames its fps counts: an online method's later
    frames (their mean; frame 0's set-up apart), an offline method's whole clip (total / frames)."""
    counted = list(counts) if offline else list(counts[1:])
    return {
        "flops_per_frame": round(statistics.fmean(counted)) if counted else None,
        "first_frame_flops": int(counts[0]) if counts else None,
        "flops_frames": [int(c) for c in counts],
    }


def compute_limit_fps(gflops: float | None, flops_per_frame: float | None) -> float | None:
    """The fps a method would reach if its counted work per frame ran at ``gflops`` GFLOP/s."""
    if not gflops or not flops_per_frame:
        return None
    return gflops * 1e9 / flops_per_frame


def gemm_main(argv: Sequence[str]) -> int:
    """``python -m vos.bench --gemm DEVICE``: print ``gemm_rates(DEVICE)`` as one JSON line."""
    print(json.dumps(gemm_rates(argv[0] if argv else "auto")))
    return 0
