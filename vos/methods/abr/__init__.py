"""ABR: appearance-based refinement of flow-based motion segmentation (Xie, Xie, Zisserman; ECCV 2024).

Paper: "Appearance-Based Refinement for Object-Centric Motion Segmentation", arXiv 2312.11463.
Release: github.com/Jyxarthur/appear-refine @c80b7da with its proposals from github.com/Jyxarthur/OCLR_model
@11acab7 (reference behaviour: shared/specs/abr.md).

Unsupervised: discovers, segments and tracks up to 3 moving objects over the whole clip (offline).
RAFT optical flow (``flow.py``) -> OCLR-flow amodal layers and depth order in 30-frame chunks (``oclr.py``) ->
the mask selector scores every frame's proposal per object and keeps the 10 best as exemplars (``selector.py``,
DINO ViT-S/16 features) -> the mask corrector re-draws every frame, 7 at a time, from the exemplars (``corrector.py``,
DINO ViT-S/8 features) -> label maps (``pipeline.py``). The networks run at 128x224 whatever the clip.

What differs from the release:
- Object ids across OCLR chunks. The release's evaluation permutes each 30-frame chunk's channels to the ground
  truth (an oracle). Here the chunks are the release's (so every frame's proposals are the release's up to each
  chunk's channel order, and a clip of up to 30 frames gives exactly the release's result), and each chunk takes
  the ids already given by the Hungarian matching of IoU on frames two OCLR passes share: the final chunk
  overlaps its predecessor; elsewhere an extra pass centred on the boundary is aligned first and bridges the two
  (``oclr.propose``). That costs about one more OCLR pass per 30 frames.
- Flow resolution (option ``flow``): ``full`` is the release's path (RAFT at the frame's resolution);
  ``reduced`` (default) runs RAFT at 256x448, about 4x cheaper at 480p (2.0 s vs 7.9 s a frame pair on a
  2-core CPU), for a nearly identical OCLR input.
- Memory: attention runs through ``scaled_dot_product_attention`` with a boolean mask, 2048 query rows at a
  time (``vos.nn.attend``), so the selector's (112 T)^2 scores per layer are never held whole. Measured on CPU
  with random weights: the selector over a 100-frame clip peaks at 2.6 GB resident, the whole refinement (DINO,
  selector, corrector) of 100 frames of 480x854 at 3.3 GB, where the release needs more than
  30 GB (spec). T is neither capped nor chunked: the selector still scores every frame against all others.
- Clips shorter than 10 frames keep every frame as an exemplar (the release raises).
- Options the release does not have, both off by default (the released models are evaluated without them: 65.4 J
  on DAVIS17-m; the paper's 67.0 J uses both):
  - ``tta_iters`` (``adaptation.py``): the paper's per-sequence test-time adaptation of the mask corrector (about
    200 Adam steps at lr 2e-5 on its own refined masks at the exemplar frames, the training loss of Eq. 8 with the
    release's reconstruction head). The loss weights and the window schedule are ours (unpublished). A copy is
    adapted per clip. About 20 s a step measured here (2-core CPU shared with another job, one thread).
  - ``crf`` (``crf.py``): a dense CRF on each final label map. The paper's CRF and its parameters are unpublished;
    this one and its parameters (pydensecrf's README values) are ours. 1.1 s a frame at 240x427, 8.0 s at 480x854
    measured here (same machine and load).
- Precision: ``dtype`` bf16 (or fp16 on CUDA) runs RAFT, OCLR, DINO, the selector and the corrector under autocast,
  one network call at a time; flows, masks, scores and probabilities stay float32. fp32 is the release's precision.
  Measured here (random weights, 14 frames, one thread, shared machine): the refinement took 13.8 s in bf16 vs 27.7 s
  in fp32, corrected probabilities within 0.014. On real footage with the machine to itself (``python -m vos bench
  agreement --methods abr --frames 10 --size 144``, Carphone 144x176, random weights): 12.3 s against 22.9 s (1.9x)
  but mean IoU 0.70 against fp32's masks, below the 0.99 that would make bf16 a safe choice (with untrained networks
  small differences decide the masks, and bf16's 8-bit mantissa moves them; the trained weights' agreement is not
  measured here). Keep fp32 for results; bf16 is for a quick look.
- RAFT weights: torchvision's file (raft_large_C_T_V1) or the princeton-vl raft-things.pth, renamed on load
  (``flow.convert_original_raft``).

Stages reported while it works: ``flow`` (RAFT pairs), ``proposals`` (OCLR chunks), ``selector`` (objects),
``corrector`` (windows of 7 frames), with test-time adaptation ``adapting the corrector`` (steps) and ``adapted
corrector`` (windows again); the label maps follow once all are done (the CRF, when on, runs as each is handed out).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from vos import device as vdevice
from vos.backbones.vit import DinoViT, build_vit
from vos.methods.abr import adaptation as adaptation_mod
from vos.methods.abr import crf as crf_mod
from vos.methods.abr import flow as flow_mod
from vos.methods.abr.corrector import MaskCorrector
from vos.methods.abr.oclr import OclrFlow
from vos.methods.abr.pipeline import Adaptation, Networks, segment_frames
from vos.methods.abr.selector import MaskSelector
from vos.methods.base import (
    OFFLINE,
    UNSUP,
    Method,
    MethodInfo,
    Option,
    Paper,
    Reported,
    Resolution,
    register,
)
from vos.video import Clip

VARIANTS = {
    "davis17m": "OCLR-flow and mask corrector adapted to DAVIS-2017-motion (the paper's DAVIS models)",
    "ytvos18m": "OCLR-flow and mask corrector adapted to YouTube-VOS-2018-motion",
    "oclr_synthetic": "OCLR-flow trained on synthetic data only, with the DAVIS-adapted corrector",
}

_COMMON_PARTS = {
    "raft": "abr.raft_things",
    "selector": "abr.selector",
    "dino_s16": "backbone.dino_vits16",
    "dino_s8": "backbone.dino_vits8",
}

_GPU = "GPU (model not stated)"
_NO_TTA = "released checkpoints, without per-sequence test-time adaptation and CRF (paper Table 14)"
_WITH_TTA = "with per-sequence test-time adaptation and CRF, neither of which is released"

INFO = MethodInfo(
    key="abr",
    title="Appearance-based refinement of motion segmentation (ABR)",
    task=UNSUP,
    summary=(
        "Optical flow (RAFT) gives OCLR-flow's proposals for up to three moving objects; a selector trained on "
        "synthetic clips picks, per object, the ten frames whose masks look right against DINO features, and an "
        "object-centric transformer re-draws every frame's masks from those exemplars. Unsupervised and offline: "
        "it reads the whole clip before the first frame's masks."
    ),
    variants=tuple(VARIANTS),
    default_variant="davis17m",
    paper=Paper(
        title="Appearance-Based Refinement for Object-Centric Motion Segmentation",
        authors="Junyu Xie, Weidi Xie, Andrew Zisserman",
        venue="ECCV",
        year=2024,
        url="https://arxiv.org/abs/2312.11463",
        bibtex=(
            "@inproceedings{xie2024appearrefine,\n"
            "  title={Appearance-Based Refinement for Object-Centric Motion Segmentation},\n"
            "  author={Xie, Junyu and Xie, Weidi and Zisserman, Andrew},\n"
            "  booktitle={European Conference on Computer Vision (ECCV)},\n"
            "  year={2024}\n}"
        ),
    ),
    repo="https://github.com/Jyxarthur/appear-refine",
    licence="unknown (see the official repository)",
    reported=(
        Reported(
            "DAVIS-2017-motion val",
            {"J&F": 66.2, "J": 67.0, "F": 65.4},
            "davis17m",
            resolution="128x224",
            note=_WITH_TTA,
        ),
        Reported(
            "DAVIS-2017-motion val",
            {"J": 65.4},
            "davis17m",
            fps=round(1 / 0.098, 1),
            resolution="128x224",
            hardware=_GPU,
            note=_NO_TTA + "; 0.098 s per frame (flow proposals and refinement, flow computation not included)",
        ),
        Reported(
            "YouTube-VOS-2018-motion val",
            {"J&F": 65.2, "J": 67.1, "F": 63.2},
            "ytvos18m",
            resolution="128x224",
            note=_WITH_TTA + "; flow gaps +-3",
        ),
        Reported("YouTube-VOS-2018-motion val", {"J": 66.6}, "ytvos18m", note=_NO_TTA + "; flow gaps +-3"),
        Reported(
            "DAVIS-2017-motion val",
            {"J": 63.2},
            "oclr_synthetic",
            note="OCLR-flow not adapted, corrector adapted (paper Table 14, without test-time adaptation and CRF)",
        ),
        Reported("DAVIS-2016 val", {"J": 81.1}, None, resolution="128x224", note="single object; " + _WITH_TTA),
    ),
    options=(
        Option(
            "flow",
            str,
            flow_mod.REDUCED_MODE,
            "Where RAFT runs. reduced: at 256x448 (OCLR sees 128x224 anyway), about 4x cheaper at 480p "
            "(measured on a 2-core CPU, random weights: 2.0 s per frame pair vs 7.9 s at 480x854). full: at the "
            "frame's resolution, padded to a multiple of 8 and never unpadded, exactly the release's flow.",
            choices=(flow_mod.REDUCED_MODE, flow_mod.FULL),
        ),
        Option(
            "gap",
            int,
            1,
            "Flow frame gap g: flows to frame t+g and t-g. The paper uses 1 on DAVIS and 3 on YouTube-VOS and FBMS "
            "(slow motion).",
            minimum=1,
        ),
        Option(
            "tta_iters",
            int,
            0,
            "Per-clip test-time adaptation of the mask corrector: this many fine-tuning steps (0 = off, as the "
            "released models were evaluated; the paper uses about 200, for +0.3 to +0.9 J at 20x the time). The "
            "paper's recipe: Adam, the corrector's own refined masks as pseudo labels at the exemplar frames, its "
            "training loss (mask cross-entropy + DINO-feature reconstruction + alpha cross-entropy), flow masks "
            "zeroed in the upsampling branch. Ours (unpublished): every loss weight 1, one 7-frame window a step. "
            "A copy is adapted for each clip; the loaded weights never change. " + adaptation_mod.MEASURED,
            minimum=0,
            maximum=2000,
            paper=adaptation_mod.ITERATIONS,
        ),
        Option(
            "tta_lr",
            float,
            adaptation_mod.LEARNING_RATE,
            "Learning rate of the test-time adaptation (the paper's 2e-5).",
            minimum=1e-8,
            maximum=1e-2,
        ),
        Option(
            "crf",
            bool,
            False,
            "Dense-CRF post-processing of each frame's labels. The paper applies a CRF last (+0.2 to +0.7 J) but "
            "publishes neither it nor its parameters; this one is ours: a fully-connected CRF (smoothness std 3 px, "
            "weight 3; appearance std 80 px and 13 colour levels, weight crf_weight; unary 0.7 on the given label: "
            "pydensecrf's README values), its messages sampled on 5x5 grids at dilations 1, 4, 16, 64. "
            + crf_mod.MEASURED,
            paper=True,
        ),
        Option(
            "crf_iters",
            int,
            crf_mod.CrfSettings.iterations,
            "Mean-field iterations of the CRF (ours: 5, pydensecrf's example).",
            minimum=1,
            maximum=50,
        ),
        Option(
            "crf_weight",
            float,
            crf_mod.CrfSettings.appearance_weight,
            "Weight of the CRF's appearance (colour) kernel: higher follows colour edges more, and removes more "
            "small islands (ours: 10, pydensecrf's example).",
            minimum=0.0,
            maximum=100.0,
        ),
    ),
    weights={
        "davis17m": {**_COMMON_PARTS, "oclr": "abr.oclr_davis17m", "corrector": "abr.corrector_davis17m"},
        "ytvos18m": {**_COMMON_PARTS, "oclr": "abr.oclr_ytvos18m", "corrector": "abr.corrector_ytvos18m"},
        "oclr_synthetic": {**_COMMON_PARTS, "oclr": "abr.oclr_synthetic", "corrector": "abr.corrector_davis17m"},
    },
    processing=OFFLINE,
    resolution=Resolution.fixed((128, 224)),
)


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints

# The release's conv blocks name their layers after the block ("enc1_rconv1", "bottleneckconv2", "dec3conv1")
# inside a ``conv_block`` Sequential; ours are ``conv1`` / ``conv2`` of the shared ConvBlock.
_CONV_BLOCK = re.compile(r"\.conv_block\.[A-Za-z0-9_]*?conv([12])\.weight$")
_SELECTOR_PREFIX = "selector."


def convert_official(checkpoint: Any) -> dict[str, torch.Tensor]:
    """An OCLR-flow, selector or corrector checkpoint as published (``{'model_state_dict': ...}``) -> our keys:
    the selector's ``selector.`` prefix dropped, conv-block layers renamed; everything else keeps its name."""
    from vos.weights import unwrap_state_dict

    state = unwrap_state_dict(checkpoint)
    if state and all(key.startswith(_SELECTOR_PREFIX) for key in state):
        state = {key.removeprefix(_SELECTOR_PREFIX): value for key, value in state.items()}
    return {_CONV_BLOCK.sub(r".conv\1.weight", key): value for key, value in state.items()}


def convert_raft(checkpoint: Any) -> dict[str, torch.Tensor]:
    """Either published copy of raft-things -> torchvision's ``raft_large`` names: torchvision's file
    (raft_large_C_T_V1-22a6c225.pth) as it is, the princeton-vl original (raft-things.pth, DataParallel's
    ``module.`` prefix) renamed by ``flow.convert_original_raft``."""
    from vos.weights import unwrap_state_dict

    state = unwrap_state_dict(checkpoint)
    if flow_mod.is_original_raft(state):
        return flow_mod.convert_original_raft(state)
    if flow_mod.is_torchvision_raft(state):
        return state
    raise ValueError(
        "neither the original RAFT layout (module.fnet / cnet / update_block.gru ...) nor torchvision's raft_large "
        "(feature_encoder / context_encoder / update_block.recurrent_block ...); use raft-things.pth from "
        "princeton-vl or https://download.pytorch.org/models/raft_large_C_T_V1-22a6c225.pth"
    )


# --------------------------------------------------------------------------------------------------------------
# The method


@register
class AppearanceRefinement(Method):
    info = INFO

    @classmethod
    def build_part(cls, part: str, variant: str, options: dict[str, Any]) -> nn.Module:
        if part == "raft":
            return flow_mod.build_raft()
        if part == "oclr":
            return OclrFlow()
        if part == "selector":
            return MaskSelector()
        if part == "corrector":
            return MaskCorrector()
        if part in ("dino_s16", "dino_s8"):
            return build_vit(patch_size=16 if part == "dino_s16" else 8, embed_dim=384, depth=12, num_heads=6)
        raise ValueError(f"abr has no part {part!r}")

    def _build(self) -> None:
        self.networks = Networks(
            raft=self.nets["raft"],
            oclr=self.nets["oclr"],
            selector=self.nets["selector"],
            corrector=self.nets["corrector"],
            dino_s16=DinoViT(self.nets["dino_s16"]),
            dino_s8=DinoViT(self.nets["dino_s8"]),
        )

    def _segment(self, clip: Clip, first_mask: np.ndarray) -> Iterator[np.ndarray]:
        options = self.options
        frames = list(clip.frames())
        adaptation = Adaptation(options["tta_iters"], options["tta_lr"]) if options["tta_iters"] else None
        maps = segment_frames(
            self.networks,
            frames,
            output_size=clip.size,
            flow=options["flow"],
            gap=options["gap"],
            device=self.device,
            report=self.report,
            autocast=lambda: vdevice.autocast(self.device, self.dtype),
            adaptation=adaptation,
        )
        del frames
        if not options["crf"]:
            yield from maps
            return
        settings = crf_mod.CrfSettings(iterations=options["crf_iters"], appearance_weight=options["crf_weight"])
        for frame, labels in zip(clip.output_frames(), maps):  # the CRF reads the frame at the labels' size
            yield crf_mod.refine_labels(frame, labels, settings, self.device)
