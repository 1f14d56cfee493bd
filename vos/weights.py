"""Checkpoints: the manifest, Hugging Face Hub download, official-source fallback, conversion, strict loading.

(Skeleton: the API methods call. The full implementation lands with the weights issue.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict], StateDict]

_CONVERTERS: dict[str, Converter] = {}


def converter(name: str) -> Callable[[Converter], Converter]:
    """Register ``fn(state_dict) -> state_dict``, the key map from an official release to our layout.

    The manifest names converters by this name. A converter is pure: no model, no I/O.
    """

    def decorate(fn: Converter) -> Converter:
        _CONVERTERS[name] = fn
        return fn

    return decorate


def get_converter(name: str) -> Converter:
    return _CONVERTERS[name]


def load_into(module: torch.nn.Module, method: str, variant: str, part: str, spec: str) -> dict[str, Any]:
    """Resolve the file for ``method``/``variant``/``part`` from ``spec`` (hub, a path, a folder, hf://...), convert
    it if it is an official release file, load it strictly into ``module`` and return a provenance record
    ``{"part", "file", "source", "path", "sha256"}``."""
    raise NotImplementedError("weights loading lands with the weights issue")
