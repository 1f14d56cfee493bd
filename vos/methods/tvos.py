"""TVOS: transductive label propagation over a learned ResNet-50 embedding (Zhang, Wu, Peng, Lin; CVPR 2020).

Paper: "A Transductive Approach for Video Object Segmentation", arXiv 2004.07193.
Release: github.com/microsoft/transductive-vos.pytorch @1312e43 (reference behaviour: shared/specs/tvos.md).

Each frame is embedded at its working resolution by a ResNet-50 whose layer3 runs at stride 1 and whose layer4 is
narrowed to width 256 (1024 channels out), followed by a 1x1 projection to 256 and BatchNorm: a raw, unnormalised
embedding at stride 8. Labels flow from up to nine reference frames (all previous ones up to t = 9; later six spread
over ``linspace(max(t - 44, 0), t - 4, 6)`` plus t-3, t-2, t-1) through ONE softmax over all their pixels per target
pixel, then a Gaussian spatial prior (sigma 21 feature cells for the five distant frames once t > 15, else 8) is
applied after the softmax without renormalising. The new frame's labels enter the history one-hot; the output is the
bilinear upsampling of the raw scores to the clip's size, then argmax; all objects in one pass. This follows the
release where it differs from the paper (the paper describes the window as the preceding 40 frames; the release
reaches back 44: option ``window``).

What differs from the release, with the same output:
- Memory: the release keeps the features of every frame (6.6 MB per frame at 480p); here only frames that some later
  target can still reference are kept (at most ~45), so a long clip costs no more than a short one.
- The affinity is computed ``chunk_size`` target cells at a time (default 256) instead of as one (9HW x HW) matrix
  (1.42 GB at 480p, 38 GB at 1080p in the release), so peak memory grows linearly with the number of pixels. The
  softmax runs over reference cells for each target cell, so chunking targets is exact; to keep it exact in the
  last bit too, every matrix product runs on blocks of exactly ``ROW_BLOCK`` target cells (one large product picks
  its BLAS kernel by size, which changes the rounding): the scores do not depend on ``chunk_size`` at all. The
  softmax runs in place (torch's own kernel, so the same bits): a fresh buffer per chunk cost more in page faults
  than the softmax itself.
- The product is laid out target-major (targets as rows, the softmax along each row); the release's column layout
  is the same arithmetic up to float rounding order.
- Object ids of the prompt may be any values (1, 3, 7): they become contiguous channels inside and come back on exit.

Profile (``python -m vos bench profile tvos --size 480 --frames 12``: random weights, Carphone at 480x854, fp32, the
2-core AMD EPYC development VM with nothing else running; its fp32 GEMM rate 166-188 GFLOP/s, measured by the same
command; "limit" = counted FLOPs / that rate):

  region                            s per frame   GFLOP    limit s
  backbone (ResNet-50 embedding)    1.08          166.9    1.01     (frame 0: 1.22 s)
  affinity, softmax, prior, labels  1.75          126.3    0.76     (mean of frames 1-11: 1 to 9 references)
  other (upsampling, argmax)        0.04            -        -
  total                             2.87          293.1    1.77

At nine references (t >= 10) the affinity is 198 GFLOP, about 2.7 s at the same rate, so a steady frame takes about
3.8 s (scaled from the mean, not timed alone). The backbone runs at the GEMM rate (oneDNN convolutions); the
affinity's products have an inner dimension of 256 and run at ~40% of it, which is what a 256-deep product reaches
with this BLAS (measured alone: 55-65 GFLOP/s a thread against 90 for 2048-deep ones). No exact rearrangement
moved it: at nine references (256 x 256 x 57,780 per block, both threads) MKL's product ran at 121 GFLOP/s, with the
references transposed at 114 (the same bits), one reference frame's columns at a time at 130, MKL's packed product
at 92, oneDNN's at 130 but with other bits. So issue #20's 2.0 s a frame is out of reach in exact fp32 on this
machine; ``dtype=bf16`` is the way below it. Before this profile the softmax allocated a fresh 59-237 MB buffer per
chunk, and the page faults of that fresh memory cost more than the softmax: in place, the propagation of one 480p
frame at nine references went from 7.4 to 5.4 CPU-seconds (one thread, on the machine while it was shared), with
bit-identical scores (tests/test_tvos.py keeps the exact dense-reference test). ``dtype=bf16`` runs the backbone and
the affinity's products in bf16 (the softmax, prior and label sums stay fp32). On real footage (``python -m vos
bench agreement --methods tvos --frames 10 --size 144``: Carphone 144x176, random weights, the machine to itself)
its masks agree with fp32's at mean IoU 0.9999, 1.5x faster; the stored sweep has its speed at 120-480p.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vos import device as vdevice
from vos.backbones.normalization import IMAGENET_MEAN, IMAGENET_STD, normalise
from vos.backbones.resnet import STEM_CHANNELS, make_layer, stem_layers
from vos.methods.base import (
    SEMI,
    Method,
    MethodInfo,
    Option,
    OptionError,
    Paper,
    Reported,
    register,
)
from vos.nn_utils import channel_argmax, rowblock_mm
from vos.video import Clip

log = logging.getLogger(__name__)

STRIDE = 8
EMBED_DIM = 256

# The release's reference-frame schedule.
ALL_PREVIOUS_UNTIL = 9  # targets t <= 9 use every previous frame
NUM_SPARSE = 6  # linspace(max(t - window, 0), t - 4, 6)
RECENT = (3, 2, 1)  # then t-3, t-2, t-1
RELEASE_WINDOW = 44
PAPER_WINDOW = 40
FAR_SIGMA_AFTER = 15  # targets t > 15 use the far sigma for the first NUM_FAR references
NUM_FAR = 5

ROW_BLOCK = 256  # target pixels per matrix product: per-pixel results do not depend on the chunk size

VARIANTS = {
    "davis_train": "trained on DAVIS-2017 train (the paper's DAVIS-2017 val model)",
    "davis_trainval": "trained on DAVIS-2017 train+val (the paper's test-dev model)",
    "youtube_train": "trained on YouTube-VOS train",
}

_TITAN_XP = "Titan Xp"

INFO = MethodInfo(
    key="tvos",
    title="Transductive label propagation (TVOS)",
    task=SEMI,
    summary=(
        "Labels are propagated from nine sampled past frames (dense near the target, sparse up to 44 frames back) "
        "by one softmax over the similarities of a learned ResNet-50 embedding, weighted by a Gaussian spatial "
        "prior. No fine-tuning, no optical flow, constant cost per frame and for any number of objects."
    ),
    variants=tuple(VARIANTS),
    default_variant="davis_train",
    paper=Paper(
        title="A Transductive Approach for Video Object Segmentation",
        authors="Yizhuo Zhang, Zhirong Wu, Houwen Peng, Stephen Lin",
        venue="CVPR",
        year=2020,
        url="https://arxiv.org/abs/2004.07193",
        bibtex=(
            "@inproceedings{zhang2020a,\n"
            "  title={A Transductive Approach for Video Object Segmentation},\n"
            "  author={Zhang, Yizhuo and Wu, Zhirong and Peng, Houwen and Lin, Stephen},\n"
            "  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2020}\n}"
        ),
    ),
    repo="https://github.com/microsoft/transductive-vos.pytorch",
    licence="MIT",
    reported=(
        Reported(
            "DAVIS-2017 val",
            {"J&F": 72.3, "J": 69.9, "F": 74.7},
            "davis_train",
            fps=37,
            resolution="480p",
            hardware=_TITAN_XP,
        ),
        Reported(
            "DAVIS-2017 test-dev", {"J&F": 63.1, "J": 58.8, "F": 67.4}, "davis_trainval", fps=37, hardware=_TITAN_XP
        ),
        Reported(
            "YouTube-VOS 2018 val",
            {"G": 67.8, "J_seen": 67.1, "F_seen": 69.4, "J_unseen": 63.0, "F_unseen": 71.6},
            "youtube_train",
        ),
        Reported(
            "YouTube-VOS 2018 val",
            {"G": 67.4, "J_seen": 66.7, "F_seen": 69.8, "J_unseen": 62.5, "F_unseen": 70.6},
            "davis_trainval",
            note="the DAVIS train+val model, not trained on YouTube-VOS",
        ),
    ),
    options=(
        Option(
            "temperature",
            float,
            1.0,
            "Multiplies the similarities before the softmax (the release's 1.0).",
            minimum=1e-6,
        ),
        Option(
            "sigma_far",
            float,
            21.0,
            "Spatial prior width, in feature cells (8 pixels), for the five distant reference frames once t > 15.",
            minimum=1e-3,
        ),
        Option(
            "sigma_near",
            float,
            8.0,
            "Spatial prior width, in feature cells, for the recent reference frames.",
            minimum=1e-3,
        ),
        Option(
            "window",
            int,
            RELEASE_WINDOW,
            "How far back the sparse references reach: linspace(max(t - window, 0), t - 4, 6). At least 9.",
            paper=PAPER_WINDOW,
            minimum=ALL_PREVIOUS_UNTIL,
        ),
        Option(
            "chunk_size",
            int,
            ROW_BLOCK,
            f"Target pixels (feature cells) whose affinities are held at once, rounded up to a multiple of "
            f"{ROW_BLOCK}; 0 = the whole frame (the release's dense matrix). Memory only: the masks are identical.",
            minimum=0,
        ),
    ),
    weights={variant: {"embedding": f"tvos.{variant}"} for variant in VARIANTS},
)


# --------------------------------------------------------------------------------------------------------------
# The embedding network


class TransductiveEmbedding(nn.Module):
    """ResNet-50 to stride 8 with a stride-1 layer3, a width-256 layer4 and a 256-d BatchNorm'd projection.

    image (B, 3, H, W), ImageNet-normalised -> embedding (B, 256, ceil(H/8), ceil(W/8)); no ReLU, no L2 norm.
    12,157,504 parameters in 318 state-dict tensors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = stem_layers()
        self.layer1 = make_layer(STEM_CHANNELS, 64, 256, 3)
        self.layer2 = make_layer(256, 128, 512, 4, stride=2)
        self.layer3 = make_layer(512, 256, 1024, 6)  # stride 1, no dilation
        self.layer4 = make_layer(1024, 256, 1024, 3)  # width 256: in = out, so no projection shortcut
        self.adjust_dim = nn.Conv2d(1024, EMBED_DIM, 1, bias=False)
        self.bn256 = nn.BatchNorm2d(EMBED_DIM)

    def forward(self, image: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn256(self.adjust_dim(x))


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints

# The release wraps torchvision's ResNet children in an nn.Sequential: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layers.
_RENAMES = (
    ("backbone.0.", "conv1."),
    ("backbone.1.", "bn1."),
    ("backbone.4.", "layer1."),
    ("backbone.5.", "layer2."),
    ("backbone.6.", "layer3."),
    ("backbone.7.", "layer4."),
)


def convert_official(checkpoint: Any) -> dict[str, Tensor]:
    """The release's checkpoint (``{'state_dict': {'module.backbone.N...'}, 'optimizer': ..., ...}``) in our layout.

    The wrapper, the DataParallel ``module.`` prefix and everything that is not a tensor (optimizer, epoch) go;
    ``backbone.N`` becomes conv1/bn1/layer1-4; ``adjust_dim`` and ``bn256`` keep their names. Keys nobody knows are
    passed through so that strict loading names them.
    """
    from vos.weights import unwrap_state_dict

    converted = {}
    for key, value in unwrap_state_dict(checkpoint).items():
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        converted[key] = value
    return converted


# --------------------------------------------------------------------------------------------------------------
# Propagation


def reference_frames(t: int, window: int = RELEASE_WINDOW) -> list[int]:
    """The frames target ``t`` (0-based) reads, in the release's order: t=10 -> [0, 1, 2, 3, 4, 6, 7, 8, 9]."""
    if t <= ALL_PREVIOUS_UNTIL:
        return list(range(t))
    sparse = np.linspace(max(t - window, 0), t - 4, NUM_SPARSE).astype(int)  # int() truncates, as the release
    return [int(k) for k in sparse] + [t - back for back in RECENT]


def reference_sigmas(t: int, count: int, sigma_far: float, sigma_near: float) -> list[float]:
    """The spatial prior's width for each of ``count`` references of target ``t`` (the simple motion prior)."""
    if t > FAR_SIGMA_AFTER:
        return [sigma_far] * NUM_FAR + [sigma_near] * (count - NUM_FAR)
    return [sigma_near] * count


def still_referenced(done: int, num_frames: int, window: int = RELEASE_WINDOW) -> set[int]:
    """Frames <= ``done`` that some later target of a ``num_frames`` clip reads: the only ones worth keeping."""
    # A target u > 9 reads only frames >= u - window, so targets beyond done + window + 1 read no frame <= done.
    last = min(num_frames, max(done + window + 2, ALL_PREVIOUS_UNTIL + 1))
    needed: set[int] = set()
    for u in range(done + 1, last):
        needed.update(k for k in reference_frames(u, window) if k <= done)
    return needed


def propagate(
    target: Tensor,
    references: Tensor,
    labels: Tensor,
    sigmas: Sequence[float],
    grid: tuple[int, int],
    *,
    temperature: float = 1.0,
    chunk_size: int = ROW_BLOCK,
) -> Tensor:
    """Label scores of the target frame's cells from its references.

    target: (HW, C) features of the target cells, row-major over ``grid`` = (h, w).
    references: (C, N*HW) features of the N reference frames, one after the other.
    labels: (N*HW, D) their labels (soft for frame 0, one-hot after).
    sigmas: N spatial prior widths, in cells, one per reference frame.
    Returns (HW, D) float32 scores: softmax over all N*HW reference cells of temperature * <f_ref, f_target>, times
    exp(-|loc_ref - loc_target|^2 / sigma^2), summed against the labels.

    ``chunk_size`` target cells at a time; products run on blocks of exactly ``ROW_BLOCK`` target cells and every
    other operation is per row, so the scores do not depend on ``chunk_size`` at all. Each chunk's row of
    affinities to all N frames is formed, normalised by torch's softmax in place (no new buffer: freshly mapped
    memory cost more than the softmax) and summed against the labels in one product.
    Features may be bf16/fp16 (the products run in that precision); everything after the product is fp32.
    """
    h, w = grid
    cells = h * w
    count = len(sigmas)
    if target.shape[0] != cells or references.shape[1] != count * cells or labels.shape[0] != count * cells:
        raise ValueError(
            f"propagate: {target.shape[0]} target cells, {references.shape[1]} reference cells and "
            f"{labels.shape[0]} labels do not fit {count} frames of {h}x{w}."
        )
    device = target.device
    rows = -(-cells // ROW_BLOCK) * ROW_BLOCK
    padded = target.new_zeros(rows, target.shape[1])  # zero rows: harmless, their scores are dropped
    padded[:cells] = target
    chunk = rows if chunk_size <= 0 else min(rows, -(-chunk_size // ROW_BLOCK) * ROW_BLOCK)

    index = torch.arange(rows, device=device)
    target_row, target_col = (index // w).float(), (index % w).float()
    ref_row, ref_col = target_row[:cells], target_col[:cells]  # the same grid: frames share one size

    scores = torch.empty(rows, labels.shape[1], dtype=torch.float32, device=device)
    product = torch.empty(chunk, count * cells, dtype=padded.dtype, device=device)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        distance = (target_row[start:stop, None] - ref_row).square_() + (
            target_col[start:stop, None] - ref_col
        ).square_()
        prior = {sigma: torch.exp(-distance / sigma**2) for sigma in set(sigmas)}  # one per width, not per frame
        del distance
        affinity = rowblock_mm(padded[start:stop], references, block=ROW_BLOCK, out=product[: stop - start])
        affinity = affinity.float() if affinity.dtype != torch.float32 else affinity
        if temperature != 1.0:  # x * 1.0 == x: skipping the pass changes nothing
            affinity.mul_(temperature)
        torch.ops.aten._softmax.out(affinity, 1, False, out=affinity)  # torch.softmax's own kernel, in place
        per_frame = affinity.view(stop - start, count, cells)
        for frame, sigma in enumerate(sigmas):
            per_frame[:, frame].mul_(prior[sigma])  # after the softmax, not renormalised
        rowblock_mm(affinity, labels, block=ROW_BLOCK, out=scores[start:stop])
    return scores[:cells]


class History:
    """Embeddings (C, HW) and labels (HW, D) of past frames, by frame index; ``trim`` drops what cannot be read."""

    def __init__(self) -> None:
        self.features: dict[int, Tensor] = {}
        self.labels: dict[int, Tensor] = {}

    def add(self, index: int, features: Tensor, labels: Tensor) -> None:
        self.features[index] = features
        self.labels[index] = labels

    def read(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(C, N*HW) features and (N*HW, D) labels of ``indices``, in that order."""
        return (
            torch.cat([self.features[i] for i in indices], dim=1),
            torch.cat([self.labels[i] for i in indices], dim=0),
        )

    def trim(self, keep: set[int]) -> None:
        for index in [i for i in self.features if i not in keep]:
            del self.features[index], self.labels[index]

    def __len__(self) -> int:
        return len(self.features)


# --------------------------------------------------------------------------------------------------------------
# The method


@register
class TransductiveVOS(Method):
    info = INFO

    @classmethod
    def build_part(cls, part: str, variant: str, options: dict[str, Any]) -> nn.Module:
        return TransductiveEmbedding()

    def _build(self) -> None:
        window = self.options["window"]
        if window < ALL_PREVIOUS_UNTIL:
            raise OptionError(
                f"tvos: window must be at least {ALL_PREVIOUS_UNTIL} (six distinct sparse references), got {window}."
            )
        for name in ("sigma_far", "sigma_near"):
            if not self.options[name] > 0:
                raise OptionError(f"tvos: {name} must be positive, got {self.options[name]}.")
        if self.options["chunk_size"] < 0:
            raise OptionError(
                f"tvos: chunk_size must be 0 (whole frame) or positive, got {self.options['chunk_size']}."
            )
        self.net = self.nets["embedding"]

    def embed(self, frame: np.ndarray) -> Tensor:
        """The embedding of one uint8 RGB frame: (256, ceil(H/8), ceil(W/8)), at the frame's own resolution.

        The propagation reads features only through this method (tests put a colour feature in its place).
        """
        image = torch.from_numpy(frame).to(self.device).permute(2, 0, 1).float().div_(255)
        return self.net(normalise(image, IMAGENET_MEAN, IMAGENET_STD).unsqueeze(0))[0]

    @torch.inference_mode()
    def _segment(self, clip: Clip, first_mask: np.ndarray) -> Iterator[np.ndarray]:
        opts = self.options
        ids = np.unique(first_mask)
        ids = ids[ids > 0]
        to_channel = np.zeros(256, np.int64)
        to_channel[ids] = np.arange(1, len(ids) + 1)
        to_id = np.concatenate([[0], ids]).astype(np.uint8)
        num_channels = len(ids) + 1

        work_h, work_w = clip.work_size
        work_mask = first_mask
        if first_mask.shape != (work_h, work_w):
            work_mask = cv2.resize(first_mask, (work_w, work_h), interpolation=cv2.INTER_NEAREST)
        channels = torch.from_numpy(to_channel[work_mask]).to(self.device)

        # Features are kept in the compute dtype (fp32 unless a reduced precision was asked for); softmax, spatial
        # prior, labels and scores stay fp32.
        compute = self.dtype
        history = History()
        total = clip.num_frames
        for t, frame in enumerate(clip.frames()):
            with vdevice.autocast(self.device, self.dtype):
                features = self.embed(frame)
            dim, h, w = features.shape
            flat = features.reshape(dim, h * w).to(compute).contiguous()
            if t == 0:
                one_hot = F.one_hot(channels, num_channels).permute(2, 0, 1).unsqueeze(0).float()
                soft = F.interpolate(one_hot, size=(h, w), mode="bilinear", align_corners=False)
                history.add(0, flat, soft[0].reshape(num_channels, h * w).t().contiguous())
                output = np.array(first_mask, dtype=np.uint8, copy=True)
            else:
                refs = reference_frames(t, opts["window"])
                references, labels = history.read(refs)
                scores = propagate(
                    flat.t(),
                    references,
                    labels,
                    reference_sigmas(t, len(refs), opts["sigma_far"], opts["sigma_near"]),
                    (h, w),
                    temperature=opts["temperature"],
                    chunk_size=opts["chunk_size"],
                )
                del references, labels
                history.add(t, flat, F.one_hot(scores.argmax(dim=1), num_channels).float())  # hard history
                maps = scores.t().reshape(1, num_channels, h, w)
                upsampled = F.interpolate(maps, size=clip.size, mode="bilinear", align_corners=False)
                output = to_id[channel_argmax(upsampled[0]).cpu().numpy()]
            history.trim(still_referenced(t, total, opts["window"]))
            yield output


def feature_grid(size: tuple[int, int]) -> tuple[int, int]:
    """The embedding's grid for a frame of ``size``: (ceil(H/8), ceil(W/8)); 60x107 at 480x854."""
    return math.ceil(size[0] / STRIDE), math.ceil(size[1] / STRIDE)
