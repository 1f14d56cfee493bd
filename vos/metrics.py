"""DAVIS-2017 scores: region similarity J, boundary accuracy F, their statistics, and the two protocols.

The definitions are those of the official DAVIS-2017 evaluation (github.com/davisvideochallenge/davis2017-evaluation),
so that our numbers can be set beside published ones:

- **J** is the IoU of an object's predicted and ground-truth masks; an empty prediction against an empty ground truth
  scores 1 (and an empty prediction against a non-empty one 0).
- **F** is the boundary F-measure. A mask's boundary is its seg2bmap map: a pixel is a boundary pixel when it differs
  from its right, bottom or bottom-right neighbour, counting only neighbours inside the image (so the image border is
  no boundary, and there is no thinning). A predicted boundary pixel is matched when a ground-truth boundary pixel lies
  in the disk of radius r = ceil(0.008 * image diagonal) around it (x² + y² <= r², skimage's ``disk``, which the
  official code uses; OpenCV's MORPH_ELLIPSE of the same size differs from it by a few pixels from r = 2 on, so we
  build the disk ourselves). precision = matched predicted / predicted boundary pixels; recall = matched ground-truth
  / ground-truth boundary pixels; F = 2PR / (P + R). The official special cases: no boundary in either mask -> P = R
  = 1 -> F = 1; a boundary in only one of them -> F = 0 (P = 1, R = 0 or the reverse); P + R = 0 -> F = 0.
- Per object and measure: **Mean** over the scored frames; **Recall**, the fraction of frames scoring > 0.5;
  **Decay**, the mean of the first of 4 bins of frames minus the mean of the last. The bins are the official ones:
  edges round(linspace(1, n, 5)) - 1, each bin including both its edges, so that neighbouring bins share a frame.
  This is *not* np.array_split (10 frames: first bin 0-2, last bin 7-9, where array_split gives 8-9).
- **Global** columns ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay") are means over
  all objects of all sequences (the unit is an object, not a sequence, as in DAVIS); J&F-Mean = (J-Mean + F-Mean) / 2.
  Scores are fractions (0-1), as in the official CSV files; papers print them multiplied by 100.

Ground-truth objects are the ids present in a sequence's first ground-truth frame (0 is background; 255 is void and
never an object). DAVIS takes ids 1..max(first frame): the same set when ids are contiguous, as in DAVIS, while
non-contiguous ids (1, 3, 7) would give DAVIS empty phantom objects that score 1 wherever the prediction is empty
too. Ids first seen in a later frame are not scored (a semi-supervised method is never told about them); a warning
says so.

The protocols:

- ``semi`` (semi-supervised): the first and the last ground-truth frames are not scored, as in the official
  evaluation (the first frame is the prompt). Prediction id k is scored against ground-truth object k. Void pixels are
  plain background here: the official code passes no void mask in this protocol. Prediction ids that are no
  ground-truth object are ignored with a warning (DAVIS stops with an error).
- ``unsup`` (unsupervised): every ground-truth frame is scored (the official evaluation trims frames only in the
  semi-supervised protocol), and void pixels (255) count for neither J nor F. Prediction ids are proposals: at most
  20 are kept. DAVIS stops with an error beyond 20; we keep the 20 with the largest total area over the scored
  frames (ties: the lower id) and warn. Proposals are matched to ground-truth objects ONCE per sequence: the Hungarian
  algorithm (scipy's linear_sum_assignment) maximises the sum over matched pairs of the mean over frames of
  (J + F) / 2. When there are fewer proposals than objects, empty proposals are added, as DAVIS pads with empty
  masks, so an object left without a real proposal scores 0 on the frames where it is visible and 1 on those where it
  is absent. DAVIS counts proposals as ids 1..max id; we count the ids present (the same for contiguous ids).

Where we differ from the official code on purpose: a predicted frame that is missing counts as an empty mask, with a
warning (DAVIS stops with an error), and the decay bins are computed in integers (the official code casts the bin
edges to uint8, which wraps around past 256 frames).

Use ``evaluate_sequence`` on label maps in memory, ``summarize`` for the global DAVIS columns, and
``python -m vos eval --pred DIR --gt DIR [--task semi|unsup] [--json FILE]`` (``command_eval``) on folders.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from vos.errors import VosError
from vos.masks import MASK_EXTENSIONS, read_mask_dir
from vos.text import format_table as format_table_text
from vos.video import natural_key

log = logging.getLogger(__name__)

BOUND_TH = 0.008  # the boundary tolerance, as a fraction of the image diagonal (official bound_th)
MAX_PROPOSALS = 20  # the unsupervised protocol's limit on proposals per sequence
VOID_ID = 255
TASKS = ("semi", "unsup")
TASK_TITLES = {"semi": "semi-supervised", "unsup": "unsupervised"}
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
DECAY_BINS = 4

Masks = Sequence[np.ndarray] | Mapping[str, np.ndarray]


class EvalError(VosError, ValueError):
    """Predictions and ground truth that cannot be scored together; the message says why and what to do."""


class EvalPathError(EvalError, FileNotFoundError):
    """A --pred or --gt path that does not exist or holds no PNG masks."""


# --------------------------------------------------------------------------------------------------------------
# Per-frame measures


def boundary_radius(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """The matching radius in pixels: ceil(bound_th * diagonal); a ``bound_th`` >= 1 is already pixels (as DAVIS)."""
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * float(np.linalg.norm(shape[:2])))


@functools.lru_cache(maxsize=32)
def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Bool (H, W) boundary map: pixels that differ from their right, bottom or bottom-right neighbour in the image."""
    mask = np.asarray(mask, bool)
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return edge


@dataclass(frozen=True)
class _Boundary:
    """A mask's boundary pixels and their dilation by the matching disk, kept in a window around the boundary only
    (objects are usually small next to the frame, and the dilation is the costly step)."""

    ys: np.ndarray
    xs: np.ndarray
    dilated: np.ndarray  # bool, the window (top, left) + shape of the frame
    top: int
    left: int

    @property
    def count(self) -> int:
        return int(self.ys.size)

    def matched(self, other: _Boundary) -> int:
        """How many of ``other``'s boundary pixels lie within the radius of this boundary."""
        if self.count == 0 or other.count == 0:
            return 0
        y = other.ys - self.top
        x = other.xs - self.left
        h, w = self.dilated.shape
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        return int(np.count_nonzero(self.dilated[y[inside], x[inside]]))


_NO_BOUNDARY = _Boundary(np.empty(0, np.intp), np.empty(0, np.intp), np.zeros((0, 0), bool), 0, 0)


def _boundary(mask: np.ndarray, radius: int) -> _Boundary:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return _NO_BOUNDARY
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    # seg2bmap marks the pixels just above / left of the object and its own last row / column; the window keeps one
    # pixel beyond the object on every side so that each pixel meets the same neighbours as in the whole frame.
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
    ys, xs = np.nonzero(seg2bmap(mask[y0:y1, x0:x1]))
    if ys.size == 0:  # a mask that fills the frame has no boundary
        return _NO_BOUNDARY
    ys, xs = ys + y0, xs + x0
    top, bottom = max(int(ys.min()) - radius, 0), min(int(ys.max()) + radius + 1, h)
    left, right = max(int(xs.min()) - radius, 0), min(int(xs.max()) + radius + 1, w)
    canvas = np.zeros((bottom - top, right - left), np.uint8)
    canvas[ys - top, xs - left] = 1
    dilated = cv2.dilate(canvas, _disk(radius)).astype(bool)
    return _Boundary(ys, xs, dilated, top, left)


def _f_from_boundaries(pred: _Boundary, gt: _Boundary) -> float:
    if pred.count == 0 and gt.count == 0:
        return 1.0
    if pred.count == 0 or gt.count == 0:
        return 0.0
    precision = gt.matched(pred) / pred.count
    recall = pred.matched(gt) / gt.count
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _check_pair(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    if pred_mask.shape != gt_mask.shape or pred_mask.ndim != 2:
        raise ValueError(f"expected two (H, W) masks of one size, got {pred_mask.shape} and {gt_mask.shape}")
    return pred_mask, gt_mask


def jaccard(pred_mask: np.ndarray, gt_mask: np.ndarray, *, void: np.ndarray | None = None) -> float:
    """J of two binary masks: IoU over the pixels that are not void; 1 when both are empty."""
    pred_mask, gt_mask = _check_pair(pred_mask, gt_mask)
    if void is not None:
        valid = ~np.asarray(void, bool)
        pred_mask, gt_mask = pred_mask & valid, gt_mask & valid
    union = np.count_nonzero(pred_mask | gt_mask)
    return 1.0 if union == 0 else np.count_nonzero(pred_mask & gt_mask) / union


def f_measure(
    pred_mask: np.ndarray, gt_mask: np.ndarray, *, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """F of two binary masks: the boundary F-measure within ``boundary_radius``; void pixels are cleared first."""
    pred_mask, gt_mask = _check_pair(pred_mask, gt_mask)
    if void is not None:
        valid = ~np.asarray(void, bool)
        pred_mask, gt_mask = pred_mask & valid, gt_mask & valid
    radius = boundary_radius(gt_mask.shape, bound_th)
    return _f_from_boundaries(_boundary(pred_mask, radius), _boundary(gt_mask, radius))


@dataclass(frozen=True)
class _FrameScores:
    J: np.ndarray  # (objects, proposals)
    F: np.ndarray  # (objects, proposals)
    J_empty: np.ndarray  # (objects,): against an empty proposal
    F_empty: np.ndarray  # (objects,)


def _score_frame(
    gt_map: np.ndarray,
    pred_map: np.ndarray,
    object_ids: Sequence[int],
    proposal_ids: Sequence[int],
    *,
    use_void: bool,
    radius: int,
) -> _FrameScores:
    """J and F of every (ground-truth object, predicted id) pair of one frame."""
    k, m = len(object_ids), len(proposal_ids)
    gt_index = np.zeros(256, np.int32)
    gt_index[list(object_ids)] = np.arange(1, k + 1)
    pred_index = np.zeros(256, np.int32)
    pred_index[list(proposal_ids)] = np.arange(1, m + 1)
    valid = gt_map != VOID_ID if use_void else None
    # One joint histogram of (object, proposal) over the frame gives every intersection and area at once.
    pairs = gt_index[gt_map] * (m + 1) + pred_index[pred_map]
    if valid is not None:
        pairs = pairs[valid]
    joint = np.bincount(pairs.ravel(), minlength=(k + 1) * (m + 1)).reshape(k + 1, m + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    gt_area = joint[1:, :].sum(axis=1)
    pred_area = joint[:, 1:].sum(axis=0)
    union = gt_area[:, None] + pred_area[None, :] - intersection
    J = np.divide(intersection, union, out=np.ones_like(intersection), where=union > 0)

    gt_boundaries = [_boundary(gt_map == i, radius) if gt_area[n] else _NO_BOUNDARY for n, i in enumerate(object_ids)]
    pred_boundaries = []
    for n, i in enumerate(proposal_ids):
        if not pred_area[n]:
            pred_boundaries.append(_NO_BOUNDARY)
            continue
        mask = pred_map == i
        pred_boundaries.append(_boundary(mask & valid if valid is not None else mask, radius))
    F = np.array([[_f_from_boundaries(p, g) for p in pred_boundaries] for g in gt_boundaries]).reshape(k, m)
    J_empty = (gt_area == 0).astype(np.float64)
    F_empty = np.array([float(g.count == 0) for g in gt_boundaries])
    return _FrameScores(J, F, J_empty, F_empty)


# --------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Statistics:
    """DAVIS statistics of one object's per-frame scores."""

    mean: float
    recall: float  # fraction of frames scoring > 0.5
    decay: float  # mean of the first bin of frames minus mean of the last


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The official decay bins of ``n`` frames as (first, last) frame indices, both included."""
    if n == 0:
        return []
    edges = np.round(np.linspace(1, n, DECAY_BINS + 1) + 1e-10).astype(np.int64) - 1
    return [(int(edges[i]), int(edges[i + 1])) for i in range(DECAY_BINS)]


def statistics(values: Sequence[float] | np.ndarray) -> Statistics:
    """Mean, recall and decay of per-frame scores (NaN for no frames; NaN frames are skipped, as DAVIS does)."""
    values = np.asarray(values, np.float64)
    if values.size == 0 or np.isnan(values).all():
        return Statistics(math.nan, math.nan, math.nan)
    bins = decay_bins(values.size)
    first, last = values[bins[0][0] : bins[0][1] + 1], values[bins[-1][0] : bins[-1][1] + 1]
    with np.errstate(invalid="ignore"):
        recall = float(np.mean(values > 0.5))
    return Statistics(float(np.nanmean(values)), recall, float(_nanmean(first) - _nanmean(last)))


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


# --------------------------------------------------------------------------------------------------------------
# Sequences


@dataclass
class ObjectResult:
    """One ground-truth object's per-frame scores over a sequence's scored frames."""

    object_id: int
    prediction_id: int | None  # the predicted id scored against it: itself (semi), its proposal or None (unsup)
    J: np.ndarray  # (frames,)
    F: np.ndarray  # (frames,)

    @functools.cached_property
    def J_stats(self) -> Statistics:
        return statistics(self.J)

    @functools.cached_property
    def F_stats(self) -> Statistics:
        return statistics(self.F)

    def row(self) -> dict[str, float]:
        """This object's DAVIS columns."""
        return _columns([self])


@dataclass
class SequenceResult:
    """The scores of one sequence: one ``ObjectResult`` per ground-truth object, in id order."""

    name: str
    task: str
    frames: list[str]  # the scored frames, in order
    objects: list[ObjectResult]
    warnings: list[str] = field(default_factory=list)

    @property
    def J(self) -> np.ndarray:
        """(objects, frames) per-frame J."""
        return np.stack([o.J for o in self.objects]) if self.objects else np.zeros((0, len(self.frames)))

    @property
    def F(self) -> np.ndarray:
        """(objects, frames) per-frame F."""
        return np.stack([o.F for o in self.objects]) if self.objects else np.zeros((0, len(self.frames)))

    def row(self) -> dict[str, float]:
        """The DAVIS columns over this sequence's objects (NaN when it has none)."""
        return _columns(self.objects)


def _columns(objects: Sequence[ObjectResult]) -> dict[str, float]:
    if not objects:
        return dict.fromkeys(GLOBAL_COLUMNS, math.nan)
    j = np.array([[o.J_stats.mean, o.J_stats.recall, o.J_stats.decay] for o in objects]).mean(axis=0)
    f = np.array([[o.F_stats.mean, o.F_stats.recall, o.F_stats.decay] for o in objects]).mean(axis=0)
    values = [(j[0] + f[0]) / 2, *j, *f]
    return {name: float(v) for name, v in zip(GLOBAL_COLUMNS, values)}


def summarize(results: Iterable[SequenceResult]) -> dict[str, float]:
    """The global DAVIS columns: each the mean over all objects of all sequences (NaN when there are none)."""
    return _columns([o for r in results for o in r.objects])


def _named_frames(masks: Masks) -> list[tuple[str, np.ndarray]]:
    if isinstance(masks, Mapping):
        names = sorted(masks, key=lambda n: natural_key(str(n)))
        return [(str(n), np.asarray(masks[n])) for n in names]
    return [(str(i), np.asarray(m)) for i, m in enumerate(masks)]


def _as_label_map(array: np.ndarray, shape: tuple[int, int], what: str, name: str) -> np.ndarray:
    if array.shape != shape:
        raise EvalError(
            f"{what} frame {name!r} is {_size(array.shape)} but the ground truth is {_size(shape)}; "
            "write predictions at the ground truth's resolution."
        )
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) or (array.size and (array.min() < 0 or array.max() > 255)):
        raise EvalError(f"{what} frame {name!r} is not a label map of ids 0-255 (dtype {array.dtype}).")
    return array.astype(np.uint8, copy=False)


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) == 2 else str(shape)


def _listed(items: Sequence[object], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def evaluate_sequence(
    pred: Masks,
    gt: Masks,
    *,
    task: str = "semi",
    name: str = "sequence",
    bound_th: float = BOUND_TH,
    max_proposals: int = MAX_PROPOSALS,
) -> SequenceResult:
    """Score one sequence's predicted label maps against its ground truth under the DAVIS ``task`` protocol.

    ``pred`` and ``gt`` are lists of (H, W) label maps (matched by position) or {frame name: label map} (matched by
    name; frames are ordered by natural sort of the names). Predicted frames missing for a scored frame count as
    empty, with a warning in ``result.warnings`` (also logged).
    """
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}; use one of {', '.join(TASKS)}.")
    gt_frames = _named_frames(gt)
    if not gt_frames:
        raise EvalError(f"{name}: the ground truth holds no frames.")
    shape = gt_frames[0][1].shape
    if len(shape) != 2:
        raise EvalError(f"{name}: ground-truth frames must be (H, W) label maps, got shape {shape}.")
    gt_frames = [(n, _as_label_map(m, shape, "ground-truth", n)) for n, m in gt_frames]
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.warning("%s: %s", name, message)

    first_ids = set(np.unique(gt_frames[0][1]).tolist()) - {0, VOID_ID}
    object_ids = sorted(first_ids)
    later_ids = set().union(*(np.unique(m).tolist() for _, m in gt_frames[1:])) - first_ids - {0, VOID_ID}
    if later_ids:
        warn(f"ground-truth ids {_listed(sorted(later_ids))} are absent from the first frame and are not scored.")
    if not object_ids:
        warn("the first ground-truth frame holds no object; nothing to score.")

    if task == "semi":
        if len(gt_frames) < 3:
            raise EvalError(
                f"{name}: the semi-supervised protocol scores neither the first nor the last frame, so it needs at "
                f"least 3 ground-truth frames; this sequence has {len(gt_frames)}."
            )
        scored = gt_frames[1:-1]
    else:
        scored = gt_frames
    pred_maps = _match_predictions(pred, gt_frames, scored, shape, name, warn)

    radius = boundary_radius(shape, bound_th)
    if task == "semi":
        present = set().union(*(np.unique(p).tolist() for p in pred_maps)) - {0}
        stray = sorted(present - set(object_ids))
        if stray:
            warn(f"predicted ids {_listed(stray)} are not ground-truth objects and are not scored.")
        frames = [
            _score_frame(g, p, object_ids, object_ids, use_void=False, radius=radius)
            for (_, g), p in zip(scored, pred_maps)
        ]
        objects = [
            ObjectResult(i, i, np.array([s.J[n, n] for s in frames]), np.array([s.F[n, n] for s in frames]))
            for n, i in enumerate(object_ids)
        ]
    else:
        proposals = _proposals(pred_maps, max_proposals, warn)
        frames = [
            _score_frame(g, p, object_ids, proposals, use_void=True, radius=radius)
            for (_, g), p in zip(scored, pred_maps)
        ]
        objects = _match_proposals(object_ids, proposals, frames)
    return SequenceResult(name, task, [n for n, _ in scored], objects, warnings)


def _match_predictions(
    pred: Masks,
    gt_frames: list[tuple[str, np.ndarray]],
    scored: list[tuple[str, np.ndarray]],
    shape: tuple[int, int],
    name: str,
    warn: Callable[[str], None],
) -> list[np.ndarray]:
    """One predicted label map per scored frame; missing ones empty."""
    if isinstance(pred, Mapping):
        by_name = {str(k): v for k, v in pred.items()}
    else:
        by_name = {gt_name: p for (gt_name, _), p in zip(gt_frames, pred)}
    if not by_name:
        raise EvalError(f"{name}: there are no predicted frames.")
    wanted = [n for n, _ in scored]
    missing = [n for n in wanted if n not in by_name]
    if len(missing) == len(wanted):
        raise EvalError(
            f"{name}: no predicted frame matches a scored ground-truth frame (ground truth: {_listed(wanted, 3)}; "
            f"predictions: {_listed(list(by_name), 3)}); name each predicted mask like its ground-truth frame."
        )
    if missing:
        warn(f"{len(missing)} of {len(wanted)} scored frames lack a prediction and count as empty: {_listed(missing)}.")
    empty = np.zeros(shape, np.uint8)
    return [_as_label_map(np.asarray(by_name[n]), shape, "predicted", n) if n in by_name else empty for n in wanted]


def _proposals(pred_maps: list[np.ndarray], max_proposals: int, warn: Callable[[str], None]) -> list[int]:
    area = np.zeros(256, np.int64)
    for p in pred_maps:
        area += np.bincount(p.ravel(), minlength=256)
    ids = [i for i in range(1, 256) if area[i]]
    if len(ids) <= max_proposals:
        return ids
    kept = sorted(sorted(ids, key=lambda i: (-area[i], i))[:max_proposals])
    dropped = sorted(set(ids) - set(kept))
    warn(
        f"{len(ids)} proposals, more than the {max_proposals} the unsupervised protocol allows; kept the "
        f"{max_proposals} largest and dropped ids {_listed(dropped)}."
    )
    return kept


def _match_proposals(object_ids: list[int], proposals: list[int], frames: list[_FrameScores]) -> list[ObjectResult]:
    """Hungarian matching, once per sequence, on the mean over frames of (J + F) / 2; pads with empty proposals."""
    k = len(object_ids)
    if k == 0:
        return []
    padding = max(k - len(proposals), 0)
    J = np.stack([np.concatenate([s.J, np.repeat(s.J_empty[:, None], padding, axis=1)], axis=1) for s in frames], -1)
    F = np.stack([np.concatenate([s.F, np.repeat(s.F_empty[:, None], padding, axis=1)], axis=1) for s in frames], -1)
    score = (J.mean(axis=-1) + F.mean(axis=-1)) / 2
    rows, cols = linear_sum_assignment(score, maximize=True)
    matched = dict(zip(rows.tolist(), cols.tolist()))
    objects = []
    for n, object_id in enumerate(object_ids):
        column = matched[n]
        proposal = proposals[column] if column < len(proposals) else None
        objects.append(ObjectResult(object_id, proposal, J[n, column], F[n, column]))
    return objects


# --------------------------------------------------------------------------------------------------------------
# Folders and the CLI


def _is_mask_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(MASK_EXTENSIONS)


def _sequence_folders(path: Path, flag: str) -> tuple[bool, dict[str, Path]]:
    """(is one sequence, {sequence name: folder or zip}) for a --pred / --gt argument."""
    if not path.exists():
        raise EvalPathError(f"{flag} {path}: no such folder; give a folder of palette PNGs or a root of such folders.")
    if path.is_file():
        if zipfile.is_zipfile(path):
            return True, {path.stem: path}
        raise EvalPathError(f"{flag} {path}: expected a folder of palette PNGs (or a zip of them), not a file.")
    children = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    if any(_is_mask_file(p) for p in children):
        return True, {path.resolve().name: path}
    folders = {p.name: p for p in children if p.is_dir() and any(_is_mask_file(q) for q in p.iterdir())}
    if not folders:
        raise EvalPathError(
            f"{flag} {path}: holds no PNG masks, neither directly (one sequence) nor in sub-folders (one folder per "
            "sequence, as DAVIS results)."
        )
    return False, folders


def _pair_sequences(pred: Path, gt: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """[(sequence, predictions, ground truth)] to score, and warnings about what is left out."""
    pred_single, pred_seqs = _sequence_folders(pred, "--pred")
    gt_single, gt_seqs = _sequence_folders(gt, "--gt")
    if pred_single and gt_single:
        (gt_name, gt_path), (pred_path,) = next(iter(gt_seqs.items())), pred_seqs.values()
        return [(gt_name, pred_path, gt_path)], []
    if gt_single:
        gt_name, gt_path = next(iter(gt_seqs.items()))
        if gt_name not in pred_seqs:
            raise EvalError(
                f"--gt {gt} is one sequence ({gt_name!r}) but --pred {pred} holds sequence folders without one of "
                f"that name ({_listed(list(pred_seqs), 3)}); point --pred at the matching sequence folder."
            )
        return [(gt_name, pred_seqs[gt_name], gt_path)], []
    if pred_single:
        pred_name, pred_path = next(iter(pred_seqs.items()))
        if pred_name not in gt_seqs:
            raise EvalError(
                f"--pred {pred} is one sequence ({pred_name!r}) but --gt {gt} holds sequence folders without one of "
                f"that name ({_listed(list(gt_seqs), 3)}); point --gt at the matching sequence folder."
            )
        return [(pred_name, pred_path, gt_seqs[pred_name])], []
    common = [n for n in gt_seqs if n in pred_seqs]
    if not common:
        raise EvalError(
            f"no sequence folder of --pred {pred} ({_listed(list(pred_seqs), 3)}) has a ground-truth folder of the "
            f"same name in --gt {gt} ({_listed(list(gt_seqs), 3)})."
        )
    notes = []
    unscored = [n for n in gt_seqs if n not in pred_seqs]
    if unscored:
        notes.append(
            f"{len(unscored)} ground-truth sequences have no predictions and are not scored: {_listed(unscored)} "
            "(the global row covers the scored sequences only)."
        )
    no_gt = [n for n in pred_seqs if n not in gt_seqs]
    if no_gt:
        notes.append(f"{len(no_gt)} predicted sequences have no ground truth and are not scored: {_listed(no_gt)}.")
    return [(n, pred_seqs[n], gt_seqs[n]) for n in common], notes


def evaluate_folders(pred: str | Path, gt: str | Path, *, task: str = "semi") -> tuple[list[SequenceResult], list[str]]:
    """Score a folder of predicted palette PNGs (one sequence, or a root of sequence folders) against ground truth.

    Returns the per-sequence results and the warnings about sequences left out. Sequences are read one at a time.
    """
    pairs, notes = _pair_sequences(Path(pred), Path(gt))
    for note in notes:
        log.warning("%s", note)
    results = []
    for name, pred_path, gt_path in pairs:
        gt_masks = read_mask_dir(gt_path)
        pred_masks = read_mask_dir(pred_path)
        results.append(evaluate_sequence(pred_masks, gt_masks, task=task, name=name))
    return results, notes


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def format_table(results: Sequence[SequenceResult]) -> str:
    """A plain-text table: one row per sequence (means over its objects), then the global row (means over objects)."""
    task = results[0].task if results else "semi"
    header = ("Sequence", "Objects", "Frames", *GLOBAL_COLUMNS)
    rows = []
    for r in results:
        row = r.row()
        rows.append((r.name, str(len(r.objects)), str(len(r.frames)), *(_number(row[c]) for c in GLOBAL_COLUMNS)))
    total = summarize(results)
    objects = sum(len(r.objects) for r in results)
    frames = sum(len(r.frames) for r in results)
    rows.append(("Global", str(objects), str(frames), *(_number(total[c]) for c in GLOBAL_COLUMNS)))
    lines = format_table_text(header, rows, right=range(1, len(header))).splitlines()
    lines.insert(-1, "-" * len(lines[0]))
    return "\n".join([f"DAVIS-2017 {TASK_TITLES[task]} evaluation (scores 0-1; papers print them x100)", *lines])


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def results_json(results: Sequence[SequenceResult], notes: Sequence[str] = ()) -> dict:
    """The JSON document of ``--json``: the global DAVIS columns at the top level, then per-sequence and per-object
    tables (the per-object rows are named "<sequence>_<id>" as in the official per-sequence CSV)."""
    document: dict = {"task": results[0].task if results else None}
    document.update({c: _finite(v) for c, v in summarize(results).items()})
    document["sequences"] = len(results)
    document["objects"] = sum(len(r.objects) for r in results)
    document["per_sequence"] = [
        {
            "Sequence": r.name,
            "Objects": len(r.objects),
            "Frames": len(r.frames),
            **{c: _finite(v) for c, v in r.row().items()},
        }
        for r in results
    ]
    document["per_object"] = [
        {
            "Sequence": f"{r.name}_{o.object_id}",
            "Object": o.object_id,
            "Prediction": o.prediction_id,
            **{c: _finite(v) for c, v in o.row().items()},
        }
        for r in results
        for o in r.objects
    ]
    document["warnings"] = [*notes, *(f"{r.name}: {w}" for r in results for w in r.warnings)]
    return document


def _write_json(document: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=2)
            stream.write("\n")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def command_eval(args) -> int:
    """``python -m vos eval``: print the per-sequence and global table; write the JSON file when asked."""
    results, notes = evaluate_folders(args.pred, args.gt, task=args.task)
    if not any(r.objects for r in results):
        raise EvalError(f"--gt {args.gt}: no sequence has an object in its first ground-truth frame; nothing to score.")
    print(format_table(results))
    if args.json:
        path = Path(args.json)
        _write_json(results_json(results, notes), path)
        print(f"wrote {path}")
    return 0
