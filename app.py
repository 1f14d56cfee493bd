"""vos-compare's web app: Compare (upload, prompt, run side by side), Benchmark and Methods pages.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080
    VOS_HOST=0.0.0.0 VOS_PORT=8080 python app.py
    python app.py --allow-local-weights   # your own machine: checkpoint paths may be typed in the app

The same file runs as a Hugging Face Space (README front matter: sdk gradio, app_file app.py); the Space's
GRADIO_SERVER_NAME/GRADIO_SERVER_PORT are honoured. It starts offline: methods whose weights are missing say so
in their tile, with the command that fetches them, and the others run.

This file only assembles the pages, sets up the queue and launches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from types import ModuleType

import gradio as gr
from PIL import Image

from pages import compare, methods
from pages.compare import UploadLimits
from vos.video import DecodeLimits

log = logging.getLogger("vos.app")

TITLE = "vos-compare"
TAGLINE = "Video object segmentation methods side by side, on your clip"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def _optional_page(name: str) -> ModuleType | None:
    """A page another module provides, when it is there (the app still starts without it)."""
    try:
        return importlib.import_module(f"pages.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"pages.{name}":
            raise  # the page exists but something it imports is missing: a real error
        log.warning("pages/%s.py is missing: its page is left out", name)
        return None


def _header(page: str) -> None:
    gr.Navbar(main_page_name="Compare")  # one per page: without it a route's navbar calls the main page "Home"
    gr.HTML(
        f'<div class="vos-header"><h1>{TITLE}</h1><p>{TAGLINE}</p><span class="vos-header-page">{page}</span></div>'
    )


def build_app(limits: UploadLimits | None = None) -> gr.Blocks:
    """The whole app, queued: one GPU job at a time (the pages put their GPU work on pages.GPU_QUEUE)."""
    benchmark = _optional_page("benchmark")
    with gr.Blocks(title=TITLE, delete_cache=(3600, 24 * 3600)) as demo:
        _header("Upload a clip, mark the objects, run every method, compare.")
        compare.build(limits)
    with demo.route("Benchmark", "benchmark"):
        _header("Memory and speed versus resolution.")
        if benchmark is not None:
            benchmark.build()
        else:
            gr.Markdown("The benchmark page is not part of this checkout (pages/benchmark.py is missing).")
    with demo.route("Methods", "methods"):
        _header("What each method is, where it comes from, and whether its weights are here.")
        methods.build()
    # Other events (prompt previews, frame slider) may run side by side; GPU work has its own limit of 1.
    demo.queue(default_concurrency_limit=4, max_size=int(os.environ.get("VOS_QUEUE_SIZE", "32")))
    return demo


def css() -> str:
    pages = [compare, methods, _optional_page("benchmark")]
    return APP_CSS + "".join(getattr(page, "CSS", "") for page in pages if page is not None)


def theme() -> gr.themes.Theme:
    # System fonts: a theme's default Google fonts would be fetched by the browser, and the app must work offline.
    return gr.themes.Soft(
        primary_hue="indigo",
        neutral_hue="slate",
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def launch_kwargs(limits: UploadLimits | None = None) -> dict:
    """What ``launch()`` needs besides host and port (shared with the tests that launch the app)."""
    limits = limits or UploadLimits.from_env()
    return {
        "css": css(),
        "theme": theme(),
        "max_file_size": f"{limits.max_upload_mb}mb",
        "footer_links": ["api", "gradio"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("VOS_HOST") or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST,
        help="address to listen on ($VOS_HOST, $GRADIO_SERVER_NAME; default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("VOS_PORT") or os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT),
        help="port ($VOS_PORT, $GRADIO_SERVER_PORT; default 7860)",
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument(
        "--allow-local-weights",
        action="store_true",
        help="let users type checkpoint paths on this machine (off: hub, random, hf://... and uploaded files only; "
        "never on a public server)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.allow_local_weights:
        os.environ[compare.LOCAL_WEIGHTS_ENV] = "1"
    # Pillow's own decompression-bomb guard at the app's frame limit, for any image a library opens on our behalf.
    Image.MAX_IMAGE_PIXELS = DecodeLimits.from_env().max_pixels
    demo = build_app()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())


APP_CSS = """
.vos-header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px; padding: 4px 2px 10px; }
.vos-header h1 { margin: 0 !important; font-size: 1.6rem; letter-spacing: -0.01em; }
.vos-header p { margin: 0 !important; color: var(--body-text-color-subdued); }
.vos-header-page { flex-basis: 100%; font-size: 0.92rem; }
"""


if __name__ == "__main__":
    main()
