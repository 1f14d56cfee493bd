"""The release's pixel-adaptive convolutional CRF (Su et al., "Pixel-Adaptive Convolutional Neural Networks",
CVPR 2019, as configured by the mixture release) and its frame-0 training.

Mean-field with ``num_steps`` steps, each with its own parameters ("loose" PAC-CRF). Per step:
Q = softmax(logQ); logQ = u * unary - m0 - m1 + m2, with unary = 5 * one-hot(label), logQ_0 = unary, and

- m0, m1: class-to-class 5x5 kernels at dilation 64 and 16: m_c(p) = sum_{c',u,v} W[c,c',u,v] K(p,q) Q_c'(q),
  q = p + dil*(u,v); initial W = (1 - I) x g + U(+-5e-4), g = 25 * normalised 5x5 Gaussian (sigma 1.25) with a
  zero centre;
- m2: a Potts message, one 5x5 filter shared by all classes at dilation 1 (initial g + U(+-5e-4)), added;
- K(p,q) = exp(-0.5 ||f(p) - f(q)||^2), f = (y, x, R, G, B) / scales, one learnable 5-vector of scales per kernel
  (initially 16.25, 16.25, 30, 30, 30); zero padding for f and Q.

The release builds this from NVIDIA's pacnet (PacCRFLoose of PacConv2d); this is the same computation written
directly, with the same random draws in the same order at construction.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vos.nn_utils import neighbours

KERNEL = 5
DILATIONS = (64, 16, 1)  # m0, m1: class-to-class; m2: Potts
PAIRWISE_SIGNS = (1.0, 1.0, -1.0)  # logQ -= msg * sign
UNARY_SCALE = 5.0
UNARY_WEIGHT = 0.85
POSITION_SCALE = ((KERNEL - 1) * 16 + 1) / 4.0  # 16.25, from the release's "4d_5_16_1" kernel string
COLOUR_SCALE = 30.0
PERTURBATION = 0.001
FOCAL_EPS = 1e-5


def gaussian_filter(width: int = KERNEL) -> np.ndarray:
    """pacnet's truncated 2-D Gaussian (sigma = width/4), normalised, times width^2, centre zeroed (fp32)."""
    sigma = float(width) / 4
    r = np.arange(-(width // 2), (width // 2) + 1, dtype=np.float32)
    g1 = np.exp(-0.5 * r * r / (sigma * sigma))
    g2 = g1.reshape(-1, 1) * g1
    g2 /= g2.sum()
    g2 = g2 * width * width
    g2[width // 2, width // 2] = 0
    return g2.astype(np.float32)


class PacCrf(nn.Module):
    """Loose PAC-CRF over ``num_classes`` labels. ``forward(unary, image)``: one-hot (1, C, H, W) and RGB 0..255
    (1, 3, H, W) -> logQ (1, C, H, W)."""

    def __init__(self, num_classes: int, *, generator: torch.Generator, num_steps: int = 5):
        super().__init__()
        self.num_classes = num_classes
        self.num_steps = num_steps
        g = torch.from_numpy(gaussian_filter())
        compat = (1.0 - torch.eye(num_classes)).view(num_classes, num_classes, 1, 1) * g
        class_shape = (num_classes, num_classes, KERNEL, KERNEL)
        potts_shape = (1, 1, KERNEL, KERNEL)
        # pacnet perturbs each filter when it is built, again when the kernel is added to its step, and once more
        # when the finished CRF resets every step; only the last draw stays.
        for _ in range(num_steps):
            for shape in (class_shape, class_shape, potts_shape):
                torch.rand(shape, generator=generator)
                torch.rand(shape, generator=generator)
        class_weights, potts_weights = [], []
        for _ in range(num_steps):
            pair = []
            for _ in range(2):
                pair.append(compat + (torch.rand(class_shape, generator=generator) - 0.5) * PERTURBATION)
            class_weights.append(torch.stack(pair))
            potts_weights.append((g + (torch.rand(potts_shape, generator=generator) - 0.5) * PERTURBATION)[0, 0])
        self.class_weight = nn.Parameter(torch.stack(class_weights))  # (steps, 2, C, C, 5, 5)
        self.potts_weight = nn.Parameter(torch.stack(potts_weights))  # (steps, 5, 5)
        self.unary_weight = nn.Parameter(torch.full((num_steps,), UNARY_WEIGHT))
        scales = [POSITION_SCALE] * 2 + [COLOUR_SCALE] * 3
        self.feat_scales = nn.Parameter(torch.tensor([scales] * len(DILATIONS)))  # (3, 5)

    def kernels(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Per pairwise term, K(p, p + dil*(u,v)) as (1, 1, 5, 5, H, W)."""
        h, w = image.shape[-2:]
        rows, cols = torch.meshgrid(
            torch.arange(h, device=image.device, dtype=torch.float32),
            torch.arange(w, device=image.device, dtype=torch.float32),
            indexing="ij",
        )
        mesh = torch.stack([rows, cols])[None]
        out = []
        for scales, dil in zip(self.feat_scales, DILATIONS):
            feat = torch.cat(
                [mesh * (1.0 / scales[:2].view(-1, 1, 1)), image * (1.0 / scales[2:].view(-1, 1, 1))], dim=1
            )
            cols_ = _unfold(feat, dil)  # (1, 5, 5, 5, H, W)
            centre = cols_[:, :, KERNEL // 2 : KERNEL // 2 + 1, KERNEL // 2 : KERNEL // 2 + 1]
            out.append(torch.exp(-0.5 * (cols_ - centre).pow(2).sum(dim=1, keepdim=True)))
        return out

    def forward(self, unary: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        n, c, h, w = unary.shape
        kernels = [k.view(1, 1, KERNEL * KERNEL, h * w) for k in self.kernels(image)]
        unary = unary * UNARY_SCALE
        log_q = unary
        for step in range(self.num_steps):
            q = F.softmax(log_q, dim=1)
            log_q = unary * self.unary_weight[step]
            for term, (kernel, dil, sign) in enumerate(zip(kernels, DILATIONS, PAIRWISE_SIGNS)):
                weighted = _unfold(q, dil).view(c, KERNEL * KERNEL, h * w) * kernel[0]  # (C, 25, HW)
                if term < 2:  # sum over (c', u, v) of W[c, c', u, v] * K * Q_c'
                    msg = self.class_weight[step, term].reshape(c, -1) @ weighted.reshape(-1, h * w)
                else:  # one filter for every class
                    msg = (self.potts_weight[step].reshape(1, 1, -1) @ weighted).reshape(c, h * w)
                log_q = log_q - msg.view(n, c, h, w) * sign
        return log_q

    def fit(
        self,
        unary: torch.Tensor,
        image: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
        iterations: int = 100,
        lr: float = 0.02,
        noise: float = 10.0,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[float]:
        """Frame-0 training: Adam (amsgrad) on the dual focal loss against ``target`` (H, W) labels, fresh
        N(0, noise^2) image noise each step (drawn on the CPU generator, clipped to 0..255). Returns the losses.
        ``on_step(done, iterations)`` is called after each step (progress; it may raise to stop)."""
        optimiser = torch.optim.Adam(self.parameters(), lr=lr, amsgrad=True)
        losses = []
        for step in range(iterations):
            jitter = torch.randn(image.shape, generator=generator).to(image.device)
            noisy = (image + noise * jitter).clip(0, 255)
            loss = dual_focal_loss(self(unary, noisy), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, iterations)
        for p in self.parameters():
            p.requires_grad_(False)
        return losses


def _unfold(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """(1, C, H, W) -> (1, C, 5, 5, H, W) neighbours at ``dilation``, zero outside the frame."""
    return neighbours(x, KERNEL, dilation)


def dual_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_p sum_c -ln(1e-5 + 1 - (softmax_c - y_c)^2) (Li et al.'s dual focal loss, as the release)."""
    prob = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(2, 0, 1)[None].to(prob.dtype)
    return -torch.log(FOCAL_EPS + 1.0 - (prob - onehot) ** 2).sum(dim=1).mean()
