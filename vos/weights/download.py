"""Getting files onto this machine: the Hugging Face Hub (with the environment's cache, offline switch and token),
the authors' releases (Google Drive files and folders, URLs; verified, renamed into place only when complete), and
where each kind of file is kept in the cache."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from vos.weights.checkpoint import sha256_file
from vos.weights.entries import Entry, Source, cache_root, entry, hf_token, hub_cache_dir, offline
from vos.weights.errors import ChecksumMismatch, DownloadFailed

# Written into a downloaded Drive folder once every file of its listing is there: each file is renamed into place
# whole, but a download cut between two files leaves a folder that looks complete without it.
FOLDER_DONE = ".vos-complete"


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
# The Hugging Face Hub


def hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors as hub

    import_names = ("LocalEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError")
    classes: list[type[BaseException]] = [getattr(hub, n) for n in import_names if hasattr(hub, n)]
    classes += [hub.OfflineModeIsEnabled, hub.HfHubHTTPError, hub.HFValidationError]
    return (*classes, *_network_errors())


def hub_reason(err: BaseException) -> str:
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


class HubMiss(Exception):
    """The Hub could not give a file; ``reason`` says why in words (offline, no such repository, ...)."""

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
            raise HubMiss(hub_reason(err)) from err
        if recently_unreachable:
            raise HubMiss(
                f"the Hub did not answer {since:.0f} s ago (tried again after {HUB_RETRY_AFTER_S:.0f} s) and the "
                "file is not in the local Hub cache"
            ) from err
        _hub_unreachable_at = time.monotonic()
        raise HubMiss(hub_reason(err)) from err
    except hub_errors() as err:
        raise HubMiss(hub_reason(err)) from err
    if not recently_unreachable:
        _hub_unreachable_at = None  # it answered (or the file was cached on a check that reached it)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# What is here already


class CacheState(StrEnum):
    """Where a file is already on this machine (compared as plain text by callers that print it)."""

    CONVERTED = "converted"
    HUB_CACHE = "hub cache"
    OFFICIAL_FILE = "official file"
    MISSING = "no"


def cache_status(item: Entry) -> CacheState:
    """Where a file is already on this machine, best first; MISSING when nowhere."""
    from huggingface_hub import try_to_load_from_cache

    if converted_path(item).is_file():
        return CacheState.CONVERTED
    if isinstance(try_to_load_from_cache(item.repo(), item.hub_file, cache_dir=hub_cache_dir()), str):
        return CacheState.HUB_CACHE
    if item.official is None:
        return CacheState.MISSING
    official = official_path(item)
    if (official is not None and official.is_file()) or (official is None and folder_complete(official_dir(item))):
        return CacheState.OFFICIAL_FILE
    return CacheState.MISSING
