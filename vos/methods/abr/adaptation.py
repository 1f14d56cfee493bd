"""Optional per-sequence test-time adaptation of the mask corrector (option ``tta_iters``; off by default).

What the paper says (sections 3.4.2 and 0.A.3, Table 14), and is followed here:
- the mask corrector alone is fine-tuned on the clip for about 200 iterations ("following the same settings as the
  dataset-level adaptation"), learning rate 2e-5, optimiser Adam (the paper's optimiser for training);
- the pseudo ground truth is the corrector's own refined masks from the normal pass, applied only "at the frames
  where exemplar masks present": object k's mask loss counts at object k's exemplar frames only;
- the loss is the training loss (Eq. 8) = mask loss (Eq. 6, binary cross-entropy; the boundary loss is removed for
  adaptation) + feature-reconstruction loss (Eq. 7: MSE between the alpha-weighted slot features and the target
  frames' DINO S/8 features, + binary cross-entropy of the object slots' alphas against the pseudo masks
  downsampled to the 16x28 token grid). The head computing the reconstruction is the release's (corrector.py);
- the flow-predicted mask inputs to the upsampling module (the CNN encoder) are zeroed during adaptation.

What is ours (the paper does not publish it; the release has no training code):
- every loss weight (lambda_mask, lambda_feat-recon, lambda_recon, lambda_alpha) is 1;
- pseudo masks are the refined probabilities thresholded at 0.5; the alpha targets are those masks resized
  bilinearly to 16x28 (soft targets);
- one iteration = one window of 7 consecutive target frames, taken in turn from the corrector's own windows that
  hold at least one exemplar frame; the MSE counts on all 7 frames, the two cross-entropies on exemplar frames;
- the adapted weights are a copy used for this clip only: the loaded corrector is never changed.

The paper's cost: 2.03 s a frame with adaptation vs 0.098 s without (GPU), for +0.3 / +0.9 J. Measured here on a
2-core CPU shared with another job, one thread, random weights: about 20 s a step (one 7-frame window forward and
backward), against 28 s for the whole normal refinement of a 14-frame clip.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vos.methods.abr import corrector as corrector_mod

ITERATIONS = 200  # the paper's "around 200"
LEARNING_RATE = 2e-5
STAGE = "adapting the corrector"
MEASURED = (
    "Measured on a 2-core CPU shared with another job (one thread, random weights): a step (one 7-frame window, "
    "forward and backward) takes about 20 s, so 200 steps add over an hour to a clip; the normal refinement of "
    "14 frames took 28 s."
)


@dataclass
class CorrectorInputs:
    """Everything the corrector reads for a clip: ``rgbs`` (T, 3, 128, 224), ``masks`` (T, 3, 128, 224) proposals,
    ``tokens`` (T, 16, 28, 384) DINO S/8, and per object its exemplars (see ``MaskCorrector.forward``)."""

    rgbs: Tensor
    masks: Tensor
    tokens: Tensor
    exemplar_tokens: Tensor
    exemplar_masks: Tensor
    exemplar_scores: Tensor
    exemplar_frames: Tensor

    def run(self, corrector, index: Tensor, *, masks: Tensor | None = None, reconstruct: bool = False):
        """``corrector`` on the frames ``index`` (one window), with the window's proposals or ``masks``."""
        return corrector(
            self.rgbs[index],
            self.masks[index] if masks is None else masks,
            self.tokens[index],
            index,
            self.exemplar_tokens,
            self.exemplar_masks,
            self.exemplar_scores,
            self.exemplar_frames,
            reconstruct=reconstruct,
        )

    def detached(self) -> CorrectorInputs:
        """Plain copies (tensors made under inference mode cannot be saved for backward)."""
        return CorrectorInputs(*(t.clone() for t in vars(self).values()))


def training_windows(num_frames: int, exemplar_frames: Tensor) -> list[list[int]]:
    """The corrector's windows that hold at least one exemplar frame (of any object)."""
    chosen = set(exemplar_frames.reshape(-1).tolist())
    return [window for window in corrector_mod.windows(num_frames) if chosen & set(window)]


def adaptation_loss(
    corrector: corrector_mod.MaskCorrector,
    inputs: CorrectorInputs,
    window: list[int],
    pseudo: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """Eq. 8 (weights 1) on one window: ``pseudo`` (T, 3, 128, 224) 0/1 masks of the whole clip."""
    index = torch.tensor(window, device=inputs.rgbs.device)
    with autocast():
        # The paper zeroes the flow masks fed to the upsampling module.
        logits, features, alphas = inputs.run(
            corrector, index, masks=torch.zeros_like(inputs.masks[index]), reconstruct=True
        )
    logits = logits.float()
    objects = logits.shape[1]
    target = pseudo[index]  # (7, 3, 128, 224)
    labelled = (index[:, None, None] == inputs.exemplar_frames[None]).any(-1)  # (7, 3): frame i exemplar of k
    weight = labelled[:, :, None, None].to(logits.dtype)
    count = labelled.sum().clamp(min=1)

    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mask_loss = (per_pixel * weight).mean(dim=(2, 3)).sum() / count

    h, w = features.shape[1:3]
    small = F.interpolate(target, size=(h, w), mode="bilinear", align_corners=False)
    object_alphas = alphas[:objects].permute(1, 0, 2, 3).clamp(1e-6, 1 - 1e-6)  # (7, 3, h, w)
    alpha_bce = F.binary_cross_entropy(object_alphas, small, reduction="none")
    alpha_loss = (alpha_bce * weight).mean(dim=(2, 3)).sum() / count
    recon_loss = F.mse_loss(features, inputs.tokens[index].float())
    return mask_loss + recon_loss + alpha_loss


def adapt(
    corrector: corrector_mod.MaskCorrector,
    inputs: CorrectorInputs,
    probabilities: Tensor,
    *,
    iterations: int = ITERATIONS,
    lr: float = LEARNING_RATE,
    report: Callable[[str, int, int], None] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[corrector_mod.MaskCorrector, list[float]]:
    """A copy of ``corrector`` fine-tuned on this clip (``corrector`` itself is left as it was) and the loss of
    each iteration. ``probabilities`` (T, 3, 128, 224): the normal pass's refined masks (the pseudo labels).
    ``report(STAGE, k, iterations)`` after each step may raise to stop."""
    with torch.inference_mode(False), torch.enable_grad():
        adapted = copy.deepcopy(corrector)
        adapted.requires_grad_(True)
        plain = inputs.detached()
        pseudo = (probabilities.clone() > 0.5).float()
        windows = training_windows(pseudo.shape[0], plain.exemplar_frames)
        optimiser = torch.optim.Adam([p for p in adapted.parameters() if p.requires_grad], lr=lr)
        losses = []
        if report is not None:
            report(STAGE, 0, iterations)  # the stage shows (and a stop lands) before the first step
        for step in range(iterations):
            loss = adaptation_loss(adapted, plain, windows[step % len(windows)], pseudo, autocast)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if report is not None:
                report(STAGE, step + 1, iterations)
        adapted.requires_grad_(False)
    return adapted.eval(), losses
