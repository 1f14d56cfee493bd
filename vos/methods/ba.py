"""BA, "Betrayed by Attention": unsupervised multi-object VOS by clustering spatio-temporal attention (Ding, Qian,
Xu, Lin, Xiong; ECCV 2024).

Paper: "Betrayed by Attention: A Simple yet Effective Approach for Self-supervised Video Object Segmentation",
arXiv 2311.17893. Release: github.com/shvdiwnkozbw/SSL-UVOS @d220ef3 (reference behaviour: shared/specs/ba.md).
No prompt: the method discovers segments that are consistent over the clip; the runner matches them to the prompted
objects on frame 0 and shows the others as extra segments.

Pipeline (offline: every frame is read before frame 0's label map exists):
1. Each frame, RGB / 255 in float64, resized with cv2 INTER_LINEAR to the working size (the release's 320x480,
   option ``size``; multiples of 8), cast to float32 and normalised with the Kinetics statistics, goes through DINO
   ViT-S/8 (timm's layout, DINO's position-embedding interpolation). The feature is the LAST block's key projection
   (bias included, heads concatenated), patch tokens only: (T, 384, H/8, W/8).
2. The trained correlator (``temporal_transformer.0``) contributes only ``norm1`` and ``attn.qkv`` (8 heads of 48,
   no bias). Key frames are 0, r, 2r, ... (floor(T / r) of them, at least one; option ``r``). For each window of 3
   query frames, A = mean over heads of softmax(q k^T * 48^-0.5) jointly over all key-frame tokens, each row then
   divided by its sum (as the release does before clustering).
3. Distances are symmetric KL divergences, d(p, q) = KL(p||q) + KL(q||p) in natural log, computed as the release
   does: h_p + h_q - p.log(q) - q.log(p) with h = sum p log p. The release takes log() of the probabilities as they
   are; here they are clamped at ``LOG_FLOOR`` (float32's smallest normal number, 1.2e-38) first, so an
   underflowed zero gives a large finite distance instead of NaN. Only values below 1.2e-38 change: those the
   release would turn into -inf, or into the log of a subnormal.
4. Clustering (option ``tau``, compared with ``<=``), per window: D = d(A, A); every row becomes the sum of the
   rows within tau of it, divided by that sum's own total; D' = d of the smoothed rows; a greedy leader pass in token
   order (frame-major, raster): each token not yet taken takes every untaken token within tau of it, and their
   unweighted mean is a centroid. Then, over the centroids of all windows, the same distance and leader pass
   (without smoothing) repeat until the number of centroids stops changing. Finally each token of each frame gets
   the centroid at the smallest d(centroid, token) (argmin over the unsmoothed rows, first on a tie).
5. Every non-empty cluster is a segment, numbered 1..K in centroid order (the background's too: no cluster is
   called background, none is merged or dropped however small). The H/8 x W/8 label map is upsampled to the frame
   with torch's ``nearest`` (source index floor(i * in / out)): the convention of ``F.interpolate`` that the
   release's evaluation applies to each cluster's mask. More than 255 non-empty clusters do not fit a label map:
   that raises ``TooManySegments`` (raise ``tau``).

What differs from the release, on purpose:
- Every frame is segmented. The release's loader drops the last frame and its evaluation copies the second-to-last
  prediction in its place; here the last frame is a query like any other, and the windows of 3 and the key frames
  (floor(T / r)) are counted over all T frames. Where the release's T - 1 frames give other windows or another
  number of key frames, its clusters, and so every frame's segments, can differ from ours.
- Memory: the release holds the (T*HW, heads, T'*HW) logits of all frames at once (8 heads: 5.5 GB for 104 frames
  at 320x480) and runs every frame's features through the correlator in one pass. Here the attention rows are built
  one window of 3 frames at a time, ``ATTENTION_CHUNK`` query tokens and one head at a time, summed over the heads
  in head order (as the release's mean over its head axis adds them). A window's clustering holds its rows A, one
  (3HW)^2 matrix (the product A log(A)^T, overwritten by the distances; the logs are taken ``ROW_CHUNK`` rows at a
  time), then the smoothed rows and their logs; the assignment recomputes each window's rows instead of keeping
  all of them. DINO runs ``FEATURE_BATCH`` frames at a time.
- Speed: d(A, A) is symmetric, so one product A log(A)^T gives both cross terms (the release computes two), and
  the leader pass over the smoothed rows computes only the rows of its leaders (``LEADER_BLOCK`` candidates at a
  time) instead of the whole (3HW)^2 matrix. Per window that is two large products instead of the release's five.
  The results equal the release's up to float rounding in the order of sums (~1e-7 relative).
- Reduced precision (``--dtype bf16``, or fp16 on CUDA; fp32 is the default and the reference): DINO and the
  correlator's q/k and the attention products q k^T run in it; the softmax, the rows' sums and the whole clustering
  stay float32. The clustering's distances are differences of near-equal cross entropies compared with ``tau``,
  which a bf16 product (8 bits of mantissa) would move across the threshold. On real footage
  (``python -m vos bench agreement --methods ba --frames 10 --size 144``, Carphone 144x176, one thread on a shared
  2-core AMD EPYC with AVX512-BF16): bf16 1.8 s against fp32's 3.0 s (1.7x), mean IoU 1.0, which says little: with
  random weights (no checkpoint here) the clustering finds one segment in both. The trained weights' agreement is
  not measured.
- Guards that change nothing at the release's settings: a token always belongs to its own neighbourhood and to
  its own cluster (the release relies on d(i, i) = 0 <= tau, which rounding could break for tau near 0, giving an
  empty mean, NaN); with T < r the first frame is the one key frame (the release would have none and fail).

Measured (random weights, fp32, the development machine's 2-core Xeon CPU, torch 2.14; the machine was shared with
other work the whole time, load average 15-20 on 2 cores, so wall times are inflated; CPU times are the process's
own):
- 21 frames at 320x480, r = 10 (the spec's comparison point; the release: 6 min 40 s and 5.6 GB): peak resident
  1.65 GB (VmHWM; 0.90 GB of it is the process before segmenting: Python, torch, the network), CPU time
  225 s (user 201 s + system 23 s), wall 24 min 48 s at ~16% of the CPU. Under half the release's memory; the
  CPU time alone is below the release's wall time, so on an unshared machine (two threads) it is faster.
  Measured again at the end of that session with the machine (nearly) to itself: 102.7 s wall for the 21 frames,
  peak 1.55 GB (against the release's 400 s and 5.6 GB).
- One window of a 100-frame clip at 320x480 (N = 3 x 2400 query tokens over M = 10 x 2400 key tokens): 2.1 GB above
  the process's baseline at its peak (attention 12 s CPU, clustering 81 s CPU). A 100-frame 480p clip at the
  default working size therefore peaks near 0.9 + 0.4 (keys of all frames) + 2.1 + centroids = ~3.5 GB; at a
  working size of 480x856 (``size``) the window terms grow to ~10 GB (A and its smoothed copy, 4.95 GB each),
  ~13 GB in all: within 24 GB either way. Time grows with T * T' (34 windows of 7200 x 24000 rows at 320x480:
  about an hour of CPU time on this machine).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from vos import device as vdevice
from vos.backbones.normalization import KINETICS_MEAN, KINETICS_STD, normalise
from vos.backbones.vit import DinoViT, block_qkv, build_vit
from vos.errors import VosError
from vos.methods.base import (
    OFFLINE,
    UNSUP,
    Method,
    MethodInfo,
    Option,
    OptionError,
    Paper,
    Reported,
    Resolution,
    register,
)
from vos.video import Clip

log = logging.getLogger(__name__)

PATCH = 8
EMBED_DIM = 384
DINO_DEPTH = 12
DINO_HEADS = 6
CORRELATOR_HEADS = 8
CORRELATOR_NORM_EPS = 1e-5  # torch's LayerNorm default, as the release's correlator block uses

RELEASE_SIZE = (320, 480)
RELEASE_KEY_INTERVAL = 10
RELEASE_TAU = 1.0
WINDOW_FRAMES = 3  # query frames per first-level clustering window

FEATURE_BATCH = 4  # frames per DINO pass
ATTENTION_CHUNK = 2048  # query tokens whose logits (chunk x T'HW) are held at once
ROW_CHUNK = 2048  # rows of a distance matrix finished (or smoothed) at once
LEADER_BLOCK = 64  # distance rows computed at once for the next untaken tokens of a leader pass
LOG_FLOOR = torch.finfo(torch.float32).tiny  # probabilities are clamped here before log()
MAX_SEGMENTS = 255  # a uint8 label map's ids

VARIANTS = {"dino_s8": "DINO ViT-S/8 encoder with the correlator trained on YouTube-VIS 2019 (the released model)"}

INFO = MethodInfo(
    key="ba",
    title="Betrayed by Attention (BA)",
    task=UNSUP,
    summary=(
        "Unsupervised: DINO ViT-S/8 keys through one trained spatio-temporal attention layer give, for every patch "
        "of every frame, an attention map over sparse key frames; greedy hierarchical clustering of these maps by "
        "symmetric KL divergence yields segments that stay consistent over the whole clip. No prompt, no optical "
        "flow; offline (the whole clip is clustered before the first mask)."
    ),
    variants=tuple(VARIANTS),
    default_variant="dino_s8",
    paper=Paper(
        title="Betrayed by Attention: A Simple yet Effective Approach for Self-supervised Video Object Segmentation",
        authors="Shuangrui Ding, Rui Qian, Haohang Xu, Dahua Lin, Hongkai Xiong",
        venue="ECCV",
        year=2024,
        url="https://arxiv.org/abs/2311.17893",
        bibtex=(
            "@article{ding2023betrayed,\n"
            "  title={Betrayed by Attention: A Simple yet Effective Approach for Self-supervised Video Object "
            "Segmentation},\n"
            "  author={Ding, Shuangrui and Qian, Rui and Xu, Haohang and Lin, Dahua and Xiong, Hongkai},\n"
            "  journal={arXiv preprint arXiv:2311.17893},\n"
            "  year={2023}\n}"
        ),
    ),
    repo="https://github.com/shvdiwnkozbw/SSL-UVOS",
    licence="not stated (the repository has no licence file)",
    reported=(
        Reported(
            "DAVIS-2017 val (unsupervised)",
            {"J&F": 43.9, "J": 39.2, "F": 48.6, "FG-ARI": 40.1},
            "dino_s8",
            note=(
                "the authors' modified scorer (proposals matched per frame, up to 300), more lenient than the "
                "official protocol that `python -m vos eval --task unsup` applies; every frame a key frame (Table 9)"
            ),
        ),
        Reported(
            "DAVIS-2017 val (unsupervised)",
            {"J&F": 42.8, "FG-ARI": 40.0},
            "dino_s8",
            note="one key frame in ten, the release's r = 10 (Table 9); the authors' modified scorer",
        ),
        Reported("YouTube-VIS 2019", {"FG-ARI": 44.3, "mIoU": 50.1}, "dino_s8"),
        Reported(
            "DAVIS-2016 val",
            {"J": 75.4},
            "dino_s8",
            note="single object: all foreground merged, clustering threshold tau = 1.6",
        ),
    ),
    options=(
        Option(
            "size",
            tuple,
            None,
            "Working resolution HEIGHTxWIDTH, both multiples of 8 (default: the release's 320x480).",
            minimum=PATCH,
        ),
        Option(
            "r",
            int,
            RELEASE_KEY_INTERVAL,
            "Key-frame interval: frames 0, r, 2r, ... are the keys every patch attends to (floor(T/r) of them, at "
            "least one). 1 = every frame (the paper's main figures).",
            paper=1,
            minimum=1,
        ),
        Option(
            "tau",
            float,
            RELEASE_TAU,
            "Clustering threshold on the symmetric KL distance: lower = more, smaller segments (the paper uses 1.6 "
            "to merge all foreground objects into one).",
            minimum=0,
        ),
    ),
    weights={"dino_s8": {"model": "ba.dino_s8"}},
    processing=OFFLINE,
    resolution=Resolution.fixed(RELEASE_SIZE, multiple=PATCH, option="size"),
)


class TooManySegments(VosError, ValueError):
    """The clustering found more segments than a label map holds."""


# --------------------------------------------------------------------------------------------------------------
# The network


class BetrayedByAttentionNet(nn.Module):
    """DINO ViT-S/8 (``encoder``, timm's layout = DINO's names) and the spatio-temporal correlator block
    (``temporal_transformer.0``: pre-norm, 8 heads, qkv without bias, GELU MLP 1536), in the release's layout:
    161 tensors, 150 ``encoder.*`` and 11 ``temporal_transformer.0.*``. Inference uses the encoder up to the last
    block's key projection and the correlator's ``norm1`` and ``attn.qkv``; its ``attn.proj``, ``norm2`` and
    ``mlp`` are kept so the release's file loads strictly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = build_vit(patch_size=PATCH, embed_dim=EMBED_DIM, depth=DINO_DEPTH, num_heads=DINO_HEADS)
        correlator_norm = functools.partial(nn.LayerNorm, eps=CORRELATOR_NORM_EPS)
        self.temporal_transformer = nn.ModuleList(
            [Block(EMBED_DIM, CORRELATOR_HEADS, mlp_ratio=4.0, qkv_bias=False, norm_layer=correlator_norm)]
        )

    def frame_keys(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised frames -> (B, H/8 * W/8, 384) last-block keys, raster order."""
        keys = DinoViT(self.encoder).last_keys(images)  # a view of the same timm model: no parameters of its own
        return keys.flatten(2).transpose(1, 2)

    def queries_and_keys(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(F, N, 384) frame tokens -> correlator q and k, each (heads, F*N, 48), frame-major."""
        q, k, _ = block_qkv(self.temporal_transformer[0], tokens)
        heads, head_dim = q.shape[1], q.shape[3]
        return (
            q.permute(1, 0, 2, 3).reshape(heads, -1, head_dim),
            k.permute(1, 0, 2, 3).reshape(heads, -1, head_dim),
        )

    @property
    def attention_scale(self) -> float:
        return float(self.temporal_transformer[0].attn.scale)


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints


def convert_official(checkpoint: Any) -> dict[str, Tensor]:
    """The release's ``checkpoint_dino-s-8.pth`` (``{'model_state_dict': {...}, 'iteration', 'loss', ...}``) in our
    layout: the wrapper and everything that is not a tensor go; the 161 names are ours already. Unknown keys pass
    through so that strict loading names them."""
    from vos.weights import unwrap_state_dict

    return dict(unwrap_state_dict(checkpoint))


# --------------------------------------------------------------------------------------------------------------
# Frames and key frames


def key_frames(num_frames: int, interval: int) -> list[int]:
    """Frames 0, r, 2r, ...: floor(T / r) of them as in the release, but at least frame 0 (T < r)."""
    if interval < 1:
        raise ValueError(f"the key-frame interval must be at least 1, got {interval}")
    return [i * interval for i in range(max(num_frames // interval, 1))]


def query_windows(num_frames: int) -> list[range]:
    """Consecutive windows of ``WINDOW_FRAMES`` query frames; the last may be shorter."""
    return [range(start, min(start + WINDOW_FRAMES, num_frames)) for start in range(0, num_frames, WINDOW_FRAMES)]


def prepare_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (h, w, 3) -> float32 (3, H, W) in [0, 1] at ``size``: divided by 255 in float64 first, then
    resized with cv2 INTER_LINEAR, then cast, as the release's loader does (resizing the uint8 frame would round)."""
    height, width = size
    image = cv2.resize(frame / 255.0, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------
# Attention rows


def attention_rows(
    q: Tensor, k: Tensor, scale: float, *, chunk: int = ATTENTION_CHUNK, check: Callable[[], None] | None = None
) -> Tensor:
    """Rows of the spatio-temporal attention: (N, M) float32, each row a distribution over the M key tokens.

    q: (heads, N, d) query tokens; k: (heads, M, d) key-frame tokens. Per head, softmax over all M of
    (q k^T) * scale; the heads' maps summed in head order, divided by the number of heads, then each row divided by
    its sum. ``chunk`` query rows at a time: softmax is per row, so chunking changes no value. q and k may be in a
    reduced precision (the product then is too); the scaling, softmax and sums are float32.
    """
    heads, count, _ = q.shape
    rows = torch.zeros(count, k.shape[1], dtype=torch.float32, device=q.device)
    for start in range(0, count, chunk):
        if check is not None:
            check()
        stop = min(start + chunk, count)
        for head in range(heads):
            logits = torch.mm(q[head, start:stop], k[head].t()).float().mul_(scale)
            rows[start:stop] += torch.softmax(logits, dim=-1)
            del logits
    rows.div_(heads)
    return rows.div_(rows.sum(dim=-1, keepdim=True))


# --------------------------------------------------------------------------------------------------------------
# Distances and clustering


def log_probabilities(p: Tensor) -> Tensor:
    """log(p) with p clamped at ``LOG_FLOOR``, so an underflowed 0 gives a finite log."""
    return torch.log(p.clamp(min=LOG_FLOOR))


def symmetric_kl(p: Tensor, q: Tensor) -> Tensor:
    """(n, m) symmetric KL divergences between the rows of p (n, L) and q (m, L), the release's way:
    cross entropies both ways minus the two self terms, h_p + h_q - p.log(q) - q.log(p). The logs of q are taken
    ``ROW_CHUNK`` rows at a time (q is a window's attention rows: only p's logs are held whole)."""
    log_p = log_probabilities(p)
    entropy_p = torch.einsum("nc,nc->n", p, log_p)
    distance = torch.empty(len(p), len(q), dtype=p.dtype, device=p.device)
    for start in range(0, len(q), ROW_CHUNK):
        stop = min(start + ROW_CHUNK, len(q))
        part, log_part = q[start:stop], log_probabilities(q[start:stop])
        self_entropy = -entropy_p.unsqueeze(-1) - torch.einsum("mc,mc->m", part, log_part).unsqueeze(0)
        cross = -torch.mm(p, log_part.t()) - torch.mm(log_p, part.t())
        distance[:, start:stop] = cross.sub_(self_entropy)
    return distance


def pairwise_symmetric_kl(p: Tensor) -> Tensor:
    """(n, n) symmetric KL divergences between the rows of p (n, L): ``symmetric_kl(p, p)`` from one product
    X = p log(p)^T, whose transpose is the other cross term. The logs are taken ``ROW_CHUNK`` rows at a time (one
    block of columns of X each) and the distances are written over X, so the whole costs one (n, n) matrix beside
    p."""
    count = len(p)
    entropy = torch.empty(count, dtype=p.dtype, device=p.device)
    cross = torch.empty(count, count, dtype=p.dtype, device=p.device)  # X, then the distances in its place
    blocks = [(start, min(start + ROW_CHUNK, count)) for start in range(0, count, ROW_CHUNK)]
    for start, stop in blocks:
        log_part = log_probabilities(p[start:stop])
        entropy[start:stop] = torch.einsum("nc,nc->n", p[start:stop], log_part)
        torch.mm(p, log_part.t(), out=cross[:, start:stop])
    for i, (row_start, row_stop) in enumerate(blocks):
        for col_start, col_stop in blocks[i:]:
            upper = cross[row_start:row_stop, col_start:col_stop]
            lower = cross[col_start:col_stop, row_start:row_stop]
            both = torch.neg(upper).sub_(lower.t())  # -X - X^T on this block pair
            both.sub_(-entropy[row_start:row_stop, None] - entropy[None, col_start:col_stop])
            upper.copy_(both)
            lower.copy_(both.t())
    return cross


def smooth_rows(rows: Tensor, near: Tensor) -> Tensor:
    """Each row replaced by the sum of the rows ``near`` it (a boolean (N, N) matrix; itself always included),
    divided by that sum's own total: the release's neighbour smoothing (a mean, up to rounding)."""
    smoothed = torch.empty_like(rows)
    diagonal = torch.arange(len(rows), device=rows.device)
    for start in range(0, len(rows), ROW_CHUNK):
        stop = min(start + ROW_CHUNK, len(rows))
        block_near = near[start:stop].clone()
        block_near[diagonal[start:stop] - start, diagonal[start:stop]] = True
        block = torch.mm(block_near.to(rows.dtype), rows)
        smoothed[start:stop] = block.div_(block.sum(dim=1, keepdim=True))
    return smoothed


def symmetric_kl_rows(p: Tensor) -> Callable[[Tensor], Tensor]:
    """Rows of ``pairwise_symmetric_kl(p)`` on demand: ``rows(index)`` -> (len(index), n), both cross terms by their
    own products as in the release. For a leader pass, which reads only its leaders' rows."""
    log_p = log_probabilities(p)
    entropy = torch.einsum("nc,nc->n", p, log_p)

    def rows(index: Tensor) -> Tensor:
        cross = -torch.mm(p[index], log_p.t()) - torch.mm(log_p[index], p.t())
        return cross.sub_(-entropy[index, None] - entropy[None, :])

    return rows


def leader_clusters(
    rows: Tensor, tau: float, distance_rows: Callable[[Tensor], Tensor], check: Callable[[], None] | None = None
) -> Tensor:
    """Greedy leader clustering in row order: each row not yet taken takes every untaken row within ``tau`` of it
    (itself included); the unweighted mean of those rows is a centroid. ``distance_rows(index)`` gives the distance
    matrix's rows for ``index``; they are asked for ``LEADER_BLOCK`` untaken rows at a time (rows taken by an
    earlier leader of the block are computed for nothing). Returns (clusters, L) in leader order."""
    count = len(rows)
    untaken = torch.ones(count, dtype=torch.bool, device=rows.device)
    untaken_here = np.ones(count, dtype=bool)  # the same, on the host: the loop's tests cost no device sync
    centroids = []
    while untaken_here.any():
        candidates = np.flatnonzero(untaken_here)[:LEADER_BLOCK]
        block = distance_rows(torch.from_numpy(candidates).to(rows.device))
        for leader, distance in zip(candidates.tolist(), block):
            if not untaken_here[leader]:
                continue
            if check is not None:
                check()
            members = (distance <= tau) & untaken
            members[leader] = True
            centroids.append(rows[members].mean(dim=0))
            untaken &= ~members
            untaken_here &= ~members.cpu().numpy()
    return torch.stack(centroids)


def cluster_window(rows: Tensor, tau: float, check: Callable[[], None] | None = None) -> Tensor:
    """The first hierarchy on one window's attention rows (N, L): smoothing, then the leader pass on the smoothed
    rows. Returns the window's centroids (K, L). The caller should hold no other reference to ``rows``: they are
    let go once smoothed."""
    near = pairwise_symmetric_kl(rows) <= tau  # (N, N) booleans: a quarter of the distances' memory
    smoothed = smooth_rows(rows, near)
    del rows, near
    return leader_clusters(smoothed, tau, symmetric_kl_rows(smoothed), check)


def merge_centroids(centroids: Tensor, tau: float, check: Callable[[], None] | None = None) -> Tensor:
    """The later hierarchies: leader passes over all centroids until a pass leaves their number unchanged."""
    while True:
        distance = pairwise_symmetric_kl(centroids)
        merged = leader_clusters(centroids, tau, distance.__getitem__, check)
        if len(merged) == len(centroids):
            return merged
        centroids = merged


def assign(centroids: Tensor, rows: Tensor) -> Tensor:
    """(N,) index of the centroid nearest to each row (the first on a tie)."""
    return symmetric_kl(centroids, rows).argmin(dim=0)


def segment_ids(labels: np.ndarray) -> np.ndarray:
    """Cluster indices (any shape) -> uint8 segment ids 1..K, the non-empty clusters in cluster order."""
    used = np.unique(labels)
    if len(used) > MAX_SEGMENTS:
        raise TooManySegments(
            f"ba: the clustering found {len(used)} segments, more than the {MAX_SEGMENTS} a label map holds. "
            "Raise the clustering threshold (e.g. --opt ba.tau=1.5) or lower the working size (--opt ba.size=...)."
        )
    lookup = np.zeros(int(used.max()) + 1, np.uint8)
    lookup[used] = np.arange(1, len(used) + 1, dtype=np.uint8)
    return lookup[labels]


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 ids -> (H, W) with torch's ``nearest`` (source index floor(i * in / out))."""
    grid = torch.from_numpy(labels).float()[None, None]
    return F.interpolate(grid, size=size, mode="nearest")[0, 0].to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------------------------------
# The method


@register
class BetrayedByAttention(Method):
    info = INFO

    @classmethod
    def build_part(cls, part: str, variant: str, options: dict[str, Any]) -> nn.Module:
        return BetrayedByAttentionNet()

    def _build(self) -> None:
        size = self.options["size"]
        if size is not None and (len(size) != 2 or any(side % PATCH for side in size)):
            raise OptionError(
                f"ba: size must be HEIGHTxWIDTH with both sides multiples of {PATCH} (e.g. 320x480), got "
                f"{'x'.join(str(s) for s in size)}."
            )
        self.net = self.nets["model"]

    def frame_features(self, frames: Sequence[np.ndarray], size: tuple[int, int]) -> Tensor:
        """(F, HW, 384) DINO keys of a few uint8 frames at the working ``size`` (float32)."""
        batch = torch.from_numpy(np.stack([prepare_frame(frame, size) for frame in frames])).to(self.device)
        with vdevice.autocast(self.device, self.dtype):
            keys = self.net.frame_keys(normalise(batch, KINETICS_MEAN, KINETICS_STD))
        return keys.float()

    def _features(self, clip: Clip, size: tuple[int, int]) -> Tensor:
        total = clip.num_frames
        features, pending = [], []
        for frame in clip.frames():
            pending.append(frame)
            if len(pending) == FEATURE_BATCH:
                features.append(self.frame_features(pending, size))
                pending = []
                self.report("features", sum(len(f) for f in features), total)
        if pending:
            features.append(self.frame_features(pending, size))
            self.report("features", total, total)
        return torch.cat(features)

    def _queries_and_keys(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The correlator's q and k, in the method's precision: the affinities are the network's matrix products;
        everything after them (softmax, clustering) is float32."""
        with vdevice.autocast(self.device, self.dtype):
            return self.net.queries_and_keys(tokens)

    def _window_rows(self, tokens: Tensor, window: range, keys: Tensor) -> Tensor:
        queries, _ = self._queries_and_keys(tokens[window.start : window.stop])
        return attention_rows(queries, keys, self.net.attention_scale, check=self.check_stop)

    @torch.inference_mode()
    def _segment(self, clip: Clip, first_mask: np.ndarray) -> Iterator[np.ndarray]:
        height, width = self.working_size(clip)
        if height % PATCH or width % PATCH:
            raise OptionError(f"ba: the working size {height}x{width} is not a multiple of {PATCH} on both sides.")
        grid = (height // PATCH, width // PATCH)
        tau = self.options["tau"]

        tokens = self._features(clip, (height, width))  # (T, HW, 384)
        num_frames = len(tokens)
        _, keys = self._queries_and_keys(tokens[key_frames(num_frames, self.options["r"])])
        windows = query_windows(num_frames)

        centroids = []
        for index, window in enumerate(windows):
            rows = [self._window_rows(tokens, window, keys)]  # popped below: cluster_window holds the only reference
            self.report("attention", index + 1, len(windows))
            centroids.append(cluster_window(rows.pop(), tau, self.check_stop))
            self.report("clustering", index + 1, len(windows))
        final = merge_centroids(torch.cat(centroids), tau, self.check_stop)
        del centroids
        log.info("ba: %d clusters over %d frames", len(final), num_frames)

        labels = []
        for index, window in enumerate(windows):
            labels.append(assign(final, self._window_rows(tokens, window, keys)).cpu())
            self.report("assignment", index + 1, len(windows))
        del tokens, keys, final
        ids = segment_ids(torch.cat(labels).view(num_frames, *grid).numpy())
        for frame_ids in ids:
            yield upsample_labels(frame_ids, clip.size)
