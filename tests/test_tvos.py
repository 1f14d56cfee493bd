"""TVOS: the reference schedule and memory rule, the network's layout, the official checkpoint's key map and Drive
files, exact chunked propagation, the whole method against a plain dense reference of the spec and its history
bound (a colour feature in place of the network), tracking, and the full model with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vos.methods as vm
from vos.methods import tvos
from vos.synthetic import moving_shapes
from vos.video import Clip

# --------------------------------------------------------------------------------------------------------------
# Schedule and memory


def test_reference_schedule_matches_the_spec_examples():
    assert tvos.reference_frames(10) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert tvos.reference_frames(16) == [0, 2, 4, 7, 9, 12, 13, 14, 15]
    assert tvos.reference_frames(45) == [1, 9, 17, 25, 33, 41, 42, 43, 44]
    assert tvos.reference_frames(1) == [0]
    assert tvos.reference_frames(9) == list(range(9))
    assert 0 in tvos.reference_frames(44) and 0 not in tvos.reference_frames(45)  # frame 0 drops out after t=44
    # The paper's reading: 9 frames within the preceding 40.
    assert tvos.reference_frames(100, window=40) == [60, 67, 74, 81, 88, 96, 97, 98, 99]


def test_sigma_schedule_far_for_the_five_distant_frames_after_t15():
    assert tvos.reference_sigmas(15, 9, 21.0, 8.0) == [8.0] * 9
    assert tvos.reference_sigmas(16, 9, 21.0, 8.0) == [21.0] * 5 + [8.0] * 4
    assert tvos.reference_sigmas(5, 5, 21.0, 8.0) == [8.0] * 5


@pytest.mark.parametrize("window", [9, 40, 44])
def test_history_keeps_exactly_the_frames_a_later_target_reads(window):
    num_frames = 130
    for done in range(num_frames):
        brute = {k for u in range(done + 1, num_frames) for k in tvos.reference_frames(u, window) if k <= done}
        assert tvos.still_referenced(done, num_frames, window) == brute, done
    assert max(len(tvos.still_referenced(done, 10_000, 44)) for done in range(200)) <= 45


# --------------------------------------------------------------------------------------------------------------
# Network and official checkpoints


def _official_layout() -> dict[str, tuple[int, ...]]:
    """The release's state-dict keys and shapes, from the spec (without the module. prefix)."""
    layout: dict[str, tuple[int, ...]] = {}

    def bn(name: str, channels: int) -> None:
        for part in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{name}.{part}"] = (channels,)
        layout[f"{name}.num_batches_tracked"] = ()

    layout["backbone.0.weight"] = (64, 3, 7, 7)
    bn("backbone.1", 64)
    # (index, blocks, in, width, out, block 0 projects) for layer1..layer4 as the spec describes them.
    stages = ((4, 3, 64, 64, 256, True), (5, 4, 256, 128, 512, True), (6, 6, 512, 256, 1024, True))
    stages += ((7, 3, 1024, 256, 1024, False),)
    for index, blocks, channels_in, width, channels_out, projects in stages:
        for i in range(blocks):
            block = f"backbone.{index}.{i}"
            first_in = channels_in if i == 0 else channels_out
            layout[f"{block}.conv1.weight"] = (width, first_in, 1, 1)
            bn(f"{block}.bn1", width)
            layout[f"{block}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{block}.bn2", width)
            layout[f"{block}.conv3.weight"] = (channels_out, width, 1, 1)
            bn(f"{block}.bn3", channels_out)
            if i == 0 and projects:
                layout[f"{block}.downsample.0.weight"] = (channels_out, channels_in, 1, 1)
                bn(f"{block}.downsample.1", channels_out)
    layout["adjust_dim.weight"] = (256, 1024, 1, 1)
    bn("bn256", 256)
    return layout


def _official_checkpoint(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {
        f"module.{name}": torch.randint(0, 100, shape, generator=generator)
        if name.endswith("num_batches_tracked")
        else torch.randn(shape, generator=generator)
        for name, shape in _official_layout().items()
    }
    optimizer = {"state": {}, "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0, 1, 2]}]}
    return {"epoch": 240, "state_dict": state, "optimizer": optimizer, "scheduler": {"last_epoch": 240}}


def test_network_has_the_release_size_and_stride():
    with torch.device("meta"):
        net = tvos.TransductiveEmbedding()
    assert len(net.state_dict()) == 318
    assert sum(p.numel() for p in net.parameters()) == 12_157_504
    layout = _official_layout()
    assert len(layout) == 318  # the spec's layout agrees with itself
    assert sum(np.prod(s) for n, s in layout.items() if not n.rsplit(".", 1)[1].startswith(("running", "num"))) == (
        12_157_504
    )
    assert net(torch.empty(1, 3, 480, 854, device="meta")).shape == (1, 256, 60, 107)
    assert tvos.feature_grid((480, 854)) == (60, 107)
    assert net(torch.empty(1, 3, 63, 65, device="meta")).shape[-2:] == tvos.feature_grid((63, 65))


def test_converter_maps_the_official_checkpoint_onto_the_network_strictly():
    checkpoint = _official_checkpoint()
    converted = tvos.convert_official(checkpoint)
    net = tvos.TransductiveEmbedding()
    net.load_state_dict(converted, strict=True)
    state = checkpoint["state_dict"]
    ours = net.state_dict()
    assert torch.equal(ours["conv1.weight"], state["module.backbone.0.weight"])
    assert torch.equal(ours["bn1.running_var"], state["module.backbone.1.running_var"])
    assert torch.equal(ours["layer1.0.downsample.0.weight"], state["module.backbone.4.0.downsample.0.weight"])
    assert torch.equal(ours["layer3.5.conv2.weight"], state["module.backbone.6.5.conv2.weight"])
    assert torch.equal(ours["layer4.2.bn3.bias"], state["module.backbone.7.2.bn3.bias"])
    assert torch.equal(ours["adjust_dim.weight"], state["module.adjust_dim.weight"])
    assert torch.equal(ours["bn256.num_batches_tracked"], state["module.bn256.num_batches_tracked"])
    assert set(converted) == set(ours)
    # Unknown keys are passed through, so strict loading names them.
    state["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="extra.weight"):
        tvos.TransductiveEmbedding().load_state_dict(tvos.convert_official(checkpoint), strict=True)


def test_official_release_file_loads_through_the_weights_layer(tmp_path):
    checkpoint = _official_checkpoint(seed=1)
    path = tmp_path / "davis_train.pth.tar"
    torch.save(checkpoint, path)
    method = vm.create("tvos", weights=str(path), device="cpu")
    assert torch.equal(
        method.net.state_dict()["layer2.0.conv2.weight"], checkpoint["state_dict"]["module.backbone.5.0.conv2.weight"]
    )
    assert method.weights_records[0]["part"] == "embedding"
    assert not method.net.training


# --------------------------------------------------------------------------------------------------------------
# Propagation


def _spatial_weights(grid: tuple[int, int], sigmas) -> torch.Tensor:
    """exp(-|loc_target - loc_ref|^2 / sigma^2) in cells, (HW, N*HW): one block of columns per reference frame."""
    h, w = grid
    index = torch.arange(h * w)
    rows, cols = (index // w).float(), (index % w).float()
    distance = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    return torch.cat([torch.exp(-distance / sigma**2) for sigma in sigmas], dim=1)


def _release_order_dense(target, references, labels, sigmas, grid, temperature):
    """The release's arithmetic order as the spec states it: S = R F_t (one matrix), x temperature, softmax over
    dim 0, x spatial weight, labels @ S."""
    affinity = references.t() @ target.t() * temperature  # (N*HW, HW)
    affinity = torch.softmax(affinity, dim=0)
    return (labels.t() @ (affinity * _spatial_weights(grid, sigmas).t())).t()


def _row_blocks_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as products of exactly ROW_BLOCK rows of a (zero-padded): the kernel, hence the rounding, of each
    output row is then the same whatever the number of rows."""
    rows = a.shape[0]
    padded = torch.zeros(-(-rows // tvos.ROW_BLOCK) * tvos.ROW_BLOCK, a.shape[1], dtype=a.dtype)
    padded[:rows] = a
    return torch.cat([block @ b for block in padded.split(tvos.ROW_BLOCK)])[:rows]


# Grids of 851, 899 and 540 cells: 4, 4 and 3 row blocks, so chunks of 256..768 cells split every one of them.
@pytest.mark.parametrize(("grid", "count"), [((23, 37), 9), ((29, 31), 4), ((27, 20), 1)])
def test_chunked_propagation_equals_one_matrix_exactly(grid, count):
    generator = torch.Generator().manual_seed(sum(grid) + count)
    cells = grid[0] * grid[1]
    assert cells > 2 * tvos.ROW_BLOCK
    target = torch.randn(cells, 256, generator=generator) / 6
    references = torch.randn(256, count * cells, generator=generator) / 6
    labels = F.one_hot(torch.randint(0, 4, (count * cells,), generator=generator), 4).float()
    labels[:cells] = torch.rand(cells, 4, generator=generator)  # frame 0's labels are soft
    sigmas = tvos.reference_sigmas(16 if count == 9 else count, count, 21.0, 8.0)
    kwargs = {"temperature": 0.7}
    # One (HW x N*HW) matrix, written plainly: product, temperature, softmax per target row, spatial weight.
    weighted = torch.softmax(_row_blocks_mm(target, references) * 0.7, dim=1) * _spatial_weights(grid, sigmas)
    single = _row_blocks_mm(weighted, labels)
    whole = tvos.propagate(target, references, labels, sigmas, grid, chunk_size=0, **kwargs)
    assert whole.shape == (cells, 4) and whole.dtype == torch.float32
    assert torch.equal(whole, single)
    for chunk in (1, 256, 300, 512, 768, 10_000):
        chunked = tvos.propagate(target, references, labels, sigmas, grid, chunk_size=chunk, **kwargs)
        assert torch.equal(chunked, single), chunk
    # The products above run on ROW_BLOCK rows at a time, as propagate's do. One product over all HW rows may pick
    # another BLAS kernel (by matrix size) whose summation order differs in the last bits (here <= 1e-6
    # relative), so against truly single products, and the release's column layout, the scores are only close.
    one_product = (torch.softmax(target @ references * 0.7, dim=1) * _spatial_weights(grid, sigmas)) @ labels
    torch.testing.assert_close(whole, one_product, rtol=1e-5, atol=1e-7)
    reference = _release_order_dense(target, references, labels, sigmas, grid, 0.7)
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(whole.argmax(1), reference.argmax(1))


def test_spatial_weight_is_applied_after_the_softmax_without_renormalising():
    # One reference frame identical to the target: the softmax alone would weigh every cell equally (features are
    # all equal), so each score is the spatial weight's sum over the grid times 1/HW.
    grid = (4, 5)
    cells = 20
    target = torch.ones(cells, 8)
    labels = torch.ones(cells, 1)
    scores = tvos.propagate(target, target.t().contiguous(), labels, [2.0], grid, chunk_size=0)
    index = torch.arange(cells)
    rows, cols = (index // 5).float(), (index % 5).float()
    expected = torch.exp(-((rows[:, None] - rows) ** 2 + (cols[:, None] - cols) ** 2) / 4.0).sum(1) / cells
    torch.testing.assert_close(scores[:, 0], expected)


# --------------------------------------------------------------------------------------------------------------
# The method


def _colour_feature(frame: np.ndarray) -> torch.Tensor:
    """TEST ONLY, in place of the network: each cell's mean colour, centred, unit length, times 3 (3, H/8, W/8)."""
    image = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
    pooled = F.avg_pool2d(image.unsqueeze(0), tvos.STRIDE, ceil_mode=True)[0] - 0.5
    return 3.0 * pooled / pooled.norm(dim=0, keepdim=True).clamp(min=1e-6)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def random_tvos():
    return vm.create("tvos", weights="random", device="cpu")


def test_propagation_tracks_moving_shapes_with_a_colour_feature(random_tvos, monkeypatch):
    data = moving_shapes(30, (192, 256), 3, seed=1, object_scale=0.25)
    ids = np.array([0, 1, 3, 7], np.uint8)  # non-contiguous object ids come back as given
    masks = [ids[m] for m in data.masks]
    monkeypatch.setattr(random_tvos, "embed", _colour_feature)
    calls = []
    outputs = list(random_tvos.segment(Clip.from_frames(data.frames), masks[0], calls.append))
    assert len(outputs) == 30 and [(c.stage, c.done, c.total) for c in calls] == [
        ("frame", i + 1, 30) for i in range(30)
    ]
    assert np.array_equal(outputs[0], masks[0])
    assert all(o.dtype == np.uint8 and o.shape == (192, 256) for o in outputs)
    assert set(np.unique(np.concatenate(outputs))) <= {0, 1, 3, 7}
    per_frame = [np.mean([_iou(o == k, g == k) for k in (1, 3, 7)]) for o, g in zip(outputs[1:], masks[1:])]
    assert np.mean(per_frame) >= 0.8, per_frame


def _spec_propagation(frames, first_mask: np.ndarray, embed) -> list[np.ndarray]:
    """The spec's propagation written plainly (independent of tvos.py): the features of every frame are kept; one
    dense (9HW x HW) affinity R F_t in the release's column layout; one softmax over all reference pixels (dim 0);
    the spatial weight after it (sigma 21 for the first five references once t > 15, else 8); a hard one-hot label
    history; bilinear upsampling of the raw scores with size=; argmax. Ids must be contiguous (0..d-1)."""
    height, width = first_mask.shape
    depth = int(first_mask.max()) + 1
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []  # (d, HW) per frame
    outputs = [first_mask.copy()]
    spatial: dict[tuple[float, ...], torch.Tensor] = {}
    for t, frame in enumerate(frames):
        embedding = embed(frame)
        channels, h, w = embedding.shape
        current = embedding.reshape(channels, h * w)
        if t == 0:
            one_hot = F.one_hot(torch.from_numpy(first_mask).long(), depth).permute(2, 0, 1)[None].float()
            soft = F.interpolate(one_hot, size=(h, w), mode="bilinear", align_corners=False)
            features.append(current)
            labels.append(soft[0].reshape(depth, h * w))
            continue
        if t <= 9:
            refs = list(range(t))
        else:
            refs = [int(k) for k in np.linspace(max(t - 44, 0), t - 4, 6)] + [t - 3, t - 2, t - 1]
        sigmas = (21.0,) * 5 + (8.0,) * 4 if t > 15 else (8.0,) * len(refs)
        if sigmas not in spatial:
            spatial[sigmas] = _spatial_weights((h, w), sigmas).t()  # (9HW, HW)
        reference = torch.cat([features[k] for k in refs], dim=1)  # (C, 9HW)
        affinity = torch.softmax(reference.t() @ current * 1.0, dim=0)  # (9HW, HW)
        scores = torch.cat([labels[k] for k in refs], dim=1) @ (affinity * spatial[sigmas])
        features.append(current)
        labels.append(F.one_hot(scores.argmax(0), depth).t().float())
        maps = scores.reshape(1, depth, h, w)
        upsampled = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        outputs.append(upsampled[0].argmax(0).numpy().astype(np.uint8))
    return outputs


def test_segment_equals_a_plain_dense_reference_of_the_spec(random_tvos, monkeypatch):
    # 118x170 is no multiple of 8: a 15x22 grid (ceil), 330 cells = 2 row blocks, split by chunks of 256. 50 frames
    # reach the sigma switch (t > 15), the sparse references and frame 0 dropping out (t > 44).
    data = moving_shapes(50, (118, 170), 3, seed=1, object_scale=0.2)
    assert tvos.feature_grid((118, 170)) == (15, 22)
    monkeypatch.setattr(random_tvos, "embed", _colour_feature)
    monkeypatch.setitem(random_tvos.options, "chunk_size", 256)
    outputs = list(random_tvos.segment(Clip.from_frames(data.frames), data.masks[0]))
    expected = _spec_propagation(data.frames, data.masks[0], _colour_feature)
    assert len(outputs) == len(expected) == 50
    # The scores differ in rounding only (row blocks against one column-layout product); a mask pixel could flip
    # only at a tie within ~1e-7, so the masks are compared exactly.
    for t, (ours, theirs) in enumerate(zip(outputs, expected)):
        assert np.array_equal(ours, theirs), (t, int((ours != theirs).sum()))
    # Not trivially equal: all three objects are still followed at the end, and they have moved.
    assert set(np.unique(outputs[-1])) == {0, 1, 2, 3}
    assert np.mean([_iou(outputs[-1] == k, data.masks[-1] == k) for k in (1, 2, 3)]) > 0.6
    assert not np.array_equal(outputs[-1], outputs[0])


def test_history_never_holds_more_than_45_frames(random_tvos, monkeypatch):
    held: list[list[int]] = []

    class Recording(tvos.History):
        def add(self, index, features, labels):
            super().add(index, features, labels)
            held.append(sorted(self.features))

    monkeypatch.setattr(tvos, "History", Recording)
    monkeypatch.setattr(random_tvos, "embed", _colour_feature)
    data = moving_shapes(150, (16, 24), 2, seed=0, object_scale=0.3)
    outputs = list(random_tvos.segment(Clip.from_frames(data.frames), data.masks[0]))
    assert len(outputs) == 150 and len(held) == 150
    assert max(len(frames) for frames in held) == 45  # the frames t-44..t, just after frame t was added
    for t, frames in enumerate(held):
        assert frames[-1] == t and frames[0] >= t - 44, t


def test_full_model_with_random_weights_runs_at_a_lower_working_size(random_tvos):
    generator = np.random.default_rng(0)
    frames = [generator.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 12:40] = 2
    mask[40:60, 5:20] = 5
    for clip in (Clip.from_frames(frames), Clip.from_frames(frames).with_max_side(40)):
        outputs = list(random_tvos.segment(clip, mask))
        assert len(outputs) == 4
        assert np.array_equal(outputs[0], mask)
        for output in outputs:
            assert output.shape == (64, 64) and output.dtype == np.uint8
            assert set(np.unique(output)) <= {0, 2, 5}
    assert random_tvos.config()["options"]["window"] == 44


def test_registered_with_its_options_and_figures():
    assert "tvos" in [info.key for info in vm.available()]
    info = vm.get_info("tvos")
    assert info.task == vm.SEMI and info.default_variant == "davis_train"
    assert info.variants == ("davis_train", "davis_trainval", "youtube_train")
    assert info.parts("youtube_train") == {"embedding": "tvos.youtube_train"}
    davis = next(r for r in info.reported if r.dataset == "DAVIS-2017 val")
    assert davis.metrics == {"J&F": 72.3, "J": 69.9, "F": 74.7} and davis.fps == 37
    # The paper's speed: ~37 fps on a single Titan Xp, for every figure that states a speed.
    timed = [r for r in info.reported if r.fps]
    assert timed and all(r.fps == 37 and r.hardware == "Titan Xp" for r in timed)
    test_dev = next(r for r in info.reported if r.dataset == "DAVIS-2017 test-dev")
    assert test_dev.metrics == {"J&F": 63.1, "J": 58.8, "F": 67.4} and test_dev.variant == "davis_trainval"
    assert {o.name for o in info.options} >= {"temperature", "sigma_far", "sigma_near", "window", "chunk_size"}
    assert info.option("window").paper == 40
    assert info.resolve_options({"sigma_far": "15", "chunk_size": "512"})["sigma_far"] == 15.0


def test_manifest_names_the_three_published_drive_files():
    from vos import weights

    # The spec's table: Google Drive file id and file name of each released model (none is on the Hub).
    published = {
        "davis_train": ("1SWZ20zTHgOpha0MlF8iOdqEHFkALdZn7", "davis_train.pth.tar"),
        "davis_trainval": ("14Qm8UEQG-rYYepDYzKPTc1KqISzQkT95", "davis_trainval.pth.tar"),
        "youtube_train": ("1U6sX9EUpOvDRFyaqDVpsi3plTnI2Witp", "youtube_train.pth.tar"),
    }
    info = vm.get_info("tvos")
    for variant, (drive_id, filename) in published.items():
        (file_id,) = info.parts(variant).values()
        row = weights.entry(file_id)
        assert row.source is not None and row.source.kind == "gdrive", variant
        assert (row.source.id, row.source.filename) == (drive_id, filename), variant
        assert row.converter == "vos.methods.tvos:convert_official" and "tvos" in row.used_by, variant
    # The older README's id for the DAVIS train model is recorded too.
    assert "1N5lanFvdRf4CgjjZX4uQU1MMiRinANz9" in weights.entry("tvos.davis_train").source.note


def test_invalid_options_are_refused_before_building():
    with pytest.raises(vm.OptionError, match="window"):
        vm.create("tvos", weights="random", device="cpu", window=5)
    with pytest.raises(vm.OptionError, match="sigma_near"):
        vm.create("tvos", weights="random", device="cpu", sigma_near=0)
