"""SimVOS: the official parameter layout (counts on the meta device), the checkpoint key map and Drive files, the
position-embedding resize, padding, soft aggregation, the whole method on a tiny configuration against a plain
re-statement of the spec's forward (L = 0 and L = 1 with token refinement), batched objects, and the full ViT-B with
random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vos.methods as vm
from vos.backbones.normalization import IMAGENET_MEAN, IMAGENET_STD
from vos.methods import simvos
from vos.synthetic import moving_shapes
from vos.video import Clip

TINY = simvos.Config(embed_dim=64, depth=2, num_heads=2)
TINY_REFINED = simvos.Config(embed_dim=64, depth=2, num_heads=2, within_frame_layers=1, prototypes=6)


# --------------------------------------------------------------------------------------------------------------
# Network layout and official checkpoints


def _official_layout(dim: int, depth: int, prototypes: int = 384) -> dict[str, tuple[int, ...]]:
    """The release's keys and shapes as the spec lists them."""
    layout: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 197, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "fc_norm.weight": (dim,),
        "fc_norm.bias": (dim,),
        "head.weight": (1000, dim),
        "head.bias": (1000,),
        "pos_embed_new": (1, 577, dim),
        "mask_patch_embed.proj.weight": (dim, 1, 16, 16),
        "mask_patch_embed.proj.bias": (dim,),
        "fpn1.0.weight": (dim, dim, 2, 2),
        "fpn1.0.bias": (dim,),
        "fpn1.1.ln.weight": (dim,),
        "fpn1.1.ln.bias": (dim,),
        "fpn1.3.weight": (dim, 256, 2, 2),
        "fpn1.3.bias": (256,),
        "fpn2.0.weight": (dim, 512, 2, 2),
        "fpn2.0.bias": (512,),
    }
    for i in range(depth):
        for name, shape in (
            ("norm1", (dim,)),
            ("norm2", (dim,)),
            ("attn.qkv", (3 * dim, dim)),
            ("attn.proj", (dim, dim)),
            ("mlp.fc1", (4 * dim, dim)),
            ("mlp.fc2", (dim, 4 * dim)),
        ):
            layout[f"blocks.{i}.{name}.weight"] = shape
            layout[f"blocks.{i}.{name}.bias"] = (shape[0],)
    convs = {
        "compress.downsample": (512, dim),
        "compress.conv1": (512, dim),
        "compress.conv2": (512, 512),
        "up_16_8.skip_conv": (512, 512),
        "up_16_8.out_conv.downsample": (256, 512),
        "up_16_8.out_conv.conv1": (256, 512),
        "up_16_8.out_conv.conv2": (256, 256),
        "up_8_4.skip_conv": (256, 256),
        "up_8_4.out_conv.conv1": (256, 256),
        "up_8_4.out_conv.conv2": (256, 256),
        "pred": (1, 256),
    }
    for name, (out, inp) in convs.items():
        layout[f"stcn_decoder.{name}.weight"] = (out, inp, 3, 3)
        layout[f"stcn_decoder.{name}.bias"] = (out,)
    for refiner in ("tlearner", "tlearner_back"):
        layout[f"{refiner}.norm.weight"] = layout[f"{refiner}.norm.bias"] = (dim,)
        layout[f"{refiner}.input_norm.weight"] = layout[f"{refiner}.input_norm.bias"] = (dim + 1,)
        layout[f"{refiner}.patch_to_cluster_atten.0.weight"] = (dim // 4, dim + 1, 3, 3)
        layout[f"{refiner}.patch_to_cluster_linear.weight"] = (prototypes, dim // 4)
        layout[f"{refiner}.patch_to_cluster_linear.bias"] = (prototypes,)
    return layout


def _meta_net(variant: str) -> torch.nn.Module:
    with torch.device("meta"):
        return simvos.SimVOS.build_part("model", variant, {})


def test_vit_b_file_layout_counts_on_the_meta_device():
    net = _meta_net("vit_b")
    state = net.state_dict()
    assert len(state) == 201
    assert sum(t.numel() for t in state.values()) == pytest.approx(111.26e6, abs=0.005e6)
    by_part = {"backbone": 0, "extras": 0, "decoder": 0, "refinement": 0, "classifier": 0}
    tensors = dict.fromkeys(by_part, 0)
    for key, tensor in state.items():
        name = simvos.official_key(key)
        if name.startswith(("head.", "fc_norm.")):
            part = "classifier"
        elif name.startswith("stcn_decoder."):
            part = "decoder"
        elif name.startswith("tlearner"):
            part = "refinement"
        elif name.startswith(("pos_embed_new", "mask_patch_embed.", "fpn")):
            part = "extras"
        else:
            part = "backbone"
        by_part[part] += tensor.numel()
        tensors[part] += 1
    assert tensors == {"backbone": 150, "extras": 11, "decoder": 22, "refinement": 14, "classifier": 4}
    # The spec's figures: backbone 85.80M, decoder 16.52M, fpn 4.72M, TR 2.81M.
    assert by_part["backbone"] == pytest.approx(85.80e6, abs=0.005e6)
    assert by_part["decoder"] == pytest.approx(16.52e6, abs=0.005e6)
    fpn = sum(t.numel() for k, t in state.items() if k.startswith("fpn"))
    assert fpn == pytest.approx(4.72e6, abs=0.005e6)
    assert by_part["refinement"] == pytest.approx(2.81e6, abs=0.005e6)
    official = {simvos.official_key(k): tuple(t.shape) for k, t in state.items()}
    assert official == _official_layout(768, 12)
    assert all(t.device.type == "meta" for t in state.values())


def test_vit_bs_has_the_same_file_layout_and_vit_l_its_own():
    b = {k: tuple(t.shape) for k, t in _meta_net("vit_b").state_dict().items()}
    assert {k: tuple(t.shape) for k, t in _meta_net("vit_bs").state_dict().items()} == b
    large = _meta_net("vit_l")
    state = large.state_dict()
    assert {simvos.official_key(k): tuple(t.shape) for k, t in state.items()} == _official_layout(1024, 24)
    assert len(state) == 345
    # ~1.35 GB in fp32, as published.
    assert sum(t.numel() for t in state.values()) * 4 == pytest.approx(1.345e9, rel=0.01)
    assert len(large.vit.blocks) == 24 and large.vit.blocks[0].attn.num_heads == 16


def _random_official(config: simvos.Config, seed: int) -> dict[str, torch.Tensor]:
    """A state dict in the release's layout (keys as in the file), random values."""
    generator = torch.Generator().manual_seed(seed)
    layout = _official_layout(config.embed_dim, config.depth, config.prototypes)
    return {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in layout.items()}


def test_key_map_round_trip_from_the_official_layout():
    official = _random_official(TINY, seed=3)
    converted = simvos.convert_official(official)
    assert set(converted) == set(simvos.SimVOSNet(TINY).state_dict())
    assert converted["vit.blocks.1.attn.qkv.weight"] is official["blocks.1.attn.qkv.weight"]
    assert converted["pos_embed_new"] is official["pos_embed_new"]  # not the ViT's pos_embed
    net = simvos.SimVOSNet(TINY)
    net.load_state_dict(converted, strict=True)
    back = {simvos.official_key(k): v for k, v in net.state_dict().items()}
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)
    # A DataParallel prefix is dropped; unknown keys pass through, so strict loading names them.
    assert set(simvos.convert_official({f"module.{k}": v for k, v in official.items()})) == set(converted)
    with pytest.raises(RuntimeError, match="extra.weight"):
        simvos.SimVOSNet(TINY).load_state_dict(simvos.convert_official({**official, "extra.weight": torch.zeros(1)}))


def test_official_file_loads_as_published_file_and_folder(tmp_path, monkeypatch):
    from vos import weights

    # Tiny networks stand in for the real sizes; the files are bare state dicts in the release's layout.
    small_large = simvos.Config(embed_dim=32, depth=2, num_heads=2)
    monkeypatch.setitem(simvos.CONFIGS, "vit_b", TINY)
    monkeypatch.setitem(simvos.CONFIGS, "vit_l", small_large)
    b_file, l_file = tmp_path / "b" / "SimVOS-B.pth", tmp_path / "l.pth"
    b_file.parent.mkdir()
    torch.save(_random_official(TINY, seed=1), b_file)
    torch.save(_random_official(small_large, seed=2), l_file)
    method = vm.create("simvos", weights=str(b_file), device="cpu")
    loaded = method.nets["model"].state_dict()
    assert torch.equal(loaded["vit.blocks.0.mlp.fc1.weight"], torch.load(b_file)["blocks.0.mlp.fc1.weight"])
    assert method.weights_records[0]["part"] == "model" and not method.nets["model"].training
    # A folder of release files: each variant picks its file by key layout.
    (tmp_path / "b" / "l.pth").write_bytes(l_file.read_bytes())
    for variant, source in (("vit_b", b_file), ("vit_l", l_file)):
        method = vm.create("simvos", variant, weights=str(b_file.parent), device="cpu")
        expected = torch.load(source)["mask_patch_embed.proj.weight"]
        assert torch.equal(method.nets["model"].state_dict()["mask_patch_embed.proj.weight"], expected), variant
    # B and BS files share one layout: with both in the folder and their published names not recorded in the
    # manifest, the choice is refused with both names rather than guessed.
    torch.save(_random_official(TINY, seed=4), tmp_path / "b" / "SimVOS-BS.pth")
    with pytest.raises(weights.AmbiguousWeights, match="SimVOS-B.pth.*SimVOS-BS.pth"):
        vm.create("simvos", "vit_b", weights=str(b_file.parent), device="cpu")


def test_manifest_names_the_three_published_drive_files():
    from vos import weights

    published = {
        "vit_b": "1uSobYg2JQzpR-Lwb81YsUoyjEr1jaTwJ",
        "vit_bs": "1v1FdDc5oFFUOBZ_Oc2yhPxDZpbHpTYsY",
        "vit_l": "1bh2FyaoRlTdupvCHRiJc9O9vnRhSkcE8",
    }
    info = vm.get_info("simvos")
    for variant, drive_id in published.items():
        (file_id,) = info.parts(variant).values()
        row = weights.entry(file_id)
        assert row.source is not None and (row.source.kind, row.source.id) == ("gdrive", drive_id), variant
        assert row.converter == "vos.methods.simvos:convert_official" and "simvos" in row.used_by, variant
        assert row.hub_file.startswith("simvos/") and row.sha256 == "", variant
        assert "unknown" in row.licence


# --------------------------------------------------------------------------------------------------------------
# Pieces of the forward


def test_position_embedding_resize_is_bicubic_without_antialias_and_not_timms_default():
    from timm.layers import resample_abs_pos_embed

    net = simvos.SimVOSNet(TINY)
    torch.nn.init.normal_(net.pos_embed_new, std=1.0, generator=torch.Generator().manual_seed(0))
    grid = (30, 54)  # 480x864 padded
    ours = net.position(grid)
    spatial = net.pos_embed_new[:, 1:].reshape(1, 24, 24, 64).permute(0, 3, 1, 2)
    plain = F.interpolate(spatial, size=grid, mode="bicubic", align_corners=False, antialias=False)
    assert torch.equal(ours, plain.permute(0, 2, 3, 1).reshape(1, 30 * 54, 64))
    # timm antialiases by default: different numbers when shrinking (an 8x12 grid = 128x192 frames).
    small = (8, 12)
    timms = resample_abs_pos_embed(net.pos_embed_new, list(small), num_prefix_tokens=1)[:, 1:]
    assert (timms - net.position(small)).abs().max() > 1e-3
    # The trained size is the identity.
    assert torch.equal(net.position((24, 24)), net.pos_embed_new[:, 1:])


@pytest.mark.parametrize(
    ("size", "expected"), [((37, 51), (5, 6, 6, 7)), ((480, 854), (0, 0, 5, 5)), ((33, 32), (7, 8, 0, 0))]
)
def test_padding_splits_floor_top_left_and_unpads_back(size, expected):
    padding = simvos.Padding.for_size(size)
    assert (padding.top, padding.bottom, padding.left, padding.right) == expected
    padded_size = padding.padded_size(size)
    assert padded_size[0] % 16 == 0 and padded_size[1] % 16 == 0
    x = torch.randn(2, 1, *size)
    padded = padding.pad(x)
    assert padded.shape[-2:] == padded_size
    assert torch.equal(padding.unpad(padded), x)
    border = torch.ones_like(padded, dtype=torch.bool)
    border[..., padding.top : padding.top + size[0], padding.left : padding.left + size[1]] = False
    assert not padded[border].any()  # zeros around the frame
    assert torch.equal(padded[..., padding.top, padding.left], x[..., 0, 0])


def test_soft_aggregation_sums_to_one_and_respects_the_clamp():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1, 5, 7, generator=generator)
    probs[0, 0, 0, 0], probs[1, 0, 0, 1], probs[:, 0, 0, 2] = 1.0, 0.0, 0.0
    merged = simvos.soft_aggregate(probs)
    assert merged.shape == (4, 1, 5, 7)
    torch.testing.assert_close(merged.sum(0), torch.ones(1, 5, 7))
    assert bool(torch.isfinite(merged).all())
    # Spelled out: bg = prod(1 - p); clamp; odds; normalised.
    stacked = torch.cat([torch.prod(1 - probs, 0, keepdim=True), probs]).clamp(1e-7, 1 - 1e-7)
    odds = stacked / (1 - stacked)
    torch.testing.assert_close(merged, odds / odds.sum(0, keepdim=True))
    # A certain object (p = 1) against a background of 0: both hit the clamp (in float32, 1 - 1e-7 rounds to
    # 1 - 2^-23), so the ratio of their probabilities is the ratio of the clamped odds.
    high, low = torch.tensor(1 - 1e-7), torch.tensor(1e-7)
    one_object = simvos.soft_aggregate(torch.tensor([[[[1.0]]], [[[0.0]]]]))
    ratio = (high / (1 - high)) / (low / (1 - low))
    assert float(one_object[1, 0, 0, 0] / one_object[0, 0, 0, 0]) == pytest.approx(float(ratio), rel=1e-4)
    assert float(one_object[2, 0, 0, 0]) > 0


def test_refinement_weights_follow_the_spec():
    # Two objects on a 32x48 padded frame, 2x3 tokens. Frame 0 style one-hot masks: background where no object.
    masks = torch.zeros(2, 1, 32, 48)
    masks[0, :, :16, :16] = 1
    masks[1, :, 16:, 32:] = 1
    foreground, background = simvos.refinement_weights(masks, (2, 3))
    assert foreground.shape == background.shape == (2, 1, 2, 3)
    assert torch.equal(foreground[0, 0], torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    assert torch.equal(background[0, 0], torch.tensor([[0.0, 1, 1], [1, 1, 1]]))  # object 2 counts as background
    # Soft masks: 1 - sum is never exactly 1, so no position is background and the object with the larger
    # probability takes each cell.
    soft = torch.full((2, 1, 32, 48), 0.3)
    soft[1, :, :, 24:] = 0.6
    foreground, background = simvos.refinement_weights(soft, (2, 3))
    torch.testing.assert_close(foreground[0, 0], torch.tensor([[0.3, 0, 0], [0.3, 0, 0]]))
    torch.testing.assert_close(background[0, 0], torch.tensor([[0.0, 0.7, 0.7], [0.0, 0.7, 0.7]]))
    # One soft object: it takes every cell, so its background weight is 0 everywhere.
    _, background = simvos.refinement_weights(soft[:1], (2, 3))
    assert not background.any()


def test_token_refiner_masks_zero_weights_and_gives_layernorm_bias_for_an_empty_map():
    refiner = simvos.TokenRefiner(16, 5)
    torch.nn.init.normal_(refiner.norm.bias, generator=torch.Generator().manual_seed(1))
    features = torch.randn(1, 3, 4, 16, generator=torch.Generator().manual_seed(2))
    weight = torch.zeros(1, 1, 3, 4)
    weight[..., 1, 2] = 0.5
    # One cell with weight: every prototype is that cell's feature (softmax over one position).
    torch.testing.assert_close(refiner(features, weight)[0], refiner.norm(features[0, 1, 2]).expand(5, -1))
    # No cell: NaN from the softmax becomes 0; the LayerNorm of zeros is its bias.
    empty = refiner(features, torch.zeros(1, 1, 3, 4))
    torch.testing.assert_close(empty[0], refiner.norm.bias.expand(5, -1))


# --------------------------------------------------------------------------------------------------------------
# The whole method on a tiny configuration against the spec written plainly


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Weights large enough that masks differ across the frame and between objects (timm's init is near zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name or ".ln." in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator) if name.endswith("weight") else 0 * p)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in) * (1.5 if p.dim() > 1 else 0.1))


def _plain_simvos(net: simvos.SimVOSNet, frames: list[np.ndarray], first_mask: np.ndarray) -> list[np.ndarray]:
    """The spec's forward written plainly, independent of simvos.py's helpers (the ViT blocks and the layers are
    the network's): every padded frame and probability map kept, one pass per object, the release's addition order."""
    config = net.config
    height, width = first_mask.shape
    extra_h, extra_w = (16 - height % 16) % 16, (16 - width % 16) % 16
    top, left = extra_h // 2, extra_w // 2
    pad = (left, extra_w - left, top, extra_h - top)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = [F.pad((torch.from_numpy(f).permute(2, 0, 1).float() / 255 - mean) / std, pad)[None] for f in frames]
    ids = [int(i) for i in np.unique(first_mask) if i > 0]
    gt = [F.pad(torch.from_numpy(first_mask == i).float()[None, None], pad) for i in ids]
    full_h, full_w = images[0].shape[-2:]
    h, w = full_h // 16, full_w // 16
    dim = config.embed_dim
    grid24 = net.pos_embed_new[:, 1:].reshape(1, 24, 24, dim).permute(0, 3, 1, 2)
    pos = (
        F.interpolate(grid24, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, dim)
    )
    blocks, depth_l = list(net.vit.blocks), config.within_frame_layers

    def patch(image):
        return net.vit.patch_embed.proj(image).flatten(2).transpose(1, 2)

    def mask_embed(mask):
        return net.mask_patch_embed.proj(mask).flatten(2).transpose(1, 2)

    def run(x, chosen):
        for block in chosen:
            x = block(x)
        return x

    def res(block, x):
        r = block.conv2(F.relu(block.conv1(F.relu(x))))
        return (block.downsample(x) if block.downsample is not None else x) + r

    def decode(m16):
        d = net.stcn_decoder
        m8 = net.fpn2[0](m16)
        m4 = m16
        for layer in net.fpn1:
            m4 = layer(m4)
        x = res(d.compress, m16)
        x = res(
            d.up_16_8.out_conv,
            d.up_16_8.skip_conv(m8) + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
        )
        x = res(
            d.up_8_4.out_conv,
            d.up_8_4.skip_conv(m4) + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
        )
        return torch.sigmoid(F.interpolate(d.pred(F.relu(x)), scale_factor=4, mode="bilinear", align_corners=False))

    def refine(module, features, weight):
        x = torch.cat([features, weight.permute(0, 2, 3, 1)], dim=-1)
        x = F.layer_norm(x, (dim + 1,), module.input_norm.weight, module.input_norm.bias, 1e-5)
        x = F.gelu(F.conv2d(x.permute(0, 3, 1, 2), module.patch_to_cluster_atten[0].weight, padding=1))
        logits = F.linear(x.permute(0, 2, 3, 1).reshape(1, h * w, -1), module.patch_to_cluster_linear.weight)
        logits = (logits + module.patch_to_cluster_linear.bias).transpose(1, 2)
        logits[weight.flatten(2).expand_as(logits) == 0] = float("-inf")
        attention = torch.nan_to_num(torch.softmax(logits, dim=-1))
        return F.layer_norm(attention @ features.reshape(1, h * w, dim), (dim,), module.norm.weight, module.norm.bias)

    def prototypes(image, masks):  # masks: list of (1, 1, H, W), one per object
        total = sum(masks)
        background = 1 - total
        background[background != 1] = 0
        maps = F.interpolate(torch.cat([background] + masks, dim=1), size=(h, w), mode="bilinear", align_corners=False)
        winner = maps.argmax(dim=1)
        out = []
        for k, mask in enumerate(masks):
            features = run((patch(image) + pos) + mask_embed(mask), blocks[:depth_l]).reshape(1, h, w, dim)
            hard = (winner == k + 1).float()[:, None]
            p = maps[:, k + 1 : k + 2]
            fg, bg = p * hard, (1 - p) * (1 - hard)
            out.append(torch.cat([refine(net.tlearner, features, fg), refine(net.tlearner_back, features, bg)], 1))
        return out

    probs = [None]  # per frame: (K+1, 1, H, W) padded
    outputs = [first_mask.copy()]
    if depth_l:
        first_protos = prototypes(images[0], gt)
    for t in range(1, len(frames)):
        search = patch(images[t]) + pos
        if depth_l:
            search = run(search, blocks[:depth_l])
            if t > 1:
                previous_protos = prototypes(images[t - 1], [probs[t - 1][k + 1 : k + 2] for k in range(len(ids))])
        per_object = []
        for k in range(len(ids)):
            if depth_l:
                memory = [first_protos[k]] + ([previous_protos[k]] if t > 1 else [])
            else:
                memory = [(patch(images[0]) + mask_embed(gt[k])) + pos]
                if t > 1:
                    memory.append((patch(images[t - 1]) + mask_embed(probs[t - 1][k + 1 : k + 2])) + pos)
            x = net.vit.norm(run(torch.cat(memory + [search], dim=1), blocks[depth_l:]))
            m16 = x[:, -h * w :].transpose(1, 2).reshape(1, dim, h, w)
            per_object.append(decode(m16))
        p = torch.cat(per_object)
        merged = torch.cat([torch.prod(1 - p, dim=0, keepdim=True), p]).clamp(1e-7, 1 - 1e-7)
        probs.append(torch.softmax(torch.log(merged / (1 - merged)), dim=0))
        unpadded = probs[t][..., top : top + height, left : left + width]
        labels = unpadded[:, 0].argmax(0).numpy()
        outputs.append(np.array([0, *ids], np.uint8)[labels])
    return outputs


def _tiny_method(monkeypatch, config: simvos.Config, seed: int, **options):
    monkeypatch.setitem(simvos.CONFIGS, "vit_b", config)
    method = vm.create("simvos", weights="random", device="cpu", **options)
    _randomise(method.nets["model"], seed)
    return method


def _two_object_clip(size=(37, 51)):
    data = moving_shapes(5, size, 2, seed=4, object_scale=0.3, speed=0.06)
    ids = np.array([0, 2, 5], np.uint8)  # ids need not be contiguous
    return Clip.from_frames(data.frames), ids[data.masks[0]], data.frames


@pytest.mark.parametrize("config", [TINY, TINY_REFINED], ids=["L0", "L1_refined"])
def test_tiny_model_equals_a_plain_restatement_of_the_spec(monkeypatch, config):
    method = _tiny_method(monkeypatch, config, seed=7)
    clip, first_mask, frames = _two_object_clip()
    outputs = list(method.segment(clip, first_mask))
    with torch.inference_mode():
        expected = _plain_simvos(method.nets["model"], frames, first_mask)
    assert len(outputs) == len(expected) == 5
    for t, (ours, theirs) in enumerate(zip(outputs, expected)):
        assert ours.dtype == np.uint8 and ours.shape == (37, 51)
        assert np.array_equal(ours, theirs), (t, int((ours != theirs).sum()))
    assert np.array_equal(outputs[0], first_mask)
    # Not trivially equal: later frames hold more than one label and differ from each other.
    assert all(len(np.unique(o)) >= 2 for o in outputs[1:])
    assert any(not np.array_equal(outputs[t], outputs[t + 1]) for t in range(1, 4))


@pytest.mark.parametrize("config", [TINY, TINY_REFINED], ids=["L0", "L1_refined"])
def test_objects_batched_give_the_same_masks_as_one_pass_per_object(monkeypatch, config):
    clip, first_mask, _ = _two_object_clip((40, 56))
    single = list(_tiny_method(monkeypatch, config, seed=11).segment(clip, first_mask))
    batched = list(_tiny_method(monkeypatch, config, seed=11, object_batch=2).segment(clip, first_mask))
    assert all(np.array_equal(a, b) for a, b in zip(single, batched, strict=True))


def test_attention_is_fused_and_runs_through_sdpa(monkeypatch):
    method = _tiny_method(monkeypatch, TINY, seed=1)
    assert all(block.attn.fused_attn for block in method.nets["model"].vit.blocks)
    calls = []
    real = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        calls.append(q.shape[-2])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    clip, first_mask, _ = _two_object_clip((32, 48))
    list(method.segment(clip.with_frames(3), first_mask))
    # 2 blocks x 2 objects per frame: 2 x 6 tokens at t = 1, 3 x 6 at t = 2.
    assert calls == [12] * 4 + [18] * 4


# --------------------------------------------------------------------------------------------------------------
# The real sizes and the registry


@pytest.mark.slow
def test_full_vit_b_with_random_weights_runs_three_small_frames():
    method = vm.create("simvos", weights="random", device="cpu")
    assert sum(p.numel() for p in method.nets["model"].parameters()) == pytest.approx(111.26e6, abs=0.005e6)
    generator = np.random.default_rng(0)
    frames = [generator.integers(0, 255, (72, 100, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((72, 100), np.uint8)
    mask[10:40, 12:50] = 3
    mask[45:70, 60:90] = 8
    for clip in (Clip.from_frames(frames), Clip.from_frames(frames).with_max_side(64)):
        outputs = list(method.segment(clip, mask))
        assert len(outputs) == 3 and np.array_equal(outputs[0], mask)
        for output in outputs:
            assert output.shape == (72, 100) and output.dtype == np.uint8
            assert set(np.unique(output)) <= {0, 3, 8}


def test_registered_with_its_variants_and_figures():
    assert "simvos" in vm.list_keys()
    info = vm.get_info("simvos")
    assert info.task == vm.SEMI and info.processing == "online"
    assert info.variants == ("vit_b", "vit_bs", "vit_l") and info.default_variant == "vit_b"
    assert info.resolution.rule == "as_given"
    davis = {r.variant: r for r in info.reported if r.dataset == "DAVIS-2017 val"}
    assert {v: r.metrics["J&F"] for v, r in davis.items()} == {"vit_b": 88.0, "vit_bs": 87.1, "vit_l": 88.5}
    assert (davis["vit_b"].fps, davis["vit_bs"].fps) == (4.9, 9.9)
    assert all(r.hardware == "A100" for r in davis.values())
    assert info.parts("vit_bs") == {"model": "simvos.bs"}
    assert simvos.CONFIGS["vit_bs"].within_frame_layers == 4 and simvos.CONFIGS["vit_bs"].prototypes == 384


def test_invalid_object_batch_is_refused_before_building():
    with pytest.raises(vm.OptionError, match="object_batch"):
        vm.create("simvos", weights="random", device="cpu", object_batch=0)


def test_reduced_precision_runs_and_mostly_agrees(monkeypatch):
    clip, first_mask, _ = _two_object_clip((40, 56))
    reference = list(_tiny_method(monkeypatch, TINY, seed=5).segment(clip, first_mask))
    monkeypatch.setitem(simvos.CONFIGS, "vit_b", TINY)
    method = vm.create("simvos", weights="random", device="cpu", dtype="bf16")
    _randomise(method.nets["model"], 5)
    reduced = list(method.segment(clip, first_mask))
    assert all(o.dtype == np.uint8 and o.shape == (40, 56) for o in reduced)
    agreement = np.mean([np.mean(a == b) for a, b in zip(reference[1:], reduced[1:])])
    assert agreement > 0.9, agreement
