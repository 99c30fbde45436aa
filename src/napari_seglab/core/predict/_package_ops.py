"""The pieces of a bioimage.io package SegLab translates: tensor axes and sizes, and processing steps.

:class:`PackageAxes` maps SegLab's (B, C, Y, X) to a package's axis order and back; :func:`valid_size`
is the smallest size a package accepts; :class:`InputScaling` turns the affine preprocessing steps into
SegLab's per-plane ``(lo, hi)`` scaling; :func:`tensor_ops` and :func:`apply_ops` run the element-wise
steps inside the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import percentiles
from ..errors import InputError

_EPS = 1e-6


# ----------------------------------------------------------------------------- axes and sizes


class PackageAxes:
    """The package's tensor axes, as SegLab needs them: order, channel count, sizes, halo."""

    def __init__(self, tensor, path: Path, what: str):
        self.ids = [str(a.id) for a in tensor.axes]
        kinds = [a.type for a in tensor.axes]
        if "z" in self.ids or "time" in kinds or "index" in kinds:
            raise InputError(f"{path}: the {what} has axes {', '.join(self.ids)}; SegLab runs 2D networks "
                             "(batch, channel, y, x in any order)")
        if "y" not in self.ids or "x" not in self.ids:
            raise InputError(f"{path}: the {what} has no y and x axes ({', '.join(self.ids)})")
        self.batch = "batch" in kinds
        self.channel_id = next((i for i, k in zip(self.ids, kinds, strict=True) if k == "channel"), None)
        ch = next((a for a in tensor.axes if a.type == "channel"), None)
        self.channels = len(ch.channel_names) if ch is not None else 1
        self.sizes = {str(a.id): a.size for a in tensor.axes if str(a.id) in ("y", "x")}
        self.halo = max([int(getattr(a, "halo", 0) or 0) for a in tensor.axes] + [0])

    def to_package(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, Y, X) -> the package's order (a batch or channel axis it lacks is dropped, size 1)."""
        names = ["batch", self.channel_id or "_c", "y", "x"]
        if not self.batch:
            x, names = x[0], names[1:]
        if self.channel_id is None:
            x = x[0] if not self.batch else x[:, 0]
            names.remove("_c")
        return x.permute([names.index(i) for i in self.ids])

    def from_package(self, y: torch.Tensor) -> torch.Tensor:
        """The package's order -> (B, C, Y, X)."""
        order = list(self.ids)
        if not self.batch:
            y, order = y[None], ["batch", *order]
        if self.channel_id is None:
            y, order = y.unsqueeze(1), [order[0], "_c", *order[1:]]
        return y.permute([order.index(i) for i in ("batch", self.channel_id or "_c", "y", "x")])


def valid_size(size, n: int) -> int:
    """The smallest size the package accepts that holds ``n`` pixels (InputError when none does)."""
    if isinstance(size, int):
        if n > size:
            raise InputError(f"a tile of {n} pixels does not fit the package's fixed size {size}")
        return size
    low, step = int(getattr(size, "min", 1)), int(getattr(size, "step", 0) or 0)
    if n <= low or step == 0:
        return max(low, n) if step else low
    return low + -(-(n - low) // step) * step


def fixed_side(axes: PackageAxes) -> int | None:
    """The smaller fixed spatial size of the input, or None when both are parameterised."""
    fixed = [s for s in axes.sizes.values() if isinstance(s, int)]
    return min(fixed) if fixed else None


# ----------------------------------------------------------------------------- processing


def _kwargs(step) -> dict:
    kw = getattr(step, "kwargs", None)
    return kw.model_dump() if kw is not None and hasattr(kw, "model_dump") else {}


def _per_channel(value, channels: int) -> np.ndarray:
    arr = np.asarray(value, np.float64).reshape(-1)
    return np.repeat(arr, channels) if arr.size == 1 else arr


class InputScaling:
    """A package's preprocessing as SegLab's per-plane scaling: ``(lo, hi)`` per channel from a raw plane.

    The affine steps (``scale_range``, ``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``,
    ``scale_linear``) compose into one ``(x - lo) / (hi - lo)``; statistics are those of the whole plane.
    """

    def __init__(self, steps: Sequence, channels: int, path: Path):
        self.steps, self.channels = [], channels
        for step in steps:
            kind, kw = step.id, _kwargs(step)
            joint = "channel" in [str(a) for a in (kw.get("axes") or ["channel"])] if kind in (
                "scale_range", "zero_mean_unit_variance") else False
            if kind in ("scale_linear", "fixed_zero_mean_unit_variance"):
                if kind == "scale_linear" and np.any(_per_channel(kw.get("gain", 1.0), channels) <= 0):
                    raise InputError(f"{path}: a scale_linear preprocessing with a gain <= 0 is not supported")
            elif kind in ("scale_range", "zero_mean_unit_variance"):
                if kw.get("reference_tensor"):
                    raise InputError(f"{path}: preprocessing from another tensor is not supported")
            else:
                raise InputError(f"{path}: the preprocessing step {kind!r} is not one SegLab applies before the "
                                 "network")
            self.steps.append((kind, kw, joint))

    def __call__(self, chw: np.ndarray) -> tuple[list[float], list[float]]:
        a, b = np.ones(self.channels), np.zeros(self.channels)  # the values so far: a * x + b
        for kind, kw, joint in self.steps:
            if kind == "scale_linear":
                g, o = _per_channel(kw.get("gain", 1.0), self.channels), _per_channel(kw.get("offset", 0.0), self.channels)
                a, b = g * a, g * b + o
                continue
            if kind == "fixed_zero_mean_unit_variance":
                mean = _per_channel(kw.get("mean"), self.channels)
                std = _per_channel(kw.get("std"), self.channels)
                lo, span = mean, std + kw.get("eps", _EPS)
            else:
                source = chw.reshape(1, -1) if joint else chw
                if kind == "scale_range":
                    low, high = percentiles(source, kw.get("min_percentile", 0.0), kw.get("max_percentile", 100.0))
                else:
                    flat = source.reshape(source.shape[0], -1).astype(np.float64)
                    low, high = flat.mean(axis=1), flat.mean(axis=1) + flat.std(axis=1)
                low = _per_channel(low, self.channels) * a + b
                high = _per_channel(high, self.channels) * a + b
                lo, span = low, high - low + kw.get("eps", _EPS)
            a, b = a / span, (b - lo) / span
        lo = -b / a
        return lo.tolist(), (lo + 1.0 / a).tolist()


def tensor_ops(steps: Sequence, path: Path, what: str) -> list[tuple[str, dict]]:
    """The element-wise steps a network applies itself: clip, sigmoid, binarize, scale_linear, ensure_dtype."""
    ops = []
    for step in steps:
        kind, kw = step.id, _kwargs(step)
        if kind not in ("clip", "sigmoid", "binarize", "scale_linear", "ensure_dtype"):
            raise InputError(f"{path}: the {what} step {kind!r} is not supported by SegLab's predictor")
        ops.append((kind, kw))
    return ops


def apply_ops(ops, x: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    for kind, kw in ops:
        if kind == "clip":
            x = x.clamp(min=kw.get("min"), max=kw.get("max"))
        elif kind == "sigmoid":
            x = torch.sigmoid(x)
        elif kind == "binarize":
            x = (x > torch.as_tensor(kw["threshold"], dtype=x.dtype).reshape(_shape(kw["threshold"], x, channel_dim))).to(x.dtype)
        elif kind == "scale_linear":
            shape = _shape(kw.get("gain", 1.0), x, channel_dim)
            x = x * torch.as_tensor(kw.get("gain", 1.0), dtype=x.dtype).reshape(shape) + \
                torch.as_tensor(kw.get("offset", 0.0), dtype=x.dtype).reshape(shape)
    return x


def _shape(value, x: torch.Tensor, channel_dim: int) -> list[int]:
    n = np.asarray(value).size
    shape = [1] * x.ndim
    if n > 1:
        shape[channel_dim] = n
    return shape


def split_preprocessing(steps: Sequence) -> tuple[list, list]:
    """Split preprocessing into the affine steps SegLab applies per plane and what follows them."""
    affine = ("scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_linear")
    last = max([i for i, s in enumerate(steps) if s.id in affine] + [-1])
    before = [s for s in steps[:last + 1] if s.id != "ensure_dtype"]
    return before, list(steps[last + 1:])
