"""A file id to a local safetensors file: our cache of converted files -> the Hub -> the authors' release
(downloaded, verified, converted after checking it fits its network, cached)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vos.weights.checkpoint import (
    Shapes,
    layout_diff,
    read_checkpoint,
    save_safetensors,
    sha256_file,
    shapes,
    to_ours,
)
from vos.weights.download import (
    HubMiss,
    converted_path,
    download_official,
    folder_complete,
    hub_download,
    official_dir,
    official_path,
)
from vos.weights.entries import Entry, entry, offline
from vos.weights.errors import (
    ChecksumMismatch,
    ConversionError,
    DownloadFailed,
    KeyMismatch,
    OfficialFolderUnmatched,
    WeightsUnavailable,
)

log = logging.getLogger(__name__)

# The key shapes of the network that loads a file and its description ("tvos:davis part 'net' (tvos.davis)"),
# computed only when a conversion needs them: building the network is the caller's business (vos.catalog).
LayoutProbe = Callable[[], tuple[Shapes, str]]


@dataclass
class Resolved:
    path: Path
    source: str  # "cache", "hub:REPO", "official:...", "local", "hf:REPO/FILE"
    converted: bool = False  # converted from an official file in this call

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)


def resolve_file(
    file_id: str,
    *,
    method: str | None = None,
    variant: str | None = None,
    part: str | None = None,
    repo: str | None = None,
    download: bool = True,
    expected: Shapes | None = None,
    layout: LayoutProbe | None = None,
) -> Resolved:
    """A local safetensors file for ``file_id``: our cache of converted files -> the Hub (``repo`` replaces our
    repository) -> the official release (downloaded, verified, converted, cached; not when offline).

    A release is converted only into a file that fits the network loading it: ``expected`` (its key shapes), else
    what ``layout()`` returns (the caller that knows the methods builds the network on the meta device; called only
    when a conversion happens)."""
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
    except HubMiss as miss:
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
            return convert_official_file(
                item, official, method=method, variant=variant, part=part, expected=expected, layout=layout
            )

        def unmatched(folder: Path) -> OfficialFolderUnmatched:
            """The authors' folder is here but names no file of ours: the caller picks one by key layout."""
            note = f"downloaded to {folder}; the file is picked by key layout"
            return OfficialFolderUnmatched(
                folder,
                file_id=file_id,
                filename=item.hub_file,
                tried=[*tried, (f"official {label}", note)],
                method=method,
                variant=variant,
                part=part,
            )

        done = official_path(item)
        folder = official_dir(item)
        if done is not None and done.is_file():
            return convert(done)
        if done is None and folder_complete(folder):
            raise unmatched(folder)
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
                raise unmatched(got)
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
    layout: LayoutProbe | None = None,
) -> Resolved:
    """Convert a release file to our layout and write it as safetensors (default: the converted cache).

    The result is checked against the network that loads it (``expected``, else ``layout()``: the network's key
    shapes and its description) before anything is written: another network's file would otherwise sit in the
    cache (or on the Hub, after ``push``) under this file's name."""
    target = item.id
    if expected is None:
        if layout is None:
            raise ConversionError(
                f"No network to check a conversion of {item.id} against; nothing was written. Convert it with "
                f"`python -m vos weights convert {item.id} FILE`."
            )
        expected, target = layout()
    elif method and variant and part:
        target = describe_part(method, variant, part, item.id)
    state = to_ours(item, read_checkpoint(official), expected, origin=str(official))
    diff = layout_diff(shapes(state), expected)
    if not diff.ok:
        release = f"; the release of {item.id} is {item.official.describe()}" if item.official else ""
        raise KeyMismatch(str(official), target, diff, hint=f" Nothing was written{release}.")
    dest = dest or converted_path(item)
    save_safetensors(state, dest)
    log.info("converted %s -> %s (%d tensors)", official, dest, len(state))
    return Resolved(dest, f"official:{item.official.describe() if item.official else official.name}", converted=True)


def describe_part(method: str, variant: str, part: str, file_id: str) -> str:
    return f"{method}:{variant} part {part!r} ({file_id})"
