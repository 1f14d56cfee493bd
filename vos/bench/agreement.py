"""A reduced precision, or an option that is not exact, against fp32 on real footage: ``python -m vos bench
agreement``.

Each method runs twice on the same frames: the reference in fp32 with its options, then the candidate in a reduced
precision (bf16 on a CPU with bf16 matrix units, fp16 or bf16 on CUDA) and/or with candidate options (``--candidate
mixture.fast_em=true``: a speed-up that changes float rounding), with the same weights (a seed before each build, for
random ones) and the same seed before each pass. What one method reports:

- mean IoU of the candidate's masks against the reference's, over every frame and object where either has the object
  (a semi-supervised method's frame 0 is the prompt itself and is left out); an unsupervised method's segment ids
  are its own in each run, so they are first matched to the reference's over the whole clip (Hungarian on IoU);
- the wall time of each pass (segmenting only: the build and the weights are not in it) and reference / candidate.

The footage is real (``vos.footage.carphone``: camera noise, blur, compression), since synthetic shapes hide what
rounding does to features of textures. Where no checkpoint is installed the method runs with random weights and
the row says so: masks of an untrained network still show how far rounding moves a method's decisions, but not
how far it moves the trained one's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vos.bench.planning import BenchError, parse_methods, size_option
from vos.metrics import jaccard

if TYPE_CHECKING:
    from vos.specs import MethodSpec


log = logging.getLogger(__name__)

FOOTAGE_ASPECT = 176 / 144  # Carphone's frame


@dataclass
class Agreement:
    """One method's candidate run (a reduced precision and/or other options) against its fp32 reference."""

    method: str
    variant: str
    dtype: str  # the candidate's precision (the reference's is fp32)
    weights: str  # the weights spec that ran ("random" where no checkpoint was installed)
    note: str  # "" or why the weights are random
    frames: int
    size: list[int]  # [H, W] of the footage
    candidate_options: dict[str, Any] = field(default_factory=dict)  # set for the candidate run only
    mean_iou: float | None = None
    pairs: int = 0  # (frame, object) pairs in the mean
    reference_s: float | None = None
    candidate_s: float | None = None
    error: str | None = None

    @property
    def speedup(self) -> float | None:
        return self.reference_s / self.candidate_s if self.reference_s and self.candidate_s else None

    @property
    def candidate(self) -> str:
        """The candidate in words: "bf16", "fast_em=True" or "bf16 fast_em=True"."""
        parts = [] if self.dtype == "fp32" and self.candidate_options else [self.dtype]
        return " ".join(parts + [f"{name}={value}" for name, value in self.candidate_options.items()])


# --------------------------------------------------------------------------------------------------------------
# Masks against masks


def match_segments(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``other``'s segment ids renamed to the ``reference`` ids they overlap most over the whole clip (Hungarian on
    IoU, 0 kept as 0); an unmatched segment gets an id the reference does not use, so it counts against both."""
    from vos.matching import match_ids_by_iou

    ref, oth = np.stack(reference), np.stack(other)
    matched = match_ids_by_iou(ref, oth)
    oth_ids = [int(i) for i in np.unique(oth) if i]
    lookup = np.zeros(max([*oth_ids, 0]) + 1, np.int32)
    spare = int(ref.max(initial=0)) + 1
    for o in oth_ids:
        if o in matched:
            lookup[o] = matched[o]
        else:
            lookup[o] = spare
            spare += 1
    return list(lookup[oth])


def mean_iou(reference: Sequence[np.ndarray], other: Sequence[np.ndarray], *, skip_first: bool = False):
    """(mean IoU, pairs) of ``other``'s label maps against ``reference``'s over every frame and every object id
    either has on that frame; (1.0, 0) when neither has any object anywhere (they agree on every pixel)."""
    if len(reference) != len(other):
        raise BenchError(f"{len(other)} label maps to compare with {len(reference)}.")
    scores = []
    for index, (ref, oth) in enumerate(zip(reference, other)):
        if skip_first and index == 0:
            continue
        for obj in np.union1d(np.unique(ref), np.unique(oth)):
            if obj != 0:
                scores.append(jaccard(oth == obj, ref == obj))
    return (float(np.mean(scores)) if scores else 1.0), len(scores)


# --------------------------------------------------------------------------------------------------------------
# Running methods twice


def footage_size(height: int) -> tuple[int, int]:
    """(H, W) of the footage at ``height`` rows, its own aspect, both sides even."""
    return 2 * round(height / 2), max(2, 2 * round(height * FOOTAGE_ASPECT / 2))


def default_reduced(device: str = "auto") -> str:
    """The reduced precision this device has matrix units for (bf16 before fp16)."""
    from vos import device as vdevice

    fast = [name for name in vdevice.fast_dtypes(vdevice.pick_device(device)) if name != "fp32"]
    if not fast:
        raise BenchError(
            "This device has no matrix units for a reduced precision; give --dtype bf16 to measure it emulated."
        )
    return "bf16" if "bf16" in fast else fast[0]


def _weights_for(spec: MethodSpec, variant: str, weights: str) -> tuple[str, str]:
    """The weights spec to run and a note: "hub" where the checkpoints are installed, else random weights."""
    from vos.methods import base as mbase
    from vos.runnable import weights_state

    if weights != "hub":
        return weights, ""
    state = weights_state(mbase.method_class(spec.key).info, variant)
    if state.available is True:
        return "hub", ""
    if not state.needed:
        return "hub", ""
    return "random", "random weights: no checkpoint installed" + (f" ({state.command})" if state.command else "")


def _timed_pass(spec: MethodSpec, variant: str, options: dict[str, Any], *, dtype, device, weights, clip, mask):
    """(label maps, seconds segmenting) of one method built afresh in ``dtype``."""
    import torch

    from vos.methods import base as mbase

    torch.manual_seed(0)  # the same random weights in both precisions
    method = mbase.create(spec.key, variant, device=device, weights=weights, dtype=dtype, **options)
    torch.manual_seed(0)
    start = time.perf_counter()
    maps = list(method.segment(clip, mask))
    seconds = time.perf_counter() - start
    del method
    return maps, seconds


def agreement(
    specs: Sequence[MethodSpec],
    *,
    dtype: str = "bf16",
    candidate: Mapping[str, dict[str, Any]] | None = None,
    frames: int = 10,
    height: int = 144,
    device: str = "auto",
    weights: str = "hub",
) -> list[Agreement]:
    """Every method in fp32 (the reference) and in ``dtype`` with its ``candidate`` options (method key -> options,
    for that run only) on ``frames`` frames of the Carphone footage ``height`` rows high; one Agreement each. A method
    that fails in either run gets its error in the row; the others go on."""
    from vos import device as vdevice
    from vos.footage import carphone
    from vos.methods import SEMI
    from vos.methods import base as mbase
    from vos.video import Clip

    candidate = candidate or {}
    torch_device = vdevice.pick_device(device)
    if dtype == "fp32" and not any(candidate.get(spec.key) for spec in specs):
        raise BenchError(
            "Compare a reduced precision (bf16, fp16) or candidate options (--candidate KEY.NAME=VALUE) with fp32, "
            "not fp32 with itself."
        )
    vdevice.pick_dtype(dtype, torch_device)
    size = footage_size(height)
    footage, mask = carphone(frames, size)
    clip = Clip.from_frames(footage, name=f"carphone {size[0]}x{size[1]}")
    rows = []
    for spec in specs:
        info = mbase.method_class(spec.key).info
        variant = spec.variant or info.default_variant
        options = size_option(info, spec.options, size)  # at the footage's size, as the benchmark does
        changes = dict(candidate.get(spec.key, {}))
        spec_weights, note = _weights_for(spec, variant, spec.weights or weights)
        row = Agreement(info.key, variant, dtype, spec_weights, note, len(footage), list(size), changes)
        try:
            kwargs = dict(device=str(torch_device), weights=spec_weights, clip=clip, mask=mask)
            reference, row.reference_s = _timed_pass(spec, variant, options, dtype="fp32", **kwargs)
            other, row.candidate_s = _timed_pass(spec, variant, {**options, **changes}, dtype=dtype, **kwargs)
            if info.task != SEMI:
                other = match_segments(reference, other)
            row.mean_iou, row.pairs = mean_iou(reference, other, skip_first=info.task == SEMI)
        except Exception as err:  # noqa: BLE001 -- one method's failure is its row, not the end
            row.error = f"{type(err).__name__}: {str(err)[:300]}"
        log.info("%s: %s", info.key, agreement_words(row))
        rows.append(row)
    return rows


def agreement_words(row: Agreement) -> str:
    if row.error:
        return f"failed: {row.error}"
    return (
        f"mean IoU {row.mean_iou:.4f} over {row.pairs} frame-objects, fp32 {row.reference_s:.2f} s, "
        f"{row.candidate} {row.candidate_s:.2f} s ({row.speedup:.2f}x)"
    )


def agreement_table(rows: Sequence[Agreement]) -> str:
    from vos.text import format_table

    header = ["method", "variant", "candidate", "mean IoU", "pairs", "fp32 s", "candidate s", "speed-up", "weights"]
    body = []
    for row in rows:
        numbers = ["-"] * 5
        if not row.error:
            numbers = [f"{row.mean_iou:.4f}", str(row.pairs), f"{row.reference_s:.2f}", f"{row.candidate_s:.2f}"]
            numbers.append(f"{row.speedup:.2f}x")
        body.append([row.method, row.variant, row.candidate, *numbers, row.weights])
    lines = [format_table(header, body, rule=True, right=range(3, 8))]
    lines += [f"{row.method}: {row.note}" for row in rows if row.note]
    lines += [f"{row.method}: failed: {row.error}" for row in rows if row.error]
    return "\n".join(lines)


def command_agreement(args) -> int:
    """`python -m vos bench agreement`."""
    from vos.specs import check_weights_spec

    specs = parse_methods(args.methods, args.opt)
    weights = check_weights_spec(args.weights)
    candidate = {spec.key: spec.options for spec in parse_methods(args.methods, args.candidate)}
    dtype = args.dtype or ("fp32" if args.candidate else default_reduced(args.device))
    rows = agreement(
        specs,
        dtype=dtype,
        candidate=candidate,
        frames=args.frames,
        height=args.size,
        device=args.device,
        weights=weights,
    )
    size = rows[0].size if rows else footage_size(args.size)
    print(f"Carphone (real footage), {rows[0].frames if rows else args.frames} frames at {size[0]}x{size[1]}:")
    print(agreement_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(row) | {"speedup": row.speedup} for row in rows], indent=1))
        print(f"Rows: {args.json}")
    return 1 if any(row.error for row in rows) else 0
