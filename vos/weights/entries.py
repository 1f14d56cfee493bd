"""weights/manifest.toml (one row per checkpoint file: Hub file, sha256, official source, converter, licence) and
the places on this machine and the Hub it points to, read from the environment at call time."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vos.weights.errors import ManifestError, UnknownWeights

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "weights" / "manifest.toml"
REPO_ENV = "VOS_WEIGHTS_REPO"
CACHE_ENV = "VOS_CACHE"
# "hub": the authors' weights are published on the Hub itself (timm's repositories), so there is nothing else to
# download; the row records that source for the record, and vos never fetches a "hub" source twice.
SOURCE_KINDS = ("gdrive", "gdrive_folder", "url", "hub")
_SOURCE_REQUIRES = {"gdrive": "id", "gdrive_folder": "id", "url": "url", "hub": "repo"}

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
    # Not in the authors' folder of release files (a network they took from elsewhere, e.g. abr's RAFT): a folder
    # given with --weights may leave it to the Hub. Files under "backbone." are such files by their id.
    shared: bool = False
    source: Source | None = None

    @property
    def ours(self) -> bool:
        """Converted by us and published in our repository (rather than loaded from e.g. timm's)."""
        return not self.hub_repo

    @property
    def shared_backbone(self) -> bool:
        """A feature extractor the authors do not ship: a folder of release files may leave it to the Hub."""
        return self.shared or self.id.startswith("backbone.")

    @property
    def official(self) -> Source | None:
        """The authors' release when it is somewhere to download besides the Hub."""
        return self.source if self.source is not None and self.source.downloadable else None

    def repo(self) -> str:
        return self.hub_repo or weights_repo()

    def where_from(self) -> str:
        """Where loading looks for it: the Hub, then the authors' release when there is one."""
        text = f"Hub {self.repo()}/{self.hub_file}"
        if self.official is not None:
            text += f", else {self.official.describe()}"
        elif self.source is not None:
            text += " (the official copy)"
        return text

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
