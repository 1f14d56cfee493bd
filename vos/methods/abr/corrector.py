"""The mask corrector: an object-centric transformer that re-draws each object's mask from its exemplars.

Layout of the release (16,243,844 parameters in 139 tensors), attribute names as in its checkpoint:

- ``rgbmaskenc.encoder_rgbmask``: RGB block 3 -> 64 and a block over the 3 object masks as channels (3 -> 64),
  concatenated -> 64, then 128 and 256 (skips for the decoder). Its 256 -> 512 ``bottleneck`` is in the file but
  its output is never used, so it is not run here.
- ``rgbmaskenc.encoder_posi`` (Linear(2 -> 384) of the (h, w) grid) and ``encoder_queryinfo`` (Linear(1 -> 384)
  evaluated at linspace(-1, 1, 7)[k] for object k): exemplar keys = DINO S/8 tokens + the first + the second where
  the exemplar mask (bilinear to 16x28) exceeds 0.5.
- ``rgbglobalcorrector.transdec``: 3 object queries (score-weighted masked means of exemplar tokens) + 4
  ``slots_embedding`` background queries, each repeated over the 7 target frames, + ``encoder_querytime``
  (Linear(2 -> 384) of the (query, frame) grid); target keys = DINO S/8 tokens + ``encoder_positime`` (Linear(3 ->
  384) of the (t, h, w) grid). 3 post-norm layers: self-attention -> slot attention over the target keys (a query
  never sees its own frame) -> FFN -> slot attention over the exemplar keys (never the query's own absolute frame)
  -> FFN. ``heatmap``: per head the unscaled dot product of object query (k, i) with frame i's target keys -> 8
  maps -> Linear(8 -> 512) + ReLU.
- ``rgbglobalcorrector.{encoder_posi, mlp, mlp_feat, mlp_mask1, mlp_mask2}``: the feature-reconstruction head
  (paper Eq. 7), used in training only: inference never runs it; the optional test-time adaptation does
  (``forward(..., reconstruct=True)``, ``adaptation.py``). As the release's forward computes it: every query's
  output (7 slots x 7 frames) broadcast over the 16x28 grid + ``encoder_posi`` (Linear(2 -> 384) of the (h, w)
  grid) -> ``mlp`` (Linear + ReLU) -> ``mlp_feat`` gives the slot's DINO feature guess, ``mlp_mask1`` (Linear(384
  -> 512) + ReLU) -> ``mlp_mask2`` (-> 1) its alpha logit, softmax over the 7 slots; the reconstruction is the
  alpha-weighted sum of the slots' guesses.
- ``rgbmaskdec``: ``mlp_mix`` Linear(3 * 512 -> 512) over the objects' maps, ``decoder_m`` UNet decoder with the
  encoder's skips -> 3 logits at 128x224.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vos.nn import GridEmbed, Layers, Norm, PackedAttention, UNetDecoder, UNetEncoder, same_frame

WIDTH = 64
BOTTLENECK = WIDTH * 8  # 512
DIM = 384
HEADS = 8
LAYERS = 3
WINDOW = 7  # T: target frames per pass
BACKGROUND = 4  # learned background queries


class SlotDecoderLayer(nn.Module):
    """Post-norm: self-attention -> slot attention to the targets -> FFN -> slot attention to the exemplars -> FFN."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        for i in range(1, 6):
            setattr(self, f"norm{i}", Norm(dim))
        self.self_attn = PackedAttention(dim, heads)
        self.multihead_attn = PackedAttention(dim, heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.multihead_attn2 = PackedAttention(dim, heads)
        self.linear2_1 = nn.Linear(dim, hidden)
        self.linear2_2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, targets: Tensor, exemplars: Tensor, target_forbidden: Tensor, exemplar_forbidden):
        x = self.norm1(x + self.self_attn(x))
        x = self.norm2(x + self.multihead_attn(x, targets, target_forbidden, slot=True))
        x = self.norm3(x + self.linear2(F.relu(self.linear1(x))))
        x = self.norm4(x + self.multihead_attn2(x, exemplars, exemplar_forbidden, slot=True))
        return self.norm5(x + self.linear2_2(F.relu(self.linear2_1(x))))


class MaskCorrector(nn.Module):
    """One window of 7 target frames -> (7, 3, 128, 224) mask logits; see ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.rgbmaskenc = nn.Module()
        self.rgbmaskenc.encoder_rgbmask = UNetEncoder(3, WIDTH, levels=3, mask_channels=3)
        self.rgbmaskenc.encoder_posi = GridEmbed(2, DIM)
        self.rgbmaskenc.encoder_queryinfo = GridEmbed(1, DIM)

        self.rgbglobalcorrector = corrector = nn.Module()
        corrector.transdec = nn.Module()
        corrector.transdec.slots_embedding = nn.Embedding(BACKGROUND, DIM)
        corrector.transdec.encoder_querytime = GridEmbed(2, DIM)
        corrector.transdec.encoder_positime = GridEmbed(3, DIM)
        corrector.transdec.transformer_decoder = Layers([SlotDecoderLayer(DIM, HEADS, DIM) for _ in range(LAYERS)])
        corrector.transdec.heatmap = nn.Module()
        corrector.transdec.heatmap.mlp = nn.Sequential(nn.Linear(HEADS, BOTTLENECK), nn.ReLU(inplace=True))
        corrector.encoder_posi = GridEmbed(2, DIM)
        corrector.mlp = nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU(inplace=True))
        corrector.mlp_feat = nn.Linear(DIM, DIM)
        corrector.mlp_mask1 = nn.Sequential(nn.Linear(DIM, BOTTLENECK), nn.ReLU(inplace=True))
        corrector.mlp_mask2 = nn.Linear(BOTTLENECK, 1)

        self.rgbmaskdec = nn.Module()
        self.rgbmaskdec.decoder_m = UNetDecoder(3, WIDTH, levels=3)
        self.rgbmaskdec.mlp_mix = nn.Linear(BOTTLENECK * 3, BOTTLENECK)

    def forward(
        self,
        rgbs: Tensor,
        masks: Tensor,
        tokens: Tensor,
        frames: Tensor,
        exemplar_tokens: Tensor,
        exemplar_masks: Tensor,
        exemplar_scores: Tensor,
        exemplar_frames: Tensor,
        *,
        reconstruct: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Target window: ``rgbs`` (7, 3, 128, 224) normalised, ``masks`` (7, 3, 128, 224) proposals, ``tokens``
        (7, 16, 28, 384) DINO S/8, ``frames`` (7,) absolute frame indices. Exemplars per object k: ``exemplar_tokens``
        (3, n, 16, 28, 384), ``exemplar_masks`` (3, n, 128, 224) object k's own proposal, ``exemplar_scores`` (3, n)
        the selector's scores, ``exemplar_frames`` (3, n). Returns (7, 3, 128, 224) logits; with ``reconstruct``
        also the feature reconstruction (7, 16, 28, 384) and the slots' alphas (7 slots, 7, 16, 28)."""
        objects, count, h, w, dim = exemplar_tokens.shape
        window = rgbs.shape[0]
        skips, _ = self.rgbmaskenc.encoder_rgbmask(rgbs, masks, bottleneck=False)

        object_queries = initial_queries(exemplar_tokens, exemplar_masks, exemplar_scores)
        overlay = F.interpolate(exemplar_masks, size=(h, w), mode="bilinear") > 0.5  # (3, n, h, w)
        object_code = self.rgbmaskenc.encoder_queryinfo(objects + BACKGROUND)[:objects]  # (3, c)
        exemplar_keys = (
            exemplar_tokens
            + self.rgbmaskenc.encoder_posi(h, w)
            + overlay[..., None].to(exemplar_tokens.dtype) * object_code[:, None, None, None, :]
        )

        dec = self.rgbglobalcorrector.transdec
        slots = objects + BACKGROUND
        queries = torch.cat([object_queries, dec.slots_embedding.weight], 0)[:, None, :]
        queries = (queries + dec.encoder_querytime(slots, window)).reshape(1, slots * window, dim)
        targets = tokens + dec.encoder_positime(window, h, w)  # (7, h, w, c)

        target_forbidden, exemplar_forbidden = attention_masks(frames, exemplar_frames, slots, h * w)

        x = queries
        flat_targets = targets.reshape(1, window * h * w, dim)
        flat_exemplars = exemplar_keys.reshape(1, objects * count * h * w, dim)
        for layer in dec.transformer_decoder.layers:
            x = layer(x, flat_targets, flat_exemplars, target_forbidden, exemplar_forbidden)
        slot_outputs = x.view(slots, window, dim)
        x = x.view(slots, window, HEADS, dim // HEADS)[:objects]

        maps = torch.einsum("qtgd,thwgd->qthwg", x, targets.view(window, h, w, HEADS, dim // HEADS))
        maps = dec.heatmap.mlp(maps)  # (3, 7, h, w, 512)
        mixed = self.rgbmaskdec.mlp_mix(maps.permute(1, 2, 3, 0, 4).reshape(window, h, w, objects * BOTTLENECK))
        logits = self.rgbmaskdec.decoder_m(skips, mixed.permute(0, 3, 1, 2).contiguous())
        if not reconstruct:
            return logits
        features, alphas = self.reconstruction(slot_outputs, h, w)
        return logits, features, alphas

    def reconstruction(self, slot_outputs: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """The feature-reconstruction head on the transformer's outputs (slots, t, c): (t, h, w, c) reconstructed
        DINO features and (slots, t, h, w) alphas (softmax over the slots)."""
        head = self.rgbglobalcorrector
        spread = head.mlp(slot_outputs[:, :, None, None, :] + head.encoder_posi(h, w))  # (slots, t, h, w, c)
        alphas = head.mlp_mask2(head.mlp_mask1(spread)).squeeze(-1).float().softmax(0)
        features = (alphas[..., None] * head.mlp_feat(spread).float()).sum(0)
        return features, alphas


def attention_masks(frames: Tensor, exemplar_frames: Tensor, slots: int, cells: int) -> tuple[Tensor, Tensor]:
    """The forbidden pairs of the two slot attentions, for queries ordered (slot, window position) and keys
    ordered (position, cell) / (object, exemplar, cell): a query never attends to the target frame at its own
    window position, nor to exemplar tokens from its own absolute frame (``frames`` (7,), ``exemplar_frames``
    (3, n))."""
    position = torch.arange(frames.shape[0], device=frames.device)
    query_position = position.repeat(slots)
    target = same_frame(query_position, position.repeat_interleave(cells))
    exemplar = same_frame(frames[query_position], exemplar_frames.reshape(-1).repeat_interleave(cells))
    return target, exemplar


def initial_queries(tokens: Tensor, masks: Tensor, scores: Tensor) -> Tensor:
    """Object queries (3, c): per exemplar the mean of the tokens under the mask (nearest-downsampled to the token
    grid; +1e-12 against empty masks), then the mean over exemplars weighted by the selector's scores."""
    h, w = tokens.shape[2:4]
    small = F.interpolate(masks, size=(h, w))[..., None]  # nearest, (3, n, h, w, 1)
    per_frame = (small * tokens).sum(dim=(2, 3)) / (small.sum(dim=(2, 3)) + 1e-12)  # (3, n, c)
    weights = scores[..., None]
    return (per_frame * weights).sum(1) / (weights.sum(1) + 1e-12)


def windows(num_frames: int) -> list[list[int]]:
    """Target windows of 7 frames in the release's order: non-overlapping from frame 0, then the final 7 frames
    when 7 does not divide the clip (it overwrites the frames it shares); a shorter clip is one window padded with
    copies of its last frame."""
    if num_frames < WINDOW:
        return [[min(k, num_frames - 1) for k in range(WINDOW)]]
    starts = list(range(0, num_frames - WINDOW + 1, WINDOW))
    if num_frames % WINDOW:
        starts.append(num_frames - WINDOW)
    return [list(range(start, start + WINDOW)) for start in starts]
