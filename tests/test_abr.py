"""ABR: the three networks' layouts and the official key maps, the shared attention layers against a plain dense
re-statement of the releases' attention, depth-order compositing, chunking and id association, exemplar selection,
flow assembly, the release's resize order, and the whole pipeline with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vos import nn as vnn
from vos.methods import abr
from vos.methods.abr import corrector, flow, oclr, pipeline, selector

# --------------------------------------------------------------------------------------------------------------
# Layouts and official checkpoints


@pytest.mark.parametrize(
    ("part", "parameters", "tensors"),
    [("oclr", 20_660_932, 129), ("selector", 3_301_475, 72), ("corrector", 16_243_844, 139)],
)
def test_networks_have_the_release_parameter_and_tensor_counts(part, parameters, tensors):
    with torch.device("meta"):
        net = abr.AppearanceRefinement.build_part(part, "davis17m", {})
    state = net.state_dict()
    assert sum(t.numel() for t in state.values()) == parameters
    assert len(state) == tensors


def test_every_variant_declares_the_six_parts_with_manifest_rows():
    from vos import weights as vweights

    for variant in abr.INFO.variants:
        parts = abr.INFO.parts(variant)
        assert set(parts) == {"raft", "oclr", "selector", "corrector", "dino_s16", "dino_s8"}
        for file_id in parts.values():
            assert vweights.entry(file_id).used_by == ("abr",)
    assert vweights.entry("abr.oclr_synthetic").official.id == "1woNkxW4zf648PixXL6EyRmm5sK4gXKZ0"
    assert vweights.entry("abr.oclr_davis17m").official.id == "1_I6B7GhXKNJ1bloQo7BaKxk8CIm8Diy3"
    assert vweights.entry("backbone.dino_vits16").hub_repo == "timm/vit_small_patch16_224.dino"
    assert vweights.entry("backbone.dino_vits8").hub_repo == "timm/vit_small_patch8_224.dino"


# The releases' conv-block layer prefixes, by the block's attribute name.
_BLOCK_LABELS = {"encoder1_rgb": "enc1_r", "encoder1_mask": "enc1_m", "bottleneck": "bottleneck"}


def _official_name(key: str) -> str:
    """Our key -> the release's (a plain statement of the release's naming, independent of the converter)."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] in ("conv1", "conv2") and parts[-1] == "weight":
        block = parts[-3]
        label = _BLOCK_LABELS.get(block) or block.replace("encoder", "enc").replace("decoder", "dec")
        return ".".join([*parts[:-2], "conv_block", f"{label}{parts[-2]}", "weight"])
    return key


def _official_checkpoint(net: torch.nn.Module, prefix: str = "") -> dict:
    state = {prefix + _official_name(k): torch.randn(v.shape) for k, v in net.state_dict().items()}
    return {"iteration": 7, "model_state_dict": state, "optimizer_state_dict": {"state": {}}, "loss": 0.1}


@pytest.mark.parametrize(("part", "prefix"), [("oclr", ""), ("selector", "selector."), ("corrector", "")])
def test_official_checkpoints_convert_and_load_strictly(part, prefix):
    net = abr.AppearanceRefinement.build_part(part, "davis17m", {})
    checkpoint = _official_checkpoint(net, prefix)
    official = checkpoint["model_state_dict"]
    converted = abr.convert_official(checkpoint)
    net.load_state_dict(converted, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, official[prefix + _official_name(key)]), key


def test_official_names_the_spec_and_release_use_are_produced():
    net = abr.AppearanceRefinement.build_part("oclr", "davis17m", {})
    names = {_official_name(k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert names["encoder.encoder1.conv_block.enc1conv1.weight"] == (32, 4, 3, 3)
    assert names["encoder.bottleneck.conv_block.bottleneckconv2.weight"] == (512, 512, 3, 3)
    assert names["transformer_enc.transformer_encoder.layers.2.self_attn.in_proj_weight"] == (1536, 512)
    assert names["transformer_dec.transformer_decoder.layers.0.multihead_attn.in_proj_bias"] == (1536,)
    assert names["transformer_dec.motion_embed.weight"] == (3, 512)
    assert names["heatmap.mlp.0.weight"] == (512, 24)
    assert names["classhead.mlp.2.weight"] == (1, 512)
    assert names["decoder_am.decoder1.conv_block.dec1conv1.weight"] == (32, 64, 3, 3)
    corrector_names = {
        _official_name(k) for k in abr.AppearanceRefinement.build_part("corrector", "davis17m", {}).state_dict()
    }
    assert "rgbmaskenc.encoder_rgbmask.encoder1_mask.conv_block.enc1_mconv1.weight" in corrector_names
    assert "rgbglobalcorrector.transdec.transformer_decoder.layers.1.linear2_2.weight" in corrector_names
    assert "rgbglobalcorrector.transdec.slots_embedding.weight" in corrector_names


def test_raft_file_from_torchvision_loads_as_it_is_and_the_original_is_refused_with_the_fix():
    with torch.device("meta"):
        raft = flow.build_raft()
    state = raft.state_dict()
    assert abr.convert_raft({"model": state}).keys() == state.keys()
    with pytest.raises(ValueError, match="raft_large_C_T_V1"):
        abr.convert_raft({"module.fnet.conv1.weight": torch.zeros(1), "module.cnet.conv1.weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------------------------
# Shared layers against the releases' dense attention


def _dense_attention(layer: vnn.PackedAttention, x, memory, forbidden, heads: int):
    """The releases' arithmetic: packed projections, q k^T / sqrt(d), masked_fill(-1e9), softmax, out_proj."""
    dim = x.shape[-1]
    w_q, w_k, w_v = layer.in_proj_weight.split(dim)
    b_q, b_k, b_v = layer.in_proj_bias.split(dim)

    def heads_of(t):
        return t.view(t.shape[0], t.shape[1], heads, dim // heads).transpose(1, 2)

    q, k, v = heads_of(x @ w_q.T + b_q), heads_of(memory @ w_k.T + b_k), heads_of(memory @ w_v.T + b_v)
    scores = q @ k.transpose(-2, -1) / (dim // heads) ** 0.5
    if forbidden is not None:
        scores = scores.masked_fill(forbidden, -1e9)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    return layer.out_proj(out)


def _norm(x, weight, bias):
    return weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5) + bias


def test_encoder_layer_with_the_same_frame_mask_matches_the_dense_release_arithmetic():
    torch.manual_seed(0)
    layer = vnn.EncoderLayer(16, 4, 24)
    frames, cells = 3, 5
    x = torch.randn(1, frames * cells, 16)
    frame_of = torch.arange(frames).repeat_interleave(cells)
    forbidden = vnn.same_frame(frame_of, frame_of)
    # The mask forbids exactly the pairs within one frame.
    assert forbidden.sum() == frames * cells * cells and bool(forbidden[0, cells - 1]) and not forbidden[0, cells]
    expected = _norm(x + _dense_attention(layer.self_attn, x, x, forbidden, 4), layer.norm1.weight, layer.norm1.bias)
    expected = _norm(expected + layer.linear2(F.relu(layer.linear1(expected))), layer.norm2.weight, layer.norm2.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, forbidden), expected, rtol=1e-5, atol=1e-5)


def test_attention_in_row_blocks_equals_one_block_and_a_fully_forbidden_row_is_the_uniform_mean():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    forbidden = torch.rand(10, 12) > 0.6
    forbidden[:, 0] = False
    torch.testing.assert_close(vnn.attend(q, k, v, forbidden, rows=3), vnn.attend(q, k, v, forbidden, rows=100))
    forbidden[4] = True  # every key forbidden for query 4: the release's -1e9 fill averages all values
    out = vnn.attend(q, k, v, forbidden)
    torch.testing.assert_close(out[:, :, 4], v.mean(2))
    assert torch.isfinite(out).all()


def test_slot_attention_normalises_over_queries_then_keys():
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4)
    forbidden = torch.zeros(6, 9, dtype=torch.bool)
    forbidden[0, :3] = True
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(forbidden, -1e9)
    weights = scores.softmax(-2)
    expected = (weights / weights.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(vnn.slot_attend(q, k, v, forbidden), expected)


def test_grid_matches_numpy_linspace_meshgrid():
    grid = vnn.linspace_grid(3, 2, 4)
    assert grid.shape == (3, 2, 4, 3)
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0, -1.0] and grid[2, 1, 3].tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(grid[1, 0, 1], torch.tensor([0.0, -1.0, -1.0 / 3.0]))


# --------------------------------------------------------------------------------------------------------------
# OCLR: compositing, chunks, ids


def _rect(shape, top, left, bottom, right):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def test_modal_masks_put_the_lowest_depth_score_in_front():
    shape = (8, 8)
    amodal = torch.stack([_rect(shape, 0, 0, 6, 6), _rect(shape, 2, 2, 8, 8), _rect(shape, 3, 0, 5, 8)])
    logits = torch.where(amodal, 5.0, -5.0)[None]  # (1, 3, 8, 8)
    order = torch.tensor([0.3, -1.0, 2.0])  # object 1 in front, then 0, object 2 at the back
    modal = oclr.modal_masks(logits, order)[0]
    assert torch.equal(modal[1], amodal[1])
    assert torch.equal(modal[0], amodal[0] & ~amodal[1])
    assert torch.equal(modal[2], amodal[2] & ~amodal[1] & ~amodal[0])
    assert not (modal[0] & modal[1]).any() and not (modal[0] & modal[2]).any()


def test_chunks_pad_short_clips_and_overlap_long_ones():
    assert oclr.chunk_frames(12) == [list(range(12)) + [11] * 18]
    assert oclr.chunk_frames(30) == [list(range(30))]
    long = oclr.chunk_frames(61)
    assert [c[0] for c in long] == [0, 25, 31] and all(len(c) == 30 for c in long) and long[-1][-1] == 60
    assert all(len(set(a) & set(b)) >= oclr.CHUNK_OVERLAP for a, b in zip(long, long[1:]))


class _ChunkSwapper(torch.nn.Module):
    """Stands in for OCLR: reads each frame's index from its flow and returns the true masks of those frames, with
    the channels of every second chunk swapped (objects 0 and 2) and low depth scores for all."""

    def __init__(self, truth: torch.Tensor):
        super().__init__()
        self.truth = truth
        self.calls = 0

    def forward(self, flow):
        frames = flow[:, 0, 0, 0].round().long()
        masks = self.truth[frames]
        if self.calls % 2 == 1:
            masks = masks[:, [2, 1, 0]]
        self.calls += 1
        return torch.where(masks, 5.0, -5.0), torch.zeros(3)


def test_chunk_association_keeps_ids_across_an_object_swap():
    num_frames = 70
    truth = torch.zeros(num_frames, 3, 16, 16, dtype=torch.bool)
    for t in range(num_frames):
        truth[t, 0, 1:5, (t % 8) : (t % 8) + 4] = True
        truth[t, 1, 6:10, 2:9] = True
        truth[t, 2, 11:15, 8 - (t % 8) : 12 - (t % 8)] = True
    flows = torch.zeros(num_frames, 4, 16, 16)
    flows[:, 0] = torch.arange(num_frames, dtype=torch.float32)[:, None, None]
    fake = _ChunkSwapper(truth)
    reports = []
    masks = oclr.propose(fake, flows, report=lambda d, n: reports.append((d, n)))
    assert fake.calls == 3 and reports[-1] == (3, 3)
    assert torch.equal(masks, truth)


def test_associate_follows_the_best_overlap():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    a[:, 0, :2, :2] = True
    a[:, 1, 2:, 2:] = True
    a[:, 2, :2, 2:] = True
    b = a[:, [1, 2, 0]]  # current channel 0 is previous id 1, ...
    assert oclr.associate(a, b) == [1, 2, 0]


# --------------------------------------------------------------------------------------------------------------
# Selector and corrector bookkeeping


def test_exemplars_are_the_top_frames_sorted_and_short_clips_keep_all():
    rng = np.random.default_rng(0)
    scores = rng.random((25, 3)).astype(np.float32)
    chosen = selector.select_exemplars(scores)
    assert chosen.shape == (3, 10)
    for k in range(3):
        assert chosen[k].tolist() == sorted(np.argsort(-scores[:, k])[:10].tolist())
    short = selector.select_exemplars(scores[:4])
    assert short.tolist() == [[0, 1, 2, 3]] * 3


def test_frame_scores_softmax_over_frames_of_negative_error_per_area():
    errors = torch.zeros(3, 3, 2, 2)
    errors[:, 0] = torch.tensor([0.1, 0.5, 0.0])[:, None, None]
    errors[:, 2] = 0.25
    mask = torch.ones(3, 2, 2)
    mask[2] = 0
    expected = torch.tensor([-(0.4 + 1.0) / 5, -(2.0 + 1.0) / 5, -(0.0 + 1.0) / 1]).softmax(0)
    torch.testing.assert_close(selector.frame_scores(errors, mask), expected)


def test_corrector_windows_follow_the_release():
    assert corrector.windows(12) == [list(range(7)), list(range(5, 12))]
    assert corrector.windows(14) == [list(range(7)), list(range(7, 14))]
    assert corrector.windows(3) == [[0, 1, 2, 2, 2, 2, 2]]


def test_initial_queries_are_score_weighted_masked_means():
    tokens = torch.zeros(1, 2, 2, 2, 3)
    tokens[0, 0, 0, 0] = torch.tensor([1.0, 0, 0])
    tokens[0, 1, 1, 1] = torch.tensor([0, 3.0, 0])
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :2, :2] = 1  # nearest-downsampled: cell (0, 0)
    masks[0, 1, 2:, 2:] = 1  # cell (1, 1)
    scores = torch.tensor([[1.0, 3.0]])
    torch.testing.assert_close(corrector.initial_queries(tokens, masks, scores), torch.tensor([[0.25, 2.25, 0.0]]))


def test_corrector_masks_bar_a_query_from_its_own_target_frame_and_its_own_frame_among_exemplars():
    frames = torch.tensor([5, 6, 7, 8, 9, 10, 11])
    exemplar_frames = torch.tensor([[0, 6], [6, 11], [2, 3]])
    cells = 2
    target, exemplar = corrector.attention_masks(frames, exemplar_frames, slots=7, cells=cells)
    assert target.shape == (49, 7 * cells) and exemplar.shape == (49, 6 * cells)
    for slot in range(7):
        for position in range(7):
            row = slot * 7 + position
            barred = [p for p in range(7) if target[row, p * cells]]
            assert barred == [position]
            key_frames = exemplar_frames.reshape(-1).repeat_interleave(cells)
            assert torch.equal(exemplar[row], key_frames == frames[position])
    assert exemplar[1].sum() == 2 * cells  # frame 6 is an exemplar of objects 0 and 1


@pytest.mark.slow
def test_corrector_runs_one_window():
    torch.manual_seed(3)
    net = corrector.MaskCorrector().eval()
    with torch.inference_mode():
        out = net(
            torch.randn(7, 3, 128, 224),
            (torch.rand(7, 3, 128, 224) > 0.5).float(),
            torch.randn(7, 16, 28, 384),
            torch.arange(7),
            torch.randn(3, 2, 16, 28, 384),
            (torch.rand(3, 2, 128, 224) > 0.5).float(),
            torch.rand(3, 2),
            torch.tensor([[0, 8], [1, 9], [2, 10]]),
        )
    assert out.shape == (7, 3, 128, 224) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------------------------
# Flow and the release's resize order


def test_missing_flow_directions_are_the_opposite_negated():
    fwd = {0: np.full((2, 128, 224), 1.0, np.float32), 1: np.full((2, 128, 224), 2.0, np.float32)}
    bwd = {1: np.full((2, 128, 224), -3.0, np.float32), 2: np.full((2, 128, 224), -4.0, np.float32)}
    out = flow.assemble(3, fwd, bwd)
    assert out[0, 2, 0, 0] == -1.0 and out[0, 0, 0, 0] == 1.0  # first frame: backward = -forward
    assert out[2, 0, 0, 0] == 4.0 and out[2, 2, 0, 0] == -4.0  # last frame: forward = -backward
    assert out[1].reshape(4, -1)[:, 0].tolist() == [2.0, 2.0, -3.0, -3.0]
    assert not flow.assemble(1, {}, {}).any()
    assert flow.flow_pairs(4, 1) == ([(0, 1), (1, 2), (2, 3)], [(1, 0), (2, 1), (3, 2)])


def test_flow_sizes_and_scaling():
    assert flow.raft_size((480, 854), flow.FULL) == (480, 854)
    assert flow.raft_size((480, 854), flow.REDUCED_MODE) == (256, 448)
    assert flow.raft_size((64, 112), flow.REDUCED_MODE) == (128, 128)
    padded = flow.raft_input(np.zeros((100, 130, 3), np.uint8), (100, 130))
    assert padded.shape == (3, 104, 136) and padded.min() == -1.0
    field = np.zeros((104, 448, 2), np.float32)
    field[..., 0], field[..., 1] = 4.0, 2.0
    small = flow.to_oclr(field)
    assert small.shape == (2, 128, 224)
    assert np.allclose(small[0], 2.0) and np.allclose(small[1], 2.0 * 128 / 104)


def test_round_trip_and_labels_at_the_frame_size():
    masks = np.zeros((2, 3, 128, 224), dtype=bool)
    masks[0, 0, 10:50, 20:90] = True
    masks[1, 2, 60:120, 100:200] = True
    back = pipeline.round_trip(masks, (480, 854))
    assert back.dtype == np.float32 and back.shape == masks.shape
    assert (back.astype(bool) == masks).mean() > 0.99
    probabilities = np.zeros((2, 3, 128, 224), np.float32)
    probabilities[0, 0, 10:50, 20:90] = 0.9
    probabilities[0, 1, 10:50, 20:90] = 0.7  # lower than object 0 there: object 0 wins
    probabilities[1, 2, :, :] = 0.4  # never above 0.5: background
    maps = pipeline.label_maps(probabilities, (240, 427))
    assert maps[0].shape == (240, 427) and maps[0].dtype == np.uint8
    assert set(np.unique(maps[0])) == {0, 1} and not maps[1].any()


def test_refinement_rgb_uses_the_0228_std_after_a_uint8_resize():
    frame = np.full((256, 448, 3), 128, np.uint8)
    rgbs = pipeline.refinement_rgbs([frame], torch.device("cpu"))
    assert rgbs.shape == (1, 3, 128, 224)
    assert torch.isclose(rgbs[0, 0, 0, 0], torch.tensor((128 / 255 - 0.485) / 0.228))


# --------------------------------------------------------------------------------------------------------------
# The whole pipeline


@pytest.mark.slow
def test_whole_method_with_random_weights_returns_label_maps_of_the_input_size():
    from vos.synthetic import moving_shapes
    from vos.video import Clip

    torch.manual_seed(0)
    method = abr.AppearanceRefinement(weights="random", device="cpu")
    synthetic = moving_shapes(12, (64, 112), 2)
    clip = Clip.from_frames(synthetic.frames)
    seen = []
    maps = list(method.segment(clip, synthetic.masks[0], progress=seen.append))
    assert len(maps) == 12
    assert all(m.shape == (64, 112) and m.dtype == np.uint8 and m.max() <= 3 for m in maps)
    stages = [p.stage for p in seen]
    for stage in ("flow", "proposals", "selector", "corrector", "frame"):
        assert stage in stages
    assert stages.index("flow") < stages.index("proposals") < stages.index("selector") < stages.index("corrector")
