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


def test_info_records_the_papers_figures_and_the_flow_options():
    info = abr.INFO
    assert info.task == "unsup" and info.processing == "offline" and info.default_variant == "davis17m"
    assert any(r.metrics.get("J&F") == 66.2 and r.dataset.startswith("DAVIS-2017") for r in info.reported)
    assert any(r.metrics.get("J&F") == 65.2 and r.dataset.startswith("YouTube") for r in info.reported)
    assert any(r.metrics == {"J": 81.1} and r.dataset == "DAVIS-2016 val" for r in info.reported)
    assert any(r.fps is not None and abs(1 / r.fps - 0.098) < 0.001 for r in info.reported)
    assert info.resolve_options({})["flow"] == "reduced"
    resolved = info.resolve_options({"flow": "full", "gap": "3"})
    assert (resolved["flow"], resolved["gap"]) == ("full", 3)
    assert info.resolution.describe("davis17m") == "128x224 (fixed)"


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


def test_raft_file_from_torchvision_loads_as_it_is():
    with torch.device("meta"):
        raft = flow.build_raft()
    state = raft.state_dict()
    assert abr.convert_raft({"model": state}).keys() == state.keys()


# torchvision raft_large name -> princeton-vl RAFT name, written out from core/extractor.py and core/update.py of
# the original (independent of the converter's rules).
_ORIGINAL_UPDATE_NAMES = {
    "update_block.motion_encoder.convcorr1.0.": "update_block.encoder.convc1.",
    "update_block.motion_encoder.convcorr2.0.": "update_block.encoder.convc2.",
    "update_block.motion_encoder.convflow1.0.": "update_block.encoder.convf1.",
    "update_block.motion_encoder.convflow2.0.": "update_block.encoder.convf2.",
    "update_block.motion_encoder.conv.0.": "update_block.encoder.conv.",
    "update_block.recurrent_block.convgru1.convz.": "update_block.gru.convz1.",
    "update_block.recurrent_block.convgru1.convr.": "update_block.gru.convr1.",
    "update_block.recurrent_block.convgru1.convq.": "update_block.gru.convq1.",
    "update_block.recurrent_block.convgru2.convz.": "update_block.gru.convz2.",
    "update_block.recurrent_block.convgru2.convr.": "update_block.gru.convr2.",
    "update_block.recurrent_block.convgru2.convq.": "update_block.gru.convq2.",
    "update_block.flow_head.conv1.": "update_block.flow_head.conv1.",
    "update_block.flow_head.conv2.": "update_block.flow_head.conv2.",
    "mask_predictor.convrelu.0.": "update_block.mask.0.",
    "mask_predictor.conv.": "update_block.mask.2.",
}


def _original_raft_names() -> dict[str, str]:
    table = dict(_ORIGINAL_UPDATE_NAMES)
    for ours, theirs in (("feature_encoder", "fnet"), ("context_encoder", "cnet")):
        table[f"{ours}.convnormrelu.0."] = f"{theirs}.conv1."
        table[f"{ours}.convnormrelu.1."] = f"{theirs}.norm1."
        table[f"{ours}.conv."] = f"{theirs}.conv2."
        for layer in (1, 2, 3):
            for block in (0, 1):
                for n in (1, 2):
                    table[f"{ours}.layer{layer}.{block}.convnormrelu{n}.0."] = f"{theirs}.layer{layer}.{block}.conv{n}."
                    table[f"{ours}.layer{layer}.{block}.convnormrelu{n}.1."] = f"{theirs}.layer{layer}.{block}.norm{n}."
            for n in (0, 1):
                table[f"{ours}.layer{layer}.0.downsample.{n}."] = f"{theirs}.layer{layer}.0.downsample.{n}."
    return table


def _random_raft() -> torch.nn.Module:
    torch.manual_seed(0)
    raft = flow.build_raft().eval()
    with torch.no_grad():
        for name, tensor in raft.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(1234)
            else:
                tensor.copy_(torch.randn(tensor.shape) * 0.05)
    return raft


def _as_original_file(raft: torch.nn.Module) -> dict[str, torch.Tensor]:
    """raft_large's tensors under the original's names, with DataParallel's prefix and the original's second name
    (norm3) of each strided block's downsample norm."""
    table = _original_raft_names()
    original = {}
    for name, tensor in raft.state_dict().items():
        prefix = next(p for p in table if name.startswith(p))
        original[table[prefix] + name[len(prefix) :]] = tensor.clone()
    for key in [k for k in original if k.startswith("cnet.") and ".downsample.1." in k]:
        original[key.replace(".downsample.1.", ".norm3.")] = original[key]
    return {"module." + key: value for key, value in original.items()}


@pytest.mark.parametrize("as_folder", [False, True])
def test_original_raft_things_file_loads_through_the_weights_path(tmp_path, as_folder):
    from vos import weights as vweights

    source = _random_raft()
    original = _as_original_file(source)
    assert "module.cnet.layer2.0.norm3.running_mean" in original and "module.fnet.conv1.weight" in original
    path = tmp_path / "raft-things.pth"
    torch.save(original, path)

    target = flow.build_raft().eval()
    spec = str(tmp_path if as_folder else path)
    record = vweights.load_into(
        target, spec, method="abr", variant="davis17m", part="raft", parts=abr.INFO.parts("davis17m")
    )
    assert record["converted"] and record["path"] == str(path)
    expected, loaded = source.state_dict(), target.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name

    torch.manual_seed(1)
    first, second = torch.rand(2, 1, 3, 128, 128) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(target(first, second, num_flow_updates=3)[-1], source(first, second, num_flow_updates=3)[-1])


def test_original_raft_without_batch_counters_and_with_a_stray_key():
    original = {k.removeprefix("module."): v for k, v in _as_original_file(_random_raft()).items()}
    old = {k: v for k, v in original.items() if not k.endswith("num_batches_tracked")}
    converted = abr.convert_raft(old)
    assert converted["context_encoder.convnormrelu.1.num_batches_tracked"].item() == 0
    with pytest.raises(ValueError, match="not in the original RAFT"):
        abr.convert_raft({**original, "fnet.layer4.0.conv1.weight": torch.zeros(1)})
    broken = dict(original)
    broken["cnet.layer3.0.norm3.weight"] = torch.zeros_like(broken["cnet.layer3.0.norm3.weight"])
    with pytest.raises(ValueError, match=r"cnet.layer3.0.norm3.weight differs from cnet.layer3.0.downsample.1.weight"):
        abr.convert_raft(broken)


def test_a_file_in_neither_raft_layout_is_refused_clearly(tmp_path):
    from vos import weights as vweights

    with pytest.raises(ValueError, match="neither the original RAFT layout"):
        abr.convert_raft({"module.encoder.conv1.weight": torch.zeros(1)})
    path = tmp_path / "raft-things.pth"
    torch.save({"model_state_dict": {"encoder.conv1.weight": torch.zeros(2, 3)}}, path)
    with pytest.raises(vweights.ConversionError, match="neither the original RAFT layout"):
        vweights.load_into(
            flow.build_raft(),
            str(path),
            method="abr",
            variant="davis17m",
            part="raft",
            parts=abr.INFO.parts("davis17m"),
        )


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


def test_chunks_are_the_releases_and_bridges_straddle_their_boundaries():
    assert oclr.chunk_frames(12) == [list(range(12)) + [11] * 18]
    assert oclr.chunk_frames(30) == [list(range(30))]
    assert oclr.chunk_frames(60) == [list(range(30)), list(range(30, 60))]
    long = oclr.chunk_frames(71)
    assert [c[0] for c in long] == [0, 30, 41] and all(len(c) == 30 for c in long)
    assert oclr.bridge_frames(30, 71) == list(range(15, 45))
    assert oclr.bridge_frames(30, 40) == list(range(10, 40))  # kept inside the clip


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
    # chunks 0-29, 30-59, 40-69; a bridge (15-44) before the second, none before the third (20 shared frames)
    assert fake.calls == 4 and reports[-1] == (3, 3)
    assert torch.equal(masks, truth)


def test_associate_follows_the_best_overlap():
    a = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    a[:, 0, :2, :2] = True
    a[:, 1, 2:, 2:] = True
    a[:, 2, :2, 2:] = True
    b = a[:, [1, 2, 0]]  # current channel 0 is previous id 1, ...
    assert oclr.associate(a, b) == [1, 2, 0]
    empty = torch.zeros_like(a)
    assert oclr.associate(empty, empty) == [0, 1, 2]
    one = empty.clone()
    one[:, 2] = a[:, 0]
    assert oclr.associate(one, one[:, [2, 1, 0]]) == [2, 1, 0]


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


# --------------------------------------------------------------------------------------------------------------
# OCLR-flow and the selector against a plain functional re-statement of the spec, on the official key names


def _block(x, state, prefix):
    for conv in ("conv1", "conv2"):
        x = F.leaky_relu(F.instance_norm(F.conv2d(x, state[f"{prefix}.{conv}.weight"], padding=1)))
    return x


def _mha(state, prefix, x, memory, forbidden, heads):
    dim = x.shape[-1]
    q = F.linear(x, state[f"{prefix}.in_proj_weight"][:dim], state[f"{prefix}.in_proj_bias"][:dim])
    kv = F.linear(memory, state[f"{prefix}.in_proj_weight"][dim:], state[f"{prefix}.in_proj_bias"][dim:])
    k, v = kv.chunk(2, -1)

    def split(t):
        return t.view(t.shape[0], -1, heads, dim // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / (dim // heads) ** 0.5
    if forbidden is not None:
        scores = scores.masked_fill(forbidden[None, None], -1e9)
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
    return F.linear(out, state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"])


def _ln(state, prefix, x):
    return _norm(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def _ffn(state, prefix, x):
    hidden = F.relu(F.linear(x, state[f"{prefix}.linear1.weight"], state[f"{prefix}.linear1.bias"]))
    return F.linear(hidden, state[f"{prefix}.linear2.weight"], state[f"{prefix}.linear2.bias"])


def _spacetime_grid(t, h, w):
    ranges = [np.linspace(-1.0, 1.0, num=n) for n in (t, h, w)]
    return torch.from_numpy(np.stack(np.meshgrid(*ranges, indexing="ij"), -1).astype(np.float32))


def _unet_decoder(state, prefix, skips, x, levels):
    for level in range(levels, 0, -1):
        x = F.conv_transpose2d(x, state[f"{prefix}.upconv{level}.weight"], state[f"{prefix}.upconv{level}.bias"], 2)
        x = _block(torch.cat([x, skips[level - 1]], 1), state, f"{prefix}.decoder{level}")
    return F.conv2d(x, state[f"{prefix}.conv.weight"], state[f"{prefix}.conv.bias"])


def _reference_oclr(state, flow):
    t = flow.shape[0]
    skips = [_block(flow, state, "encoder.encoder1")]
    for level in (2, 3, 4):
        skips.append(_block(F.max_pool2d(skips[-1], 2), state, f"encoder.encoder{level}"))
    btn = _block(F.max_pool2d(skips[-1], 2), state, "encoder.bottleneck").permute(0, 2, 3, 1)  # t h w c
    h, w, c = btn.shape[1:]
    pos = F.linear(
        _spacetime_grid(t, h, w), *[state[f"transformer_enc.encoder_positime.proj.{p}"] for p in ("weight", "bias")]
    )
    x = (btn + pos).reshape(1, t * h * w, c)
    frame = torch.arange(t).repeat_interleave(h * w)
    mask = frame[None] == frame[:, None]
    for i in range(3):
        p = f"transformer_enc.transformer_encoder.layers.{i}"
        x = _ln(state, f"{p}.norm1", x + _mha(state, f"{p}.self_attn", x, x, mask, 8))
        x = _ln(state, f"{p}.norm2", x + _ffn(state, p, x))
    grid = torch.from_numpy(np.linspace(-1.0, 1.0, num=t).reshape(t, 1).astype(np.float32))
    time = F.linear(grid, *[state[f"transformer_dec.encoder_time.proj.{p}"] for p in ("weight", "bias")])
    queries = state["transformer_dec.motion_embed.weight"][:, None, :].repeat(1, t, 1) + time  # q t c
    y = queries.reshape(1, 3 * t, c)
    for i in range(3):
        p = f"transformer_dec.transformer_decoder.layers.{i}"
        y = _ln(state, f"{p}.norm1", y + _mha(state, f"{p}.self_attn", y, y, None, 8))
        y = _ln(state, f"{p}.norm2", y + _mha(state, f"{p}.multihead_attn", y, x, None, 8))
        y = _ln(state, f"{p}.norm3", y + _ffn(state, p, y))
    enc = x.view(t, h, w, 8, c // 8).permute(3, 0, 1, 2, 4)  # g t h w d
    dec = y.view(3, t, 8, c // 8).permute(2, 0, 1, 3)  # g q t d
    maps = (dec[:, :, :, None, None, :] * enc[:, None]).sum(-1)  # g q t h w
    maps = maps.permute(2, 3, 4, 1, 0).reshape(t, h, w, 24)  # (q g)
    feats = F.relu(F.linear(maps, state["heatmap.mlp.0.weight"], state["heatmap.mlp.0.bias"])).permute(0, 3, 1, 2)
    amodal = _unet_decoder(state, "decoder_am", skips, feats, 4)
    pooled = y.view(3, t, c).max(1).values
    order = F.linear(
        F.relu(F.linear(pooled, state["classhead.mlp.0.weight"], state["classhead.mlp.0.bias"])),
        state["classhead.mlp.2.weight"],
        state["classhead.mlp.2.bias"],
    )
    return amodal, order[:, 0]


@pytest.mark.slow
def test_oclr_matches_a_plain_restatement_of_the_spec():
    torch.manual_seed(4)
    net = oclr.OclrFlow().eval()
    flow_in = torch.randn(2, 4, 128, 224) * 3
    with torch.inference_mode():
        amodal, order = net(flow_in)
        ref_amodal, ref_order = _reference_oclr(net.state_dict(), flow_in)
    torch.testing.assert_close(amodal, ref_amodal, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(order, ref_order, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_selector_matches_a_plain_restatement_of_the_spec():
    torch.manual_seed(5)
    net = selector.MaskSelector().eval()
    t = 3
    rgbs, tokens = torch.randn(t, 3, 128, 224), torch.randn(t, 8, 14, 384)
    mask = (torch.rand(t, 1, 128, 224) > 0.7).float()
    s = net.state_dict()
    with torch.inference_mode():
        first = torch.cat([_block(rgbs, s, "encoder.encoder1_rgb"), _block(mask, s, "encoder.encoder1_mask")], 1)
        skips = [_block(first, s, "encoder.encoder1")]
        for level in (2, 3, 4):
            skips.append(_block(F.max_pool2d(skips[-1], 2), s, f"encoder.encoder{level}"))
        btn = _block(F.max_pool2d(skips[-1], 2), s, "encoder.bottleneck").permute(0, 2, 3, 1)
        x = F.linear(torch.cat([btn, tokens], -1), s["mlp.weight"], s["mlp.bias"])
        pos = F.linear(
            _spacetime_grid(t, 8, 14), *[s[f"transformer_enc.encoder_positime.proj.{p}"] for p in ("weight", "bias")]
        )
        x = (x + pos).reshape(1, t * 112, 256)
        frame = torch.arange(t).repeat_interleave(112)
        forbidden = frame[None] == frame[:, None]
        for i in range(3):
            p = f"transformer_enc.transformer_encoder.layers.{i}"
            x = _ln(s, f"{p}.norm1", x + _mha(s, f"{p}.self_attn", x, x, forbidden, 8))
            x = _ln(s, f"{p}.norm2", x + _ffn(s, p, x))
        x = x.view(t, 8, 14, 256).permute(0, 3, 1, 2)
        expected = _unet_decoder(s, "decoder", skips, x, 4).softmax(1)
        torch.testing.assert_close(net(rgbs, mask, tokens), expected, rtol=1e-4, atol=1e-5)


def _slot_mha(state, prefix, x, memory, forbidden, heads=8):
    dim = x.shape[-1]
    q = F.linear(x, state[f"{prefix}.in_proj_weight"][:dim], state[f"{prefix}.in_proj_bias"][:dim])
    kv = F.linear(memory, state[f"{prefix}.in_proj_weight"][dim:], state[f"{prefix}.in_proj_bias"][dim:])
    k, v = kv.chunk(2, -1)

    def split(t):
        return t.view(t.shape[0], -1, heads, dim // heads).transpose(1, 2)

    scores = (split(q) @ split(k).transpose(-2, -1) / (dim // heads) ** 0.5).masked_fill(forbidden[None, None], -1e9)
    weights = scores.softmax(-2)
    weights = weights / weights.sum(-1, keepdim=True)
    out = (weights @ split(v)).transpose(1, 2).reshape(x.shape)
    return F.linear(out, state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"])


def _linear(state, prefix, x):
    return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])


@pytest.mark.slow
def test_corrector_matches_a_plain_restatement_of_the_spec():
    torch.manual_seed(6)
    net = corrector.MaskCorrector().eval()
    s = net.state_dict()
    t, n, h, w, c = 7, 2, 16, 28, 384
    rgbs, tokens = torch.randn(t, 3, 128, 224), torch.randn(t, h, w, c)
    masks = (torch.rand(t, 3, 128, 224) > 0.6).float()
    frames = torch.tensor([5, 6, 7, 8, 9, 10, 11])
    ex_tokens, ex_masks = torch.randn(3, n, h, w, c), (torch.rand(3, n, 128, 224) > 0.5).float()
    ex_scores, ex_frames = torch.rand(3, n), torch.tensor([[0, 6], [6, 11], [2, 3]])
    with torch.inference_mode():
        got = net(rgbs, masks, tokens, frames, ex_tokens, ex_masks, ex_scores, ex_frames)

        enc = "rgbmaskenc.encoder_rgbmask"
        first = torch.cat([_block(rgbs, s, f"{enc}.encoder1_rgb"), _block(masks, s, f"{enc}.encoder1_mask")], 1)
        skips = [_block(first, s, f"{enc}.encoder1")]
        for level in (2, 3):
            skips.append(_block(F.max_pool2d(skips[-1], 2), s, f"{enc}.encoder{level}"))
        # object queries: nearest-downsampled masks, masked means, score-weighted mean
        small = F.interpolate(ex_masks, size=(h, w), mode="nearest")[..., None]
        per = (small * ex_tokens).sum((2, 3)) / (small.sum((2, 3)) + 1e-12)
        objects = (per * ex_scores[..., None]).sum(1) / (ex_scores.sum(1)[:, None] + 1e-12)
        # exemplar keys
        space = torch.from_numpy(
            np.stack(np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij"), -1).astype(np.float32)
        )
        info = _linear(
            s, "rgbmaskenc.encoder_queryinfo.proj", torch.from_numpy(np.linspace(-1, 1, 7).astype(np.float32))[:3, None]
        )
        overlay = (F.interpolate(ex_masks, size=(h, w), mode="bilinear") > 0.5).float()[..., None]
        keys_ex = ex_tokens + _linear(s, "rgbmaskenc.encoder_posi.proj", space) + overlay * info[:, None, None, None]
        # queries and target keys
        td = "rgbglobalcorrector.transdec"
        slots = torch.cat([objects, s[f"{td}.slots_embedding.weight"]])[:, None].repeat(1, t, 1)  # 7 qq x 7 t
        qt = np.stack(np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, t), indexing="ij"), -1).astype(np.float32)
        x = (slots + _linear(s, f"{td}.encoder_querytime.proj", torch.from_numpy(qt))).reshape(1, 49, c)
        keys = tokens + _linear(s, f"{td}.encoder_positime.proj", _spacetime_grid(t, h, w))
        flat_keys = keys.reshape(1, t * h * w, c)
        query_t = torch.arange(49) % 7
        time_mask = query_t[:, None] == torch.arange(t).repeat_interleave(h * w)[None]
        cross_mask = frames[query_t][:, None] == ex_frames.reshape(-1).repeat_interleave(h * w)[None]
        for i in range(3):
            p = f"{td}.transformer_decoder.layers.{i}"
            x = _ln(s, f"{p}.norm1", x + _mha(s, f"{p}.self_attn", x, x, None, 8))
            x = _ln(s, f"{p}.norm2", x + _slot_mha(s, f"{p}.multihead_attn", x, flat_keys, time_mask))
            x = _ln(s, f"{p}.norm3", x + _ffn(s, p, x))
            x = _ln(s, f"{p}.norm4", x + _slot_mha(s, f"{p}.multihead_attn2", x, keys_ex.reshape(1, -1, c), cross_mask))
            hidden = F.relu(_linear(s, f"{p}.linear2_1", x))
            x = _ln(s, f"{p}.norm5", x + _linear(s, f"{p}.linear2_2", hidden))
        dec = x.view(7, t, 8, 48)[:3].permute(2, 0, 1, 3)  # g q t d
        kk = keys.view(t, h, w, 8, 48).permute(3, 0, 1, 2, 4)  # g t h w d
        maps = (dec[:, :, :, None, None, :] * kk[:, None]).sum(-1).permute(1, 2, 3, 4, 0)  # q t h w g
        maps = F.relu(_linear(s, f"{td}.heatmap.mlp.0", maps))
        mixed = _linear(s, "rgbmaskdec.mlp_mix", maps.permute(1, 2, 3, 0, 4).reshape(t, h, w, 3 * 512))
        expected = _unet_decoder(s, "rgbmaskdec.decoder_m", skips, mixed.permute(0, 3, 1, 2), 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# Options: test-time adaptation, CRF, reduced precision


def test_adaptation_and_crf_are_off_by_default():
    options = abr.INFO.resolve_options({})
    assert options["tta_iters"] == 0 and options["crf"] is False
    assert options["tta_lr"] == 2e-5 and options["crf_iters"] == 5
    paper = {o.name: o.paper for o in abr.INFO.options}
    assert paper["tta_iters"] == 200 and paper["crf"] is True


def _corrector_inputs(num_frames: int, seed: int = 0):
    from vos.methods.abr.adaptation import CorrectorInputs

    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(num_frames, 3, 128, 224)
    masks[:, 0, 30:90, 40:120] = 1
    masks[:, 1, 10:50, 150:210] = 1
    masks[:, 2, 100:125, 10:60] = 1
    tokens = torch.randn(num_frames, 16, 28, 384, generator=gen)
    frames = torch.tensor([[0, 2, 5], [1, 2, 6], [0, 3, 4]])[:, : min(3, num_frames)]
    objects = torch.arange(3)[:, None]
    return CorrectorInputs(
        rgbs=torch.randn(num_frames, 3, 128, 224, generator=gen),
        masks=masks,
        tokens=tokens,
        exemplar_tokens=tokens[frames],
        exemplar_masks=masks[frames, objects],
        exemplar_scores=torch.rand(3, frames.shape[1], generator=gen),
        exemplar_frames=frames,
    )


def test_adaptation_trains_on_windows_holding_exemplar_frames():
    from vos.methods.abr.adaptation import training_windows

    assert training_windows(20, torch.tensor([[0, 2], [3, 4]])) == [list(range(7))]
    assert training_windows(20, torch.tensor([[0, 19]])) == [list(range(7)), list(range(13, 20))]
    assert training_windows(5, torch.tensor([[4]])) == [[0, 1, 2, 3, 4, 4, 4]]


def test_adaptation_stops_before_touching_anything():
    from vos.methods.abr.adaptation import adapt
    from vos.methods.base import Stopped

    net = corrector.MaskCorrector().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def stop(stage, done, total):
        assert stage == "adapting the corrector" and total == 200
        raise Stopped()

    with pytest.raises(Stopped):
        adapt(net, _corrector_inputs(7), torch.rand(7, 3, 128, 224), report=stop)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_adaptation_fine_tunes_a_copy_lowers_its_loss_and_honours_a_stop():
    from vos.methods.abr.adaptation import adapt, adaptation_loss
    from vos.methods.base import Stopped

    torch.manual_seed(0)
    net = corrector.MaskCorrector().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    inputs = _corrector_inputs(7)
    with torch.inference_mode():  # as the pipeline calls it: inference tensors in, gradients inside
        probabilities = torch.rand(7, 3, 128, 224, generator=torch.Generator().manual_seed(1))
        seen = []
        adapted, losses = adapt(net, inputs, probabilities, iterations=2, lr=1e-3, report=lambda *a: seen.append(a))
    assert seen == [("adapting the corrector", k, 2) for k in range(3)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the loaded weights are untouched
    changed = [k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])]
    assert "rgbglobalcorrector.transdec.slots_embedding.weight" in changed
    assert "rgbglobalcorrector.mlp_feat.weight" in changed  # the reconstruction term trains its head
    assert not any(p.requires_grad for p in adapted.parameters())

    pseudo = (probabilities > 0.5).float()
    window = list(range(7))
    with torch.no_grad():
        assert adaptation_loss(adapted, inputs, window, pseudo) < adaptation_loss(net, inputs, window, pseudo)

    def stop_after_one(stage, done, total):
        if done == 1:
            raise Stopped()

    with pytest.raises(Stopped):
        adapt(net, inputs, probabilities, iterations=5, lr=1e-3, report=stop_after_one)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_refinement_with_adaptation_leaves_the_next_clip_to_the_loaded_corrector():
    torch.manual_seed(0)
    method = abr.AppearanceRefinement(weights="random", device="cpu")
    nets = method.networks
    before = {k: v.clone() for k, v in nets.corrector.state_dict().items()}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 112, 3), dtype=np.uint8) for _ in range(7)]
    masks = _corrector_inputs(7).masks
    stages = []

    def refine(adaptation):
        return pipeline.refine(
            nets, frames, masks, device=torch.device("cpu"), report=lambda *a: stages.append(a), adaptation=adaptation
        )

    plain = refine(None)
    assert torch.equal(refine(pipeline.Adaptation(iterations=0)), plain)  # off: the same masks
    adapted = refine(pipeline.Adaptation(iterations=1, lr=1e-3))
    assert ("adapting the corrector", 1, 1) in stages and ("adapted corrector", 1, 1) in stages
    assert not torch.equal(adapted, plain)
    assert all(torch.equal(v, before[k]) for k, v in nets.corrector.state_dict().items())
    assert torch.equal(refine(None), plain)  # the next clip starts from the loaded weights


def _speckled_scene():
    rng = np.random.default_rng(0)
    frame = np.full((90, 160, 3), 60, np.float64)
    frame[20:70, 30:100] = (210, 80, 40)
    frame[30:60, 115:150] = (40, 200, 90)
    frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    labels = np.zeros((90, 160), np.uint8)
    labels[20:70, 30:100] = 3
    labels[30:60, 115:150] = 2
    return frame, labels


def test_crf_removes_a_speckle_and_keeps_ids_and_size():
    from vos.methods.abr import crf

    frame, truth = _speckled_scene()
    labels = truth.copy()
    labels[45, 60] = 0  # a hole inside object 3
    labels[10, 10] = 3  # an island of object 3 in the background
    labels[45, 130] = 3  # object 3 inside object 2
    out = crf.refine_labels(frame, labels)
    assert out.shape == labels.shape and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 2, 3}
    assert out[45, 60] == 3 and out[10, 10] == 0 and out[45, 130] == 2
    assert (out == truth).mean() > 0.995
    one_object = np.where(truth == 3, 3, 0).astype(np.uint8)
    assert set(np.unique(crf.refine_labels(frame, one_object))) <= {0, 3}
    blank = np.zeros_like(labels)
    assert np.array_equal(crf.refine_labels(frame, blank), blank)


@pytest.mark.slow
def test_bf16_and_crf_run_on_a_tiny_clip():
    from vos.synthetic import moving_shapes
    from vos.video import Clip

    torch.manual_seed(0)
    method = abr.AppearanceRefinement(weights="random", device="cpu", dtype="bf16", crf=True, crf_iters=2)
    assert method.dtype == torch.bfloat16
    synthetic = moving_shapes(4, (64, 112), 2)
    maps = list(method.segment(Clip.from_frames(synthetic.frames), synthetic.masks[0]))
    assert len(maps) == 4
    assert all(m.shape == (64, 112) and m.dtype == np.uint8 and m.max() <= 3 for m in maps)


@pytest.mark.parametrize(("size", "dilation"), [(5, 1), (5, 4), (5, 64), (3, 2)])
def test_neighbour_gather_equals_unfold(size, dilation):
    from vos.nn_utils import neighbours

    x = torch.randn(2, 3, 20, 33, generator=torch.Generator().manual_seed(dilation))
    expected = F.unfold(x, size, dilation=dilation, padding=(size // 2) * dilation).view(2, 3, size, size, 20, 33)
    assert torch.equal(neighbours(x, size, dilation), expected)
