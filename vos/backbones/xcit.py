"""XCiT-S12/8 (Ali et al., "XCiT: Cross-Covariance Image Transformers", NeurIPS 2021) with DINO's self-supervised
weights (Caron et al., ICCV 2021), on timm's ``xcit_small_12_p8`` architecture.

DINO publishes ``dino_xcit_small_12_p8_pretrain.pth``: the teacher backbone built by facebookresearch/xcit with
``num_classes=0``, in that repository's key layout. timm's model is the same network with two naming differences,
which ``convert_dino_xcit`` maps (the same two renames as timm's own ``checkpoint_filter_fn``):

- ``pos_embeder.*`` -> ``pos_embed.*`` (the Fourier position encoding's 1x1 projection);
- ``cls_attn_blocks.{i}.attn.qkv.{weight,bias}`` -> ``...attn.{q,k,v}.{weight,bias}`` (timm computes the class
  attention's query for the class token only, so it keeps the three projections apart).

Only the patch tokens are used here (``patch_features``); the class-attention blocks stay in the model so the
release file loads strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch

from vos.backbones import normalization
from vos.weights.checkpoint import unwrap_state_dict

ARCH = "xcit_small_12_p8_224"
EMBED_DIM = 384
DEPTH = 12
PATCH = 8


_WRAPPERS = ("teacher", "state_dict", "model")
_PREFIXES = ("module.", "backbone.")
# DINO training checkpoints carry the projection head beside the backbone; the backbone does not use it.
_DROP_PREFIXES = ("head.",)


def build_xcit_small_12_p8(device: str | torch.device | None = None) -> torch.nn.Module:
    """timm's XCiT-S12/8 without a classifier, random weights (load DINO's through ``convert_dino_xcit``)."""
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, device=device)
    return model.eval()


def convert_dino_xcit(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """DINO's ``dino_xcit_small_12_p8`` release (facebookresearch/xcit layout) -> timm ``xcit_small_12_p8``.

    Pure: no model, no I/O. Accepts the bare state dict or one wrapped in ``teacher``/``state_dict``/``model``,
    with or without ``module.``/``backbone.`` prefixes; drops a DINO projection head (``head.*``) if present.
    """
    source = unwrap_state_dict(state_dict, wrappers=_WRAPPERS, prefixes=_PREFIXES, every_key=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key.startswith(_DROP_PREFIXES):
            continue
        if key.startswith("pos_embeder."):
            key = "pos_embed." + key.removeprefix("pos_embeder.")
        if key.startswith("cls_attn_blocks.") and ".attn.qkv." in key:
            stem, kind = key.rsplit(".attn.qkv.", 1)  # kind: weight | bias
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{stem}.attn.{name}.{kind}"] = part.clone()
            continue
        out[key] = value
    # facebookresearch/xcit uses SyncBatchNorm, whose state has the same names as BatchNorm2d's; a file saved
    # without the step counters would otherwise fail the strict load for a buffer that inference never reads.
    for key in [k for k in out if k.endswith(".running_mean")]:
        counter = key.removesuffix("running_mean") + "num_batches_tracked"
        out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> DINO-normalised input (its video pipeline's std 0.228 for red)."""
    return normalization.normalise(images, normalization.IMAGENET_MEAN, normalization.DINO_STD)


def patch_features(model: torch.nn.Module, images: torch.Tensor, *, layer: int = -1, norm: bool = True) -> torch.Tensor:
    """Patch tokens of XCA block ``layer`` (0-based, negative from the end) as a (B, C, H/8, W/8) map.

    ``norm`` applies the model's final LayerNorm to them. H and W must be multiples of 8. The class token and the
    class-attention blocks are not run.
    """
    depth = len(model.blocks)
    index = layer + depth if layer < 0 else layer
    if not 0 <= index < depth:
        raise ValueError(f"XCiT has {depth} blocks; layer {layer} does not exist")
    if images.shape[-2] % PATCH or images.shape[-1] % PATCH:
        raise ValueError(f"XCiT-S12/8 needs a height and width divisible by {PATCH}, got {tuple(images.shape[-2:])}")
    (features,) = model.forward_intermediates(
        images, indices=[index], norm=norm, stop_early=True, output_fmt="NCHW", intermediates_only=True
    )
    return features
