"""SimVOS: one ViT for feature extraction and matching (Wu, Yang, Wu, Chan; ICCV 2023).

Paper: "Scalable Video Object Segmentation with Simplified Framework", arXiv 2308.09903.
Release: github.com/jimmy-dq/SimVOS @ef94709 (reference behaviour: shared/specs/simvos.md).

A plain MAE-initialised ViT/16 reads the tokens of two memory frames (frame 0 with its ground truth, frame t-1 with
its own soft prediction; a mask embedding is added to their tokens) and of the search frame in one sequence; the
search frame's output tokens go through ViTDet-style up-convolutions (fpn1/fpn2) into an STCN decoder, once per
object, and the objects' sigmoids are merged by STM's soft aggregation. The aggregated probabilities, at the padded
size, are both the output (argmax) and the next frame's memory mask. Frames run at their native (working) size,
zero-padded to a multiple of 16 after normalisation.

Variants (one checkpoint each, a bare state_dict of 201 tensors):
- ``vit_b``: ViT-B/16, all 12 blocks over [frame 0 ; frame t-1 ; frame t] (L = 0). 111.26M parameters.
- ``vit_bs``: ViT-B/16, the first L = 4 blocks run on each frame alone; each memory frame is then condensed by token
  refinement into 384 foreground and 384 background prototypes per object, and only blocks 4..11 see
  [prototypes of frame 0 ; of frame t-1 ; frame t].
- ``vit_l``: ViT-L/16 (24 blocks, 1024 channels), L = 0.
The B and L files also hold (untrained) token-refinement weights and the unused ``head``/``fc_norm`` of MAE's
classifier: the network keeps them so each file loads strictly.

Follows the release where its details decide the masks: the memory tokens of L = 0 are (patch + mask embedding) +
position, those of the within-frame layers (patch + position) + mask embedding, as the release adds them; the
refinement's background weight is ``1 - sum(object probabilities)`` with every value other than exactly 1 set to 0,
which after frame 0 leaves (almost) no background weight and, with one object, all-zero background prototypes
(LayerNorm's bias) - the trained BS model saw the same.

What differs from the release (the masks stay the same up to float rounding):
- Attention runs through timm's fused path (``scaled_dot_product_attention``): no block holds the (3N)^2 attention
  matrix (at 480p 12 heads x 4860^2 floats, 1.1 GB, twice with the softmax). It differs from the explicit product
  by ~1e-6 (the spec calls this harmless).
- Only what the next frame reads is kept: frame 0's memory tokens (or prototypes) and frame t-1's, instead of every
  padded frame and probability map of the clip.
- Objects can share one pass (option ``object_batch``); the release runs one pass per object (the default here).
- The position embedding is resized once per clip (the release overwrites a parameter of the model).
- bf16/fp16 autocast is available on CUDA, bf16 on the CPU (``--dtype``); fp32 is the reference. Autocast is
  opened per frame: the ViT, the mask embedding and the decoder run in it; the sigmoids, the soft aggregation (and
  so the next frame's memory mask) and the output argmax are float32. Agreement with fp32 on real footage
  (``python -m vos bench agreement --methods simvos,simvos:vit_bs --frames 10 --size 144``: Carphone 144x176, frames
  1-9, random weights (no checkpoint here), one thread on a shared 2-core AMD EPYC with AVX512-BF16, load ~5):
  mean IoU 0.9974 (vit_b) and 0.9957 (vit_bs); bf16 took 6.2 s against fp32's 12.1 s (1.9x) and 24.4 s against
  50.8 s (2.1x). The trained weights' agreement is not measured.

Measured on the development machine's 2-core CPU: ViT-B, random weights, one object, fp32, the peak resident set
of a child process that imports, builds and segments (importing torch, timm and vos alone is 0.78 GB; the built
network 1.21 GB). The machine was shared with many other jobs (load average 13 to 22 on 2 cores), so the times are
far slower than the machine alone and only their ratios mean something.
- 480x854 (padded 480x864, 1620 tokens a frame), three frames: peak 1.62 GB (the release: 3.8 GB); frame 1
  ([first ; search]) 61 s, frame 2 ([first ; previous ; search]) 90 s.
- 1080x1920 (padded 1088x1920, 8160 tokens a frame), frames 0 and 1: peak 2.39 GB (frame 1: 20 minutes).
- Measured again with the machine to itself (2026-12-07, one other test process at times): 480x854, three
  frames: frame 1 8.7 s, frame 2 19.1 s, peak 1.55 GB; the release takes 79 s a frame and 3.8 GB there.
- One ViT-B block over 4860 tokens (480p, three frames), the two runs interleaved: fused attention 13.8 s, the
  release's explicit product 34.8 s (and 2.3 GB more for the scores and their softmax); they differ by 7e-7.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vos import device as vdevice
from vos.backbones.normalization import IMAGENET_MEAN, IMAGENET_STD, frames_to_tensor
from vos.backbones.vit import build_vit, patch_tokens, resized_pos_embed, run_blocks
from vos.methods.base import (
    ONLINE,
    SEMI,
    Method,
    MethodInfo,
    Option,
    Paper,
    Reported,
    Resolution,
    register,
)
from vos.nn_utils import channel_argmax
from vos.video import Clip, resize_frame

log = logging.getLogger(__name__)

PATCH = 16
POS_GRID = 24  # pos_embed_new was trained at 384x384: a 24x24 grid (plus an unused class row)
PROTOTYPES = 384  # K_f = K_b in every published file
DECODER_CHANNELS = (512, 256)  # STCN's decoder widths at strides 8 and 4
CLASSES = 1000  # MAE's ImageNet head, kept only so the files load strictly
CLAMP = 1e-7  # soft aggregation's clamp


@dataclass(frozen=True)
class Config:
    """The architecture numbers of one variant. ``within_frame_layers`` is the paper's L; token refinement is used
    when it is positive (every published L > 0 model uses it)."""

    embed_dim: int
    depth: int
    num_heads: int
    within_frame_layers: int = 0
    prototypes: int = PROTOTYPES

    @property
    def token_refinement(self) -> bool:
        return self.within_frame_layers > 0


CONFIGS = {
    "vit_b": Config(embed_dim=768, depth=12, num_heads=12),
    "vit_bs": Config(embed_dim=768, depth=12, num_heads=12, within_frame_layers=4),
    "vit_l": Config(embed_dim=1024, depth=24, num_heads=16),
}

_A100 = "A100"

INFO = MethodInfo(
    key="simvos",
    title="Simplified VOS with one ViT (SimVOS)",
    task=SEMI,
    summary=(
        "One MAE-pretrained ViT reads the first frame with its mask, the previous frame with its predicted mask "
        "and the current frame as a single token sequence, so feature extraction and matching happen in the same "
        "attention layers; an STCN decoder turns the current frame's tokens into each object's mask. The BS "
        "variant condenses memory frames into 768 prototypes per object after 4 per-frame layers, for twice the "
        "speed."
    ),
    variants=tuple(CONFIGS),
    default_variant="vit_b",
    paper=Paper(
        title="Scalable Video Object Segmentation with Simplified Framework",
        authors="Qiangqiang Wu, Tianyu Yang, Wei Wu, Antoni B. Chan",
        venue="ICCV",
        year=2023,
        url="https://arxiv.org/abs/2308.09903",
        bibtex=(
            "@inproceedings{wu2023,\n"
            "  title={Scalable Video Object Segmentation with Simplified Framework},\n"
            "  author={Qiangqiang Wu and Tianyu Yang and Wei Wu and Antoni B. Chan},\n"
            "  booktitle={ICCV},\n"
            "  year={2023}\n}"
        ),
    ),
    repo="https://github.com/jimmy-dq/SimVOS",
    licence="unknown (see the official repository)",
    reported=(
        Reported(
            "DAVIS-2017 val",
            {"J&F": 88.0, "J": 85.0, "F": 91.0},
            "vit_b",
            fps=4.9,
            resolution="480p",
            hardware=_A100,
        ),
        Reported(
            "DAVIS-2017 val",
            {"J&F": 87.1, "J": 84.1, "F": 90.1},
            "vit_bs",
            fps=9.9,
            resolution="480p",
            hardware=_A100,
        ),
        Reported(
            "DAVIS-2017 val", {"J&F": 88.5, "J": 85.4, "F": 91.5}, "vit_l", fps=2.0, resolution="480p", hardware=_A100
        ),
        Reported("DAVIS-2017 test-dev", {"J&F": 80.4, "J": 76.1, "F": 84.6}, "vit_b", resolution="480p"),
        Reported("DAVIS-2017 test-dev", {"J&F": 79.3, "J": 75.1, "F": 83.6}, "vit_bs", resolution="480p"),
        Reported("DAVIS-2017 test-dev", {"J&F": 82.3, "J": 78.7, "F": 85.8}, "vit_l", resolution="480p"),
        Reported("DAVIS-2016 val", {"J&F": 92.9, "J": 91.3, "F": 94.4}, "vit_b"),
        Reported("DAVIS-2016 val", {"J&F": 91.5, "J": 89.9, "F": 93.1}, "vit_bs"),
        Reported("DAVIS-2016 val", {"J&F": 93.6, "J": 92.0, "F": 95.3}, "vit_l"),
        Reported(
            "YouTube-VOS 2019 val",
            {"G": 84.2, "J_seen": 83.1, "J_unseen": 79.1},
            "vit_b",
            note="a model trained on YouTube-VOS 2019 train only (not published); evaluated at 6 fps",
        ),
    ),
    options=(
        Option(
            "object_batch",
            int,
            1,
            "Objects run through the ViT together (1 = one pass per object, as the release). Larger batches are "
            "faster on a GPU and give the same masks; memory grows with the batch.",
            minimum=1,
        ),
    ),
    weights={
        "vit_b": {"model": "simvos.b"},
        "vit_bs": {"model": "simvos.bs"},
        "vit_l": {"model": "simvos.l"},
    },
    processing=ONLINE,
    resolution=Resolution.as_given(),
)


# --------------------------------------------------------------------------------------------------------------
# The network


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (ViTDet's Norm2d; the parameters live in ``ln``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ln = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class MaskEmbed(nn.Module):
    """E_m: a (B, 1, H, W) mask in [0, 1] -> (B, h*w, C) tokens; a 16x16 stride-16 convolution WITH bias."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, masks: Tensor) -> Tensor:
        return self.proj(masks).flatten(2).transpose(1, 2)


class ResBlock(nn.Module):
    """STCN's residual block: conv(relu(conv(relu(x)))) + x, the shortcut a 3x3 conv when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.downsample = (
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + residual


class UpsampleBlock(nn.Module):
    """A 3x3 conv of the finer skip map plus the coarser map upsampled x2 (bilinear), then a ResBlock."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, kernel_size=3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: Tensor, coarse: Tensor) -> Tensor:
        x = self.skip_conv(skip) + F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class Decoder(nn.Module):
    """STCN's decoder on (m16, m8, m4): one object's mask logits (B, 1, 16h, 16w) at the padded input size."""

    def __init__(self, embed_dim: int):
        super().__init__()
        wide, narrow = DECODER_CHANNELS
        self.compress = ResBlock(embed_dim, wide)
        self.up_16_8 = UpsampleBlock(wide, wide, narrow)
        self.up_8_4 = UpsampleBlock(narrow, narrow, narrow)
        self.pred = nn.Conv2d(narrow, 1, kernel_size=3, padding=1)

    def forward(self, m16: Tensor, m8: Tensor, m4: Tensor) -> Tensor:
        x = self.up_8_4(m4, self.up_16_8(m8, self.compress(m16)))
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


class TokenRefiner(nn.Module):
    """Token refinement: K prototypes of a frame's layer-L tokens, each a softmax-weighted sum over the positions
    where the frame's weight map is not exactly 0 (a prototype with no such position comes out as zeros before the
    final LayerNorm)."""

    def __init__(self, embed_dim: int, prototypes: int):
        super().__init__()
        self.input_norm = nn.LayerNorm(embed_dim + 1)
        self.patch_to_cluster_atten = nn.Sequential(
            nn.Conv2d(embed_dim + 1, embed_dim // 4, kernel_size=3, padding=1, bias=False), nn.GELU()
        )
        self.patch_to_cluster_linear = nn.Linear(embed_dim // 4, prototypes)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, features: Tensor, weight: Tensor) -> Tensor:
        """features (B, h, w, C), weight (B, 1, h, w) -> prototypes (B, K, C)."""
        batch, height, width, channels = features.shape
        x = self.input_norm(torch.cat([features, weight.permute(0, 2, 3, 1)], dim=-1)).permute(0, 3, 1, 2)
        x = self.patch_to_cluster_atten(x).permute(0, 2, 3, 1).reshape(batch, height * width, -1)
        logits = self.patch_to_cluster_linear(x).transpose(1, 2)  # (B, K, hw)
        logits = logits.masked_fill(weight.flatten(2) == 0, float("-inf"))
        attention = torch.nan_to_num(torch.softmax(logits, dim=-1))  # a row of -inf only: NaN -> 0
        # Under bf16 autocast the product would cast the fp32 softmax down anyway; saying so keeps it one dtype where
        # autocast does not reach (torch's FLOP counter runs einsum's decomposition below it). fp32: no-op.
        attention = attention.to(features.dtype)
        prototypes = torch.einsum("bkn,bnc->bkc", attention, features.reshape(batch, height * width, channels))
        return self.norm(prototypes)


class SimVOSNet(nn.Module):
    """The official parameter layout, with timm's ViT under ``vit`` (the converter adds that prefix).

    Stage methods, shapes for one padded frame of h x w tokens (N = h*w):
    ``patches`` (B, 3, 16h, 16w) -> (B, N, C); ``memory_tokens`` / ``within_frame`` / ``prototypes`` build memory;
    ``joint`` runs blocks[L:] and ``norm`` over [memory ; search] and returns the search part as m16 (B, C, h, w);
    ``decode`` m16 -> mask logits (B, 1, 16h, 16w).
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.vit = build_vit(
            patch_size=PATCH, embed_dim=dim, depth=config.depth, num_heads=config.num_heads, num_classes=CLASSES
        )
        self.vit.fc_norm = nn.LayerNorm(dim, eps=1e-6)  # unused; in every file (MAE's global-pool classifier)
        self.pos_embed_new = nn.Parameter(torch.zeros(1, 1 + POS_GRID * POS_GRID, dim))
        self.mask_patch_embed = MaskEmbed(dim)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            ChannelNorm(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, DECODER_CHANNELS[1], kernel_size=2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, DECODER_CHANNELS[0], kernel_size=2, stride=2))
        self.stcn_decoder = Decoder(dim)
        self.tlearner = TokenRefiner(dim, config.prototypes)
        self.tlearner_back = TokenRefiner(dim, config.prototypes)

    def position(self, grid: tuple[int, int]) -> Tensor:
        """pos_embed_new resized to ``grid``: (1, N, C), bicubic, align_corners=False, no antialias."""
        return resized_pos_embed(self.pos_embed_new, grid)

    def patches(self, images: Tensor) -> Tensor:
        return patch_tokens(self.vit, images)

    def memory_tokens(self, patches: Tensor, masks: Tensor, position: Tensor) -> Tensor:
        """Memory tokens for L = 0: (patch + E_m(mask)) + position, summed in the release's order. patches (1 or
        B, N, C), masks (B, 1, H, W) -> (B, N, C)."""
        return (patches + self.mask_patch_embed(masks)) + position

    def within_frame(self, tokens: Tensor) -> Tensor:
        """blocks[0:L] on each frame alone: (B, N, C) -> (B, N, C)."""
        return run_blocks(self.vit, tokens, 0, self.config.within_frame_layers)

    def masked_within_frame(self, patches: Tensor, masks: Tensor, position: Tensor) -> Tensor:
        """A memory frame's layer-L tokens: blocks[0:L] of (patch + position) + E_m(mask), the release's order."""
        return self.within_frame((patches + position) + self.mask_patch_embed(masks))

    def prototypes(self, features: Tensor, foreground: Tensor, background: Tensor, grid: tuple[int, int]) -> Tensor:
        """features (B, N, C) and weights (B, 1, h, w) -> [K foreground ; K background] prototypes (B, 2K, C)."""
        spatial = features.reshape(features.shape[0], grid[0], grid[1], -1)
        return torch.cat([self.tlearner(spatial, foreground), self.tlearner_back(spatial, background)], dim=1)

    def joint(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """blocks[L:] and norm over (B, M + N, C); the last N tokens (the search frame) as m16 (B, C, h, w)."""
        x = self.vit.norm(run_blocks(self.vit, tokens, self.config.within_frame_layers))
        count = grid[0] * grid[1]
        return x[:, -count:].transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])

    def decode(self, m16: Tensor) -> Tensor:
        return self.stcn_decoder(m16, self.fpn2(m16), self.fpn1(m16))


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints

# Keys of timm's ViT in the official file (``pos_embed_new`` is SimVOS's own and stays at the top level).
_BACKBONE_NAMES = ("cls_token", "pos_embed")
_BACKBONE_PREFIXES = ("patch_embed.", "blocks.", "norm.", "head.", "fc_norm.")
_OURS_PREFIX = "vit."


def our_key(official: str) -> str:
    """The name of an official key in SimVOSNet: the ViT's keys move under ``vit.``, the rest stay."""
    if official in _BACKBONE_NAMES or official.startswith(_BACKBONE_PREFIXES):
        return _OURS_PREFIX + official
    return official


def official_key(ours: str) -> str:
    """The inverse of ``our_key``."""
    return ours.removeprefix(_OURS_PREFIX)


def convert_official(checkpoint: Any) -> dict[str, Tensor]:
    """The release's file (a bare state_dict, all 201 tensors kept) in our layout. Unknown keys pass through so
    that strict loading names them."""
    from vos.weights import unwrap_state_dict

    return {our_key(key): value for key, value in unwrap_state_dict(checkpoint).items()}


# --------------------------------------------------------------------------------------------------------------
# Pre- and post-processing


@dataclass(frozen=True)
class Padding:
    """Zeros added to reach a multiple of 16, split with the floor on the top/left (the release's pad_divide_by)."""

    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def for_size(cls, size: tuple[int, int], multiple: int = PATCH) -> Padding:
        extra_h, extra_w = (-size[0]) % multiple, (-size[1]) % multiple
        return cls(extra_h // 2, extra_h - extra_h // 2, extra_w // 2, extra_w - extra_w // 2)

    def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return size[0] + self.top + self.bottom, size[1] + self.left + self.right

    def pad(self, x: Tensor) -> Tensor:
        return F.pad(x, (self.left, self.right, self.top, self.bottom))

    def unpad(self, x: Tensor) -> Tensor:
        return x[..., self.top : x.shape[-2] - self.bottom, self.left : x.shape[-1] - self.right]


def soft_aggregate(probs: Tensor) -> Tensor:
    """STM's soft aggregation of per-object probabilities (K, 1, H, W) -> (K + 1, 1, H, W), background first:
    bg = prod(1 - p_k); every channel clamped to [1e-7, 1 - 1e-7]; logit; softmax over the K + 1 channels."""
    merged = torch.cat([torch.prod(1 - probs, dim=0, keepdim=True), probs], dim=0).clamp(CLAMP, 1 - CLAMP)
    return torch.softmax(torch.log(merged / (1 - merged)), dim=0)


def refinement_weights(object_probs: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Foreground and background weight maps (K, 1, h, w) of each object for token refinement.

    object_probs (K, 1, H, W) at full padded resolution. bg = 1 - sum(objects), every value other than exactly 1
    set to 0; [bg, objects] resized bilinearly to ``grid``; hard = one-hot argmax over them; fg_k = p_k * hard_k,
    bg_k = (1 - p_k) * (1 - hard_k) (the other objects count as background).
    """
    per_channel = object_probs.permute(1, 0, 2, 3)  # (1, K, H, W), as the release lays it out
    background = 1 - per_channel.sum(dim=1, keepdim=True)
    background = torch.where(background == 1, background, torch.zeros_like(background))
    maps = F.interpolate(torch.cat([background, per_channel], dim=1), size=grid, mode="bilinear", align_corners=False)
    hard = F.one_hot(maps.argmax(dim=1), maps.shape[1]).permute(0, 3, 1, 2).to(maps.dtype)
    probs, hard = maps[0, 1:].unsqueeze(1), hard[0, 1:].unsqueeze(1)
    return probs * hard, (1 - probs) * (1 - hard)


# --------------------------------------------------------------------------------------------------------------
# Propagation


class Propagation:
    """One clip's state: the memory of frame 0 (fixed) and of the previous frame, for K objects.

    Memory per object is a token sequence (K, M, C): for L = 0 a frame's N tokens with its mask embedded; with
    token refinement its 2 x 384 prototypes. Nothing else of past frames is kept.
    """

    def __init__(
        self,
        net: SimVOSNet,
        grid: tuple[int, int],
        num_objects: int,
        object_batch: int = 1,
        check_stop: Callable[[], None] | None = None,
    ):
        self.net = net
        self.grid = grid
        self.num_objects = num_objects
        self.object_batch = max(1, object_batch)
        self.position = net.position(grid)
        self.first: Tensor | None = None
        self.previous: Tensor | None = None
        self.check_stop = check_stop or (lambda: None)

    @property
    def refined(self) -> bool:
        return self.net.config.token_refinement

    def memory(self, patches: Tensor, object_probs: Tensor) -> Tensor:
        """The memory of one frame: patches (1, N, C), its masks (K, 1, H, W) at the padded size -> (K, M, C)."""
        if not self.refined:
            return self.net.memory_tokens(patches, object_probs, self.position)
        # The release runs the K masked copies of the frame as one batch through blocks[0:L], then refines per
        # object.
        features = self.net.masked_within_frame(patches, object_probs, self.position)
        foreground, background = refinement_weights(object_probs, self.grid)
        return torch.cat(
            [
                self.net.prototypes(features[k : k + 1], foreground[k : k + 1], background[k : k + 1], self.grid)
                for k in range(self.num_objects)
            ]
        )

    def start(self, image: Tensor, masks: Tensor) -> None:
        """Frame 0: image (1, 3, H, W) normalised and padded, masks (K, 1, H, W) its zero-padded one-hot truth."""
        self.first = self.memory(self.net.patches(image), masks)

    def step(self, image: Tensor, *, last: bool) -> Tensor:
        """Frame t >= 1 -> aggregated probabilities (K + 1, 1, H, W), float32; unless ``last``, frame t becomes the
        previous-frame memory with them."""
        if self.first is None:
            raise RuntimeError("Propagation.step before start")
        patches = self.net.patches(image)
        search = patches + self.position
        if self.refined:
            search = self.net.within_frame(search)
        memories = [self.first] if self.previous is None else [self.first, self.previous]
        logits = []
        for start in range(0, self.num_objects, self.object_batch):
            self.check_stop()
            chunk = slice(start, min(start + self.object_batch, self.num_objects))
            count = chunk.stop - chunk.start
            tokens = torch.cat([m[chunk] for m in memories] + [search.expand(count, -1, -1)], dim=1)
            logits.append(self.net.decode(self.net.joint(tokens, self.grid)))
        probs = soft_aggregate(torch.sigmoid(torch.cat(logits).float()))
        self.previous = None if last else self.memory(patches, probs[1:])
        return probs


# --------------------------------------------------------------------------------------------------------------
# The method


@register
class SimVOS(Method):
    info = INFO

    @classmethod
    def build_part(cls, part: str, variant: str, options: dict) -> nn.Module:
        return SimVOSNet(CONFIGS[variant])

    def _build(self) -> None:
        self.net: SimVOSNet = self.nets["model"]
        unfused = [i for i, block in enumerate(self.net.vit.blocks) if not getattr(block.attn, "fused_attn", False)]
        if unfused:
            # timm reads TIMM_FUSED_ATTN at import; without the fused path every block would hold (3N)^2 scores.
            log.warning("simvos: blocks %s use explicit attention (TIMM_FUSED_ATTN?); memory grows a lot", unfused)

    def normalised(self, frame: np.ndarray, padding: Padding) -> Tensor:
        """A uint8 RGB frame -> (1, 3, H, W) ImageNet-normalised, zero-padded AFTER normalisation."""
        return padding.pad(frames_to_tensor(frame, IMAGENET_MEAN, IMAGENET_STD, self.device))

    @torch.inference_mode()
    def _segment(self, clip: Clip, first_mask: np.ndarray) -> Iterator[np.ndarray]:
        ids = np.unique(first_mask)
        ids = ids[ids > 0]
        to_id = np.concatenate([[0], ids]).astype(np.uint8)
        size = tuple(self.working_size(clip))
        padding = Padding.for_size(size)
        padded = padding.padded_size(size)
        grid = (padded[0] // PATCH, padded[1] // PATCH)

        work_mask = first_mask
        if first_mask.shape != size:
            work_mask = cv2.resize(first_mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        truth = torch.from_numpy(work_mask).to(self.device)
        masks = padding.pad(torch.stack([(truth == i).float() for i in ids]).unsqueeze(1))  # (K, 1, H, W)

        state = Propagation(self.net, grid, len(ids), self.options["object_batch"], self.check_stop)
        total = clip.num_frames
        for t, frame in enumerate(clip.frames()):
            if tuple(frame.shape[:2]) != size:
                frame = resize_frame(frame, size)
            image = self.normalised(frame, padding)
            with vdevice.autocast(self.device, self.dtype):
                if t == 0:
                    state.start(image, masks)
                else:
                    probs = state.step(image, last=t == total - 1)
            if t == 0:
                yield np.array(first_mask, dtype=np.uint8, copy=True)
            else:
                yield to_id[self.channel_map(probs, padding, clip.size)]

    @staticmethod
    def channel_map(probs: Tensor, padding: Padding, size: tuple[int, int]) -> np.ndarray:
        """Aggregated probabilities (K + 1, 1, H, W) at the padded size -> channel map at ``size``: unpadded,
        bilinear to the output size (the identity at the working size), argmax."""
        probs = padding.unpad(probs)
        if tuple(probs.shape[-2:]) != tuple(size):
            probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
        return channel_argmax(probs[:, 0]).cpu().numpy()
