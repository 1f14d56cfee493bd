"""Plain ViTs on timm's blocks, with the position-embedding resizes the specs require and access to q/k/v.

timm's ``VisionTransformer`` holds the parameters under the names the official checkpoints use (``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``),
so DINO, MAE and SimVOS files load with at most a prefix rename. What timm does not give is each release's way of
fitting the position embedding to another input size, and those differ in the last digits, which decide masks:

- ``dino_pos_embed``: DINO's ``interpolate_pos_encoding``: bicubic with a *scale factor* of
  ``(grid + 0.1) / sqrt(N)`` (not a target size: PyTorch then maps coordinates with that factor, not with
  in/out), applied even when the grid already matches (Betrayed by Attention, appearance refinement).
- ``resized_pos_embed``: bicubic to the target grid, ``align_corners=False``, no antialias (SimVOS). timm's own
  ``resample_abs_pos_embed`` antialiases by default and differs from both.

The model is built at its checkpoint's size (224) so the file loads strictly; ``forward`` here takes any size whose
sides are multiples of the patch, computing the resized embedding per call (it is cheap next to the blocks).
Attention runs through timm's fused path (``scaled_dot_product_attention``), which never materialises the (N x N)
matrix on backends with memory-efficient kernels.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def build_vit(
    *,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    img_size: int = 224,
    device: str | torch.device | None = None,
    **kwargs,
) -> nn.Module:
    """timm's ``VisionTransformer`` without a classifier (random weights): pre-norm blocks, mlp ratio 4, qkv bias,
    LayerNorm eps 1e-6, exact GELU, a class token; ``kwargs`` pass through (e.g. ``global_pool``, ``fc_norm``)."""
    args = {"num_classes": 0, "mlp_ratio": 4.0, "qkv_bias": True, **kwargs}
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, **args
    )
    if device is not None:
        model = model.to(device)
    return model.eval()


def patch_size_of(vit: nn.Module) -> int:
    size = vit.patch_embed.proj.kernel_size
    return int(size[0])


def grid_of(vit: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The token grid (h, w) for an input of ``height`` x ``width``; both must be multiples of the patch."""
    patch = patch_size_of(vit)
    if height % patch or width % patch:
        raise ValueError(f"this ViT needs a height and width divisible by {patch}, got {height}x{width}")
    return height // patch, width // patch


def patch_tokens(vit: nn.Module, images: Tensor) -> Tensor:
    """(B, 3, H, W) normalised images -> (B, h*w, C) patch embeddings (no position, no class token)."""
    grid_of(vit, images.shape[-2], images.shape[-1])
    return vit.patch_embed.proj(images).flatten(2).transpose(1, 2)


def _square_grid(pos_embed: Tensor, num_prefix: int) -> tuple[Tensor, Tensor, int]:
    prefix, spatial = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = math.isqrt(spatial.shape[1])
    if side * side != spatial.shape[1]:
        raise ValueError(f"position embedding with {spatial.shape[1]} spatial rows is not a square grid")
    grid = spatial.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    return prefix, grid, side


def dino_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """DINO's interpolation of a (1, prefix + S*S, C) embedding to ``grid`` = (h, w): (1, prefix + h*w, C).

    ``scale_factor = ((h + 0.1) / S, (w + 0.1) / S)`` with bicubic, ``align_corners=False``, no antialias; the
    0.1 makes the floor of the output size land on (h, w). The prefix rows (class token) are kept as they are.
    """
    prefix, spatial, side = _square_grid(pos_embed, num_prefix)
    h, w = grid
    resized = F.interpolate(
        spatial.float(), scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic", align_corners=False
    )
    if tuple(resized.shape[-2:]) != (h, w):
        raise ValueError(f"DINO interpolation gave a {tuple(resized.shape[-2:])} grid for {grid}")
    resized = resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)
    return torch.cat([prefix, resized], dim=1)


def resized_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """The spatial rows of a (1, prefix + S*S, C) embedding resized to ``grid`` = (h, w): (1, h*w, C).

    Bicubic to the target size, ``align_corners=False``, no antialias (SimVOS's ``pos_embed_new``); the prefix
    rows are dropped.
    """
    _, spatial, _ = _square_grid(pos_embed, num_prefix)
    h, w = grid
    resized = F.interpolate(spatial.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)


def run_blocks(vit: nn.Module, tokens: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
    """``tokens`` (B, N, C) through ``vit.blocks[start:stop]``."""
    for block in vit.blocks[start:stop]:
        tokens = block(tokens)
    return tokens


def block_qkv(block: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of ``block``'s attention for its input ``tokens`` (B, N, C): each (B, heads, N, head_dim).

    The projection includes its bias; no scaling is applied (the attention multiplies by ``head_dim ** -0.5``).
    """
    attn = block.attn
    batch, count, dim = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(batch, count, 3, attn.num_heads, dim // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


class DinoViT(nn.Module):
    """A DINO ViT (S/8, S/16, ...) at any input size with DINO's position interpolation.

    Holds the timm model as ``vit`` (parameter names ``vit.*`` = timm's = DINO's under a prefix, so a method that
    stores it under another attribute, e.g. ``encoder``, maps one prefix). ``tokens(images)`` gives the final
    tokens after ``norm`` (DINO's ``get_intermediate_layers(n=1)``) without the class token, as (B, C, h, w);
    ``last_keys(images)`` the last block's key projection (heads concatenated, bias included) as (B, C, h, w).
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Class token + patch tokens + DINO-interpolated position embedding: (B, 1 + h*w, C), (h, w)."""
        grid = grid_of(self.vit, images.shape[-2], images.shape[-1])
        patches = patch_tokens(self.vit, images)
        cls = self.vit.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + dino_pos_embed(self.vit.pos_embed, grid)
        return tokens, grid

    def tokens(self, images: Tensor) -> Tensor:
        x, (h, w) = self.embed(images)
        x = self.vit.norm(run_blocks(self.vit, x))
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def last_keys(self, images: Tensor) -> Tensor:
        x, (h, w) = self.embed(images)
        x = run_blocks(self.vit, x, 0, len(self.vit.blocks) - 1)
        _, k, _ = block_qkv(self.vit.blocks[-1], x)
        keys = k[:, :, 1:].permute(0, 1, 3, 2).reshape(x.shape[0], -1, h, w)  # heads concatenated: (B, C, h, w)
        return keys
