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
- work: the FLOPs each frame costs, counted by torch's ``FlopCounterMode`` in one more pass after the timed ones
  (``count_flops``; ``--no-flops`` skips it), and once per sweep the machine's GEMM rate (``torch.mm``, fp32 and
  each reduced precision the device has matrix units for): their ratio is the compute-limit line of the speed chart
  (``compute``).
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

Precision: ``--dtype fp32,bf16`` measures every point in each; a reduced precision's points are their own series
(``tvos · davis_train · bf16``) and the tables give their speed-up over fp32. ``python -m vos bench agreement``
measures how far its masks move from fp32's on real footage (``agreement``).

Modules: ``planning`` (what to measure: resolutions, specs, precisions, points, statuses), ``measure`` (one point in
a child process, and the parent that caps it), ``compute`` (the GEMM rate and the FLOP count), ``agreement``
(reduced precision against fp32), ``results`` (the results file's schema, stored results, text summaries, the
machine's description), ``sweeping`` (a plan measured point after point), ``charts`` (plotly figures, export) and
``cli`` (``python -m vos bench``). Everything callers use is re-exported here.
"""

from __future__ import annotations

from vos.bench.agreement import (
    Agreement,
    agreement,
    agreement_table,
    match_segments,
    mean_iou,
)
from vos.bench.charts import (
    ACCURACY_METRIC,
    CHARTS,
    FAILURE_TEXT,
    MARKERS,
    PaperFigure,
    accuracy_speed_figure,
    busy_note,
    export_charts,
    fps_figure,
    gemm_gflops,
    memory_figure,
    paper_figures,
)
from vos.bench.cli import (
    command_bench,
)
from vos.bench.compute import (
    compute_limit_fps,
    frame_flops,
    gemm_rate,
    gemm_rates,
    measure_gemm,
    per_frame,
)
from vos.bench.measure import (
    ROOT,
    measure_point,
    run_point,
)
from vos.bench.planning import (
    ASPECT,
    CANCELLED,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    MEMORY_CAP,
    NO_WEIGHTS,
    OK,
    OOM,
    POLL_SECONDS,
    RESOURCE_LIMITS,
    SIZE_MULTIPLE,
    SKIPPED,
    STATUS_LABELS,
    STATUSES,
    STEADY,
    TIMEOUT,
    TOTAL,
    BenchError,
    Point,
    PointStatus,
    Task,
    default_memory_cap_mib,
    frame_size,
    parse_dtypes,
    parse_methods,
    parse_resolutions,
    plan,
    size_option,
)
from vos.bench.results import (
    STORED_DIR,
    describe_settings,
    hardware,
    hardware_label,
    hardware_slug,
    load_results,
    points_of,
    rounded,
    stored_results,
    summary_rows,
    summary_table,
    validate_results,
    write_results,
)
from vos.bench.sweeping import (
    point_words,
    run_sweep,
    sweep,
)

__all__ = [
    "ACCURACY_METRIC",
    "ASPECT",
    "Agreement",
    "BenchError",
    "CANCELLED",
    "CHARTS",
    "FAILED",
    "FAILURE_TEXT",
    "FORMAT",
    "FORMAT_VERSION",
    "MARKERS",
    "MEMORY_CAP",
    "NO_WEIGHTS",
    "OK",
    "OOM",
    "POLL_SECONDS",
    "PaperFigure",
    "Point",
    "PointStatus",
    "RESOURCE_LIMITS",
    "ROOT",
    "SIZE_MULTIPLE",
    "SKIPPED",
    "STATUSES",
    "STATUS_LABELS",
    "STEADY",
    "STORED_DIR",
    "TIMEOUT",
    "TOTAL",
    "Task",
    "accuracy_speed_figure",
    "agreement",
    "agreement_table",
    "busy_note",
    "command_bench",
    "compute_limit_fps",
    "default_memory_cap_mib",
    "describe_settings",
    "export_charts",
    "fps_figure",
    "frame_flops",
    "frame_size",
    "gemm_gflops",
    "gemm_rate",
    "gemm_rates",
    "hardware",
    "hardware_label",
    "hardware_slug",
    "load_results",
    "match_segments",
    "mean_iou",
    "measure_gemm",
    "measure_point",
    "memory_figure",
    "paper_figures",
    "parse_dtypes",
    "parse_methods",
    "parse_resolutions",
    "per_frame",
    "plan",
    "point_words",
    "points_of",
    "rounded",
    "run_point",
    "run_sweep",
    "size_option",
    "stored_results",
    "summary_rows",
    "summary_table",
    "sweep",
    "validate_results",
    "write_results",
]
