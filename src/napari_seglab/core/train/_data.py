"""Training samples from image / label pairs: validation, annotated planes, resampling, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

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


#: a ZYX stack's dense labels painted on at least this many consecutive planes can give its ZX and ZY planes
#: (:func:`_orthogonal_planes`). benchmarks/quality_3d.py, the StarDist wheel's real stack (31 planes, all
#: painted), flows head, 150 steps, seeds 0-2, 3D prediction: AP@0.5 0.735 / 0.812 / 0.812 against
#: 0.500 / 0.758 / 0.279 from the YX planes alone, AP@0.75 0.37 / 0.12 / 0.38 against 0.00 / 0.07 / 0.02, the
#: predicted foreground 0.96-1.17x the true one instead of 1.20-1.63x; a synthetic stack even (0.694 / 0.704)
MIN_ORTHOGONAL_RUN = 3
#: ... when the run is at least this many typical objects deep (planes x anisotropy over the median diameter of
#: the objects painted on it): thinner, every section is a nucleus cut at both faces. Same stack and steps:
#: 10 painted planes (1.8 diameters) AP@0.5 0.727 / 0.818 with the sections against 0.758 / 0.444 without
#: (seeds 0-1); 3 planes (0.55 diameters) over-split with them (38 / 45 / 36 objects for 31, AP@0.5 0.41 / 0.27
#: / 0.40; without them 0.23 / 0.46, merged)
MIN_RUN_DEPTH = 1.5


def painted_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of at least MIN_ORTHOGONAL_RUN consecutive painted planes of a (Z, Y, X) labels."""
    painted = [bool(np.any(p)) for p in labels]
    runs, start = [], None
    for z, on in enumerate([*painted, False]):
        if on and start is None:
            start = z
        elif not on and start is not None:
            if z - start >= MIN_ORTHOGONAL_RUN:
                runs.append((start, z))
            start = None
    return runs


def _median_diameter(labels: np.ndarray, mode: str) -> float:
    """Median diameter (pixels) of the objects painted on a run's planes (their 2D sections); 0 without objects."""
    areas = []
    for plane in labels:
        objects = get_mode(mode).objects(plane)
        if objects is None:
            return 0.0
        counts = np.bincount(np.asarray(objects, np.int64).ravel())[1:]
        areas.append(counts[counts > 0])
    area = np.concatenate(areas) if areas else np.zeros(0)
    return float(2 * np.sqrt(np.median(area) / np.pi)) if area.size else 0.0


def section_runs(labels: np.ndarray, anisotropy: float, mode: str) -> list[tuple[int, int]]:
    """The painted runs of a (Z, Y, X) labels deep enough to give ZX/ZY planes (MIN_RUN_DEPTH objects)."""
    return [(z0, z1) for z0, z1 in painted_runs(labels)
            if (z1 - z0) * anisotropy >= MIN_RUN_DEPTH * _median_diameter(labels[z0:z1], mode)]


def label_stacks(labels: np.ndarray, axes: str):
    """The (Z, Y, X) label stacks of labels with a Z axis (one per time point)."""
    lead = [i for i, a in enumerate(axes) if a == "T"]
    for idx in np.ndindex(*[labels.shape[i] for i in lead]):
        yield idx, labels[idx]  # T, when there is one, comes first


def orthogonal_plane_count(labels: np.ndarray, axes: str, anisotropy: float, mode: str) -> int:
    """How many ZX and ZY planes :func:`_orthogonal_planes` takes from these labels."""
    if "Z" not in axes:
        return 0
    if get_mode(mode).sparse:
        return sum(1 for _, lab in label_stacks(labels, axes) for _ in section_origins(lab, anisotropy, mode))
    step = max(1, int(round(anisotropy)))
    return sum(len(section_runs(lab, anisotropy, mode)) * (-(-lab.shape[1] // step) + -(-lab.shape[2] // step))
               for _, lab in label_stacks(labels, axes))


#: in the ``objects`` mode, a painted object of a Z stack counts as painted through its planes (so ZX/ZY planes
#: through it are true sections of it) when it is painted on every plane between its first and last, and that
#: depth (planes x anisotropy) is at least this share of its widest in-plane diameter, or it reaches the
#: stack's first or last plane (cut there as by an image's edge). The whole nuclei of the StarDist wheel's
#: real stack are 0.88-1.16 of their diameter deep at its anisotropy; half a nucleus painted is 0.5, and a
#: nucleus painted on one plane 0.1-0.3
MIN_WHOLE_DEPTH = 0.6


def gives_sections(mode: str) -> bool:
    """Whether labels of this mode can give ZX/ZY training planes: dense labels (their painted runs) and the
    ``objects`` mode (its objects painted through their planes); strokes cannot."""
    m = get_mode(mode)
    return not m.sparse or m.instances  # sparse instances: the objects mode's whole painted objects


def whole_object_spans(labels: np.ndarray, anisotropy: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(whole, cut): per axis 1 and 2 of a (Z, Y, X) sparse labels, bool masks of the rows (Y) and columns (X)
    crossed by an object painted through its planes (:data:`MIN_WHOLE_DEPTH`) and by any other painted object
    (stacked: row 0 the Y axis, padded to the longer axis)."""
    from skimage.segmentation import relabel_sequential

    objects = get_mode(mode).objects(labels)
    size = max(labels.shape[1], labels.shape[2])
    whole, cut = np.zeros((2, size), bool), np.zeros((2, size), bool)
    if objects is None or not np.any(objects):
        return whole, cut
    seq = relabel_sequential(np.asarray(objects, np.int64))[0]
    for i, sl in enumerate(ndi.find_objects(seq), 1):
        if sl is None:
            continue
        areas = np.count_nonzero(seq[sl] == i, axis=(1, 2))
        diameter = 2 * np.sqrt(areas.max() / np.pi)
        edge = sl[0].start == 0 or sl[0].stop == labels.shape[0]  # cut by the stack, as by an image's edge
        ok = bool(np.all(areas)) and (edge or areas.size * anisotropy >= MIN_WHOLE_DEPTH * diameter)
        for row, axis in enumerate((1, 2)):
            (whole if ok else cut)[row, sl[axis]] = True
    return whole, cut


def _object_section_origins(labels: np.ndarray, anisotropy: float, mode: str):
    """The ZX/ZY planes (whole stack in z) through the objects painted through their planes of a sparse
    (Z, Y, X) labels, one every ``round(anisotropy)`` rows and columns; a row or column that also crosses an
    object painted on too few of its planes is left out (its cut faces would teach a wrong outline, and the
    margin of its neighbours background where it goes on)."""
    step = max(1, int(round(anisotropy)))
    whole, cut = whole_object_spans(labels, anisotropy, mode)
    for row, axis in enumerate((1, 2)):
        for k in range(0, labels.shape[axis], step):
            if whole[row, k] and not cut[row, k]:
                yield 0, labels.shape[0], axis, k


def section_origins(labels: np.ndarray, anisotropy: float, mode: str,
                    runs: Sequence[tuple[int, int]] | None = None):
    """(z0, z1, axis, k) of each ZX (axis 1, one per y) and ZY (axis 2, one per x) plane that
    :func:`_orthogonal_planes` takes from a (Z, Y, X) labels: one every ``round(anisotropy)`` rows and columns
    of each run (``runs``, default :func:`section_runs`); in the ``objects`` mode, of the rows and columns
    through its objects painted through their planes (:func:`_object_section_origins`)."""
    if get_mode(mode).sparse:
        if runs is None and gives_sections(mode):
            yield from _object_section_origins(labels, anisotropy, mode)
        return
    step = max(1, int(round(anisotropy)))
    for z0, z1 in section_runs(labels, anisotropy, mode) if runs is None else runs:
        for axis in (1, 2):
            for k in range(0, labels.shape[axis], step):
                yield z0, z1, axis, k


def section(volume: np.ndarray, origin: tuple[int, int, int, int], anisotropy: float, *, image: bool = False
            ) -> np.ndarray:
    """The ZX or ZY plane ``origin`` (:func:`section_origins`) of a (Z, Y, X[, C]) volume, z stretched by
    ``anisotropy``: (C, Z', X) float32 for an ``image``, else (Z', X) labels (nearest)."""
    z0, z1, axis, k = origin
    plane = np.take(volume[z0:z1], k, axis=axis)
    rows = max(1, int(round((z1 - z0) * anisotropy)))
    if image:
        chw = to_chw(plane).astype(np.float32, copy=False)
        return resample_image(chw, (rows, chw.shape[-1]))
    return resample_labels(plane, (rows, plane.shape[1]))


def _orthogonal_planes(image: np.ndarray, labels: np.ndarray, axes: str, anisotropy: float, mode: str
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """ZX and ZY planes ((C, Z', X) float32, (Z', X) labels) of each deep enough painted run of a Z stack
    (:func:`section_runs`; in the ``objects`` mode, through its objects painted through their planes), z
    stretched by ``anisotropy`` (the cubic voxels 3D prediction resamples a stack to, so a plane of it looks
    like these).

    One plane every ``round(anisotropy)`` rows and columns, so each view holds about as many pixels as the YX
    planes. A T axis is split first; objects cut by a run's first or last plane are cut as at an image edge.
    """
    if "Z" not in axes:
        return []
    out = []
    for idx, lab in label_stacks(labels, axes):
        stack = image[idx]  # (Z, Y, X[, C])
        for origin in section_origins(lab, anisotropy, mode):
            out.append((section(stack, origin, anisotropy, image=True), section(lab, origin, anisotropy)))
    return out


@dataclass
class VolumeSource:
    """A Z stack painted on some of its planes, as 3D self-training needs it (see ``_selftrain``).

    ``image`` (Z, Y, X[, C]) and ``labels`` (Z, Y, X) at the run's pixel size, ``axes`` "ZYX" or "ZYXC";
    ``planes``: (sample index, z) of its painted YX planes and ``sections``: (sample index, origin) of its
    ZX/ZY planes among the run's samples (in :func:`prepare_training_data`'s order); ``scale``, ``norm`` and
    ``lohi`` make new samples as that function made these (``lohi`` None: each plane's own percentiles).
    """

    image: np.ndarray
    labels: np.ndarray
    axes: str
    anisotropy: float
    planes: list[tuple[int, int]]
    sections: list[tuple[int, tuple[int, int, int, int]]]
    scale: float = 1.0
    norm: Normalization | None = None
    lohi: tuple | None = None


def volume_sources(images, labels, axes, anisotropy, mode: str) -> list[VolumeSource]:
    """The Z stacks of a run (dense labels, z step known) with painted and unpainted planes, each with the
    indices of its samples (the order of :func:`_annotated_planes`: an image's YX planes, then its sections)."""
    out, index = [], 0
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        img, lab = np.asarray(img), np.asarray(lab)
        ax = (axes[i] if axes else None) or guess_axes(img.shape)
        lead = [k for k, a in enumerate(ax) if a in "TZ"]
        painted = [idx for idx in np.ndindex(*[lab.shape[k] for k in lead]) if np.any(lab[idx])]
        first_plane = index
        index += len(painted)
        aniso = anisotropy[i] if anisotropy else None
        if "Z" not in ax or not aniso or get_mode(mode).sparse:
            continue
        t_axis = "T" in ax
        stack_axes = ax.replace("T", "")
        for t, stack_lab in label_stacks(lab, ax):
            on = [z for z in range(stack_lab.shape[0]) if np.any(stack_lab[z])]
            planes = [(first_plane + k, idx[-1]) for k, idx in enumerate(painted) if tuple(idx[:-1]) == t]
            sections = [(index + k, origin) for k, origin in enumerate(section_origins(stack_lab, aniso, mode))]
            index += len(sections)
            if 0 < len(on) < stack_lab.shape[0]:
                out.append(VolumeSource(img[t] if t_axis else img, stack_lab, stack_axes, float(aniso), planes,
                                        sections))
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


def _annotated_planes(images, labels, mode, axes, read_255_as_foreground, anisotropy=None):
    """Validated ((C, Y, X) float32 plane, label plane) pairs of every annotated plane, and the channel count.

    ``anisotropy``: per image the z step over the pixel size, or None. A Z stack with one, in a dense label
    mode, also gives the ZX and ZY planes of its painted runs (:func:`_orthogonal_planes`), in the ``objects``
    mode those through its objects painted through their planes; strokes do not (a stroke says nothing of
    the planes it was not painted on, and a section through it is mostly unpainted)."""
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
        aniso = anisotropy[i] if anisotropy else None
        if aniso and gives_sections(mode):
            planes += _orthogonal_planes(img, lab, ax, aniso, mode)
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


#: in the ``scribbles`` mode, a class painted in fewer separate strokes than this gets a warning. Measured on a
#: real DSB2018 nuclei image at 120 s (2026-12-07/08, two machines): strokes inside 7 nuclei (a tenth of them) left
#: the model only the nuclei's cores in 4 of 5 runs (AP@0.5 0.10-0.30, a third of the nuclei found), with balanced
#: class weights too; strokes inside 10 nuclei gave 0.83-0.87, inside 18 0.75-0.91 (docs/benchmarks.md)
MIN_CLASS_STROKES = 10


def stroke_counts(labels: Sequence[np.ndarray | None], mode: str) -> dict[int, int]:
    """Separate strokes (connected pieces, counted plane by plane) of each painted class of the ``scribbles``
    mode, by label value (2, 3, ...); empty for other modes. The background (1) is not counted."""
    if mode != "scribbles":
        return {}
    counts: dict[int, int] = {}
    for lab in labels:
        if lab is None:
            continue
        arr = np.asarray(lab)
        planes = arr.reshape(-1, *arr.shape[-2:]) if arr.ndim > 2 else arr[None]
        for plane in planes:
            painted = plane >= 2
            if not painted.any():  # most planes of a sparsely painted stack
                continue
            for value in np.unique(plane[painted]):
                counts[int(value)] = counts.get(int(value), 0) + ndi.label(plane == value)[1]
    return counts


def stroke_note(labels: Sequence[np.ndarray | None], mode: str) -> str | None:
    """A warning when a class of the ``scribbles`` mode is painted in too few strokes (else None)."""
    few = {value: n for value, n in sorted(stroke_counts(labels, mode).items()) if n < MIN_CLASS_STROKES}
    if not few:
        return None
    which = ", ".join(f"label {value} in {n} stroke{'s' if n > 1 else ''}" for value, n in few.items())
    return (f"{which}: with strokes in fewer than {MIN_CLASS_STROKES} objects of a class the model tends to keep "
            "only the objects' cores (on a real nuclei image, strokes inside 7 nuclei found about a third of "
            "the nuclei in 4 of 5 runs; inside 10 nuclei, AP@0.5 0.83-0.87). Add strokes inside more objects, "
            "or paint a few objects whole and train in the objects mode (7 whole nuclei: AP@0.5 0.81-0.85 on "
            "average)")


def background_note(labels: Sequence[np.ndarray | None], mode: str) -> str | None:
    """A warning when the ``objects`` mode has too little background painted for its objects (else None)."""
    share = background_share(labels, mode)
    if share is None or share >= MIN_BACKGROUND_SHARE:
        return None
    return (f"the background strokes cover {share:.0%} of the painted objects' area: with so little "
            "background the model tends to spread objects into it (on a real nuclei image, 6 % gave 1.9x the "
            f"true foreground; 24 % matched it). Paint more background (at least {MIN_BACKGROUND_SHARE:.0%}), "
            "with broader strokes, across the image's different backgrounds")


def labelled_sample(image: np.ndarray, lab: np.ndarray, mode: str, head: str) -> Sample:
    """The training sample of a normalised (C, Y, X) plane and its (Y, X) labels at the same scale.

    The labels are kept in the sample where self-training adds objects to them (``self_training`` "objects")."""
    keep = None
    if get_mode(mode).self_training == "objects":  # ids of one plane fit int32: half the copy's memory
        keep = lab.astype(np.int32) if lab.max(initial=0) < 2**31 else lab
    if head != "boundary":  # targets of the whole (resampled) plane, before any patch is cut
        target, regression = head_targets(lab, mode, head)
        return Sample(image, target, None, regression, head, labels=keep)
    return Sample(image, make_target(lab, mode), get_mode(mode).detector_objects(lab), labels=keep)


def prepare_training_data(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], mode: str, *,
                          axes: Sequence[str | None] | None = None, read_255_as_foreground: bool = False,
                          norm: Normalization | None = None, scale: float | None = None, head: str = "boundary",
                          anisotropy: Sequence[float | None] | None = None
                          ) -> tuple[list[Sample], Normalization, int, float, float | None]:
    """Like :func:`prepare_samples`, also returning the object scale used (None = estimated) and the median
    area of the objects at that scale: of the painted whole objects, or for strokes a disc of the diameter
    estimated from the image (None: neither is known).

    ``anisotropy``: per image its z step over the pixel size, or None: dense labels of a Z stack painted on
    MIN_ORTHOGONAL_RUN consecutive planes or more then also give ZX and ZY planes, z stretched by it."""
    planes, channels = _annotated_planes(images, labels, mode, axes, read_255_as_foreground, anisotropy)
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
        samples.append(labelled_sample(norm.apply(chw), lab, mode, head))
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
