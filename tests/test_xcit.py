"""XCiT-S12/8: DINO's release layout converts into timm's model and loads strictly; patch features have the right
shape and honour the layer/norm choices."""

from __future__ import annotations

import pytest
import torch

from vos.backbones import xcit

DIM, HEADS, HIDDEN = 384, 8, 1536


def _norm(prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (DIM,), f"{prefix}.bias": (DIM,)}


def _linear(prefix: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def _batchnorm(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.{n}": (ch,) for n in ("weight", "bias", "running_mean", "running_var")}
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def dino_release_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``dino_xcit_small_12_p8_pretrain.pth``: facebookresearch/xcit's XCiT(patch_size=8,
    embed_dim=384, depth=12, num_heads=8, eta=1.0, tokens_norm=True, num_classes=0), as written in that repository
    (``pos_embeder``, fused ``qkv`` in the class-attention blocks, SyncBatchNorm in the patch embedding and LPI)."""
    shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, DIM)}
    for index, (cin, cout) in zip((0, 2, 4), ((3, DIM // 4), (DIM // 4, DIM // 2), (DIM // 2, DIM))):
        shapes[f"patch_embed.proj.{index}.0.weight"] = (cout, cin, 3, 3)
        shapes.update(_batchnorm(f"patch_embed.proj.{index}.1", cout))
    shapes["pos_embeder.token_projection.weight"] = (DIM, 64, 1, 1)
    shapes["pos_embeder.token_projection.bias"] = (DIM,)
    for i in range(12):
        b = f"blocks.{i}"
        for gamma in ("gamma1", "gamma2", "gamma3"):
            shapes[f"{b}.{gamma}"] = (DIM,)
        for norm in ("norm1", "norm2", "norm3"):
            shapes.update(_norm(f"{b}.{norm}"))
        shapes[f"{b}.attn.temperature"] = (HEADS, 1, 1)
        shapes.update(_linear(f"{b}.attn.qkv", 3 * DIM, DIM))
        shapes.update(_linear(f"{b}.attn.proj", DIM, DIM))
        shapes.update(_linear(f"{b}.mlp.fc1", HIDDEN, DIM))
        shapes.update(_linear(f"{b}.mlp.fc2", DIM, HIDDEN))
        for conv in ("conv1", "conv2"):
            shapes[f"{b}.local_mp.{conv}.weight"] = (DIM, 1, 3, 3)
            shapes[f"{b}.local_mp.{conv}.bias"] = (DIM,)
        shapes.update(_batchnorm(f"{b}.local_mp.bn", DIM))
    for i in range(2):
        b = f"cls_attn_blocks.{i}"
        shapes[f"{b}.gamma1"] = (DIM,)
        shapes[f"{b}.gamma2"] = (DIM,)
        shapes.update(_norm(f"{b}.norm1"))
        shapes.update(_norm(f"{b}.norm2"))
        shapes.update(_linear(f"{b}.attn.qkv", 3 * DIM, DIM))
        shapes.update(_linear(f"{b}.attn.proj", DIM, DIM))
        shapes.update(_linear(f"{b}.mlp.fc1", HIDDEN, DIM))
        shapes.update(_linear(f"{b}.mlp.fc2", DIM, HIDDEN))
    shapes.update(_norm("norm"))
    return shapes


def dino_release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in dino_release_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    return state


def test_convert_round_trip_loads_strictly_into_timm():
    release = dino_release_state()
    converted = xcit.convert_dino_xcit(release)
    model = xcit.build_xcit_small_12_p8()
    model.load_state_dict(converted, strict=True)
    ours = model.state_dict()
    # Every release tensor reaches its timm parameter unchanged.
    assert torch.equal(ours["pos_embed.token_projection.weight"], release["pos_embeder.token_projection.weight"])
    qkv_w = release["cls_attn_blocks.1.attn.qkv.weight"]
    qkv_b = release["cls_attn_blocks.1.attn.qkv.bias"]
    for j, name in enumerate("qkv"):
        assert torch.equal(ours[f"cls_attn_blocks.1.attn.{name}.weight"], qkv_w[j * DIM : (j + 1) * DIM])
        assert torch.equal(ours[f"cls_attn_blocks.1.attn.{name}.bias"], qkv_b[j * DIM : (j + 1) * DIM])
    assert torch.equal(ours["blocks.11.attn.qkv.weight"], release["blocks.11.attn.qkv.weight"])
    assert torch.equal(ours["blocks.3.local_mp.bn.running_var"], release["blocks.3.local_mp.bn.running_var"])
    # The converter is pure: the release dict is left as it was.
    assert "pos_embeder.token_projection.weight" in release and "cls_attn_blocks.0.attn.qkv.weight" in release


def test_convert_unwraps_prefixes_and_drops_dino_head():
    release = dino_release_state()
    wrapped = {"teacher": {f"module.backbone.{k}": v for k, v in release.items()}, "epoch": 100}
    wrapped["teacher"]["module.head.last_layer.weight_g"] = torch.ones(65536, 1)
    wrapped["teacher"]["module.head.mlp.0.weight"] = torch.ones(2048, DIM)
    converted = xcit.convert_dino_xcit(wrapped)
    assert converted.keys() == xcit.convert_dino_xcit(release).keys()
    # A file without the batch-norm step counters still loads strictly.
    bare = {k: v for k, v in release.items() if not k.endswith("num_batches_tracked")}
    xcit.build_xcit_small_12_p8().load_state_dict(xcit.convert_dino_xcit(bare), strict=True)


def test_patch_features_shape_layer_and_norm():
    torch.manual_seed(0)
    model = xcit.build_xcit_small_12_p8()
    images = xcit.normalise(torch.rand(1, 3, 48, 64))
    with torch.inference_mode():
        last = xcit.patch_features(model, images)
        last_raw = xcit.patch_features(model, images, norm=False)
        early = xcit.patch_features(model, images, layer=3, norm=False)
        early_normed = xcit.patch_features(model, images, layer=3)
        # By hand: patch embedding, plus the position encoding, then XCA blocks 0-3, tokens row-major.
        tokens, (rows, cols) = model.patch_embed(images)
        tokens = tokens + model.pos_embed(1, rows, cols).flatten(2).transpose(1, 2)
        for block in model.blocks[:4]:
            tokens = block(tokens, rows, cols)
        by_hand = tokens.transpose(1, 2).reshape(1, DIM, rows, cols)
        for block in model.blocks[4:]:
            tokens = block(tokens, rows, cols)
        all_blocks = tokens.transpose(1, 2).reshape(1, DIM, rows, cols)
    assert last.shape == (1, DIM, 6, 8) and (rows, cols) == (6, 8)
    assert early.shape == (1, DIM, 6, 8)
    torch.testing.assert_close(early, by_hand, rtol=0, atol=0)
    torch.testing.assert_close(last_raw, all_blocks, rtol=0, atol=0)
    assert not torch.allclose(early, last_raw, atol=1e-3)  # block 3 is not the last block
    assert not torch.allclose(last, last_raw)
    with torch.inference_mode():
        normed = model.norm(last_raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        early_by_hand = model.norm(by_hand.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(last, normed)
    torch.testing.assert_close(early_normed, early_by_hand)
    assert torch.equal(xcit.patch_features(model, images, layer=-9, norm=False), early)  # counted from the end
    with pytest.raises(ValueError):
        xcit.patch_features(model, images, layer=12)
    with pytest.raises(ValueError):
        xcit.patch_features(model, torch.rand(1, 3, 50, 64))
