"""Talk mode in a real browser (Debian's chromium through Playwright) at 1920x1080: four methods fit without
scrolling, the slider moves every tile, the pair view draws.

The README's screenshots come from the real methods on the example clip (mixture's weight-free ``rgb`` variant runs;
a method whose weights are not on this machine shows why it did not run):

    VOS_SCREENSHOT_DIR=docs/screenshots .venv/bin/python -m pytest tests/test_browser_present.py -k readme
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import masks as vmasks
from vos.bundle import open_bundle
from vos.methods import available
from vos.runner import MethodSpec, read_ground_truth, run_methods
from vos.video import Limits, open_clip

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PROJECTOR = (1920, 1080)
EXAMPLE = ROOT / "assets" / "examples"

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")


def make_bundle(folder: Path) -> Path:
    """The example clip, scored against its ground truth, through four test-only methods; the last one fails."""
    clip = open_clip(EXAMPLE / "shapes.mp4")
    specs = [
        MethodSpec("fake_alloc", options={"mib": 8}),
        MethodSpec("fake_copy", options={"shift": 1}),
        MethodSpec("fake_unsup"),
        MethodSpec("fake_fail", options={"at": 20}),
    ]
    return _run(clip, specs, folder)


def make_real_bundle(folder: Path) -> Path:
    """The README's: the real methods on the first 12 frames (mixture's rgb variant needs no weights; the others
    show why they did not run when their weights are not on this machine)."""
    clip = open_clip(EXAMPLE / "shapes.mp4", Limits(max_frames=12))
    real = [info.key for info in available() if not info.key.startswith("fake_")]
    specs = [MethodSpec(key, "rgb" if key == "mixture" else None) for key in real]
    return _run(clip, specs, folder)


def _run(clip, specs, folder: Path) -> Path:
    prompt = vmasks.read_palette_png(EXAMPLE / "shapes_00000.png")
    gt = read_ground_truth(EXAMPLE / "shapes_gt.zip", clip)
    run_methods(clip, prompt, specs, folder, device="cpu", ground_truth=gt, write_video=False)
    return folder


@contextmanager
def presenter(path: Path, log: Path) -> Iterator[str]:
    """``python -m vos present PATH`` on a free port; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOS_PLUGINS": ""}
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "vos", "present", str(path), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=stream,
            stderr=stream,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the presenter exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"the presenter did not listen within 90 s:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def projector_page(tmp_path):
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": PROJECTOR[0], "height": PROJECTOR[1]})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def images(page) -> list[str]:
    return page.eval_on_selector_all("[data-testid=stImage] img", "imgs => imgs.map(i => i.src)")


def assert_fits(page) -> None:
    """Every image, the last tile's bottom edge included, is inside the window: nothing to scroll to."""
    bottom = page.eval_on_selector_all(
        "[data-testid=stImage] img", "imgs => Math.max(...imgs.map(i => i.getBoundingClientRect().bottom))"
    )
    assert bottom <= PROJECTOR[1], f"the images end at {bottom}px, below the {PROJECTOR[1]}px window"


def check_and_shoot(page, url: str, folder: Path, bundle: Path) -> None:
    run = open_bundle(bundle)
    tiles, frames = 1 + len(run.methods), run.num_frames
    page.goto(url, wait_until="load")
    page.wait_for_function(f"document.querySelectorAll('[data-testid=stImage] img').length == {tiles}")
    page.wait_for_timeout(1500)
    assert_fits(page)
    first = images(page)
    slider = page.locator("[data-testid=stSlider] input[type=range]").first
    slider.focus()
    page.keyboard.press("End")
    page.wait_for_function(f"document.querySelector('.vos-frame-no').innerText.startsWith('{frames} /')")
    page.wait_for_timeout(1500)
    moved = images(page)
    assert all(a != b for a, b in zip(first, moved)), "every tile follows the one slider"
    page.screenshot(path=str(folder / "present-grid.png"))
    page.get_by_text("Pair", exact=True).click()
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length == 1")
    page.wait_for_timeout(1500)
    assert_fits(page)
    page.screenshot(path=str(folder / "present-pair.png"))


def test_presenter_fits_a_projector_and_stays_in_sync(projector_page, tmp_path):
    bundle = make_bundle(tmp_path / "runs" / "shapes")
    with presenter(bundle, tmp_path / "present.log") as url:
        check_and_shoot(projector_page, url, tmp_path, bundle)


@pytest.mark.skipif(not os.environ.get("VOS_SCREENSHOT_DIR"), reason="set VOS_SCREENSHOT_DIR to refresh the README's")
def test_readme_screenshot(projector_page, tmp_path):
    folder = Path(os.environ["VOS_SCREENSHOT_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    bundle = make_real_bundle(tmp_path / "runs" / "shapes")
    with presenter(bundle, tmp_path / "present.log") as url:
        check_and_shoot(projector_page, url, folder, bundle)
    quantize(folder / "present-grid.png", folder / "present-pair.png")


def quantize(*paths: Path) -> None:
    """256 colours: a fraction of the size, no visible loss for a page."""
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
