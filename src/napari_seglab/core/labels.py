"""Label conventions -> training targets with an ignore value.

========== ====================== ============================== ===========================
mode       0 means                other values                   target (-1 = ignored)
========== ====================== ============================== ===========================
scribbles  not annotated (ignored) 1 = background, 2..K = classes class = value - 1
instances  background             one id per object              0 bg, 1 interior, 2 boundary
objects    not annotated (ignored) 1 = background, 2.. = one id   0 bg, 1 interior, 2 boundary
                                  per whole painted object       (unpainted pixels ignored)
classes    background             class ids 1..K                 class = value
========== ====================== ============================== ===========================

With the "flows" or "distance" instance head (see :func:`head_targets`), the
``instances`` and ``objects`` targets are the foreground (0 / 1, -1 ignored)
plus the head's float target.

Predicted semantic labels use ``0 = background, k = class k`` in every mode
(a scribble value minus one); ``instances`` predictions are object ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError

LABEL_MODES = ("scribbles", "instances", "objects", "classes")
#: modes whose models predict objects (one id each) rather than classes
INSTANCE_MODES = ("instances", "objects")
IGNORE = -1

LEGEND = {
    "scribbles": "0 = not annotated (ignored); 1 = background; 2, 3, ... = classes",
    "instances": "0 = background; each object its own id (1, 2, 3, ...)",
    "objects": "0 = not annotated (ignored); 1 = background strokes; 2, 3, ... = one id per whole "
               "painted object (napari's 'new label')",
    "classes": "0 = background; 1, 2, ... = class ids (every pixel is annotated)",
}


def is_instance_mode(mode: str) -> bool:
    """True for label modes whose models predict objects (``instances``, ``objects``)."""
    return mode in INSTANCE_MODES


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known label mode, else raise an InputError listing them."""
    if mode not in LABEL_MODES:
        raise InputError(f"unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    return mode


def validate_labels(labels: np.ndarray, spatial_shape: Sequence[int], mode: str, *,
                    read_255_as_foreground: bool = False, name: str = "labels") -> np.ndarray:
    """Check painted labels against the image and the mode; return them as int64.

    ``labels`` must be an integer (or bool) array of ``spatial_shape`` (the
    image shape without its channel axis). Rejected with a message saying why:
    a shape mismatch, float or negative values, an empty annotation, a single
    class, and 0/255 masks unless ``read_255_as_foreground``.
    """
    check_mode(mode)
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(spatial_shape):
        raise InputError(f"{name} shape {tuple(labels.shape)} does not match the image shape "
                         f"{tuple(spatial_shape)} (without channels)")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        raise InputError(f"{name} are floating point ({labels.dtype}); labels must be integers "
                         "(was an image opened as labels?)")
    if labels.dtype.kind not in "ui":
        raise InputError(f"{name} have dtype {labels.dtype}; labels must be integers")
    if labels.size and labels.min() < 0:
        raise InputError(f"{name} contain negative values (min {labels.min()}); labels must be >= 0")
    values = np.unique(labels)
    if set(values.tolist()) == {0, 255} or set(values.tolist()) == {255}:
        if not read_255_as_foreground:
            raise InputError(f"{name} are a 0/255 mask; enable 'read 255 as foreground' "
                             "(CLI: --mask-255) to read 255 as foreground")
        labels = (labels == 255).astype(np.uint8)
        if mode == "scribbles":
            labels = labels + 1  # a dense binary mask: every pixel annotated
        values = np.unique(labels)
    nonzero = values[values != 0]
    if nonzero.size == 0:
        raise InputError(f"{name} are empty: paint some {'strokes' if mode == 'scribbles' else 'objects'} first")
    if mode == "scribbles":
        if nonzero.size < 2:
            only = int(nonzero[0])
            what = "background (1)" if only == 1 else f"class {only}"
            raise InputError(f"{name} contain a single class ({what} only); paint background with 1 "
                             "and objects with 2 (or more classes with 3, 4, ...)")
    elif mode == "classes":
        if values.size < 2:
            raise InputError(f"{name} contain a single class only; a dense class mask needs "
                             "background (0) and at least one class")
    elif mode == "instances" and values[0] != 0:
        raise InputError(f"{name} have no background (0) pixels; instance labels need background")
    elif mode == "objects":
        if 1 not in values:
            raise InputError(f"{name} have no background strokes (value 1); paint some background with 1 "
                             "beside the objects (2, 3, ... one id per object)")
        if not (values >= 2).any():
            raise InputError(f"{name} have background strokes but no object; paint whole objects with "
                             "ids 2, 3, ... (napari's 'new label')")
    return labels.astype(np.int64, copy=False)


def n_classes_for(labels: Sequence[np.ndarray], mode: str) -> int:
    """Number of classes the model predicts (background included)."""
    check_mode(mode)
    if is_instance_mode(mode):
        return 3
    top = max(int(np.max(lab)) for lab in labels)
    return max(2, top) if mode == "scribbles" else max(2, top + 1)


def make_target(labels: np.ndarray, mode: str) -> np.ndarray:
    """Training target (same shape, int64): class index per pixel, -1 where ignored.

    ``labels`` is a validated 2D label plane (see :func:`validate_labels`).
    """
    check_mode(mode)
    labels = np.asarray(labels, dtype=np.int64)
    if mode == "scribbles":
        return labels - 1
    if mode == "classes":
        return labels.copy()
    from .instances import boundary_targets

    if mode == "objects":
        # painted objects are whole, so their outline is a boundary whatever lies beyond it;
        # unpainted pixels (0) teach nothing
        objects = np.where(labels >= 2, labels, 0)
        target = np.asarray(boundary_targets(objects), dtype=np.int64)
        target[labels == 0] = IGNORE
        return target
    return np.asarray(boundary_targets(labels), dtype=np.int64)


def head_targets(labels: np.ndarray, mode: str, head: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets of a "flows" or "distance" instance head for one validated 2D label plane.

    Returns the foreground target (Y, X) int64 (0 background, 1 object, -1
    ignored: unpainted pixels of ``objects`` labels) and the float target
    (K, Y, X) float32 of :func:`.flows.targets` (foreground, then flow or
    distance channels). Compute it on the whole plane, before patches are
    cut, so an object cut by a patch border keeps the flows of the whole object.
    """
    from .flows import targets

    if not is_instance_mode(mode):
        raise InputError(f"the {head!r} instance head needs 'instances' or 'objects' labels, not {mode!r}")
    regression, ignore = targets(np.asarray(labels), "instances" if mode == "instances" else "partial", head)
    fg = regression[0].astype(np.int64)
    fg[ignore] = IGNORE
    return fg, regression


def object_instances(labels: np.ndarray, mode: str) -> np.ndarray | None:
    """The object ids of a validated label plane (0 = none), or None for class modes."""
    if mode == "instances":
        return np.asarray(labels)
    if mode == "objects":
        return np.where(np.asarray(labels) >= 2, labels, 0)
    return None


def annotated_fraction(target: np.ndarray) -> float:
    """Fraction of pixels that carry a target (not ignored)."""
    return float(np.mean(target != IGNORE)) if target.size else 0.0


def to_correction(pred: np.ndarray, mode: str, kind: str = "semantic") -> np.ndarray:
    """Turn a prediction into labels in ``mode`` that can be corrected and trained on again.

    ``kind`` says what ``pred`` holds: ``"semantic"`` (0 = background,
    k = class k) or ``"instances"`` (object ids). Semantic predictions become
    dense scribbles (value + 1, every pixel annotated) or classes
    (unchanged); object ids stay ids for ``instances`` and become one
    foreground class for the semantic modes.
    """
    check_mode(mode)
    if kind not in ("semantic", "instances"):
        raise InputError(f"unknown prediction kind {kind!r}; expected 'semantic' or 'instances'")
    pred = np.asarray(pred)
    if kind == "instances" and not is_instance_mode(mode):
        pred = (pred > 0).astype(np.uint8)
    if mode == "objects":
        if kind != "instances":  # semantic foreground: each connected piece becomes one object
            from scipy import ndimage as ndi

            pred = ndi.label(pred > 0)[0]
        top = int(pred.max()) if pred.size else 0
        return (pred.astype(np.int64) + 1).astype(np.uint32 if top + 1 > 65535 else np.uint16)
    if mode == "scribbles":
        return (pred.astype(np.int64) + 1).astype(np.uint16 if pred.max() > 253 else np.uint8)
    return pred.copy()
