"""The box half of the Evaluate dock: layers -> box rows, the scores table, the summary line.

A prediction is a Shapes layer of rectangles (its ``score`` feature ranks the
boxes; without one every box scores 1); the truth is a Shapes layer of
rectangles or a Labels layer of instances (each object's box). Coordinates are
the layers' data coordinates, as the labels half compares label arrays.
"""

from __future__ import annotations

import threading

import numpy as np

from .._layers import labels_from_layer
from ..core.errors import InputError
from ..core.evaluate import box_scores_by_plane
from ..core.events import Message
from ..core.labels import check_box, instance_box_rows, rows_from_rectangles

#: the table's rows: (name, key in the scores, is a count)
BOX_ROWS = (("AP@0.5", "ap50", False), ("AP@0.75", "ap75", False), ("AP@[.5:.95]", "ap", False),
            ("precision", "precision", False), ("recall", "recall", False), ("F1", "f1", False),
            ("TP", "tp", True), ("FP", "fp", True), ("FN", "fn", True), ("predicted", "n_pred", True),
            ("true", "n_true", True), ("count error", "count_error", True))
BOX_TIPS = ("area under the precision/recall curve over every score, boxes matched at IoU \u2265 0.5",
            "the same at IoU \u2265 0.75", "COCO's mean AP over IoU 0.5, 0.55, ..., 0.95",
            "TP / predicted (boxes at or above the score threshold, IoU \u2265 0.5)", "TP / true",
            "2 TP / (predicted + true)", "predicted boxes matched to a true box", "predicted boxes with no match",
            "true boxes missed", "predicted boxes at or above the score threshold", "true boxes",
            "predicted - true")
BOX_CAPTION = ("boxes: AP over every score; precision, recall, F1 and counts for the boxes scoring at least "
               "the score threshold, matched at IoU \u2265 0.5")


def _feature(layer, name: str):
    features = getattr(layer, "features", None)
    if features is None or name not in features or len(features[name]) != len(layer.data):
        return None
    return list(features[name])


def shapes_rows(layer, *, scored: bool) -> list[dict]:
    """Box rows of a Shapes layer of rectangles (``class`` and, when ``scored``, ``score`` from its features).

    Raises InputError naming the layer for a shape that is not an unrotated rectangle or a bad score.
    """
    rows = rows_from_rectangles(layer.data, list(layer.shape_type), _feature(layer, "class"), f"'{layer.name}'")
    scores = _feature(layer, "score") if scored else None
    if scores is not None:
        try:
            values = np.asarray(scores, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"'{layer.name}': its score feature holds values that are not numbers") from None
        if not np.isfinite(values).all():
            raise InputError(f"'{layer.name}': its score feature holds missing or infinite values")
        for row, score in zip(rows, values, strict=True):
            row["score"] = float(score)
    return rows


def labels_rows(layer) -> list[dict]:
    """Each object's box of a Labels layer of instances (planes of a stack tagged as Shapes rows are)."""
    return instance_box_rows(labels_from_layer(layer), f"'{layer.name}'")


def box_inputs(pred_layer, truth_layer) -> tuple[list[dict], list[dict], str]:
    """Predicted and true box rows of two layers, and a warning ("" when none).

    The prediction must be a Shapes layer; the truth a Shapes or a Labels layer with as many dimensions.
    """
    truth_ndim = truth_layer.ndim
    if pred_layer.ndim != truth_ndim:
        raise InputError(f"'{pred_layer.name}' has {pred_layer.ndim} dimensions but '{truth_layer.name}' has "
                         f"{truth_ndim}: choose boxes and truth of the same image")
    stored = pred_layer.metadata.get("seglab_boxes")
    if stored is not None:  # a Predict dock layer: every detection, also those its display threshold hides
        pred = [check_box(r, f"'{pred_layer.name}', box {i + 1}") for i, r in enumerate(stored)]
    else:
        pred = shapes_rows(pred_layer, scored=True)
    if type(truth_layer).__name__ == "Shapes":
        truth = shapes_rows(truth_layer, scored=False)
    else:
        truth = labels_rows(truth_layer)
    warnings = []
    if stored is None and _feature(pred_layer, "score") is None and pred:
        warnings.append(f"'{pred_layer.name}' has no score feature: every box scores 1")
    if not (np.allclose(pred_layer.scale, truth_layer.scale) and np.allclose(pred_layer.translate,
                                                                              truth_layer.translate)):
        warnings.append(f"'{pred_layer.name}' and '{truth_layer.name}' are placed differently (scale or "
                        "translate); boxes are compared in each layer's own data coordinates")
    return pred, truth, "; ".join(warnings)


def evaluate_boxes(pred: list[dict], truth: list[dict], threshold: float, _stop: threading.Event | None = None):
    """Worker generator: box scores pooled over planes; returns the overall dict with ``planes`` added."""
    yield Message("matching boxes...")
    result = box_scores_by_plane(pred, truth, threshold)
    return {**result["overall"], "planes": result["planes"]}


def _cell(value, count: bool, key: str) -> str:
    if not count:
        return f"{float(value):.3f}"
    return f"{int(value):+d}" if key == "count_error" else f"{int(value)}"


def box_table_value(scores: dict | None) -> dict:
    """The Table's value: rows of :data:`BOX_ROWS`, one column (None: blank)."""
    data = [["\u2013"] if scores is None else [_cell(scores[key], count, key)] for _name, key, count in BOX_ROWS]
    return {"data": data, "index": [name for name, _k, _c in BOX_ROWS], "columns": ["boxes"]}


def box_summary(scores: dict, pred_name: str, truth_name: str, n_boxes: int) -> str:
    """The status text over the table (rich text)."""
    n_planes = len(scores.get("planes") or {})
    where = f" over {n_planes} planes" if n_planes else ""
    return (f"<b>AP@0.5 {scores['ap50']:.3f} &nbsp; AP@[.5:.95] {scores['ap']:.3f}</b>{where}<br>"
            f"{scores['n_pred']} of {n_boxes} boxes in '{pred_name}' score \u2265 {scores['score_threshold']:g}; "
            f"{scores['n_true']} true boxes in '{truth_name}'")
