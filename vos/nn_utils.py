"""Numerical helpers shared by methods (no layers here: shared layers live in vos/backbones/ and vos/nn.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def neighbours(x: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size, H, W): each pixel's ``size`` x ``size`` neighbours ``dilation`` pixels
    apart, centred on it, zero outside the frame (the gather of the local CRFs' messages)."""
    n, c, h, w = x.shape
    cols = F.unfold(x, size, dilation=dilation, padding=(size // 2) * dilation)
    return cols.view(n, c, size, size, h, w)
