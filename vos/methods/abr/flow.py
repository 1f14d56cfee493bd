"""Optical flow for OCLR-flow: torchvision's RAFT (large), 20 iterations, gaps +g and -g, resized to 128x224.

torchvision's ``Raft_Large_Weights.C_T_V1`` are the original raft-things weights (the spec: max flow difference 0
after a name mapping), so the network is torchvision's ``raft_large`` and the weights are torchvision's file.

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

from collections.abc import Callable, Sequence

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
) -> Tensor:
    """uint8 RGB frames (all one size) -> (T, 4, 128, 224) float32 flows on ``device``."""
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
        flows = raft(first, second, num_flow_updates=ITERATIONS)[-1].float().cpu().numpy()
        results.extend(to_oclr(np.ascontiguousarray(f.transpose(1, 2, 0))) for f in flows)
        if report is not None:
            report(start + len(batch), len(pairs))
    ahead = {a: results[k] for k, (a, _) in enumerate(forward)}
    behind = {a: results[len(forward) + k] for k, (a, _) in enumerate(backward)}
    return torch.from_numpy(assemble(num_frames, ahead, behind)).to(device)
