"""Layers shared by the networks of the appearance-refinement pipeline (OCLR-flow, mask selector, mask corrector).

All three releases build on the same pieces, and their checkpoints hold them under the same names:

- ``ConvBlock``: (3x3 conv without bias -> InstanceNorm without affine parameters -> LeakyReLU(0.01)) x 2; the
  norms hold no tensors, so a block is two conv weights (``conv1``, ``conv2``).
- ``UNetEncoder`` / ``UNetDecoder``: those blocks with 2x2 max-pooling down and 2x2 transposed convs up, with skips.
- ``Norm``: ``w * (x - mean) / (std + eps) + b`` with the UNBIASED std and eps added to the std, not the variance
  (it is not ``nn.LayerNorm``, and the difference shows in the masks).
- ``PackedAttention``: q, k, v projections packed in one (3E, E) ``in_proj_weight`` in that order, like
  ``nn.MultiheadAttention``; scores scaled by 1/sqrt(head dim). Attention runs through
  ``scaled_dot_product_attention`` with a boolean mask, a block of query rows at a time, so a clip's (N x N) score
  matrix is never held whole (the selector's is (112 T)^2 per head: 10 GB per layer at T = 100 in the release).
- ``EncoderLayer`` / ``DecoderLayer``: POST-norm transformer layers (residual, then ``Norm``), ReLU FFN.

Masks here say which pairs are FORBIDDEN (True = masked), as the releases build them; a row with every key
forbidden gets the releases' answer too (their -1e9 fill makes it a uniform average over all keys).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Query rows per scaled_dot_product_attention call: bounds the score block to rows x keys x heads floats.
ATTENTION_ROWS = 2048
# What the releases write into forbidden scores before the softmax.
FORBIDDEN_SCORE = -1e9


class ConvBlock(nn.Module):
    """(conv3x3, no bias -> InstanceNorm, no affine -> LeakyReLU) x 2. (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(F.instance_norm(self.conv1(x)))
        return F.leaky_relu(F.instance_norm(self.conv2(x)))


class UNetEncoder(nn.Module):
    """``encoder1`` .. ``encoder{levels}`` then ``bottleneck``, each after a 2x2 max-pool, channels doubling from
    ``features``. With ``mask_channels``, the first level is two blocks (``encoder1_rgb`` on the image,
    ``encoder1_mask`` on the masks) whose outputs are concatenated into ``encoder1``.

    forward -> [skip_1, ..., skip_levels], bottleneck (None when ``bottleneck=False`` was asked for).
    """

    def __init__(self, in_channels: int, features: int, levels: int, mask_channels: int | None = None):
        super().__init__()
        self.levels = levels
        if mask_channels is None:
            self.encoder1 = ConvBlock(in_channels, features)
        else:
            self.encoder1_rgb = ConvBlock(in_channels, features)
            self.encoder1_mask = ConvBlock(mask_channels, features)
            self.encoder1 = ConvBlock(2 * features, features)
        for level in range(2, levels + 1):
            setattr(self, f"encoder{level}", ConvBlock(features * 2 ** (level - 2), features * 2 ** (level - 1)))
        self.bottleneck = ConvBlock(features * 2 ** (levels - 1), features * 2**levels)

    def forward(
        self, image: Tensor, masks: Tensor | None = None, *, bottleneck: bool = True
    ) -> tuple[list[Tensor], Tensor | None]:
        if masks is None:
            x = self.encoder1(image)
        else:
            x = self.encoder1(torch.cat([self.encoder1_rgb(image), self.encoder1_mask(masks)], 1))
        skips = [x]
        for level in range(2, self.levels + 1):
            skips.append(getattr(self, f"encoder{level}")(F.max_pool2d(skips[-1], 2)))
        if not bottleneck:
            return skips, None
        return skips, self.bottleneck(F.max_pool2d(skips[-1], 2))


class UNetDecoder(nn.Module):
    """``upconv{L}`` (2x2 transposed conv) -> concat skip L -> ``decoder{L}`` ... down to level 1, then a 1x1
    ``conv`` to ``out_channels``. Input: (B, features * 2**L, h, w); output (B, out, h * 2**L, w * 2**L)."""

    def __init__(self, out_channels: int, features: int, levels: int):
        super().__init__()
        self.levels = levels
        for level in range(levels, 0, -1):
            wide, narrow = features * 2**level, features * 2 ** (level - 1)
            setattr(self, f"upconv{level}", nn.ConvTranspose2d(wide, narrow, kernel_size=2, stride=2))
            setattr(self, f"decoder{level}", ConvBlock(wide, narrow))
        self.conv = nn.Conv2d(features, out_channels, kernel_size=1)

    def forward(self, skips: list[Tensor], x: Tensor) -> Tensor:
        for level in range(self.levels, 0, -1):
            x = getattr(self, f"upconv{level}")(x)
            x = getattr(self, f"decoder{level}")(torch.cat([x, skips[level - 1]], 1))
        return self.conv(x)


class Norm(nn.Module):
    """``weight * (x - mean) / (std_unbiased + eps) + bias`` over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps) + self.bias


def attend(q: Tensor, k: Tensor, v: Tensor, forbidden: Tensor | None = None, rows: int = ATTENTION_ROWS) -> Tensor:
    """Softmax attention of (B, heads, Nq, d) queries over (B, heads, Nk, d) keys, scaled by 1/sqrt(d).

    ``forbidden`` (Nq, Nk) bool, True = masked. Computed ``rows`` queries at a time (each row's softmax is its own,
    so this only bounds memory). A row with every key forbidden gets the uniform average, as the releases' -1e9
    fill gives (scaled_dot_product_attention would return NaN there).
    """
    if forbidden is not None and bool(forbidden.all(-1).any()):
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return scores.masked_fill(forbidden, FORBIDDEN_SCORE).softmax(-1) @ v
    outputs = []
    for start in range(0, q.shape[-2], rows):
        allowed = None if forbidden is None else ~forbidden[start : start + rows]
        outputs.append(F.scaled_dot_product_attention(q[..., start : start + rows, :], k, v, attn_mask=allowed))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, -2)


class PackedAttention(nn.Module):
    """Multi-head attention with packed q/k/v projections (``in_proj_weight`` (3E, E), ``in_proj_bias``) and
    ``out_proj``. ``slot=True`` gives slot attention: softmax over the QUERIES, then each query's weights
    renormalised over the keys (the corrector's cross-attention)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _split(self, x: Tensor) -> Tensor:
        batch, count, dim = x.shape
        return x.view(batch, count, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor | None = None, forbidden: Tensor | None = None, *, slot=False):
        """x (B, Nq, E) attends over ``memory`` (B, Nk, E) (itself when None) -> (B, Nq, E)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        source = x if memory is None else memory
        q = self._split(F.linear(x, w_q, b_q))
        k = self._split(F.linear(source, w_k, b_k))
        v = self._split(F.linear(source, w_v, b_v))
        out = slot_attend(q, k, v, forbidden) if slot else attend(q, k, v, forbidden)
        return self.out_proj(out.transpose(1, 2).reshape(x.shape))


def slot_attend(q: Tensor, k: Tensor, v: Tensor, forbidden: Tensor | None = None) -> Tensor:
    """Slot attention: scores softmaxed over the query axis (queries compete for each key), then renormalised over
    keys per query. The matrix is (Nq, Nk) with few queries (the corrector's 49), so it is held whole."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if forbidden is not None:
        scores = scores.masked_fill(forbidden, FORBIDDEN_SCORE)
    weights = scores.softmax(-2)
    return (weights / weights.sum(-1, keepdim=True)) @ v


class EncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + self_attn(x)); x = norm2(x + FFN(x)). Names as the releases': ``self_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = Norm(dim), Norm(dim)
        self.self_attn = PackedAttention(dim, heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, forbidden: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.self_attn(x, forbidden=forbidden))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention, cross-attention to ``memory`` (``multihead_attn``), FFN; no masks."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = Norm(dim), Norm(dim), Norm(dim)
        self.self_attn = PackedAttention(dim, heads)
        self.multihead_attn = PackedAttention(dim, heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = self.norm1(x + self.self_attn(x))
        x = self.norm2(x + self.multihead_attn(x, memory))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class Layers(nn.Module):
    """Holds ``layers`` (an nn.ModuleList) under the releases' attribute names (``transformer_encoder.layers.0``)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class GridEmbed(nn.Module):
    """``proj``: a Linear from a grid of coordinates (each axis linspace(-1, 1, n)) to the model width. The
    releases add it to tokens as a soft position (and time) embedding."""

    def __init__(self, axes: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(axes, dim)

    def forward(self, *sizes: int) -> Tensor:
        """The embedding of the grid of ``sizes`` (one per axis, ``axes`` of them): (*sizes, dim)."""
        return self.proj(linspace_grid(*sizes, device=self.proj.weight.device, dtype=self.proj.weight.dtype))


def linspace_grid(*sizes: int, device=None, dtype=torch.float32) -> Tensor:
    """(*sizes, len(sizes)): each axis' coordinate in linspace(-1, 1, n), "ij" order, built in float64 with numpy
    and then cast to float32, as the releases build it (so the float32 values are the same to the last bit)."""
    axes = [np.linspace(-1.0, 1.0, num=n) for n in sizes]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).astype(np.float32)
    return torch.from_numpy(grid).to(device=device, dtype=dtype)


def same_frame(frames_q: Tensor, frames_k: Tensor) -> Tensor:
    """(Nq, Nk) bool: True where a query's and a key's frame indices are equal (the pairs the releases forbid)."""
    return frames_q[:, None] == frames_k[None, :]
