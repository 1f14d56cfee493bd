"""Plotly figures of a sweep: memory and fps versus resolution, and the papers' accuracy beside the speed measured
here; PNG (kaleido) and HTML export."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vos.bench.compute import compute_limit_fps
from vos.bench.planning import (
    CANCELLED,
    FAILED,
    MEMORY_CAP,
    NO_WEIGHTS,
    OK,
    OOM,
    SKIPPED,
    STEADY,
    TIMEOUT,
    TOTAL,
    BenchError,
    Point,
    frame_size,
)
from vos.bench.results import describe_settings, hardware_slug, points_of

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vos.methods.base import MethodInfo


log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Figures

MARKERS = {OOM: "x", MEMORY_CAP: "x", TIMEOUT: "hourglass", FAILED: "triangle-down", NO_WEIGHTS: "triangle-down"}
FAILURE_TEXT = {OOM: "OOM", MEMORY_CAP: "mem cap", TIMEOUT: "timeout", FAILED: "failed", NO_WEIGHTS: "no weights"}


def _colours(keys: Sequence[str]) -> dict[str, str]:
    import plotly.express as px

    palette = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
    return {key: palette[i % len(palette)] for i, key in enumerate(keys)}


def _series_colours(grouped: dict[str, list[Point]]) -> dict[str, str]:
    """A colour per series, shared by the precisions of one method · variant (they differ by marker and name)."""
    by_method = _colours(list(dict.fromkeys(points[0].method_variant for points in grouped.values())))
    return {name: by_method[points[0].method_variant] for name, points in grouped.items()}


def _series(results: dict[str, Any]) -> dict[str, list[Point]]:
    grouped: dict[str, list[Point]] = {}
    for point in points_of(results):
        grouped.setdefault(point.series, []).append(point)
    for points in grouped.values():
        points.sort(key=lambda p: p.resolution)
    return grouped


def _title(what: str, results: dict[str, Any], *notes: str) -> str:
    lines = [results["hardware"]["label"], describe_settings(results) + busy_note(results), *notes]
    return _with_subtitle(what, lines)


SUBTITLE_WIDTH = 52  # characters per subtitle line: what a phone-wide chart shows without clipping
TITLE_WIDTH = 36  # the same for the title's larger letters


def _with_subtitle(title: str, lines: Sequence[str]) -> str:
    """The title and its subtitle lines, each wrapped at " · " (then at spaces) so a phone shows all of it."""
    wrapped = [piece for line in lines if line for piece in _wrap(line, SUBTITLE_WIDTH)]
    heading = "<br>".join(_wrap(title, TITLE_WIDTH))
    return heading + "".join(f"<br><sup>{line}</sup>" for line in wrapped)


def _wrap(line: str, width: int) -> list[str]:
    """Greedy lines of at most ``width`` characters: whole " · " segments where they fit, else words."""
    lines: list[str] = []

    def add(piece: str, sep: str) -> None:
        if lines and len(lines[-1]) + len(sep) + len(piece) <= width:
            lines[-1] += sep + piece
        else:
            lines.append(piece)

    for segment in line.split(" · "):
        if len(segment) <= width:
            add(segment, " · ")
            continue
        for index, word in enumerate(segment.split(" ")):
            add(word, " · " if index == 0 else " ")
    return lines


def busy_note(results: dict[str, Any]) -> str:
    """Said beside the timings when other work shared the machine during the sweep: a load average well above the
    cores (a point's own threads account for up to one per core)."""
    loads = [max(p.load_avg) for p in points_of(results) if p.load_avg]
    cores = results["hardware"].get("cpu_cores") or 0
    if not loads or not cores or max(loads) <= 1.5 * cores:
        return ""
    return f" · shared machine (load average up to {max(loads):.0f} on {cores} cores): times are pessimistic"


def _resolution_axis(fig: go.Figure, results: dict[str, Any]) -> None:
    resolutions = sorted({p.resolution for p in points_of(results)})
    fig.update_xaxes(
        title="resolution (short side; 16:9 frames)",
        type="log",
        tickvals=resolutions,
        ticktext=[f"{r}p<br>{frame_size(r)[0]}x{frame_size(r)[1]}" for r in resolutions],
    )


def _layout(fig: go.Figure, title: str) -> None:
    fig.update_layout(
        title={
            "text": title,
            "x": 0.01,
            "xanchor": "left",
            "yref": "container",
            "y": 1,
            "yanchor": "top",
            "pad": {"t": 14},
        },
        template="plotly_white",
        # Below the plot, in a row: beside it, it takes half of a phone's width from the lines.
        # At the foot of the figure (not of the plot, whose height varies), clear of the axis title.
        legend={"title": "method · variant", "orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.01},
        # Room for the title and each subtitle line: more lines must not run into the plot.
        margin={"l": 60, "r": 20, "t": 50 + 24 * title.count("<br>"), "b": 150},
        hovermode="closest",
    )


PNG_WIDTH = 1000
PLOT_HEIGHT = 340  # the plot itself; the title above and the legend below get what they need on top
LEGEND_PER_ROW = 4  # legend entries a 1000-pixel row holds
LEGEND_ENTRY_PX = 200  # four of them beside the legend's title


def _fit_height(fig: go.Figure, *, equal_entries: bool = True) -> None:
    """Give ``fig`` a fixed plot height: its title's margin, PLOT_HEIGHT, and room below for every legend row.
    Without a height the app drew each chart 450 pixels tall, and a long subtitle and legend left the plot a
    sliver (or nothing, on a phone); a sweep with bf16 series has twice the legend entries."""
    entries = sum(1 for trace in fig.data if trace.showlegend is not False)
    rows = -(-entries // LEGEND_PER_ROW)
    bottom = max(fig.layout.margin.b or 0, 90 + 26 * rows)
    # Equal entries, so a row holds LEGEND_PER_ROW of them whatever their labels (a fifth one ran off the edge);
    # a legend in groups (one per method) keeps its own widths, or its longest labels are cut.
    if equal_entries:
        fig.update_layout(legend={"entrywidth": LEGEND_ENTRY_PX, "entrywidthmode": "pixels"})
    fig.update_layout(margin={"b": bottom}, height=(fig.layout.margin.t or 0) + PLOT_HEIGHT + bottom)


def _hover(point: Point) -> str:
    lines = [
        f"<b>{point.series}</b> {point.resolution}p ({point.size[0]}x{point.size[1]}), {point.frames} frames",
        f"status: {point.status_text()}",
    ]
    if point.peak_memory_mib is not None:
        extra = f", reserved {point.reserved_memory_mib:,.0f}" if point.reserved_memory_mib is not None else ""
        lines.append(f"peak memory: {point.peak_memory_mib:,.0f} MiB ({point.memory_kind}{extra})")
    if point.baseline_memory_mib is not None:
        lines.append(f"before building the method: {point.baseline_memory_mib:,.0f} MiB")
    if point.fps is not None:
        counted = "over the whole clip (offline method)" if point.fps_basis == TOTAL else "steady state"
        lines.append(f"fps: {point.fps:.3g} ({counted})")
    if point.first_frame_s is not None:
        lines.append(f"first frame: {point.first_frame_s:.3g} s (time to the first label map)")
    if point.flops_per_frame:
        lines.append(f"work counted: {point.flops_per_frame / 1e9:,.3g} GFLOP a frame")
        if point.first_frame_flops and point.fps_basis == STEADY:
            lines.append(f"frame 0: {point.first_frame_flops / 1e9:,.3g} GFLOP")
    if point.load_s is not None:
        lines.append(f"load: {point.load_s:.3g} s")
    return "<br>".join(lines)


def _failure_markers(
    fig: go.Figure,
    points: list[Point],
    colour: str,
    name: str,
    y_of: Callable[[Point], float | None],
    *,
    nudge: float,
) -> None:
    """Markers for the points that did not finish, labelled with why. ``nudge`` shifts them sideways (a factor on
    the log axis) so several methods failing at one resolution stay apart. A series with no finished point shows
    in the legend through these markers."""
    failed = [p for p in points if p.status not in (OK, SKIPPED, CANCELLED)]
    if not failed:
        return
    fig.add_scatter(
        x=[p.resolution * nudge for p in failed],
        y=[y_of(p) for p in failed],
        mode="markers+text",
        marker={"symbol": [MARKERS.get(p.status, "x") for p in failed], "size": 12, "color": colour},
        text=[FAILURE_TEXT.get(p.status, p.status) for p in failed],
        textposition="top center",
        textfont={"color": colour, "size": 10},
        hovertext=[_hover(p) for p in failed],
        hoverinfo="text",
        legendgroup=name,
        showlegend=not any(p.ok for p in points),
        name=name,
    )


def _nudges(count: int) -> list[float]:
    """Sideways factors spreading ``count`` series' failure markers around each resolution."""
    return [1 + 0.025 * (i - (count - 1) / 2) for i in range(count)]


def _measured_line(fig: go.Figure, name: str, points: Sequence[Point], values: Sequence[float], colour: str) -> None:
    """One series' measured points as a line over the resolutions, with the point's details on hover; a reduced
    precision's points are diamonds beside its fp32 line's circles, in the same colour."""
    reduced = any(p.dtype not in (None, "fp32") for p in points)
    fig.add_scatter(
        x=[p.resolution for p in points],
        y=list(values),
        mode="lines+markers",
        name=name,
        legendgroup=name,
        line={"color": colour},
        marker={"symbol": "diamond" if reduced else "circle", "size": 8},
        hovertext=[_hover(p) for p in points],
        hoverinfo="text",
    )


def memory_figure(results: dict[str, Any], *, log_y: bool = True) -> go.Figure:
    """Peak memory versus resolution: one line per method · variant; out-of-memory, timeouts and failures marked
    (at the memory they had reached when known, else above the highest point); CUDA's reserved peak dotted."""
    import plotly.graph_objects as go

    grouped = _series(results)
    colours = _series_colours(grouped)
    nudges = dict(zip(grouped, _nudges(len(grouped))))
    measured = [p.peak_memory_mib for pts in grouped.values() for p in pts if p.peak_memory_mib]
    top = max(measured, default=1024.0) * 1.6
    fig = go.Figure()
    cuda = str(results["settings"]["device"]).startswith("cuda")
    for name, points in grouped.items():
        ok = [p for p in points if p.ok]
        _measured_line(fig, name, ok, [p.peak_memory_mib for p in ok], colours[name])
        if cuda and any(p.reserved_memory_mib for p in ok):
            fig.add_scatter(
                x=[p.resolution for p in ok],
                y=[p.reserved_memory_mib for p in ok],
                mode="lines",
                name=f"{name} (reserved)",
                legendgroup=name,
                showlegend=False,
                line={"color": colours[name], "dash": "dot"},
                hoverinfo="skip",
            )
        _failure_markers(fig, points, colours[name], name, lambda p: p.peak_memory_mib or top, nudge=nudges[name])
    baselines = [p.baseline_memory_mib for pts in grouped.values() for p in pts if p.baseline_memory_mib]
    if baselines and min(baselines) >= 1:
        text = f"the process before building a method (Python, torch, the clip): {min(baselines):,.0f} MiB"
        _hline(fig, min(baselines), text, log_y=log_y, dash="dot")
    capacity = _capacity_mib(results)
    if capacity and max(measured, default=0) >= capacity / 4:  # far above every point it would only flatten them
        _hline(fig, capacity, f"{'GPU memory' if cuda else 'RAM'} {capacity / 1024:,.0f} GiB", log_y=log_y)
    # Short: the axis is only as tall as the chart on a phone; the subtitle and hover say the rest.
    title = "peak GPU memory, MiB (dotted: reserved)" if cuda else "peak memory, MiB (process RSS)"
    fig.update_yaxes(title=title, type="log" if log_y else "linear")
    _resolution_axis(fig, results)
    _layout(fig, _title("Peak memory vs resolution", results))
    _fit_height(fig)
    return fig


def _hline(fig: go.Figure, y: float, text: str, *, log_y: bool, dash: str = "dash") -> None:
    """A labelled horizontal reference line. The label is placed by hand: plotly's hline annotations ignore a log
    axis (they land at y instead of log10(y))."""
    fig.add_hline(y=y, line={"dash": dash, "color": "#999", "width": 1})
    fig.add_annotation(
        x=1,
        xref="paper",
        y=math.log10(y) if log_y else y,
        yref="y",
        text=text,
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
        font={"color": "#777", "size": 10},
    )


def _capacity_mib(results: dict[str, Any]) -> float | None:
    hw = results["hardware"]
    gib = hw.get("gpu_memory_gib") if str(results["settings"]["device"]).startswith("cuda") else hw.get("ram_gib")
    return gib * 1024 if gib else None


def fps_figure(results: dict[str, Any], *, log_y: bool = True) -> go.Figure:
    """Frames per second versus resolution; failures marked below the slowest point. Online methods are charted
    in the steady state (after frame 0), offline ones over the whole clip (their work comes before frame 0);
    the subtitle says so."""
    import plotly.graph_objects as go

    grouped = _series(results)
    colours = _series_colours(grouped)
    nudges = dict(zip(grouped, _nudges(len(grouped))))
    measured = [p.fps for pts in grouped.values() for p in pts if p.fps]
    bottom = min(measured, default=1.0) / 2
    fig = go.Figure()
    rates = gemm_gflops(results)
    limited = False
    for name, points in grouped.items():
        ok = [p for p in points if p.ok and p.fps]
        _measured_line(fig, name, ok, [p.fps for p in ok], colours[name])
        limited |= _limit_line(fig, name, ok, rates, colours[name])
        _failure_markers(fig, points, colours[name], name, lambda p: bottom, nudge=nudges[name])
    fig.update_yaxes(title="frames per second", type="log" if log_y else "linear")
    _resolution_axis(fig, results)
    bases = {p.fps_basis for pts in grouped.values() for p in pts if p.fps}
    counted = {
        frozenset({STEADY}): "steady state, after frame 0",
        frozenset({TOTAL}): "over the whole clip",
    }.get(frozenset(bases), "online methods: steady state after frame 0; offline methods: over the whole clip")
    notes = [f"fps {counted}"]
    if limited:
        measured = ", ".join(f"{dtype} {rate:,.0f}" for dtype, rate in rates.items())
        notes.append(
            f"dashed: compute limit = this machine's GEMM rate ({measured} GFLOP/s, torch.mm) / the method's "
            "FLOPs a frame (torch FlopCounterMode): its fps if all its counted work ran at that rate"
        )
    _layout(fig, _title("Speed vs resolution", results, *notes))
    _fit_height(fig)
    return fig


def gemm_gflops(results: dict[str, Any]) -> dict[str, float]:
    """The GEMM rate per precision the sweep measured on its machine (none in files from before it did)."""
    gemm = results["hardware"].get("gemm") or {}
    return {dtype: rate for dtype, rate in (gemm.get("gflops") or {}).items() if rate}


def _limit_line(fig: go.Figure, name: str, points: Sequence[Point], rates: dict[str, float], colour: str) -> bool:
    """The series' compute limit (GEMM rate of its precision / counted FLOPs a frame) as a dashed line; False where
    its points have no count or the sweep no rate."""
    limits = [(p, compute_limit_fps(rates.get(p.dtype or "fp32"), p.flops_per_frame)) for p in points]
    limits = [(p, fps) for p, fps in limits if fps]
    if not limits:
        return False
    fig.add_scatter(
        x=[p.resolution for p, _ in limits],
        y=[fps for _, fps in limits],
        mode="lines",
        name=f"{name}: compute limit",
        legendgroup=name,  # shown and hidden with its series; the subtitle says what the dashes are
        showlegend=False,
        line={"color": colour, "dash": "dash", "width": 1.5},
        hovertext=[
            f"<b>{name}</b> {p.resolution}p: compute limit {fps:.3g} fps<br>"
            f"= GEMM {rates[p.dtype or 'fp32']:,.0f} GFLOP/s / {p.flops_per_frame / 1e9:,.3g} GFLOP a frame<br>"
            f"measured {p.fps:.3g} fps: {100 * p.fps / fps:.0f}% of the limit"
            for p, fps in limits
        ],
        hoverinfo="text",
    )
    return True


@dataclass(frozen=True)
class PaperFigure:
    """A paper's accuracy paired with its reported speed (from the same or a matching Reported entry)."""

    method: str
    variant: str | None
    dataset: str
    accuracy: float  # J&F
    fps: float | None
    hardware: str | None
    resolution: str | None

    @property
    def label(self) -> str:
        return f"{self.method}" + (f" · {self.variant}" if self.variant else "")


ACCURACY_METRIC = "J&F"


def paper_figures(infos: Sequence[MethodInfo]) -> list[PaperFigure]:
    """Every reported J&F with the speed its paper gives for that variant (the first matching speed entry)."""
    figures = []
    for info in infos:
        speeds = [r for r in info.reported if r.fps]
        for rep in info.reported:
            if ACCURACY_METRIC not in rep.metrics:
                continue
            speed = rep if rep.fps else next((s for s in speeds if s.variant == rep.variant), None)
            figures.append(
                PaperFigure(
                    method=info.key,
                    variant=rep.variant,
                    dataset=rep.dataset,
                    accuracy=float(rep.metrics[ACCURACY_METRIC]),
                    fps=speed.fps if speed else None,
                    hardware=speed.hardware if speed else None,
                    resolution=speed.resolution if speed else None,
                )
            )
    return figures


def accuracy_speed_figure(
    results: dict[str, Any] | None, infos: Sequence[MethodInfo] | None = None, *, at_resolution: int = 480
) -> go.Figure:
    """Accuracy (J&F) versus speed: the papers' reported figures as labelled markers, and the speed measured here
    (at ``at_resolution`` or the nearest measured) beside them, joined by a dotted line.

    Sweeps with random weights measure speed, not accuracy: a measured marker then sits at the paper's J&F for the
    same method and variant, and says so. A point that carries its own scores uses them.
    """
    import plotly.graph_objects as go

    if infos is None:
        from vos.methods import available

        infos = available()
    figures = paper_figures(infos)
    keys = [info.key for info in infos]
    grouped = _series(results) if results else {}
    for points in grouped.values():
        if points[0].method not in keys:
            keys.append(points[0].method)
    colours = _colours(keys)
    fig = go.Figure()
    with_speed = [f for f in figures if f.fps]
    for key in keys:
        mine = [f for f in with_speed if f.method == key]
        if not mine:
            continue
        fig.add_scatter(
            x=[f.fps for f in mine],
            y=[f.accuracy for f in mine],
            mode="markers+text",
            marker={"symbol": "star", "size": 14, "color": colours[key]},
            text=[f"{f.label} ({f.hardware})" if f.hardware else f.label for f in mine],
            textposition="top center",
            name=f"{key} (paper)",
            legendgroup=key,
            hovertext=[
                f"<b>{f.label}</b> as its paper reports<br>{f.dataset}: J&F {f.accuracy:g}<br>"
                f"{f.fps:g} fps on {f.hardware or 'unnamed hardware'}" + (f" ({f.resolution})" if f.resolution else "")
                for f in mine
            ],
            hoverinfo="text",
        )
    defaults = {info.key: info.default_variant for info in infos}
    measured_here, unplaced = 0, []
    for name, points in grouped.items():
        key, variant = points[0].method, points[0].variant
        ok = [p for p in points if p.ok and p.fps]
        if not ok:
            continue
        point = min(ok, key=lambda p: (abs(p.resolution - at_resolution), -p.resolution))
        own = (point.scores or {}).get(ACCURACY_METRIC)
        paper = _paper_accuracy(figures, key, variant, default=variant == defaults.get(key))
        accuracy = own if own is not None else (paper.accuracy if paper else None)
        if accuracy is None:
            unplaced.append(name)
            continue
        measured_here += 1
        source = "measured" if own is not None else f"the paper's ({paper.dataset})"
        fig.add_scatter(
            x=[point.fps],
            y=[accuracy],
            mode="markers+text",
            marker={"symbol": "circle-open", "size": 13, "line": {"width": 2}, "color": colours[key]},
            text=[f"{name} here, {point.resolution}p"],
            textposition="bottom center",
            name=f"{name} (measured here)",
            legendgroup=key,
            hovertext=[_hover(point) + f"<br>J&F: {accuracy:g}, {source}"],
            hoverinfo="text",
        )
        if paper is not None and paper.fps:
            fig.add_scatter(
                x=[paper.fps, point.fps],
                y=[paper.accuracy, accuracy],
                mode="lines",
                line={"dash": "dot", "color": colours[key], "width": 1},
                showlegend=False,
                hoverinfo="skip",
                legendgroup=key,
            )
    missing = [f for f in figures if not f.fps]
    notes = []
    if results:
        notes.append(f"circles: speed measured on {results['hardware']['label']} at ~{at_resolution}p")
        details = []
        if measured_here and all(not p.scores for p in points_of(results)):
            details.append("at the paper's J&F for that variant (random weights measure speed, not accuracy)")
        if unplaced:
            details.append(f"no reported J&F to place {', '.join(unplaced)}")
        notes.append("; ".join(details))
    if missing:
        notes.append(f"{len(missing)} reported accuracies without a reported speed are not shown")
    xs = [x for trace in fig.data for x in (trace.x or ()) if x]
    ys = [y for trace in fig.data for y in (trace.y or ()) if y is not None]
    # Room around the markers for their centred labels (a log axis' range is in decades); the papers' labels name
    # the hardware too, so the fastest (rightmost) ones need the most.
    x_range = [math.log10(min(xs)) - 0.4, math.log10(max(xs)) + 0.7] if xs else None
    y_range = [min(ys) - 4, max(ys) + 3] if ys else None  # room for the labels below and above the markers
    fig.update_xaxes(title="frames per second (log)", type="log", range=x_range)
    fig.update_yaxes(title=f"{ACCURACY_METRIC} (DAVIS-style, %)", range=y_range)
    _layout(fig, _with_subtitle("Accuracy vs speed: papers (stars) and this machine (circles)", notes))
    fig.update_layout(legend={"title": "method"}, showlegend=True, margin={"b": 150})
    _fit_height(fig, equal_entries=False)
    return fig


def _paper_accuracy(figures: Sequence[PaperFigure], key: str, variant: str, *, default: bool) -> PaperFigure | None:
    """The paper's figure for this method and variant, preferring one with a speed and DAVIS-2017 val. A figure
    that names no variant stands for the default variant only when the method names no variant at all (otherwise
    it is some other configuration, described in its note)."""
    named = any(f.variant for f in figures if f.method == key)
    accepted = (variant,) if named or not default else (variant, None)
    candidates = [f for f in figures if f.method == key and f.variant in accepted]
    candidates.sort(key=lambda f: (f.variant != variant, f.fps is None, "DAVIS-2017" not in f.dataset))
    return candidates[0] if candidates else None


CHARTS = {"memory": memory_figure, "fps": fps_figure}


def export_charts(
    results: dict[str, Any], out_dir: str | Path, *, stem: str | None = None, png: bool = True
) -> list[Path]:
    """Write the memory, speed and accuracy-vs-speed charts as HTML and (with kaleido and a Chrome) PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or hardware_slug(results["hardware"])
    figures = {name: build(results) for name, build in CHARTS.items()}
    figures["accuracy"] = accuracy_speed_figure(results)
    for noisy in ("choreographer", "kaleido", "logistro"):  # kaleido's Chrome driver logs every temp folder
        logging.getLogger(noisy).setLevel(logging.WARNING)
    written = []
    for name, fig in figures.items():
        html_path = out_dir / f"{stem}-{name}.html"
        fig.write_html(html_path, include_plotlyjs="cdn")
        written.append(html_path)
        if png:
            png_path = out_dir / f"{stem}-{name}.png"
            try:
                fig.write_image(png_path, width=PNG_WIDTH, height=fig.layout.height, scale=1)
            except Exception as err:  # noqa: BLE001 -- kaleido/Chrome problems vary; the HTML is still there
                raise BenchError(
                    f"Could not write {png_path.name} ({type(err).__name__}: {err}). PNG export needs kaleido "
                    "(pip install kaleido) and a Chrome or Chromium (set BROWSER_PATH=/usr/bin/chromium)."
                ) from err
            written.append(png_path)
    return written
