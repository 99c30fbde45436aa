"""Model-assisted annotation: predicted objects offered as painted objects, and which of them to doubt.

After training on a few painted objects, the model predicts every object of
the image. Most of them lie where nothing is painted. This module answers
three questions about them, on one (Y, X) plane:

- :func:`object_at`: which predicted object is under a point, restricted to
  unpainted pixels (a click adds it to the labels as a new id);
- :func:`assess_objects`: of the objects predicted where nothing is painted,
  which look right ("confident") and which look doubtful, and why (the model
  is unsure over the object, its size is far from the painted objects', its
  flows disagree with its shape, it touches a painted object or lies on
  background strokes); the :class:`AssistReport` also holds "paint next"
  boxes centred on the doubtful ones;
- :func:`new_objects`: the pixels and new ids that turn chosen predicted
  objects into painted ones, never overwriting a painted pixel.

Painted labels follow the label modes of :mod:`napari_seglab.core.labels`:
0 = not painted, values below ``first_id`` are background strokes (1 in the
``objects`` mode; none in ``instances``, where ``first_id`` is 1), and every
value from ``first_id`` on is one painted object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ._flows import FLOW_SCALE, _flow_errors
from ._instances import solidity, typical_solidity

#: a predicted object is doubtful when the mean normalised entropy of its pixels exceeds this.
#: benchmarks/assist_thresholds.py (objects mode defaults, boundary head, 300 steps, 25 % of the nuclei painted,
#: random or large isolated ones; DSB2018 and the sample, 416 objects predicted where nothing is painted):
#: 89 % of them match a true nucleus at IoU 0.5; with 0.35 and SIZE_RANGE the confident 69 % match at 99 %
#: (87 % at IoU 0.75, worst run 96.9 %), the doubtful at 67 %. 0.25 keeps 99.6 % but accepts a fifth fewer;
#: 0.5 accepts 7 % more at 98 %
MAX_UNCERTAINTY = 0.35
#: ... or when its area is outside these multiples of the median painted object's area (same runs, pooled:
#: 0.3-3.0 accepts 22 more objects but lets precision fall to 97.7 %; 0.5-2.0 rejects 25 more, gaining nothing)
SIZE_RANGE = (0.4, 2.5)
#: ... or when its own flows differ from the predicted ones by more than this (mean squared, unit vectors;
#: decoding already drops objects above 0.8, HEAD_DECODING in core.predict). Flows head, DSB2018, same
#: benchmark: the confident objects match at 98.1 % with 0.4, 95.0 % with 0.6, 93.5 % without the check;
#: 0.2 leaves almost none confident
MAX_FLOW_ERROR = 0.4
#: ... or when its solidity (area / convex hull area) is below this: two touching nuclei decoded as one are
#: not convex. DSB2018's true nuclei: 5th percentile 0.92, median 0.96; its 24 touching pairs taken as one
#: object: median 0.87, 90th percentile 0.91. 0 turns the check off
MIN_SOLIDITY = 0.9
#: ... or when more than this share of its pixels lies on background strokes
MAX_ON_BACKGROUND = 0.05
#: a predicted object overlapping a painted object by more than this share of its pixels is that object
#: (already painted), not an object in an unpainted region
COVERED = 0.5
#: the reasons to doubt an object, in the order the report names them
REASONS = ("unsure", "small", "large", "not convex", "flows", "touches painted", "on background")


def _check_planes(predicted: np.ndarray, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, lab = np.asarray(predicted), np.asarray(painted)
    if pred.ndim != 2 or pred.shape != lab.shape:
        raise InputError(f"predicted objects {pred.shape} and painted labels {lab.shape} must be one and the "
                         "same (Y, X) plane")
    for arr, name in ((pred, "predicted objects"), (lab, "painted labels")):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise InputError(f"{name} must be integers, got dtype {arr.dtype}")
    return pred, lab


def object_at(predicted: np.ndarray, painted: np.ndarray, point: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The unpainted pixels of the predicted object under ``point``: (ys, xs) int64 index arrays.

    ``predicted``: (Y, X) object ids (0 = background); ``painted``: (Y, X)
    painted labels (0 = not painted); ``point``: (y, x) pixel. Pixels of the
    object that are painted are left out, and of what remains only the piece
    connected to ``point`` is returned (a sliver cut off by a painted object
    is not a new object). Raises :class:`InputError` saying why there is
    nothing to add: the point is outside the plane, already painted, or on
    predicted background.
    """
    pred, lab = _check_planes(predicted, painted)
    y, x = (int(round(float(v))) for v in point)
    if not (0 <= y < pred.shape[0] and 0 <= x < pred.shape[1]):
        raise InputError(f"the click ({y}, {x}) is outside the image ({pred.shape[0]} x {pred.shape[1]})")
    if lab[y, x] != 0:
        raise InputError(f"that pixel is already painted (value {int(lab[y, x])}); assist adds objects only "
                         "where nothing is painted")
    oid = int(pred[y, x])
    if oid == 0:
        raise InputError("the model predicts background there: no object to add")
    sl = ndi.find_objects((pred == oid).astype(np.int8))[0]
    mask = (pred[sl] == oid) & (lab[sl] == 0)
    pieces, _ = ndi.label(mask)
    mask = pieces == pieces[y - sl[0].start, x - sl[1].start]
    ys, xs = np.nonzero(mask)
    return ys.astype(np.int64) + sl[0].start, xs.astype(np.int64) + sl[1].start


def flow_agreement(predicted: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per-object flow error of decoded objects against the flow head's raw outputs.

    ``predicted``: (Y, X) object ids 1..N; ``outputs``: the flows head's raw
    (3, Y, X) outputs [foreground logit, dy, dx] x FLOW_SCALE of the same
    plane. Returns (N,) float64: entry ``i`` is object ``i + 1``'s mean squared
    difference between the unit flows its own shape implies and the predicted
    ones (0 = agree; decoding drops objects above 0.8). NaN for missing ids.
    """
    pred = np.asarray(predicted)
    out = np.asarray(outputs, np.float32)
    if out.ndim != 3 or out.shape[0] != 3 or out.shape[1:] != pred.shape:
        raise InputError(f"flow outputs {out.shape} must be (3, Y, X) over objects of shape {pred.shape}")
    flow = out[1:] / FLOW_SCALE * (out[0] > 0)
    return _flow_errors(pred.astype(np.int64), flow)


@dataclass
class AssistReport:
    """How the model did where nothing was painted (one plane); see :func:`assess_objects`.

    ``objects``: one row per predicted object: ``id``, ``area``, ``y``,
    ``x`` (centroid), ``y0``, ``x0``, ``y1``, ``x1`` (bounding box, end
    exclusive), ``painted`` (share of its pixels painted), ``uncertainty``
    (mean, or None), ``flow_error`` (or None), ``unpainted`` (it lies in an
    unpainted region), ``reasons`` (why it is doubtful; empty = confident).
    ``paint_next``: rows ``y0, x0, y1, x1, score, plane`` centred on the
    doubtful objects, most doubtful first (the "paint next" layer's rows).
    ``reference_area``: the area sizes are compared with (median painted object).
    """

    objects: list[dict] = field(default_factory=list)
    paint_next: list[dict] = field(default_factory=list)
    reference_area: float | None = None

    @property
    def predicted(self) -> int:
        return len(self.objects)

    @property
    def unpainted(self) -> list[dict]:
        return [row for row in self.objects if row["unpainted"]]

    @property
    def confident_ids(self) -> list[int]:
        return [row["id"] for row in self.unpainted if not row["reasons"]]

    @property
    def doubtful(self) -> list[dict]:
        return [row for row in self.unpainted if row["reasons"]]

    def reason_counts(self) -> dict[str, int]:
        """How many unpainted objects each reason makes doubtful (an object may have several)."""
        counts = dict.fromkeys(REASONS, 0)
        for row in self.doubtful:
            for reason in row["reasons"]:
                counts[reason] += 1
        return {reason: n for reason, n in counts.items() if n}

    def text(self) -> str:
        """One sentence for a status line."""
        n = len(self.unpainted)
        if not self.objects:
            return "the model predicts no object on this plane"
        if n == 0:
            return f"{self.predicted} objects predicted, all on painted objects: none where nothing is painted"
        why = ", ".join(f"{k} {reason}" for reason, k in self.reason_counts().items())
        doubt = len(self.doubtful)
        return (f"{n} object{'s' if n != 1 else ''} predicted where nothing is painted: "
                f"{n - doubt} confident, {doubt} doubtful" + (f" ({why})" if why else ""))


def _reference_area(painted: np.ndarray, first_id: int, areas: np.ndarray) -> float | None:
    """The median area of the painted objects (each painted id a whole object), else of the predicted ones."""
    ids = painted[painted >= first_id]
    if ids.size:
        counts = np.bincount(np.unique(ids, return_inverse=True)[1].ravel())
        return float(np.median(counts))
    return float(np.median(areas)) if areas.size else None


def assess_objects(predicted: np.ndarray, painted: np.ndarray, *, first_id: int = 2,
                   uncertainty: np.ndarray | None = None, flow_errors: np.ndarray | None = None,
                   plane: tuple[int, ...] = (), n_next: int = 5, max_uncertainty: float = MAX_UNCERTAINTY,
                   size_range: tuple[float, float] = SIZE_RANGE, max_flow_error: float = MAX_FLOW_ERROR,
                   min_solidity: float | None = None) -> AssistReport:
    """Which predicted objects lie where nothing is painted, which of them look right, and why others do not.

    Parameters
    ----------
    predicted : (Y, X) int
        Object ids of the model's prediction (0 = background).
    painted : (Y, X) int
        The user's labels of the same plane: 0 = not painted, values below
        ``first_id`` background strokes, from ``first_id`` on one whole object each
        (``first_id`` 2 for the ``objects`` mode, 1 for ``instances``).
    uncertainty : (Y, X) float in [0, 1], optional
        Normalised entropy of the prediction (:func:`entropy_map`).
    flow_errors : (N,) float, optional
        Per predicted id (index id - 1), from :func:`flow_agreement`.
    plane : tuple
        The T/Z index of this plane, written into the "paint next" rows.
    n_next : int
        How many "paint next" boxes, at most.

    An object is *in an unpainted region* unless more than :data:`COVERED` of
    its pixels lie on one painted object. Such an object is *doubtful* when
    its mean uncertainty exceeds ``max_uncertainty``, its area is outside
    ``size_range`` x the median painted object's, its solidity (area over
    convex hull area) is below ``min_solidity`` (None: :data:`MIN_SOLIDITY`, or
    the 10th percentile of the painted objects' solidity when lower and at
    least 3 objects are painted; two touching nuclei taken as one are not
    convex), its flow error exceeds
    ``max_flow_error``, it touches a painted object, or more than
    :data:`MAX_ON_BACKGROUND` of it lies on background strokes; otherwise
    *confident*.
    """
    pred, lab = _check_planes(predicted, painted)
    if uncertainty is not None and np.shape(uncertainty) != pred.shape:
        raise InputError(f"uncertainty {np.shape(uncertainty)} does not match the plane {pred.shape}")
    lo, hi = size_range
    if min_solidity is None:  # painted objects less convex than MIN_SOLIDITY lower the bar to theirs
        painted = np.where(lab >= first_id, lab, 0)
        typical = typical_solidity([painted]) if np.unique(painted).size > 3 else None
        min_solidity = MIN_SOLIDITY if typical is None else min(MIN_SOLIDITY, typical)
    slices = ndi.find_objects(pred.astype(np.int64, copy=False))
    ids = [i for i, sl in enumerate(slices, start=1) if sl is not None]
    areas = np.array([int((pred[slices[i - 1]] == i).sum()) for i in ids], float)
    reference = _reference_area(lab, first_id, areas)
    rows = []
    for oid, area in zip(ids, areas, strict=True):
        sl = slices[oid - 1]
        # one pixel round the box: an object touching a painted one is seen touching it
        grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        mask = pred[grown] == oid
        values = lab[grown][mask]
        painted_ids, counts = np.unique(values[values >= first_id], return_counts=True)
        covered = bool(counts.size and counts.max() > COVERED * area)
        near = lab[grown][ndi.binary_dilation(mask) & ~mask]
        ys, xs = np.nonzero(mask)
        row = {"id": oid, "area": int(area), "y": float(ys.mean() + grown[0].start),
               "x": float(xs.mean() + grown[1].start), "y0": sl[0].start, "x0": sl[1].start,
               "y1": sl[0].stop, "x1": sl[1].stop, "painted": float((values != 0).mean()),
               "uncertainty": None, "flow_error": None, "unpainted": not covered, "reasons": []}
        if uncertainty is not None:
            row["uncertainty"] = float(np.asarray(uncertainty)[grown][mask].mean())
        if flow_errors is not None and oid <= len(flow_errors) and np.isfinite(flow_errors[oid - 1]):
            row["flow_error"] = float(flow_errors[oid - 1])
        if not covered:
            reasons = row["reasons"]
            if row["uncertainty"] is not None and row["uncertainty"] > max_uncertainty:
                reasons.append("unsure")
            if reference and area < lo * reference:
                reasons.append("small")
            if reference and area > hi * reference:
                reasons.append("large")
            if min_solidity and solidity(mask) < min_solidity:
                reasons.append("not convex")
            if row["flow_error"] is not None and row["flow_error"] > max_flow_error:
                reasons.append("flows")
            if painted_ids.size or (near >= first_id).any():
                reasons.append("touches painted")
            if ((values > 0) & (values < first_id)).sum() > MAX_ON_BACKGROUND * area:
                reasons.append("on background")
        rows.append(row)
    report = AssistReport(objects=rows, reference_area=reference)
    report.paint_next = _boxes_round(report.doubtful, pred.shape, plane, n_next)
    return report


def _boxes_round(doubtful: list[dict], shape: tuple[int, int], plane: tuple[int, ...], n: int) -> list[dict]:
    """Square "paint next" boxes centred on the most doubtful objects (most reasons, then most unsure)."""
    order = sorted(doubtful, key=lambda r: (-len(r["reasons"]), -(r["uncertainty"] or 0.0)))
    rows = []
    for r in order[:max(0, n)]:
        side = int(np.clip(2 * max(r["y1"] - r["y0"], r["x1"] - r["x0"]), 16, 128))
        side = min(side, *shape)
        y0 = int(np.clip(round(r["y"]) - side // 2, 0, shape[0] - side))
        x0 = int(np.clip(round(r["x"]) - side // 2, 0, shape[1] - side))
        rows.append({"y0": y0, "x0": x0, "y1": y0 + side, "x1": x0 + side,
                     "score": float(r["uncertainty"] or 0.0), "plane": ",".join(str(int(i)) for i in plane),
                     "why": ", ".join(r["reasons"])})
    return rows


def new_objects(predicted: np.ndarray, painted: np.ndarray, ids, start: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels that turn predicted objects ``ids`` into painted objects ``start``, ``start + 1``, ...

    Returns ``(ys, xs, values)`` (int64 arrays of one length) for the
    unpainted pixels of each object, in the order of ``ids``; painted pixels
    are never included. Write them with one ``data_setitem`` so that one undo
    takes them all back.
    """
    pred, lab = _check_planes(predicted, painted)
    slices = ndi.find_objects(pred.astype(np.int64, copy=False))
    parts_y, parts_x, parts_v = [], [], []
    for k, oid in enumerate(ids):
        oid = int(oid)
        if not 0 < oid <= len(slices) or slices[oid - 1] is None:
            raise InputError(f"no predicted object {oid} on this plane")
        sl = slices[oid - 1]
        ys, xs = np.nonzero((pred[sl] == oid) & (lab[sl] == 0))
        parts_y.append(ys + sl[0].start)
        parts_x.append(xs + sl[1].start)
        parts_v.append(np.full(ys.size, start + k, np.int64))
    if not parts_y:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return (np.concatenate(parts_y).astype(np.int64), np.concatenate(parts_x).astype(np.int64),
            np.concatenate(parts_v))
