"""The errors of the weights package: each names the file, what went wrong and the command or flag that fixes it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vos.errors import VosError

if TYPE_CHECKING:
    from vos.weights.checkpoint import LayoutDiff


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
