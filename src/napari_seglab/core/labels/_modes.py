"""Label modes: how painted labels become training targets, and predictions editable labels again.

========== ====================== ============================== ===========================
mode       0 means                other values                   target (-1 = ignored)
========== ====================== ============================== ===========================
scribbles  not annotated (ignored) 1 = background, 2..K = classes class = value - 1
instances  background             one id per object              0 bg, 1 interior, 2 boundary
objects    not annotated (ignored) 1 = background, 2.. = one id   0 bg, 1 interior, 2 boundary
                                  per whole painted object       (unpainted pixels ignored)
classes    background             class ids 1..K                 class = value
boxes      not annotated (ignored) annotated area (any value)     boxes drawn apart (rows)
========== ====================== ============================== ===========================

``boxes`` trains box detectors from box rows given beside the labels (see
:mod:`napari_seglab.core.labels._boxes`); its labels, when given, only mark the *annotated area*: the
places where every object has its box. Patches are cut inside the bounding
rectangle of each connected annotated region (so draw the area as
rectangles), and nothing outside it is ever taught as background. No area
labels (None) means the whole image is annotated; a region or image without
a box is a valid negative: it teaches "nothing here".

Each mode is a :class:`LabelMode` object (look one up with :func:`get_mode`)
that carries its legend, validation, targets, class names and correction.
The module-level functions (:func:`validate_labels`, :func:`make_target`...)
take a mode name and delegate to it.

With the "flows" or "distance" instance head (see :meth:`LabelMode.head_targets`),
the ``instances`` and ``objects`` targets are the foreground (0 / 1, -1
ignored) plus the head's float target.

Predicted semantic labels use ``0 = background, k = class k`` in every mode
(a scribble value minus one); ``instances`` predictions are object ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

IGNORE = -1
#: unpainted pixels this close (px, after resampling) to a whole painted object are background in the
#: ``objects`` mode (see :meth:`_Objects.with_margin`; chosen on a real DSB2018 image, docs/annotating.md)
OBJECT_MARGIN = 3.0
PREDICTION_KINDS = ("semantic", "instances")


@dataclass(frozen=True)
class LabelMode:
    """One label convention. Subclasses say how their values read; the base holds what they share."""

    name: str
    #: one line per convention, shown as the legend of the Train dock and in ``seglab train --help``
    legend: str
    #: 0 means "not annotated": ignored by every loss, and validation holds out whole strokes
    sparse: bool = False
    #: models trained on these labels predict objects (one id each) rather than classes
    instances: bool = False
    #: every object is painted whole on an annotated background (Mask R-CNN can learn them)
    whole_objects: bool = False
    #: what self-training adds to the painted labels during training: "pixels" (the unpainted pixels the
    #: model is sure of get its class), "objects" (its confident whole objects become painted objects) or
    #: "volumes" (the unpainted planes of a z-stack painted on some planes get the model's 3D objects);
    #: "" = self-training does not apply
    self_training: str = ""
    #: what the user paints, in messages ("paint some strokes first")
    painted: str = "objects"
    #: what a class of painted pixels is made of, for the validation hold-out message
    units: str = "strokes"
    #: label value of class index 0 (the background): a class index ``k`` is painted as ``k + shift``
    shift: int = 0

    # ------------------------------------------------------------------ validation
    def validate(self, labels: np.ndarray, spatial_shape: Sequence[int], *, read_255_as_foreground: bool = False,
                 name: str = "labels") -> np.ndarray:
        """Check painted labels against the image and this mode; return them as int64.

        ``labels`` must be an integer (or bool) array of ``spatial_shape`` (the
        image shape without its channel axis). Rejected with a message saying why:
        a shape mismatch, float or negative values, an empty annotation, a single
        class, and 0/255 masks unless ``read_255_as_foreground``.
        """
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
        if set(values.tolist()) in ({0, 255}, {255}):
            if not read_255_as_foreground:
                raise InputError(f"{name} are a 0/255 mask; enable 'read 255 as foreground' "
                                 "(CLI: --mask-255) to read 255 as foreground")
            labels = (labels == 255).astype(np.uint8)
            if not self.instances:  # a dense background / foreground mask: every pixel annotated
                labels = labels + self.shift
            values = np.unique(labels)
        if not (values != 0).any():
            raise InputError(f"{name} are empty: paint some {self.painted} first")
        self._check_values(values, name)
        return labels.astype(np.int64, copy=False)

    def _check_values(self, values: np.ndarray, name: str) -> None:
        """Refuse an annotation this mode cannot learn from (``values``: the sorted distinct labels)."""

    # ------------------------------------------------------------------ targets
    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Training target of a validated 2D plane (same shape, int64): class index, -1 where ignored."""
        return np.asarray(labels, dtype=np.int64) - self.shift

    def ignore_mask(self, labels: np.ndarray) -> np.ndarray:
        """True where the labels teach nothing (the pixels the losses ignore)."""
        labels = np.asarray(labels)
        return labels == 0 if self.sparse else np.zeros(labels.shape, bool)

    def decode(self, classes: np.ndarray) -> np.ndarray:
        """Class indices (0 = background; -1 = ignored) back to label values of this mode (int64)."""
        classes = np.asarray(classes, dtype=np.int64)
        return np.where(classes == IGNORE, 0, classes + self.shift) if self.sparse else classes + self.shift

    def objects(self, labels: np.ndarray) -> np.ndarray | None:
        """The object ids of a validated label plane (0 = none), or None for class modes."""
        return None

    def detector_objects(self, labels: np.ndarray) -> np.ndarray | None:
        """Object ids a box detector (Mask R-CNN) trains on, or None: only whole objects on a painted background."""
        return self.objects(labels) if self.whole_objects else None

    def head_targets(self, labels: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray]:
        """Targets of a "flows" or "distance" instance head for one validated 2D label plane.

        Returns the foreground target (Y, X) int64 (0 background, 1 object, -1
        ignored) and the float target (K, Y, X) float32 of :func:`~napari_seglab.core.objects._flows.targets`.
        Compute it on the whole plane, before patches are cut, so an object cut
        by a patch border keeps the flows of the whole object.
        """
        raise InputError(f"the {head!r} instance head needs 'instances' or 'objects' labels, not {self.name!r}")

    # ------------------------------------------------------------------ classes
    def n_classes(self, labels: Sequence[np.ndarray]) -> int:
        """Number of classes the model predicts (background included) for validated label planes."""
        top = max(int(np.max(lab)) for lab in labels)
        return max(2, top + 1 - self.shift)

    def target_classes(self, targets: Sequence[np.ndarray]) -> int:
        """Like :meth:`n_classes`, from training targets (class indices, -1 ignored)."""
        return self.n_classes([self.decode(t) for t in targets])

    def class_names(self, n_classes: int, head: str = "boundary") -> tuple[str, ...]:
        """Names of the classes a model of this mode predicts ("background" first)."""
        return ("background", *(f"class {i}" for i in range(1, n_classes)))

    # ------------------------------------------------------------------ corrections
    def correction(self, pred: np.ndarray, kind: str = "semantic") -> np.ndarray:
        """Turn a prediction into labels of this mode that can be corrected and trained on again.

        ``kind`` says what ``pred`` holds: ``"semantic"`` (0 = background,
        k = class k) or ``"instances"`` (object ids). Object ids become one
        foreground class in the class modes. Returns a new array.
        """
        if kind not in PREDICTION_KINDS:
            raise InputError(f"unknown prediction kind {kind!r}; expected 'semantic' or 'instances'")
        pred = np.asarray(pred)
        if kind == "instances":
            pred = (pred > 0).astype(np.uint8)
        if not self.shift:
            return pred.copy()
        return (pred.astype(np.int64) + self.shift).astype(np.uint16 if pred.max(initial=0) > 253 else np.uint8)

    def new_label(self, labels: np.ndarray) -> int:
        """The label value to paint with first on corrected ``labels``: the first class after the background."""
        return 1 + self.shift


@dataclass(frozen=True)
class _Scribbles(LabelMode):
    def _check_values(self, values, name):
        nonzero = values[values != 0]
        if nonzero.size < 2:
            only = int(nonzero[0])
            what = "background (1)" if only == 1 else f"class {only}"
            raise InputError(f"{name} contain a single class ({what} only); paint background with 1 "
                             "and objects with 2 (or more classes with 3, 4, ...)")


@dataclass(frozen=True)
class _Classes(LabelMode):
    def _check_values(self, values, name):
        if values.size < 2:
            raise InputError(f"{name} contain a single class only; a dense class mask needs "
                             "background (0) and at least one class")


@dataclass(frozen=True)
class _Objects(LabelMode):
    """Object modes: targets are background / interior / boundary, or the instance head's."""

    def _check_values(self, values, name):
        if self.sparse:
            if 1 not in values:
                raise InputError(f"{name} have no background strokes (value 1); paint some background with 1 "
                                 "beside the objects (2, 3, ... one id per object)")
            if not (values >= 2).any():
                raise InputError(f"{name} have background strokes but no object; paint whole objects with "
                                 "ids 2, 3, ... (napari's 'new label')")
        elif values[0] != 0:
            raise InputError(f"{name} have no background (0) pixels; instance labels need background")

    def objects(self, labels):
        labels = np.asarray(labels)
        return np.where(labels >= 2, labels, 0) if self.sparse else labels

    def with_margin(self, labels):
        """Sparse labels with the unpainted pixels near a whole painted object read as background (1).

        A painted object is whole, so what lies just beyond its outline is
        background, or at most the rim of an unpainted neighbour that touches it
        (where the boundary class would teach the same thing). Without this
        margin the background is learnt only from strokes far from the objects
        and the predicted objects spread past their edges: on a real DSB2018
        image with a quarter of the nuclei painted, objects came out 1.4x their
        true area and AP@0.75 was 0.06. :data:`OBJECT_MARGIN` is in the pixels
        of the resampled plane (objects about 24 px across).
        """
        labels = np.asarray(labels)
        if not self.sparse:
            return labels
        from scipy import ndimage as ndi

        painted = labels >= 2
        if not painted.any():
            return labels
        near = ndi.distance_transform_edt(~painted) <= OBJECT_MARGIN
        return np.where(near & (labels == 0), 1, labels).astype(labels.dtype, copy=False)

    def targets(self, labels):
        from ..objects import boundary_targets

        labels = self.with_margin(labels)
        # painted objects are whole, so their outline is a boundary whatever lies beyond it
        target = np.asarray(boundary_targets(self.objects(labels)), dtype=np.int64)
        target[self.ignore_mask(labels)] = IGNORE  # unpainted pixels (0) of sparse labels teach nothing
        return target

    def decode(self, classes):
        raise InputError(f"{self.name!r} targets are object parts (background / interior / boundary), "
                         "not label values")

    def head_targets(self, labels, head):
        from ..objects import targets

        regression, ignore = targets(self.with_margin(labels), "partial" if self.sparse else "instances", head)
        fg = regression[0].astype(np.int64)
        fg[ignore] = IGNORE
        return fg, regression

    def n_classes(self, labels):
        return 3

    def target_classes(self, targets):
        return 3

    def class_names(self, n_classes, head="boundary"):
        return ("background", "object") if head != "boundary" or n_classes == 2 else \
            ("background", "interior", "boundary")

    def correction(self, pred, kind="semantic"):
        if kind not in PREDICTION_KINDS:
            raise InputError(f"unknown prediction kind {kind!r}; expected 'semantic' or 'instances'")
        pred = np.asarray(pred)
        if kind != "instances":  # semantic foreground: each connected piece becomes one object
            from scipy import ndimage as ndi

            pred = ndi.label(pred > 0)[0]
        if not self.sparse:
            return pred.copy()
        top = int(pred.max()) if pred.size else 0
        return (pred.astype(np.int64) + 1).astype(np.uint32 if top + 1 > 65535 else np.uint16)

    def new_label(self, labels):
        return (int(np.max(labels)) if np.size(labels) else 0) + 1


@dataclass(frozen=True)
class _BoxArea(LabelMode):
    """``boxes``: the objects come as boxes; the labels (optional) mark the annotated area (nonzero)."""

    def validate(self, labels, spatial_shape, *, read_255_as_foreground=False, name="labels"):
        """The annotated area as (Y, X...) int64 0 / 1, or None (no labels: the whole image is annotated)."""
        if labels is None:
            return None
        labels = np.asarray(labels)
        if tuple(labels.shape) != tuple(spatial_shape):
            raise InputError(f"{name} (the annotated area) shape {tuple(labels.shape)} does not match the image "
                             f"shape {tuple(spatial_shape)} (without channels)")
        if labels.dtype.kind not in "uib":
            raise InputError(f"{name} (the annotated area) have dtype {labels.dtype}; mark the area with integers "
                             "(nonzero = annotated)")
        if not labels.any():
            raise InputError(f"{name}: the annotated area is empty; mark where every object is boxed (nonzero), "
                             "or give no area to count the whole image as annotated")
        return (labels != 0).astype(np.int64)

    def targets(self, labels):
        return np.where(np.asarray(labels) != 0, 0, IGNORE).astype(np.int64)

    def ignore_mask(self, labels):
        return np.asarray(labels) == 0

    def n_classes(self, labels):
        return 2

    def target_classes(self, targets):
        return 2

    def class_names(self, n_classes, head="boundary"):
        return ("background", "object") if n_classes <= 2 else \
            ("background", *(f"class {i}" for i in range(1, n_classes)))

    def decode(self, classes):
        raise InputError("'boxes' labels mark the annotated area; they have no classes to decode")

    def correction(self, pred, kind="semantic"):
        raise InputError("a box detector's prediction is boxes: correct them in the Shapes layer, not as labels")


MODES: dict[str, LabelMode] = {mode.name: mode for mode in (
    _Scribbles("scribbles", "0 = not annotated (ignored); 1 = background; 2, 3, ... = classes", sparse=True,
               self_training="pixels", painted="strokes", shift=1),
    _Objects("instances", "0 = background; each object its own id (1, 2, 3, ...)", instances=True,
             whole_objects=True, self_training="volumes"),
    _Objects("objects", "0 = not annotated (ignored); 1 = background strokes; 2, 3, ... = one id per whole "
             "painted object (napari's 'new label')", sparse=True, instances=True,
             self_training="objects", units="painted objects or background strokes", shift=1),
    _Classes("classes", "0 = background; 1, 2, ... = class ids (every pixel is annotated)"),
    _BoxArea("boxes", "0 = not annotated; nonzero = the annotated area, where every object has its box "
             "(boxes drawn apart: rectangles, class 1, 2, ...); no area = the whole image is annotated",
             sparse=True, painted="boxes", units="boxes"),
)}
LABEL_MODES = tuple(MODES)
#: modes whose models predict objects (one id each) rather than classes
INSTANCE_MODES = tuple(name for name, mode in MODES.items() if mode.instances)
LEGEND = {name: mode.legend for name, mode in MODES.items()}


def get_mode(mode: str | LabelMode) -> LabelMode:
    """The :class:`LabelMode` called ``mode`` (a LabelMode passes through); InputError lists the known ones."""
    if isinstance(mode, LabelMode):
        return mode
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        raise InputError(f"unknown label mode {str(mode)[:40]!r}; choose one of {', '.join(LABEL_MODES)}") from None


# ---------------------------------------------------------------------- by name (the mode objects do the work)
def is_instance_mode(mode: str) -> bool:
    """True for label modes whose models predict objects (``instances``, ``objects``)."""
    return mode in MODES and MODES[mode].instances


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known label mode, else raise an InputError listing them."""
    return get_mode(mode).name


def validate_labels(labels: np.ndarray, spatial_shape: Sequence[int], mode: str, *,
                    read_255_as_foreground: bool = False, name: str = "labels") -> np.ndarray:
    """:meth:`LabelMode.validate` of the mode called ``mode``."""
    return get_mode(mode).validate(labels, spatial_shape, read_255_as_foreground=read_255_as_foreground, name=name)


def n_classes_for(labels: Sequence[np.ndarray], mode: str) -> int:
    """Number of classes the model predicts (background included)."""
    return get_mode(mode).n_classes(labels)


def make_target(labels: np.ndarray, mode: str) -> np.ndarray:
    """:meth:`LabelMode.targets`: class index per pixel (int64), -1 where ignored."""
    return get_mode(mode).targets(labels)


def head_targets(labels: np.ndarray, mode: str, head: str) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`LabelMode.head_targets` of the mode called ``mode``."""
    return get_mode(mode).head_targets(labels, head)


def object_instances(labels: np.ndarray, mode: str) -> np.ndarray | None:
    """The object ids of a validated label plane (0 = none), or None for class modes."""
    return get_mode(mode).objects(labels)


def annotated_fraction(target: np.ndarray) -> float:
    """Fraction of pixels that carry a target (not ignored)."""
    return float(np.mean(target != IGNORE)) if target.size else 0.0


def to_correction(pred: np.ndarray, mode: str, kind: str = "semantic") -> np.ndarray:
    """:meth:`LabelMode.correction` of the mode called ``mode``."""
    return get_mode(mode).correction(pred, kind)


def compact_labels(labels: np.ndarray, smallest=np.uint16, widest=np.uint32) -> np.ndarray:
    """``labels`` in the smallest unsigned dtype from ``smallest`` to ``widest`` that holds them.

    uint16 labels are what TIFF readers and napari handle best (napari draws
    uint8/uint16 straight from the array and re-maps wider integers on the GUI
    thread, so the docks pass ``widest=np.uint16``). Non-integer, negative or
    too large labels come back unchanged.
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.dtype.kind not in "ui":
        return labels
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        return labels
    for dtype in (np.uint8, np.uint16, np.uint32):
        size = np.dtype(dtype).itemsize
        if np.dtype(smallest).itemsize <= size <= np.dtype(widest).itemsize and high <= np.iinfo(dtype).max:
            return labels if labels.dtype == dtype else labels.astype(dtype)
    return labels
