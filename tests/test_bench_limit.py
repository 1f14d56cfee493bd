"""The benchmark's compute limit: the machine's GEMM rate, each point's counted FLOPs, the speed chart's dashed
line; and sweeps that hold a reduced precision beside fp32."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.fakes import fake_info, registered
from vos import bench
from vos.device import fast_dtypes
from vos.methods import OFFLINE, SEMI, Method

# --------------------------------------------------------------------------------------------------------------
# A method whose work is known by hand

CHANNELS, HEADS, HEAD_DIM = 16, 2, 8


class KnownWork(Method):
    """Per frame: one (HW x C) @ (C x C) product and one attention over the HW tokens; frame 0 does the product
    twice (its set-up)."""

    info = fake_info("fake_work")

    def _segment(self, clip, first_mask):
        height, width = clip.size
        pixels = height * width
        weight = torch.ones(CHANNELS, CHANNELS)

        def work(products: int) -> None:
            for _ in range(products):
                torch.mm(torch.ones(pixels, CHANNELS), weight)
            tokens = torch.ones(1, HEADS, pixels, HEAD_DIM)
            F.scaled_dot_product_attention(tokens, tokens, tokens)

        if self.info.offline:
            for index in range(clip.num_frames):
                work(2 if index == 0 else 1)
            for _ in range(clip.num_frames):
                yield first_mask.copy()
            return
        for index in range(clip.num_frames):
            work(2 if index == 0 else 1)
            yield first_mask.copy()


class KnownWorkOffline(KnownWork):
    """The same work, all of it before frame 0's map."""

    info = fake_info("fake_work_offline", processing=OFFLINE)


def by_hand(height: int, width: int, products: int) -> int:
    pixels = height * width
    mm = 2 * pixels * CHANNELS * CHANNELS
    attention = 2 * (2 * HEADS * pixels * pixels * HEAD_DIM)  # q k^T, then the weights times v
    return products * mm + attention


def _task(key: str) -> bench.Task:
    spec = bench.parse_methods(key)[0]
    (_, task), *_ = bench.plan([spec], [24], frames=3, repeats=1, device="cpu", dtype="fp32", weights="random")
    return task


def test_a_points_flops_equal_the_hand_count():
    with registered(KnownWork, KnownWorkOffline):
        record = bench.measure_point(_task("fake_work"))
        offline = bench.measure_point(_task("fake_work_offline"))
    height, width = bench.frame_size(24)
    assert record["status"] == bench.OK and "flops_reason" not in record
    assert record["flops_frames"] == [by_hand(height, width, 2), by_hand(height, width, 1), by_hand(height, width, 1)]
    assert record["first_frame_flops"] == by_hand(height, width, 2)
    assert record["flops_per_frame"] == by_hand(height, width, 1)  # the frames the fps counts: 1 and 2
    # Offline: everything comes before frame 0's map; per frame is the clip's total over its frames.
    total = by_hand(height, width, 2) + 2 * by_hand(height, width, 1)
    assert offline["flops_frames"] == [total, 0, 0]
    assert offline["flops_per_frame"] == pytest.approx(total / 3, abs=1)


def test_tvos_flops_count_its_products():
    """A real method on a tiny frame: its count is positive, grows with the frame, and frame 0 is counted apart."""
    small = bench.measure_point(_task("tvos"))
    assert small["status"] == bench.OK and small["flops_per_frame"] > 0 and small["first_frame_flops"] > 0
    spec = bench.parse_methods("tvos")[0]
    (_, task), *_ = bench.plan([spec], [48], frames=2, repeats=1, device="cpu", dtype="fp32", weights="random")
    larger = bench.measure_point(task)
    assert larger["flops_per_frame"] > 3 * small["flops_per_frame"]  # 4x the pixels


def test_no_count_when_the_sweep_skips_it():
    task = _task("fake_copy")
    task.count_flops = False
    record = bench.measure_point(task)
    assert record["status"] == bench.OK and "flops_per_frame" not in record and record["phase"] == "done"


def test_gemm_rate_is_measured_and_recorded(tmp_path, monkeypatch):
    rates = bench.gemm_rates("cpu", sizes=(128,), seconds=0.01)
    assert rates["gflops"]["fp32"] > 0 and rates["threads"] >= 1 and rates["sizes"] == [128]
    assert list(rates["gflops"]) == fast_dtypes(torch.device("cpu"))  # fp32, and bf16 where the CPU has the units

    # The sweep keeps what the measuring process reports (a child; here the same function, smaller).
    monkeypatch.setattr(bench.sweeping, "measure_gemm", lambda device: bench.gemm_rates(device, (128,), 0.01))
    monkeypatch.setattr(
        bench.sweeping, "run_point", lambda task, **kwargs: {"status": bench.OK, "fps": 1.0, "peak_memory_mib": 1.0}
    )
    out = tmp_path / "r.json"
    results = bench.run_sweep(bench.parse_methods("fake_copy"), [32], frames=2, device="cpu", out=out)
    assert results["hardware"]["gemm"]["gflops"]["fp32"] > 0
    assert bench.load_results(out)["hardware"]["gemm"] == results["hardware"]["gemm"]


# --------------------------------------------------------------------------------------------------------------
# Charts and tables


def _results(points: list[bench.Point], gemm: dict | None) -> dict:
    hardware = {"cpu": "Test CPU", "cpu_cores": 2, "ram_gib": 8.0, "torch": "2.x", "device": "cpu"}
    hardware["label"] = bench.hardware_label(hardware)
    if gemm is not None:
        hardware["gemm"] = gemm
    return {
        "format": bench.FORMAT,
        "version": bench.FORMAT_VERSION,
        "created": "2026-01-01T00:00:00+00:00",
        "hardware": hardware,
        "settings": {"device": "cpu", "dtype": "fp32,bf16", "weights": "random", "frames": 4, "repeats": 1},
        "points": [asdict(p) for p in points],
    }


def _point(resolution: int, fps: float, dtype: str = "fp32", flops: float | None = None) -> bench.Point:
    size = list(bench.frame_size(resolution))
    return bench.Point(
        "m", "a", "M", SEMI, resolution, size, 4, 1, fps=fps, peak_memory_mib=100.0, dtype=dtype, flops_per_frame=flops
    )


GEMM = {"gflops": {"fp32": 200.0, "bf16": 600.0}, "sizes": [2048], "threads": 2}
SWEEP = [
    _point(120, 4.0, flops=10e9),
    _point(240, 1.0, flops=40e9),
    _point(120, 8.0, "bf16", flops=10e9),
    _point(240, 2.5, "bf16", flops=40e9),
]


def test_speed_chart_draws_the_compute_limit_where_the_data_has_it():
    fig = bench.fps_figure(_results(SWEEP, GEMM))
    lines = {t.name: t for t in fig.data}
    assert list(lines) == ["m · a", "m · a: compute limit", "m · a · bf16", "m · a · bf16: compute limit"]
    assert list(lines["m · a: compute limit"].y) == pytest.approx([20.0, 5.0])  # 200 GFLOP/s / 10 and 40 GFLOP
    assert list(lines["m · a · bf16: compute limit"].y) == pytest.approx([60.0, 15.0])  # bf16 points: bf16's rate
    assert lines["m · a: compute limit"].line.dash == "dash"
    assert lines["m · a"].line.color == lines["m · a · bf16"].line.color  # one method, one colour
    assert lines["m · a · bf16"].marker.symbol == "diamond"
    # A limit line is no legend entry of its own: it shows and hides with its series (the subtitle explains dashes).
    assert lines["m · a: compute limit"].showlegend is False
    assert lines["m · a: compute limit"].legendgroup == lines["m · a"].legendgroup == "m · a"
    title = fig.layout.title.text.replace("<br><sup>", " ").replace("</sup>", "")
    assert "compute limit" in title and "GEMM" in title and "FlopCounterMode" in title

    # Files from before the count, or a sweep whose GEMM measurement failed: the measured lines alone.
    for results in (_results(SWEEP, None), _results([_point(120, 4.0), _point(240, 1.0)], GEMM)):
        fig = bench.fps_figure(results)
        assert not [t for t in fig.data if "compute limit" in (t.name or "")]
        assert "compute limit" not in fig.layout.title.text
    assert bench.memory_figure(_results(SWEEP, GEMM)).data  # the memory chart is unchanged by it


def test_stored_sweeps_without_counts_still_chart():
    for _, results in bench.stored_results():
        assert bench.fps_figure(results).data and bench.memory_figure(results).data


def test_every_chart_keeps_its_plot_height_whatever_its_title_and_legend():
    # Without a height the app drew 450-pixel charts, and a long subtitle and legend left the plot a sliver.
    from vos.bench import charts

    for _, results in bench.stored_results():
        for fig in (bench.memory_figure(results), bench.fps_figure(results), bench.accuracy_speed_figure(results)):
            margin = fig.layout.margin
            assert fig.layout.height - margin.t - margin.b == charts.PLOT_HEIGHT
            entries = sum(1 for trace in fig.data if trace.showlegend is not False)
            assert margin.b >= 90 + 26 * -(-entries // charts.LEGEND_PER_ROW)


def test_tables_give_the_speed_up_and_the_limit():
    rows = bench.summary_rows(_results(SWEEP, GEMM))
    assert [r["speed-up"] for r in rows] == [None, None, pytest.approx(2.0), pytest.approx(2.5)]
    assert [r["limit fps"] for r in rows] == pytest.approx([20.0, 5.0, 60.0, 15.0])
    assert rows[0]["% of limit"] == pytest.approx(20.0) and rows[0]["GFLOP/frame"] == pytest.approx(10.0)
    table = bench.summary_table(_results(SWEEP, GEMM))
    assert "dtype" in table and "speed-up" in table and "limit fps" in table
    old = bench.summary_table(_results([_point(120, 4.0)], None))
    assert "dtype" not in old and "limit" not in old


# --------------------------------------------------------------------------------------------------------------
# Several precisions in one sweep


def test_a_sweep_plans_each_precision_as_its_own_series():
    assert bench.parse_dtypes("fp32, bf16,fp32") == ["fp32", "bf16"]
    with pytest.raises(bench.BenchError, match="fp64"):
        bench.parse_dtypes("fp32,fp64")
    specs = bench.parse_methods("fake_copy")
    todo = bench.plan(specs, [32, 48], frames=2, repeats=1, device="cpu", dtype="fp32,bf16", weights="random")
    assert [(p.dtype, p.resolution, t.dtype) for p, t in todo] == [
        ("fp32", 32, "fp32"),
        ("fp32", 48, "fp32"),
        ("bf16", 32, "bf16"),
        ("bf16", 48, "bf16"),
    ]
    assert [p.series for p, _ in todo] == ["fake_copy · default"] * 2 + ["fake_copy · default · bf16"] * 2


def test_cli_takes_several_precisions(tmp_path, capsys, monkeypatch):
    from vos.__main__ import main

    seen = {}

    def fake_sweep(specs, resolutions, **kwargs):
        seen.update(kwargs)
        return _results(SWEEP, GEMM)

    monkeypatch.setattr(bench.cli, "run_sweep", fake_sweep)
    argv = ["bench", "--methods", "fake_copy", "--resolutions", "32", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main([*argv, "--dtype", "fp32,bf16"]) == 0
    assert seen["dtype"] == ["fp32", "bf16"] and seen["count_flops"] is True
    assert main([*argv, "--dtype", "fp32,fp16"]) == 2
    assert "fp16 is not supported on the CPU" in capsys.readouterr().err
    assert main([*argv, "--no-flops"]) == 0 and seen["count_flops"] is False


def test_label_maps_are_unchanged_by_counting():
    """The counting pass runs the method again: its maps must be the timed passes' maps (nothing leaks between)."""
    from vos.methods import create
    from vos.synthetic import moving_shapes
    from vos.video import Clip

    synthetic = moving_shapes(3, (24, 42), 2)
    clip = Clip.from_frames(synthetic.frames)
    tvos = create("tvos", weights="random")
    before = list(tvos.segment(clip, synthetic.masks[0]))
    bench.frame_flops(tvos, clip, synthetic.masks[0])
    after = list(tvos.segment(clip, synthetic.masks[0]))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_simvos_token_refinement_is_counted_in_bf16():
    """The counter runs einsum's decomposition below autocast: a product with mixed dtypes there used to fail."""
    from vos.methods import create
    from vos.synthetic import moving_shapes
    from vos.video import Clip

    synthetic = moving_shapes(3, (32, 56), 1)
    method = create("simvos", "vit_bs", weights="random", dtype="bf16")
    counts = bench.frame_flops(method, Clip.from_frames(synthetic.frames), synthetic.masks[0])
    assert len(counts) == 3 and all(count > 0 for count in counts)
