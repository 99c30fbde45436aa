"""From per-pixel predictions to objects: instance labels, measurements, boxes.

Label images coming out of this module are ``int32`` with 0 = background and
objects numbered 1..N without gaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

from ..errors import InputError, check_label_image


def renumber_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels and number the rest 1..N (int32): every decoder's last step."""
    labels = np.asarray(labels)
    if min_size > 1 and labels.any():
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
    out, _fw, _inv = relabel_sequential(labels)
    return out.astype(np.int32, copy=False)


def _add_unseeded(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Give foreground components that no marker reached their own new ids."""
    rest = foreground & (labels == 0)
    if not rest.any():
        return labels
    extra, n = ndi.label(rest)
    if n == 0:
        return labels
    offset = int(labels.max())
    return np.where(extra > 0, extra + offset, labels)


def boundary_targets(instances: np.ndarray) -> np.ndarray:
    """Turn a dense instance mask into a 3-class target: background, interior, boundary.

    Boundary pixels are object pixels that touch the background or another
    object (``find_boundaries(mode="inner")``): one pixel thick against the
    background, two pixels (one per side) between touching objects, so the
    interiors of touching objects never touch.

    Parameters
    ----------
    instances : (Y, X) or nD int array
        0 = background, each object its own id.

    Returns
    -------
    same shape, int64
        0 = background, 1 = interior, 2 = boundary.
    """
    inst = check_label_image(instances, "instances")
    target = (inst > 0).astype(np.int64)
    edge = find_boundaries(inst, mode="inner") & (inst > 0)
    target[edge] = 2
    return target


#: touching objects whose shared border the boundary channel hardly sees (mean probability under this) are
#: one object cut by a seed split; decoded objects under FRAGMENT_FRACTION of the typical object's area are
#: fragments (specks of interior, foreground no seed reached), not objects. Chosen together on a real
#: DSB2018 nuclei image, objects mode with 25 % of the nuclei painted, 400 steps, five runs (three seeds,
#: the image at 0.5x, inverted): mean AP@0.5 0.64 -> 0.86, AP@0.75 0.56 -> 0.74, every count within 7 %
#: of the truth (was up to 1.47x); borders at 0.1-0.3 and fractions 0.1-0.2 all helped (docs/benchmarks.md)
WEAK_BORDER = 0.2
FRAGMENT_FRACTION = 0.15


#: a decoded object whose solidity (area / convex hull area) is under SPLIT_SOLIDITY is split in two at the
#: narrowest place between the two deepest points of its distance transform, when both pieces are more convex
#: than the whole (by SPLIT_GAIN) and each holds at least SPLIT_MIN_PART of it: two touching nuclei decoded
#: as one. DSB2018's true nuclei: solidity 5th percentile 0.92, median 0.96; its touching pairs taken as one
#: object: median 0.87, 90th percentile 0.91
SPLIT_SOLIDITY = 0.9
SPLIT_GAIN = 0.03
SPLIT_MIN_PART = 0.2
#: ... and only where the cut is a neck: no longer than this share of the narrower piece's widest inscribed
#: diameter. Two nuclei a young model merged are joined by a wide neck: 1.2 keeps every split of two
#: first-picked `objects` models (0.8 lost one of 8 and 2 of 3); a crescent is cut at 0.9-1.0, so crescent
#: nuclei are split (a limit), unless the painted objects were crescents too (:func:`split_solidity`)
SPLIT_MAX_NECK = 1.2


def solidity(mask: np.ndarray) -> float:
    """Area over convex hull area of one object's mask (2D; a crop will do); 1.0 for objects too small or too
    thin to have a hull."""
    from skimage.morphology import convex_hull_image

    mask = np.asarray(mask, bool)
    area = int(mask.sum())
    if area < 5 or min(np.ptp(np.nonzero(mask), axis=1)) == 0:
        return 1.0
    return area / max(int(convex_hull_image(mask).sum()), area)


def typical_solidity(planes, max_objects: int = 500, seed: int = 0) -> float | None:
    """The 10th percentile of the :func:`solidity` of the objects of ``planes`` (2D label arrays, or stacks
    of them), at most ``max_objects`` of them (a random choice); None without objects. A checkpoint records
    it (``object_solidity``) so that decoding splits only objects less convex than what was painted."""
    crops = []
    for plane in planes:
        arr = np.asarray(plane)
        for lab in arr.reshape(-1, *arr.shape[-2:]) if arr.ndim > 2 else (arr,):
            for i, sl in enumerate(ndi.find_objects(lab.astype(np.int64, copy=False)), start=1):
                if sl is not None:
                    crops.append((lab, sl, i))
    if not crops:
        return None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(crops), size=min(max_objects, len(crops)), replace=False)
    values = [solidity(crops[k][0][crops[k][1]] == crops[k][2]) for k in chosen]
    return round(float(np.percentile(values, 10)), 4)


def split_solidity(recorded: float | None) -> float | None:
    """The solidity under which a model's decoding splits objects: SPLIT_SOLIDITY, or lower when the objects
    it learnt from were less convex (``recorded``: its checkpoint's ``object_solidity``); None (never) when
    the checkpoint records none (scribbles, older files)."""
    return None if recorded is None else min(SPLIT_SOLIDITY, float(recorded))


def split_non_convex(labels: np.ndarray, min_solidity: float = SPLIT_SOLIDITY, *, gain: float = SPLIT_GAIN,
                     min_part: float = SPLIT_MIN_PART, max_neck: float = SPLIT_MAX_NECK,
                     min_area: int = 20) -> np.ndarray:
    """Split each 2D object that is not convex (two touching nuclei decoded as one) in two, where that helps.

    An object of at least ``min_area`` pixels whose :func:`solidity` is under
    ``min_solidity`` is cut by a watershed of its (lightly smoothed) distance
    transform from its two deepest points. The cut is kept when each piece
    holds at least ``min_part`` of the object, both pieces' solidity
    exceeds the object's by ``gain``, and the cut is a neck: at most
    ``max_neck`` times the narrower piece's widest inscribed diameter long.
    Otherwise the object stays whole.
    Returns new labels (same dtype; new pieces take ids after the largest,
    not renumbered). Other ranks than 2 come back unchanged.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or not min_solidity or not lab.any():
        return lab
    out = lab.copy()
    next_id = int(lab.max()) + 1
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, lab.shape, strict=True))
        mask = lab[box] == i
        area = int(mask.sum())
        if area < min_area:
            continue
        whole = solidity(mask)
        if whole >= min_solidity:
            continue
        depth = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0) * mask
        peaks = peak_local_max(depth, min_distance=max(2, int(0.5 * depth.max())), labels=mask.astype(np.int32),
                               num_peaks=2, exclude_border=False)
        if len(peaks) < 2:
            continue
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = (1, 2)
        parts = watershed(-depth, markers=markers, mask=mask)
        one, two = parts == 1, parts == 2
        if min(one.sum(), two.sum()) < min_part * area:
            continue
        if min(solidity(one), solidity(two)) < whole + gain:
            continue
        # the cut's length: pixel pairs of the two pieces that touch along an axis
        neck = sum(np.count_nonzero((lo != hi) & (lo > 0) & (hi > 0))
                   for lo, hi in ((parts[:-1], parts[1:]), (parts[:, :-1], parts[:, 1:])))
        width = 2 * min(ndi.distance_transform_edt(one).max(), ndi.distance_transform_edt(two).max())
        if neck > max_neck * width:
            continue
        out[box][two] = next_id
        next_id += 1
    return out


def merge_weak_borders(labels: np.ndarray, boundary: np.ndarray, threshold: float = WEAK_BORDER,
                       min_contact: int = 3) -> np.ndarray:
    """Merge touching objects whose shared border has a mean ``boundary`` probability under ``threshold``.

    Two objects are neighbours where their pixels touch along an axis; the
    border's probability at each contact is the larger of its two pixels'.
    Contacts of fewer than ``min_contact`` pixel pairs are left alone. Merges
    chain (A-B and B-C weak: one object). Returns the labels with merged ids
    (not renumbered).
    """
    lab = np.asarray(labels)
    bnd = np.asarray(boundary, np.float32)
    n = int(lab.max()) + 1 if lab.size else 1
    keys, values = [], []
    for axis in range(lab.ndim):
        a = np.moveaxis(lab, axis, 0)
        b = np.moveaxis(bnd, axis, 0)
        lo, hi = a[:-1], a[1:]
        touch = (lo != hi) & (lo > 0) & (hi > 0)
        first, second = lo[touch].astype(np.int64), hi[touch].astype(np.int64)
        keys.append(np.minimum(first, second) * n + np.maximum(first, second))
        values.append(np.maximum(b[:-1][touch], b[1:][touch]))
    key = np.concatenate(keys)
    if not key.size:
        return lab
    pairs, inverse = np.unique(key, return_inverse=True)
    contacts = np.bincount(inverse)
    mean = np.bincount(inverse, weights=np.concatenate(values)) / contacts
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    weak = pairs[(contacts >= min_contact) & (mean < threshold)]
    if not weak.size:
        return lab
    for pair in weak:
        a, b = root(int(pair // n)), root(int(pair % n))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)], lab.dtype)[lab]


def instances_from_probabilities(probs: np.ndarray, min_size: int = 8, split_seeds: bool = True, *,
                                 object_area: float | None = None, weak_border: float | None = WEAK_BORDER,
                                 min_solidity: float | None = None) -> np.ndarray:
    """Split a 3-class (background, interior, boundary) prediction into objects.

    Seeds are the connected interiors (interior probability > 0.5). Where a
    faint boundary lets two interiors touch, ``split_seeds`` cuts the merged
    seed at its distance-transform maxima (spaced like the typical object).
    Seeds grow by watershed over ``1 - interior`` through the foreground
    (background probability < 0.5). Foreground that no seed reaches becomes an
    object of its own; objects under ``min_size`` pixels are dropped.

    Parameters
    ----------
    probs : (3, Y, X) float32
        Softmax channels [background, interior, boundary] (any spatial rank works;
        3D volumes are usually split plane by plane by the caller).
    min_size : int
        Smallest object kept, in pixels.
    split_seeds : bool
        Split seeds that merged through a weak boundary.
    object_area : float or None
        Typical object area in pixels (the median of the objects the model
        learnt from, at its scale): objects under ``FRAGMENT_FRACTION`` of it
        are dropped as fragments. None: only ``min_size`` applies.
    weak_border : float or None
        Touching objects whose shared border has a mean boundary probability
        under this are merged (:func:`merge_weak_borders`); None: never.
    min_solidity : float or None
        Then 2D objects less convex than this are split in two where that
        helps (:func:`split_non_convex`; a model's value comes from
        :func:`split_solidity`); None or 0: never.

    Returns
    -------
    (Y, X) int32
        0 = background, objects 1..N.
    """
    p = np.asarray(probs)
    if p.ndim < 2 or p.shape[0] != 3:
        raise InputError(
            f"probs must have 3 channels first (background, interior, boundary), got shape {p.shape}."
        )
    if not np.issubdtype(p.dtype, np.floating):
        raise InputError(f"probs must be floating point, got dtype {p.dtype}.")
    background, interior = p[0], p[1]
    seed_mask = interior > 0.5
    if split_seeds:
        seeds = instances_from_foreground(seed_mask, split_touching=True, min_size=max(2, min_size // 4))
    else:
        seeds, n = ndi.label(seed_mask)
        if n:
            # Specks of interior are noise, not objects: they would split one nucleus in two.
            sizes = np.bincount(seeds.ravel())
            tiny = sizes < max(2, min_size // 4)
            tiny[0] = False
            seeds[tiny[seeds]] = 0
    foreground = (background < 0.5) | seed_mask
    labels = watershed(1.0 - interior, markers=seeds, mask=foreground)
    labels = _add_unseeded(labels, foreground)
    if weak_border is not None:
        labels = merge_weak_borders(labels, p[2], weak_border)
    if min_solidity:
        labels = split_non_convex(labels, min_solidity)
    if object_area:
        min_size = max(min_size, int(FRAGMENT_FRACTION * object_area))
    return renumber_objects(labels, min_size)


def _typical_radius(mask: np.ndarray, distance: np.ndarray, components: np.ndarray) -> float:
    """Median of the largest inscribed radius over the connected components."""
    n = int(components.max())
    if n == 0:
        return 1.0
    peaks = ndi.maximum(distance, components, index=np.arange(1, n + 1))
    return float(np.median(peaks))


def instances_from_foreground(
    prob_or_mask: np.ndarray,
    threshold: float = 0.5,
    split_touching: bool = True,
    min_size: int = 8,
    min_distance: int | None = None,
) -> np.ndarray:
    """Connected components of a foreground map, optionally split where objects touch.

    Touching objects are split by a watershed of the distance transform from
    its local maxima, spaced at least ``min_distance`` pixels apart (by default
    about 0.7 x the median inscribed radius of the components).

    Parameters
    ----------
    prob_or_mask : (Y, X) or nD array
        Float foreground probability (compared with ``threshold``) or a
        bool / integer mask (nonzero = foreground).
    threshold : float
        Probability above which a pixel is foreground (float input only).
    split_touching : bool
        Split merged objects by distance-transform watershed.
    min_size : int
        Smallest object kept, in pixels.
    min_distance : int or None
        Smallest distance between two object centres, in pixels.

    Returns
    -------
    same shape, int32
        0 = background, objects 1..N.
    """
    arr = np.asarray(prob_or_mask)
    if np.issubdtype(arr.dtype, np.floating):
        mask = arr > threshold
    elif arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        mask = arr > 0
    else:
        raise InputError(f"prob_or_mask must be numeric, got dtype {arr.dtype}.")
    components, n = ndi.label(mask)
    if n == 0 or not split_touching:
        return renumber_objects(components, min_size)
    distance = ndi.distance_transform_edt(mask)
    if min_distance is None:
        min_distance = max(2, int(round(0.7 * _typical_radius(mask, distance, components))))
    # A little smoothing keeps ragged outlines from making extra maxima.
    smooth = ndi.gaussian_filter(distance, 1.0) * mask
    peaks = peak_local_max(
        smooth,
        min_distance=int(min_distance),
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(mask.shape, np.int32)
    if len(peaks):
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-smooth, markers=markers, mask=mask)
    labels = _add_unseeded(labels, mask)
    return renumber_objects(labels, min_size)


def otsu_watershed(
    image: np.ndarray,
    sigma: float = 1.0,
    min_size: int = 16,
    min_distance: int | None = None,
) -> np.ndarray:
    """The classic baseline: Otsu threshold, hole filling, distance-transform watershed.

    Parameters
    ----------
    image : (Y, X) or nD array, any real dtype
        One channel; brighter = object.
    sigma : float
        Gaussian smoothing before thresholding, in pixels.
    min_size : int
        Smallest object kept, in pixels.
    min_distance : int or None
        Passed to :func:`instances_from_foreground`.

    Returns
    -------
    same shape, int32
        0 = background, objects 1..N.
    """
    img = np.asarray(image)
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool) or np.iscomplexobj(img):
        raise InputError(f"image must be real numeric, got dtype {img.dtype}.")
    smooth = ndi.gaussian_filter(img.astype(np.float32), sigma)
    if float(smooth.min()) == float(smooth.max()):
        return np.zeros(img.shape, np.int32)
    mask = ndi.binary_fill_holes(smooth > threshold_otsu(smooth))
    return instances_from_foreground(
        mask, split_touching=True, min_size=min_size, min_distance=min_distance
    )


_AXES = ("z", "y", "x")


def _to_python(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def measure_objects(labels: np.ndarray, intensity: np.ndarray | None = None,
                    pixel_size: Sequence[float] | None = None) -> list[dict]:
    """Measure every object of a label image.

    Keys of each row: ``label``, ``area`` (pixels / voxels), ``centroid_y``,
    ``centroid_x`` (``centroid_z`` in 3D), ``bbox_y0``, ``bbox_x0``, ``bbox_y1``,
    ``bbox_x1`` (half-open; ``bbox_z0`` / ``bbox_z1`` in 3D); in 2D also
    ``eccentricity``, ``solidity`` and ``perimeter``. With ``intensity``:
    ``mean_intensity``, ``max_intensity``, ``min_intensity``; with several
    channels the keys get a channel suffix (``mean_intensity_0`` ...).
    In 3D also ``extent_z``, ``extent_y``, ``extent_x`` (the bounding box's sides, voxels). With
    ``pixel_size`` (µm per pixel, ``(y, x)``, or ``(z, y, x)`` in 3D): ``area_um2``
    and ``perimeter_um`` in 2D, ``volume_um3`` in 3D, after the pixel columns.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) int array
        0 = background.
    intensity : array or None
        Same shape as ``labels``, or with one more trailing channel axis (..., C).
    pixel_size : sequence of float or None
        µm per pixel along the spatial axes; a 3D image needs its z step too (the
        last ``labels.ndim`` entries are used; fewer gives no physical columns).

    Returns
    -------
    list of dict
        One row per object, ordered by label; plain Python numbers. Empty
        labels give an empty list.
    """
    lab = check_label_image(labels)
    if lab.ndim not in (2, 3):
        raise InputError(f"labels must be 2D or 3D, got {lab.ndim}D.")
    if not lab.any():
        return []
    lab = lab.astype(np.int64, copy=False)
    if pixel_size is not None:
        pixel_size = tuple(float(v) for v in pixel_size)
        if not all(math.isfinite(v) and v > 0 for v in pixel_size):
            raise InputError(f"pixel_size must be positive sizes in µm, got {pixel_size}.")
    inten = None
    n_channels = 0
    if intensity is not None:
        inten = np.asarray(intensity)
        if inten.shape == lab.shape:
            n_channels = 1
        elif inten.ndim == lab.ndim + 1 and inten.shape[:-1] == lab.shape:
            n_channels = inten.shape[-1]
        else:
            raise InputError(
                f"intensity shape {inten.shape} does not match labels shape {lab.shape} "
                "(a trailing channel axis is allowed)."
            )
        inten = inten.astype(np.float64, copy=False)
    props = ["label", "area", "centroid", "bbox"]
    if lab.ndim == 2:
        props += ["eccentricity", "solidity", "perimeter"]
    if inten is not None:
        props += ["intensity_mean", "intensity_max", "intensity_min"]
    table = regionprops_table(lab, intensity_image=inten, properties=props)

    axes = _AXES[-lab.ndim :]
    n = len(table["label"])
    rename: dict[str, str] = {"label": "label", "area": "area"}
    for i, ax in enumerate(axes):
        rename[f"centroid-{i}"] = f"centroid_{ax}"
        rename[f"bbox-{i}"] = f"bbox_{ax}0"
        rename[f"bbox-{i + lab.ndim}"] = f"bbox_{ax}1"
    for key in ("eccentricity", "solidity", "perimeter"):
        rename[key] = key
    for stat in ("mean", "max", "min"):
        if n_channels == 1:
            rename[f"intensity_{stat}"] = f"{stat}_intensity"
        else:
            for c in range(n_channels):
                rename[f"intensity_{stat}-{c}"] = f"{stat}_intensity_{c}"
    rows = []
    for i in range(n):
        row = {}
        for src, dst in rename.items():
            if src in table:
                row[dst] = _to_python(table[src][i])
        row["label"] = int(row["label"])
        row["area"] = int(row["area"])
        if lab.ndim == 3:
            for ax in axes:
                row[f"extent_{ax}"] = row[f"bbox_{ax}1"] - row[f"bbox_{ax}0"]
        rows.append(row)
    _physical_columns(rows, lab.ndim, pixel_size)
    return rows


def _physical_columns(rows: list[dict], ndim: int, pixel_size: Sequence[float] | None) -> None:
    """Add ``area_um2`` / ``perimeter_um`` (2D) or ``volume_um3`` (3D) to measurement ``rows`` in place.

    The perimeter's pixel steps are taken as sqrt(y * x) µm long: exact for square pixels, the
    mean step for others.
    """
    if pixel_size is None or len(pixel_size) < ndim:
        return
    size = [float(v) for v in pixel_size[-ndim:]]
    voxel = float(np.prod(size))
    for row in rows:
        if ndim == 2:
            row["area_um2"] = row["area"] * voxel
            if "perimeter" in row:
                row["perimeter_um"] = float(row["perimeter"]) * math.sqrt(voxel)
        else:
            row["volume_um3"] = row["area"] * voxel


def summarize_objects(rows: Sequence[dict]) -> dict:
    """Summarise a measurement table from :func:`measure_objects`.

    Returns
    -------
    dict
        ``object_count``, ``total_area``, ``mean_area``, ``median_area``,
        ``min_area``, ``max_area``; plus the mean over objects of every
        ``mean_intensity*`` column present (same key). Undefined values are
        ``None`` (JSON null).
    """
    count = len(rows)
    out: dict = {"object_count": count}
    areas = np.array([r["area"] for r in rows], float)
    if count:
        out.update(
            total_area=float(areas.sum()),
            mean_area=float(areas.mean()),
            median_area=float(np.median(areas)),
            min_area=float(areas.min()),
            max_area=float(areas.max()),
        )
    else:
        out.update(total_area=0.0, mean_area=None, median_area=None, min_area=None, max_area=None)
    keys = sorted({k for r in rows for k in r if k.startswith("mean_intensity")})
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        out[key] = float(np.mean(values)) if values else None
    return out


def boxes_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of every object.

    Parameters
    ----------
    labels : (Y, X) int array (nD works too)
        0 = background.

    Returns
    -------
    boxes : (N, 4) float32
        ``(y0, x0, y1, x1)`` half-open pixel bounds, one row per object; in nD
        ``(N, 2 * ndim)`` with all lower bounds first.
    ids : (N,) int64
        The label id of each row, ascending.
    """
    lab = check_label_image(labels)
    ndim = lab.ndim
    ids = np.unique(lab)
    ids = ids[ids > 0].astype(np.int64)
    if ids.size == 0:
        return np.zeros((0, 2 * ndim), np.float32), ids
    # find_objects indexes by id, so compact sparse ids first.
    compact = np.searchsorted(ids, lab) + 1
    compact[lab == 0] = 0
    slices = ndi.find_objects(compact)
    boxes = np.array(
        [[s.start for s in sl] + [s.stop for s in sl] for sl in slices], dtype=np.float32
    )
    return boxes, ids
