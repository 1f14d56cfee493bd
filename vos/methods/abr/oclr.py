"""OCLR-flow: K = 3 amodal motion-segment layers and their depth order from optical flow (Xie et al., NeurIPS 2022).

Layout of the release (Jyxarthur/OCLR_model; 20,660,932 parameters in 129 tensors), attribute names as in its
checkpoint except the conv blocks' inner names (``vos.methods.abr.convert_official`` maps them):

- ``encoder``: UNet encoder 4 -> 32 -> 64 -> 128 -> 256, bottleneck 512 at 8x14 (input 128x224).
- ``transformer_enc``: bottleneck tokens (t*8*14) + ``encoder_positime`` (Linear(3 -> 512) of the (t, h, w)
  linspace grid); ``transformer_encoder``: 3 post-norm layers, 8 heads, FFN 512, same-frame pairs forbidden.
- ``transformer_dec``: ``motion_embed`` (3 queries) repeated over t + ``encoder_time`` (Linear(1 -> 512) of
  linspace(-1, 1, t)); ``transformer_decoder``: 3 post-norm layers (self-attention, cross-attention, FFN), no masks.
- ``heatmap``: per query q, head g, frame i the unscaled dot product of the decoder output (q, i) with frame i's
  encoder tokens in head g's 64 channels -> 24 maps ordered (q g) -> Linear(24 -> 512) + ReLU.
- ``decoder_am``: UNet decoder with the encoder's skips -> 3 amodal logits at 128x224.
- ``classhead``: max over time of each query's decoder outputs -> MLP 512 -> 512 -> 1: the depth score.

Clips are cut into 30-frame chunks as the release does; ``propose`` carries object ids from chunk to chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from vos.nn import DecoderLayer, EncoderLayer, GridEmbed, Layers, UNetDecoder, UNetEncoder, same_frame

NUM_QUERIES = 3
CHUNK = 30  # frames per OCLR pass, as trained and as the release evaluates
# Fewest frames a chunk must share with the frames already written to take its ids from them directly; the
# release's chunks share none (its evaluation aligns them to the ground truth), so most need a bridging pass.
CHUNK_OVERLAP = 5
TIE_BREAK = 1e-6  # IoU bonus for keeping a channel's index when the shared frames do not decide
WIDTH = 32  # UNet features at full resolution
DIM = WIDTH * 16  # 512
HEADS = 8
LAYERS = 3


class OclrFlow(nn.Module):
    """flow (t, 4, 128, 224) = [u+, v+, u-, v-] -> amodal logits (t, 3, 128, 224), depth scores (3,)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = UNetEncoder(4, WIDTH, levels=4)
        self.transformer_enc = nn.Module()
        self.transformer_enc.encoder_positime = GridEmbed(3, DIM)
        self.transformer_enc.transformer_encoder = Layers([EncoderLayer(DIM, HEADS, 512) for _ in range(LAYERS)])
        self.transformer_dec = nn.Module()
        self.transformer_dec.transformer_decoder = Layers([DecoderLayer(DIM, HEADS, 512) for _ in range(LAYERS)])
        self.transformer_dec.encoder_time = GridEmbed(1, DIM)
        self.transformer_dec.motion_embed = nn.Embedding(NUM_QUERIES, DIM)
        self.heatmap = nn.Module()
        self.heatmap.mlp = nn.Sequential(nn.Linear(HEADS * NUM_QUERIES, DIM), nn.ReLU(inplace=True))
        self.classhead = nn.Module()
        self.classhead.mlp = nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU(inplace=True), nn.Linear(DIM, 1))
        self.decoder_am = UNetDecoder(NUM_QUERIES, WIDTH, levels=4)

    def forward(self, flow: Tensor) -> tuple[Tensor, Tensor]:
        frames = flow.shape[0]
        skips, bottleneck = self.encoder(flow)
        _, dim, h, w = bottleneck.shape
        tokens = bottleneck.permute(0, 2, 3, 1) + self.transformer_enc.encoder_positime(frames, h, w)
        tokens = tokens.reshape(1, frames * h * w, dim)
        frame_of = torch.arange(frames, device=flow.device).repeat_interleave(h * w)
        forbidden = same_frame(frame_of, frame_of)
        for layer in self.transformer_enc.transformer_encoder.layers:
            tokens = layer(tokens, forbidden)

        dec = self.transformer_dec
        queries = dec.motion_embed.weight[:, None, :] + dec.encoder_time(frames)  # (q, t, c)
        queries = queries.reshape(1, NUM_QUERIES * frames, dim)
        for layer in dec.transformer_decoder.layers:
            queries = layer(queries, tokens)
        queries = queries.view(NUM_QUERIES, frames, dim)

        encoded = tokens.view(frames, h, w, HEADS, dim // HEADS)
        maps = torch.einsum("qtgd,thwgd->thwqg", queries.view(NUM_QUERIES, frames, HEADS, -1), encoded)
        features = self.heatmap.mlp(maps.reshape(frames, h, w, NUM_QUERIES * HEADS)).permute(0, 3, 1, 2)
        amodal = self.decoder_am(skips, features.contiguous())
        order = self.classhead.mlp(queries.max(dim=1).values).squeeze(-1)
        return amodal, order


def modal_masks(amodal_logits: Tensor, order: Tensor) -> Tensor:
    """(t, K, H, W) amodal logits and (K,) depth scores -> (t, K, H, W) bool modal masks.

    Amodal masks are sigmoid > 0.5. The LOWEST score is the front layer: layers are taken from the lowest to the
    highest score, each keeping its amodal mask minus the union of the ones in front (the release sorts the
    negated scores and walks that order backwards; the same sort is used here, so ties resolve alike).
    """
    amodal = amodal_logits.sigmoid() > 0.5
    modal = torch.zeros_like(amodal)
    covered = torch.zeros_like(amodal[:, 0])
    _, back_to_front = torch.sort(-order)
    for channel in reversed(back_to_front.tolist()):
        modal[:, channel] = amodal[:, channel] & ~covered
        covered |= amodal[:, channel]
    return modal


def chunk_frames(num_frames: int) -> list[list[int]]:
    """The frame indices of each OCLR pass as the release cuts a clip, in the order they run (a later chunk's
    masks overwrite): non-overlapping 30-frame chunks from frame 0, then the final 30 frames when 30 does not
    divide the clip; a clip of up to 30 frames is one chunk padded with copies of its last frame (the release's
    evaluation then writes the last real frame from chunk position 29: the last write wins)."""
    if num_frames <= CHUNK:
        return [list(range(num_frames)) + [num_frames - 1] * (CHUNK - num_frames)]
    starts = list(range(0, num_frames - CHUNK + 1, CHUNK))
    if num_frames % CHUNK:
        starts.append(num_frames - CHUNK)
    return [list(range(start, start + CHUNK)) for start in starts]


def bridge_frames(start: int, num_frames: int) -> list[int]:
    """A 30-frame pass centred on the boundary before ``start``, run only to carry ids across it."""
    first = min(max(start - CHUNK // 2, 0), num_frames - CHUNK)
    return list(range(first, first + CHUNK))


def associate(previous: Tensor, current: Tensor) -> list[int]:
    """Which id each of ``current``'s channels takes: (n, K, H, W) bool masks of the same n frames, the ids already
    given (``previous``) and a new chunk's. Maximises the summed IoU (over the n frames pooled) with the Hungarian
    method (ties keep the channel's index); ``result[k]`` is the previous channel that current channel k
    continues."""
    prev = previous.flatten(2).transpose(0, 1).flatten(1).float()  # (K, n*H*W)
    cur = current.flatten(2).transpose(0, 1).flatten(1).float()
    inter = cur @ prev.T  # (K current, K previous)
    union = cur.sum(1, keepdim=True) + prev.sum(1)[None] - inter
    iou = (inter / union.clamp_min(1)).cpu().numpy()
    # Without evidence (objects absent from the shared frames) a channel keeps its own index.
    rows, cols = linear_sum_assignment(-(iou + TIE_BREAK * np.eye(len(iou))))
    assignment = [0] * len(rows)
    for row, col in zip(rows, cols, strict=True):
        assignment[int(row)] = int(col)
    return assignment


def propose(
    oclr: OclrFlow,
    flows: Tensor,
    report: Callable[[int, int], None] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """(T, 4, 128, 224) flows -> (T, 3, 128, 224) bool modal masks, ids kept across chunks.

    Every frame's masks come from the release's chunks (``chunk_frames``), so they are the release's up to each
    chunk's channel order. Where a chunk shares fewer than 5 frames with what is written, an extra pass centred on
    the boundary (``bridge_frames``; its masks are not kept) is first aligned to the written frames, and the chunk
    to it: ids always travel by IoU on frames two passes share.
    """
    num_frames = flows.shape[0]
    chunks = chunk_frames(num_frames)
    masks = torch.zeros((num_frames, NUM_QUERIES, *flows.shape[-2:]), dtype=torch.bool, device=flows.device)
    written = np.zeros(num_frames, dtype=bool)

    def aligned(frames: list[int], reference: Tensor, known: np.ndarray) -> Tensor:
        """The pass over ``frames`` with its channels in the ids of ``reference`` (masks of the ``known`` frames)."""
        with autocast():
            amodal, order = oclr(flows[frames])
        modal = modal_masks(amodal.float(), order.float())
        shared = sorted({f for f in frames if known[f]})
        if shared:
            position = {f: i for i, f in enumerate(frames)}
            assignment = associate(reference[shared], modal[[position[f] for f in shared]])
            modal = modal[:, np.argsort(assignment).tolist()]  # id j now holds the channel assigned to j
        return modal

    for index, frames in enumerate(chunks):
        reference, known = masks, written
        if index and len({f for f in frames if written[f]}) < CHUNK_OVERLAP:
            bridge = bridge_frames(frames[0], num_frames)
            reference = torch.zeros_like(masks)
            reference[bridge] = aligned(bridge, masks, written)
            known = np.zeros(num_frames, dtype=bool)
            known[bridge] = True
        modal = aligned(frames, reference, known)
        for position, frame in enumerate(frames):  # the last write wins, as in the release
            masks[frame] = modal[position]
        written[frames] = True
        if report is not None:
            report(index + 1, len(chunks))
    return masks
