"""The whole clip: flow -> OCLR proposals -> selector scores and exemplars -> corrector windows -> label maps.

Every step follows the order of operations that decides exact agreement with the release (spec, last section):
proposals round-trip through the frame size, RGB is resized as uint8 before normalising with the 0.228 std, the
exemplars are the argpartition top 10 sorted ascending, later corrector windows overwrite, and the final labels are
the arg-max at 128x224 (where the maximum exceeds 0.5) resized per object to the frame size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from vos.backbones.normalization import DINO_STD, IMAGENET_MEAN, frames_to_tensor
from vos.backbones.vit import DinoViT
from vos.methods.abr import adaptation as adaptation_mod
from vos.methods.abr import corrector as corrector_mod
from vos.methods.abr import flow as flow_mod
from vos.methods.abr import oclr as oclr_mod
from vos.methods.abr import selector as selector_mod

SIZE = (128, 224)
DINO_BATCH = 16  # frames per DINO pass

Report = Callable[[str, int, int], None]
Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class Adaptation:
    """Per-sequence test-time adaptation of the corrector (``adaptation.py``): ``iterations`` steps at ``lr``."""

    iterations: int = adaptation_mod.ITERATIONS
    lr: float = adaptation_mod.LEARNING_RATE


@dataclass
class Networks:
    raft: nn.Module
    oclr: oclr_mod.OclrFlow
    selector: selector_mod.MaskSelector
    corrector: corrector_mod.MaskCorrector
    dino_s16: DinoViT
    dino_s8: DinoViT


def _no_report(stage: str, done: int, total: int) -> None:
    return None


@torch.inference_mode()
def segment_frames(
    nets: Networks,
    frames: Sequence[np.ndarray],
    *,
    output_size: tuple[int, int] | None = None,
    flow: str = flow_mod.REDUCED_MODE,
    gap: int = 1,
    device: torch.device | str = "cpu",
    report: Report = _no_report,
    autocast: Autocast = contextlib.nullcontext,
    adaptation: Adaptation | None = None,
) -> list[np.ndarray]:
    """uint8 RGB frames (all one size) -> one uint8 label map per frame at ``output_size`` (default: the frames'
    size; 0 = background, 1..3). The proposals' round trip and the final resize happen at ``output_size``, the
    size the release's files have. ``autocast()`` is opened around each network call (RAFT batch, OCLR pass, DINO
    batch, selector object, corrector window); masks, scores and probabilities stay float32."""
    device = torch.device(device)
    frame_size = tuple(output_size or frames[0].shape[:2])
    flows = flow_mod.compute_flows(
        nets.raft,
        frames,
        mode=flow,
        gap=gap,
        device=device,
        report=lambda d, n: report("flow", d, n),
        autocast=autocast,
    )
    proposals = oclr_mod.propose(nets.oclr, flows, report=lambda d, n: report("proposals", d, n), autocast=autocast)
    del flows
    masks = torch.from_numpy(round_trip(proposals.cpu().numpy(), frame_size)).to(device)  # (T, 3, 128, 224)
    probabilities = refine(nets, frames, masks, device=device, report=report, autocast=autocast, adaptation=adaptation)
    return label_maps(probabilities.cpu().numpy(), frame_size)


def round_trip(masks: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """(T, K, 128, 224) bool -> float32 0/1 after the release's files: each mask INTER_LINEAR to the frame size,
    > 0.5 (the saved label map), then INTER_LINEAR back to 128x224, > 0.5 (how refinement reads it)."""
    height, width = frame_size
    out = np.zeros(masks.shape, dtype=np.float32)
    for t in range(masks.shape[0]):
        for k in range(masks.shape[1]):
            full = cv2.resize(masks[t, k].astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
            back = cv2.resize(full.astype(np.float32), (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
            out[t, k] = back > 0.5
    return out


def refinement_rgbs(frames: Sequence[np.ndarray], device: torch.device) -> Tensor:
    """uint8 frames -> (T, 3, 128, 224): resized as uint8 (INTER_LINEAR), /255, ImageNet mean, std (0.228, ...)."""
    small = [cv2.resize(frame, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR) for frame in frames]
    return frames_to_tensor(np.stack(small), IMAGENET_MEAN, DINO_STD, device=device)


def dino_tokens(dino: DinoViT, rgbs: Tensor, autocast: Autocast = contextlib.nullcontext) -> Tensor:
    """(T, 3, 128, 224) -> (T, h, w, 384) float32 final-norm patch tokens, ``DINO_BATCH`` frames at a time."""
    parts = []
    for start in range(0, rgbs.shape[0], DINO_BATCH):
        with autocast():
            parts.append(dino.tokens(rgbs[start : start + DINO_BATCH]).float())
    return torch.cat(parts).permute(0, 2, 3, 1).contiguous()


@torch.inference_mode()
def refine(
    nets: Networks,
    frames: Sequence[np.ndarray],
    masks: Tensor,
    *,
    device: torch.device,
    report: Report,
    autocast: Autocast = contextlib.nullcontext,
    adaptation: Adaptation | None = None,
) -> Tensor:
    """Proposals (T, 3, 128, 224) float 0/1 -> corrected probabilities (T, 3, 128, 224). With ``adaptation``, a
    copy of the corrector is fine-tuned on the first pass's masks and draws them again (``nets.corrector`` is
    left as loaded)."""
    num_frames, objects = masks.shape[:2]
    rgbs = refinement_rgbs(frames, device)
    tokens16 = dino_tokens(nets.dino_s16, rgbs, autocast)
    tokens8 = dino_tokens(nets.dino_s8, rgbs, autocast)

    scores = torch.zeros((num_frames, objects), device=device)
    for k in range(objects):
        with autocast():
            errors = nets.selector(rgbs, masks[:, k : k + 1], tokens16)
        scores[:, k] = selector_mod.frame_scores(errors.float(), masks[:, k])
        report("selector", k + 1, objects)
    del tokens16
    chosen = selector_mod.select_exemplars(scores.cpu().numpy())  # (3, n)
    exemplar_frames = torch.from_numpy(chosen).to(device)
    object_index = torch.arange(objects, device=device)[:, None]
    inputs = adaptation_mod.CorrectorInputs(
        rgbs=rgbs,
        masks=masks,
        tokens=tokens8,
        exemplar_tokens=tokens8[exemplar_frames],  # (3, n, 16, 28, 384)
        exemplar_masks=masks[exemplar_frames, object_index],  # (3, n, 128, 224): object k's own mask
        exemplar_scores=scores[exemplar_frames, object_index],  # (3, n)
        exemplar_frames=exemplar_frames,
    )
    probabilities = correct(nets.corrector, inputs, report=lambda d, n: report("corrector", d, n), autocast=autocast)
    if adaptation is None or adaptation.iterations == 0:
        return probabilities
    adapted, _ = adaptation_mod.adapt(
        nets.corrector,
        inputs,
        probabilities,
        iterations=adaptation.iterations,
        lr=adaptation.lr,
        report=report,
        autocast=autocast,
    )
    return correct(adapted, inputs, report=lambda d, n: report("adapted corrector", d, n), autocast=autocast)


def correct(
    corrector: corrector_mod.MaskCorrector,
    inputs: adaptation_mod.CorrectorInputs,
    *,
    report: Callable[[int, int], None],
    autocast: Autocast = contextlib.nullcontext,
) -> Tensor:
    """Every corrector window in the release's order -> (T, 3, 128, 224) probabilities (frames no window covers
    keep their proposals; later windows overwrite)."""
    probabilities = inputs.masks.clone()
    targets = corrector_mod.windows(inputs.masks.shape[0])
    for w, window in enumerate(targets):
        index = torch.tensor(window, device=inputs.masks.device)
        with autocast():
            logits = inputs.run(corrector, index)
        for position, frame in enumerate(window):  # the last write wins (padded windows repeat the last frame)
            probabilities[frame] = logits[position].float().sigmoid()
        report(w + 1, len(targets))
    return probabilities


def label_maps(probabilities: np.ndarray, frame_size: tuple[int, int]) -> list[np.ndarray]:
    """(T, K, 128, 224) -> T uint8 label maps at ``frame_size``: the arg-max object where its probability exceeds
    0.5, one-hot, each object's map INTER_LINEAR to the frame size and > 0.5 (the one-hot maps sum to at most 1,
    so at most one object passes anywhere)."""
    height, width = frame_size
    objects = probabilities.shape[1]
    best = probabilities.argmax(1)
    keep = probabilities.max(1) > 0.5
    maps = []
    for t in range(probabilities.shape[0]):
        labels = np.zeros((height, width), dtype=np.uint8)
        for k in range(objects):
            one_hot = ((best[t] == k) & keep[t]).astype(np.float32)
            labels[cv2.resize(one_hot, (width, height), interpolation=cv2.INTER_LINEAR) > 0.5] = k + 1
        maps.append(labels)
    return maps
