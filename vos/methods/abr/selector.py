"""The mask selector: predicts where each flow proposal is wrong and scores every frame's mask for one object.

Layout of the release (3,301,475 parameters in 72 tensors; its file prefixes every key with ``selector.``):

- ``encoder``: RGB block 3 -> 16 and mask block 1 -> 16, concatenated -> 16, then 32, 64, 128, bottleneck 256 at
  8x14 (input 128x224).
- ``mlp``: Linear(640 -> 256) over the bottleneck concatenated with the frame's DINO ViT-S/16 tokens (256 + 384).
- ``transformer_enc``: + ``encoder_positime`` (Linear(3 -> 256) of the (t, h, w) grid); 3 post-norm layers, d 256,
  8 heads, FFN 256, same-frame pairs forbidden; one sequence of T * 112 tokens per object (all frames of the clip).
- ``decoder``: UNet decoder -> 3 logits at 128x224, softmax over channels = error map (FP, FN, correct).

Score of frame i: softmax over the clip's frames of -(sum of channels 0 and 2) / (mask area + 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from vos.nn import EncoderLayer, GridEmbed, Layers, UNetDecoder, UNetEncoder, same_frame

WIDTH = 16
DIM = WIDTH * 16  # 256
DINO_DIM = 384
HEADS = 8
LAYERS = 3
EXEMPLARS = 10  # t: exemplar frames kept per object


class MaskSelector(nn.Module):
    """rgbs (T, 3, 128, 224) normalised, mask (T, 1, 128, 224) of one object, DINO S/16 tokens (T, 8, 14, 384)
    -> error map probabilities (T, 3, 128, 224)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = UNetEncoder(3, WIDTH, levels=4, mask_channels=1)
        self.mlp = nn.Linear(DIM + DINO_DIM, DIM)
        self.transformer_enc = nn.Module()
        self.transformer_enc.encoder_positime = GridEmbed(3, DIM)
        self.transformer_enc.transformer_encoder = Layers([EncoderLayer(DIM, HEADS, DIM) for _ in range(LAYERS)])
        self.decoder = UNetDecoder(3, WIDTH, levels=4)

    def forward(self, rgbs: Tensor, mask: Tensor, tokens: Tensor) -> Tensor:
        frames = rgbs.shape[0]
        skips, bottleneck = self.encoder(rgbs, mask)
        _, dim, h, w = bottleneck.shape
        x = self.mlp(torch.cat([bottleneck.permute(0, 2, 3, 1), tokens], -1))
        x = (x + self.transformer_enc.encoder_positime(frames, h, w)).reshape(1, frames * h * w, dim)
        frame_of = torch.arange(frames, device=x.device).repeat_interleave(h * w)
        forbidden = same_frame(frame_of, frame_of)
        for layer in self.transformer_enc.transformer_encoder.layers:
            x = layer(x, forbidden)
        x = x.view(frames, h, w, dim).permute(0, 3, 1, 2).contiguous()
        return self.decoder(skips, x).softmax(1)


def frame_scores(errors: Tensor, mask: Tensor) -> Tensor:
    """(T, 3, H, W) error probabilities and (T, H, W) binary mask -> (T,) scores summing to 1 over the clip."""
    error = errors[:, 0::2].sum(dim=(1, 2, 3))
    area = mask.sum(dim=(-2, -1))
    return (-error / (area + 1)).softmax(0)


def select_exemplars(scores: np.ndarray, count: int = EXEMPLARS) -> np.ndarray:
    """(T, K) scores -> (K, n) frame indices, n = min(count, T): each object's n best frames, ascending.

    The release's ``np.argpartition(scores, -n, axis=0)[-n:]`` then a sort per object; it raises for T < 10, where
    every frame is kept here.
    """
    count = min(count, scores.shape[0])
    best = np.argpartition(scores, -count, axis=0)[-count:]
    return np.sort(best, axis=0).T
