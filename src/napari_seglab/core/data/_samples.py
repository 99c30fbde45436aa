"""Normalisation, training samples, patch sampling and augmentation.

Arrays here are per plane: an image plane is (Y, X) or (Y, X, C); the model
sees float32 (C, Y, X). Targets are int64 (Y, X) with -1 for ignored pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..labels import IGNORE
from ._box_patches import box_centres, clip_boxes, transform_boxes, zoom_boxes

DEFAULT_PERCENTILES = (1.0, 99.8)


def to_chw(plane: np.ndarray, in_channels: int | None = None) -> np.ndarray:
    """(Y, X) or (Y, X, C) -> (C, Y, X) view; checks the channel count when given."""
    chw = plane[None] if plane.ndim == 2 else np.moveaxis(plane, -1, 0)
    if in_channels is not None and chw.shape[0] != in_channels:
        raise InputError(f"the model expects {in_channels} channel(s) but the image has {chw.shape[0]}")
    return chw


def _magnitude(values: np.ndarray) -> float:
    """A power of two near the largest finite magnitude of ``values`` (1.0 when there is none)."""
    finite = values[np.isfinite(values)]
    top = float(np.max(np.abs(finite))) if finite.size else 0.0
    return float(np.ldexp(1.0, int(np.frexp(top)[1]) - 1)) if top > 0 else 1.0


def percentiles(chw: np.ndarray, low: float = DEFAULT_PERCENTILES[0], high: float = DEFAULT_PERCENTILES[1],
                max_samples: int = 2_000_000) -> tuple[list[float], list[float]]:
    """Per-channel (low, high) percentiles of a (C, ...) array, on a strided sample when large.

    Computed in float64 on values scaled by a power of two, so intensities of
    any magnitude (1e-9 lifetimes in seconds, 1e300) neither lose precision
    nor overflow.
    """
    lo, hi = [], []
    for channel in chw:
        flat = channel.reshape(-1)
        step = max(1, flat.size // max_samples)
        sample = np.asarray(flat[::step], dtype=np.float64)
        scale = _magnitude(sample)
        a, b = np.percentile(sample / scale, [low, high])
        lo.append(float(a) * scale)
        hi.append(float(b) * scale)
    return lo, hi


#: normalised values are kept within +-this, far beyond anything a model sees in training, so an
#: extreme outlier cannot become Inf in float32
NORMALIZED_LIMIT = 1e6


def normalize(chw: np.ndarray, lo: Sequence[float], hi: Sequence[float],
              out: np.ndarray | None = None, block: int = 1 << 22) -> np.ndarray:
    """Scale each channel so that ``lo`` -> 0 and ``hi`` -> 1 (float32 result).

    Arithmetic is float64, on values divided by a power of two near
    max(|lo|, |hi|), so any intensity range works. A channel whose ``lo`` and
    ``hi`` coincide (a flat image) maps to 0. Values are not clipped to
    [0, 1]; only beyond +-:data:`NORMALIZED_LIMIT`.
    """
    out = np.empty(chw.shape, np.float32) if out is None else out
    for c in range(chw.shape[0]):
        low, high = float(lo[c]), float(hi[c])
        scale = _magnitude(np.array([low, high]))
        span = high / scale - low / scale
        inv = 1.0 / span if span > 0 and np.isfinite(span) else 0.0
        src, dst = chw[c], out[c]
        rows = max(1, block // max(1, src[0].size)) if src.ndim else 1
        for start in range(0, len(src) if src.ndim else 1, rows):  # float64 work in bounded blocks
            part = np.asarray(src[start:start + rows] if src.ndim else src, dtype=np.float64) / scale
            part -= low / scale
            part *= inv
            np.clip(part, -NORMALIZED_LIMIT, NORMALIZED_LIMIT, out=part)
            if src.ndim:
                dst[start:start + rows] = part
            else:
                dst[...] = part
    return out


@dataclass
class Normalization:
    """Percentile normalisation, recorded in the checkpoint.

    ``per_image``: percentiles are computed on each image at prediction time
    (robust to exposure changes); ``lo``/``hi`` hold the training data's
    values, used when ``per_image`` is False.
    """

    low: float = DEFAULT_PERCENTILES[0]
    high: float = DEFAULT_PERCENTILES[1]
    per_image: bool = True
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()

    def apply(self, chw: np.ndarray, lohi: tuple[Sequence[float], Sequence[float]] | None = None) -> np.ndarray:
        """Normalise a (C, Y, X) array (percentiles of ``chw`` itself unless ``lohi`` given)."""
        if lohi is None:
            lohi = percentiles(chw, self.low, self.high) if self.per_image or not self.lo else (self.lo, self.hi)
        return normalize(chw, *lohi)

    def to_dict(self) -> dict:
        return {"method": "percentile", "low": self.low, "high": self.high, "per_image": self.per_image,
                "lo": list(self.lo), "hi": list(self.hi)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(low=float(d.get("low", 1.0)), high=float(d.get("high", 99.8)),
                   per_image=bool(d.get("per_image", True)), lo=tuple(d.get("lo", ())), hi=tuple(d.get("hi", ())))


@dataclass
class Sample:
    """One training plane: normalised image (C, Y, X) float32 and target (Y, X) int64.

    ``regression``: the float target (K, Y, X) float32 of a "flows" or
    "distance" instance head (see :func:`~napari_seglab.core.labels._modes.head_targets`), cropped and
    augmented with the image; ``head`` names which, so flow vectors turn with
    the patch. ``target`` then holds the foreground (0/1, -1 ignored).

    ``boxes``: the (N, 5) float32 boxes [y0, x0, y1, x1, class] of a box
    detector's sample, in the sample's pixels (N may be 0: a negative);
    ``target`` then marks the annotated pixels (0; -1 ignored).

    ``labels``: the painted labels of the plane at the sample's scale, kept
    where self-training adds whole objects to them (the ``objects`` mode).
    """

    image: np.ndarray
    target: np.ndarray
    instances: np.ndarray | None = None  # object ids for detection models
    regression: np.ndarray | None = None
    head: str | None = None
    boxes: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def annotated(self) -> int:
        return int(np.count_nonzero(self.target != IGNORE))


#: scribbles hold strokes out for validation only when every class has at least this many:
#: with fewer, the strokes lost to training cost more Dice than the noisy model choice gains
#: (sample scribbles, 8 and 14 strokes, 60 s: Dice 0.72 with a 15 % hold-out, 0.84 without)
MIN_STROKES_FOR_HOLDOUT = 10


def split_validation(target: np.ndarray, sparse: bool, fraction: float = 0.15,
                     rng: np.random.Generator | None = None, block: int = 64,
                     min_strokes: int = MIN_STROKES_FOR_HOLDOUT) -> np.ndarray:
    """Boolean (Y, X) mask of pixels held out for validation.

    Sparse scribbles: a fraction of the strokes (connected annotated
    components) of every class, when each class has at least ``min_strokes``
    strokes. Dense labels: a fraction of ``block``-sized tiles. Returns an
    all-False mask when the annotation is too small to spare any.
    """
    rng = rng or np.random.default_rng(0)
    annotated = target != IGNORE
    held = np.zeros(target.shape, bool)
    if fraction <= 0:
        return held
    if sparse:
        for cls in np.unique(target[annotated]):
            comps, n = ndi.label(target == cls)
            if n < max(2, min_strokes):
                return np.zeros(target.shape, bool)
            k = max(1, int(round(n * fraction)))
            for c in rng.choice(np.arange(1, n + 1), size=k, replace=False):
                held |= comps == c
        return held
    ny, nx = max(1, target.shape[0] // block), max(1, target.shape[1] // block)
    if ny * nx < 4:
        return held
    k = max(1, int(round(ny * nx * fraction)))
    by, bx = target.shape[0] / ny, target.shape[1] / nx
    for idx in rng.choice(ny * nx, size=k, replace=False):
        iy, ix = divmod(int(idx), nx)
        held[int(iy * by):int((iy + 1) * by), int(ix * bx):int((ix + 1) * bx)] = True
    return held & annotated


def _pad_to(arr: np.ndarray, size: int, fill: float | None) -> np.ndarray:
    """Pad the last two axes of ``arr`` up to ``size`` (reflect when fill is None)."""
    py, px = max(0, size - arr.shape[-2]), max(0, size - arr.shape[-1])
    if not py and not px:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, py), (0, px)]
    if fill is None:
        mode = "reflect" if min(arr.shape[-2:]) > 1 else "edge"
        return np.pad(arr, pad, mode=mode)
    return np.pad(arr, pad, mode="constant", constant_values=fill)


def _zoom_patch(size: int, img, tgt, ins, reg):
    """Resample a square crop and its targets to ``size``: images and float targets linearly,
    class and object labels by nearest neighbour (the foreground channel of a head target stays 0/1
    and the vectors or distances stay inside it)."""
    f = size / img.shape[-1]

    def zoom(arr, order):
        out = ndi.zoom(arr, (1,) * (arr.ndim - 2) + (f, f), order=order, mode="nearest", grid_mode=True)
        return out[..., :size, :size]

    img, tgt = zoom(img, 1), zoom(tgt, 0)
    ins = None if ins is None else zoom(ins, 0)
    if reg is not None:
        fg = zoom(reg[:1], 0)
        reg = np.concatenate([fg, zoom(reg[1:], 1) * fg]) if len(reg) > 1 else fg
    return img, tgt, ins, reg


class PatchSampler:
    """Draws augmented training patches from samples, favouring annotated pixels.

    ``favour`` is the probability that a patch is centred near a randomly
    chosen annotated pixel (sparse scribbles need it); the rest are uniform.
    Augmentation: the 8 rotations and reflections of the square (a transpose,
    a vertical and a horizontal flip, each drawn), intensity gain/offset/noise,
    and with ``scale_jitter`` > 1 a zoom drawn log-uniformly in
    [1 / scale_jitter, scale_jitter] (a larger or smaller crop resampled to
    the patch size), so objects are seen a little larger and smaller than
    painted. Flow targets turn and zoom with the patch, so their vectors keep
    pointing at the object centres.

    Box samples (``Sample.boxes`` set): boxes are cropped, zoomed, transposed
    and flipped exactly like the image (:mod:`napari_seglab.core.data._box_patches`); a box cut by
    the patch border is clipped, and dropped when less than
    :data:`~napari_seglab.core.data._box_patches.MIN_VISIBLE` of it is visible. ``favour`` is then the
    probability that a patch is placed around a randomly chosen box; the rest
    are uniform (background patches, and patches of images without boxes).
    Samples are drawn in proportion to their area, and a sample smaller than
    the patch is padded with 0 (a reflection would show unboxed objects).
    """

    def __init__(self, samples: Sequence[Sample], patch: int, rng: np.random.Generator,
                 favour: float = 0.8, augment: bool = True, scale_jitter: float = 1.0):
        if not scale_jitter >= 1.0:
            raise InputError(f"scale jitter must be at least 1; got {scale_jitter}")
        if not samples:
            raise InputError("no training data")
        self.samples = [Sample(_pad_to(s.image, patch, 0.0 if s.boxes is not None else None),
                               _pad_to(s.target, patch, IGNORE),
                               None if s.instances is None else _pad_to(s.instances, patch, 0),
                               None if s.regression is None else _pad_to(s.regression, patch, 0.0), s.head,
                               None if s.boxes is None else np.asarray(s.boxes, np.float32).reshape(-1, 5))
                        for s in samples]
        self.patch = patch
        self.rng = rng
        self.favour = favour
        self.augment = augment
        self.scale_jitter = float(scale_jitter)
        self._coords = [np.flatnonzero(s.target.reshape(-1) != IGNORE) if s.boxes is None
                        else box_centres(s.boxes, s.target.shape) for s in self.samples]
        weights = np.array([max(1, len(c) if s.boxes is None else int(np.count_nonzero(s.target != IGNORE)))
                            for c, s in zip(self._coords, self.samples, strict=True)], float)
        self._weights = weights / weights.sum()

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One patch: image (C, P, P) float32, target (P, P) int64, instances or None."""
        return self._draw()[:3]

    def _draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One patch: image, target, instances, head target (None where absent)."""
        return self._draw_all()[:4]

    def _draw_all(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """One patch: image, target, instances, head target and boxes (None where absent)."""
        rng = self.rng
        i = int(rng.choice(len(self.samples), p=self._weights))
        s, coords = self.samples[i], self._coords[i]
        h, w = s.target.shape
        p = self._crop_size(h, w)
        if len(coords) and rng.random() < self.favour:
            cy, cx = divmod(int(coords[rng.integers(len(coords))]), w)
            y0 = int(np.clip(cy - rng.integers(p // 8, p - p // 8), 0, h - p))
            x0 = int(np.clip(cx - rng.integers(p // 8, p - p // 8), 0, w - p))
        else:
            y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        img = s.image[:, y0:y0 + p, x0:x0 + p]
        tgt = s.target[y0:y0 + p, x0:x0 + p]
        ins = None if s.instances is None else s.instances[y0:y0 + p, x0:x0 + p]
        reg = None if s.regression is None else s.regression[:, y0:y0 + p, x0:x0 + p]
        boxes = None if s.boxes is None else clip_boxes(s.boxes, y0, x0, p, p)
        if p != self.patch:
            img, tgt, ins, reg = _zoom_patch(self.patch, img, tgt, ins, reg)
            if boxes is not None:  # clipped again: the zoomed crop is cut to the patch
                boxes = clip_boxes(zoom_boxes(boxes, self.patch / p), 0, 0, self.patch, self.patch)
        if self.augment:
            img, tgt, ins, reg, boxes = self._augment(img, tgt, ins, reg, s.head, boxes)
        return (np.ascontiguousarray(img, np.float32), np.ascontiguousarray(tgt),
                None if ins is None else np.ascontiguousarray(ins),
                None if reg is None else np.ascontiguousarray(reg, np.float32), boxes)

    def _crop_size(self, h: int, w: int) -> int:
        """Side of the crop to cut: the patch, or with scale jitter a zoomed one (within the sample)."""
        if not (self.augment and self.scale_jitter > 1.0):
            return self.patch
        zoom = float(np.exp(self.rng.uniform(-1.0, 1.0) * np.log(self.scale_jitter)))
        return int(np.clip(round(self.patch / zoom), 8, min(h, w)))

    def _augment(self, img, tgt, ins, reg=None, head=None, boxes=None):
        from ..objects import transform

        rng = self.rng
        draws = {"transpose": bool(rng.integers(2)), "flip_y": bool(rng.integers(2)), "flip_x": bool(rng.integers(2))}
        if boxes is not None:
            boxes = transform_boxes(boxes, tgt.shape[-2:], **draws)
        img, tgt = transform(img, **draws), transform(tgt, **draws)
        ins = None if ins is None else transform(ins, **draws)
        if reg is not None:
            reg = transform(reg, **draws, kind="flows" if head == "flows" else None)
        gain = rng.uniform(0.75, 1.3)
        offset = rng.uniform(-0.1, 0.1)
        img = img * gain + offset
        if rng.random() < 0.3:
            img = img + rng.normal(0, rng.uniform(0.0, 0.05), img.shape).astype(np.float32)
        return img, tgt, ins, reg, boxes

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, list | None]:
        """A batch: images (B, C, P, P) float32, targets (B, P, P) int64, instances list or None."""
        return self._batch(size)[:3]

    def head_batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch for a "flows" / "distance" head: images (B, C, P, P) float32, foreground targets
        (B, P, P) int64 (-1 ignored) and float targets (B, K, P, P) float32."""
        if self.samples[0].regression is None:
            raise InputError("these samples carry no instance-head targets")
        imgs, tgts, _, regs, _ = self._batch(size)
        return imgs, tgts, regs

    def box_batch(self, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """A batch for a box detector: images (B, C, P, P) float32, annotated-pixel targets (B, P, P)
        int64 (0 annotated, -1 not) and B (N, 5) float32 box arrays in patch pixels (N may be 0)."""
        if self.samples[0].boxes is None:
            raise InputError("these samples carry no boxes")
        imgs, tgts, _, _, boxes = self._batch(size)
        return imgs, tgts, boxes

    def _batch(self, size: int):
        draws = [self._draw_all() for _ in range(size)]
        imgs = np.stack([d[0] for d in draws])
        tgts = np.stack([d[1] for d in draws])
        ins = None if draws[0][2] is None else [d[2] for d in draws]
        regs = None if draws[0][3] is None else np.stack([d[3] for d in draws])
        boxes = None if draws[0][4] is None else [d[4] for d in draws]
        return imgs, tgts, ins, regs, boxes


# ----------------------------------------------------------------------------- object scale

#: the object diameter (pixels) the fast U-Net resolves best: training and prediction resample
#: images by TARGET_DIAMETER / (median painted object diameter). On the sample nuclei (median
#: diameter 21 px), 150 steps of the fast preset on dense labels, unseen image: AP@0.5 0.90 at
#: scale 1, 0.85 at 1.4, 0.84 at 2 (the scale only pays for objects far from this size)
TARGET_DIAMETER = 24.0
#: resampling factors outside this range cost too much memory or lose too much detail
MIN_SCALE, MAX_SCALE = 0.25, 4.0


def median_diameter(objects: Sequence[np.ndarray]) -> float | None:
    """Median equivalent diameter (pixels) of the objects in label planes (0 = none), or None."""
    areas = []
    for lab in objects:
        counts = np.bincount(np.asarray(lab, np.int64).ravel())
        areas.extend(int(c) for c in counts[1:] if c >= 4)
    if not areas:
        return None
    return float(2.0 * np.sqrt(np.median(areas) / np.pi))


def scale_for(diameter: float | None, target: float = TARGET_DIAMETER) -> float:
    """Resampling factor that brings objects of ``diameter`` px to ``target`` px (1.0 when unknown).

    Rounded to a tenth and kept at 1.0 within 15 % of the target (resampling
    for a small gain only costs time); clipped to [MIN_SCALE, MAX_SCALE].
    """
    if not diameter or diameter <= 0:
        return 1.0
    raw = target / diameter
    if abs(np.log(raw)) < np.log(1.15):
        return 1.0
    return float(np.clip(round(raw, 1), MIN_SCALE, MAX_SCALE))


def check_scale(scale: float) -> float:
    """Validate a user- or checkpoint-given object scale."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) \
            or not MIN_SCALE <= scale <= MAX_SCALE:
        raise InputError(f"object scale must be a number from {MIN_SCALE} to {MAX_SCALE}; got {scale!r}")
    return float(scale)


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """(Y, X) of a plane of ``shape`` resampled by ``scale`` (at least 1 pixel each)."""
    return max(1, int(round(shape[-2] * scale))), max(1, int(round(shape[-1] * scale)))


def resample_image(chw: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resample a (C, Y, X) float plane to (C, *shape): bilinear, antialiased when shrinking; float32."""
    import torch
    import torch.nn.functional as F

    if tuple(chw.shape[-2:]) == tuple(shape):
        return np.asarray(chw, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(chw, np.float32))[None]
    shrink = shape[0] < chw.shape[-2] or shape[1] < chw.shape[-1]
    y = F.interpolate(x, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False,
                      antialias=shrink)
    return y[0].numpy()


def resample_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a (Y, X) label plane to ``shape`` (pixel centres aligned)."""
    h, w = labels.shape[-2:]
    if (h, w) == tuple(shape):
        return labels
    ys = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[..., ys[:, None], xs[None, :]]
