"""The mixture method: its fixed functions against the spec's numbers, EM (the M-step's clamp and replacement, the
E-step's multiplicative indicator), the history, the CRF and its image, exact chunked scoring, tracking with the
weightless rgb variant (paper options, an object that leaves and comes back), the variants' feature widths, and the
xcit variant end to end with random weights."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vos.methods as vm
from vos.methods import mixture
from vos.methods.mixture import (
    Geometry,
    give_small_objects_a_cell,
    presence_windows,
    vmf,
    window_size,
)
from vos.methods.mixture.crf import PacCrf, dual_focal_loss, gaussian_filter
from vos.methods.mixture.features import resize_frame
from vos.synthetic import SHAPE_COLOURS, moving_shapes, textured_background
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


def test_mstep_recovers_direction_and_concentration():
    dim, nf = 448, 384
    gen = torch.Generator().manual_seed(1)
    direction = torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0)
    kappas = {}
    for spread in (0.02, 0.04):
        points = _samples_around(direction, 3000, spread, seed=2)
        active = torch.ones(1, 1, 1, dtype=torch.bool)
        start = torch.nn.functional.normalize(torch.randn(1, 1, 1, dim, generator=gen), dim=-1)
        mixtures = vmf.initial_mixtures(start, active, nf)
        cells = vmf.Points.from_masks(torch.ones(1, points.shape[0], dtype=torch.bool))
        vmf.em(mixtures, torch.tensor([0]), points, cells, iterations=3, tolerance=1e-5, history=None)
        assert float(mixtures.mu[0, 0, 0] @ direction) > 0.999, spread
        r = float(points.mean(0).norm())
        expected = (dim * r - r**3) / (1 - r**2)
        kappas[spread] = float(mixtures.kappa[0, 0, 0])
        assert kappas[spread] == pytest.approx(expected, rel=1e-3), spread
    # Tighter samples, higher concentration (both well inside the clamp).
    assert 50 < kappas[0.04] < 0.5 * kappas[0.02] < vmf.KAPPA_MAX


def test_mstep_clamps_kappa_and_replaces_invalid_ones():
    nf, dim = 4, 12
    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(2, 2, 3, dim, generator=gen), dim=-1)
    counts = torch.full((2, 2, 3), 10.0)
    # Mean resultant length r of each component's points: 0.5 (inside the clamp), 0.9999 (kappa ~ 5.5e4 -> 9000),
    # 0 (kappa -> 0, clamped to 1e-6); NaN statistics give a NaN kappa, which is replaced.
    lengths = torch.tensor([[[0.5, 0.9999, 0.0], [0.5, 0.5, 0.5]], [[0.5, 0.5, 0.7], [0.5, 0.5, 0.5]]])
    stats = directions * (counts * lengths)[..., None]
    stats[0, 1, 0] = float("nan")  # object 0: the first valid component in (S, K) order is (0, 0)
    stats[1, 0, :2] = float("nan")  # object 1: it is (0, 2)
    zeros = torch.zeros_like(stats), torch.zeros_like(counts)
    active = torch.ones(2, 2, 3, dtype=torch.bool)
    params = vmf._mstep(stats, counts, *zeros, active, nf)
    kappa, mu = params.kappa, params.mu
    assert torch.isfinite(kappa).all() and torch.isfinite(mu).all()
    r = 0.5 * 10 / (10 + 2e-6)
    assert float(kappa[0, 0, 0]) == pytest.approx((dim * r - r**3) / (1 - r**2), rel=1e-5)
    assert float(kappa[0, 0, 1]) == pytest.approx(vmf.KAPPA_MAX, rel=1e-6)
    assert 0 < float(kappa[0, 0, 2]) < 1e-5
    torch.testing.assert_close(mu[0, 0, 0], directions[0, 0, 0])
    # The replaced components take the first valid component's kappa and mean, exactly.
    assert float(kappa[0, 1, 0]) == float(kappa[0, 0, 0]) and torch.equal(mu[0, 1, 0], mu[0, 0, 0])
    for k in (0, 1):
        assert float(kappa[1, 0, k]) == float(kappa[1, 0, 2]) and torch.equal(mu[1, 0, k], mu[1, 0, 2])
    assert float(kappa[1, 0, 2]) != float(kappa[1, 1, 0])  # r = 0.7, not the others' 0.5
    torch.testing.assert_close(mu[0, 1, 1], directions[0, 1, 1])  # the other components keep their own


def _estep_case(seed: int):
    """Random mixtures (3 objects, 4 mixtures, 12 slots, some masked) on a 17 x 23 grid, fit vectors and points of
    three sizes, and the generator for more draws."""
    hg, wg, nf = 17, 23, 20
    rho = vmf.position_code(hg, wg)
    mixtures = _random_mixtures(rho, nf=nf, k_max=12)
    gen = torch.Generator().manual_seed(seed)
    frame = torch.nn.functional.normalize(torch.cat([torch.randn(hg * wg, nf, generator=gen) * 3, 2.5 * rho], 1), 1)
    points = vmf.Points.from_masks(torch.rand(3, hg * wg, generator=gen) > torch.tensor([[0.2], [0.6], [0.9]]))
    return mixtures, frame, points, rho, gen


def test_estep_with_the_indicator_gives_the_plain_statements_bits():
    mixtures, frame, points, rho, gen = _estep_case(3)
    gate = torch.rand(3, rho.shape[0], generator=gen) > 0.3
    stored = mixtures.mu_pe_unit
    thresholds, pe = vmf.indicator_thresholds(mixtures.mu.shape[1]), vmf.unit(rho)
    ours = vmf._estep(
        mixtures, frame, points.index, points.valid, 10_000, pe_only=False, with_ll=False,
        indicator=vmf.Indicator(gate, stored), pe_unit=pe, thresholds=thresholds,
    )  # fmt: skip
    reference = _dense_estep_reference(
        mixtures, frame, points.index, points.valid, pe_only=False, indicator=(gate, stored, thresholds, pe)
    )
    assert torch.equal(ours[0].flatten(1, 2), reference[0]) and torch.equal(ours[1].flatten(1), reference[1])
    near = pe @ stored.reshape(-1, pe.shape[1]).t() > thresholds.repeat_interleave(12).repeat(3)
    assert 0.05 < float(near.float().mean()) < 0.95  # the indicator is on for some slots, off for others


def test_estep_multiplies_log_joints_by_the_indicator():
    """The release multiplies each log-joint by the stored 0/1 indicator: a component that is off gets logit 0 (not
    -inf), and so does a masked slot; with everything off the posterior is uniform over all K_max slots."""
    nf, dim, grid = 8, 72, (4, 4)
    gen = torch.Generator().manual_seed(0)
    rho = vmf.position_code(*grid)
    pe = vmf.unit(rho)
    frame = torch.nn.functional.normalize(torch.cat([torch.randn(16, nf, generator=gen) * 3, 2.5 * rho], 1), dim=1)
    cell = 5
    x = frame[cell]
    other = torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0)
    # Log-joints at this point (d = 72): component 0 matches it (~ +221), component 1 points away with kappa 9000
    # (~ -17700), component 2 is in between (~ +90); slot 3 is masked (~ -1e6).
    mu = torch.stack([x, -x, other, x])[None, None]
    kappa = torch.tensor([[[500.0, 9000.0, 50.0, 1.0]]])
    active = torch.tensor([[[True, True, True, False]]])
    alpha = torch.tensor([[[0.5, 0.3, 0.2, 0.0]]])
    thresholds = vmf.indicator_thresholds(1)
    points = vmf.Points.from_masks(torch.arange(16)[None] == cell)

    def posterior(near: list[bool], gate: bool) -> torch.Tensor:
        mixtures = vmf.set_params(alpha, mu, kappa, active, nf)
        joint = mixtures.logalpha[0, 0] + mixtures.kappa[0, 0] * (mixtures.mu[0, 0] @ x) + mixtures.log_c[0, 0]
        flags = torch.tensor(near)
        stored = torch.where(flags[:, None], pe[cell], -pe[cell])[None, None]  # cosine +1 (near) or -1 (far)
        indicator = vmf.Indicator(torch.full((1, 16), gate), stored)
        history = (torch.zeros(1, 1, 4, dim), torch.zeros(1, 1, 4))
        _, counts = vmf.em(
            mixtures,
            torch.tensor([0]),
            frame,
            points,
            iterations=1,
            tolerance=0,
            history=history,
            indicator=indicator,
            pe_unit=pe,
            thresholds=thresholds,
        )
        expected = torch.softmax(joint * (flags & gate), dim=0)
        torch.testing.assert_close(counts[0, 0], expected)
        return counts[0, 0]

    # Only the far-away component is on: the three that are off (the masked slot too) share the point equally.
    torch.testing.assert_close(posterior([False, True, False, False], True), torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]))
    # The matching component is on: it takes the point.
    torch.testing.assert_close(posterior([True, True, True, False], True), torch.tensor([1.0, 0, 0, 0]))
    # Outside the object's window every component is off: uniform over all K_max slots, masked ones included.
    torch.testing.assert_close(posterior([True, True, True, True], False), torch.full((4,), 0.25))


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


def test_first_centres_handle_tiny_objects_and_keep_the_release_stream():
    picks = vmf.first_centres(torch.Generator().manual_seed(0), [1, 2, 5], 200)
    assert picks[0].tolist() == [0] * 200
    assert set(picks[1].tolist()) == {0, 1}  # both cells (the release crashes: randint over an empty range)
    assert set(picks[2].tolist()) == {1, 2, 3}  # the release's range [1, n - 2], never the first or last point
    # The random stream is the release's: no draw for a single point, one randint per other object, in order.
    replay = torch.Generator().manual_seed(0)
    assert torch.equal(picks[1], torch.randint(0, 2, (200,), generator=replay))
    assert torch.equal(picks[2], torch.randint(1, 4, (200,), generator=replay))


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


def _scoring_case(hg: int, wg: int, seed: int):
    """Random mixtures (3 objects, 4 mixtures, 9 slots, some masked), scoring vectors, gates, thresholds and the
    unit position code on an hg x wg grid."""
    rho = vmf.position_code(hg, wg)
    mixtures = _random_mixtures(rho, nf=20)
    gen = torch.Generator().manual_seed(seed)
    frame = torch.nn.functional.normalize(torch.cat([torch.randn(hg * wg, 20, generator=gen) * 3, rho], 1), dim=1)
    gate = torch.rand(3, hg * wg, generator=gen) > 0.2
    return mixtures, frame, gate, vmf.indicator_thresholds(4), vmf.unit(rho)


def test_chunked_scoring_equals_unchunked_exactly():
    hg, wg = 23, 31
    mixtures, frame, gate, thresholds, pe = _scoring_case(hg, wg, seed=1)
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
    # Scaled with the grid's short side (19 * 24/120 = 3.8 -> 4 -> odd 5; 39 * 24/120 = 7.8 -> 8 -> 9) ...
    assert window_size(19, 24, 24) == 5 and window_size(39, 24, 32) == 9
    assert window_size(39, 24 * 5, 208) == 39 and window_size(19, 4, 4) == 1
    # ... and cut to 2 * extent - 1 cells, the most that reflect padding allows.
    assert window_size(39, 120, 12) == 23
    assert presence_windows(torch.zeros(12, 12, dtype=torch.long), 1, 23, 23).all()
    with pytest.raises(RuntimeError):
        presence_windows(torch.zeros(12, 12, dtype=torch.long), 1, 25, 25)


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
    outputs = list(method.segment(clip, remap[clip_data.masks[0]], progress=seen.append))
    assert (seen[-1].stage, seen[-1].done, seen[-1].total) == ("frame", 30, 30) and len(outputs) == 30
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


def test_paper_options_are_off_by_default_and_change_the_masks():
    data = moving_shapes(6, (40, 56), 2, seed=2)
    clip = Clip.from_frames(data.frames)
    opts = dict(variant="rgb", weights="random", device="cpu", size=40, num_models=2, crf=False, max_iters=5)
    default = vm.create("mixture", **opts)
    assert default.options["paper_w_rho"] is False and default.options["paper_time_kernel"] is False
    base = list(default.segment(clip, data.masks[0]))
    for name in ("paper_w_rho", "paper_time_kernel"):
        changed = list(vm.create("mixture", **opts, **{name: True}).segment(clip, data.masks[0]))
        assert np.array_equal(changed[0], base[0]), name  # frame 0 is the prompt either way
        assert sum(int((a != b).sum()) for a, b in zip(changed[1:], base[1:])) > 0, name


def test_absent_object_keeps_its_history_and_comes_back(monkeypatch):
    """Object 2 is hidden in frames 3-5. It leaves the output, its EM is skipped and its history is neither
    written nor cleared (ages frozen) while the previous output lacks it; it is found again at its last window."""
    size = (48, 64)
    background = textured_background(size, np.random.default_rng(0))
    prompt = np.zeros(size, np.uint8)
    prompt[8:24, 6:22] = 1
    prompt[26:42, 38:56] = 2
    frames, truth = [], []
    for t in range(9):
        labels = np.where((prompt == 2) & (3 <= t <= 5), 0, prompt).astype(np.uint8)
        frame = background.copy()
        for k in (1, 2):
            frame[labels == k] = SHAPE_COLOURS[k - 1]
        frames.append(frame)
        truth.append(labels)
    events: list[tuple[str, list[int]]] = []
    kept: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    save, age = vmf.History.save, vmf.History.age

    def recording_save(self, objects, *args):
        events.append(("save", objects.tolist()))
        return save(self, objects, *args)

    def recording_age(self, objects, step):
        events.append(("age", objects.tolist()))
        if 2 in objects.tolist():
            kept.append((int(self.saves[2]), self.stats[2].clone(), self.tau[2].clone()))
        return age(self, objects, step)

    monkeypatch.setattr(vmf.History, "save", recording_save)
    monkeypatch.setattr(vmf.History, "age", recording_age)
    method = vm.create(
        "mixture", variant="rgb", weights="random", device="cpu", size=48, num_models=2, crf=False, max_iters=10
    )
    outputs = list(method.segment(Clip.from_frames(frames), prompt))
    for t in (3, 4, 5):
        assert not (outputs[t] == 2).any(), t
    for t in (6, 7, 8):
        assert _iou(outputs[t], truth[t], 2) >= 0.8, t
    assert all(_iou(o, g, 1) >= 0.6 for o, g in zip(outputs, truth))  # the other object is followed throughout
    # One initial save, then per frame: save the objects that ran, age the skipped ones.
    assert events[0] == ("save", [0, 1, 2]) and len(events) == 1 + 2 * 9
    saved = [objects for kind, objects in events[1::2]]
    aged = [objects for kind, objects in events[2::2]]
    skipped = [4, 5, 6]  # the frames after one whose output lacks object 2
    assert [2 in objects for objects in saved] == [t not in skipped for t in range(9)]
    assert aged == [[2] if t in skipped else [] for t in range(9)]
    # Its history is kept as it was: no save, the same statistics; the stamps move with the clock.
    (saves0, stats0, tau0), *_, (saves1, stats1, tau1) = kept
    assert saves0 == saves1 and torch.equal(stats0, stats1)
    stamped = tau0 > 0
    torch.testing.assert_close(tau1[stamped] - tau0[stamped], torch.full((int(stamped.sum()),), 2 * 0.33).double())


def test_crf_image_is_a_pil_bicubic_resize_of_the_working_frame(monkeypatch):
    """The release's CRF image: PIL bicubic of its read_frame output (the frame already cv2-resized to the working
    size), to twice the grid. Not a resize of the decoded frame, and not cv2's bicubic."""
    generator = np.random.default_rng(3)
    decoded = generator.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    seen: list[tuple[np.ndarray, torch.Tensor]] = []
    crf_image = mixture._Session.crf_image

    def recording(self, frame):
        image = crf_image(self, frame)
        seen.append((frame.copy(), image))
        return image

    monkeypatch.setattr(mixture._Session, "crf_image", recording)
    method = vm.create("mixture", variant="rgb", weights="random", device="cpu", size=40, num_models=2, crf=False)
    prompt = np.zeros((45, 61), np.uint8)
    prompt[10:30, 12:40] = 1
    next(iter(method.segment(Clip.from_frames([decoded, decoded]), prompt)))
    geometry = Geometry.for_frame((45, 61), 40, 8)
    assert geometry.frame == (40, 48) and geometry.crf == (20, 24)
    ((frame, image),) = seen
    working = resize_frame(decoded, geometry)
    assert np.array_equal(frame, working)
    expected = np.asarray(Image.fromarray(working).resize((24, 20), Image.BICUBIC))
    assert image.shape == (1, 3, 20, 24) and image.dtype == torch.float32
    assert np.array_equal(image[0].permute(1, 2, 0).numpy(), expected)
    # The alternatives give other pixels.
    from_decoded = np.asarray(Image.fromarray(decoded).resize((24, 20), Image.BICUBIC))
    assert not np.array_equal(from_decoded, expected)
    assert not np.array_equal(cv2.resize(working, (24, 20), interpolation=cv2.INTER_CUBIC), expected)
    # The method itself needs only the geometry and the device.
    direct = mixture._Session.crf_image(SimpleNamespace(geometry=geometry, device=torch.device("cpu")), working)
    assert torch.equal(direct, image)


@pytest.mark.parametrize(
    ("variant", "width", "dinov2"), [("xcit", 384, None), ("xcit_dinov2_s", 768, 384), ("xcit_dinov2_b", 1152, 768)]
)
def test_variants_build_with_their_feature_width(variant, width, dinov2):
    """XCiT-S/8's 384 channels, concatenated with DINOv2 ViT-S/14's 384 or ViT-B/14's 768 (the paper's d = 768 and
    1152). Built on the meta device: shapes only, no memory, no time."""
    with torch.device("meta"):
        method = vm.create("mixture", variant=variant, weights="random", device="meta", size=64)
        features = method.features
        assert features.n_features == width
        assert [r["part"] for r in method.weights_records] == ["xcit"] + (["dinov2"] if dinov2 else [])
        if dinov2 is None:
            assert features.dinov2 is None
        else:
            assert features.dinov2.embed_dim == dinov2 and len(features.dinov2.blocks) == 12
            assert features.dinov2.patch_embed.patch_size == (14, 14)
        geometry = Geometry.for_frame((64, 96), 64, 64)
        cells = features(np.zeros((*geometry.frame, 3), np.uint8), geometry)
    assert cells.shape == (geometry.cells, width)


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


def _plain_pac_crf(crf: PacCrf, unary: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """TEST ONLY: the PAC-CRF as pacnet states it, with unfold: f = (y, x, R, G, B) / scales, zero-padded, the kernel
    exp(-0.5 ||f(p) - f(q)||^2) over each 5x5 dilated window, the message W . (K * unfold(Q))."""
    from vos.methods.mixture import crf as crf_module

    _, c, h, w = unary.shape
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    mesh = torch.stack([rows, cols])[None]
    kernels = []
    for scales, dil in zip(crf.feat_scales, crf_module.DILATIONS):
        feat = torch.cat([mesh / scales[:2].view(-1, 1, 1), image / scales[2:].view(-1, 1, 1)], dim=1)
        win = F.unfold(feat, 5, dilation=dil, padding=2 * dil).view(1, 5, 25, h * w)
        kernels.append(torch.exp(-0.5 * (win - win[:, :, 12:13]).pow(2).sum(1)))  # (1, 25, HW)
    unary = unary * crf_module.UNARY_SCALE
    log_q = unary
    for step in range(crf.num_steps):
        q = F.softmax(log_q, dim=1)
        log_q = unary * crf.unary_weight[step]
        for term, (kernel, dil, sign) in enumerate(zip(kernels, crf_module.DILATIONS, crf_module.PAIRWISE_SIGNS)):
            weighted = F.unfold(q, 5, dilation=dil, padding=2 * dil).view(c, 25, h * w) * kernel
            if term < 2:
                msg = crf.class_weight[step, term].reshape(c, -1) @ weighted.reshape(-1, h * w)
            else:
                msg = (crf.potts_weight[step].reshape(1, 1, -1) @ weighted).reshape(c, h * w)
            log_q = log_q - msg.view(1, c, h, w) * sign
    return log_q


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("classes", [2, 3])
def test_crf_equals_a_plain_unfold_statement_with_its_gradients(classes, fused):
    # Frames smaller than the 64-pixel dilation reach and a little larger: windows fall off every edge.
    generator = torch.Generator().manual_seed(classes)
    ours = PacCrf(classes, generator=torch.Generator().manual_seed(7), fused=fused)
    plain = PacCrf(classes, generator=torch.Generator().manual_seed(7))
    image = torch.rand(1, 3, 40, 150, generator=generator) * 255
    truth = torch.randint(0, classes, (40, 150), generator=generator)
    unary = F.one_hot(truth, classes).permute(2, 0, 1)[None].float()
    a, b = ours(unary, image), _plain_pac_crf(plain, unary, image)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    dual_focal_loss(a, truth).backward()
    dual_focal_loss(b, truth).backward()
    for (name, p), q in zip(ours.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_pac_message_backward_passes_gradcheck():
    from vos.methods.mixture.crf import _PacMessage

    generator = torch.Generator().manual_seed(0)
    q = torch.rand(2, 7, 9, dtype=torch.double, generator=generator).requires_grad_()
    kernel = torch.rand(25, 7, 9, dtype=torch.double, generator=generator).requires_grad_()
    weight = torch.randn(3, 2, 25, dtype=torch.double, generator=generator).requires_grad_()
    for dilation in (1, 2, 4):
        assert torch.autograd.gradcheck(lambda a, b, c, d=dilation: _PacMessage.apply(a, b, c, d), (q, kernel, weight))


@pytest.mark.parametrize("dilation", [1, 3, 16])
def test_fused_message_equals_the_torch_message_with_its_gradients(dilation):
    from vos.methods.mixture.crf import _PacMessage
    from vos.methods.mixture.fused import FusedPacMessage

    generator = torch.Generator().manual_seed(dilation)
    q = torch.rand(3, 23, 41, generator=generator).requires_grad_()
    kernel = torch.rand(25, 23, 41, generator=generator).requires_grad_()
    weight = torch.randn(3, 3, 25, generator=generator)
    weight[0, 1, 4] = 0.0  # a zero weight is skipped, as the Potts filter's off-diagonal ones are
    weight.requires_grad_()
    grad = torch.randn(3, 23, 41, generator=generator)
    ours = FusedPacMessage.apply(q, kernel, weight, dilation)
    theirs = _PacMessage.apply(q, kernel, weight, dilation)
    torch.testing.assert_close(ours, theirs)
    inputs = (q, kernel, weight)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 16, 64])
def test_fused_kernel_equals_the_plain_kernel_with_its_gradient_and_is_zero_off_the_frame(dilation):
    from vos.methods.mixture.fused import FusedPacKernel

    generator = torch.Generator().manual_seed(dilation)
    h, w = 70, 150  # the 64-pixel dilation's windows fall off both edges of the rows
    image = torch.rand(3, h, w, generator=generator) * 255
    inverse = (torch.tensor([16.25, 16.25, 30.0, 30.0, 30.0]) * (0.5 + torch.rand(5, generator=generator))).pow(-2)
    inverse.requires_grad_()
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    feat = torch.cat([torch.stack([rows, cols]), image])[None]
    window = F.unfold(feat, 5, dilation=dilation, padding=2 * dilation).view(5, 25, h, w)
    inside = F.unfold(torch.ones(1, 1, h, w), 5, dilation=dilation, padding=2 * dilation).view(25, h, w) > 0
    plain = torch.exp(-0.5 * ((window - feat[0, :, None]) ** 2 * inverse.view(5, 1, 1, 1)).sum(0)) * inside

    ours = FusedPacKernel.apply(image, inverse, dilation)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-7)
    assert torch.all(ours[~inside] == 0)
    grad = torch.randn(25, h, w, generator=generator)
    (a,) = torch.autograd.grad(ours, inverse, grad)
    (b,) = torch.autograd.grad(plain, inverse, grad)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_fused_kernels_are_prepared_before_the_crf_training_says_it_started():
    from vos.methods.mixture import fused

    fused.warm_up()
    kernels = (fused._gather, fused._kernel_and_weight_grads, fused._pac_kernel, fused._pac_kernel_grad)
    assert all(kernel.signatures for kernel in kernels)  # compiled (or loaded from the cache) for fp32
    data = moving_shapes(2, (48, 64), 1, seed=0)
    method = vm.create("mixture", variant="rgb", weights="random", device="cpu", crf_iters=2)
    stages = []
    list(method.segment(Clip.from_frames(data.frames), data.masks[0], progress=lambda p: stages.append(p.stage)))
    preparing = [i for i, stage in enumerate(stages) if stage.startswith("preparing the CRF's kernels")]
    assert len(preparing) == 1 and preparing[0] < stages.index("training CRF 1 of 2")


def test_fused_kernels_survive_concurrent_runs_on_numbas_workqueue_layer():
    # The app runs methods in worker threads; numba's fallback layer aborts the process on concurrent launches.
    import subprocess
    import sys

    code = """
import threading, torch
from vos.methods.mixture.fused import FusedPacKernel, FusedPacMessage
def work():
    for _ in range(20):
        q = torch.rand(2, 30, 40, requires_grad=True)
        weight = torch.rand(2, 2, 25, requires_grad=True)
        kernel = FusedPacKernel.apply(torch.rand(3, 30, 40) * 255, torch.full((5,), 1e-3, requires_grad=True), 4)
        FusedPacMessage.apply(q, kernel, weight, 4).sum().backward()
threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
import numba
assert numba.threading_layer() == "workqueue"
"""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_exp_helper_is_torch_exp_bit_for_bit():
    # Across the fast range, the subnormal band (-104..-87) and far below it, where the result is 0.
    x = torch.cat([torch.linspace(-120.0, 20.0, 100_003), torch.tensor([-1e6, -104.0, -103.97, -87.34, -87.0])])
    x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(vmf._exp_(x.clone()), torch.exp(x))


def _dense_estep_reference(params, frame, index, valid, *, pe_only, indicator=None):
    """The E-step over every (S, K_max) slot as one padded product: what _estep computed before it skipped the
    masked slots' products (log-likelihood path: exp of log-joints minus their maximum). ``indicator`` = (gate (n, N),
    stored position units (n, S, K, p), thresholds (S,), the cells' position units (N, p)): the later frames'
    E-step, softmax of the log-joints times the 0/1 indicator, without a log-likelihood."""
    n, num_models, k_max, dim = params.mu.shape
    nf, sk = params.n_features, num_models * k_max
    x = frame[index]
    if pe_only:
        mu_pe_t = vmf.unit(params.mu[..., nf:]).reshape(n, sk, -1).transpose(1, 2)
        logpcs = torch.bmm(vmf.unit(x[..., nf:]), mu_pe_t).masked_fill_(~params.active.reshape(n, 1, sk), -999999.0)
    else:
        mu_t = params.mu.reshape(n, sk, dim).transpose(1, 2)
        logpcs = torch.bmm(x, mu_t).mul_(params.kappa.reshape(n, 1, sk)).add_(params.log_c.reshape(n, 1, sk))
    jll = logpcs.add_(params.logalpha.reshape(n, 1, sk)).view(n, -1, num_models, k_max)
    if indicator is not None:
        gate, stored, thresholds, pe_unit = indicator
        stored_t = stored.reshape(n, sk, -1).transpose(1, 2)
        near = torch.bmm(pe_unit[index], stored_t) > thresholds.repeat_interleave(k_max)
        on = (near & gate.gather(1, index)[..., None]).view_as(jll).float()
        q = (jll * on).softmax(-1).view(n, -1, sk) * valid[..., None]
        return torch.bmm(q.transpose(1, 2), x), q.sum(1), None
    top = jll.amax(-1, keepdim=True)
    q = (jll - top).exp_()
    total = q.sum(-1, keepdim=True)
    loglik = ((total.log() + top)[..., 0] * valid[..., None]).sum(1)
    q = (q / total).view(n, -1, sk) * valid[..., None]
    return torch.bmm(q.transpose(1, 2), x), q.sum(1), loglik.max(dim=1).values


@pytest.mark.parametrize("pe_only", [False, True])
def test_estep_over_active_slots_gives_the_dense_products_bits(pe_only):
    """Skipping the masked slots' products changes no bit (the padded product's numbers are the same products), and
    the option that also skips their passes (active_only) changes the sums' order only."""
    mixtures, frame, points, _, _ = _estep_case(2)
    ours = vmf._estep(
        mixtures, frame, points.index, points.valid, 10_000, pe_only=pe_only, with_ll=True, indicator=None,
        pe_unit=None, thresholds=None,
    )  # fmt: skip
    stats, counts, ll = _dense_estep_reference(mixtures, frame, points.index, points.valid, pe_only=pe_only)
    assert torch.equal(ours[0].flatten(1, 2), stats) and torch.equal(ours[1].flatten(1), counts)
    assert torch.equal(ours[2], ll)
    active = vmf._estep_active(mixtures, frame, points.index, points.valid, 1 << 20, pe_only=pe_only, with_ll=True)
    torch.testing.assert_close(active[0].flatten(1, 2), stats, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(active[1].flatten(1), counts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(active[2], ll, rtol=1e-6, atol=1e-3)


def test_scoring_over_active_slots_equals_the_padded_scores_bit_for_bit():
    mixtures, frame, gate, thresholds, pe = _scoring_case(19, 29, seed=4)
    isk = mixtures.active.numel()
    joint = (frame @ mixtures.mu.reshape(isk, -1).t()).mul_(mixtures.kappa.reshape(isk))
    joint = joint.add_(mixtures.log_c.reshape(isk)).add_(mixtures.logalpha.reshape(isk))
    near = pe @ mixtures.mu_pe_unit.reshape(isk, -1).t() > thresholds.repeat(3).repeat_interleave(9)
    padded = joint.masked_fill(~near, 0.0).clamp_min(0.0).view(-1, 3, 36).amax(-1).t().masked_fill(~gate, 0.0)
    ours = vmf.score_cells(mixtures, frame, gate, pe_unit=pe, thresholds=thresholds, chunk=1 << 20)
    assert torch.equal(ours, padded)
    assert float((ours > 0).float().mean()) > 0.05


def test_fast_options_track_like_the_default():
    data = moving_shapes(8, (96, 128), 2, seed=0)
    outputs = {}
    for fast in (False, True):
        method = vm.create(
            "mixture", variant="rgb", weights="random", device="cpu", size=96, num_models=4, crf_iters=10,
            max_iters=30, fused_crf=fast, fast_em=fast,
        )  # fmt: skip
        outputs[fast] = list(method.segment(Clip.from_frames(data.frames), data.masks[0]))
    ious = [_iou(a, b, k) for a, b in zip(outputs[True][1:], outputs[False][1:]) for k in (1, 2)]
    assert np.mean(ious) >= 0.95, ious
    truth = [_iou(o, t, k) for o, t in zip(outputs[True][1:], data.masks[1:]) for k in (1, 2)]
    assert np.mean(truth) >= 0.8, truth


def test_numba_is_imported_only_when_the_fused_crf_runs(monkeypatch, caplog):
    import subprocess
    import sys

    code = "import sys, vos.methods.mixture, vos.methods.mixture.crf; assert 'numba' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert vm.create("mixture", variant="rgb", device="cpu").fused_crf  # the default on CPU
    assert not vm.create("mixture", variant="rgb", device="cpu", fused_crf=False).fused_crf
    real_find_spec = mixture.importlib.util.find_spec
    monkeypatch.setattr(
        mixture.importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real_find_spec(name, *a)
    )
    with caplog.at_level("WARNING"):
        method = vm.create("mixture", variant="rgb", device="cpu")
    assert not method.fused_crf and "pip install numba" in caplog.text
    data = moving_shapes(3, (48, 64), 1, seed=0)
    maps = list(method.segment(Clip.from_frames(data.frames), data.masks[0]))  # torch's CRF path
    assert len(maps) == 3 and (maps[-1] == 1).any()
