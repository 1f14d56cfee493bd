"""What to run: method specs (key, variant, option overrides, weights spec) from the command line's --methods,
--variant, --opt and --weights strings (or a run.json's records), checked against the registry before any work."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vos import runnable as vrunnable
from vos.methods import base as mbase


@dataclass
class MethodSpec:
    """One method to run: key, variant (None = default), option overrides and weights spec."""

    key: str
    variant: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # None: the run's default
    variant_note: str | None = None  # why this variant and not the default (vos.runnable.choose_variants)

    def validated(self) -> MethodSpec:
        """Check key, variant and options now, before any work, so a typo fails fast with the valid values."""
        info = mbase.get_info(self.key)
        variant = info.check_variant(self.variant)
        options = info.resolve_options(self.options)
        overridden = {k: v for k, v in options.items() if k in self.options}
        return MethodSpec(self.key, variant, overridden, self.weights, self.variant_note)


def parse_method_specs(
    methods: str | Sequence[str] = "all",
    *,
    variants: Iterable[str] = (),
    options: Iterable[str] = (),
    weights: Iterable[str] = (),
    runnable: bool = False,
) -> tuple[list[MethodSpec], str]:
    """Turn CLI strings into validated MethodSpecs and the default weights spec.

    methods: "all" or "k1,k2"; variants: "key=variant"; options: "key.name=value"; weights: "SPEC" (every method)
    or "key=SPEC" (one method). Weights specs naming a file or folder must exist. ``runnable``: a method whose
    variant is not named gets one that can run on this machine (vos.runnable), as the app does.
    """
    known = mbase.list_keys()
    if isinstance(methods, str):
        keys = known if methods.strip() in {"", "all"} else [k.strip() for k in methods.split(",") if k.strip()]
    else:
        keys = list(methods)
    for key in keys:
        mbase.method_class(key)  # raises UnknownMethod with a suggestion
    specs = [MethodSpec(key) for key in keys]
    default_weights = apply_overrides(specs, variants=variants, options=options, weights=weights)
    if runnable:
        named = {text.partition("=")[0].strip() for text in variants}
        vrunnable.choose_variants(specs, named, default_weights or "hub")
    return [spec.validated() for spec in specs], default_weights or "hub"


def apply_overrides(
    specs: Sequence[MethodSpec],
    *,
    variants: Iterable[str] = (),
    options: Iterable[str] = (),
    weights: Iterable[str] = (),
) -> str | None:
    """Apply --variant, --opt and --weights strings to ``specs`` (in place; validate afterwards).

    Returns the default weights spec a bare ``--weights SPEC`` gave, or None. Each weights spec is checked with
    ``check_weights_spec``.
    """
    if isinstance(weights, str):  # one spec, not a list of one-character specs
        weights = [weights]
    by_key = {spec.key: spec for spec in specs}
    keys = list(by_key)

    def split_pair(text: str, sep: str, what: str) -> tuple[str, str]:
        if sep not in text:
            raise mbase.OptionError(f"Expected {what}, got {text!r}.")
        left, right = text.split(sep, 1)
        return left.strip(), right.strip()

    def target(key: str, flag: str) -> MethodSpec:
        mbase.method_class(key)
        if key not in by_key:
            raise mbase.OptionError(f"{flag} names {key!r}, which is not among the methods to run ({', '.join(keys)}).")
        return by_key[key]

    for text in variants:
        key, variant = split_pair(text, "=", "--variant KEY=VARIANT")
        target(key, "--variant").variant = variant
    for text in options:
        name, value = split_pair(text, "=", "--opt KEY.NAME=VALUE")
        key, opt = split_pair(name, ".", "--opt KEY.NAME=VALUE")
        target(key, "--opt").options[opt] = value
    known = mbase.list_keys()
    default_weights = None
    per_method: set[str] = set()
    for text in weights:
        key, sep, spec = (part.strip() for part in text.partition("="))
        if sep and key in known:
            if key in per_method:
                raise mbase.OptionError(f"--weights gives {key}=... twice; give each method one weights spec.")
            per_method.add(key)
            target(key, "--weights").weights = check_weights_spec(spec, shown=f"--weights {text.strip()}")
        elif sep and re.fullmatch(r"[a-z][a-z0-9_]*", key) and not Path(text).expanduser().exists():
            # KEY=SPEC with a key that is no method (a typo), rather than a file whose name holds "=".
            raise mbase.OptionError(f"--weights {text}: {mbase.UnknownMethod(key, known)}")
        else:
            if default_weights is not None:
                raise mbase.OptionError(
                    f"--weights gives two specs for every method ({default_weights!r} and {text!r}); give one, "
                    "and KEY=SPEC for the methods that differ."
                )
            default_weights = check_weights_spec(text)
    return default_weights


def check_weights_spec(spec: str, *, shown: str | None = None) -> str:
    """Reject a weights spec that cannot work before anything runs: a file or folder that does not exist, or a
    malformed ``hf://`` address. Whether the Hub has the files is left to loading (it may need the network).
    Returns the spec, with a file or folder made absolute.

    ``shown`` is how the spec reads to the user (default ``--weights SPEC``); messages start with it.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from vos import weights as vweights

    text = str(spec).strip()
    shown = shown or f"--weights {text}"
    kind = vweights.spec_kind(text) if text else vweights.LOCAL  # an empty spec is an error, not the default
    if kind in (vweights.HUB, vweights.RANDOM):
        return text
    if kind == vweights.HF:
        try:
            repo, _, _ = vweights.parse_hf(text)  # the loader's own parser, so both agree on what is valid
            validate_repo_id(repo)
        except (vweights.BadWeightsSpec, HFValidationError) as err:
            reason = str(err).removeprefix(f"{text!r}: ")
            raise vweights.BadWeightsSpec(f"{shown}: {reason}") from None
        return text
    path = Path(text).expanduser()
    if not text or not path.exists():
        raise vweights.BadWeightsSpec(
            f"{shown}: {'no such file or folder' if text else 'empty'} (a weights spec is hub, random, a file, "
            "a folder or hf://OWNER/REPO[/FILE])."
        )
    return str(path.absolute())  # as run.json records it, so that `run --from` finds it from any folder
