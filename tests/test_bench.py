"""The benchmark: sweeps in subprocesses, statuses, the results file, the figures and the Benchmark page.

Each measured point starts a Python with torch (~3-5 s here), so the sweeps below keep to a few points.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest

import tests.fakes  # noqa: F401 -- registers the fake_* methods in this process
from vos import bench
from vos.__main__ import main
from vos.errors import VosError
from vos.methods import SEMI, MethodInfo, Option, Paper, Reported, Resolution, UnknownMethod, available

# --------------------------------------------------------------------------------------------------------------
# What to measure


def test_frame_size_is_16_9_with_even_sides():
    assert bench.frame_size(240) == (240, 426)
    assert bench.frame_size(480) == (480, 854)
    assert bench.frame_size(720) == (720, 1280)
    assert bench.frame_size(1080) == (1080, 1920)
    assert all(v % 2 == 0 for r in (33, 121, 255) for v in bench.frame_size(r))


def test_parse_resolutions():
    assert bench.parse_resolutions("480p, 240,240") == [240, 480]
    assert bench.parse_resolutions([360, 120]) == [120, 360]
    for bad in ("abc", "8", ""):
        with pytest.raises(bench.BenchError):
            bench.parse_resolutions(bad)


def _info(
    options: tuple[Option, ...] = (),
    reported: tuple[Reported, ...] = (),
    key: str = "m",
    resolution: Resolution | None = None,
) -> MethodInfo:
    paper = Paper("P", "A", "V", 2024, "https://example.org")
    return MethodInfo(
        key,
        key.upper(),
        SEMI,
        "s",
        ("a", "b"),
        "a",
        paper,
        "r",
        "MIT",
        reported,
        options,
        resolution=resolution or Resolution.as_given(),
    )


def test_size_option_follows_the_declared_resolution_unless_set():
    short = _info(
        (Option("size", int, None, "short side"),), resolution=Resolution.short_side(480, multiple=8, option="size")
    )
    assert bench.size_option(short, {}, (360, 640)) == {"size": 360}
    assert bench.size_option(short, {}, (102, 182)) == {"size": 104}  # a multiple of 8
    assert bench.size_option(short, {"size": 240}, (360, 640)) == {"size": 240}
    fixed = _info(
        (Option("size", tuple, None, "H x W"),), resolution=Resolution.fixed((320, 480), multiple=8, option="size")
    )
    assert bench.size_option(fixed, {"x": 1}, (240, 426)) == {"x": 1, "size": (240, 424)}
    assert bench.size_option(_info(), {}, (240, 426)) == {}  # computes at the frame's own size
    not_settable = _info(resolution=Resolution.fixed((128, 224)))
    assert bench.size_option(not_settable, {}, (240, 426)) == {}


def test_parse_methods_takes_variants_and_options():
    specs = bench.parse_methods("fake_copy,fake_copy:other,fake_fail,fake_copy", ["fake_copy.shift=2"])
    assert [(s.key, s.variant) for s in specs] == [
        ("fake_copy", "default"),
        ("fake_copy", "other"),
        ("fake_fail", "default"),
    ]
    assert specs[0].options == {"shift": 2} and specs[1].options == {"shift": 2}
    with pytest.raises(UnknownMethod, match="fake_copy"):
        bench.parse_methods("fake_cpy")
    with pytest.raises(VosError, match="variant"):
        bench.parse_methods("fake_copy:nope")


# --------------------------------------------------------------------------------------------------------------
# One point, in this process


def _task(key: str, **kwargs) -> bench.Task:
    spec = bench.parse_methods(key)[0]
    (_, task), *_ = bench.plan([spec], [32], frames=3, repeats=1, device="cpu", dtype="fp32", weights="random")
    for name, value in kwargs.items():
        setattr(task, name, value)
    return task


def test_out_of_memory_and_failure_are_recorded_not_raised(tmp_path):
    oom = bench.measure_point(_task("fake_oom"), tmp_path / "oom.json")
    assert oom["status"] == bench.OOM and "OutOfMemoryError" in oom["reason"]
    assert oom["frames_done"] == 1 and oom["load_s"] is not None and oom["phase"] == "done"
    assert json.loads((tmp_path / "oom.json").read_text())["status"] == bench.OOM  # the parent reads this file
    failed = bench.measure_point(_task("fake_fail"))
    assert failed["status"] == bench.FAILED and "synthetic failure" in failed["reason"] and failed["hint"]
    ok = bench.measure_point(_task("fake_copy", repeats=2))
    assert ok["status"] == bench.OK and ok["frames_done"] == 6
    assert len(ok["fps_runs"]) == 2 and ok["fps"] > 0 and len(ok["first_frame_runs"]) == 2


def test_an_offline_method_is_timed_over_the_whole_clip():
    record = bench.measure_point(_task("fake_offline"))
    assert record["fps_basis"] == bench.TOTAL and record["first_frame_s"] >= 0.2
    assert record["fps"] <= 3 / 0.2  # its work before frame 0 counts: the steady frames alone are far faster
    specs = bench.parse_methods("fake_offline")
    point, _ = bench.plan(specs, [32], frames=3, repeats=1, device="cpu", dtype="fp32", weights="random")[0]
    bench.sweeping._fill(point, record)
    assert point.fps_basis == bench.TOTAL  # and so the stored point and the chart say how it was counted
    assert "over the whole clip" in bench.fps_figure(_results([point])).layout.title.text


# --------------------------------------------------------------------------------------------------------------
# Sweeps: one subprocess per point


@pytest.mark.slow
def test_sweep_writes_a_valid_results_file(tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["bench", "--methods", "fake_alloc,fake_oom", "--resolutions", "32,48", "--frames", "3"]
    assert main([*argv, "--opt", "fake_alloc.mib=160", "--device", "cpu", "--timeout", "120", "--out", str(out)]) == 0
    results = bench.load_results(out)  # the schema check
    assert results["format"] == "vos-bench" and results["settings"]["frames"] == 3
    assert {"cpu", "cpu_cores", "torch", "ram_gib", "label"} <= results["hardware"].keys()
    assert results["hardware"]["gemm"]["gflops"]["fp32"] > 0  # measured in a process of its own, for the limit line
    assert "--opt fake_alloc.mib=160" in results["settings"]["command"]
    points = {(p.method, p.resolution): p for p in bench.points_of(results)}
    assert set(points) == {("fake_alloc", 32), ("fake_alloc", 48), ("fake_oom", 32), ("fake_oom", 48)}
    for resolution in (32, 48):
        alloc = points["fake_alloc", resolution]
        assert alloc.ok and alloc.fps > 0 and alloc.load_s is not None and alloc.first_frame_s is not None
        assert alloc.size == list(bench.frame_size(resolution)) and alloc.memory_kind == "cpu_rss"
        # The subprocess's own peak: the 160 MiB block shows above what the process held before the method.
        assert alloc.peak_memory_mib - alloc.baseline_memory_mib >= 150
        assert alloc.wall_s > alloc.load_s and alloc.load_avg is not None
        assert alloc.flops_per_frame is not None and alloc.flops_frames  # counted in the child, after the timing
    assert points["fake_oom", 32].status == bench.OOM and points["fake_oom", 32].frames_done == 1
    assert points["fake_oom", 48].status == bench.SKIPPED and "32p" in points["fake_oom", 48].reason
    captured = capsys.readouterr()
    assert "bench:" in captured.err  # the progress bar
    assert "out of memory" in captured.out and str(out) in captured.out


@pytest.mark.slow
def test_a_point_past_its_caps_is_stopped_and_recorded():
    slow = _task("fake_copy", options={"delay": 1000.0})
    timeout = bench.run_point(slow, timeout=10)
    assert timeout["status"] == bench.TIMEOUT and "10 s" in timeout["reason"] and 10 <= timeout["wall_s"] < 30
    assert timeout["peak_memory_mib"]  # the parent's reading of the killed child

    greedy = _task("fake_alloc", options={"mib": 3000})
    capped = bench.run_point(greedy, timeout=300, memory_cap_mib=1500)
    assert capped["status"] == bench.MEMORY_CAP and "1,500 MiB" in capped["reason"]
    assert 1500 <= capped["peak_memory_mib"] < 3000 + 1500

    failed = bench.run_point(_task("fake_fail"), timeout=300)
    assert failed["status"] == bench.FAILED and "synthetic failure" in failed["reason"]


# --------------------------------------------------------------------------------------------------------------
# Results files and figures


def _results(points: list[bench.Point], device: str = "cpu") -> dict:
    hardware = {"cpu": "Test CPU", "cpu_cores": 2, "ram_gib": 8.0, "torch": "2.x", "device": device}
    hardware["label"] = bench.hardware_label(hardware)
    return {
        "format": bench.FORMAT,
        "version": bench.FORMAT_VERSION,
        "created": "2026-01-01T00:00:00+00:00",
        "hardware": hardware,
        "settings": {"device": device, "dtype": "fp32", "weights": "random", "frames": 4, "repeats": 1},
        "points": [asdict(p) for p in points],
    }


def _point(method: str, resolution: int, status: str = bench.OK, **kwargs) -> bench.Point:
    values = {"fps": 10.0 / resolution * 100, "peak_memory_mib": resolution * 4.0} if status == bench.OK else {}
    values.update(kwargs)
    size = list(bench.frame_size(resolution))
    return bench.Point(method, "a", method.upper(), SEMI, resolution, size, 4, 1, status=status, **values)


SWEEP = [
    _point("m", 120),
    _point("m", 240),
    _point("m", 360, bench.OOM, reason="Ran out of memory", peak_memory_mib=3000.0),
    _point("n", 120),
    _point("n", 240, bench.TIMEOUT, reason="did not finish"),
    _point("n", 360, bench.SKIPPED, reason="timeout at 240p already."),
]


def test_results_file_is_checked(tmp_path):
    good = _results(SWEEP)
    assert bench.validate_results(json.loads(json.dumps(good))) is not None
    for breaks in (
        lambda d: d.update(format="other"),
        lambda d: d["points"][0].update(status="exploded"),
        lambda d: d["points"][0].update(fps=None),  # ok without a speed
        lambda d: d["points"][1].update(size=[240]),
        lambda d: d["points"][1].update(load_s=-1),
        lambda d: d.pop("hardware"),
    ):
        bad = json.loads(json.dumps(good))
        breaks(bad)
        with pytest.raises(bench.BenchError, match="not a benchmark results file"):
            bench.validate_results(bad)
    path = tmp_path / "x.json"
    path.write_text("{")
    with pytest.raises(bench.BenchError, match="Cannot read"):
        bench.load_results(path)


def test_figures_build_from_a_stored_file(tmp_path):
    path = bench.write_results(_results(SWEEP), tmp_path / "cpu.json")
    results = bench.load_results(path)
    label = results["hardware"]["label"]

    memory = bench.memory_figure(results)
    assert squeezed(label) in unwrapped(memory.layout.title.text) and memory.layout.yaxis.type == "log"
    lines = {t.name: t for t in memory.data if t.mode == "lines+markers"}
    assert list(lines) == ["m · a", "n · a"]
    assert list(lines["m · a"].x) == [120, 240] and list(lines["m · a"].y) == [480.0, 960.0]
    marks = [t for t in memory.data if t.mode == "markers+text"]
    assert [list(t.text) for t in marks] == [["OOM"], ["timeout"]]  # the skipped point is not drawn
    assert marks[0].y[0] == 3000.0  # the OOM point sits at the memory it had reached
    assert bench.memory_figure(results, log_y=False).layout.yaxis.type == "linear"

    fps = bench.fps_figure(results)
    assert squeezed(label) in unwrapped(fps.layout.title.text)
    assert [t.name for t in fps.data if t.mode == "lines+markers"] == ["m · a", "n · a"]

    infos = [
        _info(
            reported=(
                Reported("DAVIS-2017 val", {"J&F": 80.0, "J": 78.0}, "a"),
                Reported("DAVIS-2017 val", {}, "a", 20.0, "480p", "Titan Xp"),
            ),
            key="m",
        ),
        _info(reported=(Reported("DAVIS-2017 val", {"J&F": 70.0}, "a", 5.0, "480p", "V100"),), key="n"),
        _info(reported=(Reported("DAVIS-2017 val", {"J&F": 60.0}, None),), key="o"),  # no speed anywhere
    ]
    papers = bench.paper_figures(infos)
    assert [(f.method, f.accuracy, f.fps, f.hardware) for f in papers] == [
        ("m", 80.0, 20.0, "Titan Xp"),
        ("n", 70.0, 5.0, "V100"),
        ("o", 60.0, None, None),
    ]
    accuracy = bench.accuracy_speed_figure(results, infos)
    stars = [t for t in accuracy.data if t.marker.symbol == "star"]
    assert [(t.x[0], t.y[0]) for t in stars] == [(20.0, 80.0), (5.0, 70.0)]
    assert "m · a (Titan Xp)" in stars[0].text
    here = {t.name: t for t in accuracy.data if t.marker.symbol == "circle-open"}
    # Measured at the resolution nearest 480 (240p), at the paper's J&F (random weights measure no accuracy).
    assert here["m · a (measured here)"].x[0] == pytest.approx(10.0 / 240 * 100)
    assert here["m · a (measured here)"].y[0] == 80.0
    title = unwrapped(accuracy.layout.title.text)
    assert squeezed(label) in title and squeezed("without a reported speed") in title
    assert bench.accuracy_speed_figure(None, infos).data  # papers alone, before anything was measured

    assert "m · a 360p: Ran out of memory" in bench.summary_table(results)


def test_cli_charts_a_stored_file_and_fails_on_failed_points(tmp_path, capsys):
    ok = bench.write_results(_results(SWEEP), tmp_path / "ok.json")
    assert main(["bench", "--from", str(ok), "--charts", str(tmp_path / "charts"), "--no-png"]) == 0
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == [
        "cpu-test-cpu-2c-accuracy.html",
        "cpu-test-cpu-2c-fps.html",
        "cpu-test-cpu-2c-memory.html",
    ]
    failed = bench.write_results(_results([*SWEEP, _point("o", 120, bench.FAILED, reason="bug")]), tmp_path / "f.json")
    assert main(["bench", "--from", str(failed)]) == 1  # a failure (not a resource limit) is worth an exit code


def test_cli_refuses_bad_weights_and_dtype_before_measuring(tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["bench", "--methods", "fake_copy", "--resolutions", "64", "--out", str(out)]
    assert main([*argv, "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth: no such file or folder" in capsys.readouterr().err
    assert main([*argv, "--dtype", "fp16", "--device", "cpu"]) == 2
    assert "fp16 is not supported on the CPU" in capsys.readouterr().err
    assert not out.exists()


def test_tables_round_numbers_but_keep_them_numbers():
    assert bench.rounded(1365.14) == 1365 and bench.rounded(0.074123) == 0.0741 and bench.rounded(12.84) == 12.8
    assert bench.rounded(None) is None and bench.rounded("ok") == "ok" and bench.rounded(3) == 3
    from pages import benchmark

    table = benchmark.table_value(_results(SWEEP))
    assert table["peak MiB"].dtype.kind in "if" and table["fps"].dtype.kind in "if"  # sortable as numbers
    assert "reason" in table and "reason" not in benchmark.table_value(_results(SWEEP[:2]))  # empty in every row


def test_stored_results_are_valid_and_chart():
    stored = bench.stored_results()
    assert stored, "assets/bench/ holds at least one measured sweep"
    measured = {p.method for _, results in stored for p in bench.points_of(results) if p.status == bench.OK}
    missing = {info.key for info in available() if not info.key.startswith("fake_")} - measured
    assert not missing, f"no stored sweep measures {sorted(missing)}: run `python -m vos bench` and store it"
    for path, results in stored:
        assert path.name.startswith(("cpu-", "cuda-")), "name stored files after the hardware (hardware_slug)"
        assert bench.memory_figure(results).data and bench.fps_figure(results).data


# --------------------------------------------------------------------------------------------------------------
# The page


def test_benchmark_page_builds_and_shows_stored_results(tmp_path, monkeypatch):
    import gradio as gr

    from pages import benchmark as page

    store = tmp_path / "bench"
    bench.write_results(_results(SWEEP), store / "cpu-test-cpu-2c.json")
    monkeypatch.setattr(bench.results, "STORED_DIR", store)
    with gr.Blocks():
        built = page.build()
    assert built.selector.value == str(store / "cpu-test-cpu-2c.json")
    assert "Test CPU" in built.details.value
    assert ("fake_copy · other", "fake_copy:other") in page.method_choices()
    memory, fps, accuracy, table, details = page.render(built.selector.value, False)
    assert memory.layout.yaxis.type == "linear" and len(table) == len(SWEEP) and "Test CPU" in details


@pytest.mark.slow
def test_measure_here_runs_the_cli_sweep(tmp_path, monkeypatch):
    from pages import benchmark as page

    monkeypatch.setattr(bench.results, "STORED_DIR", tmp_path)
    monkeypatch.setattr(page, "_MEASURED_DIR", tmp_path / "measured")
    updates = list(page.measure_job(["fake_copy:default"], [32], 2, 120, "cpu", "random", ["fp32"], True, [], "token"))
    status, selector, measured, memory, fps, accuracy, table, details = updates[-1]
    assert status.startswith("1 of 1 points done (1 measured)")
    results = bench.load_results(measured[0])
    assert [p.status for p in bench.points_of(results)] == [bench.OK]
    assert selector.value == measured[0] and memory.data and len(table) == 1
    assert "token" not in page._CANCELS


def squeezed(text: str) -> str:
    return re.sub(r"[\s·]+", "", text)


def unwrapped(title: str) -> str:
    """A chart title's text without the breaks, separators and spaces where subtitles wrap for phones."""
    return squeezed(title.replace("</sup><br><sup>", ""))


def test_subtitles_wrap_to_a_phone_width():
    from vos.bench.charts import SUBTITLE_WIDTH, _with_subtitle

    line = "CPU Intel(R) Xeon(R) Processor · 2 cores · 23.5 GiB RAM · torch 2.14.1+cu130 · a-very-long-note " * 2
    title = _with_subtitle("Peak memory", [line])
    pieces = re.findall(r"<sup>(.*?)</sup>", title)
    assert len(pieces) > 2 and all(len(p) <= SUBTITLE_WIDTH for p in pieces)
    assert squeezed("".join(pieces)) == squeezed(line)  # nothing lost, only broken
