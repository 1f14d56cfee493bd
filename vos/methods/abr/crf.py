"""Optional dense-CRF post-processing of abr's final label maps (option ``crf``; off by default).

The paper applies "Conditional Random Field (CRF) segmentation" to the output masks as a last step (+0.2 / +0.7 J
in its Tables 14 and 17) but publishes neither the CRF nor its parameters, and the release has none. Everything
here is therefore OURS: a fully-connected CRF in the form of Kraehenbuehl and Koltun (NeurIPS 2011) with the
parameters of pydensecrf's README example, widely used as DAVIS post-processing: Potts compatibility, a smoothness
kernel (spatial std 3 px, weight 3) and an appearance kernel (spatial std 80 px, colour std 13 in 0..255 RGB,
weight 10), unaries from the label map with 0.7 on the given label (pydensecrf's ``unary_from_labels``
``gt_prob``), 5 mean-field iterations. Labels: background + the objects present in the frame; a pixel can only
take one of those, so object ids are kept.

How the fully-connected messages are computed (ours, pure torch, no permutohedral lattice): each pixel's
neighbours are sampled on nested 5x5 grids at dilations 1, 4, 16 and 64 (``vos.nn_utils.neighbours``, the
gather the mixture's PAC-CRF uses), reaching +-128 px, 1.6 appearance stds; each sample is weighted by the area
it stands for (dilation squared), and each kernel is normalised to sum to one per pixel (pydensecrf normalises
symmetrically by default; row normalisation is ours). Runs at the frame's size, in float32. Measured on a 2-core
CPU shared with another job, one thread: 1.1 s a frame at 240x427, 8.0 s at 480x854 (memory: about 25 floats per
pixel per dilation, ~0.2 GB at 480x854).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vos.nn_utils import channel_argmax, neighbours

WINDOW = 5
DILATIONS = (1, 4, 16, 64)
MEASURED = "Measured on a 2-core CPU shared with another job (one thread): 1.1 s a frame at 240x427, 8.0 s at 480x854."


@dataclass(frozen=True)
class CrfSettings:
    iterations: int = 5
    confidence: float = 0.7  # unary probability of the given label
    smooth_sxy: float = 3.0
    smooth_weight: float = 3.0
    appearance_sxy: float = 80.0
    appearance_srgb: float = 13.0
    appearance_weight: float = 10.0


def _kernels(image: torch.Tensor, settings: CrfSettings) -> list[torch.Tensor]:
    """Per dilation, the combined normalised pairwise weights (25, H, W) of each pixel's sampled neighbours."""
    _, h, w = image.shape
    offsets = torch.arange(WINDOW, dtype=torch.float32, device=image.device) - WINDOW // 2
    ring = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(-1, 1, 1)  # (25, 1, 1), in grid steps
    ring_is_centre = ring == 0
    smooth, appearance = [], []
    for dilation in DILATIONS:
        inside = neighbours(torch.ones((1, 1, h, w), device=image.device), WINDOW, dilation).reshape(-1, h, w)
        colours = neighbours(image[None], WINDOW, dilation).reshape(3, -1, h, w)
        colour_distance = (colours - image[:, None]).pow(2).sum(0)  # (25, H, W)
        distance = ring * dilation**2
        area = float(dilation**2) * inside * (~ring_is_centre)
        smooth.append(area * torch.exp(-distance / (2 * settings.smooth_sxy**2)))
        appearance.append(
            area
            * torch.exp(
                -distance / (2 * settings.appearance_sxy**2) - colour_distance / (2 * settings.appearance_srgb**2)
            )
        )
    smooth_total = sum(k.sum(0) for k in smooth).clamp(min=1e-12)
    appearance_total = sum(k.sum(0) for k in appearance).clamp(min=1e-12)
    return [
        settings.smooth_weight * s / smooth_total + settings.appearance_weight * a / appearance_total
        for s, a in zip(smooth, appearance)
    ]


@torch.inference_mode()
def refine_labels(
    frame: np.ndarray, labels: np.ndarray, settings: CrfSettings | None = None, device: torch.device | str = "cpu"
) -> np.ndarray:
    """uint8 RGB (H, W, 3) and its uint8 label map (H, W) -> the CRF's label map, ids among background and those
    in ``labels``."""
    settings = settings or CrfSettings()
    present = np.union1d(np.unique(labels), [0]).astype(np.uint8)
    if len(present) < 2 or settings.iterations == 0:
        return labels.copy()
    index = np.searchsorted(present, labels)
    h, w = labels.shape
    count = len(present)
    image = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float()
    given = torch.from_numpy(index).to(device)
    one_hot = torch.nn.functional.one_hot(given, count).permute(2, 0, 1).float()  # (C, H, W)
    other = (1.0 - settings.confidence) / (count - 1)
    unary_logits = torch.log(one_hot * settings.confidence + (1 - one_hot) * other)  # -unary energy
    kernels = _kernels(image, settings)

    q = unary_logits.softmax(0)
    for _ in range(settings.iterations):
        message = torch.zeros_like(q)
        for kernel, dilation in zip(kernels, DILATIONS):
            near = neighbours(q[None], WINDOW, dilation).reshape(count, -1, h, w)  # (C, 25, H, W)
            message += (near * kernel[None]).sum(1)
        # Potts: the energy of label c is sum_q W (1 - Q_c(q)) = const - message_c.
        q = (unary_logits + message).softmax(0)
    return present[channel_argmax(q).cpu().numpy()]
