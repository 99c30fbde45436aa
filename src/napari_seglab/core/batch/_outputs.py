"""The outputs of a batch job: output names per input, object tables, compact label images.

:func:`plan_outputs` maps each input to ``<stem>_labels.tif``,
``<stem>_probabilities.tif`` and ``<stem>_objects.csv`` under the output
folder (a block-wise file: ``<stem>_labels.ome.zarr`` and ``<stem>_probabilities.ome.zarr``; a box
detector: ``<stem>_boxes.csv`` alone); :func:`measure_labels`
gives one row per object, per time point; :func:`summarize_boxes` counts boxes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_image, safe_child


def _stem(rel: Path) -> Path:
    name = rel.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return rel.with_name(name[: -len(suffix)])
    return rel.with_suffix("")


def plan_outputs(input_dir: Path, output_dir: Path, files: Sequence[Path], *, probabilities: bool,
                 measurements: bool, boxes: bool = False, blockwise: frozenset = frozenset()
                 ) -> list[tuple[Path, str, dict[str, Path]]]:
    """(input path, relative input name, {kind: output path}) for every input file.

    ``blockwise``: the inputs predicted block by block, whose labels and probabilities are OME-Zarr
    stores (``<stem>_labels.ome.zarr``, ``<stem>_probabilities.ome.zarr``) instead of TIFFs.

    ``boxes``: a box detector's run, whose one output per input is its
    boxes CSV (kind ``boxes``; no labels, probabilities or object table).

    Outputs mirror the input's sub-folder under ``output_dir``; inputs whose
    names differ only by extension or case get the full name in their stem
    so no two inputs share an output. An output that would land on any
    input file is refused.
    """
    inputs = {p.resolve() for p in files}
    taken: set[str] = set()
    plan = []
    for path in files:
        rel = path.relative_to(input_dir)
        stem = _stem(rel)
        if stem.as_posix().lower() in taken:
            stem = rel.with_name(rel.name.replace(".", "_"))
        n = 1
        while stem.as_posix().lower() in taken:
            n += 1
            stem = rel.with_name(f"{rel.name.replace('.', '_')}_{n}")
        taken.add(stem.as_posix().lower())
        ext = ".ome.zarr" if path in blockwise else ".tif"
        if boxes:
            outs = {"boxes": safe_child(output_dir, f"{stem.as_posix()}_boxes.csv")}
        else:
            outs = {"labels": safe_child(output_dir, f"{stem.as_posix()}_labels{ext}")}
        if probabilities and not boxes:
            outs["probabilities"] = safe_child(output_dir, f"{stem.as_posix()}_probabilities{ext}")
        if measurements and not boxes:
            outs["objects"] = safe_child(output_dir, f"{stem.as_posix()}_objects.csv")
        for out in outs.values():
            if out in inputs or out.resolve() in inputs:
                raise InputError(f"{out}: an output would overwrite an input file; choose another output folder")
        plan.append((path, rel.as_posix(), outs))
    return plan


def summary_of_outputs(outs: dict[str, Path]) -> dict:
    """Image summary of a file done in an earlier run, from its boxes CSV, objects CSV or labels TIFF."""
    from ..objects import summarize_objects

    if "boxes" in outs:
        with open(outs["boxes"], newline="", encoding="utf-8") as fh:
            return summarize_boxes([{k: float(r[k]) for k in ("y0", "x0", "y1", "x1", "score")}
                                    for r in csv.DictReader(fh)])
    if "objects" in outs:
        with open(outs["objects"], newline="", encoding="utf-8") as fh:
            rows = []
            for r in csv.DictReader(fh):
                row = {"area": float(r["area"])}
                for key, value in r.items():
                    if key.startswith("mean_intensity"):
                        row[key] = float(value) if value not in ("", None) else float("nan")
                rows.append(row)
        return summarize_objects(rows)
    if Path(outs["labels"]).is_dir():  # a block-wise file's OME-Zarr labels: counted block by block
        from ..io import open_lazy
        from ..objects import measure_blocks

        rows, _ = measure_blocks(open_lazy(outs["labels"]).array, max_side=-1)
        return summarize_objects(rows)
    labels = read_image(outs["labels"])
    return summarize_objects(per_plane(area_rows, labels.data, None, labels.axes))


def per_plane(fn, labels: np.ndarray, image: np.ndarray | None, axes: str, *, volume: bool = False) -> list[dict]:
    """Apply ``fn(labels_plane, image_plane)`` per (Y, X) plane, adding ``t`` / ``z`` columns.

    ``axes``: canonical axes of ``image`` (or of ``labels`` when ``image`` is
    None); the leading T and Z axes index the planes. Predictions label each
    plane on its own, so objects are measured (and counted) per plane;
    ``volume``: 3D objects, measured per (Z, Y, X) stack (only T indexes them).
    """
    lead = [a for a in axes if a in ("T" if volume else "TZ")]
    if not lead:
        return fn(labels, image)
    rows = []
    for index in np.ndindex(*labels.shape[: len(lead)]):
        where = {a.lower(): int(i) for a, i in zip(lead, index, strict=True)}
        rows.extend({**where, **r} for r in fn(labels[index], None if image is None else image[index]))
    return rows


def measure_labels(labels: np.ndarray, image: np.ndarray, axes: str, pixel_size=None, *,
                   volume: bool = False) -> list[dict]:
    """Object measurements of a predicted label image, one table over all planes.

    ``image``: canonical axes ``axes`` (a subset of TZYXC); ``labels``: the
    same shape without C, int. Rows as :func:`~napari_seglab.core.objects._instances.measure_objects`
    gives them for 2D objects, with ``t`` / ``z`` first for stacks; with ``pixel_size`` (µm, its last two
    entries are Y and X) also ``area_um2`` and ``perimeter_um``. ``volume``: 3D objects per stack (``t``
    first for a time series), with ``volume_um3`` where ``pixel_size`` gives (z, y, x).
    """
    from functools import partial

    from ..objects import measure_objects

    if volume:  # 3D objects: volumes (µm³ where the file gives its voxel size), centroids in z, y, x
        return per_plane(partial(measure_objects, pixel_size=_zyx(pixel_size)), labels, image, axes, volume=True)
    return per_plane(partial(measure_objects, pixel_size=_yx(pixel_size)), labels, image, axes)


def _yx(pixel_size) -> tuple[float, float] | None:
    return None if pixel_size is None or len(pixel_size) < 2 else tuple(float(v) for v in pixel_size[-2:])


def _zyx(pixel_size) -> tuple[float, float, float] | None:
    return None if pixel_size is None or len(pixel_size) != 3 else tuple(float(v) for v in pixel_size)


def area_rows(labels: np.ndarray, _image=None) -> list[dict]:
    """``label`` and ``area`` of every object: the cheap table when measurements are off."""
    counts = np.bincount(labels.ravel().astype(np.int64))
    return [{"label": int(i), "area": int(counts[i])} for i in np.flatnonzero(counts[1:]) + 1]


def object_columns(image: np.ndarray, axes: str, pixel_size=None, *, volume: bool = False) -> list[str]:
    """CSV header of :func:`measure_labels` for this image, from a tiny dummy object."""
    from ..objects import measure_objects

    lab = np.zeros((5, 5, 5) if volume else (5, 5), np.int32)
    lab[(slice(1, 4),) * lab.ndim] = 1
    channels = (image.shape[-1],) if "C" in axes else ()
    size = _zyx(pixel_size) if volume else _yx(pixel_size)
    keys = list(measure_objects(lab, np.zeros(lab.shape + channels, np.float32), pixel_size=size)[0])
    return [a.lower() for a in axes if a in ("T" if volume else "TZ")] + keys


def summarize_boxes(rows: Sequence[dict]) -> dict:
    """Image summary of a box detector's rows (those at or above the score threshold: all it writes).

    ``object_count``: the number of boxes; ``mean_score`` and
    ``mean_box_area`` (pixels) over them, None when there are none.
    """
    count = len(rows)
    if not count:
        return {"object_count": 0, "mean_score": None, "mean_box_area": None}
    areas = [(float(r["y1"]) - float(r["y0"])) * (float(r["x1"]) - float(r["x0"])) for r in rows]
    return {"object_count": count, "mean_score": float(np.mean([float(r["score"]) for r in rows])),
            "mean_box_area": float(np.mean(areas))}
