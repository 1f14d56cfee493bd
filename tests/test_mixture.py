"""The mixture method: its fixed functions against the spec's numbers, EM, the history, the CRF, exact chunked
scoring, tracking with the weightless rgb variant, and the xcit variant end to end with random weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vos.methods as vm
from vos.methods.mixture import (
    Geometry,
    give_small_objects_a_cell,
    presence_windows,
    vmf,
    window_size,
)
from vos.methods.mixture.crf import PacCrf, dual_focal_loss, gaussian_filter
from vos.synthetic import moving_shapes
from vos.video import Clip

# --------------------------------------------------------------------------------------------------------------
# Fixed functions


def test_position_code_cosine_table():
    rho = vmf.position_code(80, 3)  # 80 rows x 3 columns, row-major
    assert rho.shape == (240, 64) and rho.dtype == torch.float32
    torch.testing.assert_close(rho.norm(dim=1), torch.full((240,), math.sqrt(32)))
    # Entries per frequency: sin(r f), cos(r f), sin(c f), cos(c f); f_0 = 1.
    cell = 7 * 3 + 2  # row 7, column 2
    torch.testing.assert_close(rho[cell, :4], torch.tensor([math.sin(7), math.cos(7), math.sin(2), math.cos(2)]))
    table = {1: 0.98, 2: 0.93, 4: 0.86, 8: 0.83, 15: 0.76, 20: 0.83, 50: 0.68}  # the spec's, along one axis
    for dr, expected in table.items():
        for r in (0, 9):
            cos = torch.nn.functional.cosine_similarity(rho[r * 3 + 1], rho[(r + dr) * 3 + 1], dim=0)
            assert round(float(cos), 2) == expected, dr


def test_log_normaliser_values():
    values = vmf.log_normaliser(torch.tensor([1e-6, 500.0, 9000.0]), 448)
    torch.testing.assert_close(values, torch.tensor([1140.0, 938.0, -6962.0]), atol=1.0, rtol=0)


def test_components_per_mixture_schedule():
    size = np.sqrt(10_000 // 8)  # an object of 10k pixels in the squashed mask
    assert vmf.components_per_mixture(size, 10, background=False).tolist() == [2, 3, 6, 8, 11, 15, 19, 24, 29, 35]
    background = vmf.components_per_mixture(np.sqrt(220_000 // 8), 10, background=True)
    assert background[0] == 56 and background[-1] == 165
    squashed = np.zeros((480, 480), np.uint8)
    squashed[:100, :100] = 1
    sizes = vmf.object_sizes(squashed, 2)
    assert sizes[1] == pytest.approx(size)
    active = vmf.active_slots(sizes, np.array([True, True]), 10, k_max=int(sizes.max()))
    assert active[1].sum(1).tolist() == [2, 3, 6, 8, 11, 15, 19, 24, 29, 35]
    assert active[0].sum(1).tolist() == [56, 65, 75, 86, 97, 109, 122, 135, 150, 165]
    cut = vmf.active_slots(sizes, np.array([True, False]), 10, k_max=60)
    assert cut[0].sum(1).tolist() == [56] + [60] * 9  # schedules are cut at K_max
    assert not cut[1].any()  # objects that are not fitted have no components


def test_indicator_thresholds_match_float64_comparison():
    thresholds = vmf.indicator_thresholds(10)
    reference = np.linspace(0.68 - 0.03, 0.83 - 0.03, 10)
    cos = torch.rand(5000) * 0.3 + 0.6
    cos = torch.cat([cos, torch.tensor(reference, dtype=torch.float32)])  # the boundary values themselves
    for s in range(10):
        assert torch.equal(cos > thresholds[s], cos.double() > float(reference[s]))


# --------------------------------------------------------------------------------------------------------------
# EM and history


def _samples_around(direction: torch.Tensor, n: int, spread: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, direction.numel(), generator=gen) * spread
    return torch.nn.functional.normalize(direction + noise, dim=1)


@pytest.mark.parametrize("spread", [0.02, 0.04])
def test_mstep_recovers_direction_and_concentration(spread):
    dim, nf = 448, 384
    gen = torch.Generator().manual_seed(1)
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0)
    points = _samples_around(direction, 3000, spread, seed=2)
    active = torch.ones(1, 1, 1, dtype=torch.bool)
    start = torch.nn.functional.normalize(torch.randn(1, 1, 1, dim, generator=gen), dim=-1)
    mixtures = vmf.initial_mixtures(start, active, nf)
    cells = vmf.Points.from_masks(torch.ones(1, points.shape[0], dtype=torch.bool))
    vmf.em(mixtures, torch.tensor([0]), points, cells, iterations=3, tolerance=1e-5, history=None)
    assert float(mixtures.mu[0, 0, 0] @ direction) > 0.999
    r = float(points.mean(0).norm())
    expected = (dim * r - r**3) / (1 - r**2)
    assert float(mixtures.kappa[0, 0, 0]) == pytest.approx(expected, rel=1e-3)
    # Tighter samples, higher concentration; the clamp keeps it below 9000.
    assert 50 < float(mixtures.kappa[0, 0, 0]) < vmf.KAPPA_MAX


def test_em_separates_two_clusters_and_reports_statistics():
    dim, nf = 96, 32
    gen = torch.Generator().manual_seed(3)
    a, b = torch.nn.functional.normalize(torch.randn(2, dim, generator=gen), dim=1)
    points = torch.cat([_samples_around(a, 400, 0.05, 4), _samples_around(b, 600, 0.05, 5)])
    active = torch.ones(1, 1, 2, dtype=torch.bool)
    mixtures = vmf.initial_mixtures(torch.stack([points[0], points[-1]])[None, None], active, nf)
    cells = vmf.Points.from_masks(torch.ones(1, 1000, dtype=torch.bool))
    history = (torch.zeros(1, 1, 2, dim), torch.zeros(1, 1, 2))
    stats, counts = vmf.em(mixtures, torch.tensor([0]), points, cells, iterations=5, tolerance=0, history=history)
    assert sorted(counts[0, 0].round().tolist()) == [400.0, 600.0]
    order = counts[0, 0].argsort()
    expected = torch.stack([points[:400].sum(0), points[400:].sum(0)])
    torch.testing.assert_close(stats[0, 0, order], expected, atol=1e-3, rtol=1e-4)
    assert float(mixtures.logalpha[0, 0].exp().sum()) == pytest.approx(1.0)


def test_history_weights_and_anchors():
    nf, dim, step = 4, 6, 0.33
    history = vmf.History.empty(1, 1, 1, dim, nf, "cpu")
    obj = torch.tensor([0])
    frame0 = torch.arange(1.0, dim + 1).view(1, 1, 1, dim)
    history.save(obj, frame0, torch.tensor([[[10.0]]]), 1.0, step)
    # Five anchors hold frame 0; only anchor 0 is stamped (tau - 0.33), the rest are still empty.
    assert torch.equal(history.stats[0, :5], frame0[0].expand(5, 1, 1, dim))
    assert history.tau[0, :6].tolist() == [pytest.approx(0.67), 0, 0, 0, 0, 1.0]
    for t in range(1, 8):
        now = 1 + step * t
        stats = torch.full((1, 1, 1, dim), 100.0 + t)
        history.save(obj, stats, torch.tensor([[[5.0]]]), now, step)
    now = 1 + step * 8
    w = history.weights(obj, now, rate=0.5)[0]
    # One frame back weighs exp(-0.5 * 0.33) = 0.848; each further frame multiplies by it again.
    newest = 7 % 15 + 5
    assert float(w[newest]) == pytest.approx(0.848, abs=1e-3)
    assert float(w[newest - 1] / w[newest]) == pytest.approx(0.848, abs=1e-3)
    # Anchors keep frame-0 appearance forever; their stamps are refreshed in turn (tau_save - 0.33).
    assert torch.equal(history.stats[0, :5, 0, 0, :nf], frame0[0, 0, 0, :nf].expand(5, nf))
    assert float(history.tau[0, 7 % 5]) == pytest.approx(1 + step * 7 - step)
    assert float(w[7 % 5]) == pytest.approx(math.exp(-0.5 * 2 * step), abs=1e-4)
    # Position parts of the anchor and older rolling slots moved to the newest location, scaled by their counts.
    pe_now = torch.full((dim - nf,), 107.0)
    torch.testing.assert_close(history.stats[0, 7 % 5, 0, 0, nf:], pe_now * (10 + 1e-6) / (5 + 1e-6))
    torch.testing.assert_close(history.stats[0, 5 + 3, 0, 0, nf:], pe_now * (5 + 1e-6) / (5 + 1e-6))
    assert torch.equal(history.stats[0, 5 + 6, 0, 0, nf:], torch.full((dim - nf,), 106.0))  # the second newest
    # An absent object's ages freeze: one clock step later, after ageing, the weights are unchanged.
    history.age(obj, step)
    torch.testing.assert_close(history.weights(obj, now + step, rate=0.5)[0], w)
    # The paper's kernel: 2^(-lambda) per frame.
    paper = history.weights(obj, now + step, rate=math.log(2))[0]
    assert float(paper[newest]) == pytest.approx(2 ** (-step), abs=1e-4)


def test_first_centres_handle_tiny_objects():
    gen = torch.Generator().manual_seed(0)
    picks = vmf.first_centres(gen, [1, 2, 5], 4)
    assert picks[0].tolist() == [0, 0, 0, 0]
    assert set(picks[1].tolist()) <= {0, 1}  # the release crashes here (randint over an empty range)
    assert set(picks[2].tolist()) <= {1, 2, 3}  # the release's range [1, n - 2]


def test_greedy_centres_spread_over_the_object():
    rho = vmf.position_code(10, 10)
    x = torch.nn.functional.normalize(torch.cat([torch.ones(100, 8), 2.5 * rho], 1), dim=1)
    valid = torch.ones(1, 100, dtype=torch.bool)
    centres = vmf.greedy_centres(x[None], valid, torch.tensor([[44]]), 6, 8)
    chosen = [int((x == c).all(1).nonzero()[0]) for c in centres[0, 0]]
    assert chosen[0] == 44
    # Each next centre is the point least similar (summed cosine, position dims 11+) to those chosen so far.
    pe = torch.nn.functional.normalize(x[:, 11:], dim=1)
    for k in range(1, 6):
        summed = (pe @ pe[chosen[:k]].t()).sum(1)
        assert chosen[k] == int(summed.argmin())


# --------------------------------------------------------------------------------------------------------------
# Scoring


def _random_mixtures(rho: torch.Tensor, num_objects=3, num_models=4, k_max=9, nf=20, seed=0) -> vmf.Mixtures:
    """Means at random cells (position part = that cell's code), log-joints of both signs."""
    gen = torch.Generator().manual_seed(seed)
    shape = (num_objects, num_models, k_max)
    active = torch.rand(shape, generator=gen) > 0.3
    alpha = torch.rand(shape, generator=gen)
    cells = torch.randint(0, rho.shape[0], shape, generator=gen)
    mu = torch.cat([torch.randn(*shape, nf, generator=gen) * 3, rho[cells]], dim=-1)
    kappa = torch.rand(shape, generator=gen) * 150
    return vmf.set_params(alpha, mu, kappa, active, nf)


def test_chunked_scoring_equals_unchunked_exactly():
    hg, wg, nf = 23, 31, 20
    rho = vmf.position_code(hg, wg)
    mixtures = _random_mixtures(rho, nf=nf)
    gen = torch.Generator().manual_seed(1)
    frame = torch.nn.functional.normalize(torch.cat([torch.randn(hg * wg, nf, generator=gen) * 3, rho], 1), dim=1)
    gate = torch.rand(3, hg * wg, generator=gen) > 0.2
    thresholds = vmf.indicator_thresholds(4)
    pe = vmf.unit(rho)
    for ind in (None, thresholds):
        whole = vmf.score_cells(mixtures, frame, gate, pe_unit=pe, thresholds=ind, chunk=hg * wg)
        assert whole.shape == (3, hg * wg) and (whole >= 0).all()
        assert 0.05 < float((whole > 0).float().mean()) < 0.95  # both signs of log-joints occur
        for chunk in (1, 128, 300, 555):
            parts = vmf.score_cells(mixtures, frame, gate, pe_unit=pe, thresholds=ind, chunk=chunk)
            assert torch.equal(parts, whole), chunk
    # Against the formula written out densely.
    joint = mixtures.logalpha[:, :, None] + (
        mixtures.kappa[:, :, None] * torch.einsum("nd,oskd->osnk", frame, mixtures.mu) + mixtures.log_c[:, :, None]
    )
    near = torch.einsum("nd,oskd->osnk", pe, mixtures.mu_pe_unit) > thresholds.view(1, 4, 1, 1)
    dense = torch.where(near & gate[:, None, :, None], joint, 0).clamp_min(0).amax(dim=(1, 3))
    torch.testing.assert_close(whole, dense)


def test_presence_windows_match_a_direct_count():
    labels = torch.zeros(12, 17, dtype=torch.long)
    labels[3:5, 4:6] = 1
    labels[9, 15] = 2
    windows = presence_windows(labels, 3, 5, 7)
    padded = torch.nn.functional.pad(labels[None, None].float(), (3, 3, 2, 2), mode="reflect")[0, 0]
    for r in range(12):
        for c in range(17):
            window = padded[r : r + 5, c : c + 7]
            for o in range(3):
                assert bool(windows[o, r * 17 + c]) == bool((window == o).any())


def test_geometry_and_gate_window():
    davis = Geometry.for_frame((480, 854), 480, 64)
    assert davis.frame == (480, 832) and davis.grid == (120, 208) and davis.crf == (240, 416)
    assert window_size(19, 120, 120) == 19 and window_size(39, 120, 208) == 39
    portrait = Geometry.for_frame((1280, 720), 480, 64)
    assert portrait.frame == (832, 480)
    small = Geometry.for_frame((96, 128), 96, 8)
    assert small.grid == (24, 32)
    assert window_size(19, 24, 24) % 2 == 1 and window_size(39, 24, 32) <= 2 * 32 - 1


def test_small_objects_get_a_cell():
    squashed = np.zeros((480, 480), np.uint8)
    squashed[200:203, 301:305] = 2  # 12 pixels: lost by a nearest resize to a 10x10 grid
    grid = np.zeros((10, 10), np.uint8)
    fixed = give_small_objects_a_cell(grid, squashed, [2])
    assert np.argwhere(fixed == 2).tolist() == [[4, 6]]


# --------------------------------------------------------------------------------------------------------------
# CRF


def test_crf_keeps_shapes_and_training_lowers_its_loss():
    gen = torch.Generator().manual_seed(0)
    truth = torch.zeros(24, 32, dtype=torch.long)
    truth[6:18, 8:20] = 1
    truth[2:8, 24:30] = 2
    colours = torch.tensor([[90.0, 110, 100], [220, 40, 40], [40, 60, 230]])
    image = (colours[truth].permute(2, 0, 1)[None] + torch.randn(1, 3, 24, 32, generator=gen) * 5).clamp(0, 255)
    noisy = truth.clone()
    flip = torch.rand(24, 32, generator=gen) < 0.15
    noisy[flip] = torch.randint(0, 3, (int(flip.sum()),), generator=gen)
    unary = torch.nn.functional.one_hot(noisy, 3).permute(2, 0, 1)[None].float()
    crf = PacCrf(3, generator=gen)
    with torch.no_grad():
        out = crf(unary, image)
    assert out.shape == (1, 3, 24, 32) and out.dtype == torch.float32
    losses = crf.fit(unary, image, truth, generator=gen, iterations=25, lr=0.02, noise=10.0)
    assert losses[-1] < 0.8 * losses[0]
    with torch.no_grad():
        after = dual_focal_loss(crf(unary, image), truth)
    assert float(after) < losses[0]
    assert not any(p.requires_grad for p in crf.parameters())


def test_crf_construction_draws_are_reproducible():
    a = PacCrf(3, generator=torch.Generator().manual_seed(123))
    b = PacCrf(3, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a.class_weight, b.class_weight)
    # Off-diagonal class pairs start at the Gaussian (25 * normalised, zero centre), diagonal near zero.
    g = torch.from_numpy(gaussian_filter())
    # 25 x a normalised 5x5 Gaussian of sigma 1.25 with its centre (weight 1/9.048) removed.
    assert float(g[2, 2]) == 0 and float(g.sum()) == pytest.approx(25 * (1 - 1 / 9.048), abs=0.01)
    assert float(g[1, 2]) == pytest.approx(25 * math.exp(-0.5 / 1.5625) / 9.048, abs=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(a.class_weight[2, 1, 0, 1], g, atol=5e-4, rtol=0)  # off-diagonal pair
        assert float(a.class_weight[2, 1, 1, 1].abs().max()) <= 5e-4  # a class with itself
        torch.testing.assert_close(a.potts_weight[4], g, atol=5e-4, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# The method end to end


def _iou(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    union = ((pred == k) | (truth == k)).sum()
    return float(((pred == k) & (truth == k)).sum() / union) if union else 1.0


@pytest.mark.slow
def test_rgb_variant_tracks_two_moving_shapes():
    clip_data = moving_shapes(30, (96, 128), 2, seed=0)
    clip = Clip.from_frames(clip_data.frames)
    # Ids 3 and 7: the method maps them to contiguous slots and back.
    remap = np.array([0, 3, 7], np.uint8)
    method = vm.create(
        "mixture", variant="rgb", weights="random", device="cpu", size=96, num_models=4, crf_iters=10, max_iters=30
    )
    seen = []
    outputs = list(method.segment(clip, remap[clip_data.masks[0]], progress=lambda i, n: seen.append((i, n))))
    assert seen[-1] == (30, 30) and len(outputs) == 30
    assert all(o.shape == (96, 128) and o.dtype == np.uint8 for o in outputs)
    assert set(np.unique(outputs[5])) <= {0, 3, 7}
    ious = [_iou(o, remap[t], k) for o, t in zip(outputs[1:], clip_data.masks[1:]) for k in (3, 7)]
    assert np.mean(ious) >= 0.8, ious


def test_rgb_variant_is_reproducible_and_frame0_is_the_prompt():
    data = moving_shapes(3, (40, 56), 2, seed=2)
    clip = Clip.from_frames(data.frames)
    opts = dict(variant="rgb", weights="random", device="cpu", size=40, num_models=2, crf_iters=2, max_iters=5)
    first = list(vm.create("mixture", **opts).segment(clip, data.masks[0]))
    again = list(vm.create("mixture", **opts).segment(clip, data.masks[0]))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # Frame 0 is the prompt squashed to 480x480 and back (nearest both ways): the prompt itself here.
    assert np.array_equal(first[0], data.masks[0])


def test_xcit_variant_with_random_weights_runs_three_small_frames():
    data = moving_shapes(3, (48, 64), 2, seed=1)
    clip = Clip.from_frames(data.frames)
    method = vm.create(
        "mixture", variant="xcit", weights="random", device="cpu", size=64, num_models=3, crf_iters=2, max_iters=5
    )
    assert method.features.n_features == 384
    prompt = np.where(data.masks[0] == 2, 5, data.masks[0]).astype(np.uint8)
    outputs = list(method.segment(clip, prompt))
    assert len(outputs) == 3
    assert all(o.shape == (48, 64) and o.dtype == np.uint8 for o in outputs)
    assert all(set(np.unique(o)) <= {0, 1, 5} for o in outputs)
    assert method.config()["weights_records"] == [{"part": "xcit", "source": "random"}]


def test_xcit_variant_loads_the_official_release_file(tmp_path):
    """DINO's file as published (facebookresearch/xcit layout) is converted on the fly and loaded strictly."""
    from tests.test_xcit import dino_release_state

    state = dino_release_state()
    path = tmp_path / "dino_xcit_small_12_p8_pretrain.pth"
    torch.save(state, path)
    method = vm.create("mixture", variant="xcit", weights=str(path), device="cpu", size=64)
    (record,) = method.weights_records
    assert record["part"] == "xcit" and record["converted"] is True
    loaded = method.features.model.state_dict()
    assert torch.equal(loaded["pos_embed.token_projection.weight"], state["pos_embeder.token_projection.weight"])


def test_info_declares_variants_weights_and_paper_switches():
    info = vm.get_info("mixture")
    assert info.variants == ("xcit", "xcit_dinov2_s", "xcit_dinov2_b", "rgb")
    assert info.parts("rgb") == {}
    assert info.parts("xcit_dinov2_b") == {"xcit": "backbone.dino_xcit_small_12_p8", "dinov2": "backbone.dinov2_vitb14"}
    assert info.option("seed").default == 123
    assert info.option("paper_w_rho").default is False and info.option("paper_time_kernel").default is False
    assert any(r.metrics.get("J&F") == 76.3 for r in info.reported)
    assert {r.fps for r in info.reported if r.fps} == {8.25, 6.50, 5.25, 1.55, 1.28, 1.10}
