"""Streamlit presenter for saved run bundles: show a comparison in a talk, no GPU and no methods needed.

``python -m vos present RUN_DIR`` starts Streamlit on this file. RUN_DIR is one bundle written by
``python -m vos run`` (or the app) or a folder of such bundles; the page shows the side-by-side video, the
per-method table, a frame-by-frame grid, and what exactly ran (variant, options, weights).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vos import masks as vmasks
from vos.errors import VosError

RUN_DIR_ENV = "VOS_PRESENT_DIR"


class BundleError(VosError, ValueError):
    """A folder that is not a run bundle (or holds none)."""


@dataclass
class Bundle:
    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["clip"]["name"]

    @property
    def methods(self) -> list[dict[str, Any]]:
        return self.data["methods"]

    @property
    def num_frames(self) -> int:
        return int(self.data["clip"]["num_frames"])

    @property
    def video(self) -> Path | None:
        name = self.data.get("side_by_side")
        return self.path / name if name and (self.path / name).exists() else None

    def mask(self, key: str, index: int) -> np.ndarray | None:
        path = self.path / "masks" / key / f"{index:05d}.png"
        return vmasks.read_palette_png(path) if path.exists() else None

    @functools.cached_property
    def source_clip(self):
        """The clip the run read, when it is still where the run found it (else None)."""
        from vos.video import Limits, VideoError, open_clip

        source = self.data["clip"].get("source")
        if not source or not Path(source).exists():
            return None
        try:
            return open_clip(source, Limits(max_frames=self.num_frames), fps=self.data["clip"].get("fps"))
        except VideoError:
            return None

    def input_frame(self, index: int) -> np.ndarray | None:
        """Frame ``index`` at the run's output size, from the clip's source; None when the source is gone."""
        from vos.video import VideoError, resize_frame

        clip = self.source_clip
        if clip is None or index >= clip.num_frames:
            return None
        try:
            frame = clip.frame(index, output_size=True)
        except VideoError:
            return None
        return resize_frame(frame, tuple(self.data["clip"]["size"]))

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.methods:
            rows.append(
                {
                    "method": m["title"],
                    "variant": m["variant"],
                    "task": "unsupervised" if m["task"] == "unsup" else "semi-supervised",
                    "status": m["status"],
                    "fps": None if m.get("fps") is None else round(m["fps"], 2),
                    "peak memory (MiB)": m.get("peak_memory_mib"),
                    "load (s)": None if m.get("load_s") is None else round(m["load_s"], 2),
                    "J&F": (m.get("scores") or {}).get("J&F"),
                    "device": m.get("device"),
                }
            )
        return rows


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    try:
        data = json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} holds no run.json; give a folder written by `python -m vos run`.") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{path / 'run.json'} is not valid JSON ({err}).") from None
    if "methods" not in data or "clip" not in data:
        raise BundleError(f"{path / 'run.json'} is not a run bundle's record.")
    return Bundle(path, data)


def find_bundles(path: str | Path) -> list[Bundle]:
    """The bundle at ``path``, or every bundle directly inside it."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a folder.")
    if (path / "run.json").exists():
        return [load_bundle(path)]
    bundles = [load_bundle(p) for p in sorted(path.iterdir()) if (p / "run.json").exists()]
    if not bundles:
        raise BundleError(f"{path} holds no run bundle (no run.json in it or in its subfolders).")
    return bundles


def grid_image(bundle: Bundle, index: int, keys: list[str]) -> np.ndarray | None:
    """The comparison grid for one frame, from the source frame and the saved masks; None without the source."""
    from vos.runner import tile_title

    frame = bundle.input_frame(index)
    if frame is None:
        return None
    prompt = vmasks.read_palette_png(bundle.path / "prompt.png") if index == 0 else None
    tiles = [vmasks.Tile(vmasks.overlay(frame, prompt) if prompt is not None else frame, "Input", f"frame {index + 1}")]
    for m in bundle.methods:
        if m["key"] not in keys:
            continue
        mask = bundle.mask(m["key"], index)
        record = _record(m)
        image = vmasks.overlay(frame, mask) if mask is not None else frame
        tiles.append(vmasks.Tile(image, tile_title(record), record.status_line(), ok=record.has_masks))
    return vmasks.compose_grid(tiles)


def _record(data: dict[str, Any]):
    from vos.runner import MethodRecord

    fields = MethodRecord.__dataclass_fields__
    return MethodRecord(**{k: v for k, v in data.items() if k in fields})


# --------------------------------------------------------------------------------------------------------------
# The Streamlit page (runs when Streamlit executes this file)


def render(root: str) -> None:
    import streamlit as st

    st.set_page_config(page_title="vos-compare presenter", layout="wide")
    try:
        bundles = find_bundles(root)
    except BundleError as err:
        st.error(str(err))
        return
    names = [f"{b.name} — {b.path.name}" for b in bundles]
    choice = st.sidebar.selectbox("Run", names) if len(bundles) > 1 else names[0]
    bundle = bundles[names.index(choice)]
    clip = bundle.data["clip"]
    st.title(f"{clip['name']}")
    st.caption(
        f"{clip['num_frames']} frames · {clip['size'][1]}x{clip['size'][0]} · {clip['fps']:g} fps · "
        f"run on {bundle.data.get('settings', {}).get('device', '?')} · {bundle.data.get('created', '')}"
    )
    for note in clip.get("notes", []):
        st.info(note)
    if bundle.video is not None:
        st.video(str(bundle.video))
    st.dataframe(bundle.table(), width="stretch", hide_index=True)
    keys = [m["key"] for m in bundle.methods]
    shown = st.sidebar.multiselect("Methods", keys, default=keys)
    index = st.slider("Frame", 1, bundle.num_frames, 1) - 1
    image = grid_image(bundle, index, shown)
    if image is None:
        st.warning("The clip's source is not where the run found it; frame-by-frame view needs it. The video above "
                   "shows every frame.")  # fmt: skip
    else:
        st.image(image, width="stretch")
    for m in bundle.methods:
        with st.expander(f"{m['title']} — {m['status']}"):
            if m.get("error"):
                st.error(m["error"])
            if m.get("hint"):
                st.write(m["hint"])
            st.json(m.get("config") or {})
    hardware = bundle.data.get("hardware", {})
    st.sidebar.markdown("**Hardware**\n\n" + "\n".join(f"- {k}: {v}" for k, v in hardware.items()))


def command_present(args) -> int:
    """`python -m vos present RUN_DIR`: check the folder, then hand over to Streamlit."""
    find_bundles(args.run_dir)  # fail here, with a clear message, rather than in the browser
    command = [
        sys.executable, "-m", "streamlit", "run", __file__, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    env = {**os.environ, RUN_DIR_ENV: str(Path(args.run_dir).resolve())}
    print(f"Presenter on http://localhost:{args.port} (Ctrl+C stops it)")
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__" and os.environ.get(RUN_DIR_ENV):
    render(os.environ[RUN_DIR_ENV])
