"""DAVIS-2017 J, F, statistics and protocols against hand-computed cases; `python -m vos eval` end to end."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vos import metrics
from vos.__main__ import main
from vos.errors import VosError
from vos.metrics import (
    EvalError,
    EvalPathError,
    boundary_radius,
    decay_bins,
    evaluate_sequence,
    f_measure,
    jaccard,
    seg2bmap,
    statistics,
    summarize,
)


def square(shape=(50, 50), top=10, left=10, size=10) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def label_map(shape, *boxes) -> np.ndarray:
    """A uint8 label map; each box is (id, top, left, height, width)."""
    out = np.zeros(shape, np.uint8)
    for object_id, top, left, height, width in boxes:
        out[top : top + height, left : left + width] = object_id
    return out


def write_pngs(folder: Path, maps, names=None) -> Path:
    """Palette PNGs as DAVIS writes them: mode "P", pixel index = object id."""
    folder.mkdir(parents=True, exist_ok=True)
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    palette[0] = 0
    for index, array in enumerate(maps):
        image = Image.fromarray(np.asarray(array, np.uint8), mode="P")
        image.putpalette(palette.tobytes())
        image.save(folder / f"{(names[index] if names else f'{index:05d}')}.png")
    return folder


# ------------------------------------------------------------------------------------------------------------------
# J


def test_jaccard_hand_computed():
    gt = square()
    shifted = square(left=13)  # 10x7 overlap: 70 / (100 + 100 - 70)
    assert jaccard(shifted, gt) == pytest.approx(70 / 130)
    assert jaccard(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert jaccard(empty, empty) == 1.0
    assert jaccard(empty, gt) == 0.0
    assert jaccard(gt, empty) == 0.0


def test_jaccard_ignores_void_pixels():
    gt = square()
    pred = square(size=12)  # 44 extra pixels, all inside the void band
    void = square(size=12) & ~gt
    assert jaccard(pred, gt) == pytest.approx(100 / 144)
    assert jaccard(pred, gt, void=void) == 1.0


# ------------------------------------------------------------------------------------------------------------------
# Boundaries and F


def test_seg2bmap_of_a_square_is_the_ring_from_one_pixel_above_left_to_its_last_row_and_column():
    bmap = seg2bmap(square(top=10, left=10, size=10))
    ring = np.zeros_like(bmap)
    ring[9:20, 9:20] = True
    ring[10:19, 10:19] = False
    assert np.array_equal(bmap, ring)
    assert bmap.sum() == 40


def test_seg2bmap_draws_no_boundary_along_the_image_border():
    left_half = np.zeros((10, 10), bool)
    left_half[:, :5] = True
    expected = np.zeros_like(left_half)
    expected[:, 4] = True  # the last object column, every row; nothing on the image's edges
    assert np.array_equal(seg2bmap(left_half), expected)
    assert not seg2bmap(np.ones((10, 10), bool)).any()


def test_boundary_radius_is_ceil_of_0_008_diagonals():
    assert boundary_radius((480, 854)) == 8  # 0.008 * 979.6 = 7.84
    assert boundary_radius((100, 100)) == 2  # 1.13
    assert boundary_radius((50, 50)) == 1  # 0.57
    assert boundary_radius((50, 50), bound_th=3) == 3  # >= 1 is pixels, as DAVIS


def test_matching_disk_is_x2_plus_y2_within_r2():
    assert metrics._disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert metrics._disk(2).sum() == 13
    assert metrics._disk(8).sum() == sum(1 for y in range(-8, 9) for x in range(-8, 9) if x * x + y * y <= 64)


def test_f_special_cases():
    gt = square()
    empty = np.zeros_like(gt)
    assert f_measure(gt, gt) == 1.0
    assert f_measure(empty, empty) == 1.0  # no boundary in either: P = R = 1
    assert f_measure(empty, gt) == 0.0  # P = 1, R = 0
    assert f_measure(gt, empty) == 0.0  # P = 0, R = 1


@pytest.mark.parametrize("offset", [(0, 1), (1, 0), (0, -1), (-1, 0)])
def test_f_of_a_one_pixel_shift_is_one_within_radius_one(offset):
    assert boundary_radius((50, 50)) == 1
    gt = square()
    pred = square(top=10 + offset[0], left=10 + offset[1])
    assert f_measure(pred, gt) == 1.0
    assert jaccard(pred, gt) == pytest.approx(90 / 110)


def test_f_of_a_shift_beyond_the_radius_hand_computed():
    # 50x50 -> radius 1, a cross. Ground-truth boundary: the 40-pixel ring of rows/cols 9..19. Shifted 3 columns
    # right, the predicted ring spans cols 12..22. Matched predicted pixels: top and bottom rows cols 12..20 (9 each:
    # 12..19 lie on the ground-truth rows, 20 is next to col 19), and on the left column (col 12) only rows 10 and 18,
    # next to the ground-truth top and bottom rows; the right column (22) is 3 pixels from anything. 20 / 40 = 0.5;
    # recall is 0.5 by symmetry, so F = 0.5.
    gt = square()
    pred = square(left=13)
    assert f_measure(pred, gt) == pytest.approx(0.5)
    assert f_measure(pred, gt, bound_th=3) == 1.0  # within a radius of 3 every pixel matches


def _reference_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """The definition on whole frames, without the windows the module uses for speed."""
    disk = np.array(
        [[x * x + y * y <= radius * radius for x in range(-radius, radius + 1)] for y in range(-radius, radius + 1)]
    )
    pred_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    n_pred, n_gt = pred_b.sum(), gt_b.sum()
    if n_pred == 0 or n_gt == 0:
        return float(n_pred == n_gt)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), disk.astype(np.uint8)).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), disk.astype(np.uint8)).astype(bool)
    precision, recall = (pred_b & gt_dil).sum() / n_pred, (gt_b & pred_dil).sum() / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_f_equals_the_whole_frame_definition_on_random_blobs():
    rng = np.random.default_rng(1)
    for trial in range(20):
        shape = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
        noise = [cv2.GaussianBlur(rng.random(shape), (0, 0), 3) for _ in range(2)]
        pred, gt = noise[0] > np.quantile(noise[0], 0.6), noise[1] > np.quantile(noise[1], 0.6)
        if trial % 4 == 0:
            gt[:, :3] = True  # objects touching the image's edges
            pred[-2:, :] = True
        for bound_th in (0.008, 2, 5):
            expected = _reference_f(pred, gt, boundary_radius(shape, bound_th))
            assert f_measure(pred, gt, bound_th=bound_th) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# Statistics


def test_decay_bins_are_the_official_overlapping_quarters():
    assert decay_bins(10) == [(0, 2), (2, 5), (5, 7), (7, 9)]  # np.array_split would end with 8-9
    assert decay_bins(3) == [(0, 1), (1, 1), (1, 2), (2, 2)]
    assert decay_bins(1) == [(0, 0)] * 4


def test_statistics_hand_computed():
    values = np.arange(10) / 10
    stats = statistics(values)
    assert stats.mean == pytest.approx(0.45)
    assert stats.recall == pytest.approx(0.4)  # 0.6, 0.7, 0.8, 0.9: strictly above 0.5
    assert stats.decay == pytest.approx(np.mean([0.0, 0.1, 0.2]) - np.mean([0.7, 0.8, 0.9]))
    assert statistics([0.9]).decay == 0.0
    assert all(math.isnan(v) for v in (statistics([]).mean, statistics([]).recall, statistics([]).decay))


# ------------------------------------------------------------------------------------------------------------------
# Sequences: the semi-supervised protocol


def _five_frames_perfect_inside_empty_at_the_ends():
    gt = [label_map((40, 40), (1, 5, 5, 10, 10), (2, 20, 20, 12, 8)) for _ in range(5)]
    pred = [g.copy() for g in gt]
    pred[0][:] = 0
    pred[-1][:] = 0
    return pred, gt


def test_semi_protocol_scores_neither_the_first_nor_the_last_frame():
    pred, gt = _five_frames_perfect_inside_empty_at_the_ends()
    result = evaluate_sequence(pred, gt, task="semi")
    assert result.frames == ["1", "2", "3"]
    assert [o.object_id for o in result.objects] == [1, 2]
    assert result.J.shape == (2, 3)
    assert summarize([result])["J-Mean"] == 1.0
    assert summarize([result])["F-Mean"] == 1.0
    # The unsupervised protocol scores every frame, so the two empty ends count: 3 / 5.
    unsup = evaluate_sequence(pred, gt, task="unsup")
    assert unsup.J.shape == (2, 5)
    assert summarize([unsup])["J-Mean"] == pytest.approx(0.6)


def test_semi_protocol_needs_three_frames():
    pred, gt = _five_frames_perfect_inside_empty_at_the_ends()
    with pytest.raises(EvalError, match="at least 3"):
        evaluate_sequence(pred[:2], gt[:2], task="semi")


def test_semi_hand_computed_per_object_values_and_stray_ids():
    gt = [label_map((50, 50), (1, 10, 10, 10, 10)) for _ in range(4)]
    pred = [label_map((50, 50), (1, 10, 13, 10, 10), (9, 40, 40, 5, 5)) for _ in range(4)]
    result = evaluate_sequence(pred, gt, task="semi")
    (obj,) = result.objects
    assert obj.prediction_id == 1
    np.testing.assert_allclose(obj.J, [70 / 130] * 2)
    np.testing.assert_allclose(obj.F, [0.5] * 2)
    row = result.row()
    assert row["J&F-Mean"] == pytest.approx((70 / 130 + 0.5) / 2)
    assert row["J-Recall"] == 1.0 and row["F-Recall"] == 0.0  # 0.5 is not above 0.5
    assert any("9" in w and "not scored" in w for w in result.warnings)


def test_missing_predicted_frames_count_as_empty_with_a_warning():
    gt = {f"{i:05d}": label_map((30, 30), (1, 5, 5, 10, 10)) for i in range(6)}
    pred = {name: m for name, m in gt.items() if name != "00003"}
    result = evaluate_sequence(pred, gt, task="semi")
    np.testing.assert_array_equal(result.objects[0].J, [1, 1, 0, 1])
    assert any("00003" in w and "empty" in w for w in result.warnings)


def test_frame_names_that_do_not_match_are_an_error():
    gt = {f"{i:05d}": label_map((30, 30), (1, 5, 5, 10, 10)) for i in range(4)}
    pred = {f"frame{i}": m for i, m in enumerate(gt.values())}
    with pytest.raises(EvalError, match="name each predicted mask like its ground-truth frame") as info:
        evaluate_sequence(pred, gt)
    assert isinstance(info.value, VosError)


def test_predictions_at_another_size_are_an_error():
    gt = [label_map((30, 30), (1, 5, 5, 10, 10))] * 3
    with pytest.raises(EvalError, match="resolution"):
        evaluate_sequence([np.zeros((30, 31), np.uint8)] * 3, gt)


def test_objects_are_the_ids_of_the_first_frame():
    gt = [label_map((30, 30), (1, 5, 5, 10, 10))] * 3 + [label_map((30, 30), (1, 5, 5, 10, 10), (4, 20, 20, 5, 5))]
    result = evaluate_sequence(gt, gt, task="semi")
    assert [o.object_id for o in result.objects] == [1]
    assert any("4" in w and "first frame" in w for w in result.warnings)


# ------------------------------------------------------------------------------------------------------------------
# Sequences: the unsupervised protocol


def test_unsup_matching_picks_the_right_permutation():
    shape = (40, 60)
    gt, pred = [], []
    for t in range(4):
        gt.append(label_map(shape, (1, 5, 5 + t, 10, 10), (2, 20, 30, 12, 20)))
        # Proposals in swapped order: 2 covers object 1 but its first two columns, which a decoy (3) covers.
        pred.append(label_map(shape, (2, 5, 5 + t, 10, 10), (3, 5, 5 + t, 10, 2), (1, 20, 30, 12, 20)))
    result = evaluate_sequence(pred, gt, task="unsup")
    assert [(o.object_id, o.prediction_id) for o in result.objects] == [(1, 2), (2, 1)]
    np.testing.assert_allclose(result.J, [[0.8] * 4, [1.0] * 4])


def test_unsup_matches_once_per_sequence_not_per_frame():
    shape = (40, 40)
    gt = [label_map(shape, (1, 5, 5, 10, 10))] * 4
    # Proposal 1 is right on frames 0-2, proposal 2 only on frame 3: one proposal serves all frames.
    pred = [label_map(shape, (1, 5, 5, 10, 10))] * 3 + [label_map(shape, (2, 5, 5, 10, 10))]
    (obj,) = evaluate_sequence(pred, gt, task="unsup").objects
    assert obj.prediction_id == 1
    np.testing.assert_array_equal(obj.J, [1, 1, 1, 0])


def test_unsup_pads_with_empty_proposals_like_davis():
    shape = (40, 40)
    gt = [label_map(shape, (1, 2, 2, 8, 8), (2, 20, 20, 8, 8)) for _ in range(3)]
    gt[2][gt[2] == 2] = 0  # object 2 leaves in the last frame
    pred = [label_map(shape, (5, 2, 2, 8, 8)) for _ in range(3)]
    result = evaluate_sequence(pred, gt, task="unsup")
    assert [(o.object_id, o.prediction_id) for o in result.objects] == [(1, 5), (2, None)]
    np.testing.assert_array_equal(result.objects[1].J, [0, 0, 1])  # an empty mask scores 1 where the object is absent
    np.testing.assert_array_equal(result.objects[1].F, [0, 0, 1])


def test_unsup_keeps_the_20_largest_proposals():
    shape = (60, 60)
    gt = [label_map(shape, (1, 0, 0, 3, 3))] * 2
    # Proposal 1 is the exact (and smallest) match; 20 larger stripes lie elsewhere.
    stripes = [(i + 2, 10 + 2 * i, 10, 2, 10 + i) for i in range(20)]
    pred = [label_map(shape, (1, 0, 0, 3, 3), *stripes)] * 2
    capped = evaluate_sequence(pred, gt, task="unsup")
    assert capped.objects[0].prediction_id != 1
    assert summarize([capped])["J-Mean"] == 0.0
    assert any("21 proposals" in w and "1" in w for w in capped.warnings)
    uncapped = evaluate_sequence(pred, gt, task="unsup", max_proposals=21)
    assert uncapped.objects[0].prediction_id == 1
    assert summarize([uncapped])["J&F-Mean"] == 1.0


def test_void_pixels_count_only_in_the_unsupervised_protocol():
    shape = (40, 40)
    gt = [label_map(shape, (255, 4, 4, 14, 14), (1, 5, 5, 12, 12)) for _ in range(3)]  # a void band round object 1
    pred = [label_map(shape, (1, 4, 4, 14, 14)) for _ in range(3)]
    unsup = evaluate_sequence(pred, gt, task="unsup")
    assert summarize([unsup])["J&F-Mean"] == 1.0
    semi = evaluate_sequence(pred, gt, task="semi")
    assert summarize([semi])["J-Mean"] == pytest.approx(144 / 196)


def test_global_columns_average_objects_not_sequences():
    shape = (30, 30)
    one = [label_map(shape, (1, 2, 2, 5, 5))] * 3
    three = [label_map(shape, (1, 2, 2, 5, 5), (2, 10, 10, 5, 5), (3, 20, 20, 5, 5))] * 3
    results = [
        evaluate_sequence(one, one, name="a"),
        evaluate_sequence([np.zeros(shape, np.uint8)] * 3, three, name="b"),
    ]
    total = summarize(results)
    assert total["J-Mean"] == pytest.approx(0.25)  # 1 perfect object of 4; a mean of sequences would give 0.5
    assert total["J&F-Mean"] == pytest.approx((total["J-Mean"] + total["F-Mean"]) / 2)
    assert list(total) == list(metrics.GLOBAL_COLUMNS)


# ------------------------------------------------------------------------------------------------------------------
# Folders and `python -m vos eval`


def _sequence(t: int = 5, offset: int = 0):
    return [label_map((48, 64), (1, 8, 8 + t_ + offset, 12, 12), (2, 28, 30, 10, 20)) for t_ in range(t)]


def _args(pred, gt, task="semi", json_path=None):
    return argparse.Namespace(pred=str(pred), gt=str(gt), task=task, json=str(json_path) if json_path else None)


def test_command_eval_one_sequence(tmp_path, capsys):
    gt = write_pngs(tmp_path / "gt" / "walk", _sequence())
    pred = write_pngs(tmp_path / "pred", _sequence())
    out = tmp_path / "scores.json"
    assert metrics.command_eval(_args(pred, gt, json_path=out)) == 0
    printed = capsys.readouterr().out
    assert "walk" in printed and "Global" in printed and "J&F-Mean" in printed
    document = json.loads(out.read_text())
    for column in metrics.GLOBAL_COLUMNS:
        assert document[column] == pytest.approx(1.0 if "Decay" not in column else 0.0)
    assert document["task"] == "semi"
    assert document["per_sequence"][0]["Sequence"] == "walk"
    assert document["per_sequence"][0]["Frames"] == 3
    assert [row["Sequence"] for row in document["per_object"]] == ["walk_1", "walk_2"]


def test_command_eval_results_root(tmp_path, capsys):
    for name, offset in (("cats", 0), ("dogs", 4)):
        write_pngs(tmp_path / "gt" / name, _sequence())
        write_pngs(tmp_path / "pred" / name, _sequence(offset=offset))
    write_pngs(tmp_path / "gt" / "unscored", _sequence())
    out = tmp_path / "out" / "scores.json"
    assert main(["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cats" in printed and "dogs" in printed and "unscored" not in printed
    document = json.loads(out.read_text())
    assert set(metrics.GLOBAL_COLUMNS) <= set(document)
    assert {"per_sequence", "per_object", "warnings", "task", "sequences", "objects"} <= set(document)
    assert [row["Sequence"] for row in document["per_sequence"]] == ["cats", "dogs"]
    assert document["objects"] == 4
    cats, dogs = document["per_sequence"]
    assert cats["J-Mean"] == 1.0 and dogs["J-Mean"] < 1.0
    # Object 1 of dogs is shifted by 4 pixels (IoU 8/16 per frame), the rest is exact.
    assert document["J-Mean"] == pytest.approx((1 + 1 + 1 + 0.5) / 4, abs=1e-6)
    assert any("unscored" in w for w in document["warnings"])


def test_command_eval_unsup_task(tmp_path):
    gt = write_pngs(tmp_path / "gt", _sequence())
    swapped = [np.where(m == 1, 2, np.where(m == 2, 1, 0)).astype(np.uint8) for m in _sequence()]
    pred = write_pngs(tmp_path / "pred", swapped)
    out = tmp_path / "scores.json"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--task", "unsup", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["J&F-Mean"] == 1.0
    assert [row["Prediction"] for row in document["per_object"]] == [2, 1]


def test_command_eval_errors_exit_2(tmp_path, capsys):
    gt = write_pngs(tmp_path / "gt", _sequence())
    assert main(["eval", "--pred", str(tmp_path / "missing"), "--gt", str(gt)]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--pred", str(tmp_path / "empty"), "--gt", str(gt)]) == 2
    assert "holds no PNG masks" in capsys.readouterr().err
    pred = write_pngs(tmp_path / "renamed", _sequence(), names=[f"frame_{i}" for i in range(5)])
    assert main(["eval", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "name each predicted mask" in capsys.readouterr().err
    with pytest.raises(EvalPathError):
        metrics.command_eval(_args(tmp_path / "missing", gt))
