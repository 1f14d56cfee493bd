"""Per-frame features on the mixture grid (N cells x n_features) and the frame geometry they imply.

Geometry: a frame is resized (bilinear, as DINO's ``read_frame``) so its short side is ``short`` and its long side
the largest multiple of ``multiple`` under the aspect ratio (the release: 480 and 64, so DAVIS's 854x480 becomes
832x480). The mixture grid has one cell per 4x4 pixels of that frame (the XCiT stride-8 map upsampled x2), the
CRF works at half the frame size, and the final labels at the frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F

from vos.backbones import xcit
from vos.backbones.normalization import IMAGENET_MEAN, IMAGENET_STD, normalise

DINOV2_ARCHS = {"s": "vit_small_patch14_dinov2", "b": "vit_base_patch14_dinov2"}


@dataclass(frozen=True)
class Geometry:
    frame: tuple[int, int]  # (H', W') the processing size: 4x the grid
    grid: tuple[int, int]  # (Hg, Wg) mixture cells

    @classmethod
    def for_frame(cls, size: tuple[int, int], short: int, multiple: int) -> Geometry:
        """Processing size for a frame of ``size`` (H, W): short side ``short`` (rounded down to a multiple of 8),
        long side floor(short * aspect / multiple) * multiple, at least ``multiple``."""
        h, w = size
        short = max(8, short // 8 * 8)
        multiple = max(8, multiple // 8 * 8)
        long = max(multiple, int(short * max(h, w) / min(h, w) // multiple) * multiple)
        frame = (long, short) if h > w else (short, long)
        return cls(frame, (frame[0] // 4, frame[1] // 4))

    @property
    def crf(self) -> tuple[int, int]:
        return (self.grid[0] * 2, self.grid[1] * 2)

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]


def resize_frame(frame: np.ndarray, geometry: Geometry) -> np.ndarray:
    """uint8 RGB at the processing size (cv2 bilinear, as the release's reader)."""
    h, w = geometry.frame
    if frame.shape[:2] == (h, w):
        return frame
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)


class Features(Protocol):
    n_features: int

    def __call__(self, frame: np.ndarray, geometry: Geometry) -> torch.Tensor:
        """uint8 RGB frame at ``geometry.frame`` -> (N, n_features) fp32 on the method's device, row-major cells."""
        ...


def _to_tensor(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255.0


def _cells(feature_map: torch.Tensor) -> torch.Tensor:
    """(1, C, Hg, Wg) -> (Hg*Wg, C) fp32."""
    return feature_map[0].flatten(1).t().contiguous().float()


class XcitFeatures:
    """DINO XCiT-S/8 patch tokens (block ``layer``, final norm if ``norm``), optionally concatenated with DINOv2
    patch tokens resized to the XCiT grid, upsampled x2 (bilinear, align_corners=True) as the release does."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layer: int,
        norm: bool,
        dinov2: torch.nn.Module | None = None,
        autocast=None,
    ):
        self.model = model
        self.layer = layer
        self.norm = norm
        self.dinov2 = dinov2
        self.autocast = autocast
        self.n_features = xcit.EMBED_DIM + (dinov2.num_features if dinov2 is not None else 0)

    def __call__(self, frame: np.ndarray, geometry: Geometry) -> torch.Tensor:
        device = next(self.model.parameters()).device
        image = _to_tensor(frame, device)
        with self.autocast():
            maps = xcit.patch_features(self.model, xcit.normalise(image), layer=self.layer, norm=self.norm).float()
            if self.dinov2 is not None:
                extra = dinov2_patch_features(self.dinov2, frame, device).float()
                extra = F.interpolate(extra, size=maps.shape[-2:], mode="bilinear", align_corners=False)
                maps = torch.cat([maps, extra], dim=1)
        up = F.interpolate(maps, size=geometry.grid, mode="bilinear", align_corners=True)
        return _cells(up)


def build_dinov2(size: str) -> torch.nn.Module:
    """timm's DINOv2 ViT-S/14 or B/14 (LVD-142M layout, 518 px position table, resampled to any input)."""
    model = timm.create_model(DINOV2_ARCHS[size], pretrained=False, num_classes=0, dynamic_img_size=True)
    return model.eval()


def dinov2_patch_features(model: torch.nn.Module, frame: np.ndarray, device: torch.device) -> torch.Tensor:
    """Last block's patch tokens with the final norm, (1, C, h/14, w/14), for the frame resized to the nearest
    multiples of 14 (ImageNet normalisation, DINOv2's)."""
    h, w = frame.shape[:2]
    size = (max(14, round(h / 14) * 14), max(14, round(w / 14) * 14))
    resized = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    image = _to_tensor(resized, device)
    (tokens,) = model.forward_intermediates(
        normalise(image, IMAGENET_MEAN, IMAGENET_STD),
        indices=[len(model.blocks) - 1],
        norm=True,
        output_fmt="NCHW",
        intermediates_only=True,
    )
    return tokens


class RgbFeatures:
    """No weights: each cell's mean colour (area average over its 4x4 pixels) lifted by a fixed random Fourier map,
    cos(c W + b) with W ~ N(0, 1/bandwidth^2), b ~ U(0, 2 pi), rescaled to a constant norm.

    A linear lift of a 3-d colour would keep the colour's own cosine geometry (dark and bright red would look
    alike, black would have no direction); the Fourier map makes the feature cosine approximate a Gaussian
    kernel on colour distance, so near colours score high and distinct ones near zero, which is what the vMF
    components need. The norm (default 35, 2.5x ||2.5 rho|| = 14.1) sets the balance against the position code.
    The projection is drawn from its own fixed seed, not the run's.
    """

    PROJECTION_SEED = 0

    def __init__(self, n_features: int, *, bandwidth: float, norm: float, device: torch.device):
        gen = torch.Generator().manual_seed(self.PROJECTION_SEED)
        self.weight = (torch.randn(3, n_features, generator=gen) / bandwidth).to(device)
        self.phase = (torch.rand(n_features, generator=gen) * (2 * math.pi)).to(device)
        self.norm = norm
        self.n_features = n_features
        self.device = device

    def __call__(self, frame: np.ndarray, geometry: Geometry) -> torch.Tensor:
        hg, wg = geometry.grid
        colour = cv2.resize(frame, (wg, hg), interpolation=cv2.INTER_AREA)
        c = torch.from_numpy(colour.reshape(-1, 3)).to(self.device).float() / 255.0
        lifted = torch.cos(c @ self.weight + self.phase)
        return self.norm * F.normalize(lifted, dim=1)
