"""Training data of box detectors: samples from box rows or instance labels, the hold-out, box AP validation.

The rule for what is annotated (the ``boxes`` label mode, :mod:`napari_seglab.core.labels._modes`):

- no area labels: the whole image (2D), or every plane that has a box
  (stacks), is annotated: every object in it has its box;
- area labels: each connected annotated region (nonzero) counts by its
  bounding rectangle, and becomes a sample of its own; patches are cut only
  inside samples, so an object outside the area is never taught as
  background. Boxes outside every region are not used (a Message says so);
  a box cut by a region's border is clipped (and dropped under
  :data:`~napari_seglab.core.data._box_patches.MIN_VISIBLE`);
- an image, plane or region without a box is a valid negative.

``instances`` labels train box families too: one box (class 1) per object,
the whole plane annotated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data import (
    Normalization,
    Sample,
    check_scale,
    clip_boxes,
    empty_boxes,
    percentiles,
    resample_image,
    scaled_shape,
    to_chw,
    zoom_boxes,
)
from ..errors import InputError
from ..evaluate import box_scores, plane_key
from ..events import Message, drive
from ..io import check_image_values, guess_axes
from ..labels import boxes_array, check_box, get_mode
from ..models import MAX_CLASSES

#: box runs hold out part of the annotated area for validation only with at least this many boxes:
#: with fewer, AP@0.5 on the few held-out boxes is too noisy to choose a model by (as for scribbles,
#: see :data:`~napari_seglab.core.data._samples.MIN_STROKES_FOR_HOLDOUT`), and each box is worth more in training
MIN_BOXES_FOR_HOLDOUT = 10
#: a hold-out strip narrower than this many pixels holds too little of an object to detect it
MIN_STRIP = 32
#: predictions scoring below this are not kept for validation; AP ranks every kept prediction
VAL_SCORE_THRESHOLD = 0.05


def _checked_rows(rows, index: int, lead_shape: tuple[int, ...], lead_axes: str, plane_shape) -> list[dict]:
    """Rows of image ``index`` (0-based) checked, planes checked, clipped to the image; InputError names the row."""
    h, w = plane_shape
    out = []
    for k, raw in enumerate(rows or ()):
        row = check_box(raw, f"boxes of image {index + 1}, box {k + 1}")
        where = row["where"]  # a CSV's rows name their file and line
        if row["class"] >= MAX_CLASSES:
            raise InputError(f"{where}: class {row['class']} is above the largest class id a model can hold "
                             f"({MAX_CLASSES - 1}); number the classes 1, 2, 3, ...")
        plane = plane_key(row)
        if len(plane) != len(lead_shape) or any(not 0 <= p < n for p, n in zip(plane, lead_shape, strict=False)):
            have = (f"a stack of {' x '.join(map(str, lead_shape))} planes ({lead_axes})" if lead_shape
                    else "a 2D image (no planes)")
            raise InputError(f"{where}: plane {row.get('plane') or '(none)'!r} does not exist; image {index + 1} is "
                             f"{have}" + ("; give each box the index of its plane" if lead_shape else ""))
        if row["y0"] >= h or row["x0"] >= w or row["y1"] <= 0 or row["x1"] <= 0:
            raise InputError(f"{where}: the box (y0={row['y0']:g}, x0={row['x0']:g}, y1={row['y1']:g}, "
                             f"x1={row['x1']:g}) lies outside the image ({h} x {w} pixels)")
        row.update(y0=max(0.0, row["y0"]), x0=max(0.0, row["x0"]), y1=min(float(h), row["y1"]),
                   x1=min(float(w), row["x1"]))  # a box sticking out is clipped
        out.append(row)
    return out


def _regions(area: np.ndarray | None, shape) -> list[tuple[slice, slice]]:
    """Bounding rectangles of the annotated regions of a plane (the whole plane without an area)."""
    if area is None:
        return [(slice(0, shape[0]), slice(0, shape[1]))]
    from scipy import ndimage as ndi

    return [s for s in ndi.find_objects(ndi.label(area != 0)[0]) if s is not None]


def _instance_boxes(objects: np.ndarray) -> np.ndarray:
    from ..objects import boxes_from_labels

    boxes, _ = boxes_from_labels(np.asarray(objects))
    out = np.ones((len(boxes), 5), np.float32)
    if len(boxes):
        out[:, :4] = np.asarray(boxes, np.float32)[:, :4]
    return out


def _image_planes(i, img, lab, rows, ax, mode):
    """(chw plane, area or None, boxes (N, 5)) of every annotated plane of image ``i``, and its channels."""
    spatial = img.shape[:-1] if "C" in ax else img.shape
    lead = [k for k, a in enumerate(ax) if a in "TZ"]
    lead_shape = tuple(spatial[k] for k in lead)
    if mode == "boxes":
        area = get_mode(mode).validate(lab, spatial, name=f"labels {i + 1}")
        rows = _checked_rows(rows, i, lead_shape, "".join(ax[k] for k in lead), spatial[-2:])
    else:
        if rows is not None:
            raise InputError("boxes are given: train with the 'boxes' label mode (labels, if any, then mark the "
                             "annotated area)")
        area = get_mode(mode).validate(np.asarray(lab), spatial, name=f"labels {i + 1}")
    out = []
    for index in np.ndindex(*lead_shape):
        plane_img = img[index]
        if mode == "boxes":
            boxes = boxes_array(rows, index)
            plane_area = None if area is None else area[index]
            if (plane_area is None and lead_shape and not len(boxes)) or \
                    (plane_area is not None and not plane_area.any()):
                continue  # a plane nobody annotated
        else:
            objects = get_mode(mode).objects(area[index])
            if not objects.any():
                continue
            boxes, plane_area = _instance_boxes(objects), None
        chw = to_chw(plane_img).astype(np.float32, copy=False)
        if float(chw.max()) == float(chw.min()):
            raise InputError(f"image {i + 1} is constant (all pixels {chw.min():g}); nothing to learn from")
        out.append((chw, plane_area, boxes))
    return out, (img.shape[-1] if "C" in ax else 1)


def prepare_box_data(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None],
                     boxes: Sequence[Sequence[dict] | None] | None, mode: str, *,
                     axes: Sequence[str | None] | None = None, norm: Normalization | None = None,
                     scale: float | None = None) -> tuple[list[Sample], Normalization, int, float, list[Message]]:
    """Box samples of images with box rows (``mode`` "boxes") or instance labels (``mode`` "instances").

    ``labels``: per image the annotated area (None: the whole image; see the
    module's rule) or the instance labels. ``boxes``: per image a list of box
    rows (or None: no box, a negative). ``scale``: resampling factor (None:
    1, box detectors resample nothing unless asked); boxes scale with it.
    Returns (samples, normalisation, channels, scale, messages).
    """
    if not images:
        raise InputError("no training images")
    labels = list(labels) if labels is not None else [None] * len(images)
    if len(labels) != len(images):
        raise InputError(f"{len(images)} image(s) but {len(labels)} label image(s); give one labels per image")
    if mode == "boxes" and boxes is None:
        raise InputError("the 'boxes' label mode needs boxes (a list of box rows per image)")
    boxes = list(boxes) if boxes is not None else [None] * len(images)
    if len(boxes) != len(images):
        raise InputError(f"{len(images)} image(s) but {len(boxes)} box list(s); give one (maybe empty) per image")
    scale = check_scale(1.0 if scale is None else scale)
    planes, channels = [], None
    for i, img in enumerate(images):
        img = check_image_values(np.asarray(img), f"image {i + 1}")
        ax = (axes[i] if axes else None) or guess_axes(img.shape)
        if mode != "boxes" and labels[i] is None:
            raise InputError(f"labels {i + 1} are missing; {mode!r} labels are needed for every image")
        found, c = _image_planes(i, img, labels[i], boxes[i], ax, mode)
        if channels is not None and c != channels:
            raise InputError(f"image {i + 1} has {c} channel(s) but image 1 has {channels}")
        channels = c
        planes += found
    if not planes:
        raise InputError("no annotated plane: give boxes on the planes of the stack, or an annotated area")
    norm = norm or Normalization()
    samples, outside = [], 0
    for chw, area, plane_boxes in planes:
        used = np.zeros(len(plane_boxes), bool)
        for ys, xs in _regions(area, chw.shape[-2:]):
            inside = _inside(plane_boxes, ys, xs)
            used |= inside
            part = chw[:, ys, xs]
            sub = clip_boxes(plane_boxes[inside], ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start)
            if scale != 1.0:
                shape = scaled_shape(part.shape[-2:], scale)
                sub = zoom_boxes(sub, shape[0] / part.shape[-2], shape[1] / part.shape[-1])
                part = resample_image(part, shape)
            samples.append(Sample(norm.apply(part), np.zeros(part.shape[-2:], np.int64), boxes=sub))
        outside += int((~used).sum())
    notes = []
    if outside:
        notes.append(Message(f"{outside} box(es) lie outside the annotated area and are not used", "warning"))
    n_boxes = sum(len(s.boxes) for s in samples)
    notes.append(Message(f"box training data: {n_boxes} boxes in {len(samples)} annotated region(s)"
                         + (f", {sum(not len(s.boxes) for s in samples)} of them negative (no box)"
                            if any(not len(s.boxes) for s in samples) else "")))
    first = np.asarray(images[0])
    lo, hi = percentiles(to_chw(first) if first.ndim == 2 else np.moveaxis(first.reshape(-1, channels), -1, 0),
                         norm.low, norm.high)
    norm.lo, norm.hi = tuple(lo), tuple(hi)
    return samples, norm, channels, scale, notes


def _inside(boxes: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
    """Which boxes overlap the rectangle (ys, xs)."""
    return (boxes[:, 0] < ys.stop) & (boxes[:, 2] > ys.start) & (boxes[:, 1] < xs.stop) & (boxes[:, 3] > xs.start)


def check_box_density(samples: Sequence[Sample], patch: int, max_objects: int, model: str) -> None:
    """Refuse box samples that put more than ``max_objects`` boxes in reach of one ``patch`` x ``patch`` patch.

    ``max_objects``: the most objects the model gives for one image (its
    detections per image); a patch with more boxes than that teaches what it
    can never answer, and the detector's box matching grows with boxes x
    anchors. A box counts in a patch only when its centre is inside (a box
    clipped to less than half is dropped, :data:`~napari_seglab.core.data._box_patches.MIN_VISIBLE`), so the
    boxes of every 2 x 2 block of patch-sized cells bound those of any patch
    within it. InputError names the place and the count.
    """
    for s in samples:
        boxes = np.asarray(s.boxes, np.float32).reshape(-1, 5)
        if len(boxes) <= max_objects:
            continue
        h, w = s.target.shape
        cells = (-(-h // patch) + 1, -(-w // patch) + 1)
        cy = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 // patch).astype(np.int64), 0, cells[0] - 2)
        cx = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 // patch).astype(np.int64), 0, cells[1] - 2)
        counts = np.zeros(cells, np.int64)
        np.add.at(counts, (cy, cx), 1)
        blocks = counts[:-1, :-1] + counts[1:, :-1] + counts[:-1, 1:] + counts[1:, 1:]
        if blocks.max() > max_objects:
            by, bx = np.unravel_index(int(np.argmax(blocks)), blocks.shape)
            raise InputError(f"{int(blocks.max())} boxes lie within {2 * patch} x {2 * patch} pixels (from y "
                             f"{by * patch}, x {bx * patch}) of the training data; a {model} model gives at most "
                             f"{max_objects} objects per image, so it cannot learn that many in one {patch} px "
                             "patch: look for repeated rows, or train with a smaller --patch")


def box_classes(samples: Sequence[Sample]) -> int:
    """Classes a detector of these samples predicts, background included (at least 2)."""
    top = max((int(s.boxes[:, 4].max()) for s in samples if s.boxes is not None and len(s.boxes)), default=1)
    return max(2, top + 1)


# ----------------------------------------------------------------------------- the hold-out
def _cut(sample: Sample, start: int, stop: int, axis: int) -> Sample:
    """The part [start, stop) of ``sample`` along ``axis`` (0 = Y, 1 = X), boxes clipped to it."""
    h, w = sample.target.shape
    ys = slice(start, stop) if axis == 0 else slice(0, h)
    xs = slice(start, stop) if axis == 1 else slice(0, w)
    boxes = clip_boxes(sample.boxes, ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start)
    return Sample(sample.image[:, ys, xs], sample.target[ys, xs], boxes=boxes)


def _strip_cut(sample: Sample, fraction: float, rng: np.random.Generator) -> tuple[Sample, Sample] | None:
    """(training part, held-out strip) of ``sample``: a strip across its longer side, ``fraction`` of it, at a
    randomly chosen end; the cut is moved (by up to a quarter of the strip) to cross as few boxes as it can."""
    h, w = sample.target.shape
    axis = 0 if h >= w else 1
    length = (h, w)[axis]
    strip = int(round(length * fraction))
    if strip < MIN_STRIP or length - strip < MIN_STRIP:
        return None
    at_end = bool(rng.integers(2))
    target = length - strip if at_end else strip
    slack = strip // 4
    lo, hi = sample.boxes[:, axis], sample.boxes[:, axis + 2]
    candidates = np.arange(target - slack, target + slack + 1)
    crossed = np.array([int(np.count_nonzero((lo < c) & (hi > c))) for c in candidates])
    best = candidates[np.lexsort((np.abs(candidates - target), crossed))[0]]
    first, second = _cut(sample, 0, int(best), axis), _cut(sample, int(best), length, axis)
    return (first, second) if at_end else (second, first)


def split_boxes(samples: list[Sample], fraction: float, rng: np.random.Generator,
                min_boxes: int = MIN_BOXES_FOR_HOLDOUT) -> tuple[list[Sample], list[Sample], str]:
    """(training samples, held-out samples, why there is no hold-out or "") of box samples.

    Held out: about ``fraction`` of the annotated area with the boxes in it.
    With 4 or more regions, whole regions (drawn at random until the fraction
    is reached, one region at least left to train); otherwise a strip across
    each region's longer side (regions too small for a :data:`MIN_STRIP`
    strip train whole). No hold-out with fewer than ``min_boxes`` boxes.
    """
    n_boxes = sum(len(s.boxes) for s in samples)
    if fraction <= 0:
        return samples, [], "no validation hold-out asked for"
    if n_boxes < min_boxes:
        return samples, [], f"fewer than {min_boxes} boxes, so every box trains"
    if len(samples) >= 4:
        total = sum(s.target.size for s in samples)
        held_ids, area = [], 0
        for k in rng.permutation(len(samples)):
            if area >= fraction * total or len(held_ids) == len(samples) - 1:
                break
            held_ids.append(int(k))
            area += samples[k].target.size
        held = [samples[k] for k in held_ids]
        kept = [s for k, s in enumerate(samples) if k not in held_ids]
    else:
        kept, held = [], []
        for s in samples:
            parts = _strip_cut(s, fraction, rng)
            kept.append(s if parts is None else parts[0])
            held += [] if parts is None else [parts[1]]
    if not held or not sum(len(s.boxes) for s in held):
        return samples, [], "annotated area too small for a validation hold-out with boxes in it"
    return kept, held, ""


class BoxValidator:
    """Held-out regions and their boxes; scores a box detector by box AP@0.5 on them."""

    #: the history / metrics key of the score
    metric = "val_ap50"

    def __init__(self, held: Sequence[Sample]):
        self.crops = [(s.image, s.boxes) for s in held]

    def __bool__(self) -> bool:
        return bool(self.crops)

    @property
    def n_boxes(self) -> int:
        return sum(len(b) for _, b in self.crops)

    def score(self, model: torch.nn.Module, meta, device: torch.device, mode: str = "boxes"
              ) -> tuple[float, list[float]]:
        """(AP@0.5, []) of ``model`` on the held-out regions: the family's ``predict_objects`` on each, all
        regions pooled into one ranking (side by side, so no box of one meets a box of another)."""
        from ..predict import wrap_model

        lm = wrap_model(model, meta, device)
        detect = meta.model.family_entry.predict_objects
        preds, truth, offset = [], [], 0.0
        was_training = model.training
        model.eval()
        try:
            for img, boxes in self.crops:
                _, rows = drive(detect(lm, img, tile=max(img.shape[-2:]), overlap=0.0,
                                       score_threshold=VAL_SCORE_THRESHOLD))
                preds += [{**r, "x0": float(r["x0"]) + offset, "x1": float(r["x1"]) + offset} for r in rows or ()]
                shifted = np.asarray(boxes, np.float64).reshape(-1, 5)[:, :4].copy()
                shifted[:, [1, 3]] += offset
                truth.append(shifted)
                offset += img.shape[-1] + 1000.0
        finally:
            model.train(was_training)
        scores = box_scores(preds, np.concatenate(truth) if truth else empty_boxes()[:, :4], VAL_SCORE_THRESHOLD)
        return float(scores["ap50"]), []
