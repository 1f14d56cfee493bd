"""Publishing converted files to a Hugging Face Hub repository with a model card, and the Space front matter that
preloads them. Which files to publish (and the check that each fits its network) is vos.catalog's business."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vos.text import human_size
from vos.weights.checkpoint import sha256_file
from vos.weights.download import hub_errors, hub_reason
from vos.weights.entries import Entry, hf_token, manifest
from vos.weights.errors import DownloadFailed

log = logging.getLogger(__name__)


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
            human_size(row.size) if row.size is not None else "-",
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


def upload(repo: str, ready: list[tuple[Entry, Path]], *, private: bool = False) -> None:
    """Upload converted files (``ready``: each manifest row with its local file) to ``repo`` in one commit, with a
    model card listing every file the repository then holds. The network is needed (vos.catalog.push checks)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=hf_token())
    operations = [CommitOperationAdd(path_in_repo=item.hub_file, path_or_fileobj=str(path)) for item, path in ready]
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        card = model_card(card_files(ready, _repo_files(api, repo)), repo)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        api.create_commit(repo, operations, commit_message=f"Add {len(ready)} converted checkpoint(s)")
    except hub_errors() as err:
        raise DownloadFailed(f"Uploading to {repo} failed: {hub_reason(err)}") from err
