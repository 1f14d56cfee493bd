"""Talk mode: play saved run bundles back on a projector, every method in sync, the numbers beside them.

``python -m vos present PATH`` starts a Streamlit page on this file. PATH is a run bundle (folder or .zip, from
``python -m vos run --zip`` or the app's download), or a folder of them. Nothing here needs a GPU, weights, the
methods or the network: a bundle holds its input frames and every method's masks (``vos.bundle``).

The page: a grid of the methods' results (input first) with one frame slider and one play/pause for all tiles and
an overlay / mask only / contour only switch; a pair view (two methods with a wipe, or a map of where they
disagree); the per-method table; the benchmark charts (``vos.bench``'s figures) when several runs or a benchmark
file are given. Exports for slides: the grid of one frame as PNG and the whole grid as an H.264 MP4, method names
and frame number burnt in; ``--png`` / ``--mp4`` make them without the page.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vos import bundle as vbundle
from vos import masks as vmasks
from vos.bundle import BundleError, MethodRecord, RunBundle, Status, find_bundles
from vos.errors import VosError
from vos.video import resize_frame, write_mp4

log = logging.getLogger(__name__)

RUN_DIR_ENV = "VOS_PRESENT_DIR"
BENCH_ENV = "VOS_PRESENT_BENCH"  # benchmark results files, os.pathsep-separated
DISPLAY_SIDE = 960  # tiles go to the browser at most this long: a third of a 1080p projector's width, with room
MIN_TICK_S = 0.08  # playback cannot refresh the page faster than this; slower clips play at their own rate
SPEEDS = {"¼×": 0.25, "½×": 0.5, "1×": 1.0}
GRID_COLUMNS = 3  # input + four methods in two rows: fits 1920x1080 without scrolling
EXPORT_TILE_WIDTH = 640  # exports: three columns make a slide about 1920 wide, whatever the clip's size
DISAGREE_COLOURS = {  # the pair view's difference map
    "only A": (255, 150, 30),
    "only B": (40, 170, 255),
    "different objects": (235, 40, 235),
}


class ExportError(VosError, ValueError):
    """An export that cannot be made as asked (an unknown method, a frame outside the clip...)."""


class Style(StrEnum):
    """How a method's label maps are drawn."""

    OVERLAY = "overlay"
    MASK = "mask only"
    CONTOUR = "contour only"


# --------------------------------------------------------------------------------------------------------------
# Drawing one tile


def _edge_width(size: tuple[int, int]) -> int:
    """Contour thickness that still reads when a tile is a third of a projected screen wide."""
    return max(2, round(min(size) / 160))


def draw(frame: np.ndarray | None, label_map: np.ndarray | None, style: Style, size: tuple[int, int]) -> np.ndarray:
    """One tile's image: ``label_map`` on ``frame`` in ``style``, in the app's palette colours.

    Without a frame (an old bundle whose clip is gone) the objects are drawn on black; without a label map the
    frame is shown dimmed.
    """
    canvas = frame if frame is not None else np.zeros((*size, 3), np.uint8)
    if label_map is None:
        return _dimmed(canvas) if frame is not None else canvas
    label_map = vmasks.resize_labels(label_map, canvas.shape[:2])
    if style == Style.MASK:
        return vmasks.palette()[label_map]
    if style == Style.CONTOUR:
        out = canvas.copy()
        edges = vmasks.object_edges(label_map, _edge_width(canvas.shape[:2]))
        out[edges] = vmasks.palette()[label_map[edges]]
        return out
    return vmasks.overlay(canvas, label_map)


def _dimmed(frame: np.ndarray) -> np.ndarray:
    grey = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((grey * 0.4).astype(np.uint8)[..., None], 3, axis=2)


def _display(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    scale = side / max(h, w)
    return resize_frame(image, (max(1, round(h * scale)), max(1, round(w * scale))))


@dataclass
class TileView:
    """A tile of the grid: its image, what it shows, and its numbers or why the method stopped."""

    image: np.ndarray
    title: str
    detail: str  # variant and task
    status: str  # numbers, or what went wrong
    ok: bool = True


def stopped_line(record: MethodRecord, num_frames: int) -> str:
    """Why a method has no mask on a frame: where it stopped and why."""
    label = vbundle.status_label(record.status)
    where = f" after {record.frames_done}/{num_frames} frames" if record.frames_done else ""
    reason = f": {record.error}" if record.error and record.status != Status.OOM else ""
    return f"{label}{where}{reason}"


def input_tile(bundle: RunBundle, index: int, frame: np.ndarray | None, style: Style) -> TileView:
    prompt = bundle.prompt if index == 0 else None
    if prompt is not None:
        image = draw(frame, prompt, style, bundle.size)
    else:
        image = frame if frame is not None else np.zeros((*bundle.size, 3), np.uint8)
    title = "Input" + (" + prompt" if prompt is not None else "")
    return TileView(image, title, bundle.name, f"frame {index + 1}/{bundle.num_frames}")


def method_tile(
    bundle: RunBundle, record: MethodRecord, index: int, frame: np.ndarray | None, style: Style
) -> TileView:
    mask = bundle.mask(record.key, index)
    image = draw(frame, mask, style, bundle.size)
    status = record.status_line() if record.ok else stopped_line(record, bundle.num_frames)
    return TileView(image, record.title, f"{record.variant} · {record.task_words}", status, record.ok)


def grid_tiles(bundle: RunBundle, index: int, keys: Sequence[str], style: Style) -> list[TileView]:
    """The input and one tile per chosen method, for frame ``index``."""
    frame = bundle.frame(index)
    tiles = [input_tile(bundle, index, frame, style)]
    for record in bundle.records:
        if record.key in keys:
            tiles.append(method_tile(bundle, record, index, frame, style))
    return tiles


def grid_image(
    bundle: RunBundle,
    index: int,
    keys: Sequence[str],
    style: Style = Style.OVERLAY,
    *,
    layout: vmasks.GridLayout | None = None,
) -> np.ndarray:
    """The grid of frame ``index`` as one image, names, numbers and frame number burnt in (slides, MP4)."""
    tiles = [
        vmasks.Tile(t.image, f"{t.title} · {t.detail}" if t.detail else t.title, t.status, t.ok)
        for t in grid_tiles(bundle, index, keys, style)
    ]
    return vmasks.compose_grid(
        tiles, columns=min(GRID_COLUMNS, len(tiles)), tile_width=EXPORT_TILE_WIDTH, layout=layout
    )


# --------------------------------------------------------------------------------------------------------------
# Two methods


def wipe_image(left: np.ndarray, right: np.ndarray, position: float) -> np.ndarray:
    """``left`` up to ``position`` (0..1 of the width), ``right`` after it, and a white line between them."""
    out = right.copy()
    width = out.shape[1]
    cut = int(round(np.clip(position, 0, 1) * width))
    out[:, :cut] = left[:, :cut]
    line = max(2, width // 300)
    out[:, max(0, cut - line // 2) : min(width, cut + (line + 1) // 2)] = 255
    return out


@dataclass
class Disagreement:
    image: np.ndarray
    agreement: float | None  # IoU of the two label maps over all objects; None when neither has any object
    only_a: float  # fraction of the frame
    only_b: float
    different: float


def difference_map(frame: np.ndarray | None, mask_a: np.ndarray, mask_b: np.ndarray) -> Disagreement:
    """Where two methods disagree: pixels only A calls an object, only B does, or both with different ids, in
    bright colours over the dimmed frame; where they agree on an object, the frame in its own colours."""
    size = mask_a.shape[:2]
    base = frame if frame is not None else np.zeros((*size, 3), np.uint8)
    a = vmasks.resize_labels(mask_a, base.shape[:2])
    b = vmasks.resize_labels(mask_b, base.shape[:2])
    out = _dimmed(base)
    agree = (a == b) & (a > 0)
    out[agree] = base[agree]
    regions = {
        "only A": (a > 0) & (b == 0),
        "only B": (b > 0) & (a == 0),
        "different objects": (a > 0) & (b > 0) & (a != b),
    }
    for name, where in regions.items():
        out[where] = DISAGREE_COLOURS[name]
    union = int(((a > 0) | (b > 0)).sum())
    total = a.size
    return Disagreement(
        out,
        float(agree.sum()) / union if union else None,
        float(regions["only A"].sum()) / total,
        float(regions["only B"].sum()) / total,
        float(regions["different objects"].sum()) / total,
    )


# --------------------------------------------------------------------------------------------------------------
# Exports for slides


def _check_keys(bundle: RunBundle, keys: Sequence[str] | None) -> list[str]:
    ran = [m["key"] for m in bundle.methods]
    if keys is None:
        return ran
    unknown = [k for k in keys if k not in ran]
    if unknown:
        raise ExportError(f"{', '.join(unknown)} did not run in {bundle.label}; it holds {', '.join(ran)}.")
    return list(keys)


def png_bytes(bundle: RunBundle, index: int, keys: Sequence[str] | None = None, style: Style = Style.OVERLAY) -> bytes:
    """The grid of frame ``index`` (0-based) as PNG bytes."""
    if not 0 <= index < bundle.num_frames:
        raise ExportError(f"frame {index + 1} is outside this {bundle.num_frames}-frame run (frames are 1..N).")
    buffer = io.BytesIO()
    Image.fromarray(grid_image(bundle, index, _check_keys(bundle, keys), style)).save(buffer, format="PNG")
    return buffer.getvalue()


def export_mp4(
    bundle: RunBundle,
    path: str | Path,
    keys: Sequence[str] | None = None,
    style: Style = Style.OVERLAY,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Every frame's grid as an H.264 MP4 at the clip's frame rate (plays in PowerPoint, Keynote and browsers)."""
    keys = _check_keys(bundle, keys)
    first = grid_tiles(bundle, 0, keys, style)
    layout = vmasks.grid_layout(
        [vmasks.Tile(t.image, t.title, t.status, t.ok) for t in first],
        columns=min(GRID_COLUMNS, len(first)),
        tile_width=EXPORT_TILE_WIDTH,
    )

    def frames():
        for index in range(bundle.num_frames):
            yield grid_image(bundle, index, keys, style, layout=layout)
            if progress:
                progress(index + 1, bundle.num_frames)

    return write_mp4(frames(), path, fps=bundle.fps)


def export_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vos-present-exports"


def export_name(bundle: RunBundle, what: str, suffix: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in bundle.name)[:40] or "run"
    return f"{stem}_{what}{suffix}"


# --------------------------------------------------------------------------------------------------------------
# Charts: several runs, or benchmark files, through vos.bench's figures


def runs_as_results(bundles: Sequence[RunBundle]) -> dict[str, Any]:
    """Runs as a benchmark results dict (one point per method and run, at the run's working resolution), so that
    ``vos.bench``'s figures draw them."""
    from vos import bench

    points = []
    for bundle in bundles:
        h, w = bundle.work_size
        for r in bundle.records:
            if r.status in (Status.PENDING, Status.RUNNING) or (r.ok and (r.fps is None or r.peak_memory_mib is None)):
                continue
            points.append(
                {
                    "method": r.key,
                    "variant": r.variant,
                    "title": r.title,
                    "task": r.task,
                    "resolution": int(min(h, w)),
                    "size": [int(h), int(w)],
                    "frames": bundle.num_frames,
                    "repeats": 1,
                    "status": r.status if r.status in bench.STATUSES else bench.FAILED,
                    "reason": r.error,
                    "device": r.device,
                    "load_s": r.load_s,
                    "first_frame_s": r.first_frame_s,
                    "fps": r.fps,
                    "frames_done": r.frames_done,
                    "peak_memory_mib": r.peak_memory_mib,
                    "memory_kind": r.memory_kind,
                    "reserved_memory_mib": r.reserved_memory_mib,
                    # the charts' J&F axis is in percent, as the papers report it
                    "scores": {k: 100 * v for k, v in r.scores.items()} if r.scores else None,
                    "config": r.config,
                }
            )
    first = bundles[0]
    hardware = {**first.hardware, "device": first.settings.get("device", "cpu")}
    label = bench.hardware_label(hardware)
    if any(bench.hardware_label({**b.hardware, "device": b.settings.get("device", "cpu")}) != label for b in bundles):
        label += " (and other machines: see each run)"
    settings = first.settings
    return {
        "format": bench.FORMAT,
        "version": bench.FORMAT_VERSION,
        "created": first.data.get("created", ""),
        "hardware": {**hardware, "label": label},
        "settings": {
            "device": settings.get("device", "cpu"),
            "dtype": settings.get("dtype") or "fp32",
            "weights": settings.get("weights") or "hub",
            "frames": max(b.num_frames for b in bundles),
        },
        "points": points,
    }


CHART_NAMES = ["Peak memory", "Speed", "Accuracy vs speed"]


def chart_figures(results: dict[str, Any], *, from_runs: bool) -> list[Any]:
    """The app's benchmark charts (memory, speed, accuracy versus speed) for ``results``."""
    from vos import bench

    figures = [bench.memory_figure(results), bench.fps_figure(results), bench.accuracy_speed_figure(results)]
    if from_runs:
        # bench describes its synthetic sweep clips; these points are runs on real clips
        clips = f"{results['settings']['dtype']} · runs of up to {results['settings']['frames']} frames"
        for figure in figures:
            figure.layout.title.text = figure.layout.title.text.replace(bench.describe_settings(results), clips)
    return figures


# --------------------------------------------------------------------------------------------------------------
# The Streamlit page

CSS = """
<style>
.block-container { padding: 2.4rem 1.6rem 0.5rem 1.6rem !important; max-width: 100% !important; }
h1 { font-size: 2.1rem !important; padding: 0 0 0.1rem 0 !important; }
.vos-sub { font-size: 1.05rem; opacity: 0.75; margin: -0.4rem 0 0.2rem 0; }
.vos-tile-head { padding: 0.25rem 0.1rem 0.2rem 0.1rem; line-height: 1.25; }
.vos-tile-title { font-size: 1.45rem; font-weight: 700; white-space: nowrap; overflow: hidden;
                  text-overflow: ellipsis; }
.vos-tile-title small { font-size: 0.95rem; font-weight: 400; opacity: 0.7; margin-left: 0.4rem; }
.vos-tile-status { font-size: 1.1rem; opacity: 0.85; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.vos-bad .vos-tile-status { color: #ff5c5c; opacity: 1; font-weight: 600; }
.vos-bad .vos-tile-title { color: #ff8a8a; }
.vos-right { text-align: right; }
[data-testid="stImage"] img { max-height: var(--vos-tile-h, 60vh); object-fit: contain; border-radius: 4px; }
.vos-legend { font-size: 1.05rem; }
.vos-legend span { margin-right: 1.1rem; white-space: nowrap; }
.vos-legend i { display: inline-block; width: 0.95rem; height: 0.95rem; border-radius: 3px; margin-right: 0.35rem;
                vertical-align: -0.1rem; }
.vos-table { font-size: 1.3rem; border-collapse: collapse; width: 100%; }
.vos-table th, .vos-table td { padding: 0.45rem 0.9rem; border-bottom: 1px solid rgba(128,128,128,0.35);
                               text-align: left; }
.vos-table .vos-num { text-align: right; font-variant-numeric: tabular-nums; }
.vos-table .vos-bad { color: #ff5c5c; font-weight: 600; }
.vos-frame-no { font-size: 1.5rem; font-weight: 700; text-align: right; padding-top: 0.35rem;
                font-variant-numeric: tabular-nums; white-space: nowrap; }
</style>
"""


def _tile_height_css(rows: int) -> str:
    """Tiles shrink so that ``rows`` of them, with their headers and the controls, fit the window's height."""
    return f"<style>:root {{ --vos-tile-h: calc((100vh - 15.5rem) / {rows} - 4.6rem); }}</style>"


def _tile_head(tile: TileView) -> str:
    cls = "vos-tile-head" + ("" if tile.ok else " vos-bad")
    detail = f"<small>{html.escape(tile.detail)}</small>" if tile.detail else ""
    return (
        f'<div class="{cls}"><div class="vos-tile-title">{html.escape(tile.title)}{detail}</div>'
        f'<div class="vos-tile-status" title="{html.escape(tile.status)}">{html.escape(tile.status) or "&nbsp;"}'
        "</div></div>"
    )


def _legend_html(bundle: RunBundle) -> str:
    ids = list(bundle.object_ids)
    for record in bundle.records:
        ids += [i for i in record.extra_ids if i not in ids]
    extras = {i for r in bundle.records for i in r.extra_ids}
    labels = {i: (f"extra {i}" if i in extras else f"object {i}") for i in ids}
    items = "".join(
        f'<span><i style="background:{e.hex}"></i>{html.escape(e.label)}</span>'
        for e in vmasks.legend(ids[:12], labels)
    )
    return f'<div class="vos-legend">{items}</div>'


def _table_html(bundle: RunBundle) -> str:
    headers, rows = vbundle.table_rows(bundle.records)
    numeric = {"fps", "Peak memory (MiB)", "Load (s)", "J&F"}

    def cell(header: str, value: object) -> str:
        classes = []
        if header in numeric:
            classes.append("vos-num")
        if header == "Status" and value != Status.OK.label:
            classes.append("vos-bad")
        text = "–" if value is None else (f"{value:,}" if header == "Peak memory (MiB)" else str(value))
        return f'<td class="{" ".join(classes)}">{html.escape(text)}</td>'

    head = "".join(f'<th class="{"vos-num" if h in numeric else ""}">{html.escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(cell(h, v) for h, v in zip(headers, row)) + "</tr>" for row in rows)
    return f'<table class="vos-table"><tr>{head}</tr>{body}</table>'


def _frames_note(bundle: RunBundle) -> str | None:
    if bundle.has_frames:
        return None
    if bundle.frames_available:
        return "This bundle holds no input frames (an older version made it); they are read from the clip's source."
    return (
        "This bundle holds no input frames (an older version made it) and its clip is not where the run found it: "
        "the masks are shown on black."
    )


def render(root: str, bench_files: Sequence[str] = ()) -> None:
    import streamlit as st

    st.set_page_config(page_title="vos-compare · talk", layout="wide", initial_sidebar_state="expanded")
    st.markdown(CSS, unsafe_allow_html=True)
    try:
        bundles = find_bundles(root)
    except BundleError as err:
        st.error(str(err))
        return
    state = st.session_state
    state.setdefault("playing", False)

    # ---- sidebar: which run, what to show
    labels = [b.label for b in bundles]
    choice = st.sidebar.selectbox("Run", labels, key="run") if len(bundles) > 1 else labels[0]
    bundle = bundles[labels.index(choice)]
    charts = len(bundles) > 1 or bool(bench_files)
    views = ["Grid", "Pair", "Numbers"] + (["Charts"] if charts else [])
    view = st.sidebar.radio("View", views, key="view", horizontal=True)
    keys = [m["key"] for m in bundle.methods]
    titles = {r.key: f"{r.title} · {r.variant}" for r in bundle.records}
    shown = st.sidebar.multiselect("Methods", keys, default=keys, format_func=titles.get, key=f"methods-{choice}")
    speed = st.sidebar.radio("Playback speed", list(SPEEDS), index=2, key="speed", horizontal=True)
    style = Style(st.sidebar.radio("Masks", [s.value for s in Style], key="style", horizontal=True))
    _export_sidebar(st, bundle, shown, style)
    with st.sidebar.expander("This run"):
        settings = bundle.settings
        st.markdown(
            "\n".join(
                [f"- device: {settings.get('device', '?')}", f"- precision: {settings.get('dtype') or 'fp32'}"]
                + [f"- {k}: {v}" for k, v in bundle.hardware.items()]
                + [f"- created: {bundle.data.get('created', '?')}"]
                + [f"- {note}" for note in bundle.clip.get("notes", [])]
            )
        )

    # ---- header
    h, w = bundle.work_size
    st.title(bundle.name)
    st.markdown(
        f'<div class="vos-sub">{bundle.num_frames} frames · methods ran at {w}x{h} · {bundle.fps:g} fps · '
        f"{html.escape(str(bundle.settings.get('device', '?')))}</div>",
        unsafe_allow_html=True,
    )
    note = _frames_note(bundle)
    if note:
        st.info(note)

    if view == "Numbers":
        _numbers_view(st, bundle)
        return
    if view == "Charts":
        _charts_view(st, bundles, bench_files)
        return
    if view == "Pair" and len(keys) < 2:
        st.warning("The pair view needs a run with two methods or more; this one ran one.")
        return
    pair = None
    if view == "Pair":
        left, right, mode_col = st.columns([3, 3, 3])
        a = left.selectbox("Method A (left)", keys, index=0, format_func=titles.get, key=f"pair-a-{choice}")
        b = right.selectbox("Method B (right)", keys, index=1, format_func=titles.get, key=f"pair-b-{choice}")
        mode = mode_col.radio("Compare by", ["Wipe", "Difference"], horizontal=True, key="pair-mode")
        pair = (a, b, mode)
    elif not shown:
        st.warning("Choose at least one method in the sidebar.")
        return
    else:
        st.markdown(_legend_html(bundle), unsafe_allow_html=True)
    tick = max(MIN_TICK_S, 1 / (bundle.fps * SPEEDS[speed])) if state.playing else None
    st.fragment(run_every=tick)(_stage)(bundle, choice, shown, style, pair)


def _stage(bundle: RunBundle, choice: str, keys: list[str], style: Style, pair: tuple[str, str, str] | None) -> None:
    """The frame controls and the tiles: a fragment, so that playing redraws only this."""
    import streamlit as st

    state = st.session_state
    count = bundle.num_frames
    state["frame"] = min(max(1, int(state.get("frame", 1))), count)  # another run may be shorter
    if state.playing:
        state["frame"] = state["frame"] % count + 1
    play, slider, number, export = st.columns([1.1, 9, 1.4, 1.6], vertical_alignment="center")
    if play.button("❚❚ Pause" if state.playing else "▶ Play", key="play", width="stretch", disabled=count < 2):
        state.playing = not state.playing
        st.rerun(scope="app")  # playing changes how often the stage redraws: the page sets that up
    if count > 1:
        slider.slider("Frame", 1, count, key="frame", label_visibility="collapsed")
    index = int(state["frame"]) - 1
    number.markdown(f'<div class="vos-frame-no">{index + 1} / {count}</div>', unsafe_allow_html=True)
    if pair is None:
        export.download_button(
            "⬇ PNG",
            data=lambda: png_bytes(bundle, index, keys, style),
            file_name=export_name(bundle, f"frame{index + 1:05d}", ".png"),
            mime="image/png",
            key="png",
            on_click="ignore",
            width="stretch",
            help="This frame of the grid, method names and frame number burnt in",
        )
        _grid(st, bundle, index, keys, style)
    else:
        _pair(st, bundle, index, style, *pair)


def _grid(st, bundle: RunBundle, index: int, keys: list[str], style: Style) -> None:
    tiles = grid_tiles(bundle, index, keys, style)
    columns = min(GRID_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    st.markdown(_tile_height_css(rows), unsafe_allow_html=True)
    for start in range(0, len(tiles), columns):
        cells = st.columns(columns, gap="small")
        for cell, tile in zip(cells, tiles[start : start + columns]):
            cell.markdown(_tile_head(tile), unsafe_allow_html=True)
            cell.image(_display(tile.image), output_format="JPEG", width="stretch")


_PAIR_HEIGHT_CSS = "<style>:root { --vos-tile-h: calc(100vh - 26rem); }</style>"
# Share of the page's width a pair image takes per unit of aspect ratio, so that at 1920x1080 it fills the height
# left under the controls (4:3: 56%, 16:9: 75%); its header and wipe slider line up with it.
_PAIR_WIDTH_PER_ASPECT = 0.42


def _centred(st, aspect: float):
    share = min(1.0, _PAIR_WIDTH_PER_ASPECT * aspect)
    if share > 0.95:
        return st.container()
    side = (1 - share) / 2
    return st.columns([side, share, side])[1]


def _pair(st, bundle: RunBundle, index: int, style: Style, a: str, b: str, mode: str) -> None:
    frame = bundle.frame(index)
    rec_a, rec_b = bundle.record(a), bundle.record(b)
    tile_a = method_tile(bundle, rec_a, index, frame, style)
    tile_b = method_tile(bundle, rec_b, index, frame, style)
    st.markdown(_PAIR_HEIGHT_CSS, unsafe_allow_html=True)
    h, w = tile_a.image.shape[:2]
    centre = _centred(st, w / h)
    heads = centre.columns(2)
    heads[0].markdown(_tile_head(tile_a), unsafe_allow_html=True)
    heads[1].markdown(
        _tile_head(tile_b).replace('class="vos-tile-head', 'class="vos-right vos-tile-head'), unsafe_allow_html=True
    )
    if mode == "Wipe":
        position = centre.slider("Wipe", 0, 100, 50, key="wipe", format="%d%%", label_visibility="collapsed")
        wiped = wipe_image(tile_a.image, tile_b.image, position / 100)
        centre.image(_display(wiped, 1600), output_format="JPEG", width="stretch")
        return
    mask_a, mask_b = bundle.mask(a, index), bundle.mask(b, index)
    if mask_a is None or mask_b is None:
        missing = rec_a if mask_a is None else rec_b
        st.warning(f"{missing.title} has no mask for frame {index + 1} ({stopped_line(missing, bundle.num_frames)}).")
        return
    diff = difference_map(frame, mask_a, mask_b)
    agreement = "—" if diff.agreement is None else f"{diff.agreement:.3f}"
    names = {"only A": f"only {rec_a.title}", "only B": f"only {rec_b.title}", "different objects": "other object"}
    legend = "".join(
        f'<span><i style="background:#{r:02x}{g:02x}{b_:02x}"></i>{html.escape(names[name])}</span>'
        for name, (r, g, b_) in DISAGREE_COLOURS.items()
    )
    centre.markdown(
        f'<div class="vos-legend">{legend}<span>agreement (IoU of all objects): <b>{agreement}</b></span>'
        f"<span>disagree on {100 * (diff.only_a + diff.only_b + diff.different):.1f}% of the frame</span></div>",
        unsafe_allow_html=True,
    )
    centre.image(_display(diff.image, 1600), output_format="JPEG", width="stretch")


def _numbers_view(st, bundle: RunBundle) -> None:
    st.markdown(_table_html(bundle), unsafe_allow_html=True)
    kinds = {r.memory_kind for r in bundle.records if r.memory_kind}
    memory = "peak GPU memory allocated by PyTorch" if kinds == {"cuda_allocated"} else "peak resident memory (RAM)"
    st.caption(f"fps counts segmentation only (loading is timed apart). Memory: {memory} during each method's run.")
    for record in bundle.records:
        if not record.ok:
            shown = " Its tiles show what it produced." if record.frames_done else ""
            st.error(f"**{record.title}** — {stopped_line(record, bundle.num_frames)}.{shown}")
            if record.hint:
                st.caption(f"What to do: {record.hint}")


def _charts_view(st, bundles: Sequence[RunBundle], bench_files: Sequence[str]) -> None:
    from vos import bench

    sources: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    if len(bundles) > 1:
        sources[f"These {len(bundles)} runs"] = (runs_as_results(bundles), None)
    for path in bench_files:
        try:
            sources[f"Benchmark: {Path(path).name}"] = (bench.load_results(path), None)
        except bench.BenchError as err:
            sources[f"Benchmark: {Path(path).name}"] = (None, str(err))
    name = (
        st.radio("Charts of", list(sources), horizontal=True, key="charts-of")
        if len(sources) > 1
        else next(iter(sources))
    )
    results, problem = sources[name]
    if results is None:
        st.error(problem)
        return
    figures = chart_figures(results, from_runs=name.startswith("These"))
    # One chart at a time, as large as the screen allows: a projected chart must be read from the back of the room.
    chart = st.radio("Chart", CHART_NAMES, horizontal=True, key="chart", label_visibility="collapsed")
    figure = figures[CHART_NAMES.index(chart)]
    figure.update_layout(height=720, font={"size": 17})
    st.plotly_chart(figure, width="stretch", theme=None)


def _export_sidebar(st, bundle: RunBundle, keys: list[str], style: Style) -> None:
    st.sidebar.markdown("**Export for slides**")
    made = bundle.data.get("created", "")
    digest = hashlib.sha256(f"{bundle.path.resolve()}|{made}|{','.join(keys)}|{style}".encode()).hexdigest()[:12]
    target = export_dir() / digest / export_name(bundle, "grid", ".mp4")
    if not target.exists() and st.sidebar.button("Render the grid as MP4", key="render-mp4", disabled=not keys):
        bar = st.sidebar.progress(0.0, text="Rendering…")
        export_mp4(bundle, target, keys, style, progress=lambda done, total: bar.progress(done / total))
        bar.empty()
    if target.exists():
        st.sidebar.download_button(
            "⬇ Grid MP4 (H.264)",
            data=target.read_bytes(),
            file_name=target.name,
            mime="video/mp4",
            key="mp4",
            on_click="ignore",
        )
    st.sidebar.caption("The frame's PNG: the ⬇ PNG button beside the slider.")


# --------------------------------------------------------------------------------------------------------------
# Command line


def command_present(args) -> int:
    """`python -m vos present PATH`: check PATH, then export (--png, --mp4) or start the Streamlit page."""
    bundles = find_bundles(args.run_dir)  # fail here, with a clear message, rather than in the browser
    for path in args.bench:
        from vos import bench

        bench.load_results(path)  # the same: a bad benchmark file is named now
    if args.png or args.mp4:
        return _export(args, bundles)
    command = [
        sys.executable, "-m", "streamlit", "run", __file__, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal", "--theme.base", args.theme, "--theme.baseFontSize", "18",
    ]  # fmt: skip
    env = {
        **os.environ,
        RUN_DIR_ENV: str(Path(args.run_dir).resolve()),
        BENCH_ENV: os.pathsep.join(str(Path(p).resolve()) for p in args.bench),
    }
    print(f"Presenter on http://localhost:{args.port} (Ctrl+C stops it)")
    server = subprocess.Popen(command, env=env)
    # Stopping this process (Ctrl+C, or SIGTERM from a script or a test) stops the server with it.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def _export(args, bundles: list[RunBundle]) -> int:
    if len(bundles) > 1:
        names = ", ".join(b.label for b in bundles)
        raise ExportError(f"{args.run_dir} holds {len(bundles)} runs ({names}); give one of them to export.")
    bundle = bundles[0]
    keys = [k.strip() for k in args.methods.split(",") if k.strip()] if args.methods else None
    style = Style(args.style)
    if args.png:
        index = (args.frame or 1) - 1
        path = Path(args.png)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(bundle, index, keys, style))
        print(f"Frame {index + 1}: {path}")
    if args.mp4:
        print(f"Grid video: {export_mp4(bundle, args.mp4, keys, style)}")
    return 0


if __name__ == "__main__" and os.environ.get(RUN_DIR_ENV):
    render(os.environ[RUN_DIR_ENV], [p for p in os.environ.get(BENCH_ENV, "").split(os.pathsep) if p])
