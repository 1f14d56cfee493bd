"""Training-free VOS with streaming von Mises-Fisher mixtures (Uziel, Dinari, Freifeld; NeurIPS 2023).

Paper: "From ViT Features to Training-free Video Object Segmentation via Streaming-data Mixture Models".
Release: github.com/BGU-CS-VIL/Training-Free-VOS @3ba3910 (DAVIS-2017 only, CUDA only, pre-extracted features).
Reference behaviour: shared/specs/mixture.md. This follows the RELEASE where it differs from the paper (the release
produced the reported numbers): fit vectors L2norm([f, 2.5 rho]) but scoring vectors L2norm([f, 1.0 rho]); the
history kernel exp(-0.5 |tau - tau'|) on the clock tau = 1 + 0.33 t (0.848 per frame); 20 history slots with five
frame-0 anchors and the position-part relocation; the multiplicative indicator; the approximate log-normaliser
with its +1000 offset; the PAC-CRF trained on frame 0. The paper's w_rho = 15 and 2^(-lambda t) kernel are options
(``paper_w_rho``, ``paper_time_kernel``), off by default.

Features (the release ships none; see the spec's "Features"):
- xcit: DINO's dino_xcit_small_12_p8 on timm's xcit_small_12_p8 (``vos.backbones.xcit``). We use the patch tokens
  of the LAST XCA block after the model's final LayerNorm, not L2-normalised (options ``feature_layer``,
  ``feature_norm``); the frame is resized to 480 x (multiple of 64), DINO mean/std (std 0.228 for red), and the
  60 x W/8 map is upsampled x2 (bilinear, align_corners=True) to the 120 x W/4 mixture grid.
- xcit_dinov2_s / _b: the same, concatenated with DINOv2 ViT-S/14 or B/14 last-block patch tokens (final norm) of
  the same frame resized to multiples of 14, bilinearly resized to the XCiT grid (our choice; the paper does not
  say how it aligned the grids). The init slice starts at n_features + 3 (768 + 3, 1152 + 3).
- rgb: no weights (the app's embedded default): each cell's mean colour through a fixed random Fourier map
  (``RgbFeatures``), norm 35. Its own defaults: processing short side 240 (a 60 x W/4 grid instead of 120) and
  25 CRF training steps instead of 100. Its cost is in "Profile" below.

Release bugs fixed here:
- grid lookups use integer cell indices (the release took floor(u * (H-1)) of normalised floats that had been
  multiplied and divided by 2.5, which can be off by one);
- the history weight uses |tau - tau'| (the release's sqrt(a^2 + b^2 - 2ab) in fp32 cancels and can go NaN);
- an object with exactly two cells no longer crashes the initialisation (randint over an empty range): its first
  centres are drawn from both cells;
- no silent try/except around a clip: failures raise;
- the init slice is n_features + 3 (the release hard-codes 384 + 3, wrong for the DINOv2 fusions);
- an object that is visible in the 480x480-squashed mask but loses every cell when that mask is nearest-resized to
  the grid (the release crashes) gets the one cell that holds most of its pixels;
- the release's dead code is not reproduced (the always-empty "keep" and always-full "change" masks, ``potts_w``,
  the disabled new-cluster branch), and its Python loops over objects and components are batched.

Geometry, generalised (spec's pitfalls): any size and aspect ratio (portrait: width 480); the gate window 19 x 39
is defined on the 120-row grid and scaled with the grid's short side; K still comes from the frame-0 mask squashed
to 480 x 480 (so K matches the release on every input), frame 0's output is that squashed mask resized back, and
the grid mask and CRF target are derived from it, as in the release.

Differences that are not bugs: the scoring pass runs ``chunk_size`` cells at a time with identical results
(row-blocked GEMMs), the indicator is recomputed from the stored gate and means instead of a dense int64 (objects x
S x N x K) map, the position cosines use the unit position code directly (the release normalises the position
slice of each normalised feature vector: equal up to rounding), EM sums over blocks of points, and the greedy
initialisation keeps a running sum of cosines instead of recomputing it (same choice, O(K) instead of O(K^2)).
Random draws come from a generator seeded with ``seed`` in the release's order (CRF construction, mixture
parameters, first centres, CRF training noise); results depend slightly on the seed, as in the release.

Profile (``python -m vos bench profile mixture:VARIANT --size 480 --frames 3``: random weights, Carphone at 480x854,
fp32, the 2-core AMD EPYC development VM with nothing else running, fp32 GEMM rate 195 GFLOP/s; "limit" = counted
FLOPs / that rate). xcit, frame 0 (the release's settings: 480 rows, 100 CRF training steps each):

  region                   s      GFLOP    limit s
  features (XCiT)          2.4     289      1.5
  EM (both frame-0 fits)  21.8    1798      9.2
  scoring                  0.6      64      0.3
  CRF training (2 x 100)  23.3       -       -      (fused numba kernels: torch's FLOP counter does not see them)
  other                    0.3       5       -
  total                   48.5    2156     11.1

then 3.50 s per later frame (features 2.03, EM 0.81, scoring 0.50, CRF 0.06, other 0.10; limit 2.35 s). This VM
varies by its phase: five runs of the same code over two hours gave 3.50-4.57 s per later frame and 43.9-48.5 s for
frame 0. The same command on the code of two sessions before, in its hour: frame 0 in 84.9 s (EM 33.4 s for 3311
GFLOP, CRF training 47.8 s), later frames 4.13 s; the issue's profile of the code before that (on a machine with a
252 GFLOP/s GEMM rate) had frame 0 at 354 s with 87% in the CRF training. What made the difference:

- exact, the label maps identical bit for bit to those of the code before on Carphone (6 frames, 480x586) and the
  bundled example (6 frames), xcit and rgb, seed 123:
  - the products of EM and scoring skip the masked component slots. The schedule K_s grows from 2 (objects) or 56
    (background) to K_max, so about half of the padded (S, K_max) slots are masked; their log-joints are about -1e6,
    their posteriors exactly 0, and max(0, .) makes their scores 0, so the products that fed them changed nothing;
  - torch.exp takes a slow path (~10-35x) for every vector holding an input below -87.3 (a zero or subnormal
    result), and ~98% of the E-step's inputs are there: those below -104 (result exactly 0) are set to 0 first;
  - the argmax over the object channels is one pass per channel (``vos.nn_utils.channel_argmax``): torch's
    argmax over a short leading dimension took ~90 ms of every frame;
  - the PAC-CRF gathers neighbours as shifted views with a hand-written backward (``crf.py``), not unfold/col2im;
- the CRF's kernels and messages on CPU as fused numba kernels (``fused.py``, option ``fused_crf``, on by default
  on CPU): each is one pass over memory instead of dozens of torch passes. The arithmetic is the same, the float
  summation order is not, so the CRF's logits move in their last bits: the masks did not. ``python -m vos bench
  agreement --methods mixture:xcit,mixture:rgb --candidate mixture.fused_crf=false --frames 6 --size 480``
  (Carphone at 480x586, random weights; the candidate is torch's reference path): mean IoU 1.0000 for xcit and rgb,
  the default 1.43x and 1.32x faster over the 6 frames; on the bundled example (6 frames, xcit and rgb) the maps
  were identical as well. Every sum in these kernels runs in an order that does not depend on the thread count.
  numba compiles them once (~10-15 s on the first run after installing, shown as the stage "preparing the CRF's
  kernels"; then cached on disk and loaded in under a second); without numba the reference path runs, with a
  warning. The fused path also lowers the peak: xcit at 480p in the stored sweep 1,767 MiB against 2,550.

What is left at the defaults: EM runs its products at the GEMM rate but makes ~12 passes over every (point,
component) pair besides; the CRF training is memory traffic (hundreds of passes over the 240x427 frame per step) with
few FLOPs, so no GEMM rate bounds it; XCiT's GEMMs run at the machine's rate and its elementwise passes (GELU, the
bias copies of addmm, the cross-covariance attention's norms over a strided dimension) are the other 0.5 s. The rgb
variant at its defaults (240 rows, 25 CRF steps): frame 0 in 5.3 s (EM 3.6 s, CRF training 1.6 s), then 0.22 s per
frame.

One option, off, trades the last bits for speed on frame 0:

- ``fast_em``: frame 0's EM over the active slots only, its passes too (each mixture's softmax on its own rows):
  EM 1.6x faster. But this method amplifies rounding: EM runs to a relative tolerance over dozens of iterations
  with concentrations in the thousands, so last-bit differences move the fitted components (the default's own
  results do not depend on the thread count). ``python -m vos bench agreement --methods mixture:xcit,mixture:rgb
  --candidate mixture.fast_em=true --frames 6 --size 480``: mean IoU xcit 0.9920, rgb 0.9977 against the default
  (the 6-frame runs 1.22x and 1.47x faster), and on the bundled example xcit 0.9919, rgb 0.9990 (against torch's CRF
  path, whose maps are the default's there): below 0.999, hence an option. Later frames do not change (their EM has
  the indicator and runs dense).

Reduced precision: ``dtype=bf16`` runs the feature networks under autocast; the position code, scoring, EM and
CRF stay fp32. It does not pay here: on real footage (``python -m vos bench agreement --methods mixture --frames 10
--size 144``, Carphone 144x176, random weights, the machine to itself) xcit in bf16 agreed with fp32 at mean IoU
0.47 and was slower (13.2 s against 10.7 s). The vMF likelihoods multiply cosines by concentrations in the hundreds,
so bf16's relative error of 0.4% in a feature can become nats in a log-likelihood; with an untrained network's
features that is enough to move labels (trained features, not available here, may fare better). fp32 stays
the default and the only precision we recommend for mixture; rgb has no network, so bf16 changes nothing there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vos import device as vdevice
from vos.backbones import xcit
from vos.methods.base import SEMI, Method, MethodInfo, Option, Paper, Reported, Resolution, register
from vos.methods.mixture import vmf
from vos.methods.mixture.crf import PacCrf
from vos.methods.mixture.features import Geometry, RgbFeatures, XcitFeatures, build_dinov2, resize_frame
from vos.nn_utils import channel_argmax

log = logging.getLogger(__name__)

PAPER_W_RHO = 15.0
RELEASE_KERNEL_RATE = 0.5  # exp(-0.5 |dtau|)
PAPER_KERNEL_RATE = math.log(2.0)  # 2^(-|dtau|) = 2^(-lambda dt)
REFERENCE_GRID_ROWS = 120  # the release's grid height, on which the gate window is defined
IGNORE_BELOW = 1.01  # objects with sz below this are dropped (the release's rule)


@dataclass(frozen=True)
class VariantCfg:
    features: str  # "xcit" or "rgb"
    dinov2: str | None  # "s" | "b" | None
    short: int  # processing short side
    multiple: int  # the long side is a multiple of this
    crf_iters: int  # Adam steps training each CRF on frame 0


VARIANTS = {
    "xcit": VariantCfg("xcit", None, 480, 64, 100),
    "xcit_dinov2_s": VariantCfg("xcit", "s", 480, 64, 100),
    "xcit_dinov2_b": VariantCfg("xcit", "b", 480, 64, 100),
    # CPU-friendly: half the release's resolution and a quarter of its CRF training (measured in the docstring).
    "rgb": VariantCfg("rgb", None, 240, 8, 25),
}

_V100 = "Tesla V100-32GB"
_FPS_NOTE = "feature extraction excluded; the spec reads the rows as the feature-map size"

INFO = MethodInfo(
    key="mixture",
    title="Streaming vMF mixtures (training-free)",
    task=SEMI,
    summary=(
        "Training-free: each object and the background are ensembles of von Mises-Fisher mixtures over DINO XCiT "
        "features plus a position code, updated frame by frame with time-weighted statistics and refined by a "
        "PAC-CRF fitted on the first frame. The rgb variant needs no weights at all."
    ),
    variants=tuple(VARIANTS),
    default_variant="xcit",
    paper=Paper(
        title="From ViT Features to Training-free Video Object Segmentation via Streaming-data Mixture Models",
        authors="Roy Uziel, Or Dinari, Oren Freifeld",
        venue="NeurIPS",
        year=2023,
        url="https://openreview.net/forum?id=jfsjKBDB1z",
        bibtex=(
            "@inproceedings{uziel2023vit,\n"
            "  title={From ViT Features to Training-free Video Object Segmentation via Streaming-data Mixture "
            "Models},\n"
            "  author={Uziel, Roy and Dinari, Or and Freifeld, Oren},\n"
            "  booktitle={Advances in Neural Information Processing Systems},\n"
            "  year={2023}\n}"
        ),
    ),
    repo="https://github.com/BGU-CS-VIL/Training-Free-VOS",
    licence=(
        "The release has no licence file; its vendored PAC-CRF (NVlabs/pacnet) is CC BY-NC-SA 4.0. "
        "DINO XCiT weights: Apache-2.0."
    ),
    reported=(
        Reported("DAVIS-2017 val", {"J&F": 76.3, "J": 73.8, "J_recall": 85.6, "F": 78.7, "F_recall": 89.2}, "xcit"),
        Reported("DAVIS-2017 val", {"J&F": 77.6, "J": 75.4, "F": 79.8}, "xcit_dinov2_s"),
        Reported("DAVIS-2017 val", {"J&F": 78.2, "J": 76.0, "F": 80.4}, "xcit_dinov2_b"),
        Reported("DAVIS-2017 val", {"J&F": 78.4, "J": 76.2, "F": 80.6}, None, note="x2 feature resolution + DINOv2-S"),
        Reported("DAVIS-2017 val", {"J&F": 80.3, "J": 78.0, "F": 82.5}, None, note="x2 feature resolution + DINOv2-B"),
        Reported(
            "YouTube-VOS 2018 val",
            {"G": 71.5, "J_seen": 72.0, "F_seen": 74.2, "J_unseen": 66.2, "F_unseen": 73.7},
            "xcit",
        ),
        Reported("DAVIS-2017 val", {}, "xcit", 8.25, "120x210 feature map", _V100, _FPS_NOTE),
        Reported("DAVIS-2017 val", {}, "xcit_dinov2_s", 6.50, "120x210 feature map", _V100, _FPS_NOTE),
        Reported("DAVIS-2017 val", {}, "xcit_dinov2_b", 5.25, "120x210 feature map", _V100, _FPS_NOTE),
        Reported("DAVIS-2017 val", {}, "xcit", 1.55, "240x420 feature map", _V100, _FPS_NOTE),
        Reported("DAVIS-2017 val", {}, "xcit_dinov2_s", 1.28, "240x420 feature map", _V100, _FPS_NOTE),
        Reported("DAVIS-2017 val", {}, "xcit_dinov2_b", 1.10, "240x420 feature map", _V100, _FPS_NOTE),
    ),
    options=(
        Option(
            "seed",
            int,
            123,
            "Seed of the run's random draws (CRF init and noise, first centres); the release's.",
            minimum=0,
        ),
        Option("num_models", int, 10, "S: mixtures per object (each with its own number of components).", minimum=1),
        Option(
            "time_step",
            float,
            0.33,
            "Clock step lambda per frame: tau = 1 + lambda t (history ages by it).",
            minimum=1e-6,
        ),
        Option(
            "paper_time_kernel",
            bool,
            False,
            "History weight 2^(-lambda dt) as in the paper, instead of the release's exp(-0.5 |tau - tau'|).",
            paper=True,
        ),
        Option("loc", float, 10.0, "Position weight when fitting is 0.25 * loc (2.5, the release).", minimum=0),
        Option("score_pe_weight", float, 1.0, "Position weight in the scoring vectors (the release's 1.0).", minimum=0),
        Option(
            "paper_w_rho",
            bool,
            False,
            f"Use the paper's w_rho = {PAPER_W_RHO:g} for both fitting and scoring (overrides loc/score_pe_weight).",
            paper=True,
        ),
        Option(
            "std",
            float,
            1.0,
            "Outlier margin: cells whose best and second object scores differ by <= this.",
            minimum=1e-6,
        ),
        Option(
            "n_h",
            int,
            19,
            "Gate window height, in cells of a 120-row grid (scaled to the actual grid, odd).",
            minimum=1,
        ),
        Option(
            "n_w", int, 39, "Gate window width, in cells of a 120-row grid (scaled to the actual grid, odd).", minimum=1
        ),
        Option(
            "max_iters",
            int,
            100,
            "EM iterations at most on frame 0 (twice: the initial fit and frame 0 again).",
            minimum=1,
        ),
        Option(
            "rll_tol", float, 1e-5, "Frame-0 EM stops when |dLL|/|LL| falls below this (from iteration 5).", minimum=0
        ),
        Option("em_iters", int, 2, "EM iterations on every later frame.", minimum=1),
        Option(
            "fused_crf",
            bool,
            True,
            "On CPU, the CRF's kernels and messages as fused numba kernels (compiled on first use, then cached): "
            "frame 0's CRF training ~1.8x faster. The same arithmetic in another float summation order, so not the "
            "same bits; the masks were identical on the footage measured (see the docstring). false: torch's "
            "reference path. Without numba the reference path runs, with a warning.",
        ),
        Option(
            "fast_em",
            bool,
            False,
            "Frame 0's EM over active components only, passes included: ~1.6x faster EM, but float sums in another "
            "order, which this method's EM amplifies: masks agree with the default's at mean IoU ~0.99.",
        ),
        Option("crf", bool, True, "Refine with the PAC-CRFs (always on in the release)."),
        Option("crf_steps", int, 5, "Mean-field steps of each PAC-CRF.", minimum=0),
        Option(
            "crf_iters",
            int,
            None,
            "Adam steps training each PAC-CRF on frame 0 (default: the variant's, 100; rgb 25).",
            minimum=0,
        ),
        Option("crf_lr", float, 0.02, "Learning rate of the CRF training (Adam, amsgrad).", minimum=1e-6),
        Option(
            "crf_noise", float, 10.0, "Std of the image noise added at each CRF training step (0-255 scale).", minimum=0
        ),
        Option(
            "feature_layer",
            int,
            -1,
            "XCiT block whose patch tokens are the features (0-11, -1 = last).",
            minimum=-12,
            maximum=11,
        ),
        Option("feature_norm", bool, True, "Apply XCiT's final LayerNorm to those tokens."),
        Option(
            "size",
            int,
            None,
            "Processing short side in pixels (default: the variant's, 480, rgb 240, or less when a lower working "
            "resolution is chosen); a multiple of 8.",
            minimum=8,
        ),
        Option(
            "chunk_size",
            int,
            0,
            "Cells scored at a time (0 = auto: 4 MB dense blocks on CPU, 64 MB on GPU); same results.",
            minimum=0,
        ),
        Option("rgb_dim", int, 64, "rgb variant: dimensions of the random Fourier colour features.", minimum=1),
        Option(
            "rgb_bandwidth",
            float,
            0.1,
            "rgb variant: colour bandwidth of the Fourier features (0-1 scale).",
            minimum=1e-6,
        ),
        Option(
            "rgb_norm",
            float,
            35.0,
            "rgb variant: norm of the colour features (against ||2.5 rho|| = 14).",
            minimum=1e-6,
        ),
    ),
    weights={
        "xcit": {"xcit": "backbone.dino_xcit_small_12_p8"},
        "xcit_dinov2_s": {"xcit": "backbone.dino_xcit_small_12_p8", "dinov2": "backbone.dinov2_vits14"},
        "xcit_dinov2_b": {"xcit": "backbone.dino_xcit_small_12_p8", "dinov2": "backbone.dinov2_vitb14"},
    },
    resolution=Resolution.short_side({name: cfg.short for name, cfg in VARIANTS.items()}, multiple=8, option="size"),
)


# --------------------------------------------------------------------------------------------------------------
# Small helpers


def pil_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 label map resized to (H, W) with PIL's nearest neighbour (the release's resize for masks)."""
    if labels.shape == tuple(size):
        return labels
    return np.array(Image.fromarray(labels.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST))


def window_size(cells: int, grid_short: int, limit: int) -> int:
    """A release window length (cells of a 120-row grid) on this grid: scaled, odd, and short enough for reflect
    padding (half-window < the grid's extent)."""
    scaled = max(1, round(cells * grid_short / REFERENCE_GRID_ROWS)) | 1
    return min(scaled, 2 * limit - 1)


def presence_windows(labels: torch.Tensor, num_objects: int, n_h: int, n_w: int) -> torch.Tensor:
    """W_o(n): label o occurs in the n_h x n_w window around cell n (reflect padding), (I, N) bool."""
    onehot = (labels[None] == torch.arange(num_objects, device=labels.device)[:, None, None]).float()[None]
    padded = F.pad(onehot, ((n_w - 1) // 2, (n_w - 1) // 2, (n_h - 1) // 2, (n_h - 1) // 2), mode="reflect")
    return (F.max_pool2d(padded, (n_h, n_w), stride=1) > 0)[0].flatten(1)


def upsample(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) or (1, C, h, w) -> (1, C, H, W), bilinear with align_corners=False (the release's)."""
    scores = scores if scores.dim() == 4 else scores[None]
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def one_hot_map(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(H, W) -> (1, C, H, W) float."""
    return F.one_hot(labels, num_classes).permute(2, 0, 1)[None].float()


def give_small_objects_a_cell(grid: np.ndarray, squashed: np.ndarray, objects: list[int]) -> np.ndarray:
    """Objects of the squashed mask that the nearest resize to the grid lost get the cell holding most of their
    pixels (the release crashes on them)."""
    grid = grid.copy()
    hg, wg = grid.shape
    side_h, side_w = squashed.shape
    for o in objects:
        ys, xs = np.nonzero(squashed == o)
        cells = (ys * hg // side_h) * wg + xs * wg // side_w
        grid.flat[np.bincount(cells).argmax()] = o
    return grid


# --------------------------------------------------------------------------------------------------------------
# The method


@register
class MixtureVOS(Method):
    info = INFO

    @classmethod
    def build_part(cls, part: str, variant: str, options: dict[str, Any]) -> torch.nn.Module:
        if part == "xcit":
            return xcit.build_xcit_small_12_p8()
        return build_dinov2(VARIANTS[variant].dinov2)

    def _build(self) -> None:
        opts = self.options
        self.fused_crf = opts["fused_crf"] and self.device.type == "cpu"
        if self.fused_crf and importlib.util.find_spec("numba") is None:
            log.warning(
                "mixture: numba is not installed, so the CRF trains on torch's reference path (the same masks, about "
                "1.8x slower on CPU); pip install numba, or pass fused_crf=false to silence this."
            )
            self.fused_crf = False
        cfg = VARIANTS[self.variant]
        if opts["crf_iters"] is not None:
            cfg = dataclasses.replace(cfg, crf_iters=opts["crf_iters"])
        self.cfg = cfg
        if cfg.features == "rgb":
            self.features = RgbFeatures(
                opts["rgb_dim"], bandwidth=opts["rgb_bandwidth"], norm=opts["rgb_norm"], device=self.device
            )
            return
        self.features = XcitFeatures(
            self.nets["xcit"],
            layer=opts["feature_layer"],
            norm=opts["feature_norm"],
            dinov2=self.nets.get("dinov2"),
            autocast=lambda: vdevice.autocast(self.device, self.dtype),
        )

    def _segment(self, clip, first_mask: np.ndarray) -> Iterator[np.ndarray]:
        ids = np.unique(first_mask)
        lut = np.concatenate([[0], ids[ids != 0]]).astype(np.uint8)
        labels = np.searchsorted(lut, first_mask).astype(np.uint8)
        short = min(self.working_size(clip))
        geometry = Geometry.for_frame(clip.work_size, short, self.cfg.multiple)
        session: _Session | None = None
        for t, frame in enumerate(clip.frames()):
            frame = resize_frame(frame, geometry)
            with torch.inference_mode():
                if session is None:
                    session = _Session(self, labels, geometry, clip.size, frame)
                output = session.step(t, frame)
            yield lut[output]


class _Session:
    """Everything one clip needs: the frame-0 statistics, the mixtures, their history, the CRFs, the gate state."""

    def __init__(self, method: MixtureVOS, labels: np.ndarray, geometry: Geometry, out_size, frame0: np.ndarray):
        opts = method.options
        self.opts = opts
        self.report = method.report
        self.device = device = method.device
        self.features = method.features
        self.geometry = geometry
        self.out_size = tuple(out_size)
        self.num_objects = num_objects = int(labels.max()) + 1
        self.num_models = opts["num_models"]
        self.step_size = opts["time_step"]
        self.rate = PAPER_KERNEL_RATE if opts["paper_time_kernel"] else RELEASE_KERNEL_RATE
        self.fit_weight = PAPER_W_RHO if opts["paper_w_rho"] else 0.25 * opts["loc"]
        self.score_weight = PAPER_W_RHO if opts["paper_w_rho"] else opts["score_pe_weight"]
        self.n_features = self.features.n_features
        hg, wg = geometry.grid

        # Frame-0 statistics on the mask squashed to 480x480 (the release's reader), whatever the frame size.
        squashed = pil_nearest(labels, (vmf.SIZE_STAT_SIDE, vmf.SIZE_STAT_SIDE))
        sizes = vmf.object_sizes(squashed, num_objects)
        self.fitted = fitted = sizes >= IGNORE_BELOW
        k_max = max(1, int(min(sizes.max(), vmf.K_CAP)))
        grid_gt = pil_nearest(squashed, geometry.grid)
        lost = [o for o in range(num_objects) if fitted[o] and not (grid_gt == o).any()]
        if lost:
            grid_gt = give_small_objects_a_cell(grid_gt, squashed, lost)
            for o in lost:
                if not (grid_gt == o).any():  # two lost objects fought over one cell
                    fitted[o] = False
        squashed_out = np.where(np.isin(squashed, np.flatnonzero(~fitted)), 0, squashed).astype(np.uint8)
        self.crf_target = torch.from_numpy(pil_nearest(squashed_out, geometry.crf)).to(device).long()
        self.first_output = pil_nearest(squashed_out, self.out_size)
        self.grid_gt = torch.from_numpy(grid_gt).to(device).long()
        self.prev_final = torch.from_numpy(squashed_out).to(device)
        log.debug("mixture: sizes %s, K_max %d, grid %s, ignored %s", sizes, k_max, geometry.grid, ~fitted)

        self.crf_iters = method.cfg.crf_iters
        self.generator = torch.Generator().manual_seed(opts["seed"])
        self.crfs: list[PacCrf] = []
        if opts["crf"]:
            with torch.inference_mode(False):
                crf_settings = {"num_steps": opts["crf_steps"], "fused": method.fused_crf}
                self.crfs = [PacCrf(num_objects, generator=self.generator, **crf_settings).to(device) for _ in range(2)]

        self.rho = vmf.position_code(hg, wg, device=device)
        self.pe_unit = vmf.unit(self.rho)
        self.thresholds = vmf.indicator_thresholds(self.num_models).to(device)
        grid_short = min(hg, wg)
        self.n_h = window_size(opts["n_h"], grid_short, hg)
        self.n_w = window_size(opts["n_w"], grid_short, wg)
        # Dense blocks of ~4 MB keep a CPU in cache; a GPU wants them large.
        self.budget = 1 << 24 if device.type == "cuda" else 1 << 20
        self.chunk = opts["chunk_size"] or vmf.auto_chunk(num_objects, self.num_models, k_max, self.budget)
        dim = self.n_features + vmf.PE_DIM
        self.fitted_idx = torch.from_numpy(np.flatnonzero(fitted)).to(device)
        self.fitted_mask = torch.from_numpy(fitted).to(device)
        self.last_window = torch.zeros(num_objects, geometry.cells, dtype=torch.bool, device=device)
        self.indicator: vmf.Indicator | None = None

        # Initial fit: greedy centres on the frame-0 ground truth, EM to tolerance, first save at tau = 1.
        for _ in self.fitted_idx.tolist():
            vmf.draw_init_parameters(self.generator, self.num_models, k_max, dim)
        self.report("features of frame 0", 0, 1)
        raw = self.features(frame0, geometry)
        self.report("features of frame 0", 1, 1)
        self.frame0_raw = raw
        fit = self.vectors(raw, self.fit_weight)
        cells = self.grid_gt.flatten()[None] == torch.arange(num_objects, device=device)[:, None]
        points = vmf.Points.from_masks(cells & self.fitted_mask[:, None])
        counts = points.counts[self.fitted_idx].tolist()
        first = torch.zeros(num_objects, self.num_models, dtype=torch.long)
        first[fitted] = torch.stack(vmf.first_centres(self.generator, counts, self.num_models))
        active = vmf.active_slots(sizes, fitted, self.num_models, k_max).to(device)
        centres = torch.zeros(num_objects, self.num_models, k_max, dim, device=device)
        f = self.fitted_idx
        centres[f] = vmf.greedy_centres(
            fit[points.index[f]], points.valid[f], first.to(device)[f], k_max, self.n_features
        )
        self.mixtures = vmf.initial_mixtures(centres, active, self.n_features)
        self.history = vmf.History.empty(num_objects, self.num_models, k_max, dim, self.n_features, device)
        # EM stops early at its tolerance, so the bar counts iterations against the cap and then jumps to done.
        fitting = "fitting the mixtures"
        self.report(fitting, 0, opts["max_iters"])
        stats, sums = vmf.em(
            self.mixtures,
            f,
            fit,
            points,
            iterations=opts["max_iters"],
            tolerance=opts["rll_tol"],
            history=None,
            block_elements=self.budget,
            active_only=opts["fast_em"],
            on_iteration=lambda done, total: self.report(fitting, done, total),
        )
        self.history.save(f, stats, sums, 1.0, self.step_size)
        self.report(fitting, opts["max_iters"], opts["max_iters"])

    def vectors(self, raw: torch.Tensor, pe_weight: float) -> torch.Tensor:
        """L2norm([f, w rho]) per cell."""
        return F.normalize(torch.cat([raw, pe_weight * self.rho], dim=1), dim=1)

    def step(self, t: int, frame: np.ndarray) -> np.ndarray:
        """Process frame t; returns its contiguous-id label map at the output size."""
        opts = self.opts
        device = self.device
        num_objects = self.num_objects
        hg, wg = self.geometry.grid
        now = 1.0 + t * self.step_size

        # 1. Gate from the previous final mask; objects absent from it keep their last window and skip EM.
        grid_labels = self.grid_gt if t == 0 else _nearest(self.prev_final, self.geometry.grid)
        windows = presence_windows(grid_labels, num_objects, self.n_h, self.n_w)
        present = (grid_labels.flatten()[None] == torch.arange(num_objects, device=device)[:, None]).any(1)
        windows = torch.where(present[:, None], windows, self.last_window)
        self.last_window = windows
        gate = windows & self.fitted_mask[:, None]
        skipped = self.fitted_mask & ~present

        raw = self.frame0_raw if t == 0 else self.features(frame, self.geometry)
        self.frame0_raw = None
        fit = self.vectors(raw, self.fit_weight)
        score = self.vectors(raw, self.score_weight)

        # 2-4. Pass A with the previous parameters, outliers, CRF #1.
        scores = self.score(score, gate, indicator=t > 0)
        top = scores.topk(2, dim=0).values  # a prompt has an object, so there are at least two rows
        confident = (top[0] - top[1]).abs() > opts["std"]
        raw_labels = channel_argmax(scores)
        image = self.crf_image(frame)
        unary = self.crf_unary(scores)
        refined = self.refine(0, unary, image, train=t == 0)
        pred = channel_argmax(upsample(refined, (hg, wg))[0]).flatten()
        if t == 0:
            pred = self.grid_gt.flatten()

        # 5-6. EM on the confident cells where the CRF and the raw argmax agree, then save the history.
        objects = torch.arange(num_objects, device=device)[:, None]
        data = (pred[None] == objects) & (raw_labels[None] == objects) & confident[None]
        points = vmf.Points.from_masks(data)
        run = torch.nonzero(self.fitted_mask & ~skipped).flatten()
        if run.numel():
            history = self.history.read(run, now, rate=self.rate)
            stats, sums = vmf.em(
                self.mixtures,
                run,
                fit,
                points,
                iterations=opts["max_iters"] if t == 0 else opts["em_iters"],
                tolerance=opts["rll_tol"],
                history=history,
                indicator=None if t == 0 else self.indicator,
                pe_unit=self.pe_unit,
                thresholds=self.thresholds,
                block_elements=self.budget,
                active_only=opts["fast_em"],
                on_iteration=(
                    (lambda done, total: self.report("fitting frame 0 again", done, total)) if t == 0 else None
                ),
            )
            self.history.save(run, stats, sums, now, self.step_size)
        self.history.age(torch.nonzero(skipped).flatten(), self.step_size)

        # 7. Pass B with the new parameters; its indicator is the next EM's.
        scores = self.score(score, gate, indicator=True)
        self.indicator = vmf.Indicator(gate, self.mixtures.mu_pe_unit)

        # 8. Output: CRF #2 at half the frame size, bilinear x2, argmax.
        unary = self.crf_unary(scores)
        refined = self.refine(1, unary, image, train=t == 0)
        final = channel_argmax(upsample(refined, self.geometry.frame)[0])
        if t == 0:
            return self.first_output
        self.prev_final = final
        return pil_nearest(final.to(torch.uint8).cpu().numpy(), self.out_size)

    def score(self, frame: torch.Tensor, gate: torch.Tensor, *, indicator: bool) -> torch.Tensor:
        return vmf.score_cells(
            self.mixtures,
            frame,
            gate,
            pe_unit=self.pe_unit,
            thresholds=self.thresholds if indicator else None,
            chunk=self.chunk,
        )

    def crf_unary(self, scores: torch.Tensor) -> torch.Tensor:
        """The CRFs' input: the scores (I, cells) bilinearly resized to the CRF size, their argmax one-hot."""
        hg, wg = self.geometry.grid
        return one_hot_map(channel_argmax(upsample(scores.view(-1, hg, wg), self.geometry.crf)[0]), self.num_objects)

    def crf_image(self, frame: np.ndarray) -> torch.Tensor:
        """The frame at the CRF size, PIL bicubic (the release's), (1, 3, H, W) float 0..255."""
        h, w = self.geometry.crf
        small = np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))
        return torch.from_numpy(small.copy()).to(self.device).permute(2, 0, 1)[None].float()

    def refine(self, which: int, unary: torch.Tensor, image: torch.Tensor, *, train: bool) -> torch.Tensor:
        """CRF ``which`` (0: after pass A, 1: output) on a one-hot map; trained first on frame 0."""
        if not self.crfs:
            return unary
        crf = self.crfs[which]
        if train:
            with torch.inference_mode(False), torch.enable_grad():
                if which == 0 and crf.fused:  # the method sets it on CPU only
                    from vos.methods.mixture import fused

                    self.report("preparing the CRF's kernels (compiled on the first run after installing)", 0, 1)
                    fused.warm_up(image.dtype)
                losses = crf.fit(
                    unary.clone(),
                    image.clone(),
                    self.crf_target.clone(),
                    generator=self.generator,
                    iterations=self.crf_iters,
                    lr=self.opts["crf_lr"],
                    noise=self.opts["crf_noise"],
                    on_step=lambda done, total: self.report(f"training CRF {which + 1} of 2", done, total),
                )
            if losses:
                log.debug("mixture: CRF %d loss %.4f -> %.4f", which, losses[0], losses[-1])
        return crf(unary, image)


def _nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch nearest resize of a label map (the release's for the gate), long."""
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
