"""The click engines behind the Compare page's prompts: SAM 2 (a tiny random-weight configuration; nothing is
downloaded) and the GrabCut fallback, and how one is chosen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.fakes import TINY_SAM2_SIDE, tiny_sam2
from vos import click_engine as ce
from vos import prompts


@pytest.fixture(scope="module")
def engine() -> ce.Sam2Engine:
    return tiny_sam2()


SIDE = TINY_SAM2_SIDE


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_one_click_gives_a_mask_and_later_clicks_reuse_the_embedding(engine):
    frame = image()
    before = engine.encodes
    first = prompts.prompts_to_mask(frame, [prompts.ObjectPrompt(clicks=[prompts.Click(30, 20)])], engine=engine)
    assert first.shape == (48, 64) and first.dtype == np.uint8 and set(np.unique(first)) <= {0, 1}
    assert first[20, 30] == 1  # the clicked pixel is the object's whatever the weights (prompts' marked pixels)
    refined = prompts.ObjectPrompt(
        clicks=[prompts.Click(30, 20), prompts.Click(5, 5, positive=False)], boxes=[prompts.Box(10, 10, 50, 40)]
    )
    prompts.prompts_to_mask(frame, [refined], engine=engine)
    assert engine.encodes == before + 1  # the image was encoded once for both calls
    prompts.prompts_to_mask(image(1), [refined], engine=engine)
    assert engine.encodes == before + 2  # another image, another embedding


def test_masks_follow_the_decoder_output(engine, monkeypatch):
    """Box prompts are decoded one box at a time and united; one lone click asks for SAM's three masks."""
    calls = []

    def decode(found, clicks, box):
        calls.append((len(clicks), box))
        mask = np.zeros((48, 64), bool)
        if box is not None:
            mask[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = True
        return mask

    monkeypatch.setattr(engine, "_decode", decode)
    two_boxes = prompts.ObjectPrompt(
        clicks=[prompts.Click(5, 5)], boxes=[prompts.Box(0, 0, 10, 10), prompts.Box(40, 30, 30, 20)]
    )
    mask = engine(image(), two_boxes)
    assert calls == [(1, prompts.Box(0, 0, 10, 10)), (0, prompts.Box(30, 20, 40, 30))]
    assert mask[:10, :10].all() and mask[20:30, 30:40].all() and mask.sum() == 200


def test_decoder_takes_points_in_image_pixels(engine):
    """The processor scales clicks from the image's size to the model's input side."""
    found = engine.embedding(image())
    encoded = engine.processor(
        images=None,
        original_sizes=found.original_size.tolist(),
        input_points=[[[[32.0, 24.0]]]],
        input_labels=[[[1]]],
        return_tensors="pt",
    )
    assert torch.allclose(encoded["input_points"][0, 0, 0], torch.tensor([32 * SIDE / 64, 24 * SIDE / 48]))


def test_hub_without_weights_falls_back_to_grabcut():
    ce.forget_engines()
    chosen = ce.load_engine("hub")
    assert isinstance(chosen, ce.GrabCutEngine)
    assert f"python -m vos weights fetch {ce.CLICK_WEIGHTS}" in chosen.describe()
    mask = prompts.prompts_to_mask(image(), [prompts.ObjectPrompt(clicks=[prompts.Click(30, 20)])], engine=chosen)
    assert mask[20, 30] == 1


def test_engine_from_the_environment(monkeypatch):
    ce.forget_engines()
    monkeypatch.setenv(ce.ENGINE_ENV, "grabcut")
    assert ce.built_engine() is None  # the page's text never waits for a build
    chosen = ce.load_engine()
    assert ce.built_engine() is chosen
    assert isinstance(chosen, ce.GrabCutEngine) and chosen.note == ""
    monkeypatch.setenv(ce.ENGINE_ENV, "tiny-random")  # registered by tests.fakes, as a VOS_PLUGINS module would
    assert ce.load_engine() is ce.load_engine() and isinstance(ce.load_engine(), ce.Sam2Engine)


def test_bad_specs_say_what_is_wrong(tmp_path):
    ce.forget_engines()
    with pytest.raises(ce.ClickEngineError, match="no such file"):
        ce.load_engine(str(tmp_path / "missing.safetensors"))
    partial = tmp_path / "partial.safetensors"
    save_file({"no_memory_embedding": torch.zeros(1, 1, 256)}, str(partial))
    with pytest.raises(ce.ClickEngineError, match="lack .* tensors of the image model"):
        ce.load_engine(str(partial))


def test_weights_list_names_the_click_engine():
    from vos import catalog

    rows = catalog.weights_rows()
    assert ("click engine (Compare page)", "-", ce.CLICK_WEIGHTS) in rows


def test_the_image_is_encoded_when_the_clip_opens(engine):
    frame = image(7)
    before = engine.encodes
    ce.register_engine("prepared-test", lambda: engine)
    try:
        ce.prepare_in_background(frame, "prepared-test").join(120)
        assert engine.encodes == before + 1
        engine(frame, prompts.ObjectPrompt(clicks=[prompts.Click(3, 4)]))
        assert engine.encodes == before + 1  # the click found the embedding ready
    finally:
        ce.FACTORIES.pop("prepared-test")
        ce.forget_engines()
