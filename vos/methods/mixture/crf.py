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
directly, with the same random draws in the same order at construction. Two things are arranged for speed, both
equal to the release up to float rounding (tests/test_mixture.py checks against a plain unfold statement):

- the messages gather the 25 neighbours as shifted views of the zero-padded Q, with a hand-written backward
  (``_PacMessage``), instead of unfold/col2im: with a dilation of 64, im2col and its backward were most of the
  frame-0 training (the issue's profile: 59% in the kernels' backward, 8% in im2col);
- ||f(p) - f(q)||^2 is summed as (x_i(p) - x_i(q))^2 / s_i^2 rather than (x_i(p)/s_i - x_i(q)/s_i)^2, so the
  squared colour differences are taken once per training step without autograd and only 1/s^2 is differentiated.

With ``fused=True`` (the method's ``fused_crf`` option, its default on CPU) the kernels and messages on CPU run as
numba kernels (``fused.py``), one pass over memory each: the same arithmetic in another summation order, so not the
same bits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vos.nn_utils import pad_for_windows, shifted_window

KERNEL = 5
OFFSETS = [(u, v) for u in range(KERNEL) for v in range(KERNEL)]  # row-major, as unfold orders a 5x5 window
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

    def __init__(self, num_classes: int, *, generator: torch.Generator, num_steps: int = 5, fused: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.num_steps = num_steps
        # fused: the kernels and messages on CPU through one-pass numba kernels (vos.methods.mixture.fused); the
        # same arithmetic in another float summation order.
        self.fused = fused
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

    def _fused_on(self, tensor: torch.Tensor) -> bool:
        """Whether this CRF runs on numba's fused kernels (imported, with numba, only then)."""
        return self.fused and tensor.device.type == "cpu"

    def kernels(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Per pairwise term, K(p, p + dil*o) as (25, H, W) from a (1, 3, H, W) image.

        ||f(p) - f(q)||^2 is taken as sum_i (x_i(p) - x_i(q))^2 / s_i^2: the squared differences do not depend on
        the learnable scales, so they are computed once, without autograd, and only 1/s^2 is differentiated."""
        if self._fused_on(image):
            from vos.methods.mixture.fused import FusedPacKernel

            return [FusedPacKernel.apply(image[0], s.pow(-2), dil) for s, dil in zip(self.feat_scales, DILATIONS)]
        out = []
        for scales, dil in zip(self.feat_scales, DILATIONS):
            with torch.no_grad():
                colour_diff = squared_colour_differences(image[0], dil)
            steps = torch.tensor(
                [[(dil * (u - KERNEL // 2)) ** 2, (dil * (v - KERNEL // 2)) ** 2] for u, v in OFFSETS],
                dtype=scales.dtype,
                device=image.device,
            )
            inverse = scales.pow(-2)
            distance = torch.tensordot(inverse[2:], colour_diff, dims=1) + (steps @ inverse[:2]).view(-1, 1, 1)
            out.append(torch.exp(-0.5 * distance))
        return out

    def forward(self, unary: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        n, c, h, w = unary.shape
        if n != 1:
            raise ValueError(f"PacCrf refines one frame at a time, got a batch of {n}.")
        kernels = self.kernels(image)
        potts_mask = torch.eye(c, device=unary.device).unsqueeze(-1)  # one filter for every class, none across
        message = _PacMessage
        if self._fused_on(unary):
            from vos.methods.mixture.fused import FusedPacMessage

            message = FusedPacMessage
        unary = unary * UNARY_SCALE
        log_q = unary
        for step in range(self.num_steps):
            q = F.softmax(log_q, dim=1)[0]
            log_q = unary * self.unary_weight[step]
            for term, (kernel, dil, sign) in enumerate(zip(kernels, DILATIONS, PAIRWISE_SIGNS)):
                if term < 2:  # sum over (c', u, v) of W[c, c', u, v] * K * Q_c'
                    weight = self.class_weight[step, term].reshape(c, c, len(OFFSETS))
                else:
                    weight = potts_mask * self.potts_weight[step].reshape(1, 1, -1)
                msg = message.apply(q, kernel, weight, dil)
                log_q = log_q - msg.unsqueeze(0) * sign
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


class _PacMessage(torch.autograd.Function):
    """m[c, p] = sum_{c', o} W[c, c', o] K[o, p] Q[c', p + dil * o] with Q zero outside the frame.

    Written as 25 shifted views of the padded Q instead of an unfold: im2col and its backward (col2im) with a
    dilation of 64 were most of the CRF's training time, while a shifted view costs one pass over one frame.
    q: (C, H, W); kernel: (25, H, W); weight: (Cout, C, 25). Returns (Cout, H, W).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, kernel: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        c, h, w = q.shape
        padded = pad_for_windows(q, KERNEL, dilation)
        products = q.new_empty(c, len(OFFSETS), h, w)
        for o, offset in enumerate(OFFSETS):
            torch.mul(shifted_window(padded, offset, dilation, (h, w)), kernel[o], out=products[:, o])
        out = weight.reshape(weight.shape[0], -1) @ products.view(-1, h * w)
        ctx.save_for_backward(padded, kernel, weight, products)
        ctx.dilation = dilation
        return out.view(-1, h, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        padded, kernel, weight, products = ctx.saved_tensors
        dilation = ctx.dilation
        c, taps, h, w = products.shape
        grad = grad.reshape(grad.shape[0], h * w)
        grad_weight = (grad @ products.view(-1, h * w).t()).view_as(weight)
        mixed = _outer_sum(weight.reshape(weight.shape[0], -1).t(), grad).view(c, taps, h, w)  # dm/d(K Q) per c', o
        grad_kernel = torch.empty_like(kernel)
        grad_padded = torch.zeros_like(padded)
        for o, offset in enumerate(OFFSETS):
            window = shifted_window(padded, offset, dilation, (h, w))
            torch.mul(mixed[0, o], window[0], out=grad_kernel[o])  # sum over classes without a (C, H, W) temporary
            for k in range(1, c):
                grad_kernel[o].addcmul_(mixed[k, o], window[k])
            shifted_window(grad_padded, offset, dilation, (h, w)).addcmul_(mixed[:, o], kernel[o])
        reach = (KERNEL // 2) * dilation
        return grad_padded[:, reach : reach + h, reach : reach + w], grad_kernel, grad_weight, None


def _outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b (k, n) for a tiny k (the number of classes) as k broadcast products: BLAS's kernels for an inner
    dimension of 2 or 3 ran ~20x slower than the memory traffic allows here."""
    out = a[:, :1] * b[:1]
    for i in range(1, a.shape[1]):
        out.addcmul_(a[:, i : i + 1], b[i : i + 1])
    return out


def squared_colour_differences(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """(I_c(p) - I_c(p + dil*o))^2 for the 25 offsets o: (3, 25, H, W) from a (3, H, W) image.

    Outside the frame the value is meaningless and harmless: Q is zero there, so the kernel never counts."""
    c, h, w = image.shape
    padded = pad_for_windows(image, KERNEL, dilation)
    out = image.new_empty(c, len(OFFSETS), h, w)
    for o, offset in enumerate(OFFSETS):
        torch.sub(shifted_window(padded, offset, dilation, (h, w)), image, out=out[:, o])
    return out.square_()


def dual_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_p sum_c -ln(1e-5 + 1 - (softmax_c - y_c)^2) (Li et al.'s dual focal loss, as the release)."""
    prob = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(2, 0, 1)[None].to(prob.dtype)
    return -torch.log(FOCAL_EPS + 1.0 - (prob - onehot) ** 2).sum(dim=1).mean()
