"""Fused CPU kernels for the PAC-CRF (numba), used by the mixture method's ``fused_crf`` option (on by default on CPU).

m[c, p] = sum_{c', o} W[c, c', o] K[o, p] Q[c', p + dil * o], with Q zero outside the frame, and its backward.
torch spells this as 25 shifted products of the padded Q followed by a (C, 25C) x (25C, HW) product: each
product is a pass over memory, and the frame-0 CRF training (2 x 100 Adam steps x 5 mean-field steps x 3
messages) is nothing but such passes. Here each message is one pass: every row of the output gathers its 25
neighbours' rows directly, without an intermediate (C, 25, H, W) tensor. The kernel K = exp(-0.5 ||f(p) - f(q)||^2)
and its gradient in the scales are one pass each as well, from the image, instead of 75 colour differences, a
3-deep product and an exp. The arithmetic is the same; only the order of the float summation differs from torch's
(its GEMM's blocking), so the CRF's logits differ in the last bits (the masks did not, on the footage measured).
Every sum runs in an order that does not depend on the number of threads.

numba compiles the kernels on first use (~12 s, cached on disk next to this file when it is writable).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from numba import njit, prange

KERNEL = 5
TAPS = KERNEL * KERNEL
# dL/dW is summed over this many row blocks, in parallel, then over the blocks: a fixed number, not the thread
# count, so that the sums (and the trained CRF) are the same on any machine.
WEIGHT_GRAD_BLOCKS = 16

# Loops run over 1-D row slices: numba vectorises those, while the same loops indexing the 3-D arrays stayed
# scalar (~10x slower).


@njit(inline="always", cache=True)
def _tap(o, y, dilation, height, width):  # pragma: no cover - compiled
    """Tap o's offset (dy, dx) at ``dilation`` and the columns x0:x1 of row y whose neighbour (y + dy, x + dx) is
    inside the frame: none (x0 == x1) when its row is outside."""
    dy = (o // KERNEL - KERNEL // 2) * dilation
    dx = (o % KERNEL - KERNEL // 2) * dilation
    x0, x1 = max(0, -dx), min(width, width - dx)
    if y + dy < 0 or y + dy >= height or x1 < x0:
        x1 = x0
    return dy, dx, x0, x1


@njit(parallel=True, cache=True)
def _gather(values, kernel, weight, dilation, kernel_at_source, out):  # pragma: no cover - compiled
    """out[c, p] = sum_{c', o} weight[c, c', o] * K[o, .] * values[c', p + dil * o], values zero outside the frame;
    K is taken at p (the message) or at p + dil * o (``kernel_at_source``: dL/dQ, the message's transpose, which
    runs this with the weight transposed and the dilation negated)."""
    channels, height, width = values.shape
    outputs = weight.shape[0]
    for y in prange(height):
        acc = np.zeros((outputs, width), dtype=values.dtype)
        for o in range(TAPS):
            dy, dx, x0, x1 = _tap(o, y, dilation, height, width)
            if x1 == x0:
                continue
            yy = y + dy
            k_row = kernel[o, yy, x0 + dx : x1 + dx] if kernel_at_source else kernel[o, y, x0:x1]
            for source in range(channels):
                v_row = values[source, yy, x0 + dx : x1 + dx]
                for c in range(outputs):
                    w = weight[c, source, o]
                    if w == 0:
                        continue
                    acc_row = acc[c, x0:x1]
                    for i in range(x1 - x0):
                        acc_row[i] += w * (k_row[i] * v_row[i])
        out[:, y, :] = acc


@njit(parallel=True, cache=True)
def _kernel_and_weight_grads(q, kernel, weight, dilation, grad, grad_kernel, grad_weight_parts):  # pragma: no cover
    """dL/dK (25, H, W) and dL/dW per block of rows (blocks, Cout, C, 25): each block sums dW per column, then once
    over the columns."""
    channels, height, width = q.shape
    outputs = weight.shape[0]
    blocks = grad_weight_parts.shape[0]
    for b in prange(blocks):
        lanes = np.zeros((outputs, channels, TAPS, width), dtype=q.dtype)
        for y in range(b * height // blocks, (b + 1) * height // blocks):
            for o in range(TAPS):
                dy, dx, x0, x1 = _tap(o, y, dilation, height, width)
                yy = y + dy
                gk_row = grad_kernel[o, y]
                gk_row[:] = 0
                if x1 == x0:
                    continue
                k_row = kernel[o, y, x0:x1]
                gk = gk_row[x0:x1]
                for c in range(outputs):
                    g_row = grad[c, y, x0:x1]
                    for source in range(channels):
                        w = weight[c, source, o]
                        q_row = q[source, yy, x0 + dx : x1 + dx]
                        lane = lanes[c, source, o, x0:x1]
                        for i in range(x1 - x0):
                            gk[i] += g_row[i] * (w * q_row[i])
                            lane[i] += g_row[i] * (k_row[i] * q_row[i])
        for c in range(outputs):
            for source in range(channels):
                for o in range(TAPS):
                    grad_weight_parts[b, c, source, o] = lanes[c, source, o].sum()


@njit(parallel=True, cache=True)
def _pac_kernel(image, inverse, dilation, out):  # pragma: no cover - compiled
    """out[o, p] = exp(-0.5 * (sum_i inverse_i (f_i(p) - f_i(p + dil * o))^2)), f = (y, x, colours): the PAC kernel
    (25, H, W) from the image (3, H, W) and the inverse squared scales (5,). Zero where the neighbour is outside the
    frame (Q is zero there, so the value never counts; zero keeps its gradient zero too)."""
    colours, height, width = image.shape
    for y in prange(height):
        for o in range(TAPS):
            dy, dx, x0, x1 = _tap(o, y, dilation, height, width)
            yy = y + dy
            row = out[o, y]
            row[:] = 0
            if x1 == x0:
                continue
            position = inverse[0] * np.float32(dy * dy) + inverse[1] * np.float32(dx * dx)
            distance = np.full(x1 - x0, position, dtype=out.dtype)
            for c in range(colours):
                here = image[c, y, x0:x1]
                there = image[c, yy, x0 + dx : x1 + dx]
                s = inverse[2 + c]
                for i in range(x1 - x0):
                    d = here[i] - there[i]
                    distance[i] += s * (d * d)
            part = row[x0:x1]
            for i in range(x1 - x0):
                part[i] = np.exp(np.float32(-0.5) * distance[i])


@njit(parallel=True, cache=True)
def _pac_kernel_grad(image, kernel, grad, dilation, rows_out):  # pragma: no cover - compiled
    """Per row y, d loss / d inverse (5,) summed over that row's cells and taps: rows_out (H, 5), float64.
    dK/d inverse_i = -0.5 K (f_i(p) - f_i(q))^2. Sums run in per-column lanes (which vectorise) and the rows are
    summed by the caller in a fixed order, so the result does not depend on the number of threads."""
    colours, height, width = image.shape
    for y in prange(height):
        lanes = np.zeros((2 + colours, width), dtype=np.float32)
        for o in range(TAPS):
            dy, dx, x0, x1 = _tap(o, y, dilation, height, width)
            yy = y + dy
            if x1 == x0:
                continue
            g_row = grad[o, y, x0:x1]
            k_row = kernel[o, y, x0:x1]
            position = lanes[0, x0:x1]
            for i in range(x1 - x0):
                position[i] += g_row[i] * k_row[i]
            for c in range(colours):
                here = image[c, y, x0:x1]
                there = image[c, yy, x0 + dx : x1 + dx]
                lane = lanes[2 + c, x0:x1]
                for i in range(x1 - x0):
                    d = here[i] - there[i]
                    lane[i] += g_row[i] * k_row[i] * (d * d)
            # the position terms: dy^2 and dx^2 are constant over the row, so they multiply the row's sum afterwards
            total = np.float64(lanes[0].sum())
            lanes[0] = 0
            rows_out[y, 0] += -0.5 * dy * dy * total
            rows_out[y, 1] += -0.5 * dx * dx * total
        for c in range(colours):
            rows_out[y, 2 + c] = -0.5 * np.float64(lanes[2 + c].sum())


def warm_up(dtype: torch.dtype = torch.float32) -> None:
    """Compile (the first time after installing: ~15 s) or load from numba's cache (well under a second) every
    kernel for ``dtype``, by running each once on a tiny frame, so that the caller can say what the wait is."""
    q = torch.rand(2, 3, 4, dtype=dtype, requires_grad=True)
    image = torch.rand(3, 3, 4, dtype=dtype) * 255
    inverse = torch.full((5,), 1e-3, dtype=dtype, requires_grad=True)
    weight = torch.rand(2, 2, TAPS, dtype=dtype, requires_grad=True)
    kernel = FusedPacKernel.apply(image, inverse, 1)
    FusedPacMessage.apply(q, kernel, weight, 1).sum().backward()


# numba's fallback threading layer (workqueue, where no OpenMP or TBB runtime loads) aborts the whole process when
# two threads launch parallel kernels at once, as two runs in the app's worker threads would: one launch at a time.
# Each launch already uses every core, so a second run waiting costs it little.
_LAUNCH = threading.Lock()


def _launch(kernel, *args) -> None:
    with _LAUNCH:
        kernel(*args)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


class FusedPacKernel(torch.autograd.Function):
    """The PAC kernel of ``crf.PacCrf.kernels`` for one pairwise term: image (3, H, W), inverse squared scales (5,)
    -> (25, H, W), differentiable in the scales; CPU tensors only."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, inverse: torch.Tensor, dilation: int) -> torch.Tensor:
        out = image.new_empty(TAPS, *image.shape[1:])
        _launch(_pac_kernel, _array(image), _array(inverse), dilation, out.numpy())
        ctx.save_for_backward(image, out)
        ctx.dilation = dilation
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, kernel = ctx.saved_tensors
        rows = np.zeros((image.shape[1], 2 + image.shape[0]), dtype=np.float64)
        _launch(_pac_kernel_grad, _array(image), _array(kernel), _array(grad), ctx.dilation, rows)
        return None, torch.from_numpy(rows.sum(0)).to(kernel.dtype), None


class FusedPacMessage(torch.autograd.Function):
    """The same message as ``crf._PacMessage`` (q (C, H, W), kernel (25, H, W), weight (Cout, C, 25) -> (Cout, H, W)),
    computed by the fused kernels above; CPU tensors only."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, kernel: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        out = q.new_empty(weight.shape[0], *q.shape[1:])
        _launch(_gather, _array(q), _array(kernel), _array(weight), dilation, False, out.numpy())
        ctx.save_for_backward(q, kernel, weight)
        ctx.dilation = dilation
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, kernel, weight = ctx.saved_tensors
        grad_q = torch.empty_like(q)
        grad_kernel = torch.empty_like(kernel)
        blocks = max(1, min(WEIGHT_GRAD_BLOCKS, q.shape[1]))
        parts = q.new_empty(blocks, *weight.shape)
        q_, kernel_, grad_ = _array(q), _array(kernel), _array(grad)
        weight_ = _array(weight)
        _launch(_kernel_and_weight_grads, q_, kernel_, weight_, ctx.dilation, grad_, grad_kernel.numpy(), parts.numpy())
        # dL/dQ as a gather: the cell q receives from every p = q - dil * o that read it.
        _launch(_gather, grad_, kernel_, _array(weight.transpose(0, 1)), -ctx.dilation, True, grad_q.numpy())
        return grad_q, grad_kernel, parts.sum(0), None
