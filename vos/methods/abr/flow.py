"""Optical flow for OCLR-flow: torchvision's RAFT (large), 20 iterations, gaps +g and -g, resized to 128x224.

torchvision's ``Raft_Large_Weights.C_T_V1`` are the original raft-things weights (the spec: max flow difference 0
after a name mapping), so the network is torchvision's ``raft_large``. Both files load: torchvision's as it is, the
princeton-vl ``raft-things.pth`` through ``convert_original_raft`` (names only: no tensor is split, reshaped or
scaled; see there).

Two ways to run it (option ``flow``):
- ``full``: the release's path. RAFT at the frame's full resolution, replicate-padded (centred) to a multiple of 8
  and never unpadded: the flow is resized from the PADDED size and scaled by 224 / padded width and 128 / padded
  height. Measured here (2-core CPU, random weights, 20 iterations): 7.9 s per frame pair at 480x854 (the spec
  measured the release at 40.8 s on its CPU).
- ``reduced`` (default): RAFT at 256x448 (frames larger than that are resized with INTER_AREA first), then the
  same resize to 128x224. OCLR sees 128x224 either way; 2.0 s per pair measured here, about 4x cheaper than full
  at 480p. Frames no larger than 256x448 run at their own size (padded), as in ``full``.
- Either way, a side under 128 px is upsampled to 128 first: torchvision's RAFT refuses smaller inputs (the
  original RAFT would run on them; such clips are far below what the release was evaluated on).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ITERATIONS = 20
REDUCED = (256, 448)
MIN_SIDE = 128  # torchvision's RAFT needs feature maps of 16 cells a side
OCLR_SIZE = (128, 224)
FULL, REDUCED_MODE = "full", "reduced"
PAIRS_PER_BATCH = 4


def build_raft() -> nn.Module:
    """torchvision's RAFT large with random weights (its C_T_V1 file loads into it as it is)."""
    from torchvision.models.optical_flow import raft_large

    return raft_large(weights=None, progress=False)


# --------------------------------------------------------------------------------------------------------------
# The original princeton-vl checkpoint (raft-things.pth) -> torchvision's names
#
# The original RAFT (core/extractor.py, core/update.py) and torchvision's raft_large are the same network: the
# context encoder's 256 output channels are split [128 hidden (tanh), 128 context (relu)] in the same order by both,
# and the mask head's 0.25 factor is a constant in both (torchvision's MaskPredictor.multiplier), so every tensor
# keeps its values and shape. What differs besides names:
# - a strided ResidualBlock registers its norm twice in the original (``norm3`` and ``downsample.1`` are one module),
#   so the batch-norm context encoder's file holds each of those tensors under both names; ``downsample.1`` is kept
#   and ``norm3`` dropped after checking the two are equal. The instance norms (feature encoder) hold no tensors.
# - files written before PyTorch 0.4.1 lack BatchNorm's ``num_batches_tracked``; it only counts training steps
#   (never read in eval mode), so a missing one is filled with 0.

_RAFT_PREFIXES = (("fnet.", "feature_encoder."), ("cnet.", "context_encoder."), ("update_block.", "update_block."))
# (pattern, replacement) on the name after the prefix rename; each original tensor matches one at most.
_RAFT_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^(\w+_encoder)\.conv1\.", r"\1.convnormrelu.0."),
        (r"^(\w+_encoder)\.norm1\.", r"\1.convnormrelu.1."),
        (r"^(\w+_encoder)\.conv2\.", r"\1.conv."),
        (r"^(\w+_encoder\.layer[123]\.[01])\.conv([12])\.", r"\1.convnormrelu\2.0."),
        (r"^(\w+_encoder\.layer[123]\.[01])\.norm([12])\.", r"\1.convnormrelu\2.1."),
        (r"^(\w+_encoder\.layer[23]\.0\.downsample\.[01])\.", r"\1."),
        (r"^update_block\.encoder\.convc([12])\.", r"update_block.motion_encoder.convcorr\1.0."),
        (r"^update_block\.encoder\.convf([12])\.", r"update_block.motion_encoder.convflow\1.0."),
        (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
        (r"^update_block\.gru\.conv([zrq])([12])\.", r"update_block.recurrent_block.convgru\2.conv\1."),
        (r"^update_block\.flow_head\.conv([12])\.", r"update_block.flow_head.conv\1."),
        (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
        (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
    )
)
# The second name of a strided block's downsample.1 (``norm3``): dropped once checked equal.
_RAFT_ALIAS = re.compile(r"^(\w+_encoder\.layer[23]\.0)\.norm3\.(\w+)$")
ORIGINAL_RAFT_SIGNATURE = ("fnet.conv1.weight", "cnet.conv1.weight", "update_block.gru.convz1.weight")
TORCHVISION_RAFT_SIGNATURE = (
    "feature_encoder.convnormrelu.0.weight",
    "context_encoder.convnormrelu.0.weight",
    "update_block.recurrent_block.convgru1.convz.weight",
)


def is_original_raft(state: Mapping[str, Tensor]) -> bool:
    """True for a state dict (``module.`` already stripped) in the princeton-vl layout."""
    return all(key in state for key in ORIGINAL_RAFT_SIGNATURE)


def is_torchvision_raft(state: Mapping[str, Tensor]) -> bool:
    """True for a state dict in torchvision's ``raft_large`` layout."""
    return all(key in state for key in TORCHVISION_RAFT_SIGNATURE)


def convert_original_raft(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The princeton-vl RAFT (large) state dict, ``module.`` stripped -> torchvision ``raft_large`` names.

    Every original tensor lands under exactly one name, or is the checked duplicate ``norm3``; a key the table does
    not know raises ``ValueError`` (e.g. RAFT-small's file, or another network's)."""
    out: dict[str, Tensor] = {}
    aliases: dict[str, tuple[str, Tensor]] = {}  # torchvision name -> (the original's norm3 key, its tensor)
    unknown = []
    for key, value in state.items():
        name = next((new + key[len(old) :] for old, new in _RAFT_PREFIXES if key.startswith(old)), None)
        alias = _RAFT_ALIAS.match(name) if name else None
        if alias:
            aliases[f"{alias[1]}.downsample.1.{alias[2]}"] = (key, value)
            continue
        matched = [(pattern, replacement) for pattern, replacement in _RAFT_RENAMES if name and pattern.match(name)]
        if len(matched) != 1:
            unknown.append(key)
            continue
        pattern, replacement = matched[0]
        out[pattern.sub(replacement, name, count=1)] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ValueError(f"{len(unknown)} keys are not in the original RAFT (large) layout: {shown}")
    for name, (key, value) in aliases.items():
        if name not in out or not torch.equal(out[name], value):
            raise ValueError(f"{key} differs from {key.replace('norm3', 'downsample.1')}, which it aliases")
    for name in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(name.removesuffix("running_var") + "num_batches_tracked", torch.zeros((), dtype=torch.long))
    return out


def raft_size(frame_size: tuple[int, int], mode: str) -> tuple[int, int]:
    """Where RAFT runs (before padding) for a frame of ``frame_size`` (H, W). torchvision's RAFT refuses inputs
    under 128 px a side (its correlation pyramid), so smaller sides are upsampled to 128."""
    if mode == REDUCED_MODE and (frame_size[0] > REDUCED[0] or frame_size[1] > REDUCED[1]):
        return REDUCED
    return (max(frame_size[0], MIN_SIDE), max(frame_size[1], MIN_SIDE))


def raft_input(frame: np.ndarray, size: tuple[int, int]) -> Tensor:
    """uint8 RGB (H, W, 3) -> (3, H', W') in [-1, 1] at ``size``, replicate-padded centred to multiples of 8."""
    if frame.shape[:2] != tuple(size):
        shrink = size[0] <= frame.shape[0] and size[1] <= frame.shape[1]
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 255.0 * 2.0 - 1.0
    pad_h, pad_w = (-size[0]) % 8, (-size[1]) % 8
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return F.pad(image[None], padding, mode="replicate")[0]


def to_oclr(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow in pixels of its own grid -> (2, 128, 224): INTER_LINEAR, u * 224 / W, v * 128 / H."""
    height, width = flow.shape[:2]
    small = cv2.resize(flow, (OCLR_SIZE[1], OCLR_SIZE[0]), interpolation=cv2.INTER_LINEAR)
    small[..., 0] *= OCLR_SIZE[1] / width
    small[..., 1] *= OCLR_SIZE[0] / height
    return small.transpose(2, 0, 1)


def flow_pairs(num_frames: int, gap: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(forward, backward) RAFT pairs: frame i -> i + gap and frame i -> i - gap where those frames exist."""
    forward = [(i, i + gap) for i in range(num_frames - gap)]
    backward = [(i, i - gap) for i in range(gap, num_frames)]
    return forward, backward


def assemble(num_frames: int, forward: dict[int, np.ndarray], backward: dict[int, np.ndarray]) -> np.ndarray:
    """(T, 4, 128, 224) = [u+, v+, u-, v-] per frame; a missing direction is the other one negated (zero when a
    frame has neither, e.g. a one-frame clip)."""
    out = np.zeros((num_frames, 4, *OCLR_SIZE), dtype=np.float32)
    for i in range(num_frames):
        ahead, behind = forward.get(i), backward.get(i)
        if ahead is None and behind is not None:
            ahead = -behind
        if behind is None and ahead is not None:
            behind = -ahead
        if ahead is not None:
            out[i, :2], out[i, 2:] = ahead, behind
    return out


@torch.inference_mode()
def compute_flows(
    raft: nn.Module,
    frames: Sequence[np.ndarray],
    *,
    mode: str,
    gap: int,
    device: torch.device,
    report: Callable[[int, int], None] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """uint8 RGB frames (all one size) -> (T, 4, 128, 224) float32 flows on ``device`` (``autocast()`` around
    each RAFT batch; the flows are float32 whatever it computes in)."""
    num_frames = len(frames)
    size = raft_size(frames[0].shape[:2], mode)
    images = [raft_input(frame, size) for frame in frames]
    forward, backward = flow_pairs(num_frames, gap)
    pairs = forward + backward
    results: list[np.ndarray] = []
    if report is not None:
        report(0, len(pairs))  # the stage shows (and a stop lands) before the first, slowest batch
    for start in range(0, len(pairs), PAIRS_PER_BATCH):
        batch = pairs[start : start + PAIRS_PER_BATCH]
        first = torch.stack([images[a] for a, _ in batch]).to(device)
        second = torch.stack([images[b] for _, b in batch]).to(device)
        with autocast():
            flows = raft(first, second, num_flow_updates=ITERATIONS)[-1]
        flows = flows.float().cpu().numpy()
        results.extend(to_oclr(np.ascontiguousarray(f.transpose(1, 2, 0))) for f in flows)
        if report is not None:
            report(start + len(batch), len(pairs))
    ahead = {a: results[k] for k, (a, _) in enumerate(forward)}
    behind = {a: results[len(forward) + k] for k, (a, _) in enumerate(backward)}
    return torch.from_numpy(assemble(num_frames, ahead, behind)).to(device)
