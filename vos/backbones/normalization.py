"""Input normalisation constants, in one place, and the one function that applies them.

Each spec names the statistics its weights were trained with; a wrong std (0.229 vs 0.228) is invisible in a
picture and still changes masks, so methods pick one of these by name instead of re-typing numbers.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINO's video pipelines (and the appearance-refinement release) use 0.228 for red: a typo upstream, but the
# weights were trained with it.
DINO_STD = (0.228, 0.224, 0.225)
# Kinetics-400 statistics (Betrayed by Attention at test time).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (images - mean) / std, per channel."""
    shape = (1, 3, 1, 1) if images.dim() == 4 else (3, 1, 1)
    return (images - images.new_tensor(mean).view(shape)) / images.new_tensor(std).view(shape)


def frames_to_tensor(
    frames: np.ndarray | list[np.ndarray],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 RGB frames (T, H, W, 3) or one (H, W, 3) -> normalised float32 (T, 3, H, W): /255, then the stats."""
    array = np.array(frames, dtype=np.uint8)  # a copy: decoded frames may be read-only, which torch warns about
    if array.ndim == 3:
        array = array[None]
    images = torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255)
    return normalise(images, mean, std)
