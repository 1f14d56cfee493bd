"""The weights machinery: manifest, Hub cache resolution, official files converted on the fly, folders, strict keys,
verified downloads, and the `weights` CLI. No network: the Hub is a cache folder built here in huggingface_hub's
layout, official URLs are served from 127.0.0.1, and Google Drive is replaced by a function writing local bytes."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import pickle
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save
from torch import nn

from tests.fakes import registered
from vos import catalog, weights
from vos.__main__ import main
from vos.methods import SEMI, Method, MethodInfo, Paper, available
from vos.weights import download as wdownload
from vos.weights import entries as wentries
from vos.weights import resolve as wresolve

# --------------------------------------------------------------------------------------------------------------
# A test-only method with two small networks, stored by its "authors" in another key layout


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)


class Tiny(nn.Module):  # stands in for a timm backbone
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 3)


# ours <- official, as a method file's convert_official keeps them
RENAMES = (("backbone.0.", "conv."), ("backbone.1.", "bn."), ("decoder.fc.", "head."))


def convert_wtest(checkpoint):
    """The test method's convert_official: unwrap, strip 'module.', rename, drop a known-unused head by name."""
    state = checkpoint
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and key in state:
            state = state[key]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("fc_unused."):
            continue
        for old, new in RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def to_official(module: nn.Module, *, wrapper: str = "state_dict") -> dict:
    """``module``'s weights as the authors would publish them: renamed, 'module.'-prefixed, with an unused head,
    wrapped with optimizer state and training arguments."""
    official = {}
    for key, value in module.state_dict().items():
        for old, new in RENAMES:
            if key.startswith(new):
                key = old + key[len(new) :]
        official[f"module.{key}"] = value.clone()
    official["module.fc_unused.weight"] = torch.zeros(5, 5)
    return {
        wrapper: official,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
        "epoch": np.int64(12),
        "args": argparse.Namespace(lr=0.1, arch="test"),
    }


CONVERTER = f"{__name__}:convert_wtest"
ENTRIES = {
    "wtest.encoder": {
        "title": "test encoder",
        "used_by": ["wtest"],
        "hub_file": "wtest/encoder.safetensors",
        "licence": "MIT",
        "converter": CONVERTER,
        "paper": "A test paper (2026)",
        "source": {"kind": "url", "url": "http://127.0.0.1:9/unused", "filename": "enc_release.pth", "size": "1 KB"},
    },
    "wtest.decoder": {
        "title": "test decoder",
        "used_by": ["wtest"],
        "hub_file": "wtest/decoder.safetensors",
        "licence": "CC-BY-4.0",
        "converter": CONVERTER,
        "source": {"kind": "gdrive", "id": "drive-decoder", "filename": "dec_release.pth"},
    },
    "wtest.folder_part": {
        "title": "a file inside a Drive folder whose names are not recorded",
        "used_by": ["wtest"],
        "hub_file": "wtest/folder_part.safetensors",
        "licence": "unknown (see the official repository)",
        "converter": CONVERTER,
        "source": {"kind": "gdrive_folder", "id": "drive-folder"},
    },
    "backbone.wtest_tiny": {
        "title": "a backbone that lives in its own Hub repository",
        "used_by": ["wtest"],
        "hub_repo": "timm-test/tiny",
        "hub_file": "model.safetensors",
        "licence": "Apache-2.0",
    },
}


class WeightsTestMethod(Method):
    info = MethodInfo(
        key="wtest",
        title="Weights test",
        task=SEMI,
        summary="Test-only method with several networks.",
        variants=("one", "two", "bb", "drive"),
        default_variant="one",
        paper=Paper(title="A test paper", authors="tests", venue="tests", year=2026, url="https://example.org"),
        repo="https://example.org/repo",
        licence="MIT",
        weights={
            "one": {"encoder": "wtest.encoder"},
            "two": {"encoder": "wtest.encoder", "decoder": "wtest.decoder"},
            "bb": {"encoder": "wtest.encoder", "backbone": "backbone.wtest_tiny"},
            "drive": {"encoder": "wtest.folder_part"},
        },
    )

    @classmethod
    def build_part(cls, part, variant, options):
        return {"encoder": Encoder, "decoder": Decoder, "backbone": Tiny}[part]()

    def _build(self) -> None:
        self.encoder = self.nets["encoder"]
        self.decoder = self.nets.get("decoder")
        self.backbone = self.nets.get("backbone")

    def _segment(self, clip, first_mask):
        yield first_mask


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """A fresh, offline Hugging Face home and vos cache for this test, and the test method and its manifest rows."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("VOS_CACHE", str(tmp_path / "vos"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", weights.REPO_ENV, "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for file_id, table in ENTRIES.items():
        monkeypatch.setitem(weights.EXTRA_ENTRIES, file_id, weights.Entry.from_table(file_id, table))
    with registered(WeightsTestMethod):
        yield tmp_path


def reference(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = cls()
    if isinstance(module, Encoder):  # non-default running stats, so they must really be loaded
        module.bn.running_mean.uniform_()
        module.bn.running_var.uniform_(0.5, 2.0)
        module.bn.num_batches_tracked.fill_(7)
    return module


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def save_official(module: nn.Module, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_official(module, **kwargs), path)
    return path


def put_in_hub_cache(repo: str, filename: str, data: bytes, commit: str = "c0ffee" * 6 + "cafe") -> str:
    """Store a file in the Hub cache exactly as huggingface_hub lays it out; returns the blob's sha256."""
    root = weights.hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    sha = hashlib.sha256(data).hexdigest()
    blob = root / "blobs" / sha
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    link = root / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return sha


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --------------------------------------------------------------------------------------------------------------
# The manifest


REQUIRED_IDS = {
    "tvos.davis_train",
    "tvos.davis_trainval",
    "tvos.youtube_train",
    "backbone.dino_xcit_small_12_p8",
    "backbone.dinov2_vits14",
    "backbone.dinov2_vitb14",
    "backbone.dino_vits8",
    "backbone.dino_vits16",
    "backbone.mae_vitb16",
    "backbone.resnet50_tv",
    "simvos.b",
    "simvos.bs",
    "simvos.l",
    "ba.dino_s8",
    "abr.raft_things",
}


def test_manifest_rows_are_complete():
    rows = wentries._read_manifest()[0]
    assert not REQUIRED_IDS - set(rows)
    for file_id, item in rows.items():
        assert item.title and item.licence and item.paper and item.origin.startswith("https://"), file_id
        assert item.hub_file.endswith(".safetensors"), file_id
        assert all(isinstance(key, str) and key for key in item.used_by), file_id
        assert item.sha256 == "" or re.fullmatch(r"[0-9a-f]{64}", item.sha256), file_id
        if item.converter:
            assert re.fullmatch(r"[\w.]+:\w+", item.converter), file_id
        assert item.source is not None, f"{file_id}: every file records its official source"
        assert item.source.kind in weights.SOURCE_KINDS
        if item.ours:  # we convert it, so there must be a release to convert from
            assert item.official is not None, file_id
        else:
            assert not item.converter, f"{file_id}: files in timm's repositories are loaded as they are"
            # the Hub file is the official copy: recorded as such, and never downloaded a second way
            assert item.source.kind == "hub" and item.official is None, file_id
            assert (item.source.repo, item.source.filename) == (item.hub_repo, item.hub_file), file_id
        if item.source.kind.startswith("gdrive"):
            assert item.source.id, file_id
        elif item.source.kind == "url" or item.source.url:
            assert item.source.url.startswith("https://"), file_id
    timm = {fid: rows[fid].hub_repo for fid in REQUIRED_IDS if rows[fid].hub_repo}
    assert timm["backbone.dino_vits8"] == "timm/vit_small_patch8_224.dino"
    assert timm["backbone.resnet50_tv"] == "timm/resnet50.tv_in1k"
    assert rows["tvos.davis_train"].source.id == "1SWZ20zTHgOpha0MlF8iOdqEHFkALdZn7"


def test_every_registered_method_names_manifest_files(env):
    entries = weights.manifest()
    for info in available():
        for variant, parts in info.weights.items():
            assert variant in info.variants, f"{info.key}: weights for unknown variant {variant!r}"
            for part, file_id in parts.items():
                assert file_id in entries, f"{info.key}:{variant} part {part!r} names unknown file {file_id!r}"
                assert info.key in entries[file_id].used_by, f"{file_id}: used_by should list {info.key!r}"


def test_manifest_rejects_typos_and_unknown_ids(env):
    with pytest.raises(weights.ManifestError, match="licnce"):
        weights.Entry.from_table("x.y", {"title": "t", "hub_file": "x/y.safetensors", "licence": "MIT", "licnce": 1})
    with pytest.raises(weights.ManifestError, match="kind"):
        weights.Entry.from_table(
            "x.y", {"title": "t", "hub_file": "x.safetensors", "licence": "MIT", "source": {"kind": "ftp"}}
        )
    with pytest.raises(weights.ManifestError, match="needs repo"):
        weights.Entry.from_table(
            "x.y", {"title": "t", "hub_file": "x.safetensors", "licence": "MIT", "source": {"kind": "hub"}}
        )
    with pytest.raises(weights.UnknownWeights, match="Did you mean 'tvos.davis_train'"):
        weights.entry("tvos.davis_trian")


# --------------------------------------------------------------------------------------------------------------
# Official files converted on the fly


def test_unwrap_opens_wrappers_strips_module_and_drops_optimizer():
    official = to_official(reference(Encoder, 0), wrapper="model_state_dict")
    plain = weights.unwrap_state_dict({"model": official})
    assert all(not k.startswith("module.") for k in plain)
    assert "backbone.0.weight" in plain and "fc_unused.weight" in plain
    assert not any("exp_avg" in k or k in {"epoch", "args"} for k in plain)


def test_official_pth_loads_through_weights_file(env):
    ref = reference(Encoder, 1)
    pth = save_official(ref, env / "release" / "my_download.pth.tar")
    method = WeightsTestMethod("one", device="cpu", weights=str(pth))
    assert same_weights(method.encoder, ref)
    [record] = method.weights_records
    assert record["part"] == "encoder" and record["file"] == "wtest.encoder"
    assert record["source"] == "local" and record["converted"] is True
    assert record["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert method.config()["weights_records"] == [record]


def test_file_already_in_our_layout_is_loaded_unconverted(env):
    ref = reference(Encoder, 2)
    (env / "ours.safetensors").write_bytes(save(ref.state_dict()))
    torch.save({"state_dict": ref.state_dict()}, env / "ours.pth")
    for name in ("ours.safetensors", "ours.pth"):
        method = WeightsTestMethod("one", device="cpu", weights=str(env / name))
        assert same_weights(method.encoder, ref)


def test_convert_cli_writes_fp32_safetensors_that_hub_then_finds(env, capsys):
    ref = reference(Encoder, 3).half().float()  # values exactly representable either way
    official = to_official(ref)
    official["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in official["state_dict"].items()}
    pth = env / "enc_release.pth"
    torch.save(official, pth)

    assert main(["weights", "convert", "wtest:one", str(pth)]) == 0
    out = weights.converted_path(weights.entry("wtest.encoder"))
    assert str(out) in capsys.readouterr().out
    stored = load_file(str(out))
    assert set(stored) == set(ref.state_dict())  # renamed; unused head and optimizer state gone
    assert all(t.dtype == torch.float32 for k, t in stored.items() if not k.endswith("num_batches_tracked"))
    assert all(t.is_contiguous() for t in stored.values())

    method = WeightsTestMethod("one", device="cpu", weights="hub")
    assert same_weights(method.encoder, ref)
    assert method.weights_records[0]["source"] == "cache"

    assert main(["weights", "fetch", "wtest.encoder"]) == 0
    assert f"wtest.encoder: {out} (cache)" in capsys.readouterr().out

    again = catalog.convert("wtest.encoder", pth, env / "copy.safetensors")
    assert again.sha256 == weights.sha256_file(out), "the same release converts to the same bytes"

    assert main(["weights", "convert", "wtest:two", str(pth)]) == 2
    assert "several files" in capsys.readouterr().err


def test_convert_refuses_another_networks_file_and_writes_nothing(env, capsys):
    pth = save_official(reference(Decoder, 3), env / "dec_release.pth")
    with pytest.raises(weights.KeyMismatch) as caught:
        catalog.convert("wtest:one", pth, env / "out.safetensors")
    message = str(caught.value)
    assert "wtest:one part 'encoder' (wtest.encoder)" in message
    assert "missing key(s): conv.weight" in message and "unexpected key(s): head.weight" in message
    assert "Nothing was written" in message
    assert not (env / "out.safetensors").exists() and files_under(weights.cache_root()) == []

    assert main(["weights", "convert", "wtest.encoder", str(pth)]) == 2  # by file id: the network of its user
    assert "missing key(s): conv.weight" in capsys.readouterr().err
    assert files_under(weights.cache_root()) == []


def _tvos_release(path: Path) -> Path:
    """A file in the layout of TVOS's davis_train.pth.tar (names and shapes of the release, 318 tensors) whose
    tensors are zero-stride views of one number, so it takes a few kilobytes."""
    layout, _ = catalog.network_layout("tvos.davis_train")
    renames = {
        "conv1.": "backbone.0.",
        "bn1.": "backbone.1.",
        **{f"layer{i}.": f"backbone.{i + 3}." for i in range(1, 5)},
    }
    state = {}
    for key, shape in layout.items():
        for ours, theirs in renames.items():
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
        state[f"module.{key}"] = torch.zeros(()).expand(shape)
    torch.save({"state_dict": state, "epoch": 240}, path)
    return path


def test_a_tvos_checkpoint_is_not_converted_as_the_xcit_backbone(env, capsys):
    release = _tvos_release(env / "davis_train.pth.tar")
    assert main(["weights", "convert", "mixture:xcit", str(release)]) == 2
    err = capsys.readouterr().err
    assert "does not fit mixture:xcit part 'xcit' (backbone.dino_xcit_small_12_p8)" in err
    assert "missing key(s): cls_token" in err and "318 unexpected key(s)" in err
    assert files_under(weights.cache_root()) == []
    # it fits the network it was made for (checked without writing its 100 MB)
    layout, _ = catalog.network_layout("tvos.davis_train")
    converted = weights.to_ours(weights.entry("tvos.davis_train"), weights.read_checkpoint(release))
    assert weights.layout_diff(weights.shapes(converted), layout).ok


def test_an_official_download_of_another_network_is_not_cached(env, server, online_without_hub, monkeypatch):
    data = save_official(reference(Decoder, 14), env / "served.pth").read_bytes()
    serve_encoder_row(monkeypatch, server, data)
    for _ in range(2):  # the second load must fail the same way, not find a poisoned cache
        with pytest.raises(weights.KeyMismatch, match="missing key\\(s\\): conv.weight"):
            WeightsTestMethod("one", device="cpu", weights="hub")
        assert not weights.converted_path(weights.entry("wtest.encoder")).exists()
    # the fetch command resolves without a module at hand: the network is built on the meta device
    assert main(["weights", "fetch", "wtest.encoder"]) == 2
    assert not weights.converted_path(weights.entry("wtest.encoder")).exists()


def test_network_layout_is_built_on_the_meta_device(env):
    layout, what = catalog.network_layout("wtest.decoder")
    assert layout == {"head.weight": (2, 4), "head.bias": (2,)} and what == "wtest:two part 'decoder' (wtest.decoder)"
    xcit, what = catalog.network_layout("backbone.dino_xcit_small_12_p8", method="mixture", variant="xcit_dinov2_b")
    assert what == "mixture:xcit_dinov2_b part 'xcit' (backbone.dino_xcit_small_12_p8)"
    assert xcit["cls_token"] == (1, 1, 384) and len(xcit) > 300
    simvos_b, what = catalog.network_layout("simvos.b")
    assert what == "simvos:vit_b part 'model' (simvos.b)" and len(simvos_b) == 201
    with pytest.raises(weights.ConversionError, match="No registered method loads backbone.mae_vitb16"):
        catalog.network_layout("backbone.mae_vitb16")


def test_cached_conversion_with_another_sha256_than_the_manifest_is_refused(env, monkeypatch):
    ref = reference(Encoder, 19)
    cached = weights.converted_path(weights.entry("wtest.encoder"))
    sha = weights.save_safetensors(ref.state_dict(), cached)
    for recorded, fits in (("0" * 64, False), (sha, True)):
        row = dict(ENTRIES["wtest.encoder"], sha256=recorded)
        monkeypatch.setitem(weights.EXTRA_ENTRIES, "wtest.encoder", weights.Entry.from_table("wtest.encoder", row))
        if fits:
            assert same_weights(WeightsTestMethod("one", device="cpu", weights="hub").encoder, ref)
            continue
        with pytest.raises(weights.ChecksumMismatch) as caught:
            WeightsTestMethod("one", device="cpu", weights="hub")
        assert str(cached) in str(caught.value) and "weights fetch wtest.encoder" in str(caught.value)


class NotWeights:
    pass


def test_pickles_with_arbitrary_objects_are_refused(env):
    bad = {"state_dict": reference(Encoder, 0).state_dict(), "payload": NotWeights()}
    torch.save(bad, env / "bad.pth")
    with (env / "plain.pth").open("wb") as handle:
        pickle.dump({"payload": NotWeights()}, handle, protocol=2)
    for name in ("bad.pth", "plain.pth"):
        with pytest.raises(weights.ConversionError) as caught:
            WeightsTestMethod("one", device="cpu", weights=str(env / name))
        message = str(caught.value)
        assert f"{name} holds objects other than tensors and plain data (a {__name__}.NotWeights)" in message
        assert "never unpickles" in message
        assert not re.search(r"weights_only(=| set to )False", message), "never advise turning the safety off"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("content", ["random", "pickle4", "empty", "cut"])
def test_unreadable_files_are_named_without_torchs_advice(env, content):
    path = env / "garbage.pth"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "pickle4":  # a plain (non-torch) pickle whose opcodes the safe unpickler does not take
        path.write_bytes(pickle.dumps({"payload": NotWeights()}, protocol=4))
    elif content == "cut":
        torch.save(reference(Encoder, 0).state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(b"")
    with pytest.raises(weights.ConversionError) as caught:
        weights.read_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a readable PyTorch checkpoint (") and message.endswith(")")
    assert "weights_only" not in message and "Re-running" not in message
    with pytest.raises(weights.ConversionError, match="not a readable PyTorch checkpoint"):
        WeightsTestMethod("one", device="cpu", weights=str(path))


# --------------------------------------------------------------------------------------------------------------
# Folders and strict keys


def test_folder_files_matched_by_name_then_by_layout(env):
    enc, dec = reference(Encoder, 4), reference(Decoder, 5)
    folder = env / "release"
    save_official(enc, folder / "enc_release.pth")
    save_official(dec, folder / "dec_release.pth")
    method = WeightsTestMethod("two", device="cpu", weights=str(folder))
    assert same_weights(method.encoder, enc) and same_weights(method.decoder, dec)
    assert [Path(r["path"]).name for r in method.weights_records] == ["enc_release.pth", "dec_release.pth"]

    renamed = env / "renamed"
    save_official(enc, renamed / "b.pth", wrapper="model_state_dict")
    save_official(dec, renamed / "sub" / "a.pth.tar")
    method = WeightsTestMethod("two", device="cpu", weights=str(renamed))
    assert same_weights(method.encoder, enc) and same_weights(method.decoder, dec)
    assert [Path(r["path"]).name for r in method.weights_records] == ["b.pth", "a.pth.tar"]


def test_two_files_fitting_one_network_is_an_error(env):
    save_official(reference(Encoder, 6), env / "two" / "x.pth")
    save_official(reference(Encoder, 7), env / "two" / "y.pth")
    with pytest.raises(weights.AmbiguousWeights, match=r"x\.pth.*y\.pth"):
        WeightsTestMethod("one", device="cpu", weights=str(env / "two"))


def test_backbone_missing_from_folder_comes_from_hub(env):
    enc, tiny = reference(Encoder, 8), reference(Tiny, 9)
    save_official(enc, env / "release" / "whatever.pth")
    put_in_hub_cache("timm-test/tiny", "model.safetensors", save(tiny.state_dict()))
    method = WeightsTestMethod("bb", device="cpu", weights=str(env / "release"))
    assert same_weights(method.encoder, enc) and same_weights(method.backbone, tiny)
    assert method.weights_records[1]["source"] == "hub:timm-test/tiny (not in the given files)"


def test_file_that_fits_nothing_names_its_keys(env):
    state = reference(Encoder, 10).state_dict()
    state["conv.weight"] = torch.zeros(4, 3, 5, 5)
    state["extra.bias"] = state.pop("bn.bias")
    (env / "wrong.safetensors").write_bytes(save(state))
    with pytest.raises(weights.KeyMismatch) as caught:
        WeightsTestMethod("one", device="cpu", weights=str(env / "wrong.safetensors"))
    message = str(caught.value)
    assert "missing key(s): bn.bias" in message
    assert "unexpected key(s): extra.bias" in message
    assert "conv.weight (4, 3, 5, 5) in the file vs (4, 3, 3, 3)" in message
    assert isinstance(caught.value, ValueError)

    save_official(reference(Encoder, 11), env / "only_encoder.pth")
    with pytest.raises(weights.KeyMismatch, match="needs one file per network"):
        WeightsTestMethod("two", device="cpu", weights=str(env / "only_encoder.pth"))


def test_missing_path_and_bad_hf_spec(env):
    with pytest.raises(weights.WeightsUnavailable, match="no such file or folder") as caught:
        WeightsTestMethod("one", device="cpu", weights=str(env / "nope.pth"))
    assert "weights fetch" not in str(caught.value)  # a mistyped path is not fixed by downloading
    with pytest.raises(weights.BadWeightsSpec):
        WeightsTestMethod("one", device="cpu", weights="hf://justone")


# --------------------------------------------------------------------------------------------------------------
# The Hub (a local cache in huggingface_hub's layout, resolved offline)


def test_hub_cache_resolves_offline_and_repo_can_be_overridden(env, monkeypatch):
    ours, mirror = reference(Encoder, 12), reference(Encoder, 13)
    sha = put_in_hub_cache(weights.weights_repo(), "wtest/encoder.safetensors", save(ours.state_dict()))
    method = WeightsTestMethod("one", device="cpu", weights="hub")
    assert same_weights(method.encoder, ours)
    record = method.weights_records[0]
    assert record["source"] == "hub:vos-compare/checkpoints" and record["sha256"] == sha
    assert Path(record["path"]).is_relative_to(env / "hf" / "hub")

    put_in_hub_cache("me/mirror", "wtest/encoder.safetensors", save(mirror.state_dict()))
    put_in_hub_cache("me/mirror", "custom/enc.safetensors", save(ours.state_dict()))
    assert same_weights(WeightsTestMethod("one", device="cpu", weights="hf://me/mirror").encoder, mirror)
    method = WeightsTestMethod("one", device="cpu", weights="hf://me/mirror/custom/enc.safetensors")
    assert (
        same_weights(method.encoder, ours)
        and method.weights_records[0]["source"] == "hf:me/mirror/custom/enc.safetensors"
    )

    monkeypatch.setenv(weights.REPO_ENV, "me/mirror")
    method = WeightsTestMethod("one", device="cpu", weights="hub")
    assert same_weights(method.encoder, mirror) and method.weights_records[0]["source"] == "hub:me/mirror"
    assert catalog.resolve("wtest", "one") == {"encoder": Path(method.weights_records[0]["path"])}


def test_hub_file_with_another_sha256_than_the_manifest_is_refused(env, monkeypatch):
    put_in_hub_cache(weights.weights_repo(), "wtest/encoder.safetensors", save(reference(Encoder, 0).state_dict()))
    row = dict(ENTRIES["wtest.encoder"], sha256="0" * 64)
    monkeypatch.setitem(weights.EXTRA_ENTRIES, "wtest.encoder", weights.Entry.from_table("wtest.encoder", row))
    with pytest.raises(weights.ChecksumMismatch):
        WeightsTestMethod("one", device="cpu", weights="hub")


def test_offline_and_missing_says_where_it_looked_and_how_to_fetch(env):
    with pytest.raises(weights.WeightsUnavailable) as caught:
        WeightsTestMethod("two", device="cpu", weights="hub")
    err = caught.value
    assert isinstance(err, FileNotFoundError)
    assert err.file_id == "wtest.encoder" and err.method == "wtest" and err.variant == "two"
    assert err.command == "python -m vos weights fetch wtest:two"
    message = str(err)
    assert "python -m vos weights fetch wtest:two" in message
    assert "vos-compare/checkpoints / wtest/encoder.safetensors" in message and "HF_HUB_OFFLINE" in message
    assert "enc_release.pth" in message
    assert [where.split()[0] for where, _ in err.tried] == ["converted", "Hugging", "official"]


# --------------------------------------------------------------------------------------------------------------
# Downloads of official releases: verified, converted, and never left half-written


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, tuple[bytes, int]]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        body, declared = self.server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)  # fewer bytes than declared = a connection cut mid-download

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Iterator[_Server]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def online_without_hub(monkeypatch):
    """Downloads allowed, but the Hub answers 'no such file' without any network."""

    def no_hub(repo, filename, revision=None):
        raise weights.HubMiss("the Hub has no such file (test)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(wresolve, "hub_download", no_hub)


def serve_encoder_row(monkeypatch, server: _Server, data: bytes, *, declared: int | None = None, **source) -> None:
    server.files["/enc_release.pth"] = (data, len(data) if declared is None else declared)
    url = f"http://127.0.0.1:{server.server_address[1]}/enc_release.pth"
    row = dict(ENTRIES["wtest.encoder"], source={"kind": "url", "url": url, "filename": "enc_release.pth", **source})
    monkeypatch.setitem(weights.EXTRA_ENTRIES, "wtest.encoder", weights.Entry.from_table("wtest.encoder", row))


def test_url_download_is_verified_converted_and_cached(env, server, online_without_hub, monkeypatch):
    ref = reference(Encoder, 14)
    data = (save_official(ref, env / "served.pth")).read_bytes()
    serve_encoder_row(monkeypatch, server, data, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    method = WeightsTestMethod("one", device="cpu", weights="hub")
    assert same_weights(method.encoder, ref)
    record = method.weights_records[0]
    assert record["source"].startswith("official:http://127.0.0.1") and record["converted"] is True
    cache = weights.cache_root()
    assert sorted(p.relative_to(cache).as_posix() for p in files_under(cache)) == [
        "converted/wtest.encoder.safetensors",
        "official/wtest.encoder/enc_release.pth",
    ]
    assert WeightsTestMethod("one", device="cpu", weights="hub").weights_records[0]["source"] == "cache"


@pytest.mark.parametrize("problem", ["sha256", "size", "cut"])
def test_corrupt_or_cut_download_leaves_nothing_in_the_cache(env, server, online_without_hub, monkeypatch, problem):
    data = save_official(reference(Encoder, 15), env / "served.pth").read_bytes()
    if problem == "sha256":
        serve_encoder_row(monkeypatch, server, data, sha256="f" * 64)
        expected = weights.ChecksumMismatch
    elif problem == "size":
        serve_encoder_row(monkeypatch, server, data, size_bytes=len(data) + 1)
        expected = weights.ChecksumMismatch
    else:
        serve_encoder_row(monkeypatch, server, data[: len(data) // 2], declared=len(data))
        expected = weights.WeightsUnavailable
    with pytest.raises(expected):
        WeightsTestMethod("one", device="cpu", weights="hub")
    assert files_under(weights.cache_root()) == []


def test_drive_file_and_drive_folder_picked_by_layout(env, online_without_hub, monkeypatch):
    dec, enc = reference(Decoder, 16), reference(Encoder, 17)
    drive = {
        "drive-decoder": save_official(dec, env / "drive" / "dec.pth").read_bytes(),
        "id-enc": save_official(enc, env / "drive" / "enc.pth").read_bytes(),
        "id-other": save_official(dec, env / "drive" / "other.pth").read_bytes(),
    }
    fetched: list[str] = []

    def fake_gdown(file_id: str, dest: Path) -> None:
        fetched.append(file_id)
        dest.write_bytes(drive[file_id])

    monkeypatch.setattr(wdownload, "_download_gdrive", fake_gdown)
    monkeypatch.setattr(
        wdownload, "_gdrive_folder_listing", lambda folder: [("id-other", "x/o.pth"), ("id-enc", "e.pth")]
    )

    resolved = catalog.resolve_for("wtest.decoder")
    assert resolved.converted and same_weights(_loaded(Decoder, resolved.path), dec)

    method = WeightsTestMethod("drive", device="cpu", weights="hub")
    assert same_weights(method.encoder, enc)
    assert method.weights_records[0]["source"].startswith("official:Google Drive folder drive-folder")
    assert weights.converted_path(weights.entry("wtest.folder_part")).is_file()
    assert WeightsTestMethod("drive", device="cpu", weights="hub").weights_records[0]["source"] == "cache"
    assert sorted(fetched) == ["drive-decoder", "id-enc", "id-other"]


def test_a_cut_drive_folder_download_resumes(env, online_without_hub, monkeypatch):
    import requests

    enc, dec = reference(Encoder, 20), reference(Decoder, 21)
    drive = {
        "id-other": save_official(dec, env / "drive" / "other.pth").read_bytes(),
        "id-enc": save_official(enc, env / "drive" / "enc.pth").read_bytes(),
    }
    fetched: list[str] = []
    cut = {"id-enc"}

    def fake_gdown(file_id: str, dest: Path) -> None:
        fetched.append(file_id)
        if file_id in cut:
            cut.discard(file_id)
            dest.write_bytes(drive[file_id][:100])
            raise requests.ConnectionError("connection reset (test)")
        dest.write_bytes(drive[file_id])

    monkeypatch.setattr(wdownload, "_download_gdrive", fake_gdown)
    monkeypatch.setattr(
        wdownload, "_gdrive_folder_listing", lambda folder: [("id-other", "x/o.pth"), ("id-enc", "e.pth")]
    )
    folder = weights.official_dir(weights.entry("wtest.folder_part"))
    with pytest.raises(weights.WeightsUnavailable, match="connection reset"):
        WeightsTestMethod("drive", device="cpu", weights="hub")
    assert [p.name for p in files_under(folder)] == ["o.pth"] and not weights.folder_complete(folder)
    assert weights.cache_status(weights.entry("wtest.folder_part")) == "no"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsUnavailable, match="partly downloaded"):
        WeightsTestMethod("drive", device="cpu", weights="hub")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    method = WeightsTestMethod("drive", device="cpu", weights="hub")
    assert same_weights(method.encoder, enc)
    assert fetched == ["id-other", "id-enc", "id-enc"], "only the missing file is fetched again"
    assert weights.folder_complete(folder)
    assert (folder / weights.FOLDER_DONE).read_text() == "id-other\tx/o.pth\nid-enc\te.pth\n"
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def _loaded(cls: type[nn.Module], path: Path) -> nn.Module:
    module = cls()
    module.load_state_dict(load_file(str(path)))
    return module


# --------------------------------------------------------------------------------------------------------------
# CLI, publishing, Space front matter


def test_weights_list_has_a_row_per_method_variant_part(env, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines[0]
    assert header.split() == ["METHOD:VARIANT", "PART", "FILE", "ID", "SIZE", "CACHED", "COMES", "FROM"]
    starts = [header.index(name) for name in ("PART", "FILE ID", "SIZE")]
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in lines[1 : lines.index("")]:  # cut at the column starts: misaligned columns would garble the cells
        used, part, file_id = (line[a:b].strip() for a, b in zip([0, *starts], starts))
        rows.setdefault(used, []).append((part, file_id))
    assert rows["mixture:xcit_dinov2_s"] == [
        ("xcit", "backbone.dino_xcit_small_12_p8"),
        ("dinov2", "backbone.dinov2_vits14"),
    ]
    assert rows["mixture:rgb"] == [("-", "none needed")]
    assert rows["wtest:two"] == [("encoder", "wtest.encoder"), ("decoder", "wtest.decoder")]
    listed = {file_id for parts in rows.values() for _, file_id in parts}
    assert set(weights.manifest()) <= listed, "files of unregistered methods and unused files are listed too"
    row = next(line for line in lines if line.startswith("tvos:davis_train "))
    assert "embedding" in row and "48.8 MB" in row and " no " in row and "1SWZ20zTHgOpha0MlF8iOdqEHFkALdZn7" in row
    timm = next(line for line in lines if "backbone.dinov2_vits14" in line)
    assert timm.endswith("Hub timm/vit_small_patch14_dinov2.lvd142m/model.safetensors (the official copy)")
    assert "Offline" in out


def test_fetch_offline_fails_with_the_reason(env, capsys):
    assert main(["weights", "fetch", "wtest:one"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert main(["weights", "fetch", "wtset"]) == 2
    assert "Did you mean 'wtest'" in capsys.readouterr().err


def test_push_selects_converted_files_and_writes_a_model_card(env):
    weights.save_safetensors(
        reference(Encoder, 18).state_dict(), weights.converted_path(weights.entry("wtest.encoder"))
    )
    ready, missing = catalog.push_selection(["wtest:bb", "wtest:two"])
    assert [item.id for item, _ in ready] == ["wtest.encoder"]
    assert [item.id for item in missing] == ["wtest.decoder"]  # the timm-hosted backbone is never pushed

    card = weights.model_card(weights.card_files(ready), "me/weights")
    assert card.startswith("---\nlicense: other\n")
    path = ready[0][1]
    for text in (
        "`wtest/encoder.safetensors`",
        "MIT",
        "A test paper (2026)",
        "enc_release.pth",
        weights.sha256_file(path),
    ):
        assert text in card

    with pytest.raises(weights.DownloadFailed, match="HF_HUB_OFFLINE"):
        catalog.push("me/weights", what=["wtest"])


@pytest.fixture
def fake_hub(monkeypatch) -> tuple[list, list]:
    """HfApi's repository calls replaced: (files the repository lists, operations of each commit made)."""
    from huggingface_hub import HfApi

    in_repo: list = []
    commits: list = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "list_repo_tree", lambda self, repo_id, **kw: iter(in_repo))
    monkeypatch.setattr(
        HfApi, "create_commit", lambda self, repo_id, operations, **kw: commits.append(list(operations))
    )
    return in_repo, commits


def test_push_card_lists_files_already_in_the_repository(env, fake_hub):
    from huggingface_hub import RepoFile

    in_repo, commits = fake_hub
    encoder = weights.converted_path(weights.entry("wtest.encoder"))
    sha = weights.save_safetensors(reference(Encoder, 22).state_dict(), encoder)
    old_sha = "ab" * 32
    in_repo += [
        RepoFile(path="README.md", size=900, oid="1"),
        RepoFile(path=".gitattributes", size=1500, oid="2"),
        RepoFile(
            path="wtest/decoder.safetensors",
            size=2_500_000,
            oid="3",
            lfs={"size": 2_500_000, "oid": old_sha, "pointerSize": 134},
        ),
        RepoFile(
            path="wtest/encoder.safetensors", size=10, oid="4", lfs={"size": 10, "oid": "cd" * 32, "pointerSize": 134}
        ),
        RepoFile(path="someone/else.safetensors", size=10, oid="5"),
    ]

    pushed = catalog.push("me/weights", what=["wtest:one"])
    assert [item.id for item, _ in pushed] == ["wtest.encoder"]
    [operations] = commits
    assert [op.path_in_repo for op in operations] == ["wtest/encoder.safetensors", "README.md"]
    card = operations[-1].path_or_fileobj.decode()
    rows = [line for line in card.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["wtest/encoder.safetensors", "wtest/decoder.safetensors"]
    assert sha in rows[0] and "cd" * 32 not in card, "the file being pushed replaces the repository's"
    assert old_sha in rows[1] and "2.5 MB" in rows[1] and "test decoder" in rows[1]
    assert "someone/else" not in card


def test_push_refuses_a_cached_file_that_does_not_fit(env, fake_hub):
    _, commits = fake_hub
    poisoned = weights.converted_path(weights.entry("wtest.encoder"))
    weights.save_safetensors(reference(Decoder, 23).state_dict(), poisoned)  # as an unchecked conversion left it
    with pytest.raises(weights.KeyMismatch, match="Nothing was uploaded"):
        catalog.push("me/weights", what=["wtest:one"])
    assert commits == []


def test_preload_from_hub_front_matter(env):
    yaml = weights.preload_from_hub_yaml()
    lines = yaml.splitlines()
    assert lines[0] == "preload_from_hub:"
    ours = next(line for line in lines if "vos-compare/checkpoints" in line)
    dash, repo, files = ours.split()
    assert (dash, repo) == ("-", "vos-compare/checkpoints") and "tvos/davis_train.safetensors," in files
    assert "  - timm/vit_small_patch8_224.dino model.safetensors" in lines
    assert "mae" not in yaml  # no released variant uses it
    mirror = weights.preload_from_hub_yaml(["tvos.davis_train", "backbone.dino_vits8"], repo="me/weights")
    assert mirror.splitlines()[1:] == [
        "  - me/weights tvos/davis_train.safetensors",
        "  - timm/vit_small_patch8_224.dino model.safetensors",
    ]


def test_an_unreachable_hub_is_not_asked_again_for_a_while(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online, but the Hub does not answer
    asked_online = []

    def unreachable(repo, filename, *, local_files_only, **kwargs):
        asked_online.append(not local_files_only)
        raise LocalEntryNotFoundError("cannot connect")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(wdownload, "_hub_unreachable_at", None)
    monkeypatch.setattr(wdownload, "_hub_answers", lambda: True)  # the host answers; the downloads fail
    with pytest.raises(weights.HubMiss, match="cannot reach the Hub"):
        weights.hub_download("owner/repo", "a.safetensors")
    # The next file is looked up in the local cache only: no second round of retries.
    with pytest.raises(weights.HubMiss, match=r"the Hub did not answer \d+ s ago"):
        weights.hub_download("owner/repo", "b.safetensors")
    assert asked_online == [True, False]
    monkeypatch.setattr(wdownload, "HUB_RETRY_AFTER_S", 0.0)  # the wait is over: ask the Hub again
    with pytest.raises(weights.HubMiss, match="cannot reach the Hub"):
        weights.hub_download("owner/repo", "c.safetensors")
    assert asked_online == [True, False, True]


def test_a_network_the_authors_do_not_ship_may_come_from_the_hub():
    plain = {"title": "t", "hub_file": "x.safetensors", "licence": "MIT"}
    assert not weights.Entry.from_table("m.part", plain).shared_backbone
    assert weights.Entry.from_table("m.part", {**plain, "shared": True}).shared_backbone
    assert weights.Entry.from_table("backbone.x", plain).shared_backbone
    assert weights.entry("abr.raft_things").shared_backbone  # abr's RAFT is torchvision's, not in the authors' folder


def test_no_network_is_known_before_the_first_file(monkeypatch):
    """Without HF_HUB_OFFLINE, a machine whose Hub host does not answer looks in the local cache only from the first
    file on: every missing checkpoint is reported at once, none after huggingface_hub's retries."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked_online, probes = [], []

    def local_only(repo, filename, *, local_files_only, **kwargs):
        asked_online.append(not local_files_only)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", local_only)
    monkeypatch.setattr(wdownload, "_hub_unreachable_at", None)
    monkeypatch.setattr(wdownload, "_hub_probed_at", None)
    monkeypatch.setattr(wdownload, "_hub_answers", lambda: probes.append(1) or False)
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        with pytest.raises(weights.HubMiss, match="the Hub did not answer"):
            weights.hub_download("owner/repo", name)
    assert asked_online == [False, False, False] and len(probes) == 1
