"""Instance heads that separate touching objects: centre-pointing flows and distance maps.

Two representations, each a foreground channel plus regression channels that a
U-Net predicts alongside it (its raw outputs, ``(K, Y, X)`` float32):

- ``flows`` (K = 3): foreground logit, then ``FLOW_SCALE`` x a unit vector
  field (dy, dx) that points, inside each object, along the gradient of a heat
  map diffused from the object's centre. Decoding follows the field from every
  foreground pixel; pixels of one object end in one sink.
- ``distance`` (K = 2): foreground logit, then each object's distance to its
  own boundary divided by its largest value (1 at the centre). Decoding is a
  seeded watershed from the cores (distance above a threshold) or h-maxima.

Targets come from dense instance labels (``mode="instances"``: 0 = background)
or from partially annotated objects (``mode="partial"``: 0 = not annotated and
ignored by every loss, 1 = background, every id >= 2 one whole painted object).
Targets must be computed on the whole plane before patches are cut, so that an
object cut by the patch border keeps the flows of the whole object.

Work is 2D; the caller splits stacks plane by plane. Tiled prediction blends the
raw outputs over the tiles (:func:`napari_seglab.core.predict.iter_plane` with ``raw``) and
decodes the whole plane once: an object on a tile border then has one sink and stays one object.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from ..errors import InputError, check_label_image
from ._instances import renumber_objects

KINDS = ("flows", "distance")
MODES = ("instances", "partial")
#: the network regresses flows x 5 (as cellpose does): unit targets give too weak a gradient next to BCE
FLOW_SCALE = 5.0
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def n_outputs(kind: str) -> int:
    """Number of output channels a model needs for ``kind``."""
    _check_kind(kind)
    return 3 if kind == "flows" else 2


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown instance head {kind!r}; choose one of {', '.join(KINDS)}.")


def _objects_and_ignore(labels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(Y, X) labels -> per-component object ids (int32, 0 = background) and the ignore mask."""
    lab = check_label_image(labels)
    if lab.ndim != 2:
        raise InputError(f"labels must be one 2D plane, got shape {lab.shape}.")
    if mode == "instances":
        objects, ignore = lab.astype(np.int64), np.zeros(lab.shape, bool)
    elif mode == "partial":
        objects, ignore = np.where(lab >= 2, lab, 0).astype(np.int64), lab == 0
    else:
        raise InputError(f"unknown label mode {mode!r}; choose one of {', '.join(MODES)}.")
    return _split_components(objects), ignore


def _split_components(objects: np.ndarray) -> np.ndarray:
    """Give every connected piece of every id its own id (a split id has no single centre)."""
    out = np.zeros(objects.shape, np.int32)
    n = 0
    for i, sl in enumerate(ndi.find_objects(objects), start=1):
        if sl is None:
            continue
        comp, k = ndi.label(objects[sl] == i)
        view = out[sl]
        view[comp > 0] = comp[comp > 0] + n
        n += k
    return out


def flow_field(objects: np.ndarray, n_iter: int | None = None, *, per_object: bool = False) -> np.ndarray:
    """Unit vectors (2, Y, X) float32 pointing, in each object, up a heat map from its centre.

    The heat source is the object pixel nearest the median of its coordinates;
    heat spreads only between 8-connected pixels of the same object, so flows
    follow the object's shape (a bent object flows along its bend). Background
    and single-pixel objects get zero vectors. ``objects``: (Y, X) int, 0 = background.
    ``per_object``: each object diffuses for its own number of steps (from its own
    extent) rather than the largest object's, so its field depends on itself alone, not on
    the other objects of the plane (decoding a block then equals decoding the whole image).
    """
    obj = np.asarray(objects)
    flows = np.zeros((2, *obj.shape), np.float32)
    ys, xs, _, vy, vx = _unit_vectors(obj, n_iter, per_object=per_object)
    flows[0, ys, xs] = vy
    flows[1, ys, xs] = vx
    return flows


def _unit_vectors(obj: np.ndarray, n_iter: int | None = None, *, per_object: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`flow_field` at the object pixels only: (ys, xs, ids, vy, vx), vectors float32, pixels by id."""
    ys, xs = np.nonzero(obj)
    if ys.size == 0:
        empty = np.zeros(0, np.float32)
        return ys, xs, obj[ys, xs], empty, empty
    ids = obj[ys, xs]
    order = np.argsort(ids, kind="stable")
    ys, xs, ids = ys[order], xs[order], ids[order]
    del order
    index = np.full(obj.shape, -1, np.int32 if ys.size < 2**31 else np.int64)
    index[ys, xs] = np.arange(ys.size)
    h, w = obj.shape
    nbr = np.empty((len(_NEIGHBOURS), ys.size), np.int32 if ys.size < 2**31 else np.int64)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        yy, xx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
        same = (obj[yy, xx] == ids) & (yy == ys + dy) & (xx == xs + dx)
        nbr[k] = np.where(same, index[yy, xx], np.arange(ys.size))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], ids.size]
    centres = np.empty(starts.size, np.int64)
    extents = np.empty(starts.size, np.int64)
    for j, (a, b) in enumerate(zip(starts, ends, strict=True)):
        my, mx = np.median(ys[a:b]), np.median(xs[a:b])
        centres[j] = a + int(np.argmin((ys[a:b] - my) ** 2 + (xs[a:b] - mx) ** 2))
        extents[j] = int(np.ptp(ys[a:b]) + np.ptp(xs[a:b]))
    own = 2 * extents + 2 if n_iter is None else np.full(starts.size, n_iter, np.int64)
    heat = np.zeros(ys.size, np.float64)
    if per_object and np.unique(own).size > 1:
        steps = np.repeat(own, ends - starts)  # a pixel's object's own number of steps
        for k in range(int(own.max())):
            live = steps > k
            heat[centres[own > k]] += 1.0
            heat = np.where(live, _neighbour_mean(heat, nbr), heat)
    else:
        for _ in range(int(own.max())):
            heat[centres] += 1.0
            heat = _neighbour_mean(heat, nbr)
    heat = np.log1p(heat)
    # central differences inside the object; a missing neighbour counts as the pixel itself
    dy = heat[nbr[7]] - heat[nbr[1]]
    dx = heat[nbr[5]] - heat[nbr[3]]
    norm = np.hypot(dy, dx)
    norm[norm == 0] = 1.0
    return ys, xs, ids, (dy / norm).astype(np.float32), (dx / norm).astype(np.float32)


def _neighbour_mean(heat: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """``heat[nbr].mean(0)`` (the same sums, row after row) without the (9, N) temporary."""
    out = heat[nbr[0]]
    for k in range(1, len(nbr)):
        out += heat[nbr[k]]
    out /= len(nbr)
    return out


def distance_field(objects: np.ndarray) -> np.ndarray:
    """Each object's distance to its own boundary over its maximum, (Y, X) float32 in [0, 1].

    An object that touches the image edge is treated as continuing beyond it
    (the edge is not its boundary), which is the better guess for a cut object.
    """
    obj = np.asarray(objects)
    out = np.zeros(obj.shape, np.float32)
    h, w = obj.shape
    for i, sl in enumerate(ndi.find_objects(obj), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)
        x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)
        m = obj[y0:y1, x0:x1] == i
        # the crop has a free row/column on every side except at the image edge, so edge padding
        # extends the object only across the image edge
        margin = max(m.shape)
        d = ndi.distance_transform_edt(np.pad(m, margin, mode="edge"))[margin:-margin, margin:-margin]
        d = np.where(m, d, 0.0)
        top = d.max()
        if top > 0:
            view = out[y0:y1, x0:x1]
            view[m] = (d[m] / top).astype(np.float32)
    return out


def targets(labels: np.ndarray, mode: str = "instances", kind: str = "flows") -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one plane for an instance head, and its ignore mask.

    Parameters
    ----------
    labels : (Y, X) int
        ``mode="instances"``: 0 = background, each object its own id.
        ``mode="partial"``: 0 = not annotated, 1 = background, each id >= 2 one whole object.
    mode : "instances" | "partial"
    kind : "flows" | "distance"

    Returns
    -------
    target : (3, Y, X) float32 [foreground, dy, dx] for flows (unit vectors), or
        (2, Y, X) float32 [foreground, normalised distance] for distance.
    ignore : (Y, X) bool
        True where no loss applies (unannotated pixels of partial labels).
    """
    _check_kind(kind)
    objects, ignore = _objects_and_ignore(labels, mode)
    fg = (objects > 0).astype(np.float32)[None]
    field = flow_field(objects) if kind == "flows" else distance_field(objects)[None]
    return np.concatenate([fg, field]).astype(np.float32), ignore


def transform(arr: np.ndarray, *, transpose: bool = False, flip_y: bool = False, flip_x: bool = False,
              kind: str | None = None) -> np.ndarray:
    """Flip / transpose the last two axes of an array; with ``kind="flows"`` also turn the vectors.

    Use it for augmentation: the 8 combinations are the rotations and
    reflections of the square. Apply it to the image with ``kind=None`` and to
    a flow target (3, Y, X) with ``kind="flows"``, so that (dy, dx) keep
    pointing at the object centres; a distance target needs no change.
    """
    out = np.swapaxes(arr, -1, -2) if transpose else arr
    if flip_y:
        out = out[..., ::-1, :]
    if flip_x:
        out = out[..., ::-1]
    if kind == "flows":
        out = out.copy()
        if transpose:
            out[[1, 2]] = out[[2, 1]]
        if flip_y:
            out[1] *= -1
        if flip_x:
            out[2] *= -1
    return out


def head_loss(outputs: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor, kind: str = "flows", *,
              dice_weight: float = 1.0, regression_weight: float = 1.0) -> torch.Tensor:
    """BCE + soft Dice on the foreground and masked MSE on the regression channels.

    ``outputs`` (B, K, Y, X) raw network outputs; ``target`` (B, K, Y, X) from
    :func:`targets`; ``ignore`` (B, Y, X) bool. Regression is scored on every
    annotated pixel (background should predict zero flow / distance).
    """
    _check_kind(kind)
    if outputs.shape != target.shape:
        raise InputError(f"outputs {tuple(outputs.shape)} and target {tuple(target.shape)} differ in shape.")
    valid = (~ignore).unsqueeze(1).to(outputs.dtype)
    n = valid.sum()
    if n == 0:
        return outputs.sum() * 0
    logit, fg = outputs[:, :1], target[:, :1]
    bce = (F.binary_cross_entropy_with_logits(logit, fg, reduction="none") * valid).sum() / n
    p = torch.sigmoid(logit) * valid
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + (fg * valid).sum() + 1)
    scale = FLOW_SCALE if kind == "flows" else 1.0
    err = (outputs[:, 1:] - scale * target[:, 1:]) ** 2 * valid
    # cellpose halves the flow MSE of its x5 flows; dividing by the scale^2 keeps both heads comparable
    mse = err.sum() / (n * (outputs.shape[1] - 1)) / (scale if kind == "flows" else 1.0)
    return bce + dice_weight * dice + regression_weight * mse


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None:
            m = ndi.binary_fill_holes(labels[sl] == i)
            out[sl][m & (out[sl] == 0)] = i
    return out


#: points followed together: every point's path is its own, so following them in groups of this
#: many gives the same end points with the per-step temporaries of one group (about 1 MB a group)
FOLLOW_GROUP = 1 << 16


def _follow(flow: np.ndarray, ys: np.ndarray, xs: np.ndarray, n_steps: int,
            origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """End points (N, 2) after ``n_steps`` Euler steps of 1 px along ``flow`` (2, Y, X), bilinear.

    A point is kept as an integer pixel plus a float32 fraction in [0, 1): the arithmetic never
    sees where the field lies in the image, so a point's path inside a block (``origin``: the
    block's corner, for the caller's bookkeeping only) is bit for bit its path in the whole image.
    Points stay within the field. They are followed :data:`FOLLOW_GROUP` at a time.
    """
    del origin  # the paths do not depend on it: that is the point of the integer + fraction form
    h, w = flow.shape[1:]
    # one extra row and column (copies of the last) so the right / lower neighbour always exists;
    # its weight is 0 where a point sits on the last row or column
    # (dy, dx) of a pixel as one complex number: one gather fetches both
    grid = np.empty((h + 1, w + 1), np.complex64)
    grid.real[:h, :w] = flow[0]
    grid.imag[:h, :w] = flow[1]
    grid[h, :w] = grid[h - 1, :w]
    grid[:, w] = grid[:, w - 1]
    field = torch.from_numpy(grid.reshape(-1))
    ends = np.empty((len(ys), 2), np.float64)
    for start in range(0, len(ys), FOLLOW_GROUP):
        part = slice(start, start + FOLLOW_GROUP)
        ends[part] = _follow_group(field, w + 1, h, w, ys[part], xs[part], n_steps)
    return ends


def _follow_group(field: torch.Tensor, row: int, h: int, w: int, ys: np.ndarray, xs: np.ndarray,
                  n_steps: int) -> np.ndarray:
    """:func:`_follow` for one group of points on the padded complex ``field`` (rows of ``row`` values)."""
    iy = torch.from_numpy(np.array(ys, np.int64))  # copies: updated in place below
    ix = torch.from_numpy(np.array(xs, np.int64))
    ry = torch.zeros(iy.shape, dtype=torch.float32)  # fractions in [0, 1)
    rx = torch.zeros(ix.shape, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    with torch.no_grad():
        for _ in range(n_steps):
            a = iy * row + ix
            b = a + row
            v00, v01, v10, v11 = field.take(a), field.take(a + 1), field.take(b), field.take(b + 1)
            top = v00 + (v01 - v00) * rx
            step = top + (v10 + (v11 - v10) * rx - top) * ry
            ry += step.real
            rx += step.imag
            cy, cx = torch.floor(ry), torch.floor(rx)
            ry -= cy
            rx -= cx
            iy += cy.long()
            ix += cx.long()
            # within the field: below 0 -> 0, at or beyond the last row / column -> on it
            ry = torch.where((iy < 0) | (iy >= h - 1), zero, ry)
            rx = torch.where((ix < 0) | (ix >= w - 1), zero, rx)
            iy.clamp_(0, h - 1)
            ix.clamp_(0, w - 1)
    return torch.stack([iy.double() + ry.double(), ix.double() + rx.double()], 1).numpy()


def _cluster(ends: np.ndarray, shape: tuple[int, int], min_count: int) -> np.ndarray:
    """Cluster id (0 = none) per end point: watershed of the smoothed end-point histogram from its peaks."""
    iy = np.clip(np.rint(ends[:, 0]).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip(np.rint(ends[:, 1]).astype(np.int64), 0, shape[1] - 1)
    hist = np.bincount(iy * shape[1] + ix, minlength=shape[0] * shape[1]).reshape(shape).astype(np.int32)
    # the 3x3 sums in integers: exact wherever the plane lies in a larger image (a float running mean
    # rounds by its history along the line, which a block does not share with the whole image)
    padded = np.pad(hist, 1)
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    del padded
    counts = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    del rows
    peaks = (counts == ndi.maximum_filter(counts, 5, mode="constant")) & (counts >= min_count)
    markers, n = ndi.label(peaks, structure=np.ones((3, 3)))
    del peaks
    if n == 0:
        return np.zeros(len(ends), np.int32)
    region = ndi.binary_dilation(hist > 0, iterations=2)
    del hist
    # equal counts are flooded in raster order (a fraction under 0.5 that grows with the pixel's index):
    # the flooding then depends on the order of the pixels alone, the same in a block as in the whole
    # image (watershed's own tie-break depends on its heap, so on everything else in the plane).
    # End points gather in small spots: each connected part of the region is flooded in its own box,
    # which gives the same basins (no flooding crosses the mask) without plane-sized float arrays.
    parts, _ = ndi.label(region, structure=np.ones((3, 3)))
    del region
    basins = np.zeros(shape, np.int32)
    scale = 0.5 / counts.size
    for k, box in enumerate(ndi.find_objects(parts), start=1):
        if box is None:
            continue
        inside = parts[box] == k
        seeds = np.where(inside, markers[box], 0)
        if not seeds.any():
            continue
        gy, gx = np.ogrid[box[0], box[1]]
        order = (gy * shape[1] + gx).astype(np.float64) * scale
        flooded = watershed(order - counts[box], markers=seeds, mask=inside)
        basins[box][inside] = flooded[inside]
    return basins[iy, ix].astype(np.int32)


def _flow_errors(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Mean squared difference, per object, between its own flows and the predicted unit flows."""
    n = int(labels.max())
    if not n:
        return np.zeros(0)
    # at the object pixels only (the background adds nothing): no plane-sized float arrays
    ys, xs, ids, vy, vx = _unit_vectors(labels, per_object=True)
    err = (vy - flow[0, ys, xs]) ** 2 + (vx - flow[1, ys, xs]) ** 2
    sums = np.bincount(ids, weights=err, minlength=n + 1)[1:]
    return sums / np.maximum(np.bincount(ids, minlength=n + 1)[1:], 1)


#: 0.8, not cellpose's 0.4: after 150-400 steps from scratch the flows are still rough, and 0.4 dropped
#: 20 % of true nuclei (benchmarks/instance_heads.py: AP@0.75 0.67 -> 0.73 sample, 0.76 -> 0.82 real at 400 steps)
FLOW_ERROR = 0.8


def decode_flows(outputs: np.ndarray, *, threshold: float = 0.0, n_steps: int = 200,
                 flow_threshold: float | None = FLOW_ERROR, min_size: int = 15,
                 origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Instances (Y, X) int32 from raw flow-head outputs (3, Y, X): [fg logit, dy, dx] x FLOW_SCALE.

    Foreground = logit > ``threshold``. Every foreground pixel follows the flow
    ``n_steps`` steps; end points cluster at peaks of their histogram; objects
    whose recomputed flows differ from the predicted ones by more than
    ``flow_threshold`` (mean squared, unit vectors; ``None`` skips the check)
    and objects under ``min_size`` pixels are dropped. ``origin``: where ``outputs`` lie in a larger
    image (a block's corner); an object wholly inside the block is then found exactly as in that image.
    """
    out = np.asarray(outputs, np.float32)
    if out.ndim != 3 or out.shape[0] != 3:
        raise InputError(f"flow outputs must be (3, Y, X), got shape {out.shape}.")
    fg = out[0] > threshold
    labels = np.zeros(fg.shape, np.int32)
    if not fg.any():
        return labels
    flow = out[1:] / FLOW_SCALE
    flow *= fg
    ys, xs = np.nonzero(fg)
    ends = _follow(flow, ys, xs, n_steps, origin)
    labels[ys, xs] = _cluster(ends, fg.shape, min_count=max(3, min_size // 2))
    labels = renumber_objects(_fill_holes(labels), min_size)
    if flow_threshold is not None and labels.any():
        bad = np.flatnonzero(_flow_errors(labels, flow) > flow_threshold) + 1
        if bad.size:
            labels = renumber_objects(np.where(np.isin(labels, bad), 0, labels), min_size)
    return labels


def decode_distance(outputs: np.ndarray, *, threshold: float = 0.0, seeds: str = "hmax", core: float = 0.5,
                    h: float = 0.1, min_size: int = 15, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Instances (Y, X) int32 from raw distance-head outputs (2, Y, X): [fg logit, distance].

    Seeds are the h-maxima of the smoothed distance (``seeds="hmax"``, height
    ``h``; h = 0.1 beat cores at 0.4-0.6 and h = 0.2 in benchmarks/instance_heads.py)
    or the connected cores (``seeds="cores"``, distance > ``core``); they grow by watershed
    over the negated distance inside the foreground (logit > ``threshold``).
    Foreground no seed reaches becomes its own object; small objects are dropped. Every step works
    within one connected piece of foreground, so ``origin`` (a block's place) changes nothing.
    """
    out = np.asarray(outputs, np.float32)
    if out.ndim != 3 or out.shape[0] != 2:
        raise InputError(f"distance outputs must be (2, Y, X), got shape {out.shape}.")
    fg = out[0] > threshold
    dist = ndi.gaussian_filter(out[1], 1.0) * fg
    if seeds == "cores":
        markers, _ = ndi.label((dist > core) & fg)
    elif seeds == "hmax":
        markers, _ = ndi.label(h_maxima(dist, h) & fg, structure=np.ones((3, 3)))
    else:
        raise InputError(f"unknown seeds {seeds!r}; choose 'cores' or 'hmax'.")
    labels = watershed(-dist, markers=markers, mask=fg)
    rest, n = ndi.label(fg & (labels == 0))
    if n:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    return renumber_objects(labels, min_size)


def decode(outputs: np.ndarray, kind: str | None = None, **kwargs) -> np.ndarray:
    """Instances (Y, X) int32 from raw head outputs; ``kind`` defaults from the channel count."""
    kind = kind or {3: "flows", 2: "distance"}.get(np.shape(outputs)[0])
    _check_kind(kind or "?")
    return decode_flows(outputs, **kwargs) if kind == "flows" else decode_distance(outputs, **kwargs)
