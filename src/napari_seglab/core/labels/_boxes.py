"""Bounding-box tables of labelled objects (the rows of ``seglab predict --boxes``)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

#: columns of a boxes CSV: corners (pixels, y1/x1 exclusive), class id, score, T/Z plane index ("" for 2D)
BOX_COLUMNS = ("y0", "x0", "y1", "x1", "class", "score", "plane")


def label_box_rows(labels: np.ndarray, axes: str, kind: str) -> list[dict]:
    """Box rows (see :data:`BOX_COLUMNS`, score 1.0) of every object of ``labels``, plane by plane.

    ``labels``: integer labels in ``axes`` (a subset of TZYX, no C).
    ``kind``: "instances" (object ids: one box per id, class 1) or
    "semantic" (class ids: one box per connected region of each class).
    """
    from scipy import ndimage as ndi

    from ..objects import boxes_from_labels

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


# ----------------------------------------------------------------------------- box annotations
#
# A box annotation is a row (dict) like those of a boxes CSV: y0, x0, y1, x1 (pixel edges, y1/x1
# exclusive), class (1, 2, ...; 1 when absent), and for stacks the plane ("3" or "1,2"). Training
# and evaluation take lists of rows; :func:`boxes_array` turns one plane's rows into an array.

#: a rectangle whose edges lean more than this (in pixels, over its size) is a rotated one
_AXIS_TOLERANCE = 1e-3


def _as_class(value, where: str) -> int:
    if value in (None, ""):
        return 1
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: class {str(value)[:40]!r} is not a whole number >= 1") from None
    if not np.isfinite(number) or number != int(number) or number < 1:
        raise InputError(f"{where}: class {str(value)[:40]!r} is not a whole number >= 1")
    return int(number)


def check_box(row: dict, where: str) -> dict:
    """One box row with float corners and an int class; InputError naming ``where`` when it is not a box."""
    try:
        y0, x0, y1, x1 = (float(row[k]) for k in ("y0", "x0", "y1", "x1"))
    except KeyError as exc:
        raise InputError(f"{where}: no {exc.args[0]!r} value (a box needs y0, x0, y1, x1)") from None
    except (TypeError, ValueError):
        raise InputError(f"{where}: box corners must be numbers") from None
    if not all(np.isfinite(v) for v in (y0, x0, y1, x1)):
        raise InputError(f"{where}: box corners must be finite numbers")
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"{where}: empty box (y0={y0:g}, x0={x0:g}, y1={y1:g}, x1={x1:g}); need y1 > y0 and x1 > x0")
    out = {"y0": y0, "x0": x0, "y1": y1, "x1": x1, "class": _as_class(row.get("class"), where),
           "plane": ",".join(map(str, _plane_of(row))) if row.get("plane") not in (None, "") else ""}
    if "score" in row and row["score"] not in (None, ""):
        out["score"] = float(row["score"])
    return out


def rows_from_rectangles(shapes, shape_types=None, classes=None, name: str = "shapes") -> list[dict]:
    """Box rows of napari rectangles: ``shapes`` is a list of (4, D) vertex arrays (data coordinates,
    D >= 2, the last two axes Y, X; leading axes give the plane of a stack).

    ``shape_types``: napari's type per shape; anything but "rectangle" is
    refused. ``classes``: one class per shape (None: all 1). A rectangle whose
    edges are not parallel to the image axes (rotated) is refused: a box
    detector learns axis-aligned boxes. Raises InputError naming ``name``.
    """
    rows = []
    for i, verts in enumerate(shapes):
        where = f"{name}, shape {i + 1}"
        kind = shape_types[i] if shape_types is not None else "rectangle"
        if kind != "rectangle":
            raise InputError(f"{where} is a {kind}; draw boxes with the rectangle tool (only rectangles are boxes)")
        v = np.asarray(verts, dtype=float)
        if v.ndim != 2 or v.shape[0] != 4 or v.shape[1] < 2 or not np.isfinite(v).all():
            raise InputError(f"{where}: a rectangle needs 4 finite corners")
        yx, lead = v[:, -2:], v[:, :-2]
        lo, hi = yx.min(0), yx.max(0)
        size = float(np.max(hi - lo)) or 1.0
        on_edge = (np.abs(yx - lo) <= _AXIS_TOLERANCE * size) | (np.abs(yx - hi) <= _AXIS_TOLERANCE * size)
        if not on_edge.all():
            raise InputError(f"{where} is rotated; box detectors learn axis-aligned boxes, draw it unrotated")
        if lead.size and np.ptp(lead, axis=0).max() > 0.5:
            raise InputError(f"{where} spans several planes; draw each box on one plane")
        plane = ",".join(str(int(round(c))) for c in lead[0]) if lead.size else ""
        row = {"y0": lo[0], "x0": lo[1], "y1": hi[0], "x1": hi[1],
               "class": classes[i] if classes is not None else 1, "plane": plane}
        rows.append(check_box(row, where))
    return rows


def read_boxes_csv(path) -> list[dict]:
    """Box rows of a boxes CSV (columns y0, x0, y1, x1, optional class, score, plane: what predict writes).

    Raises InputError naming the file and the line for a missing column or a bad value.
    """
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such boxes file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("y0", "x0", "y1", "x1") if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: not a boxes CSV (no column {', '.join(missing)}; "
                                 "need y0, x0, y1, x1 and optionally class, plane)")
            return [check_box(row, f"{path}, line {n}") for n, row in enumerate(reader, start=2)]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None


def boxes_array(rows, plane: tuple[int, ...] = ()) -> np.ndarray:
    """(N, 5) float32 [y0, x0, y1, x1, class] of the rows on ``plane`` (() for a 2D image)."""
    picked = [r for r in rows if _plane_of(r) == tuple(plane)]
    out = np.array([[r["y0"], r["x0"], r["y1"], r["x1"], r.get("class", 1) or 1] for r in picked], np.float32)
    return out.reshape(len(picked), 5)
