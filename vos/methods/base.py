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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from vos.errors import VosError

if TYPE_CHECKING:
    import torch

    from vos.video import Clip

log = logging.getLogger(__name__)

SEMI = "semi"
UNSUP = "unsup"
# How a method consumes the clip: ONLINE gives frame t's label map having read frames 0..t (one in, one out);
# OFFLINE computes over the whole clip (flow of every pair, clustering over key frames) before frame 0's comes.
ONLINE = "online"
OFFLINE = "offline"

FRAME_STAGE = "frame"  # the stage the base class reports after each label map


@dataclass(frozen=True)
class Progress:
    """Where a running method is: a named stage (``"flow"``, ``"frame"``) and ``done`` of ``total`` steps in it."""

    stage: str
    done: int
    total: int

    def __str__(self) -> str:
        return f"{self.stage} {self.done}/{self.total}"


ProgressCallback = Callable[[Progress], None]
"""Called with each ``Progress`` a running method reports (its own stages, then "frame k/N" per label map)."""


class StopFlag(Protocol):
    """What ``segment(..., stop=...)`` polls: a ``threading.Event`` fits."""

    def is_set(self) -> bool: ...


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


class Stopped(VosError):
    """The user asked a running method to stop; raised inside it at its next report or check."""

    def __init__(self, progress: Progress | None = None):
        self.progress = progress
        super().__init__(f"Stopped at {progress}." if progress else "Stopped.")


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


AS_GIVEN, SHORT_SIDE, FIXED = "as_given", "short_side", "fixed"


@dataclass(frozen=True)
class Resolution:
    """How a method's working (compute) size follows from the user's working resolution: one declaration that
    the method, the app, the CLI and the benchmark all read.

    The user chooses a working resolution as a long-side limit (the app's control, ``--max-side``); the clip then
    yields frames at ``clip.work_size``. Rules:

    - ``as_given``: compute at ``clip.work_size`` (methods that take any size).
    - ``short_side``: the release rescales every clip to a short side of ``value`` pixels.
    - ``fixed``: the release computes at ``value`` = (H, W) whatever the clip.

    For the last two the release's rule is the default; when the user asked for a smaller working resolution
    than the clip's own, the method follows it down (never up): the short side becomes at most the working
    size's, a fixed size is scaled to fit within it. ``option`` names the method option (default None) that
    sets the size outright (a short side, or HxW), which is also how the benchmark puts a method at the
    resolution on its axis. ``value`` may be a mapping ``{variant: value}`` where variants differ.
    """

    rule: str = AS_GIVEN
    value: int | tuple[int, int] | dict[str, Any] | None = None
    multiple: int = 1
    option: str | None = None

    @classmethod
    def as_given(cls) -> Resolution:
        return cls()

    @classmethod
    def short_side(cls, value: int | dict[str, int], *, multiple: int = 1, option: str | None = None) -> Resolution:
        return cls(SHORT_SIDE, value, multiple, option)

    @classmethod
    def fixed(
        cls, value: tuple[int, int] | dict[str, tuple[int, int]], *, multiple: int = 1, option: str | None = None
    ) -> Resolution:
        return cls(FIXED, value, multiple, option)

    def release_value(self, variant: str) -> Any:
        return self.value.get(variant) if isinstance(self.value, dict) else self.value

    def working_size(
        self, native: tuple[int, int], given: tuple[int, int], variant: str, override: Any = None
    ) -> tuple[int, int]:
        """(H, W) to compute at for a clip of ``native`` size that the user asked to run at ``given``."""
        if self.rule == AS_GIVEN:
            return tuple(given)
        user_shrank = tuple(given) != tuple(native)
        if self.rule == SHORT_SIDE:
            short = override if override is not None else self.release_value(variant)
            if override is None and user_shrank:
                short = min(short, min(given))
            short = max(self.multiple, short // self.multiple * self.multiple)
            h, w = given
            long = max(self.multiple, round(short * max(h, w) / min(h, w)) // self.multiple * self.multiple)
            return (long, short) if h > w else (short, long)
        size = tuple(override if override is not None else self.release_value(variant))
        if override is None and user_shrank and max(size) > max(given):
            scale = max(given) / max(size)
            size = tuple(max(self.multiple, int(side * scale) // self.multiple * self.multiple) for side in size)
        return size

    def override_for(self, size: tuple[int, int]) -> Any:
        """The ``option`` value that makes the method compute at ``size`` (the benchmark's axis); None where the
        method computes at the size it is given or its size cannot be set."""
        if self.option is None or self.rule == AS_GIVEN:
            return None
        if self.rule == SHORT_SIDE:
            return _multiple_of(min(size), self.multiple)
        return (_multiple_of(size[0], self.multiple), _multiple_of(size[1], self.multiple))

    def describe(self, variant: str) -> str:
        """In words, for listings: "as given", "short side 480", "320x480"."""
        value = self.release_value(variant)
        if self.rule == AS_GIVEN:
            return "the working resolution as given"
        text = f"short side {value} px" if self.rule == SHORT_SIDE else f"{value[0]}x{value[1]}"
        return text + (f" (option {self.option})" if self.option else " (fixed)")


def _multiple_of(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


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
    processing: str = ONLINE
    resolution: Resolution = field(default_factory=Resolution)

    def __post_init__(self) -> None:
        if self.processing not in (ONLINE, OFFLINE):
            raise ValueError(f"{self.key}: processing must be {ONLINE!r} or {OFFLINE!r}, got {self.processing!r}")
        if self.resolution.option is not None and self.resolution.option not in {o.name for o in self.options}:
            raise ValueError(f"{self.key}: the resolution option {self.resolution.option!r} is not declared")

    @property
    def offline(self) -> bool:
        return self.processing == OFFLINE

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

    A subclass sets ``info``; declares its networks as parts (``info.weights[variant] = {part: file id}``) and
    builds each with ``build_part`` (random weights, no device: the base class builds it on ``self.device``, or on
    the meta device to read its layout, and loads the weights strictly); sets up the rest in ``_build`` (the loaded
    networks are in ``self.nets``); and streams label maps from ``_segment``, reporting its stages with
    ``self.report(stage, done, total)``, which also ends the work when the caller asked to stop.
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
        import torch

        from vos import device as vdevice

        self.variant = self.info.check_variant(variant)
        self.device = vdevice.pick_device(device)
        if self.device.type == "cpu":
            vdevice.keep_freed_memory()
        self.dtype = vdevice.pick_dtype(dtype, self.device)
        self.weights = str(weights)
        self.options: dict[str, Any] = self.info.resolve_options(options)
        self.weights_records: list[dict[str, Any]] = []
        self.nets: dict[str, torch.nn.Module] = {}
        self._progress: ProgressCallback | None = None
        self._stop: StopFlag | None = None
        self._last: Progress | None = None
        for part in self.info.parts(self.variant):
            with torch.device(self.device):
                module = self.build_part(part, self.variant, self.options)
            self._load_part(part, module)
            self.nets[part] = module.to(self.device).eval()
        self._build()

    # ---- for subclasses
    @classmethod
    def build_part(cls, part: str, variant: str, options: dict[str, Any]) -> torch.nn.Module:
        """The network of ``part`` with random weights, in the official parameter layout (no device: the caller
        picks it with ``torch.device``). Methods with parts override this."""
        raise NotImplementedError(f"{cls.info.key} declares part {part!r} but does not build it")

    def _build(self) -> None:  # noqa: B027 -- optional: many methods need nothing beyond their parts
        """Set up what the method needs beyond its parts (``self.nets`` is loaded when this runs)."""

    @abstractmethod
    def _segment(self, clip: Clip, first_mask: np.ndarray) -> Iterator[np.ndarray]:
        """Yield one uint8 label map of shape ``clip.size`` per frame, frame 0 included."""

    def report(self, stage: str, done: int, total: int) -> None:
        """Tell the caller how far the method got (``"flow", 12, 80``); raises ``Stopped`` if it asked to stop."""
        self._tell(Progress(stage, done, total))
        self.check_stop()

    def _tell(self, progress: Progress) -> None:
        self._last = progress
        if self._progress is not None:
            self._progress(progress)

    def check_stop(self) -> None:
        """Raise ``Stopped`` when the caller asked to stop; call it inside long loops that do not report."""
        if self._stop is not None and self._stop.is_set():
            raise Stopped(self._last)

    def working_size(self, clip: Clip) -> tuple[int, int]:
        """(H, W) this method computes at for ``clip``: ``info.resolution``'s rule, its option and the user's
        working resolution (``clip.work_size``)."""
        rule = self.info.resolution
        override = self.options.get(rule.option) if rule.option else None
        return rule.working_size(clip.size, clip.work_size, self.variant, override)

    def _load_part(self, part: str, module: torch.nn.Module) -> None:
        """Load the weights of ``part`` into ``module``, strictly; ``weights="random"`` keeps the initialisation."""
        from vos import weights as vweights

        if vweights.spec_kind(self.weights) == vweights.RANDOM:
            self.weights_records.append({"part": part, "source": "random"})
            return
        record = vweights.load_into(
            module,
            self.weights,
            method=self.info.key,
            variant=self.variant,
            part=part,
            parts=self.info.parts(self.variant),
        )
        self.weights_records.append(record)

    # ---- public
    def segment(
        self,
        clip: Clip,
        first_mask: np.ndarray,
        progress: ProgressCallback | None = None,
        stop: StopFlag | None = None,
    ) -> Iterator[np.ndarray]:
        """Stream one label map per frame (uint8, ``clip.size``, 0 = background).

        Semi-supervised methods follow the objects of ``first_mask``; unsupervised ones ignore it and return
        their own segment ids (the runner matches them to the prompted objects). ``progress`` receives each
        ``Progress``; when ``stop`` is set the method raises ``Stopped`` at its next report, or between frames.
        """
        first_mask = check_first_mask(first_mask, clip.size) if self.info.task == SEMI else first_mask
        self._progress, self._stop, self._last = progress, stop, None
        frames = self._segment(clip, first_mask)
        try:
            for index, label_map in enumerate(frames):
                check_label_map(label_map, clip.size, self.info.title, index)
                self._tell(Progress(FRAME_STAGE, index + 1, clip.num_frames))
                yield label_map
                self.check_stop()  # after the frame is out: a stop keeps every finished frame
        finally:
            frames.close()  # the method's per-clip state goes now, also when the caller stops early
            self._progress = self._stop = None

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


def part_layout(key: str, variant: str, part: str) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a method's part, built on the meta device (no memory, no weights)."""
    import torch

    cls = method_class(key)
    info = cls.info
    variant = info.check_variant(variant)
    if part not in info.parts(variant):
        raise ValueError(f"{key}:{variant} declares no part {part!r} (declared: {', '.join(info.parts(variant))}).")
    with torch.device("meta"):
        module = cls.build_part(part, variant, info.resolve_options({}))
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


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
