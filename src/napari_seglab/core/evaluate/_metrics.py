"""Segmentation quality: Dice, IoU and instance matching.

Dice has one policy (:func:`class_dice`, :func:`mean_dice`), used by the reported scores here
and by training's validation: a class absent from both prediction and truth has no score and is
left out of a mean; a mean with no class scored is 1.0.

Instance scores follow the DSB2018 / StarDist convention: at an IoU threshold
``t``, a predicted object and a true object match when their IoU is at least
``t`` (one-to-one, the assignment that matches the most pairs), and
``ap = TP / (TP + FP + FN)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from ..errors import InputError, check_label_image


def _same_shape(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}.")
    return pred, truth


def _overlap_counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int]:
    """Intersection, |p| and |t| of two boolean masks."""
    inter = int(np.count_nonzero(p & t))
    return inter, int(np.count_nonzero(p)), int(np.count_nonzero(t))


def class_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of one class given as two boolean masks: ``2 |P & T| / (|P| + |T|)``.

    The one Dice policy of validation and evaluation alike: a class in
    neither mask has no Dice (NaN: nothing to score, neither right nor
    wrong), a class in one mask only scores 0. Summaries over classes go
    through :func:`mean_dice`.
    """
    inter, n_pred, n_true = _overlap_counts(pred, truth)
    return float("nan") if n_pred + n_true == 0 else 2.0 * inter / (n_pred + n_true)


def mean_dice(scores: Sequence[float]) -> float:
    """The mean of per-class Dice scores (:func:`class_dice`), the classes without a score left out.

    1.0 when no class has one: nothing was there to find and nothing was found.
    """
    defined = [float(d) for d in scores if not np.isnan(d)]
    return float(np.mean(defined)) if defined else 1.0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the foregrounds (pixels > 0) of two arrays of one shape, any numeric dtype.

    ``2 |P & T| / (|P| + |T|)``; 1.0 when both are empty and 0.0 when one is
    (:func:`mean_dice` of the foreground's :func:`class_dice`).
    """
    pred, truth = _same_shape(pred, truth)
    return mean_dice([class_dice(pred > 0, truth > 0)])


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard) of the foregrounds (pixels > 0) of two arrays of one shape.

    ``|P & T| / |P | T|``; 1.0 when both are empty.
    """
    pred, truth = _same_shape(pred, truth)
    inter, np_, nt = _overlap_counts(pred > 0, truth > 0)
    union = np_ + nt - inter
    return 1.0 if union == 0 else inter / union


def per_class_dice(
    pred: np.ndarray,
    truth: np.ndarray,
    n_classes: int,
    ignore: int | np.ndarray | None = None,
) -> list[float]:
    """Dice of each class ``0 .. n_classes - 1`` of a class map.

    Parameters
    ----------
    pred, truth : int arrays of the same shape
        Class ids per pixel.
    n_classes : int
        Number of classes scored (class 0 included).
    ignore : None, int or bool array
        Pixels left out of every score: an int is a value of ``truth`` to skip
        (for example an "unlabelled" id); a bool array of the same shape marks
        skipped pixels with True.

    Returns
    -------
    list of float, length ``n_classes``
        :func:`class_dice` of each class: NaN for a class absent from both,
        so that :func:`mean_dice` leaves it out of the mean.
    """
    pred, truth = _same_shape(pred, truth)
    if n_classes < 1:
        raise InputError(f"n_classes must be at least 1, got {n_classes}.")
    if ignore is None:
        keep = None
    elif isinstance(ignore, (int, np.integer)):
        keep = truth != ignore
    else:
        ignore_mask = np.asarray(ignore)
        if ignore_mask.shape != truth.shape:
            raise InputError(
                f"ignore mask shape {ignore_mask.shape} does not match truth shape {truth.shape}."
            )
        keep = ~ignore_mask.astype(bool)
    if keep is not None:
        pred, truth = pred[keep], truth[keep]
    return [class_dice(pred == c, truth == c) for c in range(int(n_classes))]


def _iou_pairs(pred: np.ndarray, truth: np.ndarray):
    """IoU of every overlapping (pred, truth) object pair, from a sparse contingency table.

    Returns (n_pred, n_true, rows, cols, ious) with rows / cols indexing the
    objects 0..n-1 in ascending label order.
    """
    p_ids, p_idx = np.unique(pred.ravel(), return_inverse=True)
    t_ids, t_idx = np.unique(truth.ravel(), return_inverse=True)
    # Shift so that index 0 always means background, whether or not 0 occurs.
    p_shift = 0 if p_ids[0] == 0 else 1
    t_shift = 0 if t_ids[0] == 0 else 1
    p_idx = p_idx.ravel() + p_shift
    t_idx = t_idx.ravel() + t_shift
    n_pred = len(p_ids) + p_shift - 1
    n_true = len(t_ids) + t_shift - 1
    table = sparse.coo_matrix(
        (np.ones(p_idx.size, np.int64), (p_idx, t_idx)), shape=(n_pred + 1, n_true + 1)
    ).tocsr()
    p_area = np.asarray(table.sum(axis=1)).ravel()
    t_area = np.asarray(table.sum(axis=0)).ravel()
    coo = table.tocoo()
    both = (coo.row > 0) & (coo.col > 0)
    rows, cols, inter = coo.row[both], coo.col[both], coo.data[both].astype(np.float64)
    ious = inter / (p_area[rows] + t_area[cols] - inter)
    return n_pred, n_true, rows - 1, cols - 1, ious


def _match_count(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray) -> tuple[int, float]:
    """Largest one-to-one matching among candidate pairs; returns (count, sum of IoU)."""
    if rows.size == 0:
        return 0, 0.0
    row_n = np.bincount(rows)
    col_n = np.bincount(cols)
    lone = (row_n[rows] == 1) & (col_n[cols] == 1)
    count = int(lone.sum())
    total = float(ious[lone].sum())
    rest = ~lone
    if rest.any():
        # Pairs that share an object: solve that small part exactly. The cost
        # rewards each match by 1 and breaks ties by IoU (sum < 1 over all pairs).
        r_ids, r = np.unique(rows[rest], return_inverse=True)
        c_ids, c = np.unique(cols[rest], return_inverse=True)
        weight = np.zeros((len(r_ids), len(c_ids)))
        eps = 1.0 / (2.0 * (min(len(r_ids), len(c_ids)) + 1))
        weight[r, c] = 1.0 + eps * ious[rest]
        ri, ci = linear_sum_assignment(weight, maximize=True)
        chosen = weight[ri, ci] > 0
        count += int(chosen.sum())
        total += float(((weight[ri, ci][chosen] - 1.0) / eps).sum())
    return count, total


def _key(t: float) -> str:
    return f"{t * 100:g}".replace(".", "p")


def _ratio(num: float, den: float, empty: float) -> float:
    return empty if den == 0 else num / den


def match_instances(
    pred: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] = (0.5, 0.75, 0.9),
) -> dict:
    """Match predicted objects to true objects and score them at IoU thresholds.

    Parameters
    ----------
    pred, truth : int arrays of the same shape ((Y, X) or nD, any int dtype)
        Instance label images, 0 = background; ids need not be consecutive.
    thresholds : sequence of float in (0, 1]
        IoU thresholds.

    Returns
    -------
    dict (JSON-friendly, plain Python numbers)
        ``n_pred``, ``n_true``, ``dice``, ``iou`` (foreground), ``thresholds``,
        ``mean_matched_iou`` (at the first threshold), and per threshold ``t``
        with suffix ``S = 100 t`` (``50``, ``75``; ``0.55`` -> ``55``,
        ``0.505`` -> ``50p5``): ``apS``, ``tp_S``, ``fp_S``, ``fn_S``,
        ``precision_S``, ``recall_S``, ``f1_S``, ``mean_matched_iou_S``.
        With no predictions precision is 0 (1 when there are no true objects
        either); the same rule holds for recall, f1 and ap.
    """
    pred, truth = _same_shape(pred, truth)
    pred = check_label_image(pred, "prediction")
    truth = check_label_image(truth, "truth")
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
        raise InputError(f"thresholds must lie in (0, 1], got {thresholds}.")

    n_pred, n_true, rows, cols, ious = _iou_pairs(pred, truth)
    both_empty = 1.0 if n_pred == 0 and n_true == 0 else 0.0
    result: dict = {
        "n_pred": int(n_pred),
        "n_true": int(n_true),
        "dice": dice(pred, truth),
        "iou": iou(pred, truth),
        "thresholds": thresholds,
    }
    for i, t in enumerate(thresholds):
        ok = ious >= t
        tp, iou_sum = _match_count(rows[ok], cols[ok], ious[ok])
        fp, fn = n_pred - tp, n_true - tp
        s = _key(t)
        mean_iou = _ratio(iou_sum, tp, 0.0)
        result[f"ap{s}"] = _ratio(tp, tp + fp + fn, both_empty)
        result[f"tp_{s}"] = tp
        result[f"fp_{s}"] = fp
        result[f"fn_{s}"] = fn
        result[f"precision_{s}"] = _ratio(tp, tp + fp, both_empty)
        result[f"recall_{s}"] = _ratio(tp, tp + fn, both_empty)
        result[f"f1_{s}"] = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
        result[f"mean_matched_iou_{s}"] = mean_iou
        if i == 0:
            result["mean_matched_iou"] = mean_iou
    return result


# ----------------------------------------------------------------------------- boxes

#: the IoU thresholds of COCO's AP@[.5:.95]
COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes ``a`` (N, >=4) and ``b`` (M, >=4), columns y0, x0, y1, x1 (pixel edges)."""
    a, b = _corners(a), _corners(b)
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _corners(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return boxes.reshape(-1, boxes.shape[-1] if boxes.ndim == 2 else 4)[:, :4]


#: IoU values computed at a time while matching boxes (a few tens of MB of float64 temporaries): the memory of
#: box scoring stays bounded by this, whatever the number of boxes
MATCH_CHUNK = 1 << 18


def _candidate_ranges(pred: np.ndarray, truth_x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each prediction, the range [lo, hi) of the truth boxes (sorted by x0) that may reach IoU 0.5 with it.

    IoU >= 0.5 needs an x overlap of at least half of each box's width, so
    the truth's width is at most twice the prediction's ``w`` and its x0 lies
    in [x0 - w, x1 - w / 2] (widened a little for rounding): the candidates
    are a slice of the truth sorted by x0, and only they are ever compared.
    """
    width = pred[:, 3] - pred[:, 1]
    slack = 0.01 * width + 1e-6 * (1.0 + np.abs(pred[:, 1]) + np.abs(pred[:, 3]))
    lo = np.searchsorted(truth_x0, pred[:, 1] - width - slack, side="left")
    hi = np.searchsorted(truth_x0, pred[:, 3] - width / 2 + slack, side="right")
    return lo, np.maximum(lo, hi)


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of the pairs (a[k], b[k]) of two (K, 4) corner arrays (the arithmetic of :func:`box_iou`)."""
    top = np.maximum(a[:, :2], b[:, :2])
    bottom = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=-1)
    union = np.prod(a[:, 2:] - a[:, :2], axis=-1) + np.prod(b[:, 2:] - b[:, :2], axis=-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _chunks(lo: np.ndarray, hi: np.ndarray, budget: int):
    """(first, last) prediction index ranges whose candidate pairs add up to at most ``budget`` (one prediction
    at least; a prediction with more candidates than that is split by :func:`_pairs_of`)."""
    counts = np.cumsum(hi - lo)
    start = 0
    while start < len(lo):
        base = counts[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(counts, base + budget, side="right")))
        yield start, min(stop, len(lo))
        start = stop


def _pairs_of(pred: np.ndarray, truth: np.ndarray, order: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              budget: int):
    """(prediction index, truth index, IoU) of every candidate pair with IoU >= 0.5, a chunk of predictions at
    a time (in order, each prediction's pairs whole), computing at most ``budget`` IoUs at once."""
    for first, last in _chunks(lo, hi, budget):
        kept = []
        if last - first == 1 and hi[first] - lo[first] > budget:  # one prediction, many candidates: in slices
            groups = [[(first, a, min(a + budget, int(hi[first])))] for a in range(int(lo[first]), int(hi[first]),
                                                                                     budget)]
        else:
            groups = [[(i, int(lo[i]), int(hi[i])) for i in range(first, last) if hi[i] > lo[i]]]
        for spans in groups:
            if not spans:
                continue
            p_idx = np.concatenate([np.full(b - a, i, np.int64) for i, a, b in spans])
            t_idx = order[np.concatenate([np.arange(a, b) for _, a, b in spans])]
            ious = _pair_iou(pred[p_idx], truth[t_idx])
            keep = ious >= COCO_THRESHOLDS[0]
            kept.append((p_idx[keep], t_idx[keep], ious[keep]))
        if kept:
            yield tuple(np.concatenate(parts) for parts in zip(*kept, strict=True))


def _greedy_hits(pred: np.ndarray, truth: np.ndarray, thresholds=None, budget: int = MATCH_CHUNK
                 ) -> dict[float, np.ndarray]:
    """For predictions (N, 4) in score order, whether each matches a still unmatched true box (M, 4), per IoU
    threshold (>= 0.5): the best-IoU free one, the lowest index among equals, as COCO and PASCAL VOC match.

    Only the candidate pairs of :func:`_candidate_ranges` are compared, a chunk at a time, so memory
    stays bounded by ``budget`` pairs (never an N x M matrix).
    """
    thresholds = tuple(COCO_THRESHOLDS if thresholds is None else thresholds)
    hits = {t: np.zeros(len(pred), bool) for t in thresholds}
    if not len(pred) or not len(truth):
        return hits
    order = np.argsort(truth[:, 1], kind="stable")
    lo, hi = _candidate_ranges(pred, truth[order, 1])
    taken = {t: np.zeros(len(truth), bool) for t in thresholds}
    for p_idx, t_idx, ious in _pairs_of(pred, truth, order, lo, hi, budget):
        starts = [0, *(np.flatnonzero(np.diff(p_idx)) + 1).tolist(), len(p_idx)]
        p_list, t_list, v_list = p_idx.tolist(), t_idx.tolist(), ious.tolist()
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            if a == b:
                continue
            i = p_list[a]
            if b - a > 16:  # many candidates (duplicate boxes): whole arrays
                cand, vals = t_idx[a:b], ious[a:b]
                for t in thresholds:
                    ok = (vals >= t) & ~taken[t][cand]
                    if ok.any():
                        best = vals[ok].max()
                        j = int(cand[ok][vals[ok] == best].min())
                        taken[t][j] = hits[t][i] = True
                continue
            for t in thresholds:
                free = taken[t]
                # the best IoU among free candidates, the lowest truth index among equals
                best_j, best_v = -1, -1.0
                for j, v in zip(t_list[a:b], v_list[a:b], strict=True):
                    if v >= t and not free[j] and (v > best_v or (v == best_v and j < best_j)):
                        best_j, best_v = j, v
                if best_j >= 0:
                    free[best_j] = hits[t][i] = True
    return hits


def _average_precision(hit: np.ndarray, n_true: int) -> float:
    """Area under the precision/recall curve of score-ordered hits (precision made monotone, all points)."""
    if n_true == 0:
        return 1.0 if hit.size == 0 else 0.0
    if hit.size == 0:
        return 0.0
    tp = np.cumsum(hit)
    precision = tp / np.arange(1, hit.size + 1)
    recall = tp / n_true
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


def box_scores(pred: Sequence[dict] | np.ndarray, truth: Sequence[dict] | np.ndarray,
               score_threshold: float = 0.5) -> dict:
    """Box detection scores of ``pred`` against ``truth`` (one image or plane).

    ``pred``: rows with y0, x0, y1, x1 and ``score`` (1.0 when absent) or an
    (N, >=4) array, then all scored 1; ``truth``: rows or an (M, >=4) array.
    Classes are not compared (one object class). Returns ``ap50``, ``ap75``
    (area under the precision/recall curve over every score, PASCAL/COCO
    style, at IoU 0.5 and 0.75), ``ap`` (COCO's mean over IoU 0.5:0.95) and,
    for the predictions scoring at least ``score_threshold`` at IoU 0.5,
    ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``; ``n_pred``
    (above the threshold), ``n_true`` and ``count_error`` (n_pred - n_true).
    """
    return box_summary(*plane_matches(pred, truth, score_threshold), score_threshold)


def plane_matches(pred, truth, score_threshold: float
                  ) -> tuple[np.ndarray, dict[float, np.ndarray], int, int, int]:
    """The box matches of one plane: (scores, hits, tp, n_pred, n_true), the input of :func:`box_summary`.

    ``scores``: every prediction's score, best first; ``hits``: per COCO IoU
    threshold, whether each of them matched a true box; ``tp`` and ``n_pred``:
    at IoU 0.5 among the predictions scoring at least ``score_threshold``.
    """
    boxes_p, scores = _box_table(pred, "prediction")
    boxes_t, _ = _box_table(truth, "truth")
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    hits = _greedy_hits(boxes_p[order], boxes_t)
    # greedy matching goes down the ranking, so the predictions kept by the threshold (a prefix of it)
    # match exactly as they do in the whole ranking
    kept = int(np.count_nonzero(scores >= score_threshold))
    return scores, hits, int(hits[0.5][:kept].sum()), kept, len(boxes_t)


def box_summary(scores: np.ndarray, hits: dict[float, np.ndarray], tp: int, n_pred: int, n_true: int,
                score_threshold: float) -> dict:
    """The scores :func:`box_scores` returns, from the matches of one plane or of many put together.

    The predictions are ranked by score here, all together, so that the
    matches of several planes pool into one precision/recall curve.
    """
    order = np.argsort(-scores, kind="stable")
    aps = {t: _average_precision(hits[t][order], n_true) for t in COCO_THRESHOLDS}
    both_empty = 1.0 if n_pred == 0 and n_true == 0 else 0.0
    return {"ap50": aps[0.5], "ap75": aps[0.75], "ap": float(np.mean(list(aps.values()))),
            "precision": _ratio(tp, n_pred, both_empty), "recall": _ratio(tp, n_true, both_empty),
            "f1": _ratio(2 * tp, n_pred + n_true, both_empty), "tp": tp, "fp": n_pred - tp, "fn": n_true - tp,
            "n_pred": n_pred, "n_true": n_true, "count_error": n_pred - n_true,
            "score_threshold": float(score_threshold)}


def _box_table(boxes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float corners and (N,) scores of rows or an array; InputError for a malformed box."""
    if isinstance(boxes, np.ndarray):
        arr = boxes.reshape(-1, boxes.shape[-1]) if boxes.size else np.zeros((0, 4))
        if arr.shape[1] < 4:
            raise InputError(f"{name}: boxes need 4 columns (y0, x0, y1, x1)")
        corners, scores = arr[:, :4].astype(np.float64), np.ones(len(arr))
    else:
        try:
            corners = np.array([[float(r[k]) for k in ("y0", "x0", "y1", "x1")] for r in boxes]).reshape(-1, 4)
            scores = np.array([float(r.get("score", 1.0) if r.get("score") not in (None, "") else 1.0)
                               for r in boxes])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{name}: every box needs numeric y0, x0, y1, x1 (and score)") from None
    if not np.isfinite(corners).all() or np.any(corners[:, 2:] < corners[:, :2]):
        raise InputError(f"{name}: box corners must be finite with y1 >= y0 and x1 >= x0")
    if not np.isfinite(scores).all():
        raise InputError(f"{name}: box scores must be finite numbers (a NaN score ranks nowhere)")
    return corners, scores
