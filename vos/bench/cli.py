"""``python -m vos bench``: measure a sweep (or read one with --from) and write its charts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vos.bench.charts import export_charts
from vos.bench.planning import FAILED, NO_WEIGHTS, parse_dtypes_for, parse_methods, parse_resolutions
from vos.bench.results import hardware, hardware_slug, load_results, points_of, summary_table
from vos.bench.sweeping import run_sweep

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

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
        from vos.specs import check_weights_spec

        weights = check_weights_spec(args.weights)  # a missing path fails now, not once per point
        torch_device = vdevice.pick_device(args.device)
        dtypes = parse_dtypes_for(args.dtype, torch_device)  # before hardware() measures the machine
        device = str(torch_device)
        out = Path(args.out) if args.out else Path(f"bench-{hardware_slug(hardware(device))}.json")
        results = run_sweep(
            specs,
            resolutions,
            frames=args.frames,
            repeats=args.repeats,
            device=device,
            dtype=dtypes,
            weights=weights,
            timeout=args.timeout,
            memory_cap_mib=getattr(args, "memory_cap", None),
            out=out,
            command=_command_line(args),
            count_flops=not getattr(args, "no_flops", False),
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
    if getattr(args, "no_flops", False):
        parts.append("--no-flops")
    parts += [f"--opt {opt}" for opt in args.opt]
    return " ".join(parts)
