"""Benchmark page: peak memory and speed versus resolution, from stored results (named hardware) or measured here.

A thin UI over ``vos.bench``: the hardware selector lists the results files in assets/bench/ plus the sweeps run
in this session; the charts and the table are ``vos.bench``'s. "Measure on this machine" runs ``vos.bench.sweep``
(the CLI's code path: one subprocess per point) on the GPU queue, redrawing after each point; its tqdm bar is the
progress bar. Stop ends the running point's subprocess and the sweep.
"""

from __future__ import annotations

import html
import logging
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from pages import GPU_QUEUE, on_zero_gpu, user_errors
from vos import bench
from vos.methods import available

log = logging.getLogger(__name__)

RESOLUTION_CHOICES = [64, 120, 180, 240, 360, 480, 720, 1080]
DEFAULT_RESOLUTIONS = [120]
DEFAULT_FRAMES = 3
DEFAULT_TIMEOUT = 300
WEIGHTS_CHOICES = [("Random weights (no download; speed and memory only)", "random"), ("Released weights", "hub")]
_CANCELS: dict[str, threading.Event] = {}
_MEASURED_DIR = Path(tempfile.gettempdir()) / "vos-bench-app"


# --------------------------------------------------------------------------------------------------------------
# What the page shows


def stored_choices(extra: list[str] | None = None) -> list[tuple[str, str]]:
    """(label, path) for every results file: the ones measured in this session first, then assets/bench/."""
    choices = []
    for path in extra or []:
        try:
            results = bench.load_results(path)
        except bench.BenchError as err:
            log.warning("%s", err)
            continue
        choices.append((f"Measured here: {_choice_label(results)}", path))
    for path, results in bench.stored_results():
        choices.append((_choice_label(results), str(path)))
    return choices


def _choice_label(results: dict[str, Any]) -> str:
    created = str(results.get("created", ""))[:10]
    return f"{results['hardware']['label']} — {bench.describe_settings(results)}" + (f" ({created})" if created else "")


def details_html(results: dict[str, Any]) -> str:
    hw, settings = results["hardware"], results["settings"]
    rows = [
        ("Hardware", hw["label"]),
        ("CPU", f"{hw.get('cpu', '?')}, {hw.get('cpu_cores', '?')} cores, {hw.get('ram_gib', '?')} GiB RAM"),
    ]
    if hw.get("gpu"):
        rows.append(("GPU", f"{hw['gpu']}, {hw.get('gpu_memory_gib', '?')} GiB, CUDA {hw.get('cuda', '?')}"))
    rows += [
        ("Software", f"torch {hw.get('torch', '?')}, Python {hw.get('python', '?')}, vos {results.get('vos_version')}"),
        ("Settings", f"{settings['device']} · {bench.describe_settings(results)}"),
        ("Clip", f"{settings.get('clip', 'synthetic')}, 16:9 frames"),
        ("Caps", f"{settings.get('timeout_s', '?')} s and {settings.get('memory_cap_mib') or '?'} MiB per point"),
    ]
    busy = bench.busy_note(results)
    if busy:
        rows.append(("Note", busy.removeprefix(" · ")))
    if settings.get("command"):
        rows.append(("Command", f"<code>{html.escape(settings['command'])}</code>"))
    body = "".join(
        f"<span>{html.escape(k)}</span><span>{v if k == 'Command' else html.escape(str(v))}</span>" for k, v in rows
    )
    return f'<div class="vos-bench-details">{body}</div>'


def table_value(results: dict[str, Any]) -> Any:
    """The points as a table: numbers rounded as ``bench.rounded`` does (still numbers, so columns sort), columns that
    are empty everywhere left out."""
    import pandas as pd

    frame = pd.DataFrame([{k: bench.rounded(v) for k, v in row.items()} for row in bench.summary_rows(results)])
    return frame.replace("", None).dropna(axis=1, how="all")


def render(path: str | None, log_scale: bool) -> tuple[Any, Any, Any, Any, str]:
    """Memory, fps and accuracy-vs-speed figures, the table and the details for one results file."""
    if not path:
        empty = "<p>No results yet: choose stored results or measure on this machine below.</p>"
        return None, None, bench.accuracy_speed_figure(None), None, empty
    results = bench.load_results(path)
    return (
        bench.memory_figure(results, log_y=log_scale),
        bench.fps_figure(results, log_y=log_scale),
        bench.accuracy_speed_figure(results),
        table_value(results),
        details_html(results),
    )


def method_choices() -> list[tuple[str, str]]:
    """Every registered method and variant as "key:variant" (a new method appears by itself)."""
    choices = []
    for info in available():
        for variant in info.variants:
            default = " (default)" if variant == info.default_variant else ""
            choices.append((f"{info.key} · {variant}{default}", f"{info.key}:{variant}"))
    return choices


def default_methods() -> list[str]:
    return [f"{info.key}:{info.default_variant}" for info in available()]


def precision_choices() -> list[str]:
    """fp32 and the reduced precisions the page's devices have matrix units for (vos.device.fast_dtypes)."""
    from vos.device import fast_dtypes_of

    return fast_dtypes_of(name for name in device_choices() if name != "auto")


def device_choices() -> list[str]:
    import torch

    if torch.cuda.is_available() and not on_zero_gpu():
        return ["auto", "cuda", "cpu"]
    return ["cpu"]


# --------------------------------------------------------------------------------------------------------------
# The page


def _status_text(results: dict[str, Any], total: int) -> str:
    points = bench.points_of(results)
    ok = sum(p.ok for p in points)
    last = points[-1] if points else None
    latest = f" Last: {last.series} {last.resolution}p, {bench.point_words(last)}." if last else ""
    return f"{len(points)} of {total} points done ({ok} measured).{latest}"


@user_errors
def prepare(methods: list[str], resolutions: list[int]) -> tuple[str, gr.Button, gr.Button]:
    """Check the choices before queueing; a fresh token names this sweep for the Stop button."""
    if not methods:
        raise bench.BenchError("Choose at least one method to measure.")
    if not resolutions:
        raise bench.BenchError("Choose at least one resolution.")
    return uuid.uuid4().hex, gr.Button(interactive=False), gr.Button(interactive=True)


@user_errors
def measure_job(
    methods: list[str],
    resolutions: list[int],
    frames: float,
    timeout: float,
    device: str,
    weights: str,
    precisions: list[str],
    log_scale: bool,
    measured: list[str],
    token: str,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 -- Gradio finds the tracker by this default
):
    """Run the sweep (vos.bench's tqdm bar is the progress bar); redraw everything after each point."""
    specs = bench.parse_methods(methods)
    resolutions = bench.parse_resolutions([int(r) for r in resolutions])
    dtypes = bench.parse_dtypes(precisions or ["fp32"])
    out = _MEASURED_DIR / f"{uuid.uuid4().hex}.json"
    cancel = _CANCELS.setdefault(token, threading.Event())
    total = len(specs) * len(resolutions) * len(dtypes)
    measured = [str(out), *measured]
    yield f"Starting {total} point(s)…", gr.Dropdown(), measured, *[gr.skip()] * 5
    try:
        for results in bench.sweep(
            specs,
            resolutions,
            frames=int(frames),
            device=device,
            dtype=dtypes,
            weights=weights,
            timeout=float(timeout),
            out=out,
            cancel=cancel,
            command="the app's Benchmark page",
        ):
            selector = gr.Dropdown(choices=stored_choices(measured), value=str(out))
            yield _status_text(results, total), selector, measured, *render(str(out), log_scale)
    finally:
        _CANCELS.pop(token, None)


def stop(token: str) -> gr.Button:
    event = _CANCELS.get(token)
    if event is not None:
        event.set()
        gr.Info("Stopping: the running point is ended and the rest are marked cancelled.")
    return gr.Button(interactive=False)


class BenchmarkPage:
    def build(self) -> BenchmarkPage:
        self.measured = gr.State([])  # results files measured in this session (paths)
        self.token = gr.State("")
        gr.Markdown(
            "Peak memory and steady-state speed of every method as the resolution grows, each point measured in a "
            "fresh process on the named hardware (synthetic 16:9 clips; resolution = the frame's short side). "
            "Stars on the last chart are the papers' own figures. The same sweep from the command line: "
            "`python -m vos bench --resolutions 240,360,480 --out results.json --charts charts/`.",
            elem_classes="vos-small",
        )
        choices = stored_choices()
        first = choices[0][1] if choices else None
        memory, fps, accuracy, table, details = render(first, True)
        with gr.Row(equal_height=True):
            self.selector = gr.Dropdown(choices=choices, value=first, label="Results (hardware · settings)", scale=4)
            self.log_scale = gr.Checkbox(value=True, label="Logarithmic axes", scale=1)
        self.details = gr.HTML(details)
        # One chart per row: their subtitles name the hardware and settings and need the width.
        charts = {"show_label": False, "elem_classes": "vos-chart"}
        self.memory_plot = gr.Plot(memory, label="Peak memory vs resolution", **charts)
        self.fps_plot = gr.Plot(fps, label="Speed vs resolution", **charts)
        self.accuracy_plot = gr.Plot(accuracy, label="Accuracy vs speed", **charts)
        self.table = gr.Dataframe(table, label="Every point", interactive=False, wrap=True)
        with gr.Accordion("Measure on this machine", open=False):
            gr.Markdown(
                "A small sweep here, one subprocess per point, with the time cap below per point. On a CPU the "
                "methods take minutes per point even at low resolutions; points that run out of time or memory "
                "are recorded as such and larger resolutions of that method are skipped.",
                elem_classes="vos-small",
            )
            self.methods = gr.CheckboxGroup(method_choices(), value=default_methods(), label="Methods")
            with gr.Row():
                self.resolutions = gr.CheckboxGroup(
                    RESOLUTION_CHOICES, value=DEFAULT_RESOLUTIONS, label="Resolutions (short side, px)", scale=3
                )
                self.frames = gr.Slider(2, 16, value=DEFAULT_FRAMES, step=1, label="Frames per clip", scale=1)
            with gr.Row():
                self.timeout = gr.Number(DEFAULT_TIMEOUT, minimum=10, label="Time cap per point (s)", precision=0)
                devices = device_choices()
                self.device = gr.Dropdown(devices, value=devices[0], label="Device")
                self.weights = gr.Radio(WEIGHTS_CHOICES, value="random", label="Weights")
                self.precisions = gr.CheckboxGroup(
                    precision_choices(),
                    value=["fp32"],
                    label="Precision",
                    info="Each ticked precision is its own line; a reduced one's table rows give its speed-up.",
                )
            with gr.Row():
                self.measure_button = gr.Button("Measure", variant="primary")
                self.stop_button = gr.Button("Stop", interactive=False)
            self.status = gr.Markdown()
        self._wire()
        return self

    def _views(self) -> list[gr.components.Component]:
        return [self.memory_plot, self.fps_plot, self.accuracy_plot, self.table, self.details]

    def _wire(self) -> None:
        # .input, not .change: the sweep sets the selector itself and redraws in the same step.
        self.selector.input(
            user_errors(render), [self.selector, self.log_scale], self._views(), api_visibility="private"
        )
        self.log_scale.change(
            user_errors(render), [self.selector, self.log_scale], self._views(), api_visibility="private"
        )
        prepared = self.measure_button.click(
            prepare,
            [self.methods, self.resolutions],
            [self.token, self.measure_button, self.stop_button],
            queue=False,
            api_visibility="private",
        )
        job = prepared.success(
            measure_job,
            [
                self.methods,
                self.resolutions,
                self.frames,
                self.timeout,
                self.device,
                self.weights,
                self.precisions,
                self.log_scale,
                self.measured,
                self.token,
            ],
            [self.status, self.selector, self.measured, *self._views()],
            concurrency_id=GPU_QUEUE,  # never beside a comparison: both would distort the other's memory and time
            concurrency_limit=1,
            show_progress="full",
            show_progress_on=[self.status],
            api_visibility="private",
        )
        job.then(
            lambda: (gr.Button(interactive=True), gr.Button(interactive=False)),
            None,
            [self.measure_button, self.stop_button],
            queue=False,
            api_visibility="private",
        )
        self.stop_button.click(stop, [self.token], [self.stop_button], queue=False, api_visibility="private")


def build() -> BenchmarkPage:
    """Add the Benchmark page to the current Blocks context."""
    return BenchmarkPage().build()


CSS = """
.vos-bench-details { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 0.85rem;
  margin: 0 0 8px; overflow-wrap: anywhere; }
.vos-bench-details > span:nth-child(odd) { font-weight: 600; color: var(--body-text-color-subdued); }
/* A phone holds one legend entry a row, so a chart's legend would cover its plot: there a tap on a line names it
   and the table below lists every point. */
@media (max-width: 720px) { .vos-chart g.legend { display: none; } }
"""
