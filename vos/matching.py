"""Unsupervised segments to prompted objects: an unsupervised method's own segment ids are matched to the objects
prompted on frame 0 (Hungarian on IoU); the rest stay visible as extra ids."""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)


def match_ids_by_iou(reference: np.ndarray, other: np.ndarray) -> dict[int, int]:
    """``other``'s non-zero ids -> the ``reference`` ids they overlap best, one to one (Hungarian on IoU, over
    every pixel of two label arrays of one shape: a frame or a whole clip); pairs with zero overlap are never
    matched, so an id may be left out."""
    ref_ids = [int(i) for i in np.unique(reference) if i != 0]
    oth_ids = [int(i) for i in np.unique(other) if i != 0]
    if not ref_ids or not oth_ids:
        return {}
    iou = np.zeros((len(ref_ids), len(oth_ids)))
    for a, ref in enumerate(ref_ids):
        ref_mask = reference == ref
        for b, oth in enumerate(oth_ids):
            oth_mask = other == oth
            union = np.logical_or(ref_mask, oth_mask).sum()
            iou[a, b] = np.logical_and(ref_mask, oth_mask).sum() / union if union else 0.0
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return {oth_ids[b]: ref_ids[a] for a, b in zip(rows, cols) if iou[a, b] > 0}


class SegmentMatcher:
    """Maps an unsupervised method's segment ids to the prompted object ids.

    Frame 0 decides: Hungarian matching on IoU between segments and prompted objects (pairs with zero overlap are
    never matched). Every other segment, on frame 0 or later, gets the next free extra id so it stays visible.
    Segment id 0 means "no segment" (a method that has a background returns it as 0) and stays 0.
    """

    def __init__(self, prompt: np.ndarray):
        self.prompt = prompt
        self.object_ids = [int(i) for i in np.unique(prompt) if i != 0]
        self.mapping: dict[int, int] = {}
        self.extra_ids: list[int] = []
        self._next_extra = (max(self.object_ids) if self.object_ids else 0) + 1
        self._dropped: set[int] = set()

    def _match_first(self, segments: np.ndarray) -> None:
        self.mapping.update(match_ids_by_iou(self.prompt, segments))

    def __call__(self, segments: np.ndarray, index: int) -> np.ndarray:
        segments = np.asarray(segments)
        if index == 0 and not self.mapping:
            self._match_first(segments)
        out = np.zeros(segments.shape, np.uint8)
        for seg in np.unique(segments):
            seg = int(seg)
            if seg == 0:
                continue
            if seg not in self.mapping:
                if self._next_extra > 255:
                    if seg not in self._dropped:
                        log.warning("more than 255 segments: segment %d is not shown", seg)
                        self._dropped.add(seg)
                    continue
                self.mapping[seg] = self._next_extra
                self.extra_ids.append(self._next_extra)
                self._next_extra += 1
            out[segments == seg] = self.mapping[seg]
        return out
