"""Which variant of a method can run on this machine: one answer for the CLI, the Python API and the app.

A variant can run here when it needs no weights, or when every file it needs is already on this machine (our
converted cache, the Hub cache, or an official file). Nothing here touches the network: it only looks in caches.
When the user names no variant and the run loads released weights (``--weights hub``), the default variant is
kept if it can run here, else the first variant that can, and the run says which and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vos.errors import VosError
from vos.methods.base import MethodInfo, get_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsState:
    """Whether a method variant can load its released weights on this machine without the network."""

    needed: bool  # False: the variant needs no weights at all
    available: bool | None  # None: cannot tell (the manifest could not be read)
    missing: tuple[str, ...] = ()  # manifest file ids not on this machine
    command: str = ""  # what fetches them

    @property
    def runnable(self) -> bool:
        """True unless the weights are known to be missing (an unknown state is given the benefit of the doubt)."""
        return self.available is not False

    @property
    def label(self) -> str:
        if not self.needed:
            return "no weights needed"
        if self.available is None:
            return "weights: unknown"
        return "weights here" if self.available else "weights missing"


def fetch_command(key: str, variant: str) -> str:
    return f"python -m vos weights fetch {key}:{variant}"


def weights_state(info: MethodInfo, variant: str) -> WeightsState:
    parts = info.parts(variant)
    if not parts:
        return WeightsState(needed=False, available=True)
    from vos import weights as vweights

    missing = []
    for file_id in parts.values():
        try:
            if vweights.cache_status(vweights.entry(file_id)) == vweights.CacheState.MISSING:
                missing.append(file_id)
        except VosError as err:  # a manifest problem: say it, never break a run or a page over it
            log.warning("weights status of %s: %s", file_id, err)
            return WeightsState(needed=True, available=None, command=fetch_command(info.key, variant))
    return WeightsState(
        needed=True, available=not missing, missing=tuple(missing), command=fetch_command(info.key, variant)
    )


def weight_free_variants(info: MethodInfo) -> list[str]:
    """Variants that need no weights at all (mixture's rgb): they run on any machine, offline."""
    return [variant for variant in info.variants if not info.parts(variant)]


@dataclass(frozen=True)
class Choice:
    variant: str
    note: str | None = None  # why another variant than the default was taken (None: the default)


def runnable_variant(info: MethodInfo, states: dict[str, WeightsState] | None = None) -> Choice:
    """The default variant when it can run here, else the first variant that can (a note says why), else the
    default (it will report its missing weights with the command that fetches them)."""
    states = states or {variant: weights_state(info, variant) for variant in info.variants}
    default = info.default_variant
    if states[default].runnable:
        return Choice(default)
    chosen = next((v for v in info.variants if states[v].runnable), None)
    if chosen is None:
        return Choice(default)
    missing = ", ".join(states[default].missing)
    return Choice(
        chosen,
        f"{info.key}: running variant {chosen!r} because the default {default!r} needs weights that are not on "
        f"this machine ({missing}); fetch them with `{states[default].command}`, or choose a variant with "
        f"--variant {info.key}=VARIANT.",
    )


def choose_variants(specs: Sequence, named: Iterable[str] = (), default_weights: str = "hub") -> None:
    """Give each spec (a vos.specs.MethodSpec) whose variant the user did not name (keys not in ``named``) a variant
    that can run here, and log why when it is not the default (the note also goes into the spec, for run.json).

    Only specs that load released weights from the manifest are changed (``random`` and local files load whatever
    variant is asked).
    """
    from vos import weights as vweights

    named = set(named)
    for spec in specs:
        if spec.key in named or vweights.spec_kind(spec.weights or default_weights) != vweights.HUB:
            continue
        choice = runnable_variant(get_info(spec.key))
        spec.variant = choice.variant
        spec.variant_note = choice.note
        if choice.note:
            log.warning("%s", choice.note)


def missing_weights_hint(key: str, command: str) -> str:
    """The fetch command, and the weight-free variant where the method has one."""
    free = weight_free_variants(get_info(key))
    if not free:
        return command
    return f"{command} (or run without weights: --variant {key}={free[0]})"


# --------------------------------------------------------------------------------------------------------------
# Defaults for the machine

# On a CPU a run at the release resolutions takes many minutes (mixture's first frame alone: about two minutes at
# 427x320 on 2 cores). Without a choice from the user, runs on a CPU use a small working resolution and a short clip,
# so that the bundled example (320x240, 48 frames) gives results with every method that can run in about a minute.
# A long side below the clip's own also brings the methods with a release rule (mixture: short side 480) down.
CPU_MAX_SIDE = 240
CPU_MAX_FRAMES = 48


@dataclass(frozen=True)
class MachineDefaults:
    max_side: int | None  # the working resolution's long side (None: the clip's own)
    max_frames: int | None  # frames to run (None: all)

    def describe(self) -> str:
        if self.max_side is None and self.max_frames is None:
            return ""
        return (
            f"On the CPU, runs use a working resolution of {self.max_side} px (long side) and at most "
            f"{self.max_frames} frames unless told otherwise (--max-side / --max-frames, or the Compare page's "
            "resolution and frames controls), so that a run ends in about a minute."
        )


def machine_defaults(device: str = "auto") -> MachineDefaults:
    """The working resolution and frame limit a run uses when the user gives none: the clip's own on a GPU,
    small ones on a CPU."""
    from vos.device import pick_device

    if pick_device(device).type == "cpu":
        return MachineDefaults(CPU_MAX_SIDE, CPU_MAX_FRAMES)
    return MachineDefaults(None, None)
