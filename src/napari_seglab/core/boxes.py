"""Bounding-box tables of labelled objects (the rows of ``seglab predict --boxes``)."""

from __future__ import annotations

import numpy as np

#: columns of a boxes CSV: corners (pixels, y1/x1 exclusive), class id, score, T/Z plane index ("" for 2D)
BOX_COLUMNS = ("y0", "x0", "y1", "x1", "class", "score", "plane")


def label_box_rows(labels: np.ndarray, axes: str, kind: str) -> list[dict]:
    """Box rows (see :data:`BOX_COLUMNS`, score 1.0) of every object of ``labels``, plane by plane.

    ``labels``: integer labels in ``axes`` (a subset of TZYX, no C).
    ``kind``: "instances" (object ids: one box per id, class 1) or
    "semantic" (class ids: one box per connected region of each class).
    """
    from scipy import ndimage as ndi

    from .instances import boxes_from_labels

    labels = np.asarray(labels)
    lead = [labels.shape[i] for i, a in enumerate(axes) if a in "TZ"]
    rows = []
    for index in np.ndindex(*lead):
        plane = labels[index]
        tag = ",".join(map(str, index))
        if kind == "instances":
            groups = [(1, plane)]
        else:
            groups = [(int(c), ndi.label(plane == c)[0]) for c in np.unique(plane) if c > 0]
        for cls, objects in groups:
            boxes, _ids = boxes_from_labels(objects)
            rows += [{"y0": int(b[0]), "x0": int(b[1]), "y1": int(b[2]), "x1": int(b[3]), "class": cls,
                      "score": 1.0, "plane": tag} for b in boxes]
    return rows


def _plane_of(row: dict) -> tuple[int, ...]:
    plane = row.get("plane", "")
    if plane in ("", None):
        return ()
    if isinstance(plane, (tuple, list)):
        return tuple(int(p) for p in plane)
    return tuple(int(p) for p in str(plane).split(","))


def boxes_to_rectangles(rows: list[dict], ndim: int = 2) -> list[np.ndarray]:
    """Box rows (y0, x0, y1, x1[, plane]) -> napari rectangles, each a (4, ndim) float array.

    ``ndim`` is the labels' dimensionality; for stacks the row's ``plane``
    ("3" or "1,2") fills the leading coordinates.
    """
    rects = []
    for row in rows:
        y0, x0, y1, x1 = (float(row[k]) for k in ("y0", "x0", "y1", "x1"))
        corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)
        n_lead = ndim - 2
        lead = ((0,) * n_lead + _plane_of(row))[-n_lead:] if n_lead else ()
        if lead:
            corners = np.hstack([np.tile(np.asarray(lead, float), (4, 1)), corners])
        rects.append(corners)
    return rects
