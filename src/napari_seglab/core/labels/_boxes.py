"""Bounding-box tables of labelled objects (the rows of ``seglab predict --boxes``)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

#: columns of a boxes CSV: corners (pixels, y1/x1 exclusive), class id, score, T/Z plane index ("" for 2D)
BOX_COLUMNS = ("y0", "x0", "y1", "x1", "class", "score", "plane")


def instance_box_rows(labels: np.ndarray, source: str) -> list[dict]:
    """Box rows of every object of an instance label image of 2 to 4 axes (T, Z, Y, X); ``source`` names it."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise InputError(f"{source}: labels are {labels.dtype}; instance labels are whole numbers")
    if not 2 <= labels.ndim <= 4:
        raise InputError(f"{source}: labels have {labels.ndim} dimensions; box evaluation needs 2 to 4 (T, Z, Y, X)")
    return label_box_rows(labels, "TZYX"[-labels.ndim:], "instances")


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


def _plane_key(row: dict) -> tuple[int, ...]:
    """:func:`napari_seglab.core.evaluate.plane_key` (imported on use: the scores need scipy, the CLI's parser
    reads this package without it)."""
    from ..evaluate import plane_key as parse

    return parse(row)


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
        lead = ((0,) * n_lead + _plane_key(row))[-n_lead:] if n_lead else ()
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


def _as_score(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: score {str(value)[:40]!r} is not a number") from None
    if not np.isfinite(number):
        raise InputError(f"{where}: score {str(value)[:40]!r} is not a finite number (NaN or Inf would rank "
                         "the box nowhere)")
    return number


def _as_plane(row: dict, where: str) -> str:
    try:
        return ",".join(map(str, _plane_key(row)))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def check_box(row: dict, where: str) -> dict:
    """One box row checked field by field: float corners, an int class, a finite score, a plane like "3" or "1,2".

    Returns a new row (``where`` is kept in it, so later checks name the same place); InputError
    naming ``where`` (a row's own ``where`` first) and the field when a value is not what a box needs.
    """
    where = row.get("where") or where
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
           "plane": _as_plane(row, where), "where": where}
    if row.get("score") not in (None, ""):
        out["score"] = _as_score(row["score"], where)
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


#: the most rows a boxes CSV may hold: a million boxes is far more than any image a person annotates,
#: and keeps what reading one holds in memory under about a gigabyte (rows are checked as they are read)
MAX_BOX_ROWS = 1_000_000


def read_boxes_csv(path) -> list[dict]:
    """Box rows of a boxes CSV (columns y0, x0, y1, x1, optional class, score, plane: what predict writes).

    Every field is checked where it is read (:func:`check_box`), and each row
    keeps ``where`` ("FILE, line N", N counting the file's lines, blank ones
    included). A zero-byte or blank file is a negative (no boxes), like a header
    without rows; a UTF-8 byte-order mark (a spreadsheet's "CSV UTF-8") is read
    as nothing. Raises InputError naming the file and line of a missing
    column, a row with more or fewer fields than the header, an oversized
    field, more than :data:`MAX_BOX_ROWS` rows, or a bad value.
    """
    import csv
    from pathlib import Path

    from ..io import check_regular_file

    path = Path(path)
    check_regular_file(path, "a boxes CSV file", allow_empty=True)  # a FIFO or a device is never opened
    rows: list[dict] = []
    line = 0  # the file line the last record ended on
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(_bounded_lines(fh, path))
            header = None
            while True:
                start = line + 1
                try:
                    fields = next(reader, None)
                except csv.Error as exc:  # NUL bytes, a field over csv's size limit, a broken quote
                    raise InputError(f"{path}, line {reader.line_num}: not a readable CSV row ({exc})") from None
                if fields is None:
                    break
                line = reader.line_num
                if not fields or not any(f.strip() for f in fields):
                    continue  # a blank line
                if header is None:
                    header = _header(fields, path, start)
                    continue
                if len(fields) != len(header):
                    more = "more" if len(fields) > len(header) else "fewer"
                    raise InputError(f"{path}, line {start}: {len(fields)} fields, {more} than the header's "
                                     f"{len(header)} ({', '.join(header)})")
                if len(rows) >= MAX_BOX_ROWS:
                    raise InputError(f"{path}: more than {MAX_BOX_ROWS} boxes; split the annotation")
                rows.append(check_box(dict(zip(header, fields, strict=True)), f"{path}, line {start}"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file (not UTF-8)") from None
    return rows


#: the longest line a boxes CSV may have, in characters: a box row takes tens (csv's own limit on one
#: field, 131072, is checked too)
MAX_LINE = 1 << 20


def _bounded_lines(fh, path):
    """The lines of ``fh``, none read whole when it is longer than :data:`MAX_LINE` (InputError instead)."""
    number = 0
    while True:
        text = fh.readline(MAX_LINE + 1)
        if not text:
            return
        number += 1
        if len(text) > MAX_LINE:
            raise InputError(f"{path}, line {number}: longer than {MAX_LINE} characters; not a boxes CSV row")
        yield text


def _header(fields: list[str], path, line: int) -> list[str]:
    """The column names of a boxes CSV's first row; InputError when y0, x0, y1, x1 are not all there."""
    names = [f.strip() for f in fields]
    missing = [c for c in ("y0", "x0", "y1", "x1") if c not in names]
    if missing:
        raise InputError(f"{path}: not a boxes CSV (no column {', '.join(missing)} in the header, line {line}; "
                         "need y0, x0, y1, x1 and optionally class, score, plane)")
    twice = sorted({n for n in names if names.count(n) > 1 and n})
    if twice:
        raise InputError(f"{path}, line {line}: column {', '.join(twice)} appears more than once")
    return names


def boxes_array(rows, plane: tuple[int, ...] = ()) -> np.ndarray:
    """(N, 5) float32 [y0, x0, y1, x1, class] of the rows on ``plane`` (() for a 2D image)."""
    picked = [r for r in rows if _plane_key(r) == tuple(plane)]
    out = np.array([[r["y0"], r["x0"], r["y1"], r["x1"], r.get("class", 1) or 1] for r in picked], np.float32)
    return out.reshape(len(picked), 5)
