"""State dicts: reading checkpoints safely (safetensors, or official pickles with weights_only=True), opening their
wrappers, converting them to our key layout with a manifest row's converter, writing safetensors reproducibly,
sha256 of files, and comparing key layouts."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import pickle
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vos.weights.errors import ConversionError

if TYPE_CHECKING:
    from vos.weights.entries import Entry

StateDict = dict[str, torch.Tensor]
Shapes = dict[str, tuple[int, ...]]
Converter = Callable[[Any], StateDict]

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 5  # names listed per kind of key problem

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


def unwrap_state_dict(
    obj: Any,
    *,
    wrappers: Sequence[str] = WRAPPER_KEYS,
    prefixes: Sequence[str] = ("module.",),
    every_key: bool = False,
) -> StateDict:
    """The tensors of a checkpoint: nested ``wrappers`` (by default 'state_dict' / 'model_state_dict' / 'model')
    opened, ``prefixes`` stripped, everything that is not a tensor (optimizer state, epochs, arguments) dropped.

    By default a prefix goes only when every key has it (DataParallel's 'module.'): a network whose own names begin
    with it keeps them. With ``every_key`` each prefix, in order, goes from every key that starts with it (a DINO
    release names its backbone 'module.backbone.*' beside a 'module.head.*' it does not share)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in wrappers if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ConversionError(f"Expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if every_key:
        stripped = {}
        for key, value in tensors.items():
            for prefix in prefixes:
                key = key.removeprefix(prefix)
            stripped[key] = value
        return stripped
    for prefix in prefixes:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
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
    _sha_memo[stat_key(dest)] = digest
    return digest


_sha_memo: dict[tuple[str, int, int], str] = {}


def stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file (memoised per path, size and modification time). A Hub cache blob is named by it."""
    path = Path(path)
    blob = Path(os.path.realpath(path)).name
    if path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", blob):
        return blob
    key = stat_key(path)
    if key not in _sha_memo:
        with open(path, "rb") as handle:
            _sha_memo[key] = hashlib.file_digest(handle, "sha256").hexdigest()
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
