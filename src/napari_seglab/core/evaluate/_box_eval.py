"""Box scores of stacks: per plane, and pooled over every plane (what ``seglab evaluate --pred-boxes`` prints).

Pooling follows COCO, where an image set is scored as one: every predicted box
of every plane goes into one score-ordered list, a box matches only true boxes
of its own plane, and the precision/recall curve (so AP) runs over the whole
list. Averaging per-plane APs instead would weigh a plane with two objects as
much as one with two hundred.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputError

# the matching rules must be exactly those of box_scores, so its helpers are shared rather than copied
from ._metrics import COCO_THRESHOLDS, box_scores, box_summary, plane_matches

#: a box row's plane has at most this many indices (T and Z)
MAX_PLANE_INDICES = 2


def plane_key(row: dict) -> tuple[int, ...]:
    """The plane of a box row as a tuple: () for a 2D image, (3,) or (1, 2) for stacks ("3", "1,2", 3).

    Each index is a whole number >= 0 ("1.0", as pandas writes whole numbers,
    is 1); anything else ("abc", "1.5", "-1", "nan") raises InputError.
    """
    plane = row.get("plane", "")
    if plane is None or (isinstance(plane, str) and not plane.strip()):
        return ()
    parts = list(plane) if isinstance(plane, (tuple, list)) else str(plane).split(",")
    if len(parts) > MAX_PLANE_INDICES:
        raise InputError(f"plane {str(plane)[:40]!r} has {len(parts)} indices; a plane is one index (3) or two "
                         "(T,Z: 1,2)")
    out = []
    for part in parts:
        try:
            number = float(part)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(part, bool) or not math.isfinite(number) or number != int(number) or number < 0:
            raise InputError(f"plane {str(plane)[:40]!r} is not a plane index like 3 or 1,2 (whole numbers "
                             "from 0)")
        out.append(int(number))
    return tuple(out)


def _by_plane(rows: Sequence[dict], name: str) -> dict[tuple[int, ...], list[dict]]:
    groups: dict[tuple[int, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(plane_key(row), []).append(row)
    if len({len(k) for k in groups}) > 1:
        raise InputError(f"{name}: boxes mix planes of a 2D image and of a stack ({_tags(groups)})")
    return groups


def _tags(groups) -> str:
    tags = sorted({",".join(map(str, k)) or "none" for k in groups})
    return ", ".join(tags[:3]) + (", ..." if len(tags) > 3 else "")


def _split(pred: Sequence[dict], truth: Sequence[dict]):
    by_pred, by_truth = _by_plane(pred, "prediction"), _by_plane(truth, "truth")
    depth_p, depth_t = {len(k) for k in by_pred}, {len(k) for k in by_truth}
    if depth_p and depth_t and depth_p != depth_t:
        raise InputError(f"the prediction's boxes are on planes {_tags(by_pred)} but the truth's on planes "
                         f"{_tags(by_truth)}: both must come from the same image (2D, or the same stack axes)")
    planes = sorted(set(by_pred) | set(by_truth))
    return planes, by_pred, by_truth


def pooled_box_scores(pred: Sequence[dict], truth: Sequence[dict], score_threshold: float = 0.5) -> dict:
    """:func:`~napari_seglab.core.evaluate._metrics.box_scores` over all planes together, matching boxes only within their plane.

    ``pred``, ``truth``: box rows (y0, x0, y1, x1, ``score`` for predictions,
    ``plane`` "" / "3" / "1,2"). Returns the keys of ``box_scores`` plus
    ``n_planes`` (planes holding a predicted or a true box). For a 2D image
    (every plane "") it equals ``box_scores(pred, truth, score_threshold)``.
    """
    planes, by_pred, by_truth = _split(pred, truth)
    parts = [plane_matches(by_pred.get(plane, []), by_truth.get(plane, []), score_threshold) for plane in planes]
    scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    hits = {t: np.concatenate([p[1][t] for p in parts]) if parts else np.zeros(0, bool) for t in COCO_THRESHOLDS}
    tp, n_pred, n_true = (sum(p[i] for p in parts) for i in (2, 3, 4))
    # one ranking over every plane, as COCO ranks an image set
    return {**box_summary(scores, hits, tp, n_pred, n_true, score_threshold), "n_planes": len(planes)}


def box_scores_by_plane(pred: Sequence[dict], truth: Sequence[dict], score_threshold: float = 0.5) -> dict:
    """Box scores of every plane and of all planes pooled.

    Returns ``{"overall": pooled_box_scores(...), "planes": {tag: box_scores(...)}}``
    where ``tag`` is the plane as written in a boxes CSV ("3", "1,2"); a 2D
    image has no per-plane entries. Only planes holding a predicted or a true
    box are listed.
    """
    planes, by_pred, by_truth = _split(pred, truth)
    per_plane = {}
    if planes != [()]:
        for plane in planes:
            tag = ",".join(map(str, plane))
            per_plane[tag] = box_scores(by_pred.get(plane, []), by_truth.get(plane, []), score_threshold)
    return {"overall": pooled_box_scores(pred, truth, score_threshold), "planes": per_plane}
