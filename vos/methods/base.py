"""The Method interface, the facts each method declares about itself, and the registry.

Modelled on timm's registry (``create_model`` / ``list_models``) and the SAM 2 video predictor: a Method holds
its networks and configuration; everything per clip lives inside ``segment()`` and is gone when the generator
ends. Torch stays inside methods; callers get numpy label maps.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vos.errors import VosError

if TYPE_CHECKING:
    import torch

    from vos.video import Clip

log = logging.getLogger(__name__)

SEMI = "semi"
UNSUP = "unsup"

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(frames_done, frames_total)`` after each frame."""


# --------------------------------------------------------------------------------------------------------------
# Errors


class UnknownMethod(VosError, KeyError):
    """A method key that is not registered; the message suggests the closest one."""

    def __init__(self, key: str, known: list[str]):
        self.key = key
        self.known = known
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"Unknown method {key!r}.{hint} Available: {', '.join(known) or 'none'}.")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class OptionError(VosError, ValueError):
    """An unknown option name, an unknown variant, or a value that does not parse; lists what is valid."""


class MethodOutputError(VosError, ValueError):
    """A method yielded something that is not a label map of the clip's size (a bug in that method)."""


class PromptError(VosError, ValueError):
    """The first-frame label map does not fit the clip (shape, dtype, empty)."""


# --------------------------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class Option:
    """One user-settable knob of a method.

    ``default`` is the release's value (what produced the reported numbers); ``paper`` records the paper's value
    where the paper says something else, so users can reproduce either. ``minimum`` / ``maximum`` bound a number
    (both inclusive; for a size, each side), so a value the method cannot run with fails before any work.
    """

    name: str
    type: type  # int, float, bool, str, or tuple (for sizes such as 320x480)
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    paper: Any = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        # A declaration whose own default is out of range is a typo in the method file; say so at import.
        if self.default is not None and not self._in_range(self.default):
            raise ValueError(f"Option {self.name!r}: default {self.default!r} is outside {self.range_text()}.")

    def parse(self, value: Any) -> Any:
        """Turn a CLI/app string (or an already typed value) into this option's type, validating it."""
        try:
            parsed = _parse_typed(self.type, value)
        except (TypeError, ValueError) as err:
            raise OptionError(
                f"Option {self.name!r} expects {_type_label(self.type)}, got {value!r}." + self._choices_hint()
            ) from err
        if self.type is float and not abs(parsed) < float("inf"):  # false for NaN and for either infinity
            # NaN compares false with every bound, so it would pass the range check and run "ok" with empty masks.
            raise OptionError(f"Option {self.name!r} got {value!r}; it must be a finite number.")
        if self.choices is not None and parsed not in self.choices:
            raise OptionError(f"Option {self.name!r} got {value!r}." + self._choices_hint())
        if not self._in_range(parsed):
            raise OptionError(f"Option {self.name!r} got {value!r}; the valid range is {self.range_text()}.")
        return parsed

    def format(self, value: Any) -> str:
        if self.type is tuple and value is not None:
            return "x".join(str(v) for v in value)
        return str(value)

    def range_text(self) -> str:
        """The bounds in words ("9 or more", "0 to 1"); empty when there are none."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"{low:g} to {high:g}"
        if low is not None:
            return f"{low:g} or more"
        if high is not None:
            return f"{high:g} or less"
        return ""

    def describe(self) -> str:
        """Type and valid values for listings: "integer, 9 or more", "text, one of fast, exact"."""
        parts = [_type_label(self.type).removeprefix("an ").removeprefix("a ")]
        if self.choices is not None:
            parts.append("one of " + ", ".join(self.format(c) for c in self.choices))
        if self.range_text():
            parts.append(("each side " if self.type is tuple else "") + self.range_text())
        return ", ".join(parts)

    def _in_range(self, value: Any) -> bool:
        if (self.minimum is None and self.maximum is None) or isinstance(value, (bool, str)):
            return True
        values = value if isinstance(value, (tuple, list)) else (value,)
        return all(
            (self.minimum is None or v >= self.minimum) and (self.maximum is None or v <= self.maximum) for v in values
        )

    def _choices_hint(self) -> str:
        if self.choices is None:
            return ""
        return " Valid values: " + ", ".join(self.format(c) for c in self.choices) + "."


def _type_label(kind: type) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "true/false",
        str: "text",
        tuple: "a size like 320x480",
    }[kind]


def _parse_typed(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(value)
    if kind is tuple:
        if isinstance(value, (tuple, list)):
            return tuple(int(v) for v in value)
        parts = str(value).lower().replace(",", "x").split("x")
        if len(parts) != 2:
            raise ValueError(value)
        return tuple(int(p) for p in parts)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if kind is float:
        return float(value)
    return str(value)


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    venue: str
    year: int
    url: str
    bibtex: str = ""


@dataclass(frozen=True)
class Reported:
    """A figure a paper reports, kept beside our own measurements in the charts."""

    dataset: str  # e.g. "DAVIS-2017 val"
    metrics: dict[str, float]  # e.g. {"J&F": 72.3, "J": 69.9, "F": 74.7}
    variant: str | None = None
    fps: float | None = None
    resolution: str | None = None  # what the speed was measured at, e.g. "480p" or "120x210 feature map"
    hardware: str | None = None  # e.g. "Titan Xp"
    note: str = ""


@dataclass(frozen=True)
class MethodInfo:
    key: str
    title: str
    task: str  # SEMI or UNSUP
    summary: str
    variants: tuple[str, ...]
    default_variant: str
    paper: Paper
    repo: str
    licence: str
    reported: tuple[Reported, ...] = ()
    options: tuple[Option, ...] = ()
    # Weights needed per variant: {variant: {part: manifest file id}}. A variant with no entry needs no weights.
    weights: dict[str, dict[str, str]] = field(default_factory=dict)

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        valid = ", ".join(o.name for o in self.options) or "none"
        raise OptionError(f"Method {self.key!r} has no option {name!r}. Valid options: {valid}.")

    def parts(self, variant: str) -> dict[str, str]:
        return dict(self.weights.get(variant, {}))

    def resolve_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated by ``overrides`` (None values ignored, timm-style), each parsed and validated."""
        values = {opt.name: opt.default for opt in self.options}
        for name, value in overrides.items():
            if value is None:
                continue
            values[name] = self.option(name).parse(value)
        return values

    def check_variant(self, variant: str | None) -> str:
        if variant is None:
            return self.default_variant
        if variant not in self.variants:
            raise OptionError(
                f"Method {self.key!r} has no variant {variant!r}. Valid variants: {', '.join(self.variants)}."
            )
        return variant


# --------------------------------------------------------------------------------------------------------------
# The interface


class Method(ABC):
    """One VOS method with its networks loaded, ready to segment any number of clips.

    Subclasses set ``info`` and implement ``_build`` (make networks, load weights through ``load_part``) and
    ``_segment`` (the per-frame pipeline of the method's spec).
    """

    info: ClassVar[MethodInfo]

    def __init__(
        self,
        variant: str | None = None,
        *,
        device: str | torch.device = "auto",
        weights: str = "hub",
        dtype: str | None = None,
        **options: Any,
    ):
        from vos import device as vdevice

        self.variant = self.info.check_variant(variant)
        self.device = vdevice.pick_device(device)
        self.dtype = vdevice.pick_dtype(dtype, self.device)
        self.weights = str(weights)
        self.options: dict[str, Any] = self.info.resolve_options(options)
        self.weights_records: list[dict[str, Any]] = []
        self._build()

    # ---- for subclasses
    @abstractmethod
    def _build(self) -> None:
        """Create the networks on ``self.device`` and load their weights (``self.load_part``)."""

    @abstractmethod
    def _segment(self, clip: Clip, first_mask: np.ndarray, progress: ProgressCallback | None) -> Iterator[np.ndarray]:
        """Yield one uint8 label map of shape ``clip.size`` per frame, frame 0 included."""

    def load_part(self, part: str, module: torch.nn.Module) -> None:
        """Load the weights of ``part`` (a key of ``info.weights[variant]``) into ``module``, strictly.

        ``weights="random"`` leaves the module's initialisation as it is.
        """
        from vos import weights as vweights

        if vweights.spec_kind(self.weights) == vweights.RANDOM:
            self.weights_records.append({"part": part, "source": "random"})
            return
        record = vweights.load_into(module, self.info.key, self.variant, part, self.weights)
        self.weights_records.append(record)

    # ---- public
    def segment(
        self, clip: Clip, first_mask: np.ndarray, progress: ProgressCallback | None = None
    ) -> Iterator[np.ndarray]:
        """Stream one label map per frame (uint8, ``clip.size``, 0 = background).

        Semi-supervised methods follow the objects of ``first_mask``; unsupervised ones ignore it and return
        their own segment ids (the runner matches them to the prompted objects).
        """
        first_mask = check_first_mask(first_mask, clip.size) if self.info.task == SEMI else first_mask
        frames = self._segment(clip, first_mask, progress)
        try:
            for index, label_map in enumerate(frames):
                check_label_map(label_map, clip.size, self.info.title, index)
                yield label_map
        finally:
            frames.close()  # the method's per-clip state goes now, also when the caller stops early

    def config(self) -> dict[str, Any]:
        """What ran: enough to rebuild this method (run.json provenance)."""
        return {
            "key": self.info.key,
            "variant": self.variant,
            "options": {o.name: _jsonable(self.options[o.name]) for o in self.info.options},
            "weights": self.weights,
            "weights_records": self.weights_records,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_first_mask(first_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Validate a first-frame label map before any network work; names the problem and the fix."""
    mask = np.asarray(first_mask)
    if mask.ndim != 2:
        raise PromptError(f"The first-frame mask must be a 2-D label map, got shape {mask.shape}.")
    if mask.shape != tuple(size):
        raise PromptError(
            f"The first-frame mask is {mask.shape[1]}x{mask.shape[0]} but the clip is {size[1]}x{size[0]}; "
            "draw the prompt on this clip's first frame or resize the mask."
        )
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise PromptError(f"The first-frame mask must hold integer object ids, got {mask.dtype}.")
    if mask.min() < 0 or mask.max() > 255:
        raise PromptError("Object ids in the first-frame mask must be between 0 and 255.")
    if not mask.any():
        raise PromptError("The first-frame mask is empty: mark at least one object.")
    return mask.astype(np.uint8)


def check_label_map(label_map: Any, size: tuple[int, int], title: str, index: int) -> None:
    """A method's output must be a uint8 (H, W) label map at the clip's size. Anything else is a bug in that
    method, and would be written as wrong masks: the PNG writer takes any 2-D integer map and cannot know the
    clip's size."""
    if isinstance(label_map, np.ndarray) and label_map.dtype == np.uint8 and label_map.shape == tuple(size):
        return
    if isinstance(label_map, np.ndarray):
        what = f"a {label_map.dtype} array of shape {label_map.shape}"
    else:
        what = f"a {type(label_map).__name__}"
    raise MethodOutputError(
        f"{title} returned {what} for frame {index}; a label map is a uint8 array of shape {tuple(size)} "
        "(the clip's size). Its masks were not kept."
    )


# --------------------------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, type[Method]] = {}
# The product's order (README table); methods registered from elsewhere (tests, plugins) come after.
DISPLAY_ORDER = ("mixture", "simvos", "tvos", "ba", "abr")
_builtins_loaded = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available under ``cls.info.key``."""
    key = cls.info.key
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise ValueError(f"Method key {key!r} is already registered by {_REGISTRY[key].__qualname__}.")
    _REGISTRY[key] = cls
    return cls


def unregister(key: str) -> None:
    _REGISTRY.pop(key, None)


PLUGINS_ENV = "VOS_PLUGINS"


def _load_builtins() -> None:
    """Import every module of this package once (each method module registers its class), then the modules named
    in $VOS_PLUGINS (comma-separated), so methods living outside the package also reach subprocesses."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    package = importlib.import_module("vos.methods")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"vos.methods.{module.name}")
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(name)


def list_keys() -> list[str]:
    """Registered method keys, builtins in the product's order first."""
    _load_builtins()
    rank = {key: i for i, key in enumerate(DISPLAY_ORDER)}
    return sorted(_REGISTRY, key=lambda k: rank.get(k, len(rank)))


def available() -> list[MethodInfo]:
    """Every registered method's info."""
    return [_REGISTRY[key].info for key in list_keys()]


def method_class(key: str) -> type[Method]:
    _load_builtins()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise UnknownMethod(key, list(_REGISTRY)) from None


def get_info(key: str) -> MethodInfo:
    return method_class(key).info


def create(
    key: str,
    variant: str | None = None,
    *,
    device: str = "auto",
    weights: str = "hub",
    dtype: str | None = None,
    **options: Any,
) -> Method:
    """Build a registered method: ``create("tvos", variant="davis_train", device="cuda", weights="hub")``."""
    return method_class(key)(variant, device=device, weights=weights, dtype=dtype, **options)
