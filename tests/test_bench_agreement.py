"""Reduced precision against fp32: the IoU of constructed label maps known by hand, and real runs on real footage."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tests.fakes  # noqa: F401 -- registers the fake_* methods
from vos import bench
from vos.__main__ import main


def _square(top: int, left: int, side: int = 4, obj: int = 1, size: int = 12) -> np.ndarray:
    label_map = np.zeros((size, size), np.uint8)
    label_map[top : top + side, left : left + side] = obj
    return label_map


def test_mean_iou_of_constructed_masks():
    reference = [_square(0, 0), _square(2, 2), _square(4, 4)]
    # Frame 1 moved 2 px right: 8 shared pixels of 24 covered, IoU 1/3. Frame 2 identical: 1.
    other = [_square(0, 0), _square(2, 4), _square(4, 4)]
    assert bench.mean_iou(reference, other) == pytest.approx(((1 + 1 / 3 + 1) / 3, 3))
    assert bench.mean_iou(reference, other, skip_first=True) == pytest.approx(((1 / 3 + 1) / 2, 2))
    # An object only one of them has counts 0 on its frame; frames where neither has any object are not counted.
    lost = [_square(0, 0), np.zeros((12, 12), np.uint8), _square(4, 4)]
    assert bench.mean_iou(reference, lost) == pytest.approx((2 / 3, 3))
    empty = [np.zeros((12, 12), np.uint8)] * 2
    assert bench.mean_iou(empty, empty) == (1.0, 0)
    with pytest.raises(bench.BenchError):
        bench.mean_iou(reference, other[:2])


def test_unsupervised_ids_are_matched_before_scoring():
    reference = [_square(0, 0) + _square(6, 6, obj=2), _square(1, 1) + _square(7, 7, obj=2)]
    swapped = [np.where(m == 1, 2, np.where(m == 2, 1, 0)).astype(np.uint8) for m in reference]
    assert bench.mean_iou(reference, bench.match_segments(reference, swapped)) == (1.0, 4)
    # A segment with no counterpart keeps an id of its own, so it counts against the score.
    extra = [m.copy() for m in swapped]
    extra[0][0, 11] = 7
    renamed = bench.match_segments(reference, extra)
    assert renamed[0][0, 11] == 3 and bench.mean_iou(reference, renamed)[1] == 5


def test_a_method_with_exact_arithmetic_agrees_exactly(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["bench", "agreement", "--methods", "fake_copy", "--frames", "3", "--size", "48", "--device", "cpu"]
    assert main([*argv, "--dtype", "bf16", "--weights", "random", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Carphone (real footage), 3 frames at 48x58" in text and "1.0000" in text
    (row,) = json.loads(out.read_text())
    assert row["method"] == "fake_copy" and row["mean_iou"] == 1.0 and row["pairs"] == 2  # frames 1, 2; one object
    assert row["reference_s"] >= 0 and row["candidate_s"] >= 0 and row["dtype"] == "bf16"


def test_tvos_in_bf16_on_real_footage():
    """A real method, tiny: random weights (no checkpoint in the tests' empty cache), and the row says so."""
    (row,) = bench.agreement(
        bench.parse_methods("tvos"), dtype="bf16", frames=3, height=48, device="cpu", weights="hub"
    )
    assert row.error is None, row.error
    assert row.weights == "random" and "no checkpoint installed" in row.note
    assert 0.0 <= row.mean_iou <= 1.0 and row.size == [48, 58] and row.frames == 3
    assert row.reference_s > 0 and row.candidate_s > 0 and row.speedup > 0
    table = bench.agreement_table([row])
    assert "tvos" in table and "random weights: no checkpoint installed" in table


def test_agreement_refuses_fp32_against_itself():
    with pytest.raises(bench.BenchError, match="not fp32 with itself"):
        bench.agreement(bench.parse_methods("fake_copy"), dtype="fp32", frames=2, height=32, device="cpu")


def test_candidate_options_run_against_the_defaults(tmp_path, capsys):
    """--candidate sets an option for the second run only; the precision then stays fp32 unless --dtype says."""
    out = tmp_path / "rows.json"
    argv = ["bench", "agreement", "--methods", "mixture:rgb", "--frames", "3", "--size", "48", "--device", "cpu"]
    argv += ["--candidate", "mixture.fast_em=true", "--opt", "mixture.crf_iters=2", "--json", str(out)]
    assert main(argv) == 0
    assert "fast_em=True" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["dtype"] == "fp32" and row["candidate_options"] == {"fast_em": True}
    assert 0.0 <= row["mean_iou"] <= 1.0 and row["pairs"] >= 2
