"""npe2 sample-data contributions: synthetic nuclei to try the plugin on.

The functions return napari LayerDataTuples ``(data, metadata, layer_type)``
and need no napari import. They read the TIFFs shipped with the package (or,
in a source checkout, the repository's ``sample_data/`` folder) and fall back
to generating the same kind of data when neither is there.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import tifffile

from .core.synthetic import make_nuclei, make_scribbles

__all__ = ["nuclei_stack", "nuclei_with_boxes", "nuclei_with_instances", "nuclei_with_scribbles"]

_TRAIN_SEED = 1
_STACK_SEED = 3
_SCRIBBLE_SEED = 11
#: axis names napari shows (instead of its -2, -1)
AXES_2D = ("y", "x")
AXES_3D = ("z", "y", "x")
#: the boxes annotation of the training image (written from its instance mask, class 1)
BOXES_FILE = "nuclei_boxes.csv"
#: the edge colour of class 1 boxes (the Predict dock draws its class 1 boxes in it too)
BOX_EDGE = "#ffd400"


def _read_sample(name: str) -> np.ndarray | None:
    """Read ``sample_data/<name>`` from the package, then the source tree; None if absent."""
    try:
        packaged = files("napari_seglab") / "sample_data" / name
        if packaged.is_file():
            with as_file(packaged) as path:
                return tifffile.imread(path)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    local = Path(__file__).resolve().parents[2] / "sample_data" / name
    if local.is_file():
        return tifffile.imread(local)
    return None


def _sample_path(name: str):
    """A context manager giving the path of ``sample_data/<name>`` (package, then source tree) or None."""
    import contextlib

    try:
        packaged = files("napari_seglab") / "sample_data" / name
        if packaged.is_file():
            return as_file(packaged)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    local = Path(__file__).resolve().parents[2] / "sample_data" / name
    return contextlib.nullcontext(local if local.is_file() else None)


def _train_sample() -> tuple[np.ndarray, np.ndarray, bool]:
    """The training image, its instances, and whether they are the shipped files (False: generated)."""
    image = _read_sample("nuclei_train.tif")
    instances = _read_sample("nuclei_train_instances.tif")
    if image is None or instances is None:
        image, instances = make_nuclei((256, 512), seed=_TRAIN_SEED)
        return image, instances, False
    return image, instances, True


def _train_image_and_instances() -> tuple[np.ndarray, np.ndarray]:
    image, instances, _shipped = _train_sample()
    return image, instances


def nuclei_with_scribbles() -> list[tuple]:
    """Nuclei image with sparse painted scribbles.

    Returns
    -------
    list of LayerDataTuple
        ``(image (256, 512) uint16, {"name": "nuclei", ...}, "image")`` and
        ``(scribbles (256, 512) uint8, {"name": "scribbles", "colormap": ...}, "labels")``
        with 0 = not annotated, 1 = background, 2 = nucleus, in the colours
        the Train dock gives these classes in its predictions.
    """
    from ._colors import COLORS_KEY, value_colors

    image, instances = _train_image_and_instances()
    scribbles = _read_sample("nuclei_train_scribbles.tif")
    if scribbles is None or scribbles.shape != image.shape:
        scribbles = make_scribbles(instances, seed=_SCRIBBLE_SEED)
    return [
        (image, {"name": "nuclei", "axis_labels": AXES_2D}, "image"),
        (scribbles, {"name": "scribbles", "axis_labels": AXES_2D, "colormap": value_colors("scribbles"),
                     "metadata": {COLORS_KEY: "scribbles"}}, "labels"),
    ]


def nuclei_with_instances() -> list[tuple]:
    """Nuclei image with its dense instance mask.

    Returns
    -------
    list of LayerDataTuple
        ``(image (256, 512) uint16, {"name": "nuclei"}, "image")`` and
        ``(instances (256, 512) uint16, {"name": "instances"}, "labels")`` with
        0 = background and one id per nucleus.
    """
    image, instances = _train_image_and_instances()
    return [
        (image, {"name": "nuclei", "axis_labels": AXES_2D}, "image"),
        (instances, {"name": "instances", "axis_labels": AXES_2D}, "labels"),
    ]


def nuclei_stack() -> list[tuple]:
    """A small 3D stack of nuclei.

    Returns
    -------
    list of LayerDataTuple
        ``(stack (8, 128, 128) uint16 ZYX, {"name": "nuclei stack", "scale": (3.0, 1.0, 1.0), ...}, "image")``;
        the z step is three times the pixel size; the axes are named z, y, x.
    """
    stack = _read_sample("nuclei_stack.tif")
    if stack is None:
        stack, _instances = make_nuclei((8, 128, 128), seed=_STACK_SEED)
    return [(stack, {"name": "nuclei stack", "scale": (3.0, 1.0, 1.0), "axis_labels": AXES_3D}, "image")]


def _box_rows(instances: np.ndarray, from_files: bool) -> list[dict]:
    """The shipped boxes CSV when it annotates the shipped image, else each object's box of ``instances``."""
    from .core.labels import label_box_rows, read_boxes_csv

    if from_files:
        with _sample_path(BOXES_FILE) as path:
            if path is not None:
                return read_boxes_csv(path)
    return label_box_rows(instances, "YX", "instances")


def nuclei_with_boxes() -> list[tuple]:
    """Nuclei image with a box around every nucleus (the annotation box detectors train from).

    Returns
    -------
    list of LayerDataTuple
        ``(image (256, 512) uint16, {"name": "nuclei"}, "image")`` and
        ``(rectangles, {"name": "nuclei boxes", "shape_type": "rectangle", "features": {"class": ...}}, "shapes")``:
        one (4, 2) float array of corners per nucleus, at the pixel edges
        y0, x0, y1, x1 of ``sample_data/nuclei_boxes.csv`` (y1, x1 exclusive),
        all of class 1.
    """
    from .core.labels import boxes_to_rectangles

    image, instances, shipped = _train_sample()
    rows = _box_rows(instances, shipped)
    meta = {"name": "nuclei boxes", "axis_labels": AXES_2D, "shape_type": "rectangle",
            "features": {"class": np.array([int(r["class"]) for r in rows], dtype=int)},
            "edge_color": BOX_EDGE, "face_color": "transparent", "edge_width": 1.5}
    return [
        (image, {"name": "nuclei", "axis_labels": AXES_2D}, "image"),
        (boxes_to_rectangles(rows, 2), meta, "shapes"),
    ]
