"""The results file (JSON, ``format: vos-bench``): writing, checking, reading, the stored results and text summaries.

Fields added after the first files were stored are optional, so those files still load and chart: the machine's
GEMM rate (``hardware.gemm``), each point's counted FLOPs (``flops_per_frame``, ``first_frame_flops``,
``flops_frames``) and its precision (``dtype``; a sweep's ``settings.dtype`` may name several, "fp32,bf16")."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vos.bench.planning import FORMAT, FORMAT_VERSION, OK, STATUS_LABELS, STATUSES, BenchError, Point

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

STORED_DIR = Path(__file__).resolve().parents[2] / "assets" / "bench"

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
    "flops_per_frame",
    "first_frame_flops",
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
    """One row per point for tables (CLI, app). A reduced precision's row has its speed-up over the fp32 point of
    the same method, variant and resolution; the compute limit is the GEMM rate of the point's precision over its
    counted FLOPs a frame (``vos.bench.compute``)."""
    from vos.bench.compute import compute_limit_fps

    points = points_of(results)
    rates = (results["hardware"].get("gemm") or {}).get("gflops") or {}
    reference = {(p.method, p.variant, p.resolution): p.fps for p in points if p.ok and (p.dtype or "fp32") == "fp32"}
    rows = []
    for p in points:
        dtype = p.dtype or "fp32"
        limit = compute_limit_fps(rates.get(dtype), p.flops_per_frame)
        base = reference.get((p.method, p.variant, p.resolution))
        rows.append(
            {
                "method": p.method,
                "variant": p.variant,
                "dtype": dtype,
                "resolution": f"{p.resolution}p",
                "size": f"{p.size[0]}x{p.size[1]}",
                "status": STATUS_LABELS.get(p.status, p.status),
                "peak MiB": p.peak_memory_mib,
                "reserved MiB": p.reserved_memory_mib,
                "baseline MiB": p.baseline_memory_mib,
                "load s": p.load_s,
                "first frame s": p.first_frame_s,
                "fps": p.fps,
                "speed-up": p.fps / base if dtype != "fp32" and p.ok and p.fps and base else None,
                "GFLOP/frame": p.flops_per_frame / 1e9 if p.flops_per_frame else None,
                "limit fps": limit,
                "% of limit": 100 * p.fps / limit if limit and p.ok and p.fps else None,
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
    optional = ["speed-up", "GFLOP/frame", "limit fps", "% of limit"]  # shown where some point has them
    if len({row["dtype"] for row in rows}) > 1:
        columns.insert(2, "dtype")
    columns += [name for name in optional if any(row[name] is not None for row in rows)]

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
# The machine, as results name it


def hardware(device: str) -> dict[str, Any]:
    """The machine, as the results file and the charts' titles name it."""
    from vos import device as vdevice

    info = vdevice.machine_info()
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
