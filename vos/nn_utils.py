"""Numerical helpers shared by methods (no layers here: shared layers live in vos/backbones/ and vos/nn.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(dim=0)`` (the first maximum, int64) for a (C, ...) tensor with a few channels, as one pass per
    channel: torch's argmax over a short leading dimension ran 10-30x slower (30-70 ms for a 480x832 label map).
    Inputs holding NaN take torch's own argmax, which ranks NaN highest."""
    if bool(x.isnan().any()):
        return x.argmax(dim=0)
    best = x[0]
    index = torch.zeros(x.shape[1:], dtype=torch.long, device=x.device)
    for c in range(1, x.shape[0]):
        better = x[c] > best  # strictly: a tie keeps the earlier channel, as argmax does
        best = torch.where(better, x[c], best)
        index.masked_fill_(better, c)
    return index


def rowblock_mm(a: torch.Tensor, b: torch.Tensor, *, block: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """a (n, d) @ b (d, m) as products of exactly ``block`` rows of ``a`` (the last block zero-padded), written into
    ``out`` (n, m) when given.

    BLAS picks its kernel, and so its summation order, by the size of a product: one product over all n rows can
    differ in the last bits from the same rows taken in chunks. Fixed-size products make every output row the same
    whatever n, so a method that processes a frame in chunks (to bound memory) gives exactly the masks of the whole
    frame at once."""
    n = a.shape[0]
    pad = -n % block
    if pad:
        a = F.pad(a, (0, 0, 0, pad))
    result = out if out is not None and not pad else a.new_empty(n + pad, b.shape[1])
    for start in range(0, n + pad, block):
        torch.mm(a[start : start + block], b, out=result[start : start + block])
    if out is not None and result is not out:
        return out.copy_(result[:n])
    return result[:n]


def pad_for_windows(x: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """``x`` (..., H, W) zero-padded by (size // 2) * dilation on every side, for ``shifted_window``."""
    reach = (size // 2) * dilation
    return F.pad(x, (reach, reach, reach, reach))


def shifted_window(padded: torch.Tensor, offset: tuple[int, int], dilation: int, size: tuple[int, int]) -> torch.Tensor:
    """The view of ``padded`` (from ``pad_for_windows``) whose pixel p is the original's neighbour at window
    position ``offset`` = (u, v): p + dilation * (u - size // 2, v - size // 2), zero outside the frame."""
    u, v = offset
    h, w = size
    return padded[..., u * dilation : u * dilation + h, v * dilation : v * dilation + w]


def neighbours(x: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size, H, W): each pixel's ``size`` x ``size`` neighbours ``dilation`` pixels
    apart, centred on it, zero outside the frame (the gather of the local CRFs' messages).

    Copied from shifted views of the padded input rather than by unfold: the same values, but im2col with a large
    dilation was many times slower than one copy per window position."""
    n, c, h, w = x.shape
    padded = pad_for_windows(x, size, dilation)
    out = x.new_empty(n, c, size, size, h, w)
    for u in range(size):
        for v in range(size):
            out[:, :, u, v] = shifted_window(padded, (u, v), dilation, (h, w))
    return out
