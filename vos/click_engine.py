"""Click engines: the clicks and boxes of one object on the first frame -> that object's mask.

Two engines share one interface (``ClickEngine``: called as ``engine(image, prompt) -> bool mask``):

- ``Sam2Engine``: SAM 2.1 (hiera-tiny, the smallest release) through the ``transformers`` implementation
  (``Sam2Model`` and ``Sam2Processor``), so one click on a cup gives the cup. The image embedding (the expensive
  part: the Hiera encoder at 1024x1024) is computed once per image and kept, so every later click, box or negative
  click on the same frame runs only the prompt encoder and the mask decoder.
- ``GrabCutEngine``: OpenCV GrabCut seeded by the prompts (vos.prompts): no weights, works offline.

``load_engine(spec)`` picks one the way a method's weights are picked: ``hub`` (the default) takes SAM 2 from our
cache or the Hugging Face Hub (manifest row ``CLICK_WEIGHTS``) and falls back to GrabCut when it cannot, saying why;
a local safetensors file or ``hf://OWNER/REPO[/FILE]`` loads those SAM 2 weights; ``grabcut`` asks for GrabCut;
``random`` builds SAM 2 with random weights (tests: the full interface without a download). The spec comes from
the environment variable ``VOS_CLICK_ENGINE`` when the caller gives none.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vos import prompts as vprompts
from vos.errors import VosError

log = logging.getLogger(__name__)

ENGINE_ENV = "VOS_CLICK_ENGINE"
CLICK_WEIGHTS = "prompt.sam2_1_hiera_tiny"  # the manifest row of the SAM 2 weights
GRABCUT, HUB, RANDOM = "grabcut", "hub", "random"
EMBEDDINGS_KEPT = 4  # images whose embeddings are kept: a few sessions clicking at once


class ClickEngineError(VosError, ValueError):
    """A click engine that cannot be built from the spec given."""


class ClickEngine:
    """Turns one object's prompt into its mask on ``image`` (uint8 RGB, H x W x 3)."""

    name: str = ""  # shown on the page under the prompt: which engine made the mask
    note: str = ""  # why this engine (e.g. why not SAM 2), empty when it is the one asked for

    def __call__(self, image: np.ndarray, prompt: vprompts.ObjectPrompt) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name + (f" ({self.note})" if self.note else "")

    def prepare(self, image: np.ndarray) -> None:
        """Do the per-image work ahead of the first click (called when a clip is opened)."""


class GrabCutEngine(ClickEngine):
    name = "GrabCut (OpenCV, no weights)"

    def __init__(self, note: str = ""):
        self.note = note

    def __call__(self, image: np.ndarray, prompt: vprompts.ObjectPrompt) -> np.ndarray:
        return vprompts.grabcut_object(image, prompt)


def sam2_config(**overrides: Any):
    """transformers' Sam2Config; its defaults are SAM 2.1 hiera-tiny's (the smallest release)."""
    from transformers import Sam2Config

    return Sam2Config(**overrides)


@dataclass
class _Embedding:
    features: list  # the image embeddings Sam2Model.get_image_embeddings returns
    original_size: Any  # the processor's original_sizes tensor


class Sam2Engine(ClickEngine):
    """SAM 2 with the image embedding computed once per image (keyed by the image's bytes) and reused."""

    def __init__(self, model: Any, name: str, *, note: str = ""):
        from transformers import Sam2Processor
        from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

        self.model = model.eval()
        side = int(model.config.prompt_encoder_config.image_size)
        mask_side = side // 4  # the decoder's low-resolution masks: a quarter of the input side
        self.processor = Sam2Processor(
            image_processor=Sam2ImageProcessor(
                size={"height": side, "width": side}, mask_size={"height": mask_side, "width": mask_side}
            )
        )
        self.name = name
        self.note = note
        self._embeddings: collections.OrderedDict[str, _Embedding] = collections.OrderedDict()
        self._lock = threading.Lock()  # Gradio runs callbacks in threads; one forward pass at a time
        self.encodes = 0  # how many images were encoded (tests check that later clicks reuse the embedding)

    @staticmethod
    def _key(image: np.ndarray) -> str:
        return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest() + str(image.shape)

    def embedding(self, image: np.ndarray) -> _Embedding:
        import torch

        key = self._key(image)
        with self._lock:
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
                return self._embeddings[key]
            inputs = self.processor(images=image, return_tensors="pt")
            with torch.inference_mode():
                features = self.model.get_image_embeddings(inputs["pixel_values"])
            self.encodes += 1
            found = _Embedding(features, inputs["original_sizes"])
            self._embeddings[key] = found
            while len(self._embeddings) > EMBEDDINGS_KEPT:
                self._embeddings.popitem(last=False)
            return found

    def prepare(self, image: np.ndarray) -> None:
        self.embedding(image)

    def __call__(self, image: np.ndarray, prompt: vprompts.ObjectPrompt) -> np.ndarray:
        h, w = image.shape[:2]
        clicks = list(prompt.clicks)
        boxes = [box.ordered() for box in prompt.boxes]
        mask = np.zeros((h, w), bool) if prompt.brush is None else prompt.brush.copy()
        if not clicks and not boxes:
            return mask
        found = self.embedding(image)
        if not boxes:
            return mask | self._decode(found, clicks, None)
        # SAM takes one box per mask: each box gives one part (with the clicks inside it), the object is their union;
        # clicks outside every box refine nothing there and are used on their own.
        for box in boxes:
            inside = [c for c in clicks if box.x0 <= c.x <= box.x1 and box.y0 <= c.y <= box.y1]
            mask |= self._decode(found, inside, box)
        loose = [c for c in clicks if not any(b.x0 <= c.x <= b.x1 and b.y0 <= c.y <= b.y1 for b in boxes)]
        if any(c.positive for c in loose):
            mask |= self._decode(found, loose, None)
        return mask

    def _decode(self, found: _Embedding, clicks: list, box: vprompts.Box | None) -> np.ndarray:
        import torch

        sizes = found.original_size.tolist()
        kwargs: dict[str, Any] = {}
        if clicks:
            kwargs["input_points"] = [[[[c.x, c.y] for c in clicks]]]
            kwargs["input_labels"] = [[[1 if c.positive else 0 for c in clicks]]]
        if box is not None:
            kwargs["input_boxes"] = [[[box.x0, box.y0, box.x1, box.y1]]]
        # The processor scales coordinates from the image's size to the model's input side.
        encoded = self.processor(images=None, original_sizes=sizes, return_tensors="pt", **kwargs)
        # One positive click alone is ambiguous (the cup, or the hand holding it): SAM then proposes three masks
        # and the one with the best predicted IoU is taken, as the SAM 2 image predictor does.
        multimask = box is None and len(clicks) == 1
        with torch.inference_mode():
            out = self.model(
                image_embeddings=found.features,
                input_points=encoded.get("input_points"),
                input_labels=encoded.get("input_labels"),
                input_boxes=encoded.get("input_boxes"),
                multimask_output=multimask,
            )
        masks = self.processor.post_process_masks(out.pred_masks, found.original_size, binarize=True)[0]
        best = int(out.iou_scores[0, 0].argmax()) if multimask else 0
        return masks[0, best].numpy().astype(bool)


# --------------------------------------------------------------------------------------------------------------
# Choosing the engine


def _sam2_model(state: dict | None, config: Any = None):
    from transformers import Sam2Model

    model = Sam2Model(config or sam2_config())
    if state is not None:
        missing, _unexpected = model.load_state_dict(state, strict=False)
        if missing:
            # The release may hold more than the image model (the video model's memory modules); every tensor of
            # the image model must be there.
            raise ClickEngineError(
                f"The SAM 2 weights lack {len(missing)} tensors of the image model (e.g. {missing[0]}); use the "
                f"transformers-format safetensors of facebook/sam2.1-hiera-tiny (`python -m vos weights fetch "
                f"{CLICK_WEIGHTS}`)."
            )
    return model


def _read_safetensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _sam2_from_spec(spec: str):
    """The SAM 2 model a weights spec names (hub, a local file, hf://...), or WeightsUnavailable."""
    from vos import weights as vweights

    kind = vweights.spec_kind(spec)
    if kind == vweights.HUB:
        resolved = vweights.resolve_file(CLICK_WEIGHTS)
        return _sam2_model(_read_safetensors(resolved.path)), f"SAM 2.1 hiera-tiny ({resolved.source})"
    if kind == vweights.HF:
        repo, revision, filename = vweights.parse_hf(spec)
        try:
            path = vweights.hub_download(repo, filename or "model.safetensors", revision)
        except Exception as err:  # the weights module's Hub miss: say it as a click-engine problem
            raise ClickEngineError(f"Click engine {spec!r}: {err}") from None
        return _sam2_model(_read_safetensors(path)), f"SAM 2 ({spec})"
    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
        raise ClickEngineError(
            f"Click engine {spec!r}: no such file. Give hub, grabcut, random, a SAM 2 safetensors file or "
            "hf://OWNER/REPO[/FILE]."
        )
    return _sam2_model(_read_safetensors(path)), f"SAM 2 ({os.path.basename(path)})"


def prepare_in_background(image: np.ndarray, spec: str | None = None) -> threading.Thread:
    """Load the engine and encode ``image`` in a background thread (when a clip is uploaded), so that the first
    click does not wait for the encoder; a click that comes earlier waits for that one encoding, not a second."""

    def work() -> None:
        try:
            load_engine(spec).prepare(image)
        except Exception as err:  # noqa: BLE001 -- the click itself will report any real problem
            log.warning("click engine: could not prepare the image: %s", err)

    thread = threading.Thread(target=work, name="vos-click-engine", daemon=True)
    thread.start()
    return thread


_BUILT: dict[str, ClickEngine] = {}
_BUILDING = threading.Lock()  # one build per spec, even when an upload's background thread and a click race


def _spec(spec: str | None) -> str:
    return (spec or os.environ.get(ENGINE_ENV) or HUB).strip()


def load_engine(spec: str | None = None) -> ClickEngine:
    """The engine ``spec`` names (else $VOS_CLICK_ENGINE, else ``hub``), built once per process and spec.

    ``hub`` never fails: without the SAM 2 weights it gives GrabCut with a note saying how to get them."""
    spec = _spec(spec)
    with _BUILDING:
        if spec not in _BUILT:
            _BUILT[spec] = _load_engine(spec)
        return _BUILT[spec]


def built_engine(spec: str | None = None) -> ClickEngine | None:
    """The engine if it is built already, else None (never waits: for text shown while it loads)."""
    return _BUILT.get(_spec(spec))


def forget_engines() -> None:
    """Drop the built engines (tests; a new spec or new weights take effect at the next click)."""
    with _BUILDING:
        _BUILT.clear()


FACTORIES: dict[str, Callable[[], ClickEngine]] = {}  # named engines plugins add (tests: a tiny random SAM 2)


def register_engine(name: str, factory: Callable[[], ClickEngine]) -> None:
    """Make ``name`` a click-engine spec (e.g. from a VOS_PLUGINS module); the factory runs once, on first use."""
    FACTORIES[name] = factory
    forget_engines()


def _load_engine(spec: str) -> ClickEngine:
    from vos import weights as vweights

    if spec in FACTORIES:
        return FACTORIES[spec]()
    if spec == GRABCUT:
        return GrabCutEngine()
    if spec == RANDOM:
        return Sam2Engine(_sam2_model(None), "SAM 2 (random weights: the masks mean nothing)")
    try:
        model, name = _sam2_from_spec(spec)
    except ImportError as err:  # transformers is a requirement; a trimmed install still gets masks
        return GrabCutEngine(note=f"SAM 2 needs the transformers package ({err})")
    except vweights.WeightsUnavailable as err:
        if spec != HUB:
            raise
        log.info("click engine: SAM 2 weights not here, using GrabCut: %s", err)
        return GrabCutEngine(
            note=f"SAM 2 weights are not on this machine; `python -m vos weights fetch {CLICK_WEIGHTS}` gets them"
        )
    return Sam2Engine(model, name)
