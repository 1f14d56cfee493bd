"""A weights spec (hub, a file, a folder, hf://OWNER/REPO[/FILE]) to a state dict loaded strictly into one network
of a method: the file is picked by name, else by key layout, and converted when it is an official release file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vos.weights.checkpoint import (
    LayoutDiff,
    Shapes,
    StateDict,
    layout_diff,
    read_checkpoint,
    save_safetensors,
    shapes,
    stat_key,
    to_ours,
    unwrap_state_dict,
)
from vos.weights.download import HubMiss, converted_path, hub_download
from vos.weights.entries import Entry, entry
from vos.weights.errors import (
    AmbiguousWeights,
    BadWeightsSpec,
    ConversionError,
    KeyMismatch,
    OfficialFolderUnmatched,
    WeightsUnavailable,
)
from vos.weights.resolve import Resolved, describe_part, resolve_file

log = logging.getLogger(__name__)

OFFICIAL_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")  # .pth.tar ends in .tar
WEIGHT_SUFFIXES = (".safetensors", *OFFICIAL_SUFFIXES)


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
            except HubMiss as miss:
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
        return describe_part(self.method, self.variant, self.part, self.item.id)

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


def file_layouts(path: Path, item: Entry) -> tuple[Shapes, Shapes | None]:
    """A file's shapes as stored and, for an official file, after ``item``'s converter (None when it has none or
    it fails on this file). Memoised: a folder is searched once per part of a method."""
    key = (stat_key(path), item.converter)
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
            stored, converted = file_layouts(path, item)
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
