"""Compare page: upload a clip, mark the objects on its first frame, run the methods side by side, inspect, export.

A thin UI: every callback reads component values, calls ``pages.prompting`` / ``pages.results`` / ``vos``, and
returns component values. What a session needs between callbacks is a ``PromptSession`` (paths and mark lists)
in a ``gr.State``. Work that uses the GPU runs in one queue (``concurrency_id=GPU_QUEUE``, one job at a time) and,
on Hugging Face ZeroGPU, through ``spaces.GPU``.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from pages import GPU_QUEUE, api_errors, gpu_task, on_zero_gpu, user_errors, weights_state
from pages import prompting as pr
from pages import results as rs
from vos import masks as vmasks
from vos import prompts as vprompts
from vos import runnable as vrunnable
from vos import specs as vspecs
from vos.device import pick_device, pick_dtype
from vos.methods import UNSUP, MethodInfo, Option, OptionError, available
from vos.specs import MethodSpec
from vos.text import human_size
from vos.video import Limits, env_number

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
CLIP_TYPES = [".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".ogv", ".zip"]

# (label, long side in pixels); 0 = as uploaded. "480p" is the long side of a 16:9 480-line frame.
RESOLUTIONS = [
    ("quick (long side 240 px)", 240),
    ("240p (long side 427 px)", 427),
    ("360p (640 px)", 640),
    ("480p (854 px)", 854),
    ("720p (1280 px)", 1280),
    ("1080p (1920 px)", 1920),
    ("as uploaded", 0),
]
DEFAULT_RESOLUTION = 854  # on a GPU; on a CPU vos.runnable.machine_defaults' smaller one
TOOL_CHOICES = [("⊕ Include", pr.INCLUDE), ("⊖ Exclude", pr.EXCLUDE), ("▭ Box (2 clicks)", pr.BOX)]
WEIGHTS_CHOICES = [("Released weights", "hub"), ("Random weights (speed and memory only)", "random")]
CHECKPOINT_TYPES = [".pth", ".tar", ".safetensors", ".pt", ".ckpt", ".bin"]
DOWNLOAD_LABELS = {"video": "⬇ Side-by-side MP4", "masks": "⬇ Masks (zip)", "bundle": "⬇ Run bundle (zip)"}
RUNNING_NOTE = ""  # while a run goes on, the results area holds only Gradio's queue position and progress bar
PLAY_TICK = 0.1  # seconds between the play timer's ticks; each shows the frame the clip's frame rate has reached


@dataclass(frozen=True)
class UploadLimits:
    """Upload limits, from the environment so a Space can tighten them: VOS_MAX_SIDE, VOS_MAX_FRAMES,
    VOS_MAX_SECONDS, VOS_MAX_UPLOAD_MB, and VOS_RUN_SECONDS (a run's time budget: methods still running then are
    stopped, the ones not started are cancelled). What decoding may cost is bounded apart (``vos.video.DecodeLimits``);
    the disk the sessions use, by VOS_SESSIONS_MB (``pages.prompting``)."""

    max_side: int = 1280
    max_frames: int = 300
    max_seconds: float = 30.0
    max_upload_mb: int = 200
    max_run_seconds: float = 600.0

    @classmethod
    def from_env(cls) -> UploadLimits:
        number = env_number  # a bad value names its variable
        return cls(
            max_side=int(number("VOS_MAX_SIDE", cls.max_side)),
            max_frames=int(number("VOS_MAX_FRAMES", cls.max_frames)),
            max_seconds=number("VOS_MAX_SECONDS", cls.max_seconds),
            max_upload_mb=int(number("VOS_MAX_UPLOAD_MB", cls.max_upload_mb)),
            max_run_seconds=number("VOS_RUN_SECONDS", cls.max_run_seconds),
        )

    @property
    def clip_limits(self) -> Limits:
        return Limits(max_side=self.max_side, max_frames=self.max_frames, max_seconds=self.max_seconds)

    def describe(self) -> str:
        return (
            f"A video or a zip of JPG/PNG frames, up to {self.max_upload_mb} MB. The first {self.max_seconds:g} s "
            f"(at most {self.max_frames} frames) are kept and frames larger than {self.max_side} px are downscaled."
        )


def device_choices() -> list[tuple[str, str]]:
    import torch

    choices = [("auto", "auto")]
    if torch.cuda.is_available():
        choices.append((f"cuda ({torch.cuda.get_device_name(0)})", "cuda"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append(("mps", "mps"))
    choices.append(("cpu", "cpu"))
    return choices


def precision_choices() -> list[tuple[str, str]]:
    """fp32 (the reference) and the reduced precisions this machine's devices have matrix units for: bf16 on a CPU
    with AVX512-BF16 or AMX, fp16 and bf16 on CUDA (``vos.device.fast_dtypes``)."""
    import torch

    from vos.device import fast_dtypes_of

    names = fast_dtypes_of(["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    return [("fp32 (reference)" if name == "fp32" else name, name) for name in names]


# --------------------------------------------------------------------------------------------------------------
# Plain helpers the callbacks use (no components)


def variant_choices(info: MethodInfo, here: dict[str, bool] | None = None) -> list[tuple[str, str]]:
    """(label, variant): a variant whose weights are not on this machine says so (it will report it when run)."""
    here = here or weights_here(info)
    return [(variant if here[variant] else f"{variant} (weights missing)", variant) for variant in info.variants]


def initial_variant(info: MethodInfo, here: dict[str, bool] | None = None) -> str:
    """The variant ticked when the page opens: the one a CLI run without --variant takes (vos.runnable), so that a
    machine without weights runs something real (mixture's rgb variant needs none)."""
    if here is None:
        return vrunnable.runnable_variant(info).variant
    states = {v: vrunnable.WeightsState(needed=True, available=here[v]) for v in info.variants}
    return vrunnable.runnable_variant(info, states).variant


def weights_here(info: MethodInfo) -> dict[str, bool]:
    """Per variant: are its weights on this machine (or is that unknown)? Looked up once per page build."""
    return {variant: weights_state(info, variant).available in (True, None) for variant in info.variants}


def option_component(info: MethodInfo, opt: Option) -> gr.components.Component:
    """The input for one declared option: its type picks the widget; help and the paper's value go in ``info``."""
    note = opt.help + (f" (paper: {opt.format(opt.paper)})" if opt.paper is not None else "")
    common = {
        "label": opt.name,
        "info": note,
        "key": f"opt-{info.key}-{opt.name}",
        "elem_id": f"vos-opt-{info.key}-{opt.name}",
    }
    if opt.choices is not None:
        return gr.Dropdown(choices=[opt.format(c) for c in opt.choices], value=opt.format(opt.default), **common)
    if opt.type is bool:
        return gr.Checkbox(value=bool(opt.default), **common)
    if opt.type is int:
        return gr.Number(value=opt.default, precision=0, **common)
    if opt.type is float:
        return gr.Number(value=opt.default, **common)
    # An option without a default (ba's size: the release's) must come back empty, not as the word None.
    return gr.Textbox(value="" if opt.default is None else opt.format(opt.default), **common)


def option_overrides(info: MethodInfo, values: dict[str, Any]) -> dict[str, Any]:
    """The options whose value differs from the declared default, parsed (OptionError names a bad one)."""
    overrides = {}
    for name, value in values.items():
        if value is None or value == "":
            continue
        opt = info.option(name)
        try:
            parsed = opt.parse(value)
        except OptionError as err:
            raise OptionError(f"{info.title}: {err}") from None
        if parsed != opt.default:
            overrides[name] = parsed
    return overrides


LOCAL_WEIGHTS_ENV = "VOS_ALLOW_LOCAL_WEIGHTS"  # "1": typed weights may name files on the server (its owner's choice)


def local_weights_allowed() -> bool:
    """Whether typed weights specs may name server files: only when the app's owner started it with
    ``--allow-local-weights`` (or $VOS_ALLOW_LOCAL_WEIGHTS=1). A public Space must not open paths its users type."""
    return os.environ.get(LOCAL_WEIGHTS_ENV, "").strip() == "1"


def app_weights_spec(spec: str, *, shown: str) -> str:
    """A weights spec typed in the app or sent to its API: hub, random or hf://..., checked as the command line
    checks ``--weights``. A path on the server is refused before it is looked at, so the answer tells nothing
    about which files exist there; a checkpoint of the user's own is uploaded instead."""
    from vos import weights as vweights

    text = str(spec).strip()
    if vweights.spec_kind(text) == vweights.LOCAL and not local_weights_allowed():
        raise vweights.BadWeightsSpec(
            f"{shown}: the app takes hub, random or hf://OWNER/REPO[/FILE], or a checkpoint file uploaded in the "
            "method's advanced panel; it does not open paths on the server (its owner can allow them with "
            "python app.py --allow-local-weights)."
        )
    return vspecs.check_weights_spec(text, shown=shown)


def api_weights(text: str | None) -> list[str]:
    """The API's weights field, "SPEC" and/or "KEY=SPEC" items separated by commas, each checked by
    ``app_weights_spec``; an item naming no method is the spec for every method."""
    from vos.methods import list_keys

    items = [item.strip() for item in (text or "hub").split(",") if item.strip()] or ["hub"]
    for item in items:
        key, sep, spec = (part.strip() for part in item.partition("="))
        app_weights_spec(spec if sep and key in list_keys() else item, shown=f"weights {item}")
    return items


def method_weights(info: MethodInfo, typed: str | None, uploads: list[str] | str | None, folder: Path) -> str | None:
    """One method's weights spec from its advanced panel: uploaded checkpoint files win over the typed spec.

    One file is used where it is; several are gathered into one folder (under their own names, which is how a
    multi-network method tells its files apart). None means "the run's default" (the Weights radio). A typed spec is
    checked as the command line checks ``--weights``, so a typo fails here and not in the method's tile.
    """
    files = [uploads] if isinstance(uploads, str) else list(uploads or [])
    if len(files) == 1:
        return files[0]
    if files:
        return str(_gather(files, folder / "weights", info.key))
    typed = (typed or "").strip()
    return app_weights_spec(typed, shown=f"Checkpoint {typed} for {info.title}") if typed else None


def gather_ground_truth(files: list[str] | str | None, folder: Path) -> str | None:
    """A zip, or PNG files gathered into one folder: what ``runner.read_ground_truth`` reads."""
    if not files:
        return None
    files = [files] if isinstance(files, str) else list(files)
    if len(files) == 1 and files[0].lower().endswith(".zip"):
        return files[0]
    return str(_gather(files, folder / "ground_truth", "gt"))


def _gather(files: list[str], parent: Path, prefix: str) -> Path:
    """Uploaded files under their own names in a new folder: hard links where the file system allows (a
    checkpoint can be hundreds of MB), copies elsewhere."""
    target = parent / f"{prefix}-{uuid.uuid4().hex[:8]}"
    target.mkdir(parents=True)
    for path in files:
        dest = target / Path(path).name
        try:
            os.link(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
    return target


def tile_title_html(title: str, subtitle: str = "") -> str:
    sub = f" <small>{html.escape(subtitle)}</small>" if subtitle else ""
    return f'<div class="vos-tile-title">{html.escape(title)}{sub}</div>'


def clip_notice(session: pr.PromptSession) -> str:
    h, w = session.size
    text = (
        f"**{session.clip_name}** · {w}×{h} · {session.num_frames} frames · {session.fps:g} fps "
        f"({session.num_frames / session.fps:.1f} s)"
    )
    if session.notes:
        text += "\n\n" + "\n".join(f"> ⚠️ {note}" for note in session.notes)
        if any(note.startswith("Kept the first") for note in session.notes):
            text += (
                "\n>\n> The upload keeps at most VOS_MAX_FRAMES frames and VOS_MAX_SECONDS seconds (the server's "
                "environment); a run uses the first *Frames to run* of them (step 3). For a longer clip, run it "
                "with the CLI: `python -m vos run CLIP --max-frames N`."
            )
    return text


def prompt_status(session: pr.PromptSession, labels: np.ndarray) -> str:
    entries = pr.legend_entries(session, labels)
    engine = f'<div class="vos-engine">Masks made by {html.escape(pr.engine_text())}</div>'
    if not entries:
        tool_hint = "Click on an object in the frame to mark it."
        return f'<div class="vos-hint-box">{tool_hint} Each click updates the mask preview.</div>' + engine
    return rs.swatches_html(entries) + engine


# --------------------------------------------------------------------------------------------------------------
# The GPU work (one queue; spaces.GPU on ZeroGPU)

_CANCELS: dict[str, threading.Event] = {}


@gpu_task
def run_job(
    session: pr.PromptSession,
    request: rs.RunRequest,
    token: str,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 -- Gradio finds the tracker by this default
):
    """Run the methods, yielding the per-method progress list; the last value also carries the bundle's folder."""
    cancel = _CANCELS.setdefault(token, threading.Event())
    try:
        clip = session.clip(request.max_frames)
        prompt = vmasks.read_palette_png(session.prompt_path, size=session.size)
        out_dir = rs.new_run_dir(session.path, session.clip_name)
        live = None
        frames = session.path / "frames"
        for live in rs.run_in_background(clip, prompt, request, out_dir, cancel=cancel, frames_dir=frames):
            if not live.done:
                yield rs.live_html(live.records, clip.num_frames, live.timings, live.previews), None
        assert live is not None and live.done
        if live.error is not None:
            raise live.error
        yield rs.live_html(live.records, clip.num_frames, live.timings, live.previews), str(out_dir)
    finally:
        _CANCELS.pop(token, None)


@gpu_task
def api_compare_job(session: pr.PromptSession, request: rs.RunRequest) -> str:
    """The API's run: the same work, without live updates; returns the bundle's folder."""
    clip = session.clip()
    prompt = vmasks.read_palette_png(session.prompt_path, size=session.size)
    out_dir = rs.new_run_dir(session.path, session.clip_name)
    rs.run_comparison(clip, prompt, request, out_dir)
    return str(out_dir)


# --------------------------------------------------------------------------------------------------------------
# The page


@dataclass
class MethodControls:
    info: MethodInfo
    enabled: gr.Checkbox
    variant: gr.Radio
    options: list[tuple[Option, gr.components.Component]]
    weights_text: gr.Textbox | None = None
    weights_files: gr.File | None = None

    def inputs(self) -> list[gr.components.Component]:
        extra = [c for c in (self.weights_text, self.weights_files) if c is not None]
        return [self.enabled, self.variant, *extra, *(c for _, c in self.options)]


@dataclass
class Tile:
    column: gr.Column
    title: gr.HTML
    image: gr.Image
    caption: gr.HTML


class ComparePage:
    """Builds the Compare page into the current Blocks context and holds its components for the callbacks."""

    def __init__(self, limits: UploadLimits | None = None):
        self.limits = limits or UploadLimits.from_env()
        self.infos = available()

    # ---------------------------------------------------------------- layout
    def build(self) -> ComparePage:
        self.session = gr.State(None, delete_callback=pr.delete_session)
        self.request = gr.State(None)
        self.token = gr.State("")
        self.run_dir = gr.State(None)
        self.playing = gr.State(None)  # while playing: (frame index, monotonic time) when play was pressed

        self._build_upload()
        self._build_prompt()
        self._build_run()
        self._build_results()
        self._build_api()
        self._wire()
        return self

    def _build_upload(self) -> None:
        with gr.Group(elem_classes="vos-step"):
            gr.HTML('<h2 class="vos-step-title"><span>1</span> Upload a clip</h2>')
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=280):
                    self.upload = gr.File(
                        label="Video or zip of frames",
                        file_types=CLIP_TYPES,
                        file_count="single",
                        type="filepath",
                        elem_id="vos-upload",
                        height=140,
                    )
                    gr.Markdown(self.limits.describe(), elem_classes="vos-small")
                with gr.Column(scale=2, min_width=240):
                    self.example_clip = gr.File(visible=False)
                    self.example_mask = gr.File(visible=False)
                    self.example_gt = gr.File(visible=False)
                    examples = self._examples()
                    if examples:
                        self.examples = gr.Examples(
                            examples=examples,
                            inputs=[self.example_clip, self.example_mask, self.example_gt],
                            label="Or try an example (clip, its first-frame mask and ground truth)",
                            example_labels=[Path(e[0]).stem for e in examples],
                            api_visibility="private",
                        )
                    self.clip_info = gr.Markdown(
                        "No clip yet.", elem_id="vos-clip-info", elem_classes="vos-small vos-clip-info"
                    )

    @staticmethod
    def _examples() -> list[list[str | None]]:
        rows = []
        for clip in sorted(EXAMPLES.glob("*.mp4")):
            mask = clip.with_name(f"{clip.stem}_00000.png")
            gt = clip.with_name(f"{clip.stem}_gt.zip")
            rows.append([str(clip), str(mask) if mask.exists() else None, str(gt) if gt.exists() else None])
        return rows

    def _build_prompt(self) -> None:
        with gr.Group(elem_classes="vos-step"):
            gr.HTML('<h2 class="vos-step-title"><span>2</span> Mark the objects on the first frame</h2>')
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=300):
                    gr.HTML(
                        '<div class="vos-frame-help">Click on the first frame to mark objects: '
                        "<b>include</b> points, <b>exclude</b> points or a <b>box</b> (two corners). "
                        "The mask preview updates at once.</div>"
                    )
                    self.frame = gr.Image(
                        label="First frame",
                        show_label=False,
                        interactive=False,
                        type="numpy",
                        elem_id="vos-frame",
                        placeholder="Upload a clip (step 1) or pick an example: its first frame appears here.",
                        buttons=["fullscreen"],
                        format="png",
                    )
                with gr.Column(scale=2, min_width=260):
                    self.tool = gr.Radio(
                        TOOL_CHOICES, value=pr.INCLUDE, label="Click tool", elem_id="vos-tool", elem_classes="vos-tool"
                    )
                    self.objects = gr.Radio(
                        choices=[], label="Objects (clicks go to the selected one)", elem_id="vos-objects"
                    )
                    with gr.Row(elem_classes="vos-buttons"):
                        self.new_object = gr.Button("+ New object", size="sm", elem_id="vos-new-object")
                        self.undo = gr.Button("↶ Undo", size="sm")
                        self.remove = gr.Button("Remove object", size="sm")
                        self.clear = gr.Button("Clear all", size="sm", variant="stop")
                    self.prompt_legend = gr.HTML(
                        '<div class="vos-hint-box">Upload a clip or pick an example (step 1), then click on an '
                        "object in its first frame.</div>",
                        elem_id="vos-prompt-legend",
                    )
                    with gr.Accordion("Brush: paint an object", open=False):
                        gr.Markdown(
                            "Paint over the object, then add the strokes to the selected object.",
                            elem_classes="vos-small",
                        )
                        self.brush = gr.ImageEditor(
                            label="Brush",
                            show_label=False,
                            type="numpy",
                            sources=(),
                            transforms=(),
                            layers=False,
                            brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"),
                            eraser=gr.Eraser(),
                            height=320,
                        )
                        self.add_strokes = gr.Button("Add strokes to the selected object", size="sm")
                    with gr.Accordion("Upload a first-frame mask (palette PNG)", open=False):
                        self.mask_upload = gr.File(
                            label="DAVIS-style palette PNG: pixel value = object id",
                            file_types=[".png"],
                            type="filepath",
                            height=110,
                        )

    def _build_run(self) -> None:
        with gr.Group(elem_classes="vos-step"):
            gr.HTML('<h2 class="vos-step-title"><span>3</span> Choose methods and run</h2>')
            self.methods: list[MethodControls] = []
            with gr.Row(elem_classes="vos-methods"):
                if not self.infos:
                    gr.Markdown("No methods are registered.")
                for info in self.infos:
                    task = "unsupervised" if info.task == UNSUP else "semi-supervised"
                    with gr.Group(elem_classes="vos-method"):
                        enabled = gr.Checkbox(
                            value=True,
                            label=info.title,
                            info=task,
                            key=f"use-{info.key}",
                            elem_id=f"vos-use-{info.key}",
                        )
                        here = weights_here(info)
                        variant = gr.Radio(
                            choices=variant_choices(info, here),
                            value=initial_variant(info, here),
                            label="Variant",
                            show_label=False,
                            container=False,
                            elem_classes="vos-variant",
                            elem_id=f"vos-variant-{info.key}",
                            key=f"variant-{info.key}",
                        )
                    self.methods.append(MethodControls(info, enabled, variant, []))
            with gr.Row():
                self.device = gr.Dropdown(device_choices(), value="auto", label="Device", min_width=140)
                precisions = precision_choices()
                self.precision = gr.Dropdown(
                    precisions,
                    value="fp32",
                    label="Precision",
                    info="Reduced precision is faster where the hardware has it; masks may differ slightly."
                    if len(precisions) > 1
                    else "This machine has no fast reduced precision.",
                    interactive=len(precisions) > 1,
                    min_width=140,
                )
                defaults = vrunnable.machine_defaults()
                self.resolution = gr.Dropdown(
                    RESOLUTIONS,
                    value=defaults.max_side or DEFAULT_RESOLUTION,
                    label="Working resolution",
                    info="Methods run at this size; results are shown at the clip's."
                    + (" Small by default on a CPU." if defaults.max_side else ""),
                    min_width=180,
                )
                self.max_frames = gr.Number(
                    value=defaults.max_frames or 0,
                    precision=0,
                    minimum=0,
                    label="Frames to run",
                    info="The clip's first N frames (0 = all)."
                    + (" Short by default on a CPU." if defaults.max_frames else ""),
                    min_width=140,
                    elem_id="vos-max-frames",
                )
                self.weights = gr.Radio(WEIGHTS_CHOICES, value="hub", label="Weights", min_width=240)
            with gr.Accordion("Advanced: checkpoints and method options", open=False):
                gr.Markdown(
                    "Per method: your own checkpoint (the authors' release file as published, a converted "
                    "safetensors file, several files for a method with several networks, or `hf://OWNER/REPO`), "
                    "and its options, generated from the method's declarations. Defaults are the official "
                    "release's; the paper's value is given where it differs.",
                    elem_classes="vos-small",
                )
                for controls in self.methods:
                    info = controls.info
                    count = len(info.options)
                    label = info.title + (f" ({count} option{'s' if count != 1 else ''})" if count else "")
                    with gr.Accordion(label, open=False):
                        with gr.Row(elem_classes="vos-options"):
                            controls.weights_text = gr.Textbox(
                                label="checkpoint",
                                placeholder="the Weights choice above",
                                info="hub, random, hf://OWNER/REPO[/FILE] or a path on this machine",
                                key=f"weights-{info.key}",
                                elem_id=f"vos-weights-{info.key}",
                            )
                            controls.weights_files = gr.File(
                                label="or upload checkpoint files",
                                file_count="multiple",
                                file_types=CHECKPOINT_TYPES,
                                type="filepath",
                                height=90,
                                key=f"weights-files-{info.key}",
                                elem_id=f"vos-weights-files-{info.key}",
                            )
                        if info.options:
                            with gr.Row(elem_classes="vos-options"):
                                for opt in info.options:
                                    controls.options.append((opt, option_component(info, opt)))
            with gr.Accordion("Ground truth (optional): score J&F", open=False) as self.gt_accordion:
                self.ground_truth = gr.File(
                    label="A zip (or the PNG files) of palette masks, one per frame, at the clip's size",
                    file_types=[".zip", ".png"],
                    file_count="multiple",
                    type="filepath",
                    height=110,
                    elem_id="vos-gt",
                )
            with gr.Row(elem_classes="vos-run-row"):
                self.run_button = gr.Button("▶ Run the comparison", variant="primary", elem_id="vos-run", scale=3)
                self.stop_button = gr.Button("■ Stop", variant="stop", elem_id="vos-stop", scale=1, interactive=False)
            self.live = gr.HTML(elem_id="vos-live")

    def _build_results(self) -> None:
        with gr.Group(elem_classes="vos-step"):
            gr.HTML('<h2 class="vos-step-title"><span>4</span> Compare</h2>')
            self.empty_results = gr.Markdown(
                "Results appear here after a run: the input and one tile per method, frame by frame, with speed, "
                "memory and downloads.",
                elem_classes="vos-empty",
            )
            with gr.Column(visible=False, elem_id="vos-results") as self.results:
                self.results_legend = gr.HTML()
                with gr.Row(equal_height=True, elem_classes="vos-frame-row"):
                    self.play = gr.Button("▶ Play", size="sm", scale=0, min_width=90, elem_id="vos-play")
                    self.slider = gr.Slider(
                        0, 1, value=0, step=1, label="Frame", scale=5, elem_id="vos-slider", buttons=[]
                    )
                self.timer = gr.Timer(PLAY_TICK, active=False)
                with gr.Row(elem_classes="vos-tiles", elem_id="vos-tiles"):
                    self.tiles = [self._tile("Input", "vos-tile-input")]
                    self.tiles += [self._tile(info.title, f"vos-tile-{info.key}") for info in self.infos]
                gr.HTML('<h3 class="vos-subtitle">Speed, memory and scores</h3>')
                self.table = gr.HTML(elem_id="vos-table")
                self.table_note = gr.Markdown(elem_classes="vos-small")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=280):
                        self.video = gr.Video(label="Side by side (MP4)", interactive=False, elem_id="vos-video")
                    with gr.Column(scale=2, min_width=240, elem_id="vos-downloads", elem_classes="vos-downloads"):
                        gr.HTML('<h3 class="vos-subtitle">Downloads</h3>')
                        self.download_video = gr.DownloadButton(
                            DOWNLOAD_LABELS["video"], size="md", elem_id="vos-download-video"
                        )
                        self.download_masks = gr.DownloadButton(
                            DOWNLOAD_LABELS["masks"], size="md", elem_id="vos-download-masks"
                        )
                        self.download_bundle = gr.DownloadButton(
                            DOWNLOAD_LABELS["bundle"], size="md", elem_id="vos-download-bundle"
                        )
                        gr.Markdown(
                            "Masks: one folder per method, one palette PNG per frame (pixel value = object id). "
                            "Bundle: `run.json` (settings, timings, memory, weights), the prompt, the masks and the "
                            "video; `python -m vos present` shows it again.",
                            elem_classes="vos-small",
                        )

    @staticmethod
    def _tile(title: str, elem_id: str) -> Tile:
        with gr.Column(visible=False, min_width=240, elem_classes="vos-tile", elem_id=elem_id) as column:
            heading = gr.HTML(tile_title_html(title), elem_classes="vos-tile-heading")
            image = gr.Image(
                label=title, show_label=False, interactive=False, buttons=["fullscreen"], format="jpeg", height=260
            )
            caption = gr.HTML()
        return Tile(column, heading, image, caption)

    def _build_api(self) -> None:
        """Components for the API only (never shown): gradio_client drives a whole comparison through these."""
        with gr.Column(visible=False):
            self.api_clip = gr.File(label="clip", type="filepath")
            self.api_mask = gr.File(label="first-frame mask (palette PNG)", type="filepath")
            self.api_objects = gr.Textbox(label="objects (JSON)")
            self.api_methods = gr.Textbox(label="methods", value="all")
            self.api_variants = gr.Textbox(label="variants (KEY=VARIANT, comma-separated)", value="")
            self.api_options = gr.Textbox(label="options (KEY.NAME=VALUE, comma-separated)", value="")
            self.api_device = gr.Textbox(label="device", value="auto")
            self.api_max_side = gr.Number(label="working resolution (long side, 0 = as uploaded)", value=854)
            self.api_weights = gr.Textbox(label="weights", value="hub")
            self.api_gt = gr.File(label="ground truth (zip of palette PNGs)", type="filepath")
            self.api_precision = gr.Textbox(label="precision (fp32, bf16, fp16)", value="fp32")
            self.api_mask_out = gr.File(label="first-frame mask")
            self.api_files = gr.File(label="side-by-side MP4, masks zip, run bundle zip", file_count="multiple")
            self.api_summary = gr.JSON(label="per-method records")
            self.api_prompt_button = gr.Button("prompt")
            self.api_compare_button = gr.Button("compare")

    # ---------------------------------------------------------------- events
    def _wire(self) -> None:
        prompt_outputs = [self.session, self.frame, self.objects, self.prompt_legend]
        self.upload.upload(
            self.on_upload,
            [self.upload],
            [*prompt_outputs, self.clip_info, self.brush, self.mask_upload],
            api_visibility="private",
        )
        self.upload.clear(self.on_clear_upload, None, [*prompt_outputs, self.clip_info], api_visibility="private")
        if getattr(self, "examples", None) is not None:
            self.examples.load_input_event.success(
                self.on_example,
                [self.example_clip, self.example_mask, self.example_gt],
                [*prompt_outputs, self.clip_info, self.brush, self.upload, self.ground_truth, self.gt_accordion],
                api_visibility="private",
            )
        # trigger_mode "once": a click made while the previous one is processed is dropped rather than run on the
        # same old session (which would lose one of the two marks).
        self.frame.select(
            self.on_click, [self.session, self.tool], prompt_outputs, api_visibility="private", trigger_mode="once"
        )
        object_outputs = [*prompt_outputs, self.brush]  # the brush takes the selected object's colour
        self.objects.input(
            self.on_select_object, [self.session, self.objects], object_outputs, api_visibility="private"
        )
        self.new_object.click(self.on_new_object, [self.session], object_outputs, api_visibility="private")
        self.undo.click(self.on_undo, [self.session], prompt_outputs, api_visibility="private")
        self.remove.click(self.on_remove, [self.session], object_outputs, api_visibility="private")
        self.clear.click(self.on_clear, [self.session], [*prompt_outputs, self.mask_upload], api_visibility="private")
        self.add_strokes.click(
            self.on_add_strokes, [self.session, self.brush], [*prompt_outputs, self.brush], api_visibility="private"
        )
        self.mask_upload.upload(
            self.on_mask_upload, [self.session, self.mask_upload], prompt_outputs, api_visibility="private"
        )
        self.mask_upload.clear(self.on_mask_clear, [self.session], prompt_outputs, api_visibility="private")

        run_inputs = {
            self.session,
            self.device,
            self.precision,
            self.resolution,
            self.max_frames,
            self.weights,
            self.ground_truth,
        }
        for controls in self.methods:
            run_inputs |= set(controls.inputs())
        prepared = self.run_button.click(
            self.on_prepare,
            run_inputs,
            [
                self.session,
                self.request,
                self.token,
                self.live,
                self.run_button,
                self.stop_button,
                self.results,
                self.empty_results,
                self.timer,
                self.playing,
                self.play,
            ],
            api_visibility="private",
        )
        job = prepared.success(
            run_job,
            [self.session, self.request, self.token],
            [self.live, self.run_dir],
            concurrency_id=GPU_QUEUE,
            concurrency_limit=1,
            show_progress="full",
            show_progress_on=[self.empty_results],
            api_visibility="private",
        )
        shown = job.success(
            self.on_results, [self.session, self.run_dir], self._result_outputs(), api_visibility="private"
        )
        for event in (job, shown):
            event.then(
                lambda: (gr.Button(interactive=True), gr.Button(interactive=False)),
                None,
                [self.run_button, self.stop_button],
                api_visibility="private",
                queue=False,
            )
        self.stop_button.click(
            self.on_stop,
            [self.token],
            [self.stop_button],
            cancels=[job] if on_zero_gpu() else None,
            queue=False,
            api_visibility="private",
        )

        # No progress overlay and only the latest position: the tiles keep their picture until the next one is
        # there (no blank frame between two), and a fast drag does not queue every frame it passed.
        self.slider.input(
            self.on_frame,
            [self.session, self.run_dir, self.slider],
            self._tile_images(),
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
        )
        self.play.click(
            self.on_play,
            [self.playing, self.slider],
            [self.playing, self.timer, self.play],
            api_visibility="private",
            show_progress="hidden",
        )
        self.timer.tick(
            self.on_tick,
            [self.session, self.run_dir, self.playing],
            [self.slider, *self._tile_images()],
            api_visibility="private",
            show_progress="hidden",
            trigger_mode="always_last",
        )

        self.api_prompt_button.click(
            self.api_prompt, [self.api_clip, self.api_objects], [self.api_mask_out], api_name="prompt_mask"
        )
        self.api_compare_button.click(
            self.api_compare,
            [
                self.api_clip,
                self.api_mask,
                self.api_methods,
                self.api_variants,
                self.api_options,
                self.api_device,
                self.api_max_side,
                self.api_weights,
                self.api_gt,
                self.api_precision,
            ],
            [self.api_files, self.api_summary],
            api_name="compare",
            concurrency_id=GPU_QUEUE,
            concurrency_limit=1,
        )

    def _tile_images(self) -> list[gr.Image]:
        return [t.image for t in self.tiles]

    def _result_outputs(self) -> list[gr.components.Component]:
        outputs: list[Any] = [self.results, self.empty_results, self.results_legend, self.slider]
        for tile in self.tiles:
            outputs += [tile.column, tile.title, tile.image, tile.caption]
        downloads = [self.download_video, self.download_masks, self.download_bundle]
        return [*outputs, self.table, self.table_note, self.video, *downloads]

    # ---------------------------------------------------------------- prompt callbacks
    def _prompt_view(self, session: pr.PromptSession | None) -> dict:
        """The session and everything drawn from it: frame with the mask preview, object list, legend."""
        if session is None:
            return {
                self.session: None,
                self.frame: None,
                self.objects: gr.Radio(choices=[], value=None),
                self.prompt_legend: "",
            }
        frame = session.first_frame()
        labels = pr.label_map(session, frame)
        return {
            self.session: session,
            self.frame: pr.preview(session, labels, frame),
            self.objects: gr.Radio(choices=pr.object_choices(session), value=session.current),
            self.prompt_legend: prompt_status(session, labels),
        }

    def _start(self, path: str) -> pr.PromptSession:
        return pr.start_session(path, self.limits.clip_limits)

    @staticmethod
    def _brush_colour(session: pr.PromptSession) -> gr.Brush:
        object_id = session.object_id(session.current)
        colour = vmasks.colors_for([object_id])[object_id]
        return gr.Brush(colors=["#{:02x}{:02x}{:02x}".format(*colour)], color_mode="fixed")

    def _brush_value(self, session: pr.PromptSession) -> gr.ImageEditor:
        """A fresh canvas: the first frame, no strokes, the selected object's colour."""
        return gr.ImageEditor(
            value={"background": str(session.frame_path), "layers": [], "composite": None},
            brush=self._brush_colour(session),
        )

    def _with_brush_colour(self, session: pr.PromptSession) -> dict:
        return {**self._prompt_view(session), self.brush: gr.ImageEditor(brush=self._brush_colour(session))}

    @user_errors
    def on_upload(self, path: str | None) -> dict:
        if not path:
            return {**self._prompt_view(None), self.clip_info: "No clip yet."}
        session = self._start(path)
        for note in session.notes:
            gr.Warning(note)
        return {
            **self._prompt_view(session),
            self.clip_info: clip_notice(session),
            self.brush: self._brush_value(session),
            self.mask_upload: None,
        }

    def on_clear_upload(self) -> dict:
        return {**self._prompt_view(None), self.clip_info: "No clip yet."}

    @user_errors
    def on_example(self, clip: str, mask: str | None, gt: str | None) -> dict:
        session = self._start(clip)
        if mask:
            session = pr.set_uploaded_mask(session, mask)
        return {
            **self._prompt_view(session),
            self.clip_info: clip_notice(session) + "\n\nThe example's mask is the prompt; click to add objects.",
            self.brush: self._brush_value(session),
            self.upload: clip,
            self.ground_truth: [gt] if gt else None,
            self.gt_accordion: gr.Accordion(open=bool(gt)),
        }

    @staticmethod
    def _require(session: pr.PromptSession | None) -> pr.PromptSession:
        if session is None:
            raise gr.Error("Upload a clip first (step 1), or pick an example.")
        return session

    @user_errors
    def on_click(self, session: pr.PromptSession | None, tool: str, evt: gr.SelectData) -> dict:
        session = self._require(session)
        x, y = pr.from_preview(session, *evt.index[:2])
        return self._prompt_view(pr.click(session, x, y, tool or pr.INCLUDE))

    @user_errors
    def on_select_object(self, session: pr.PromptSession | None, index: int | None) -> dict:
        session = self._require(session)
        return self._with_brush_colour(pr.select_object(session, index or 0))

    @user_errors
    def on_new_object(self, session: pr.PromptSession | None) -> dict:
        return self._with_brush_colour(pr.add_object(self._require(session)))

    @user_errors
    def on_undo(self, session: pr.PromptSession | None) -> dict:
        return self._prompt_view(pr.undo(self._require(session)))

    @user_errors
    def on_remove(self, session: pr.PromptSession | None) -> dict:
        return self._with_brush_colour(pr.remove_object(self._require(session)))

    @user_errors
    def on_clear(self, session: pr.PromptSession | None) -> dict:
        return {**self._prompt_view(pr.clear(self._require(session))), self.mask_upload: None}

    @user_errors
    def on_add_strokes(self, session: pr.PromptSession | None, editor: dict | None) -> dict:
        session = self._require(session)
        layers = (editor or {}).get("layers") or []
        if not layers:
            raise gr.Error("Paint on the frame first: the strokes are added to the selected object.")
        for layer in layers:
            session = pr.add_brush(session, layer)
        return {**self._prompt_view(session), self.brush: self._brush_value(session)}

    @user_errors
    def on_mask_upload(self, session: pr.PromptSession | None, path: str | None) -> dict:
        session = self._require(session)
        if not path:
            return self._prompt_view(pr.drop_uploaded_mask(session))
        return self._prompt_view(pr.set_uploaded_mask(session, path))

    @user_errors
    def on_mask_clear(self, session: pr.PromptSession | None) -> dict:
        return self._prompt_view(pr.drop_uploaded_mask(session) if session else None)

    # ---------------------------------------------------------------- run callbacks
    @user_errors
    def on_prepare(self, values: dict) -> dict:
        """Check everything before queueing for the GPU; the request goes to the job through a gr.State."""
        session = self._require(values[self.session])
        labels, _ = pr.save_prompt(session)
        if not labels.any():
            raise gr.Error("Mark at least one object on the first frame (step 2) before running.")
        specs = []
        for controls in self.methods:
            if not values[controls.enabled]:
                continue
            options = option_overrides(controls.info, {opt.name: values[c] for opt, c in controls.options})
            weights = method_weights(
                controls.info, values[controls.weights_text], values[controls.weights_files], session.path
            )
            specs.append(MethodSpec(controls.info.key, values[controls.variant], options, weights).validated())
        if not specs:
            raise gr.Error("Tick at least one method (step 3).")
        device = values[self.device] or "auto"
        pick_device(device)  # a missing device fails here, not in every method's tile
        dtype = values.get(self.precision) or "fp32"
        pick_dtype(dtype, pick_device(device))  # fp16 on the CPU: one message now, not one per tile
        request = rs.RunRequest(
            specs=specs,
            device=device,
            dtype=dtype,
            max_side=int(values[self.resolution]) or None,
            max_frames=int(values.get(self.max_frames) or 0) or None,
            weights=values[self.weights] or "hub",
            ground_truth=gather_ground_truth(values[self.ground_truth], session.path),
            time_budget_s=self.limits.max_run_seconds,
        )
        token = uuid.uuid4().hex
        _CANCELS[token] = threading.Event()
        waiting = [rs.pending_record(spec) for spec in specs]
        return {
            self.session: session,
            self.request: request,
            self.token: token,
            self.live: rs.live_html(waiting, session.num_frames),
            self.run_button: gr.Button(interactive=False),
            self.stop_button: gr.Button(interactive=True),
            # A new run replaces the results shown; the queue position and progress appear in their place.
            self.results: gr.Column(visible=False),
            self.empty_results: gr.Markdown(RUNNING_NOTE, visible=True),
            self.timer: gr.Timer(active=False),
            self.playing: None,
            self.play: gr.Button("▶ Play"),
        }

    def on_stop(self, token: str) -> gr.Button:
        event = _CANCELS.get(token)
        if event is not None:
            event.set()
            gr.Info("Stopping after the current frame; every method keeps the frames it finished.")
        return gr.Button(interactive=False)

    @user_errors
    def on_results(self, session: pr.PromptSession, run_dir: str | None) -> dict:
        if not run_dir:
            raise gr.Error("The run produced no results.")
        view = rs.load_view(run_dir)
        frames = rs.extract_frames(session.clip(), session.path / "frames")
        images = rs.tile_images(view, frames, 0)
        out: dict[Any, Any] = {
            self.results: gr.Column(visible=True),
            self.empty_results: gr.Markdown(visible=False),
            self.results_legend: self._results_legend(session, view),
            self.slider: gr.Slider(minimum=0, maximum=max(1, view.num_frames - 1), value=0, step=1),
        }
        by_key = {r.key: r for r in view.records}
        input_tile = self.tiles[0]
        out[input_tile.column] = gr.Column(visible=True)
        out[input_tile.title] = tile_title_html("Input", "prompt on frame 0")
        out[input_tile.image] = gr.Image(value=images[0], label="Input")
        out[input_tile.caption] = f'<div class="vos-caption">{session.clip_name} · {session.num_frames} frames</div>'
        shown = dict(zip((r.key for r in view.records), images[1:]))
        for info, tile in zip(self.infos, self.tiles[1:]):
            record = by_key.get(info.key)
            out[tile.column] = gr.Column(visible=record is not None)
            out[tile.title] = tile_title_html(info.title, rs.tile_subtitle(record) if record else "")
            out[tile.image] = gr.Image(value=shown.get(info.key), label=rs.tile_label(record) if record else info.title)
            out[tile.caption] = rs.tile_caption(record) if record else ""
        out[self.table] = rs.table_html(view)
        out[self.table_note] = rs.memory_note(view)
        out[self.video] = str(view.bundle.video) if view.bundle.video else None
        files = rs.downloads(view, session.path / "downloads")
        for button, kind, path in (
            (self.download_video, "video", files.video),
            (self.download_masks, "masks", files.masks),
            (self.download_bundle, "bundle", files.bundle),
        ):
            label = f"{DOWNLOAD_LABELS[kind]} · {human_size(path.stat().st_size)}" if path else DOWNLOAD_LABELS[kind]
            out[button] = gr.DownloadButton(label, value=str(path) if path else None, visible=path is not None)
        problems = [r for r in view.records if not r.ok]
        if problems:
            names = ", ".join(f"{r.title} ({rs.STATUS_LABELS.get(r.status, r.status)})" for r in problems)
            gr.Warning(f"Not every method finished: {names}. Its tile says why and what to do.")
        return out

    @staticmethod
    def _results_legend(session: pr.PromptSession, view: rs.RunView) -> str:
        prompt = vmasks.read_palette_png(view.path / "prompt.png")
        return (
            '<div class="vos-results-legend">Objects: '
            + rs.swatches_html(pr.legend_entries(session, prompt))
            + "</div>"
        )

    @user_errors
    def on_frame(self, session: pr.PromptSession | None, run_dir: str | None, index: float) -> list:
        if session is None or not run_dir:
            return [gr.Image() for _ in self.tiles]
        view = rs.load_view(run_dir)
        images = [str(p) for p in rs.tile_files(view, session.path / "frames", int(index))]
        by_key = dict(zip((r.key for r in view.records), images[1:]))
        return [images[0], *(by_key.get(info.key) for info in self.infos)]

    def on_play(self, playing: tuple | None, index: float) -> tuple:
        playing = None if playing else (int(index or 0), time.monotonic())
        active = playing is not None
        return playing, gr.Timer(active=active), gr.Button("❚❚ Pause" if active else "▶ Play")

    def on_tick(self, session: pr.PromptSession | None, run_dir: str | None, playing: tuple | None) -> list:
        if session is None or not run_dir or not playing:
            return [gr.Slider(), *(gr.Image() for _ in self.tiles)]
        view = rs.load_view(run_dir)
        index = rs.playing_index(playing[0], playing[1], float(view.bundle.data["clip"]["fps"]), view.num_frames)
        return [index, *self.on_frame(session, run_dir, index)]

    # ---------------------------------------------------------------- API
    # Each API call gets a session folder of its own (a copy of the upload, the prompt, the run), removed when the
    # call ends. The endpoints are generators for that: Gradio copies a yielded file into its own cache, the one
    # place results are served from, before it asks for the next value, and only then is the folder removed.
    @api_errors
    def api_prompt(self, clip: str, objects_json: str) -> Iterator[str]:
        """Clip + objects as JSON -> the first-frame palette PNG the prompt engine makes.

        objects_json: ``[{"clicks": [[x, y, 1], [x, y, 0]], "boxes": [[x0, y0, x1, y1]]}, ...]`` in pixels of the
        clip's first frame after the upload limits (1 = include, 0 = exclude).
        """
        if not clip:
            raise gr.Error("Give a clip (a video or a zip of frames).")
        objects = vprompts.objects_from_json(objects_json)  # before the upload is copied: bad JSON costs nothing
        session = self._start(clip)
        try:
            session.objects = [pr.marked_object(prompt) for prompt in objects]
            labels, path = pr.save_prompt(session)
            if not labels.any():
                raise gr.Error("The objects give an empty mask: add a click or a box on each object.")
            yield str(path)
        finally:
            pr.delete_session(session)

    @api_errors
    def api_compare(
        self,
        clip: str,
        mask: str,
        methods: str,
        variants: str,
        options: str,
        device: str,
        max_side: float | None,
        weights: str,
        ground_truth: str | None,
        precision: str | None = "fp32",
    ) -> Iterator[tuple[list[str], dict]]:
        """Clip + first-frame mask + method selection -> [side-by-side MP4, masks zip, run bundle zip], records.

        methods/variants/options/weights use the CLI's syntax: "all" or "tvos,mixture"; "mixture=rgb,...";
        "tvos.temperature=1,..."; "hub", "random", "hf://OWNER/REPO[/FILE]" or "tvos=hf://...". precision is the
        Compare page's: fp32 (the default and the reference), or bf16/fp16 where the device has matrix units for it.
        """
        if not clip or not mask:
            raise gr.Error("Give a clip and its first-frame mask (palette PNG).")
        split = [s.strip() for s in (variants or "").split(",") if s.strip()]
        opts = [s.strip() for s in (options or "").split(",") if s.strip()]
        specs, default_weights = vspecs.parse_method_specs(
            methods or "all", variants=split, options=opts, weights=api_weights(weights), runnable=True
        )
        dtype = (precision or "fp32").strip()
        pick_dtype(dtype, pick_device(device or "auto"))  # fp16 on a CPU: refused before the upload is unpacked
        session = self._start(clip)
        try:
            session = pr.set_uploaded_mask(session, mask)
            pr.save_prompt(session)
            request = rs.RunRequest(
                specs=specs,
                device=device or "auto",
                dtype=dtype,
                max_side=int(max_side or 0) or None,
                weights=default_weights,
                ground_truth=ground_truth or None,
                time_budget_s=self.limits.max_run_seconds,
            )
            view = rs.load_view(api_compare_job(session, request))
            files = [str(p) for p in rs.downloads(view, session.path / "downloads").files()]
            yield files, rs.without_server_paths({"run": view.path.name, "methods": view.bundle.methods})
        finally:
            pr.delete_session(session)


def build(limits: UploadLimits | None = None) -> ComparePage:
    """Add the Compare page to the current Blocks context."""
    return ComparePage(limits).build()


CSS = Path(__file__).with_name("compare.css").read_text(encoding="utf-8")
