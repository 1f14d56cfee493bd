"""Where a method's time goes: ``python -m vos bench profile METHOD``.

A method runs on real footage (``vos.footage.carphone``, resized to the asked resolution) twice: once timed, once
under torch's FlopCounterMode. Named regions of its code (the backbone, the affinity, EM, CRF training...) are
wrapped for the run, each wrapper adding its wall time and, in the counting run, its FLOPs to its region; a call
made inside another region's call counts to the outer one, so regions never overlap and "other" (resizing,
argmax, Python) is the frame's time minus theirs. Each region's FLOPs over the machine's measured GEMM rate gives
its compute limit: how long it would take if all its counted work ran at the rate of a large matrix product.

The regions are declared per method in ``REGIONS`` (module path, attribute): the profile needs nothing from the
methods themselves and changes no result.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vos.bench.planning import BenchError

# (label, module, attribute path): functions or methods whose calls make a region.
REGIONS: dict[str, list[tuple[str, str, str]]] = {
    "tvos": [
        ("backbone (ResNet-50 embedding)", "vos.methods.tvos", "TransductiveVOS.embed"),
        ("affinity, softmax, prior, labels", "vos.methods.tvos", "propagate"),
    ],
    "mixture": [
        ("features (XCiT / colour)", "vos.methods.mixture.features", "XcitFeatures.__call__"),
        ("features (XCiT / colour)", "vos.methods.mixture.features", "RgbFeatures.__call__"),
        ("CRF training (frame 0)", "vos.methods.mixture.crf", "PacCrf.fit"),
        ("CRF inference", "vos.methods.mixture.crf", "PacCrf.forward"),
        ("EM", "vos.methods.mixture.vmf", "em"),
        ("scoring", "vos.methods.mixture.vmf", "score_cells"),
        ("initial centres", "vos.methods.mixture.vmf", "greedy_centres"),
    ],
}


@dataclass
class Region:
    seconds: float = 0.0
    flops: int = 0
    calls: int = 0


@dataclass
class Profile:
    method: str
    variant: str
    size: tuple[int, int]
    frames: int
    frame_seconds: list[float] = field(default_factory=list)
    frame_flops: list[int] = field(default_factory=list)
    regions: dict[str, dict[str, Region]] = field(default_factory=dict)  # "frame 0" / "later frames" -> regions
    gemm_gflops: float | None = None


class _Recorder:
    """The wrappers' shared state: which region is open, and where its time and FLOPs go."""

    def __init__(self) -> None:
        self.open: str | None = None
        self.phase = "frame 0"
        self.regions: dict[str, dict[str, Region]] = defaultdict(lambda: defaultdict(Region))
        self.counter: Any = None  # FlopCounterMode in the counting run

    def total_flops(self) -> int:
        return 0 if self.counter is None else int(self.counter.get_total_flops())

    def wrap(self, label: str, function):
        def wrapper(*args, **kwargs):
            if self.open is not None:  # inside another region: counted there
                return function(*args, **kwargs)
            self.open = label
            flops0 = self.total_flops()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                region = self.regions[self.phase][label]
                if self.counter is None:
                    region.seconds += time.perf_counter() - start
                    region.calls += 1
                else:
                    region.flops += self.total_flops() - flops0
                self.open = None

        return wrapper


@contextlib.contextmanager
def _patched(method_key: str, recorder: _Recorder) -> Iterator[None]:
    undo = []
    for label, module_name, path in REGIONS.get(method_key, []):
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, recorder.wrap(label, original))
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def profile(
    method_key: str,
    variant: str | None = None,
    *,
    height: int = 480,
    frames: int = 6,
    options: dict[str, Any] | None = None,
    weights: str = "random",
    device: str = "cpu",
) -> Profile:
    """Time and count ``frames`` frames of real footage at ``height`` (width 16:9, even) for one method."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vos import methods
    from vos.bench.compute import gemm_rate
    from vos.footage import carphone
    from vos.video import Clip

    if method_key not in REGIONS:
        raise BenchError(f"No profile regions are declared for {method_key!r}; known: {', '.join(REGIONS)}.")
    size = (height, 2 * round(height * 16 / 9 / 2))
    clip_frames, mask = carphone(frames, size)
    clip = Clip.from_frames(clip_frames)
    torch.manual_seed(0)
    method = methods.create(method_key, variant=variant, weights=weights, device=device, **(options or {}))
    result = Profile(method_key, method.variant, size, frames)
    recorder = _Recorder()
    with _patched(method_key, recorder):
        for counting in (False, True):
            recorder.phase = "frame 0"
            with contextlib.ExitStack() as stack:
                if counting:
                    recorder.counter = stack.enter_context(FlopCounterMode(display=False))
                start = time.perf_counter()
                flops0 = 0
                for index, _ in enumerate(method.segment(clip, mask)):
                    now = time.perf_counter()
                    if counting:
                        result.frame_flops.append(recorder.total_flops() - flops0)
                        flops0 = recorder.total_flops()
                    else:
                        result.frame_seconds.append(now - start)
                    start = time.perf_counter()
                    if index == 0:
                        recorder.phase = "later frames"
            recorder.counter = None
    result.regions = {phase: dict(regions) for phase, regions in recorder.regions.items()}
    result.gemm_gflops = gemm_rate(device, "fp32")
    return result


def profile_table(result: Profile) -> str:
    """The profile as the text table the docstrings quote."""
    from vos.text import format_table

    rate = result.gemm_gflops
    lines = [
        f"{result.method}:{result.variant}, {result.size[0]}x{result.size[1]}, {result.frames} frames of Carphone; "
        f"fp32 GEMM rate {rate:.0f} GFLOP/s"
        if rate
        else "",
    ]
    for phase, frames in (("frame 0", [0]), ("later frames", list(range(1, result.frames)))):
        if not frames or phase not in result.regions and phase != "frame 0":
            continue
        seconds = sum(result.frame_seconds[i] for i in frames)
        flops = sum(result.frame_flops[i] for i in frames)
        per = len(frames)
        rows = []
        named_s = named_f = 0.0
        for label, region in result.regions.get(phase, {}).items():
            named_s += region.seconds
            named_f += region.flops
            rows.append(_row(label, region.seconds / per, region.flops / per, seconds / per, rate))
        rows.append(_row("other (resizing, argmax, Python)", (seconds - named_s) / per, (flops - named_f) / per,
                         seconds / per, rate))  # fmt: skip
        rows.append(_row("total", seconds / per, flops / per, seconds / per, rate))
        lines.append(f"{phase}{' (mean per frame)' if per > 1 else ''}:")
        lines.append(format_table(["region", "s", "share", "GFLOP", "limit s"], rows, rule=True, right=(1, 2, 3, 4)))
    return "\n".join(line for line in lines if line)


def _row(label: str, seconds: float, flops: float, total: float, rate: float | None) -> list[str]:
    limit = f"{flops / 1e9 / rate:.2f}" if rate and flops else "-"
    share = f"{100 * seconds / total:.0f}%" if total > 0 else "-"
    return [label, f"{seconds:.2f}", share, f"{flops / 1e9:.1f}", limit]


def command_profile(args) -> int:
    """`python -m vos bench profile METHOD[:VARIANT]`."""
    from vos.bench.planning import parse_methods

    specs = parse_methods(args.method, args.opt)
    if len(specs) != 1:
        raise BenchError("bench profile takes one method: METHOD or METHOD:VARIANT.")
    spec = specs[0]
    result = profile(
        spec.key, spec.variant, height=args.size, frames=args.frames, options=spec.options, device=args.device
    )
    print(profile_table(result))
    return 0
