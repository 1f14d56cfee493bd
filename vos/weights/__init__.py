"""Checkpoints: the manifest, Hugging Face Hub download, official-source fallback, conversion, strict loading.

Where a method's weights come from (``weights=`` in Python, ``--weights`` on the CLI, the app's advanced panel):

- ``hub`` (default): our cache of converted files -> the Hugging Face cache / Hub (the manifest's repository; ours
  can be replaced by a mirror with $VOS_WEIGHTS_REPO) -> the authors' release (Google Drive or a URL), downloaded
  to a temporary name, verified, converted to safetensors and cached.
- a ``.safetensors`` file in our (or timm's) layout, or an official release file exactly as published (``.pth``,
  ``.pth.tar``, ``.pt``: wrapper dicts and ``module.`` prefixes are fine), converted on the fly with the manifest's
  converter; a folder of such files for a method with several networks (matched by the manifest's file names,
  else by key layout); or ``hf://OWNER/REPO[/FILE]``. Shared backbones the authors do not ship (timm's DINO, ...)
  come from the Hub when the folder has no file for them.

Loading is strict: a file whose keys or shapes do not fit raises KeyMismatch naming them, and so does converting
one (checked against the network built on the meta device, before anything is written). Official pickles are only
opened with ``torch.load(weights_only=True)`` (plus a short allowlist of plain data types such as argparse.Namespace
that old checkpoints carry); nothing here ever unpickles arbitrary objects.

The environment is read at call time, never through huggingface_hub's import-time constants (tests change it per
test): HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE (which also stops official downloads), HF_TOKEN, VOS_CACHE,
VOS_WEIGHTS_REPO.

The package knows files, never methods (it does not import vos.methods): which network loads a file, and so what
a conversion is checked against, is vos.catalog's business. Its modules, bottom up: ``errors``; ``entries`` (the
manifest's rows, the environment's places); ``checkpoint`` (reading, unwrapping, converting, writing state dicts;
key layouts); ``download`` (Hub and official sources, the cache's layout); ``resolve`` (a file id to a local
file); ``load`` (a weights spec to a network's loaded state dict); ``publish`` (uploading to the Hub, the model
card). Everything methods and callers use is re-exported here.
"""

from __future__ import annotations

from vos.weights.checkpoint import (
    WRAPPER_KEYS,
    Converter,
    LayoutDiff,
    Shapes,
    StateDict,
    layout_diff,
    load_converter,
    read_checkpoint,
    save_safetensors,
    sha256_file,
    shapes,
    storable,
    to_ours,
    unwrap_state_dict,
)
from vos.weights.download import (
    FOLDER_DONE,
    CacheState,
    HubMiss,
    cache_status,
    converted_path,
    download_official,
    folder_complete,
    hub_download,
    hub_errors,
    hub_reason,
    official_dir,
    official_path,
)
from vos.weights.entries import (
    CACHE_ENV,
    EXTRA_ENTRIES,
    MANIFEST_PATH,
    REPO_ENV,
    SOURCE_KINDS,
    Entry,
    Source,
    cache_root,
    entry,
    hf_token,
    hub_cache_dir,
    manifest,
    offline,
    weights_repo,
)
from vos.weights.errors import (
    AmbiguousWeights,
    BadWeightsSpec,
    ChecksumMismatch,
    ConversionError,
    DownloadFailed,
    KeyMismatch,
    ManifestError,
    OfficialFolderUnmatched,
    UnknownWeights,
    WeightsUnavailable,
)
from vos.weights.load import (
    HF,
    HUB,
    LOCAL,
    OFFICIAL_SUFFIXES,
    RANDOM,
    WEIGHT_SUFFIXES,
    file_layouts,
    load_into,
    parse_hf,
    spec_kind,
)
from vos.weights.publish import (
    CardFile,
    card_files,
    model_card,
    preload_from_hub_yaml,
    upload,
)
from vos.weights.resolve import (
    LayoutProbe,
    Resolved,
    convert_official_file,
    describe_part,
    resolve_file,
)

__all__ = [
    "AmbiguousWeights",
    "BadWeightsSpec",
    "CACHE_ENV",
    "CacheState",
    "CardFile",
    "ChecksumMismatch",
    "ConversionError",
    "Converter",
    "DownloadFailed",
    "EXTRA_ENTRIES",
    "Entry",
    "FOLDER_DONE",
    "HF",
    "HUB",
    "HubMiss",
    "KeyMismatch",
    "LOCAL",
    "LayoutDiff",
    "LayoutProbe",
    "MANIFEST_PATH",
    "ManifestError",
    "OFFICIAL_SUFFIXES",
    "OfficialFolderUnmatched",
    "RANDOM",
    "REPO_ENV",
    "Resolved",
    "SOURCE_KINDS",
    "Shapes",
    "Source",
    "StateDict",
    "UnknownWeights",
    "WEIGHT_SUFFIXES",
    "WRAPPER_KEYS",
    "WeightsUnavailable",
    "cache_root",
    "cache_status",
    "card_files",
    "convert_official_file",
    "converted_path",
    "describe_part",
    "download_official",
    "entry",
    "file_layouts",
    "folder_complete",
    "hf_token",
    "hub_cache_dir",
    "hub_download",
    "hub_errors",
    "hub_reason",
    "layout_diff",
    "load_converter",
    "load_into",
    "manifest",
    "model_card",
    "official_dir",
    "official_path",
    "offline",
    "parse_hf",
    "preload_from_hub_yaml",
    "read_checkpoint",
    "resolve_file",
    "save_safetensors",
    "sha256_file",
    "shapes",
    "spec_kind",
    "storable",
    "to_ours",
    "unwrap_state_dict",
    "upload",
    "weights_repo",
]
