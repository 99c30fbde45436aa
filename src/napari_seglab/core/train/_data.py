"""Training samples from image / label pairs: validation, annotated planes, resampling, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import (
    Normalization,
    Sample,
    check_scale,
    estimate_scale,
    percentiles,
    resample_image,
    resample_labels,
    scaled_shape,
    to_chw,
)
from ..errors import InputError
from ..io import check_image_values, guess_axes
from ..labels import get_mode, head_targets, make_target, validate_labels


def _planes(image: np.ndarray, labels: np.ndarray, axes: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split an image and its labels into annotated 2D planes ((Y, X[, C]), (Y, X))."""
    lead = [i for i, a in enumerate(axes) if a in "TZ"]
    if not lead:
        return [(image, labels)]
    out = []
    shape = [image.shape[i] for i in lead]
    for idx in np.ndindex(*shape):
        lab = labels[idx]
        if np.any(lab):
            out.append((image[idx], lab))
    return out


def prepare_samples(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], mode: str, *,
                    axes: Sequence[str | None] | None = None, read_255_as_foreground: bool = False,
                    norm: Normalization | None = None, scale: float | None = 1.0, head: str = "boundary"
                    ) -> tuple[list[Sample], Normalization, int]:
    """Validate image/label pairs and turn them into normalised 2D samples.

    ``scale``: resampling factor applied to every plane (objects then reach the
    size the network resolves best); None estimates it from the painted
    objects (``instances`` / ``objects`` modes) or from the image at the
    strokes (``scribbles``), see :func:`~napari_seglab.core.data._scale.estimate_scale`.
    ``head``: "flows" / "distance" give each sample the foreground target and
    the head's float target (instance modes only); "boundary" the 3 classes.
    Returns (samples, normalisation, input channels);
    :func:`prepare_training_data` also returns the scale used and the objects' typical area.
    """
    samples, norm, channels, _, _ = prepare_training_data(images, labels, mode, axes=axes, norm=norm, scale=scale,
                                                        read_255_as_foreground=read_255_as_foreground, head=head)
    return samples, norm, channels


def _annotated_planes(images, labels, mode, axes, read_255_as_foreground):
    """Validated (image plane, label plane) pairs of every annotated plane, and the channel count."""
    if len(images) != len(labels):
        raise InputError(f"{len(images)} image(s) but {len(labels)} label image(s); give one labels per image")
    if not images:
        raise InputError("no training images")
    planes, channels = [], None
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        img = check_image_values(np.asarray(img), f"image {i + 1}")
        ax = (axes[i] if axes else None) or guess_axes(img.shape)
        spatial = img.shape[:-1] if "C" in ax else img.shape
        lab = validate_labels(np.asarray(lab), spatial, mode, read_255_as_foreground=read_255_as_foreground,
                              name=f"labels {i + 1}")
        c = img.shape[-1] if "C" in ax else 1
        if channels is not None and c != channels:
            raise InputError(f"image {i + 1} has {c} channel(s) but image 1 has {channels}")
        channels = c
        for plane, plane_lab in _planes(img, lab, ax):
            chw = to_chw(plane).astype(np.float32, copy=False)
            if float(chw.max()) == float(chw.min()):
                raise InputError(f"image {i + 1} is constant (all pixels {chw.min():g}); nothing to learn from")
            planes.append((chw, plane_lab))
    if not planes:
        raise InputError("no annotated plane found in the labels")
    return planes, channels


#: in the ``objects`` mode, background strokes covering less than this share of the painted objects' area
#: get a warning. Measured on a real DSB2018 nuclei image with a quarter of the nuclei painted (400 steps):
#: strokes at 24 % of the objects' area gave AP@0.5 0.85 (the image at 1x and at 2x with the strokes painted
#: twice as broad); the same strokes on the image at 2x, 6 %, made the model paint 1.9x the true
#: foreground and AP@0.5 fell to 0.40 (docs/benchmarks.md)
MIN_BACKGROUND_SHARE = 0.1


def background_share(labels: Sequence[np.ndarray | None], mode: str) -> float | None:
    """Background strokes' pixels over the painted whole objects' pixels (``objects`` mode), else None."""
    if mode != "objects":
        return None
    strokes = objects = 0
    for lab in labels:
        if lab is None:
            continue
        lab = np.asarray(lab)
        strokes += int(np.count_nonzero(lab == 1))
        objects += int(np.count_nonzero(lab >= 2))
    return strokes / objects if objects else None


def background_note(labels: Sequence[np.ndarray | None], mode: str) -> str | None:
    """A warning when the ``objects`` mode has too little background painted for its objects (else None)."""
    share = background_share(labels, mode)
    if share is None or share >= MIN_BACKGROUND_SHARE:
        return None
    return (f"the background strokes cover {share:.0%} of the painted objects' area: with so little "
            "background the model tends to spread objects into it (on a real nuclei image, 6 % gave 1.9x the "
            f"true foreground; 24 % matched it). Paint more background (at least {MIN_BACKGROUND_SHARE:.0%}), "
            "with broader strokes, across the image's different backgrounds")


def prepare_training_data(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], mode: str, *,
                          axes: Sequence[str | None] | None = None, read_255_as_foreground: bool = False,
                          norm: Normalization | None = None, scale: float | None = None, head: str = "boundary"
                          ) -> tuple[list[Sample], Normalization, int, float, float | None]:
    """Like :func:`prepare_samples`, also returning the object scale used (None = estimated) and the median
    area of the objects at that scale: of the painted whole objects, or for strokes a disc of the diameter
    estimated from the image (None: neither is known)."""
    planes, channels = _annotated_planes(images, labels, mode, axes, read_255_as_foreground)
    diameter = None
    if scale is None:
        scale, diameter = estimate_scale(planes, mode)
    scale = check_scale(scale)
    norm = norm or Normalization()
    samples: list[Sample] = []
    areas: list[np.ndarray] = []
    for chw, lab in planes:
        if scale != 1.0:
            shape = scaled_shape(lab.shape, scale)
            chw, lab = resample_image(chw, shape), resample_labels(lab, shape)
        objects = get_mode(mode).objects(lab)
        if objects is not None:
            counts = np.bincount(np.asarray(objects, np.int64).ravel())[1:]
            areas.append(counts[counts > 0])
        if head != "boundary":  # targets of the whole (resampled) plane, before any patch is cut
            target, regression = head_targets(lab, mode, head)
            samples.append(Sample(norm.apply(chw), target, None, regression, head))
            continue
        target = make_target(lab, mode)
        samples.append(Sample(norm.apply(chw), target, get_mode(mode).detector_objects(lab)))
    # record the training data's intensity range for images that need it
    first = np.asarray(images[0])
    lo, hi = percentiles(to_chw(first) if first.ndim == 2 else np.moveaxis(first.reshape(-1, channels), -1, 0),
                         norm.low, norm.high)
    norm.lo, norm.hi = tuple(lo), tuple(hi)
    area = np.concatenate(areas) if areas else np.zeros(0)
    if area.size:
        typical = float(np.median(area))
    else:  # strokes: the diameter read from the image at the foreground strokes, if it was
        typical = float(np.pi * (diameter * scale / 2) ** 2) if diameter else None
    return samples, norm, channels, scale, typical
