"""Unsupervised segments to prompted objects: an unsupervised method's own segment ids are matched to the objects
prompted on frame 0 (Hungarian on IoU); the rest stay visible as extra ids."""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)


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
        seg_ids = [int(i) for i in np.unique(segments) if i != 0]
        if not self.object_ids or not seg_ids:
            return
        iou = np.zeros((len(self.object_ids), len(seg_ids)))
        for a, obj in enumerate(self.object_ids):
            obj_mask = self.prompt == obj
            for b, seg in enumerate(seg_ids):
                seg_mask = segments == seg
                union = np.logical_or(obj_mask, seg_mask).sum()
                iou[a, b] = np.logical_and(obj_mask, seg_mask).sum() / union if union else 0.0
        rows, cols = linear_sum_assignment(iou, maximize=True)
        for a, b in zip(rows, cols):
            if iou[a, b] > 0:
                self.mapping[seg_ids[b]] = self.object_ids[a]

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
