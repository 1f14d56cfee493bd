"""BA: the release's checkpoint layout and its loading, the DINO feature against a plain re-statement of the spec
(position interpolation included), key frames and windows, the attention rows (chunked = dense), the clustering on
constructed rows, the whole method against a plain dense re-statement of the spec (every frame, the last included),
and the full model with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vos.methods as vm
from vos.methods import ba
from vos.synthetic import moving_shapes
from vos.video import Clip

# --------------------------------------------------------------------------------------------------------------
# Network and official checkpoint


def _official_layout() -> dict[str, tuple[int, ...]]:
    """checkpoint_dino-s-8.pth's model_state_dict, from the spec: DINO ViT-S/8 under encoder.*, the correlator block
    under temporal_transformer.0.* (qkv without bias)."""
    layout: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, 1, 384),
        "encoder.pos_embed": (1, 785, 384),
        "encoder.patch_embed.proj.weight": (384, 3, 8, 8),
        "encoder.patch_embed.proj.bias": (384,),
        "encoder.norm.weight": (384,),
        "encoder.norm.bias": (384,),
    }

    def block(prefix: str, qkv_bias: bool) -> None:
        for norm in ("norm1", "norm2"):
            layout[f"{prefix}.{norm}.weight"] = (384,)
            layout[f"{prefix}.{norm}.bias"] = (384,)
        layout[f"{prefix}.attn.qkv.weight"] = (1152, 384)
        if qkv_bias:
            layout[f"{prefix}.attn.qkv.bias"] = (1152,)
        layout[f"{prefix}.attn.proj.weight"] = (384, 384)
        layout[f"{prefix}.attn.proj.bias"] = (384,)
        layout[f"{prefix}.mlp.fc1.weight"] = (1536, 384)
        layout[f"{prefix}.mlp.fc1.bias"] = (1536,)
        layout[f"{prefix}.mlp.fc2.weight"] = (384, 1536)
        layout[f"{prefix}.mlp.fc2.bias"] = (384,)

    for i in range(12):
        block(f"encoder.blocks.{i}", qkv_bias=True)
    block("temporal_transformer.0", qkv_bias=False)
    return layout


def _official_checkpoint(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in _official_layout().items()}
    return {"iteration": 30000, "loss": 0.42, "model_state_dict": state, "optimizer_state_dict": {"state": {}}}


def test_layout_has_the_release_key_split():
    layout = _official_layout()
    assert len(layout) == 161
    assert sum(k.startswith("encoder.") for k in layout) == 150
    assert sum(k.startswith("temporal_transformer.0.") for k in layout) == 11
    with torch.device("meta"):
        net = ba.BetrayedByAttentionNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == layout
    # The encoder's names are timm's vit_small_patch8_224 (the Hub's timm/vit_small_patch8_224.dino).
    import timm

    with torch.device("meta"):
        reference = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0)
    timm_layout = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(timm_layout) == 150
    assert {k.removeprefix("encoder."): s for k, s in layout.items() if k.startswith("encoder.")} == timm_layout
    # Meta-device layout probe through the method's own build_part.
    from vos.methods.base import part_layout

    assert part_layout("ba", "dino_s8", "model") == layout


@pytest.mark.slow
def test_official_file_loads_strictly_through_the_weights_layer(tmp_path):
    checkpoint = _official_checkpoint(seed=1)
    converted = ba.convert_official(checkpoint)
    assert set(converted) == set(_official_layout())
    path = tmp_path / "checkpoint_dino-s-8.pth"
    torch.save(checkpoint, path)
    method = vm.create("ba", weights=str(path), device="cpu")
    state = method.nets["model"].state_dict()
    source = checkpoint["model_state_dict"]
    for key in ("encoder.pos_embed", "encoder.blocks.11.attn.qkv.bias", "temporal_transformer.0.attn.qkv.weight"):
        assert torch.equal(state[key], source[key]), key
    assert method.weights_records[0]["part"] == "model"
    assert not method.nets["model"].training
    # A key the network does not have is named by strict loading.
    checkpoint["model_state_dict"]["temporal_transformer.0.attn.qkv.bias"] = torch.zeros(1152)
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="qkv.bias"):
        vm.create("ba", weights=str(path), device="cpu")


def _spec_dino_keys(vit: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The spec's feature written plainly: patch conv, class token, the position embedding interpolated DINO's way
    (bicubic, scale factor ((h + 0.1) / 28, (w + 0.1) / 28)), 11 blocks, then block 11's norm1 and qkv, columns
    384:768 (the keys, bias included), patch tokens only -> (B, h*w, 384)."""
    batch, _, height, width = images.shape
    h, w = height // 8, width // 8
    patches = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=8)
    tokens = torch.cat([vit.cls_token.expand(batch, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
    grid = vit.pos_embed[:, 1:].reshape(1, 28, 28, 384).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / 28, (w + 0.1) / 28), mode="bicubic", align_corners=False)
    assert grid.shape[-2:] == (h, w)
    tokens = tokens + torch.cat([vit.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    for block in vit.blocks[:11]:
        tokens = block(tokens)
    last = vit.blocks[11]
    qkv = F.linear(F.layer_norm(tokens, (384,), last.norm1.weight, last.norm1.bias, eps=1e-6), last.attn.qkv.weight)
    qkv = qkv + last.attn.qkv.bias
    return qkv[:, 1:, 384:768]


def test_dino_interpolation_equals_the_spec_formula_on_a_non_square_grid():
    from vos.backbones.vit import dino_pos_embed

    torch.manual_seed(0)
    pos_embed = torch.randn(1, 785, 384)
    for h, w in ((40, 60), (8, 12), (7, 5)):
        grid = pos_embed[:, 1:].reshape(1, 28, 28, 384).permute(0, 3, 1, 2)
        spec = F.interpolate(grid, scale_factor=((h + 0.1) / 28, (w + 0.1) / 28), mode="bicubic")
        expected = torch.cat([pos_embed[:, :1], spec.flatten(2).transpose(1, 2)], dim=1)
        assert torch.equal(dino_pos_embed(pos_embed, (h, w)), expected), (h, w)
    # The scale factor, not the target size: the two differ (so the test above could fail).
    grid = pos_embed[:, 1:].reshape(1, 28, 28, 384).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(40, 60), mode="bicubic")
    assert not torch.allclose(by_size.flatten(2).transpose(1, 2), dino_pos_embed(pos_embed, (40, 60))[:, 1:])


@pytest.mark.slow
def test_frame_keys_equal_the_spec_feature():
    torch.manual_seed(0)
    net = ba.BetrayedByAttentionNet().eval()
    with torch.no_grad():  # a non-zero pos_embed, so the interpolation matters
        net.encoder.pos_embed.normal_(0, 0.5)
    images = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        ours = net.frame_keys(images)
        spec = _spec_dino_keys(net.encoder, images)
    assert ours.shape == (2, 8 * 12, 384)
    torch.testing.assert_close(ours, spec, rtol=1e-4, atol=1e-5)


def test_frames_are_divided_before_the_resize():
    frame = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image = ba.prepare_frame(frame, (16, 24))
    assert image.shape == (3, 16, 24) and image.dtype == np.float32
    import cv2

    float_first = cv2.resize(frame.astype(np.float64) / 255, (24, 16), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(image, float_first.transpose(2, 0, 1).astype(np.float32))
    uint8_first = cv2.resize(frame, (24, 16), interpolation=cv2.INTER_LINEAR) / 255
    assert not np.allclose(image, uint8_first.transpose(2, 0, 1), atol=1e-4)  # the order matters


# --------------------------------------------------------------------------------------------------------------
# Key frames, windows, attention


def test_key_frames_and_windows():
    assert ba.key_frames(21, 10) == [0, 10]
    assert ba.key_frames(25, 10) == [0, 10]  # floor(T / r), as the release
    assert ba.key_frames(30, 10) == [0, 10, 20]
    assert ba.key_frames(4, 10) == [0]  # T < r: still one key frame
    assert ba.key_frames(5, 1) == [0, 1, 2, 3, 4]
    assert [list(w) for w in ba.query_windows(7)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [list(w) for w in ba.query_windows(2)] == [[0, 1]]
    with pytest.raises(ValueError):
        ba.key_frames(5, 0)


def _dense_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """All heads at once as the spec states: (q k^T) * scale, softmax over all keys per head, mean over heads, rows
    divided by their sums."""
    logits = torch.einsum("hnc,hmc->nhm", q, k) * scale
    rows = logits.softmax(dim=-1).mean(dim=1)
    return rows / rows.sum(dim=-1, keepdim=True)


def test_chunked_attention_equals_the_dense_rows():
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(8, 301, 48, generator=generator)
    k = torch.randn(8, 190, 48, generator=generator)
    scale = 48**-0.5
    dense = _dense_attention(q, k, scale)
    whole = ba.attention_rows(q, k, scale, chunk=10_000)
    torch.testing.assert_close(whole, dense, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(whole.sum(dim=1), torch.ones(301), rtol=0, atol=1e-6)
    for chunk in (1, 7, 64, 300):
        torch.testing.assert_close(ba.attention_rows(q, k, scale, chunk=chunk), whole, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------------------------
# Distances and clustering


def _plain_symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_c (p_c - q_c)(log p_c - log q_c) for every pair of rows, elementwise (float64)."""
    p, q = p.double(), q.double()
    return ((p[:, None] - q[None]) * (p[:, None].log() - q[None].log())).sum(-1)


@pytest.mark.parametrize("row_chunk", [7, ba.ROW_CHUNK])
def test_symmetric_kl_forms_agree_and_survive_zeros(row_chunk, monkeypatch):
    monkeypatch.setattr(ba, "ROW_CHUNK", row_chunk)  # 7: blocks of rows and columns, uneven at the end
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, 40, generator=generator) * 3, dim=1)
    q = torch.softmax(torch.randn(30, 40, generator=generator) * 3, dim=1)
    torch.testing.assert_close(ba.symmetric_kl(p, q).double(), _plain_symmetric_kl(p, q), rtol=1e-4, atol=1e-5)
    pairwise = ba.pairwise_symmetric_kl(p)
    torch.testing.assert_close(pairwise.double(), _plain_symmetric_kl(p, p), rtol=1e-4, atol=1e-5)
    assert torch.equal(pairwise, pairwise.t())
    torch.testing.assert_close(pairwise, ba.symmetric_kl(p, p), rtol=1e-5, atol=1e-5)
    index = torch.tensor([3, 0, 49])
    torch.testing.assert_close(ba.symmetric_kl_rows(p)(index), pairwise[index], rtol=1e-5, atol=1e-5)
    # An exact zero (an underflowed softmax) gives a large finite distance, not NaN.
    zero = p.clone()
    zero[0, :5] = 0
    zero[0] /= zero[0].sum()
    distance = ba.pairwise_symmetric_kl(zero)
    assert torch.isfinite(distance).all() and distance[0, 1] > 10


def _rows_around(centres: torch.Tensor, per_group: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    logits = centres.repeat_interleave(per_group, dim=0)
    return torch.softmax(logits + noise * torch.randn(logits.shape, generator=generator), dim=1)


def test_two_separated_groups_give_two_clusters_in_leader_order():
    generator = torch.Generator().manual_seed(1)
    centres = torch.zeros(2, 60)
    centres[0, :30] = 4.0
    centres[1, 30:] = 4.0
    rows = _rows_around(centres, 20, 0.1, generator)
    order = torch.randperm(40, generator=generator)
    rows = rows[order]
    centroids = ba.cluster_window(rows, 1.0)
    assert len(centroids) == 2
    labels = ba.assign(ba.merge_centroids(centroids, 1.0), rows)
    group = (order >= 20).long()
    assert torch.equal(labels, group if group[0] == 0 else 1 - group)  # cluster 0 is the first row's
    assert labels[0] == 0


def test_identical_rows_give_one_cluster():
    row = torch.softmax(torch.randn(1, 80, generator=torch.Generator().manual_seed(2)), dim=1)
    rows = row.repeat(30, 1)
    centroids = ba.cluster_window(rows, 1.0)
    assert len(centroids) == 1
    torch.testing.assert_close(centroids[0], row[0])
    assert ba.assign(centroids, rows).tolist() == [0] * 30
    # Even at tau = 0 a row is its own cluster's member (no empty mean).
    assert len(ba.cluster_window(rows, 0.0)) >= 1 and torch.isfinite(ba.cluster_window(rows, 0.0)).all()


def test_leader_pass_is_greedy_in_row_order_with_inclusive_threshold():
    # Distances 0-1 = 1.0 (= tau: joined), 1-2 = 1.0, 0-2 = 2.0: the leader 0 takes 1 but not 2; 2 leads its own.
    distance = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    centroids = ba.leader_clusters(rows, 1.0, distance.__getitem__)
    torch.testing.assert_close(centroids, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    # Starting from row 1 instead would take all three: the order decides.
    order = [1, 0, 2]
    assert len(ba.leader_clusters(rows[order], 1.0, distance[order][:, order].__getitem__)) == 1


def test_leader_pass_by_blocks_of_rows_equals_the_pass_over_the_whole_matrix():
    generator = torch.Generator().manual_seed(4)
    rows = torch.softmax(torch.randn(300, 50, generator=generator) * 2, dim=1)
    distance = ba.pairwise_symmetric_kl(rows)
    tau = float(distance.quantile(0.02))
    blocks = ba.leader_clusters(rows, tau, ba.symmetric_kl_rows(rows))
    whole = ba.leader_clusters(rows, tau, distance.__getitem__)
    assert len(whole) > 2 * ba.LEADER_BLOCK // 3  # several blocks of candidates
    assert blocks.shape == whole.shape
    torch.testing.assert_close(blocks, whole)


def test_merging_repeats_until_the_count_is_stable():
    # Rows on a line between two distributions (mixtures at 0, 0.3, 0.33, 0.6). With tau just above d(0, 0.3) the
    # first pass makes {0, 0.3} and {0.33, 0.6}; their means are within tau, so a second pass merges them.
    first, second = torch.zeros(20), torch.zeros(20)
    first[:10], second[10:] = 1.0, 1.0
    rows = torch.stack([(1 - x) * first + x * second + 0.05 for x in (0.0, 0.3, 0.33, 0.6)])
    rows /= rows.sum(dim=1, keepdim=True)
    distance = ba.pairwise_symmetric_kl(rows)
    tau = float(distance[0, 1]) * 1.05
    assert distance[0, 2] > tau  # the leader 0 does not take 0.33
    once = ba.leader_clusters(rows, tau, distance.__getitem__)
    assert len(once) == 2
    torch.testing.assert_close(once[0], rows[:2].mean(dim=0))
    assert ba.pairwise_symmetric_kl(once)[0, 1] <= tau
    merged = ba.merge_centroids(rows, tau)
    assert len(merged) == 1
    torch.testing.assert_close(merged[0], once.mean(dim=0))  # the mean of the means, unweighted


def test_segment_ids_are_contiguous_over_non_empty_clusters():
    labels = np.array([[[0, 3], [3, 7]], [[7, 7], [0, 9]]])
    ids = ba.segment_ids(labels)
    assert ids.dtype == np.uint8
    assert ids.tolist() == [[[1, 2], [2, 3]], [[3, 3], [1, 4]]]
    with pytest.raises(ba.TooManySegments, match="tau"):
        ba.segment_ids(np.arange(300))


def test_nearest_upsampling_is_torchs_floor_convention():
    labels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    up = ba.upsample_labels(labels, (5, 7))
    rows = np.floor(np.arange(5) * 2 / 5).astype(int)
    cols = np.floor(np.arange(7) * 3 / 7).astype(int)
    assert np.array_equal(up, labels[rows][:, cols])


# --------------------------------------------------------------------------------------------------------------
# The method against a plain dense re-statement of the spec


def _spec_clusters(rows_per_window: list[torch.Tensor], tau: float) -> torch.Tensor:
    """The spec's clustering, plainly: per window, smoothing (row-normalised (D <= tau) @ A), D' and the greedy
    pass; then global passes until the count is stable. Returns the final centroids."""

    def greedy(rows: torch.Tensor, distance: torch.Tensor) -> list[torch.Tensor]:
        taken = [False] * len(rows)
        out = []
        for i in range(len(rows)):
            if taken[i]:
                continue
            members = [j for j in range(len(rows)) if not taken[j] and distance[i, j] <= tau]
            for j in members:
                taken[j] = True
            out.append(rows[members].mean(dim=0))
        return out

    centroids: list[torch.Tensor] = []
    for rows in rows_per_window:
        near = (_plain_symmetric_kl(rows, rows) <= tau).float()
        smoothed = (near / near.sum(dim=1, keepdim=True)) @ rows
        centroids += greedy(smoothed, _plain_symmetric_kl(smoothed, smoothed))
    while True:
        stacked = torch.stack(centroids)
        merged = greedy(stacked, _plain_symmetric_kl(stacked, stacked))
        if len(merged) == len(centroids):
            return torch.stack(merged)
        centroids = merged


def _spec_segments(method, frames: list[np.ndarray], size: tuple[int, int], r: int, tau: float) -> list[np.ndarray]:
    """The whole method, plainly: every frame's DINO keys, the correlator's q and k for ALL frames in one pass, the
    dense attention of all queries against floor(T/r) key frames, windows of 3, the spec's clustering, argmin over
    the unsmoothed rows, ids in cluster order over the non-empty clusters, torch nearest upsampling."""
    net = method.nets["model"]
    height, width = size
    h, w = height // 8, width // 8
    images = torch.from_numpy(np.stack([ba.prepare_frame(f, size) for f in frames]))
    mean = torch.tensor([0.43216, 0.394666, 0.37645]).view(1, 3, 1, 1)
    std = torch.tensor([0.22803, 0.22145, 0.216989]).view(1, 3, 1, 1)
    with torch.inference_mode():
        features = net.frame_keys((images - mean) / std)  # (T, HW, 384)
        block = net.temporal_transformer[0]
        count = len(frames)
        qkv = block.attn.qkv(block.norm1(features)).reshape(count, h * w, 3, 8, 48).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]  # (T, 8, HW, 48)
        k = k[[i * r for i in range(max(count // r, 1))]]
        logits = torch.einsum("qhnc,khmc->qnhkm", q, k).reshape(count * h * w, 8, -1) * 48**-0.5
        attention = logits.softmax(dim=-1).mean(dim=1)
        attention = attention / attention.sum(dim=-1, keepdim=True)
    per_frame = attention.view(count, h * w, -1)
    windows = [per_frame[t : t + 3].reshape(-1, attention.shape[1]) for t in range(0, count, 3)]
    centroids = _spec_clusters(windows, tau)
    labels = _plain_symmetric_kl(centroids, attention).argmin(dim=0).view(count, h, w).numpy()
    used = np.unique(labels)
    ids = np.searchsorted(used, labels) + 1
    return [
        F.interpolate(torch.from_numpy(i).float()[None, None], size=frames[0].shape[:2], mode="nearest")[0, 0]
        .numpy()
        .astype(np.uint8)
        for i in ids
    ]


@pytest.fixture(scope="module")
def sharp_ba():
    """Random weights whose correlator is scaled up so the attention is peaked and tau gives several clusters."""
    torch.manual_seed(0)
    method = vm.create("ba", weights="random", device="cpu", size=(64, 96), r=3, tau=0.6)
    with torch.no_grad():
        method.nets["model"].temporal_transformer[0].attn.qkv.weight.mul_(3.0)
    return method


@pytest.mark.slow
def test_segment_equals_a_plain_dense_reference_of_the_spec(sharp_ba, monkeypatch):
    monkeypatch.setattr(ba, "ROW_CHUNK", 100)  # windows of 288 tokens: distances and smoothing in uneven blocks
    # 7 frames: windows 0-2, 3-5 and a one-frame last window; key frames 0 and 3; frames not at the working size.
    data = moving_shapes(7, (72, 100), 3, seed=1, object_scale=0.25)
    frames = list(data.frames)
    frames[-1] = np.ascontiguousarray(frames[-1][::-1, ::-1])  # a last frame unlike the others
    calls = []
    outputs = list(sharp_ba.segment(Clip.from_frames(frames), data.masks[0], progress=calls.append))
    expected = _spec_segments(sharp_ba, frames, (64, 96), r=3, tau=0.6)
    assert len(outputs) == len(expected) == 7
    assert all(o.shape == (72, 100) and o.dtype == np.uint8 for o in outputs)
    for t, (ours, theirs) in enumerate(zip(outputs, expected)):
        assert np.array_equal(ours, theirs), (t, int((ours != theirs).sum()))
    segments = np.unique(np.stack(outputs))
    assert len(segments) >= 3 and segments[0] == 1 and segments[-1] == len(segments)  # several, contiguous, no 0
    # The last frame is segmented on its own (not a copy of the one before, as the release's loader does).
    assert not np.array_equal(outputs[-1], outputs[-2])
    stages = [str(c).split(" ")[0] for c in calls]
    assert stages.index("features") < stages.index("attention") < stages.index("assignment") < stages.index("frame")
    assert {"clustering"} <= set(stages)


@pytest.mark.slow
def test_fewer_frames_than_the_key_interval(sharp_ba, monkeypatch):
    data = moving_shapes(4, (64, 96), 2, seed=2)
    monkeypatch.setitem(sharp_ba.options, "r", 10)
    outputs = list(sharp_ba.segment(Clip.from_frames(data.frames), data.masks[0]))
    expected = _spec_segments(sharp_ba, list(data.frames), (64, 96), r=10, tau=0.6)
    assert len(outputs) == 4
    for ours, theirs in zip(outputs, expected):
        assert np.array_equal(ours, theirs)


# --------------------------------------------------------------------------------------------------------------
# Full model, registration, options


@pytest.mark.slow
def test_full_model_with_random_weights_runs_a_small_clip():
    method = vm.create("ba", weights="random", device="cpu", size="64x96")
    generator = np.random.default_rng(0)
    frames = [generator.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    outputs = list(method.segment(Clip.from_frames(frames), np.zeros((64, 96), np.uint8)))
    assert len(outputs) == 4
    for output in outputs:
        assert output.shape == (64, 96) and output.dtype == np.uint8 and output.min() >= 1
    # With random weights the attention is nearly uniform: tau = 1.0 gives one cluster (as the spec says).
    assert {int(v) for o in outputs for v in np.unique(o)} == {1}


@pytest.mark.slow
def test_working_size_follows_the_release_rule_and_the_option():
    method = vm.create("ba", weights="random", device="cpu")
    clip = Clip.from_frames([np.zeros((480, 854, 3), np.uint8)] * 2)
    assert method.working_size(clip) == (320, 480)
    assert method.working_size(clip.with_max_side(240)) == (160, 240)  # the user's smaller resolution, multiple of 8
    method = vm.create("ba", weights="random", device="cpu", size="192x384")
    assert method.working_size(clip) == (192, 384)
    with pytest.raises(vm.OptionError, match="multiples of 8"):
        vm.create("ba", weights="random", device="cpu", size="100x200")
    with pytest.raises(vm.OptionError):
        vm.create("ba", weights="random", device="cpu", r=0)
    with pytest.raises(vm.OptionError):
        vm.create("ba", weights="random", device="cpu", tau=-1)


def test_registered_with_its_options_and_figures():
    info = vm.get_info("ba")
    assert info.task == vm.UNSUP and info.offline and info.default_variant == "dino_s8"
    assert info.parts("dino_s8") == {"model": "ba.dino_s8"}
    assert info.resolution.rule == "fixed" and info.resolution.value == (320, 480)
    assert info.resolution.option == "size" and info.option("size").default is None
    assert info.resolve_options({"size": "320x480", "r": "10", "tau": "1.0"}) == {
        "size": (320, 480),
        "r": 10,
        "tau": 1.0,
    }
    davis = [r for r in info.reported if r.dataset.startswith("DAVIS-2017")]
    assert davis[0].metrics["J&F"] == 43.9 and "modified" in davis[0].note
    ytvis = next(r for r in info.reported if r.dataset == "YouTube-VIS 2019")
    assert ytvis.metrics == {"FG-ARI": 44.3, "mIoU": 50.1}
    assert next(r for r in info.reported if r.dataset == "DAVIS-2016 val").metrics == {"J": 75.4}


def test_manifest_row_names_the_published_drive_file():
    from vos import weights

    row = weights.entry("ba.dino_s8")
    assert row.source is not None and row.source.kind == "gdrive"
    assert (row.source.id, row.source.filename) == ("1UhSPueJGpV4di9SVlZDmz0KWkuigQApA", "checkpoint_dino-s-8.pth")
    assert row.converter == "vos.methods.ba:convert_official" and row.hub_file == "ba/dino_s8.safetensors"
    assert "ba" in row.used_by


@pytest.mark.slow
def test_cli_matches_segments_to_the_prompt_and_scores_them_unsupervised(tmp_path):
    import json

    from vos import masks as vmasks
    from vos.__main__ import main
    from vos.video import write_mp4

    synthetic = moving_shapes(6, (48, 64), num_objects=2)
    clip = write_mp4(synthetic.frames, tmp_path / "inputs" / "shapes.mp4", fps=6)
    prompt = vmasks.write_palette_png(synthetic.masks[0], tmp_path / "inputs" / "prompt.png")
    gt = tmp_path / "inputs" / "gt"
    for index, mask in enumerate(synthetic.masks):
        vmasks.write_palette_png(mask, gt / f"{index:05d}.png")
    out = tmp_path / "run"
    torch.manual_seed(0)  # random weights; a tiny tau still splits their nearly uniform attention into segments
    code = main(
        [
            "run", str(clip), "--prompt", str(prompt), "--methods", "ba", "--device", "cpu", "--weights", "random",
            "--opt", "ba.size=48x64", "--opt", "ba.tau=0.001", "--gt", str(gt), "--no-video", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    (record,) = json.loads((out / "run.json").read_text())["methods"]
    assert record["status"] == "ok" and record["config"]["options"] == {"size": [48, 64], "r": 10, "tau": 0.001}
    assert record["extra_ids"] and min(record["extra_ids"]) == 3  # objects 1 and 2 come first
    shown = set(record["segment_ids"].values())
    assert set(record["extra_ids"]) <= shown and shown - set(record["extra_ids"]) <= {1, 2}
    masks = [vmasks.read_palette_png(p) for p in sorted((out / "masks" / "ba").glob("*.png"))]
    assert len(masks) == 6 and all(m.shape == (48, 64) for m in masks)
    assert set(np.unique(np.stack(masks))) <= shown
    assert 0 <= record["scores"]["J&F"] <= 1
    assert main(["eval", "--pred", str(out / "masks" / "ba"), "--gt", str(gt), "--task", "unsup"]) == 0
