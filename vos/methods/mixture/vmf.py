"""Streaming ensembles of von Mises-Fisher mixtures, batched over objects: position code, normaliser, K schedule,
frame-0 initialisation, EM with history, the 20-slot history, and the chunked scoring pass.

Shapes: I objects (background = 0), S mixtures per object, K = K_max component slots (padded; ``active`` says
which exist), d = n_features + 64 dims, N grid cells. Everything is fp32 except the history clock (float64).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vos.nn_utils import rowblock_mm

log = logging.getLogger(__name__)

PE_DIM = 64
HISTORY_SLOTS = 20
ANCHORS = 5
KAPPA_MAX = 9000.0
EPS = 1e-6  # the release's ``realmin``
NORM_EPS = 1e-12  # clamp of every L2 norm (torch.nn.functional.normalize's)
MASKED_LOGIT = -999999.0
INIT_ALPHA_LOGIT = 1.1
R_FIRST, R_LAST = 0.68 - 0.03, 0.83 - 0.03  # indicator thresholds, as the release writes them (float64)
SIZE_STAT_SIDE = 480  # the frame-0 mask is squashed to 480x480 for the object-size statistic
K_CAP = 350
TOL_FROM_ITER = 4  # the relative log-likelihood test starts at the 5th EM iteration
ROW_BLOCK = 128  # rows per GEMM in the scoring pass: per-row results do not depend on the chunk size


# --------------------------------------------------------------------------------------------------------------
# Fixed functions


def position_code(height: int, width: int, dim: int = PE_DIM, device: torch.device | None = None) -> torch.Tensor:
    """The 2-D sinusoidal code rho of every grid cell, (H*W, dim), row-major.

    For j = 0..dim/4-1, f_j = 10000^(-4j/dim); the entries are sin(r f_j), cos(r f_j), sin(c f_j), cos(c f_j) on
    integer row r and column c. ||rho|| = sqrt(dim/2).
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 4, device=device).float() / dim))
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device).float(), torch.arange(width, device=device).float(), indexing="ij"
    )
    y = rows.reshape(-1, 1) * inv_freq
    x = cols.reshape(-1, 1) * inv_freq
    return torch.stack([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1).flatten(1)


def log_normaliser(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """The release's approximation of log C_d(kappa) (Scott et al.'s), used exactly as written there: with
    a = d/2 - 1/2 and b = d/2 + 1/2, 0.5 [a ln(a + sqrt(a^2+k^2)) - sqrt(a^2+k^2) + a ln(a + sqrt(b^2+k^2))
    - sqrt(b^2+k^2)]. At d = 448 it is about +1140 for kappa -> 0, so log-joints are usually positive."""
    k2 = kappa**2
    a = dim / 2.0 - 0.5
    b = dim / 2.0 + 0.5
    sqrt_a = torch.sqrt(a**2 + k2)
    sqrt_b = torch.sqrt(b**2 + k2)
    return 0.5 * (a * torch.log(a + sqrt_a) - sqrt_a + a * torch.log(a + sqrt_b) - sqrt_b)


def object_sizes(squashed: np.ndarray, num_objects: int) -> np.ndarray:
    """sz_o = sqrt(floor(n_o / 8)), n_o = pixels of object o in the 480x480-squashed frame-0 mask."""
    counts = np.bincount(squashed.reshape(-1), minlength=num_objects)[:num_objects]
    return np.sqrt(counts // 8)


def components_per_mixture(size: float, num_models: int, *, background: bool) -> np.ndarray:
    """K_s = floor(linspace(a, sqrt(int(sz)), S)^2), a = 7.5 for the background and 1.5 for objects."""
    start = 7.5 if background else 1.5
    return (np.linspace(start, np.sqrt(int(size)), num_models) ** 2).astype(np.int32)


def indicator_thresholds(num_models: int) -> torch.Tensor:
    """r_s = linspace(0.65, 0.80, S) as fp32 thresholds that give, for fp32 cosines c, exactly the release's
    ``c > r_s`` taken in float64."""
    values = []
    for r in np.linspace(R_FIRST, R_LAST, num_models):
        r32 = np.float32(r)
        if float(r32) > r:  # c > r  <=>  c > (largest float32 below r) when r is not a float32
            r32 = np.nextafter(r32, np.float32(-np.inf))
        values.append(r32)
    return torch.tensor(np.array(values, dtype=np.float32))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=NORM_EPS)


# --------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass
class Mixtures:
    """Effective vMF parameters of every object's S mixtures, as the release's ``get_params`` returns them."""

    logalpha: torch.Tensor  # (I, S, K), log_softmax over active slots, MASKED_LOGIT elsewhere
    mu: torch.Tensor  # (I, S, K, d) unit (zero for never-fitted slots)
    kappa: torch.Tensor  # (I, S, K)
    active: torch.Tensor  # (I, S, K) bool: k < K_s
    n_features: int

    @property
    def dim(self) -> int:
        return self.mu.shape[-1]

    @property
    def log_c(self) -> torch.Tensor:
        return log_normaliser(self.kappa, self.dim)

    @property
    def mu_pe_unit(self) -> torch.Tensor:
        """Unit position part of every mean, (I, S, K, 64): what the indicator compares cells with."""
        return unit(self.mu[..., self.n_features :])

    def select(self, objects: torch.Tensor) -> Mixtures:
        return Mixtures(
            self.logalpha[objects], self.mu[objects], self.kappa[objects], self.active[objects], self.n_features
        )

    def assign(self, objects: torch.Tensor, new: Mixtures) -> None:
        self.logalpha[objects] = new.logalpha
        self.mu[objects] = new.mu
        self.kappa[objects] = new.kappa


def active_slots(sizes: np.ndarray, fitted: np.ndarray, num_models: int, k_max: int) -> torch.Tensor:
    """(I, S, K_max) mask of existing components. Objects of size < 2 use 16 for the schedule (the release's
    rule); schedules longer than K_max are cut at K_max."""
    active = torch.zeros(len(sizes), num_models, k_max, dtype=torch.bool)
    for o, size in enumerate(sizes):
        if not fitted[o]:
            continue
        schedule = components_per_mixture(16.0 if size < 2 else size, num_models, background=o == 0)
        for s, k in enumerate(schedule):
            active[o, s, : min(int(k), k_max)] = True
    return active


def set_params(
    alpha: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor, active: torch.Tensor, n_features: int
) -> Mixtures:
    """Store an M-step's (alpha, mu, kappa) the release's way (log(alpha + eps) logits, log(kappa + eps)) and read
    them back as its ``get_params`` does: masked logits, log_softmax, re-normalised means, exp(.) + eps."""
    logits = torch.log(alpha + EPS).masked_fill(~active, MASKED_LOGIT)
    return Mixtures(
        logalpha=logits.log_softmax(-1),
        mu=unit(mu),
        kappa=torch.exp(torch.log(kappa + EPS)) + EPS,
        active=active,
        n_features=n_features,
    )


# --------------------------------------------------------------------------------------------------------------
# Frame-0 initialisation


def draw_init_parameters(generator: torch.Generator, num_models: int, k_max: int, dim: int) -> None:
    """The release draws random alpha, mu and log-kappa for every mixture model and then overwrites them (alpha
    is constant, mu comes from the greedy centres, kappa from the first M-step); draw them anyway so the random
    stream that picks the first centres and the CRF noise is the release's."""
    torch.randn(num_models, k_max, generator=generator)
    torch.randn(num_models, k_max, dim, generator=generator)
    torch.randn(num_models, k_max, generator=generator)


def first_centres(generator: torch.Generator, counts: list[int], num_models: int) -> list[torch.Tensor]:
    """Per object, one random point index per mixture: randint over [1, n-2] as the release (a single point is
    repeated without a draw). Fixed: an object of exactly two points crashed the release (empty range); it draws
    from both points."""
    picks = []
    for n in counts:
        if n < 2:
            picks.append(torch.zeros(num_models, dtype=torch.long))
        elif n == 2:
            picks.append(torch.randint(0, 2, (num_models,), generator=generator))
        else:
            picks.append(torch.randint(1, n - 1, (num_models,), generator=generator))
    return picks


def greedy_centres(points: torch.Tensor, valid: torch.Tensor, first: torch.Tensor, k_max: int, n_features: int):
    """All K_max centres per mixture: after the first, the point whose summed cosine to the centres chosen so far
    is smallest, on the position dims from n_features + 3 on (the release hard-codes 384 + 3).

    points (I, P, d) padded fit vectors, valid (I, P), first (I, S) indices -> centres (I, S, K, d).
    The release recomputes the sum over all chosen centres at each step (O(K^2)); a running sum gives the same
    choice in O(K).
    """
    pe = unit(points[..., n_features + 3 :])  # (I, P, d')
    pe_t = pe.transpose(1, 2)  # (I, d', P)
    rows = torch.arange(points.shape[0], device=points.device)[:, None]
    chosen = [first]
    summed = torch.where(valid, 0.0, math.inf)[:, None, :].repeat(1, first.shape[1], 1)  # (I, S, P)
    for _ in range(1, k_max):
        summed += torch.bmm(pe[rows, chosen[-1]], pe_t)
        chosen.append(summed.argmin(dim=2))
    index = torch.stack(chosen, dim=2)  # (I, S, K)
    return points[rows[:, :, None], index]


def initial_mixtures(centres: torch.Tensor, active: torch.Tensor, n_features: int) -> Mixtures:
    """Uniform alpha over active slots, the greedy centres as means; kappa is not read before the first M-step."""
    logits = torch.full(active.shape, INIT_ALPHA_LOGIT, device=centres.device).masked_fill(~active, MASKED_LOGIT)
    return Mixtures(
        logalpha=logits.log_softmax(-1),
        mu=unit(centres),
        kappa=torch.ones(active.shape, device=centres.device),
        active=active,
        n_features=n_features,
    )


# --------------------------------------------------------------------------------------------------------------
# Streaming history


@dataclass
class History:
    """Per object and mixture, 20 slots of sufficient statistics (sum q x, sum q) stamped with the clock tau.

    Slots 0..4 are anchors holding frame-0 appearance; slots 5..19 roll. Empty slots have tau 0 and weigh 0.
    """

    stats: torch.Tensor  # (I, 20, S, K, d)
    counts: torch.Tensor  # (I, 20, S, K)
    tau: torch.Tensor  # (I, 20) float64
    saves: torch.Tensor  # (I,) long: how many times each object was saved
    n_features: int

    @classmethod
    def empty(cls, num_objects: int, num_models: int, k_max: int, dim: int, n_features: int, device) -> History:
        return cls(
            stats=torch.zeros(num_objects, HISTORY_SLOTS, num_models, k_max, dim, device=device),
            counts=torch.zeros(num_objects, HISTORY_SLOTS, num_models, k_max, device=device),
            tau=torch.zeros(num_objects, HISTORY_SLOTS, dtype=torch.float64, device=device),
            saves=torch.zeros(num_objects, dtype=torch.long, device=device),
            n_features=n_features,
        )

    def weights(self, objects: torch.Tensor, now: float, *, rate: float) -> torch.Tensor:
        """(len(objects), 20) slot weights exp(-rate |now - tau|), 0 for empty slots. The release computes |a-b| as
        sqrt(a^2 + b^2 - 2ab) in fp32, which cancels badly (and can turn negative under the root); this is |a-b|."""
        tau = self.tau[objects]
        w = torch.exp(-rate * (now - tau).abs())
        return torch.where(tau == 0, 0.0, w).float()

    def read(self, objects: torch.Tensor, now: float, *, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted sums H (n, S, K, d) and Hq (n, S, K); the current frame enters the M-step with weight 1."""
        w = self.weights(objects, now, rate=rate)
        return (
            torch.einsum("ij,ijskd->iskd", w, self.stats[objects]),
            torch.einsum("ij,ijsk->isk", w, self.counts[objects]),
        )

    def age(self, objects: torch.Tensor, step: float) -> None:
        """Absent objects: every non-empty stamp moves with the clock, so their ages freeze."""
        tau = self.tau[objects]
        self.tau[objects] = torch.where(tau > 0, tau + step, tau)

    def save(self, objects: torch.Tensor, stats: torch.Tensor, counts: torch.Tensor, now: float, step: float) -> None:
        """Store this frame's statistics (n, S, K, d), (n, S, K) for ``objects`` at clock ``now``.

        At an object's first save the five anchors take these statistics. At save m, anchor m mod 5 is stamped
        now - step (frame-0 appearance never decays), the newest rolling slot (m mod 15) + 5 takes the statistics,
        and the position part of that anchor and of every rolling slot except the two newest is moved to the
        current location: X_now[pe] * (Q_slot + eps) / (Q_now + eps).
        """
        if objects.numel() == 0:
            return
        nf = self.n_features
        m = self.saves[objects]
        fresh = m == 0
        if fresh.any():
            self.stats[objects[fresh], :ANCHORS] = stats[fresh, None]
            self.counts[objects[fresh], :ANCHORS] = counts[fresh, None]
        anchor = m % ANCHORS
        rolling = HISTORY_SLOTS - ANCHORS
        newest = m % rolling + ANCHORS
        previous = (m - 1) % rolling + ANCHORS
        slot = torch.arange(HISTORY_SLOTS, device=m.device)[None]
        relocate = (slot == anchor[:, None]) | (
            (slot >= ANCHORS) & (slot != newest[:, None]) & (slot != previous[:, None])
        )
        which, slots = relocate.nonzero(as_tuple=True)
        ratio = (self.counts[objects[which], slots] + EPS) / (counts[which] + EPS)  # (P, S, K)
        self.stats[objects[which], slots, :, :, nf:] = stats[which, :, :, nf:] * ratio[..., None]
        self.stats[objects, newest] = stats
        self.counts[objects, newest] = counts
        self.tau[objects, newest] = now
        self.tau[objects, anchor] = now - step
        self.saves[objects] += 1


# --------------------------------------------------------------------------------------------------------------
# EM


@dataclass
class Points:
    """Each object's data points: rows of a (N, d) frame matrix, padded per object with index 0 / valid False."""

    index: torch.Tensor  # (I, P) long
    valid: torch.Tensor  # (I, P) bool

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> Points:
        """(I, N) bool cell masks -> points in ascending cell order (the release's boolean-mask order)."""
        count = masks.sum(1)
        width = max(int(count.max()), 1) if masks.shape[0] else 1
        cells = torch.arange(masks.shape[1], device=masks.device)
        order = torch.where(masks, cells, masks.shape[1]).sort(dim=1).values[:, :width]
        valid = order < masks.shape[1]
        return cls(order.clamp(max=masks.shape[1] - 1), valid)

    @property
    def counts(self) -> torch.Tensor:
        return self.valid.sum(1)


@dataclass
class Indicator:
    """The spatial indicator stored by a scoring pass: the gate it used and the means it compared cells with."""

    gate: torch.Tensor  # (I, N) bool
    mu_pe_unit: torch.Tensor  # (I, S, K, 64)


def _mstep(
    stats: torch.Tensor,
    counts: torch.Tensor,
    hist_stats: torch.Tensor,
    hist_counts: torch.Tensor,
    active: torch.Tensor,
    n_features: int,
) -> Mixtures:
    """Closed-form vMF M-step with history, kappa clamp and the invalid-kappa replacement."""
    num_models, dim = stats.shape[1], stats.shape[-1]
    total = stats + hist_stats
    norms = torch.linalg.vector_norm(total, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    mu = total / norms
    r = norms[..., 0] / (counts + hist_counts + EPS * num_models)
    kappa = ((dim * r - r**3) / (1 - r**2)).clamp(EPS, KAPPA_MAX)
    # The denominator is mixture 0's (the release's); log_softmax over active slots removes it anyway, but it
    # decides how much the +eps inside log(alpha + eps) weighs.
    denominator = counts[:, 0].sum(-1) + hist_counts[:, 0].sum(-1) + EPS
    alpha = (counts + hist_counts + EPS) / denominator[:, None, None]
    # A NaN/inf/non-positive kappa takes the first valid component's kappa and mean (flattened (S, K) order).
    flat_kappa = kappa.flatten(1)
    invalid = ~torch.isfinite(flat_kappa) | (flat_kappa <= 0)
    if invalid.any():
        first = (~invalid).float().argmax(dim=1)
        rows = torch.arange(kappa.shape[0], device=kappa.device)
        flat_mu = mu.flatten(1, 2)
        flat_kappa = torch.where(invalid, flat_kappa[rows, first][:, None], flat_kappa)
        flat_mu = torch.where(invalid[..., None], flat_mu[rows, first][:, None], flat_mu)
        kappa = flat_kappa.view_as(kappa)
        mu = flat_mu.view_as(mu)
    return set_params(alpha, mu, kappa, active, n_features)


def em(
    mixtures: Mixtures,
    objects: torch.Tensor,
    frame: torch.Tensor,
    points: Points,
    *,
    iterations: int,
    tolerance: float,
    history: tuple[torch.Tensor, torch.Tensor] | None,
    indicator: Indicator | None = None,
    pe_unit: torch.Tensor | None = None,
    thresholds: torch.Tensor | None = None,
    block_elements: int = 1 << 20,
    active_only: bool = False,
    on_iteration: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run EM for ``objects`` (rows of ``mixtures``, updated in place) on their points of ``frame`` (N, d).

    ``history`` None means the frame-0 fit: its first E-step scores components by position cosine only. The
    log-likelihood test (|dLL|/|LL| < tolerance, LL = max over mixtures of the summed log p) starts at the 5th
    iteration and stops an object after its E-step. ``indicator`` multiplies the E-step's log-joints by the
    stored 0/1 indicator at each point's cell. Returns the statistics to save, (n, S, K, d) and (n, S, K): the
    last M-step's sum q x and the last E-step's sum q (the release's pair when it stops early).
    ``block_elements`` bounds each dense (objects x points x S*K) block; it changes sums in the last bits only.
    ``active_only`` runs the E-steps without an indicator (frame 0's) over the active slots only (``_estep_active``):
    the same values up to float summation order, about twice as fast, but not the same bits.
    ``on_iteration(done, iterations)`` is called after each iteration (progress; it may raise to stop).
    """
    device = frame.device
    nf = mixtures.n_features
    count = objects.numel()
    sub = mixtures.select(objects)
    num_models, k_max, dim = sub.mu.shape[1], sub.mu.shape[2], sub.mu.shape[3]
    if history is None:
        hist_stats = torch.zeros(count, num_models, k_max, dim, device=device)
        hist_counts = torch.zeros(count, num_models, k_max, device=device)
    else:
        hist_stats, hist_counts = history
    index, valid = points.index[objects], points.valid[objects]
    save_stats = torch.zeros(count, num_models, k_max, dim, device=device)
    save_counts = torch.zeros(count, num_models, k_max, device=device)
    running = torch.arange(count, device=device)  # rows still iterating
    ll_old = torch.full((count,), -math.inf, dtype=torch.float32, device=device)
    block = max(1, block_elements // max(1, num_models * k_max))
    tested = iterations > TOL_FROM_ITER
    step = 0
    for step in range(iterations):
        need_ll = tested and step >= TOL_FROM_ITER - 1
        rows = (sub.select(running), frame, index[running], valid[running])
        pe_only = history is None and step == 0
        if active_only and indicator is None:
            stats, counts, ll = _estep_active(*rows, block_elements, pe_only=pe_only, with_ll=need_ll)
        else:
            stats, counts, ll = _estep(
                *rows,
                block,
                pe_only=pe_only,
                with_ll=need_ll,
                indicator=None if indicator is None else _indicator_rows(indicator, objects[running]),
                pe_unit=pe_unit,
                thresholds=thresholds,
            )
        if tested and step >= TOL_FROM_ITER:
            rll = (ll - ll_old[running]).abs() / (ll_old[running].abs() + EPS)
            done = rll < tolerance
            save_counts[running[done]] = counts[done]
            keep = ~done
            running, stats, counts, ll = running[keep], stats[keep], counts[keep], ll[keep]
            if running.numel() == 0:
                break
        if need_ll:
            ll_old[running] = ll
        new = _mstep(stats, counts, hist_stats[running], hist_counts[running], sub.active[running], nf)
        sub.assign(running, new)
        save_stats[running] = stats
        save_counts[running] = counts
        if on_iteration is not None:
            on_iteration(step + 1, iterations)
    log.debug("mixture EM: %d objects, %d iterations, %d still running", count, step + 1, running.numel())
    mixtures.assign(objects, sub)
    return save_stats, save_counts


def _indicator_rows(indicator: Indicator, objects: torch.Tensor) -> Indicator:
    return Indicator(indicator.gate[objects], indicator.mu_pe_unit[objects])


def _softmax_(logits: torch.Tensor, dim: int, *, with_lse: bool) -> torch.Tensor | None:
    """Softmax of ``logits`` along ``dim`` in place; returns the log-sum-exp it normalised by if ``with_lse``.

    torch's softmax kernel, not exp(): torch.exp takes a slow path (~10-35x) for every input below -87, where the
    result is zero or subnormal, and the masked slots and far components put most log-joints there. The
    log-sum-exp is read off the softmax: at the maximum, softmax = exp(0) / sum, so log sum = top - log(max q)."""
    top = logits.amax(dim) if with_lse else None
    torch.ops.aten._softmax.out(logits, dim, False, out=logits)
    return top - logits.amax(dim).log_() if with_lse else None


def _estep_active(
    params: Mixtures,
    frame: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    block_elements: int,
    *,
    pe_only: bool,
    with_ll: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """E-step without an indicator, over each object's active slots only; returns sum q x (n, S, K, d), sum q
    (n, S, K) and, if asked, LL (n,).

    Without the indicator a masked slot's log-joint is about -1e6, so its posterior is exactly 0 and it adds
    nothing to any sum: leaving it out changes no value (only float summation order). The mixtures' K_s grow
    from 2 (objects) or 56 (background) to K_max, so about half of the (S, K_max) slots are masked: the products
    here do half the work of the padded layout, and so do the passes over the log-joints. Per object, the active
    slots are the rows of one (A, d) matrix, each mixture's slots contiguous, and the log-joints are laid out
    (A, points) so that each mixture's softmax runs in place on a contiguous block of rows."""
    n, num_models, k_max, dim = params.mu.shape
    nf = params.n_features
    sk = num_models * k_max
    stats = torch.zeros(n, sk, dim, device=frame.device)
    counts = torch.zeros(n, sk, device=frame.device)
    loglik = torch.zeros(n, num_models, device=frame.device)
    sizes = valid.sum(1).tolist()  # valid points are a prefix of each row (Points.from_masks)
    mixture_starts = torch.arange(num_models + 1, device=frame.device) * k_max
    for o in range(n):
        slots = params.active[o].reshape(sk).nonzero().flatten()
        if slots.numel() == 0 or sizes[o] == 0:
            continue
        bounds = torch.searchsorted(slots, mixture_starts).tolist()  # mixture s owns slots[bounds[s]:bounds[s+1]]
        if pe_only:
            mu = unit(params.mu[o, ..., nf:]).reshape(sk, -1)[slots]
        else:
            mu = params.mu[o].reshape(sk, dim)[slots]
            kappa = params.kappa[o].reshape(sk, 1)[slots]
            log_c = params.log_c[o].reshape(sk, 1)[slots]
        logalpha = params.logalpha[o].reshape(sk, 1)[slots]
        object_stats = torch.zeros(slots.numel(), dim, device=frame.device)
        object_counts = torch.zeros(slots.numel(), device=frame.device)
        block = max(1, block_elements // slots.numel())
        for start in range(0, sizes[o], block):
            x = frame[index[o, start : min(start + block, sizes[o])]]  # (b, d)
            if pe_only:
                jll = (mu @ unit(x[:, nf:]).t()).add_(logalpha)  # (A, b)
            else:
                jll = (mu @ x.t()).mul_(kappa).add_(log_c).add_(logalpha)
            for s in range(num_models):
                lo, hi = bounds[s], bounds[s + 1]
                if lo == hi:
                    continue
                lse = _softmax_(jll[lo:hi], 0, with_lse=with_ll)
                if with_ll:
                    loglik[o, s] += lse.sum()
            object_counts += jll.sum(1)
            object_stats += jll @ x
        stats[o, slots] = object_stats
        counts[o, slots] = object_counts
    ll = loglik.max(dim=1).values if with_ll else None
    return stats.view(n, num_models, k_max, dim), counts.view(n, num_models, k_max), ll


def _exp_(x: torch.Tensor) -> torch.Tensor:
    """torch.exp in place, bit for bit, with less of its slow path.

    torch's vectorised exp takes a slow path (~10-35x) for every vector holding an input whose result underflows
    (below ~-87.3: subnormal or zero), and the masked slots (log-joints ~ -1e6) and far components put ~98% of the
    E-step's inputs there. Below -104 the result is exactly 0, so those inputs become 0 first (exp(0) = 1, zeroed
    after); only the vectors with one of the few inputs in between (~0.2%) still take the slow path."""
    zero = x < -104.0
    return x.masked_fill_(zero, 0.0).exp_().masked_fill_(zero, 0.0)


def _estep(
    params: Mixtures,
    frame: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    *,
    pe_only: bool,
    with_ll: bool,
    indicator: Indicator | None,
    pe_unit: torch.Tensor | None,
    thresholds: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """E-step over blocks of points; returns sum q x (n, S, K, d), sum q (n, S, K) and, if asked, LL (n,).

    Each block holds only the objects that still have points in it (objects differ a lot in size).

    The products run over each object's active slots only (about half of the padded (S, K_max) ones; ``slots``).
    A masked slot's log-joint is about -1e6 whatever its product, so its posterior is exactly 0 (exp underflows):
    its product is left at 0 instead, and without the indicator its zero posterior adds nothing to sum q x. The
    products of the active slots are the same numbers, bit for bit (tests/test_mixture.py compares with the dense
    products), and so are the sums over slots, which still run over the padded rows."""
    n, num_models, k_max, dim = params.mu.shape
    nf = params.n_features
    sk = num_models * k_max
    slots = [params.active[o].reshape(sk).nonzero().flatten() for o in range(n)]
    mu_t = [params.mu[o].reshape(sk, dim)[slots[o]].t() for o in range(n)]  # (d, A_o)
    kappa = params.kappa.reshape(n, 1, sk)
    log_c = params.log_c.reshape(n, 1, sk)
    logalpha = params.logalpha.reshape(n, 1, sk)
    inactive = ~params.active.reshape(n, 1, sk)
    if pe_only:
        mu_pe_t = unit(params.mu[..., nf:]).reshape(n, sk, -1).transpose(1, 2)
    if indicator is not None:
        ind_pe_t = indicator.mu_pe_unit.reshape(n, sk, -1).transpose(1, 2)
        ind_r = thresholds.repeat_interleave(k_max).view(1, 1, sk)
    stats = torch.zeros(n, sk, dim, device=frame.device)
    counts = torch.zeros(n, sk, device=frame.device)
    loglik = torch.zeros(n, num_models, device=frame.device)
    sizes = valid.sum(1)
    for start in range(0, index.shape[1], block):
        rows = torch.nonzero(sizes > start).flatten()
        if rows.numel() == 0:
            break
        idx = index[rows, start : start + block]
        ok = valid[rows, start : start + block, None]
        x = frame[idx]  # (r, b, d)
        if pe_only:
            logpcs = torch.bmm(unit(x[..., nf:]), mu_pe_t[rows]).masked_fill_(inactive[rows], MASKED_LOGIT)
        else:
            logpcs = x.new_zeros(rows.numel(), x.shape[1], sk)
            for i, o in enumerate(rows.tolist()):
                logpcs[i].index_copy_(1, slots[o], x[i] @ mu_t[o])
            logpcs.mul_(kappa[rows]).add_(log_c[rows])
        jll = logpcs.add_(logalpha[rows]).view(rows.numel(), -1, num_models, k_max)
        q = None
        if with_ll:
            top = jll.amax(-1, keepdim=True)
            q = _exp_(jll - top)
            total = q.sum(-1, keepdim=True)
            loglik[rows] += ((total.log() + top)[..., 0] * ok).sum(1)
            q /= total
        if indicator is not None:
            gate = indicator.gate[rows].gather(1, idx)[..., None]  # (r, b, 1)
            near = torch.bmm(pe_unit[idx], ind_pe_t[rows]) > ind_r
            q = (jll * (near & gate).view_as(jll).to(jll.dtype)).softmax(-1)
        elif q is None:
            q = jll.softmax(-1)
        q = q.view(rows.numel(), -1, sk) * ok
        counts[rows] += q.sum(1)
        if indicator is not None:  # masked slots that are off share the points: every slot has sums
            stats[rows] += torch.bmm(q.transpose(1, 2), x)
            continue
        for i, o in enumerate(rows.tolist()):
            stats[o, slots[o]] += q[i][:, slots[o]].t() @ x[i]
    ll = loglik.max(dim=1).values if with_ll else None
    return stats.view(n, num_models, k_max, dim), counts.view(n, num_models, k_max), ll


# --------------------------------------------------------------------------------------------------------------
# Scoring


def score_cells(
    mixtures: Mixtures,
    frame: torch.Tensor,
    gate: torch.Tensor,
    *,
    pe_unit: torch.Tensor,
    thresholds: torch.Tensor | None,
    chunk: int,
) -> torch.Tensor:
    """score_o(n) = max over s, k of W_o(n) * 1[cos(rho_n, pe(mu_sk)) > r_s] * max(0, l_sk(x'_n)), (I, N).

    ``frame`` (N, d) holds the scoring vectors x', ``gate`` (I, N) the windows W_o (False for objects that are
    not modelled), ``thresholds`` (S,) the r_s or None for no indicator. Computed ``chunk`` cells at a time (rounded
    up to a multiple of ROW_BLOCK); the result does not depend on ``chunk``.
    Only active slots are scored: a masked slot's log-joint is about -1e6, so max(0, .) makes it 0, which never
    raises a maximum over values >= 0; leaving those slots out changes no bit and halves the products.
    """
    num_objects, num_models, k_max, dim = mixtures.mu.shape
    # Object by object, so each object's slots are one run of columns.
    slots = mixtures.active.reshape(-1).nonzero().flatten()
    bounds = [0, *np.cumsum(mixtures.active.reshape(num_objects, -1).sum(1).tolist()).tolist()]
    mu = mixtures.mu.reshape(-1, dim)[slots]
    kappa = mixtures.kappa.reshape(-1)[slots]
    log_c = mixtures.log_c.reshape(-1)[slots]
    logalpha = mixtures.logalpha.reshape(-1)[slots]
    if thresholds is not None:
        mu_pe = mixtures.mu_pe_unit.reshape(-1, mixtures.mu_pe_unit.shape[-1])[slots]
        r = thresholds.repeat(num_objects).repeat_interleave(k_max)[slots]
    chunk = max(ROW_BLOCK, -(-chunk // ROW_BLOCK) * ROW_BLOCK)
    n_cells = frame.shape[0]
    out = torch.zeros(num_objects, n_cells, device=frame.device)
    for start in range(0, n_cells, chunk):
        stop = min(start + chunk, n_cells)
        # logalpha + (kappa * x'.mu + logC), in place (the same additions as written out).
        joint = (
            rowblock_mm(frame[start:stop], mu.t(), block=ROW_BLOCK).mul_(kappa).add_(log_c).add_(logalpha)
        )  # (c, active slots)
        if thresholds is not None:
            joint.masked_fill_(rowblock_mm(pe_unit[start:stop], mu_pe.t(), block=ROW_BLOCK) <= r, 0.0)
        joint.clamp_min_(0.0)
        for o in range(num_objects):
            if bounds[o + 1] > bounds[o]:
                out[o, start:stop] = joint[:, bounds[o] : bounds[o + 1]].amax(-1)
    # The gate is per object and cell, so it can be applied after the max over (s, k).
    return out.masked_fill_(~gate, 0.0)


def auto_chunk(num_objects: int, num_models: int, k_max: int, budget_elements: int = 1 << 20) -> int:
    """Cells per scoring chunk so that one dense (cells x I*S*K) fp32 tensor stays near ``budget_elements``."""
    return max(ROW_BLOCK, budget_elements // max(1, num_objects * num_models * k_max))
