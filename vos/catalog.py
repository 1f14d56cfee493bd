"""The weights of the registered methods: where the method registry (vos.methods) meets the checkpoint manifest
(vos.weights). Neither of those imports this module or the other's internals: vos.weights knows files, vos.methods
knows networks, and everything that needs both lives here, above them.

- ``network_layout``: the key shapes of the network that loads a file, built by its method's ``build_part`` on the
  meta device (what a conversion is checked against);
- ``resolve``: the local files of every part of a method variant;
- ``targets``: what ``all``, a file id or METHOD[:VARIANT] names on the command line;
- ``weights_rows`` / ``weights_table``: one row per part of each method variant (``python -m vos weights list``);
- ``fetch``, ``convert``, ``push`` and ``command_weights``: ``python -m vos weights {list,fetch,convert,push}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from vos import weights as vweights
from vos.errors import VosError
from vos.methods import UnknownMethod, available, create, get_info
from vos.methods.base import part_layout
from vos.text import format_table
from vos.weights import (
    REPO_ENV,
    ConversionError,
    Entry,
    KeyMismatch,
    OfficialFolderUnmatched,
    Resolved,
    Shapes,
    UnknownWeights,
    WeightsUnavailable,
    cache_root,
    cache_status,
    converted_path,
    describe_part,
    entry,
    hub_cache_dir,
    manifest,
    offline,
    resolve_file,
    sha256_file,
    weights_repo,
)

log = logging.getLogger(__name__)

NONE_NEEDED = "none needed"


def network_layout(
    file_id: str, *, method: str | None = None, variant: str | None = None, part: str | None = None
) -> tuple[Shapes, str]:
    """Key names and shapes of the network that loads ``file_id`` and its description, built by the method's own
    ``build_part`` on the meta device (no memory, no weights): the first of ``method``/``variant``/``part`` (or any
    registered method) whose parts name the file."""
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
    return part_layout(key, chosen_variant, chosen_part), describe_part(key, chosen_variant, chosen_part, file_id)


def resolve_for(
    file_id: str, *, method: str | None = None, variant: str | None = None, part: str | None = None
) -> Resolved:
    """``vos.weights.resolve_file`` with a conversion checked against the network of ``method``/``variant``/``part``
    (or of any registered method that loads the file)."""
    return resolve_file(
        file_id,
        method=method,
        variant=variant,
        part=part,
        layout=lambda: network_layout(file_id, method=method, variant=variant, part=part),
    )


def resolve(method: str, variant: str | None = None) -> dict[str, Path]:
    """Local safetensors files of every part of a method variant (fetching what is missing): {part: path}."""
    info = get_info(method)
    variant = info.check_variant(variant)
    return {
        part: resolve_for(file_id, method=method, variant=variant, part=part).path
        for part, file_id in info.parts(variant).items()
    }


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


def weights_rows() -> list[tuple[str, str, str]]:
    """(METHOD:VARIANT, part, file id) for every part of every registered variant ("" file id: the variant needs
    none), then files of methods not registered here and files no variant uses ("-" for what is unknown)."""
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


def weights_table() -> str:
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
        rows.append((used, part, file_id, item.size or "?", str(status[file_id]), item.where_from()))
    repo_note = f" (from ${REPO_ENV})" if os.environ.get(REPO_ENV) else f" (set ${REPO_ENV} to use a mirror)"
    footer = [
        "",
        f"Our converted files: Hub repository {weights_repo()}{repo_note}.",
        f"Cache: {cache_root()} (converted and official files), Hub cache: {hub_cache_dir()}.",
    ]
    if offline():
        footer.append("Offline (HF_HUB_OFFLINE is set): nothing will be downloaded.")
    return "\n".join([format_table(header, rows, ragged_last=True), *footer])


def fetch(file_id: str, label: str | None) -> str:
    """Bring one file into the cache for ``label`` ("method:variant", or None) and say where it is."""
    method, _, variant = (label or "").partition(":")
    try:
        resolved = resolve_for(file_id, method=method or None, variant=variant or None)
    except OfficialFolderUnmatched as err:
        if not label:
            return f"downloaded {err.folder}; the file is picked by key layout when a method loads it"
        # Building the method loads every part through load_into, which picks and caches the file.
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
    return vweights.convert_official_file(
        entry(file_id),
        path,
        Path(out).expanduser() if out else None,
        method=method or None,
        variant=variant or None,
        layout=lambda: network_layout(file_id, method=method or None, variant=variant or None),
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


def _check_fits(item: Entry, path: Path) -> None:
    """Refuse to publish a converted file that does not fit its network (e.g. one cached before conversions were
    checked): the Hub copy is what every Space and user would then load."""
    stored, _ = vweights.file_layouts(path, item)
    expected, target = network_layout(item.id)
    diff = vweights.layout_diff(stored, expected)
    if not diff.ok:
        raise KeyMismatch(
            str(path), target, diff, hint=" Nothing was uploaded: delete it and convert the release file again."
        )


def push(repo: str, *, private: bool = False, what: Iterable[str] = ("all",)) -> list[tuple[Entry, Path]]:
    """Upload the converted files for ``what`` from the cache to ``repo`` with a model card listing every file the
    repository then holds, after checking each fits its network."""
    if offline():
        raise vweights.DownloadFailed("Publishing needs the network: unset HF_HUB_OFFLINE.")
    ready, missing = push_selection(what)
    if not ready:
        raise WeightsUnavailable(
            file_id=", ".join(e.id for e in missing) or "-",
            filename="converted files",
            tried=[(str(cache_root() / "converted"), "none of the selected files is converted yet")],
        )
    for item, path in ready:
        _check_fits(item, path)
    vweights.upload(repo, ready, private=private)
    for item in missing:
        log.warning("%s is not converted yet (python -m vos weights fetch %s); not uploaded", item.id, item.id)
    return ready


def command_weights(args: argparse.Namespace) -> int:
    """``python -m vos weights {list,fetch,convert,push}``."""
    if args.action == "list":
        print(weights_table())
        return 0
    if args.action == "fetch":
        failures = 0
        for file_id, label in targets(args.what):
            try:
                print(f"{file_id}: {fetch(file_id, label)}")
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
        yaml = vweights.preload_from_hub_yaml([item.id for item, _ in pushed] + shared, repo=args.repo)
        print(f"\nREADME front matter for a Space:\n{yaml}")
        return 0
    raise ValueError(f"unknown weights action {args.action!r}")
