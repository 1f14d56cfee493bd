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
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import importlib
import logging
import os
import pickle
import re
import struct
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vos.errors import VosError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
Shapes = dict[str, tuple[int, ...]]
Converter = Callable[[Any], StateDict]

MANIFEST_PATH = Path(__file__).resolve().parent.parent / "weights" / "manifest.toml"
REPO_ENV = "VOS_WEIGHTS_REPO"
CACHE_ENV = "VOS_CACHE"
# "hub": the authors' weights are published on the Hub itself (timm's repositories), so there is nothing else to
# download; the row records that source for the record, and vos never fetches a "hub" source twice.
SOURCE_KINDS = ("gdrive", "gdrive_folder", "url", "hub")
_SOURCE_REQUIRES = {"gdrive": "id", "gdrive_folder": "id", "url": "url", "hub": "repo"}
OFFICIAL_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")  # .pth.tar ends in .tar
WEIGHT_SUFFIXES = (".safetensors", *OFFICIAL_SUFFIXES)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 5  # names listed per kind of key problem
# Written into a downloaded Drive folder once every file of its listing is there: each file is renamed into place
# whole, but a download cut between two files leaves a folder that looks complete without it.
FOLDER_DONE = ".vos-complete"


# --------------------------------------------------------------------------------------------------------------
# Errors


class WeightsUnavailable(VosError, FileNotFoundError):
    """No source could provide a checkpoint; says where it looked, why each failed, and the command that fetches it."""

    def __init__(
        self,
        *,
        file_id: str,
        filename: str,
        tried: list[tuple[str, str]],
        method: str | None = None,
        variant: str | None = None,
        part: str | None = None,
        hint: str = "",
        fetchable: bool = True,
    ):
        self.method, self.variant, self.part = method, variant, part
        self.fetchable = fetchable
        self.file_id, self.filename, self.tried = file_id, filename, tried
        target = f"{method}:{variant}" if method and variant else file_id
        self.command = f"python -m vos weights fetch {target}"
        what = f"{method}:{variant} (part {part!r})" if method and part else target
        lines = [f"No weights for {what}: {file_id} ({filename}). Looked in:"]
        lines += [f"  - {where}: {why}" for where, why in tried]
        if fetchable:
            lines.append(f"Fetch it with `{self.command}` (needs the network){hint}.")
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return self.args[0]


class OfficialFolderUnmatched(WeightsUnavailable):
    """The authors' Drive folder is downloaded but the manifest does not name the file: pick it by key layout."""

    def __init__(self, folder: Path, **kwargs: Any):
        self.folder = folder
        super().__init__(**kwargs)


class ChecksumMismatch(VosError, ValueError):
    """A downloaded or cached file's size or sha256 differs from the manifest's."""

    def __init__(self, what: str, kind: str, expected: Any, actual: Any, *, fix: str = ""):
        self.what, self.kind, self.expected, self.actual = what, kind, expected, actual
        fix = fix or (
            "The file was not kept; the download may have been cut or the source changed. Try again, and if it "
            "persists report it (weights/manifest.toml)."
        )
        super().__init__(f"{what}: {kind} is {actual}, the manifest expects {expected}. {fix}")


class KeyMismatch(VosError, ValueError):
    """A state dict that does not fit the network: names the first missing, unexpected and mis-shaped keys."""

    def __init__(self, file: str, target: str, diff: LayoutDiff, hint: str = ""):
        self.file, self.target, self.diff = file, target, diff
        text = diff.describe()
        super().__init__(f"{file} does not fit {target}: {text}{'' if text.endswith('...') else '.'}{hint}")


class AmbiguousWeights(VosError, ValueError):
    """Several files in a folder fit the same network and none is named for it."""


class BadWeightsSpec(VosError, ValueError):
    """A --weights value that is none of: hub, random, a file, a folder, hf://OWNER/REPO[/FILE]."""


class ConversionError(VosError, ValueError):
    """An official file could not be read or converted (converter missing, failing, or an unsafe pickle)."""


class ManifestError(VosError, ValueError):
    """weights/manifest.toml has a malformed row."""


class UnknownWeights(VosError, KeyError):
    """A file id or METHOD[:VARIANT] that names nothing; suggests the closest."""

    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(set(known))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"No checkpoint or method named {name!r}.{hint} Known: {', '.join(known)}.")

    def __str__(self) -> str:
        return self.args[0]


class DownloadFailed(VosError, ConnectionError):
    """An official source could not be downloaded (network, permissions, quota)."""


# --------------------------------------------------------------------------------------------------------------
# Environment (read at call time)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder as the environment says now (its own constant is frozen at import)."""
    if value := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME"):
        return Path(value).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "huggingface" / "hub"


def cache_root() -> Path:
    """Where official downloads and converted files are kept: $VOS_CACHE, else $HF_HOME/vos-compare."""
    if value := os.environ.get(CACHE_ENV):
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME"):
        return Path(value).expanduser() / "vos-compare"
    return Path.home() / ".cache" / "vos-compare"


def weights_repo() -> str:
    """Our Hub repository of converted files: $VOS_WEIGHTS_REPO, else the manifest's."""
    return os.environ.get(REPO_ENV) or _read_manifest()[1]


# --------------------------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class Source:
    """Where the authors publish a file."""

    kind: str  # one of SOURCE_KINDS
    id: str = ""  # Google Drive file or folder id
    url: str = ""  # the download; for kind "hub", the authors' original release, for reference only
    repo: str = ""  # kind "hub": the Hub repository
    filename: str = ""  # as published; "" = not recorded
    size: str = ""  # for display
    size_bytes: int | None = None  # exact, checked after download
    sha256: str = ""  # exact, checked after download
    note: str = ""

    @property
    def downloadable(self) -> bool:
        """Somewhere besides the Hub to download from."""
        return self.kind != "hub"

    def describe(self) -> str:
        where = {"gdrive": "Google Drive file", "gdrive_folder": "Google Drive folder"}.get(self.kind)
        if self.kind == "hub":
            place = f"Hugging Face Hub {self.repo}"
        else:
            place = f"{where} {self.id}" if where else self.url
        details = [self.filename or "file name not recorded"]
        if self.size and self.size != "unknown":
            details.append(self.size)
        return f"{place} ({', '.join(details)})"


@dataclass(frozen=True)
class Entry:
    """One checkpoint file (a row of weights/manifest.toml)."""

    id: str
    title: str
    hub_file: str
    licence: str
    used_by: tuple[str, ...] = ()
    hub_repo: str = ""  # "" = our repository of converted files
    sha256: str = ""  # of the safetensors file on the Hub
    size: str = ""
    converter: str = ""  # "module:function"; "" = already in our/timm layout
    paper: str = ""
    origin: str = ""
    note: str = ""
    aliases: tuple[str, ...] = ()  # other published names of the same file
    source: Source | None = None

    @property
    def ours(self) -> bool:
        """Converted by us and published in our repository (rather than loaded from e.g. timm's)."""
        return not self.hub_repo

    @property
    def shared_backbone(self) -> bool:
        """A feature extractor the authors do not ship: a folder of release files may leave it to the Hub."""
        return self.id.startswith("backbone.")

    @property
    def official(self) -> Source | None:
        """The authors' release when it is somewhere to download besides the Hub."""
        return self.source if self.source is not None and self.source.downloadable else None

    def repo(self) -> str:
        return self.hub_repo or weights_repo()

    def names(self) -> set[str]:
        """File names that identify this file in a user's folder."""
        names = {f"{self.id}.safetensors", *self.aliases}
        if self.official and self.official.filename:
            names.add(self.official.filename)
        base = self.hub_file.rsplit("/", 1)[-1]
        if base != "model.safetensors":  # timm's generic name identifies nothing
            names.add(base)
        if self.hub_repo:
            names.add(f"{self.hub_repo.rsplit('/', 1)[-1]}.safetensors")
        return {n.lower() for n in names if n}

    @classmethod
    def from_table(cls, file_id: str, table: Mapping[str, Any]) -> Entry:
        table = dict(table)
        source_table = table.pop("source", None)
        known = {f.name for f in fields(cls)} - {"id", "source"}
        _check_keys(file_id, table, known, required=("title", "hub_file", "licence"))
        for key in ("used_by", "aliases"):
            if key in table:
                if not isinstance(table[key], list):
                    raise ManifestError(f"weights/manifest.toml [{file_id}]: {key} must be a list.")
                table[key] = tuple(table[key])
        source = None
        if source_table is not None:
            _check_keys(f"{file_id}.source", source_table, {f.name for f in fields(Source)}, required=("kind",))
            source = Source(**source_table)
            if source.kind not in SOURCE_KINDS:
                raise ManifestError(
                    f"weights/manifest.toml [{file_id}.source]: kind {source.kind!r} is not one of {SOURCE_KINDS}."
                )
            needed = _SOURCE_REQUIRES[source.kind]
            if not getattr(source, needed):
                raise ManifestError(f"weights/manifest.toml [{file_id}.source]: kind {source.kind!r} needs {needed}.")
        return cls(id=file_id, source=source, **table)


def _check_keys(where: str, table: Mapping[str, Any], known: set[str], required: tuple[str, ...]) -> None:
    unknown = set(table) - known
    if unknown:
        raise ManifestError(f"weights/manifest.toml [{where}]: unknown field(s) {sorted(unknown)}.")
    missing = [key for key in required if not table.get(key)]
    if missing:
        raise ManifestError(f"weights/manifest.toml [{where}]: missing field(s) {missing}.")


_manifest_cache: dict[tuple[Path, int], tuple[dict[str, Entry], str]] = {}

EXTRA_ENTRIES: dict[str, Entry] = {}
"""Entries added at run time on top of the manifest file (tests and plugins; keyed by file id)."""


def _read_manifest(path: Path = MANIFEST_PATH) -> tuple[dict[str, Entry], str]:
    stamp = path.stat().st_mtime_ns
    if (path, stamp) not in _manifest_cache:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ManifestError(f"{path} is not valid TOML: {err}") from err
        entries: dict[str, Entry] = {}
        for group, rows in data.items():
            if not isinstance(rows, dict):
                continue  # top-level settings such as hub_repo
            for name, row in rows.items():
                if not isinstance(row, dict):
                    raise ManifestError(f"weights/manifest.toml [{group}]: {name!r} must be a table [{group}.{name}].")
                entries[f"{group}.{name}"] = Entry.from_table(f"{group}.{name}", row)
        _manifest_cache.clear()
        _manifest_cache[(path, stamp)] = (entries, str(data.get("hub_repo", "vos-compare/checkpoints")))
    return _manifest_cache[(path, stamp)]


def manifest() -> dict[str, Entry]:
    """Every known checkpoint by file id: weights/manifest.toml plus EXTRA_ENTRIES."""
    return {**_read_manifest()[0], **EXTRA_ENTRIES}


def entry(file_id: str) -> Entry:
    entries = manifest()
    try:
        return entries[file_id]
    except KeyError:
        raise UnknownWeights(file_id, entries) from None


# --------------------------------------------------------------------------------------------------------------
# Reading, converting and writing state dicts


def _allowed_pickle_globals() -> list[Any]:
    """Plain data types that old training checkpoints carry beside the weights (training arguments, numpy scalars).

    Each only rebuilds data; none runs code, so weights_only loading stays safe with them allowed.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"}
    return [
        argparse.Namespace,
        np.dtype,
        np.ndarray,
        multiarray.scalar,
        multiarray._reconstruct,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        *dtypes,
    ]


def read_checkpoint(path: str | Path) -> Any:
    """A safetensors file as a dict, or an official pickle exactly as saved (wrappers and all), read safely."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ConversionError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        with torch.serialization.safe_globals(_allowed_pickle_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({_unpickler_reason(err)})") from err
        raise ConversionError(
            f"{path} holds objects other than tensors and plain data (a {found.group(1)}), and vos-compare never "
            "unpickles such objects: checkpoints are opened with torch.load(weights_only=True) only. Use a file "
            "that holds only tensors and plain data (a .safetensors file, for instance)."
        ) from err
    # Garbage makes the unpickler fail in many ways (an empty stack, an unknown memo key, a bad zip directory).
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as err:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({_load_reason(path, err)})") from err


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """torch's own reason without its advice, which around it tells the reader to set weights_only=False."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    reason = found.group(1) if found else text.strip().splitlines()[-1] if text.strip() else ""
    return " ".join(reason.split())[:200] or type(err).__name__


def _load_reason(path: Path, err: BaseException) -> str:
    if isinstance(err, EOFError) and path.is_file() and path.stat().st_size == 0:
        return "the file is empty"
    first = str(err).strip().split(". ")[0].splitlines()[0][:200] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def unwrap_state_dict(obj: Any) -> StateDict:
    """The tensors of a checkpoint: nested 'state_dict' / 'model_state_dict' / 'model' wrappers opened, a 'module.'
    prefix (DataParallel) stripped, everything that is not a tensor (optimizer state, epochs, arguments) dropped."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ConversionError(f"Expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def load_converter(spec: str) -> Converter:
    """Import ``module:function`` lazily (only when an official file is converted)."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConversionError(
            f"The converter {spec} cannot be imported ({err}); official files for it cannot be converted here."
        ) from err


def to_ours(entry: Entry | None, raw: Any, expected: Shapes | None = None, *, origin: str = "the file") -> StateDict:
    """An official checkpoint in our key layout: as it is when it already fits ``expected``, else through the
    entry's converter (or only unwrapped when the entry has none)."""
    plain = unwrap_state_dict(raw)
    if entry is None or not entry.converter or (expected is not None and layout_diff(shapes(plain), expected).ok):
        return plain
    convert = load_converter(entry.converter)
    try:
        converted = convert(raw)
    except (KeyError, ValueError, IndexError, TypeError, RuntimeError, AttributeError) as err:
        raise ConversionError(f"{entry.converter} could not convert {origin}: {type(err).__name__}: {err}") from err
    return {k: v for k, v in converted.items() if isinstance(v, torch.Tensor)}


def storable(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Contiguous fp32 (integer buffers kept), on the CPU, no two tensors sharing memory (safetensors refuses)."""
    out: StateDict = {}
    seen: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_safetensors(state: Mapping[str, torch.Tensor], dest: Path) -> str:
    """Write atomically (temporary name, then rename) and return the file's sha256.

    The header holds only {"format": "pt"}: safetensors writes metadata in hash-map order, so more keys would make
    the same release convert to different bytes on each run, and a published sha256 could not be reproduced."""
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        save_file(storable(state), str(tmp), metadata={"format": "pt"})
        digest = sha256_file(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _sha_memo[_stat_key(dest)] = digest
    return digest


_sha_memo: dict[tuple[str, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file (memoised per path, size and modification time). A Hub cache blob is named by it."""
    path = Path(path)
    blob = Path(os.path.realpath(path)).name
    if path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", blob):
        return blob
    key = _stat_key(path)
    if key not in _sha_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _sha_memo[key] = digest.hexdigest()
    return _sha_memo[key]


# --------------------------------------------------------------------------------------------------------------
# Key layouts


def shapes(state: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state.items()}


@dataclass
class LayoutDiff:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, in the file, in the network

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(a)} in the file vs {tuple(b)}" for k, a, b in self.mismatched[:_SHOWN])
            parts.append(
                f"{len(self.mismatched)} shape mismatch(es): {shown}"
                + (", ..." if len(self.mismatched) > _SHOWN else "")
            )
        return "; ".join(parts) or "it fits"


def layout_diff(found: Shapes, expected: Shapes) -> LayoutDiff:
    return LayoutDiff(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        mismatched=[(k, found[k], expected[k]) for k in expected if k in found and found[k] != expected[k]],
    )


# --------------------------------------------------------------------------------------------------------------
# Downloads


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the HTTP clients huggingface_hub and gdown use (whichever are installed)."""
    import requests

    errors: list[type[BaseException]] = [requests.ConnectionError, requests.Timeout]
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(importlib.import_module(name).TransportError)
    return tuple(errors)


def _download_errors() -> tuple[type[BaseException], ...]:
    import requests

    errors: list[type[BaseException]] = [requests.RequestException, *_network_errors()]
    try:
        from gdown.exceptions import DownloadError

        errors.append(DownloadError)
    except ImportError:
        pass
    return tuple(errors)


def _download_url(url: str, dest: Path, label: str) -> None:
    import requests
    from tqdm.auto import tqdm

    with requests.get(url, stream=True, timeout=(10, 60)) as response:
        response.raise_for_status()
        total = int(response.headers.get("content-length") or 0) or None
        with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=label) as bar:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and dest.stat().st_size != total:
            raise DownloadFailed(f"{url}: the connection closed after {dest.stat().st_size} of {total} bytes")


def _download_gdrive(file_id: str, dest: Path) -> None:
    import gdown

    result = gdown.download(id=file_id, output=str(dest), quiet=False)
    if not result or not dest.is_file():
        raise DownloadFailed(f"Google Drive file {file_id} could not be downloaded (gdown returned nothing)")


def _gdrive_folder_listing(folder_id: str) -> list[tuple[str, str]]:
    """(file id, path inside the folder) of every file of a public Drive folder, without downloading them."""
    import gdown

    listing = gdown.download_folder(id=folder_id, skip_download=True, quiet=True) or []
    return [(item.id, item.path) for item in listing]


def _verify(path: Path, source: Source | None, label: str) -> None:
    if source is None:
        return
    if source.size_bytes is not None and path.stat().st_size != source.size_bytes:
        raise ChecksumMismatch(label, "size", f"{source.size_bytes} bytes", f"{path.stat().st_size} bytes")
    if source.sha256 and sha256_file(path) != source.sha256.lower():
        raise ChecksumMismatch(label, "sha256", source.sha256.lower(), sha256_file(path))


def _fetch_to(dest: Path, fetch: Callable[[Path], None], source: Source | None, label: str) -> None:
    """Download through ``fetch(temporary path)``, verify, then rename: nothing incomplete ever has the final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        try:
            fetch(tmp)
        except _download_errors() as err:
            raise DownloadFailed(f"{label}: {type(err).__name__}: {err}") from err
        _verify(tmp, source, label)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def official_dir(entry: Entry) -> Path:
    source = entry.official
    if source is not None and source.kind == "gdrive_folder" and not source.filename:
        return cache_root() / "official" / f"gdrive-folder-{source.id}"  # shared by the files of that folder
    return cache_root() / "official" / entry.id


def official_path(entry: Entry) -> Path | None:
    """Where the downloaded release file is kept; None for a folder whose file names are not recorded."""
    source = entry.official
    if source is None or (source.kind == "gdrive_folder" and not source.filename):
        return None
    return official_dir(entry) / (source.filename or "checkpoint")


def converted_path(entry: Entry) -> Path:
    return cache_root() / "converted" / f"{entry.id}.safetensors"


def folder_complete(folder: Path) -> bool:
    """Whether a downloaded Drive folder holds every file of its listing (not cut off between two files)."""
    return (folder / FOLDER_DONE).is_file()


def download_official(file_id: str) -> Path:
    """Download a file's official release into the cache (verified; kept once complete) and return its path; for a
    Drive folder whose file names the manifest does not record, download every file and return the folder."""
    item = entry(file_id)
    source = item.official
    if source is None:
        raise DownloadFailed(f"{file_id} has no official source besides the Hub ({item.repo()}).")
    label = source.describe()
    dest = official_path(item)
    if dest is None:
        folder = official_dir(item)
        if not folder_complete(folder):
            _download_folder(source.id, folder, label)
        return folder
    if dest.is_file():
        return dest
    if source.kind == "url":
        _fetch_to(dest, lambda tmp: _download_url(source.url, tmp, source.filename or file_id), source, label)
    elif source.kind == "gdrive":
        _fetch_to(dest, lambda tmp: _download_gdrive(source.id, tmp), source, label)
    else:
        matches = [i for i, inner in _listing_or_fail(source.id, label) if inner.rsplit("/", 1)[-1] == source.filename]
        if not matches:
            raise DownloadFailed(f"{label}: the folder has no file named {source.filename}")
        _fetch_to(dest, lambda tmp: _download_gdrive(matches[0], tmp), source, label)
    return dest


def _download_folder(folder_id: str, folder: Path, label: str) -> None:
    """Fetch the files of a Drive folder that are not here yet (a cut download resumes), then mark it complete."""
    listing = _listing_or_fail(folder_id, label)
    if not listing:
        raise DownloadFailed(f"{label}: the folder lists no files (private, moved, or a Drive quota?)")
    for drive_id, inner in listing:
        target = folder / inner
        if not target.is_file():
            _fetch_to(target, lambda tmp, i=drive_id: _download_gdrive(i, tmp), None, f"{label}: {inner}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{FOLDER_DONE}.{uuid.uuid4().hex}.part"
    try:
        tmp.write_text("".join(f"{drive_id}\t{inner}\n" for drive_id, inner in listing), encoding="utf-8")
        os.replace(tmp, folder / FOLDER_DONE)
    finally:
        tmp.unlink(missing_ok=True)


def _listing_or_fail(folder_id: str, label: str) -> list[tuple[str, str]]:
    try:
        return _gdrive_folder_listing(folder_id)
    except _download_errors() as err:
        raise DownloadFailed(f"{label}: cannot list the folder: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------------------------------------------
# Resolving a file id to a local safetensors file


@dataclass
class Resolved:
    path: Path
    source: str  # "cache", "hub:REPO", "official:...", "local", "hf:REPO/FILE"
    converted: bool = False  # converted from an official file in this call

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors as hub

    import_names = ("LocalEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError")
    classes: list[type[BaseException]] = [getattr(hub, n) for n in import_names if hasattr(hub, n)]
    classes += [hub.OfflineModeIsEnabled, hub.HfHubHTTPError, hub.HFValidationError]
    return (*classes, *_network_errors())


def _hub_reason(err: BaseException) -> str:
    from huggingface_hub import errors as hub

    if isinstance(err, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)) and offline():
        return f"not in the local Hub cache {hub_cache_dir()} (offline: HF_HUB_OFFLINE is set)"
    if isinstance(err, hub.RepositoryNotFoundError):
        return "no such repository, or it is private or gated (set HF_TOKEN if you have access)"
    if isinstance(err, hub.RevisionNotFoundError):
        return "no such revision"
    if isinstance(err, hub.EntryNotFoundError) and not isinstance(err, hub.LocalEntryNotFoundError):
        return "the repository has no such file"
    if isinstance(err, hub.HFValidationError):
        return f"not a valid repository id ({err})"
    if isinstance(err, hub.LocalEntryNotFoundError):
        return "cannot reach the Hub and the file is not in the local Hub cache"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


class _HubMiss(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# huggingface_hub retries an unreachable Hub with back-off (about 25 s a file): once it has not answered, files are
# looked up in the local cache only for a while, so a machine without network says "weights missing" at once.
HUB_RETRY_AFTER_S = 300.0
_hub_unreachable_at: float | None = None


HUB_PROBE_TIMEOUT_S = 3.0
_hub_probed_at: float | None = None


def _hub_answers() -> bool:
    """Whether the Hub's host resolves and accepts a connection within a few seconds. Asked once before the first
    download (and again after HUB_RETRY_AFTER_S), so a machine without network is known to be offline at once,
    instead of after huggingface_hub's retries on the first file (about 25 s), without HF_HUB_OFFLINE."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_download(repo: str, filename: str, revision: str | None = None) -> Path:
    """hf_hub_download with the environment's cache, offline switch and token passed explicitly."""
    global _hub_unreachable_at, _hub_probed_at
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    now = time.monotonic()
    stale = _hub_probed_at is None or now - _hub_probed_at >= HUB_RETRY_AFTER_S
    if not offline() and _hub_unreachable_at is None and stale:
        _hub_probed_at = now
        if not _hub_answers():
            _hub_unreachable_at = now
    since = None if _hub_unreachable_at is None else time.monotonic() - _hub_unreachable_at
    recently_unreachable = since is not None and since < HUB_RETRY_AFTER_S
    try:
        path = hf_hub_download(
            repo,
            filename,
            revision=revision,
            cache_dir=hub_cache_dir(),
            local_files_only=offline() or recently_unreachable,
            token=hf_token(),
        )
    except LocalEntryNotFoundError as err:
        if offline():
            raise _HubMiss(_hub_reason(err)) from err
        if recently_unreachable:
            raise _HubMiss(
                f"the Hub did not answer {since:.0f} s ago (tried again after {HUB_RETRY_AFTER_S:.0f} s) and the "
                "file is not in the local Hub cache"
            ) from err
        _hub_unreachable_at = time.monotonic()
        raise _HubMiss(_hub_reason(err)) from err
    except _hub_errors() as err:
        raise _HubMiss(_hub_reason(err)) from err
    if not recently_unreachable:
        _hub_unreachable_at = None  # it answered (or the file was cached on a check that reached it)
    return Path(path)


def resolve_file(
    file_id: str,
    *,
    method: str | None = None,
    variant: str | None = None,
    part: str | None = None,
    repo: str | None = None,
    download: bool = True,
    expected: Shapes | None = None,
) -> Resolved:
    """A local safetensors file for ``file_id``: our cache of converted files -> the Hub (``repo`` replaces our
    repository) -> the official release (downloaded, verified, converted, cached; not when offline).

    A release is converted only into a file that fits the network loading it: ``expected`` (its key shapes), else
    the network of ``method``/``variant``/``part`` (or of any method using the file) built on the meta device."""
    item = entry(file_id)
    tried: list[tuple[str, str]] = []
    cached = converted_path(item)
    if cached.is_file() and not repo:
        if item.sha256 and sha256_file(cached) != item.sha256.lower():
            raise ChecksumMismatch(
                str(cached),
                "sha256",
                item.sha256.lower(),
                sha256_file(cached),
                fix=(
                    "It was converted from another release file or by another converter version; delete it and "
                    f"`python -m vos weights fetch {file_id}` makes it again."
                ),
            )
        return Resolved(cached, "cache")
    tried.append((f"converted cache {cached}", "not there" if not repo else "skipped (a repository was named)"))

    hub_repo = repo if (repo and item.ours) else item.repo()
    try:
        path = hub_download(hub_repo, item.hub_file)
    except _HubMiss as miss:
        tried.append((f"Hugging Face Hub {hub_repo} / {item.hub_file}", miss.reason))
    else:
        if item.sha256 and sha256_file(path) != item.sha256.lower():
            raise ChecksumMismatch(
                f"{hub_repo}/{item.hub_file}",
                "sha256",
                item.sha256.lower(),
                sha256_file(path),
                fix="The Hub file is not used: the repository changed or the manifest is out of date; report it "
                "(weights/manifest.toml).",
            )
        return Resolved(path, f"hub:{hub_repo}")

    hint = ""
    source = item.official
    if source is not None:
        label = source.describe()
        hint = f", or download {label} yourself and pass it with --weights"

        def convert(official: Path) -> Resolved:
            return convert_official_file(item, official, method=method, variant=variant, part=part, expected=expected)

        done = official_path(item)
        folder = official_dir(item)
        if done is not None and done.is_file():
            return convert(done)
        if done is None and folder_complete(folder):
            raise OfficialFolderUnmatched(
                folder,
                file_id=file_id,
                filename=item.hub_file,
                tried=[*tried, (f"official {label}", f"downloaded to {folder}; the file is picked by key layout")],
                method=method,
                variant=variant,
                part=part,
            )
        partial = f" (partly downloaded to {folder}: the download was cut)" if done is None and folder.is_dir() else ""
        if offline():
            tried.append((f"official {label}", f"not downloaded{partial}: offline (HF_HUB_OFFLINE is set)"))
        elif not download:
            tried.append((f"official {label}", f"not downloaded{partial}"))
        else:
            try:
                got = download_official(file_id)
            except DownloadFailed as err:
                tried.append((f"official {label}", str(err).removeprefix(f"{label}: ")))
            else:
                if got.is_file():
                    return convert(got)
                raise OfficialFolderUnmatched(
                    got,
                    file_id=file_id,
                    filename=item.hub_file,
                    tried=[*tried, (f"official {label}", f"downloaded to {got}; the file is picked by key layout")],
                    method=method,
                    variant=variant,
                    part=part,
                )
    raise WeightsUnavailable(
        file_id=file_id, filename=item.hub_file, tried=tried, method=method, variant=variant, part=part, hint=hint
    )


def convert_official_file(
    item: Entry,
    official: Path,
    dest: Path | None = None,
    *,
    method: str | None = None,
    variant: str | None = None,
    part: str | None = None,
    expected: Shapes | None = None,
) -> Resolved:
    """Convert a release file to our layout and write it as safetensors (default: the converted cache).

    The result is checked against the network that loads it (``expected``, else one built on the meta device)
    before anything is written: another network's file would otherwise sit in the cache (or on the Hub, after
    ``push``) under this file's name."""
    target = item.id
    if expected is None:
        expected, target = network_layout(item.id, method=method, variant=variant, part=part)
    elif method and variant and part:
        target = _describe_part(method, variant, part, item.id)
    state = to_ours(item, read_checkpoint(official), expected, origin=str(official))
    diff = layout_diff(shapes(state), expected)
    if not diff.ok:
        release = f"; the release of {item.id} is {item.official.describe()}" if item.official else ""
        raise KeyMismatch(str(official), target, diff, hint=f" Nothing was written{release}.")
    dest = dest or converted_path(item)
    save_safetensors(state, dest)
    log.info("converted %s -> %s (%d tensors)", official, dest, len(state))
    return Resolved(dest, f"official:{item.official.describe() if item.official else official.name}", converted=True)


def _describe_part(method: str, variant: str, part: str, file_id: str) -> str:
    return f"{method}:{variant} part {part!r} ({file_id})"


def network_layout(
    file_id: str, *, method: str | None = None, variant: str | None = None, part: str | None = None
) -> tuple[Shapes, str]:
    """Key names and shapes of the network that loads ``file_id`` and its description, built by the method's own
    ``build_part`` on the meta device (no memory, no weights): the first of ``method``/``variant``/``part`` (or any
    registered method) whose parts name the file."""
    from vos.methods import available
    from vos.methods.base import part_layout

    users = [
        (info.key, v, p)
        for info in available()
        if method in (None, info.key)
        for v in info.variants
        if variant in (None, v)
        for p, fid in info.parts(v).items()
        if fid == file_id and part in (None, p)
    ]
    if not users:
        asked = f" as {method}:{variant or '*'}" if method else ""
        raise ConversionError(
            f"No registered method loads {file_id}{asked}, so a conversion cannot be checked against its network; "
            "nothing was written."
        )
    key, chosen_variant, chosen_part = users[0]
    return part_layout(key, chosen_variant, chosen_part), _describe_part(key, chosen_variant, chosen_part, file_id)


def resolve(method: str, variant: str | None = None) -> dict[str, Path]:
    """Local safetensors files of every part of a method variant (fetching what is missing): {part: path}."""
    from vos.methods import get_info

    info = get_info(method)
    variant = info.check_variant(variant)
    return {
        part: resolve_file(file_id, method=method, variant=variant, part=part).path
        for part, file_id in info.parts(variant).items()
    }


# --------------------------------------------------------------------------------------------------------------
# Loading into a network (the Method.load_part path)


def load_into(
    module: torch.nn.Module, spec: str, *, method: str, variant: str, part: str, parts: Mapping[str, str]
) -> dict[str, Any]:
    """Resolve the file of ``part`` (one of ``parts``, the variant's {part: file id}) from ``spec`` (hub, a path, a
    folder, hf://...), convert it if it is an official release file, load it strictly into ``module`` and return a
    provenance record ``{"part", "file", "source", "path", "sha256", "converted"}``. ``method`` and ``variant``
    only name the target in messages."""
    parts = dict(parts)
    if part not in parts:
        raise ValueError(f"{method}:{variant} declares no weights part {part!r} (declared: {', '.join(parts)}).")
    file_id = parts[part]
    item = entry(file_id)
    target = _Target(item, module, method, variant, part, parts)
    text = str(spec).strip()
    kind = spec_kind(text)

    if kind == HUB:
        resolved, state = _from_hub_spec(target)
    elif kind == HF:
        repo, revision, inner = parse_hf(text)
        if inner is None:
            resolved, state = _from_hub_spec(target, repo=repo)
        else:
            try:
                local = hub_download(repo, inner, revision)
            except _HubMiss as miss:
                raise WeightsUnavailable(
                    file_id=file_id,
                    filename=inner,
                    tried=[(text, miss.reason)],
                    method=method,
                    variant=variant,
                    part=part,
                    fetchable=False,  # `weights fetch` knows the manifest's sources, not this repository
                ) from miss
            resolved, state = _from_local(target, [local], local.parent, single=True, label=f"hf:{repo}/{inner}")
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            resolved, state = _from_local(target, _weight_files(path), path, single=False, label="local")
        elif path.is_file():
            resolved, state = _from_local(target, [path], path.parent, single=True, label="local")
        else:
            raise WeightsUnavailable(
                file_id=file_id,
                filename=text,
                tried=[(text, "no such file or folder (expected hub, random, a file, a folder or hf://OWNER/REPO)")],
                method=method,
                variant=variant,
                part=part,
                fetchable=False,
            )

    diff = layout_diff(shapes(state), target.expected)
    if not diff.ok:
        raise KeyMismatch(str(resolved.path), target.describe(), diff)
    module.load_state_dict(state, strict=True)
    return {
        "part": part,
        "file": file_id,
        "source": resolved.source,
        "path": str(resolved.path),
        "sha256": resolved.sha256,
        "converted": resolved.converted,
    }


@dataclass
class _Target:
    item: Entry
    module: torch.nn.Module
    method: str
    variant: str
    part: str
    parts: dict[str, str]

    def __post_init__(self) -> None:
        self.expected: Shapes = shapes(self.module.state_dict())

    def describe(self) -> str:
        return _describe_part(self.method, self.variant, self.part, self.item.id)

    def other_entries(self) -> list[Entry]:
        return [entry(fid) for p, fid in self.parts.items() if p != self.part and fid != self.item.id]


def _from_hub_spec(target: _Target, repo: str | None = None) -> tuple[Resolved, StateDict]:
    item = target.item
    try:
        resolved = resolve_file(
            item.id,
            method=target.method,
            variant=target.variant,
            part=target.part,
            repo=repo,
            expected=target.expected,
        )
    except OfficialFolderUnmatched as err:
        # The authors' folder is here but the manifest does not name our file in it: pick it by key layout, then
        # keep the converted result so the next load (and `weights push`) finds it directly.
        resolved, state = _from_local(target, _weight_files(err.folder), err.folder, single=False, label="official")
        save_safetensors(state, converted_path(item))
        where = item.official.describe() if item.official else err.folder
        resolved.source = f"official:{where} ({resolved.path.name})"
        return resolved, state
    return resolved, read_checkpoint(resolved.path)


HUB, RANDOM, HF, LOCAL = "hub", "random", "hf", "local"


def spec_kind(spec: str | None) -> str:
    """What a weights spec names: HUB (the manifest's files; also when None), RANDOM (no weights), HF (an
    hf://OWNER/REPO[/FILE] address) or LOCAL (a file or folder). The one reading every caller shares."""
    text = str(spec or HUB).strip()
    if text.lower() == HUB:
        return HUB
    if text == RANDOM:
        return RANDOM
    return HF if text.startswith("hf://") else LOCAL


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """hf://OWNER/REPO[@REVISION][/PATH/IN/REPO] -> (repo, revision, path or None)."""
    rest = spec.removeprefix("hf://").strip("/")
    pieces = rest.split("/")
    if len(pieces) < 2 or not all(pieces[:2]):
        raise BadWeightsSpec(f"{spec!r}: expected hf://OWNER/REPO or hf://OWNER/REPO/PATH/TO/FILE.")
    repo, revision = f"{pieces[0]}/{pieces[1]}", None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    inner = "/".join(pieces[2:]) or None
    return repo, revision, inner


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and p.name.lower().endswith(WEIGHT_SUFFIXES)
        and not p.name.startswith(".")
        and len(p.relative_to(folder).parts) <= 4
    ]
    return found


def _named_for(path: Path, item: Entry, root: Path) -> bool:
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.name
    return relative == item.hub_file or path.name.lower() in item.names()


_layout_memo: dict[tuple[tuple[str, int, int], str], tuple[Shapes, Shapes | None]] = {}


def _read_as_ours(path: Path, target: _Target) -> StateDict:
    if path.suffix == ".safetensors":
        return read_checkpoint(path)
    return to_ours(target.item, read_checkpoint(path), target.expected, origin=str(path))


def _file_layouts(path: Path, item: Entry) -> tuple[Shapes, Shapes | None]:
    """A file's shapes as stored and, for an official file, after ``item``'s converter (None when it has none or
    it fails on this file). Memoised: a folder is searched once per part of a method."""
    key = (_stat_key(path), item.converter)
    if key not in _layout_memo:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    stored = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
            except (SafetensorError, OSError) as err:
                raise ConversionError(f"{path} is not a readable safetensors file: {err}") from err
            _layout_memo[key] = (stored, None)
        else:
            loaded = read_checkpoint(path)
            converted = None
            if item.converter:
                with contextlib.suppress(ConversionError):  # a converter may reject another network's file
                    converted = shapes(to_ours(item, loaded, origin=str(path)))
            _layout_memo[key] = (shapes(unwrap_state_dict(loaded)), converted)
    return _layout_memo[key]


def _from_local(
    target: _Target, files: list[Path], root: Path, *, single: bool, label: str
) -> tuple[Resolved, StateDict]:
    """Pick the file for ``target`` among ``files`` (by name, else by key layout) and read it in our layout.

    A shared backbone with no file here comes from the Hub; any other part must be here.
    """
    item = target.item
    named = [p for p in files if _named_for(p, item, root)]
    if named:
        path = sorted(named, key=lambda p: p.relative_to(root).as_posix() != item.hub_file)[0]
        state = _read_as_ours(path, target)
        diff = layout_diff(shapes(state), target.expected)
        if not diff.ok:
            raise KeyMismatch(str(path), target.describe(), diff)
        return _local_resolved(path, label), state

    others = target.other_entries()
    candidates = [p for p in files if not any(_named_for(p, other, root) for other in others)]
    fitting: list[Path] = []
    closest: tuple[Path, LayoutDiff] | None = None
    unreadable: list[ConversionError] = []
    for path in candidates:
        try:
            stored, converted = _file_layouts(path, item)
        except ConversionError as err:
            unreadable.append(err)
            continue
        diffs = [layout_diff(found, target.expected) for found in (stored, converted) if found is not None]
        best = min(diffs, key=lambda d: d.size)
        if best.ok:
            fitting.append(path)
        elif closest is None or best.size < closest[1].size:
            closest = (path, best)

    if len(fitting) > 1:
        names = ", ".join(str(p) for p in fitting)
        fix = (
            f"record its name as source.filename of [{item.id}] in weights/manifest.toml, or pass the file itself "
            "with --weights"
            if label == "official"
            else f"keep only the one to use, or rename it to {sorted(item.names())[0]}"
        )
        raise AmbiguousWeights(f"Several files fit {target.describe()}: {names}. To choose, {fix}.")
    if fitting:
        return _local_resolved(fitting[0], label), _read_as_ours(fitting[0], target)

    if item.shared_backbone and label != "official":
        log.info("%s: no file in %s fits; loading %s from the Hub", target.describe(), root, item.id)
        resolved, state = _from_hub_spec(target)
        resolved.source += " (not in the given files)"
        return resolved, state

    many = sum(1 for other in others if not other.shared_backbone) > 0
    hint = (
        f" {target.method}:{target.variant} needs one file per network ({', '.join(target.parts)}): pass a folder "
        "holding them."
        if single and many
        else ""
    )
    if closest is not None:
        raise KeyMismatch(str(closest[0]), target.describe(), closest[1], hint=hint)
    if single and unreadable:
        raise unreadable[0]
    reasons = [(str(root), "no checkpoint files (.safetensors, .pth, .pth.tar, .pt, .bin, .ckpt)")]
    if unreadable:
        reasons = [(str(root), "unreadable: " + "; ".join(str(err) for err in unreadable))]
    raise WeightsUnavailable(
        file_id=item.id,
        filename=item.official.filename if item.official and item.official.filename else item.hub_file,
        tried=reasons,
        method=target.method,
        variant=target.variant,
        part=target.part,
        hint=hint,
    )


def _local_resolved(path: Path, label: str) -> Resolved:
    official = path.suffix != ".safetensors"
    return Resolved(path, label, converted=official)


# --------------------------------------------------------------------------------------------------------------
# Command line: python -m vos weights {list,fetch,convert,push}


def targets(what: Iterable[str]) -> list[tuple[str, str | None]]:
    """File ids named by ``all``, file ids or METHOD[:VARIANT], each with the "method:variant" that asked for it."""
    entries = manifest()
    chosen: dict[str, str | None] = {}
    for name in what:
        if name == "all":
            for file_id, item in entries.items():
                if item.used_by:
                    chosen.setdefault(file_id, None)
        elif name in entries:
            chosen.setdefault(name, None)
        else:
            for file_id, label in _method_targets(name, entries):
                chosen.setdefault(file_id, label)
    return list(chosen.items())


def _method_targets(name: str, entries: Mapping[str, Entry]) -> list[tuple[str, str | None]]:
    from vos.methods import UnknownMethod, get_info

    key, _, variant = name.partition(":")
    try:
        info = get_info(key)
    except UnknownMethod:
        found = [(fid, None) for fid, item in entries.items() if key in item.used_by and not variant]
        if not found:
            raise UnknownWeights(name, [*entries, *(u for item in entries.values() for u in item.used_by)]) from None
        return found
    variants = [info.check_variant(variant)] if variant else list(info.variants)
    return [(fid, f"{key}:{v}") for v in variants for fid in info.parts(v).values()]


def cache_status(item: Entry) -> str:
    """Where a file is already on this machine: "converted", "hub cache", "official file", or "no"."""
    from huggingface_hub import try_to_load_from_cache

    if converted_path(item).is_file():
        return "converted"
    if isinstance(try_to_load_from_cache(item.repo(), item.hub_file, cache_dir=hub_cache_dir()), str):
        return "hub cache"
    if item.official is None:
        return "no"
    official = official_path(item)
    if (official is not None and official.is_file()) or (official is None and folder_complete(official_dir(item))):
        return "official file"
    return "no"


def where_from(item: Entry) -> str:
    text = f"Hub {item.repo()}/{item.hub_file}"
    if item.official is not None:
        text += f", else {item.official.describe()}"
    elif item.source is not None:
        text += " (the official copy)"
    return text


NONE_NEEDED = "none needed"


def weights_rows() -> list[tuple[str, str, str]]:
    """(METHOD:VARIANT, part, file id) for every part of every registered variant ("" file id: the variant needs
    none), then files of methods not registered here and files no variant uses ("-" for what is unknown)."""
    from vos.methods import available

    entries = manifest()
    rows: list[tuple[str, str, str]] = []
    listed: set[str] = set()
    registered: set[str] = set()
    for info in available():
        registered.add(info.key)
        for variant in info.variants:
            parts = info.parts(variant)
            rows += [(f"{info.key}:{variant}", part, file_id) for part, file_id in parts.items()]
            listed.update(parts.values())
            if not parts:
                rows.append((f"{info.key}:{variant}", "-", ""))
    for file_id, item in entries.items():
        if file_id in listed:
            continue
        users = [key for key in item.used_by if key not in registered]
        rows += [(_user_label(key), "-", file_id) for key in users]
        if not users:
            rows.append(("(no variant uses it)", "-", file_id))
    return rows


def _user_label(key: str) -> str:
    # The Compare page's click engine is no method, but its weights are listed (and fetched) like one's.
    return "click engine (Compare page)" if key == "click_engine" else f"{key} (not registered here)"


def format_table() -> str:
    """One row per part of each method variant: which file it needs, its size, whether it is here, where from."""
    entries = manifest()
    status = {file_id: cache_status(item) for file_id, item in entries.items()}
    header = ("METHOD:VARIANT", "PART", "FILE ID", "SIZE", "CACHED", "COMES FROM")
    rows = []
    for used, part, file_id in weights_rows():
        if not file_id:
            rows.append((used, part, NONE_NEEDED, "-", "-", "-"))
            continue
        item = entries[file_id]
        rows.append((used, part, file_id, item.size or "?", status[file_id], where_from(item)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip()

    repo_note = f" (from ${REPO_ENV})" if os.environ.get(REPO_ENV) else f" (set ${REPO_ENV} to use a mirror)"
    footer = [
        "",
        f"Our converted files: Hub repository {weights_repo()}{repo_note}.",
        f"Cache: {cache_root()} (converted and official files), Hub cache: {hub_cache_dir()}.",
    ]
    if offline():
        footer.append("Offline (HF_HUB_OFFLINE is set): nothing will be downloaded.")
    return "\n".join([line(header), *(line(row) for row in rows), *footer])


def _fetch_one(file_id: str, label: str | None) -> str:
    method, _, variant = (label or "").partition(":")
    try:
        resolved = resolve_file(file_id, method=method or None, variant=variant or None)
    except OfficialFolderUnmatched as err:
        if not label:
            return f"downloaded {err.folder}; the file is picked by key layout when a method loads it"
        # Building the method loads every part through load_into, which picks and caches the file.
        from vos.methods import create

        create(method, variant, device="cpu", weights="hub")
        return f"{converted_path(entry(file_id))} (picked from {err.folder} by key layout)"
    return f"{resolved.path} ({resolved.source})"


def convert(target: str, official_file: str | Path, out: str | Path | None = None) -> Resolved:
    """Convert an official release file for ``target`` (a file id, or METHOD[:VARIANT] with one file) to safetensors
    (default: into the cache, where loading finds it), refusing a file that does not fit the target's network."""
    chosen = targets([target])
    if len(chosen) != 1:
        names = ", ".join(fid for fid, _ in chosen)
        raise ConversionError(f"{target} uses several files ({names}); name the one to convert.")
    path = Path(official_file).expanduser()
    if not path.is_file():
        raise ConversionError(f"{path}: no such file.")
    [(file_id, label)] = chosen
    method, _, variant = (label or "").partition(":")
    return convert_official_file(
        entry(file_id),
        path,
        Path(out).expanduser() if out else None,
        method=method or None,
        variant=variant or None,
    )


def push_selection(what: Iterable[str] = ("all",)) -> tuple[list[tuple[Entry, Path]], list[Entry]]:
    """Our converted files available in the cache for ``what`` (to upload), and those not converted yet."""
    ready: list[tuple[Entry, Path]] = []
    missing: list[Entry] = []
    for file_id, _ in targets(what):
        item = entry(file_id)
        if not item.ours:
            continue  # already on the Hub in its own repository (timm)
        path = converted_path(item)
        if path.is_file():
            ready.append((item, path))
        else:
            missing.append(item)
    return ready, missing


def _human_size(num: int) -> str:
    size = float(num)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{num} B"
        size /= 1000
    return f"{num} B"


@dataclass(frozen=True)
class CardFile:
    """A file of our weights repository as its README lists it."""

    item: Entry
    size: int | None  # bytes; None = not known
    sha256: str  # "" = not known


def card_files(
    uploading: Iterable[tuple[Entry, Path]], published: Mapping[str, tuple[int | None, str]] | None = None
) -> list[CardFile]:
    """Every manifest file the repository holds once ``uploading`` is in (in manifest order): those from the local
    files, the others as ``published`` ({path in the repository: (size, sha256)}) lists them. The README is
    replaced whole on each push, so a push of one file must still list the others."""
    local = {item.hub_file: path for item, path in uploading}
    published = published or {}
    rows: list[CardFile] = []
    for item in manifest().values():
        if not item.ours:
            continue
        if item.hub_file in local:
            path = local[item.hub_file]
            rows.append(CardFile(item, path.stat().st_size, sha256_file(path)))
        elif item.hub_file in published:
            size, sha = published[item.hub_file]
            rows.append(CardFile(item, size, sha))
    return rows


def _repo_files(api: Any, repo: str) -> dict[str, tuple[int | None, str]]:
    """{path: (size, sha256)} of the files in a Hub repository (sha256 from the LFS record; "" for small files)."""
    from huggingface_hub import RepoFile

    return {
        item.path: (item.size, item.lfs.sha256 if item.lfs is not None else "")
        for item in api.list_repo_tree(repo, recursive=True)
        if isinstance(item, RepoFile)
    }


def model_card(files: Iterable[CardFile], repo: str) -> str:
    """The README of our weights repository: what each file is, its licence, paper and official source."""
    lines = [
        "---",
        "license: other",
        "license_name: per-file",
        "license_link: README.md",
        "library_name: vos-compare",
        "tags:",
        "- video-object-segmentation",
        "- safetensors",
        "---",
        f"# {repo}",
        "",
        "Checkpoints of video object segmentation methods, converted by vos-compare from the authors' official "
        "releases to safetensors (contiguous fp32, key names of vos-compare's implementation, optimizer state "
        "dropped). The weights are the authors' work: "
        "each file keeps the licence of its release, listed below. Cite the papers when you use them.",
        "",
        "Load them with `python -m vos run ... --weights hub` (the default), or point vos-compare at this repository "
        f"with `VOS_WEIGHTS_REPO={repo}` or `--weights hf://{repo}`.",
        "",
        "| file | what | licence | paper | official source | size | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in files:
        item = row.item
        source = item.source.describe() if item.source else "-"
        origin = f"[{item.origin}]({item.origin})" if item.origin else ""
        cells = [
            f"`{item.hub_file}`",
            item.title,
            item.licence,
            item.paper,
            f"{source} {origin}".strip(),
            _human_size(row.size) if row.size is not None else "-",
            f"`{row.sha256}`" if row.sha256 else "-",
        ]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    lines += [
        "",
        "## How they were made",
        "",
        "`python -m vos weights fetch all` downloads each official file (Google Drive or the authors' URL), checks it, "
        "converts it with the converter named in vos-compare's `weights/manifest.toml`, and `python -m vos weights "
        f"push --repo {repo}` uploaded the result with this card. Converting the same release again gives the same "
        "bytes, so the sha256 above can be checked against your own conversion.",
    ]
    return "\n".join(lines) + "\n"


def preload_from_hub_yaml(file_ids: Iterable[str] | None = None, repo: str | None = None) -> str:
    """The Space front matter entry that downloads the weights at build time (``preload_from_hub:``): every file a
    method uses (or ``file_ids``), ours from ``repo`` (default: our repository)."""
    entries = manifest()
    chosen = list(file_ids) if file_ids is not None else [fid for fid, item in entries.items() if item.used_by]
    by_repo: dict[str, list[str]] = {}
    for file_id in chosen:
        item = entries[file_id]
        files = by_repo.setdefault(repo if (repo and item.ours) else item.repo(), [])
        if item.hub_file not in files:
            files.append(item.hub_file)
    lines = ["preload_from_hub:"]
    lines += [f"  - {repo} {','.join(files)}" for repo, files in by_repo.items()]
    return "\n".join(lines)


def _check_fits(item: Entry, path: Path) -> None:
    """Refuse to publish a converted file that does not fit its network (e.g. one cached before conversions were
    checked): the Hub copy is what every Space and user would then load."""
    stored, _ = _file_layouts(path, item)
    expected, target = network_layout(item.id)
    diff = layout_diff(stored, expected)
    if not diff.ok:
        raise KeyMismatch(
            str(path), target, diff, hint=" Nothing was uploaded: delete it and convert the release file again."
        )


def push(repo: str, *, private: bool = False, what: Iterable[str] = ("all",)) -> list[tuple[Entry, Path]]:
    """Upload the converted files for ``what`` from the cache to ``repo`` with a model card listing every file the
    repository then holds."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if offline():
        raise DownloadFailed("Publishing needs the network: unset HF_HUB_OFFLINE.")
    ready, missing = push_selection(what)
    if not ready:
        raise WeightsUnavailable(
            file_id=", ".join(e.id for e in missing) or "-",
            filename="converted files",
            tried=[(str(cache_root() / "converted"), "none of the selected files is converted yet")],
        )
    for item, path in ready:
        _check_fits(item, path)
    api = HfApi(token=hf_token())
    operations = [CommitOperationAdd(path_in_repo=item.hub_file, path_or_fileobj=str(path)) for item, path in ready]
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        card = model_card(card_files(ready, _repo_files(api, repo)), repo)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        api.create_commit(repo, operations, commit_message=f"Add {len(ready)} converted checkpoint(s)")
    except _hub_errors() as err:
        raise DownloadFailed(f"Uploading to {repo} failed: {_hub_reason(err)}") from err
    for item in missing:
        log.warning("%s is not converted yet (python -m vos weights fetch %s); not uploaded", item.id, item.id)
    return ready


def command_weights(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(format_table())
        return 0
    if args.action == "fetch":
        failures = 0
        for file_id, label in targets(args.what):
            try:
                print(f"{file_id}: {_fetch_one(file_id, label)}")
            except VosError as err:
                failures += 1
                print(f"{file_id}: FAILED\n{err}", file=sys.stderr)
        return 2 if failures else 0
    if args.action == "convert":
        resolved = convert(args.what, args.file, args.out)
        print(f"{resolved.path}\nsha256 {resolved.sha256}")
        return 0
    if args.action == "push":
        pushed = push(args.repo, private=args.private, what=args.what)
        for item, path in pushed:
            print(f'[{item.id}] sha256 = "{sha256_file(path)}"  # record in weights/manifest.toml')
        shared = [fid for fid, item in manifest().items() if not item.ours and item.used_by]
        yaml = preload_from_hub_yaml([item.id for item, _ in pushed] + shared, repo=args.repo)
        print(f"\nREADME front matter for a Space:\n{yaml}")
        return 0
    raise ValueError(f"unknown weights action {args.action!r}")
