"""What a checkpoint records besides its weights: :class:`CheckpointMeta`, and the checks of an untrusted one.

On disk (format version 1) the metadata is a plain dict::

    {"model": {ModelSpec fields}, "label_mode": str, "n_classes": int, "class_names": [str],
     "normalization": {Normalization fields}, "patch": int, "scale": float, "object_area": float,
     "pixel_size": [float, float] or [float, float, float] (optional), "training": {settings, data summary, steps, seconds}, "metrics": {val_dice, history, ...}}

:meth:`CheckpointMeta.to_dict` writes that layout and :meth:`CheckpointMeta.from_dict`
reads it, so files of earlier releases load unchanged; :func:`parse_meta` first
refuses a dict of the wrong shape (a crafted or damaged file) naming the field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data import Normalization, check_scale
from ..errors import InputError
from ..labels import LABEL_MODES
from ._catalogue import MAX_CLASSES
from ._registry import DEFAULT_FAMILY, FAMILIES, ModelSpec, check_head, get_family

MAX_CHANNELS = 4096  # a sanity cap: a crafted file must not make the loader build a giant layer
MAX_PATCH = 8192  # the largest patch side a checkpoint may record (export traces one such input)
MAX_DEPTH, MAX_NODES, MAX_TEXT = 32, 200_000, 100_000  # bounds on the shape of the metadata
# model fields the loader relies on, with the types a well-formed file holds
_MODEL_FIELDS = {"family": str, "arch": str, "encoder": str, "in_channels": int, "n_classes": int,
                 "options": dict}
#: the top-level keys this version reads into fields (the others are kept in ``extra``)
_KNOWN = ("model", "label_mode", "n_classes", "class_names", "normalization", "patch", "scale", "object_area",
          "object_solidity", "pixel_size", "anisotropy", "training", "metrics")
#: the largest typical object area (pixels) a checkpoint may record
MAX_OBJECT_AREA = 1e8
#: the pixel sizes (µm) a checkpoint may record
MIN_PIXEL_UM, MAX_PIXEL_UM = 1e-4, 1e4


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything prediction needs to use a model, and a record of how it was trained.

    ``model``: the network; ``label_mode``: the labels it learnt from;
    ``class_names``: one name per class, background first (None in files
    that have none); ``normalization``: of the input; ``patch``: the training
    patch side in pixels; ``scale``: the factor images are resampled by
    before the network sees them; ``object_area``: the typical object's area (pixels, at that
    scale: the median of the whole painted objects, or for scribbles a disc
    of the diameter read from the image), which decoding uses to tell
    fragments from objects (None: unknown, as in older files); ``object_solidity``: how convex the whole
    objects it learnt from are (the 10th percentile of their solidity; None for scribbles and older files),
    below which decoding may split an object in two (:func:`~napari_seglab.core.objects.split_non_convex`);
    ``pixel_size``: µm per pixel of the
    training images as they were read, ``(y, x)`` or ``(z, y, x)`` (None: unknown); ``anisotropy``: the z step
    over the pixel size of the training stacks whose ZX/ZY planes it learnt (None: it learnt none), which 3D
    prediction falls back on when a stack does not say its own; ``training`` and ``metrics``: free-form
    records (settings and data summary; validation results and history);
    ``extra``: top-level keys this version does not know, kept as read.
    """

    model: ModelSpec
    label_mode: str = "scribbles"
    class_names: tuple[str, ...] | None = None
    normalization: Normalization = field(default_factory=Normalization)
    patch: int | None = None
    scale: float = 1.0
    object_area: float | None = None
    object_solidity: float | None = None
    pixel_size: tuple[float, ...] | None = None
    anisotropy: float | None = None
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return self.model.n_classes

    def replace(self, **changes) -> CheckpointMeta:
        """A copy with ``changes`` (``training`` / ``metrics`` replace the whole record)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The on-disk layout (a new dict of plain values)."""
        out = {"model": self.model.to_dict(), "label_mode": self.label_mode, "n_classes": self.n_classes}
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        out.update(normalization=self.normalization.to_dict(), patch=self.patch, scale=self.scale)
        if self.object_area is not None:
            out["object_area"] = self.object_area
        if self.object_solidity is not None:
            out["object_solidity"] = self.object_solidity
        if self.pixel_size is not None:
            out["pixel_size"] = [float(v) for v in self.pixel_size]
        if self.anisotropy is not None:
            out["anisotropy"] = float(self.anisotropy)
        out.update(training=copy.deepcopy(self.training), metrics=copy.deepcopy(self.metrics))
        out.update(copy.deepcopy(self.extra))
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> CheckpointMeta:
        """Read the on-disk layout (this release's or an earlier one); absent keys take their defaults."""
        names = d.get("class_names")
        scale, area, size = d.get("scale"), d.get("object_area"), d.get("pixel_size")
        return cls(model=ModelSpec.from_dict(d.get("model") or {}),
                   label_mode=d.get("label_mode", "scribbles"),
                   class_names=tuple(names) if names is not None else None,
                   normalization=Normalization.from_dict(d.get("normalization") or {}),
                   patch=d.get("patch"), scale=1.0 if scale is None else float(scale),
                   object_area=None if area is None else float(area),
                   object_solidity=None if d.get("object_solidity") is None else float(d["object_solidity"]),
                   pixel_size=None if size is None else tuple(float(v) for v in size),
                   anisotropy=None if d.get("anisotropy") is None else float(d["anisotropy"]),
                   training=copy.deepcopy(dict(d.get("training") or {})),
                   metrics=copy.deepcopy(dict(d.get("metrics") or {})),
                   extra={k: copy.deepcopy(v) for k, v in d.items() if k not in _KNOWN})

    @classmethod
    def coerce(cls, meta: CheckpointMeta | Mapping) -> CheckpointMeta:
        """``meta`` itself, or read from its on-disk dict form."""
        return meta if isinstance(meta, CheckpointMeta) else cls.from_dict(meta)


# ----------------------------------------------------------------------------- untrusted metadata

Bad = Callable[[str], InputError]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_shape(meta: dict, bad: Bad) -> None:
    """Walk the metadata without recursion: bounded depth, size and text; plain types only."""
    stack, nodes = [(meta, 0, "meta")], 0
    while stack:
        value, depth, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise bad(f"more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise bad(f"nested deeper than {MAX_DEPTH} levels at {where[:60]}...")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or len(k) > 200:
                    raise bad(f"a key of {where} is not a short text")
                stack.append((v, depth + 1, f"{where}.{k}"))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise bad(f"{where} is a text of {len(value)} characters")
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise bad(f"{where} is a {type(value).__name__}")


def _check_model(model, bad: Bad) -> None:
    if not isinstance(model, dict):
        raise bad(f"'model' is a {type(model).__name__}, not a model description")
    for key, kind in _MODEL_FIELDS.items():
        value = model.get(key)
        if key in model and (not isinstance(value, kind) or isinstance(value, bool)):
            raise bad(f"model.{key} = {value!r:.40} is not a {kind.__name__}")
    family_name = model.get("family", DEFAULT_FAMILY)
    try:
        family = get_family(family_name)
    except InputError:
        raise bad(f"unknown model family {family_name!r:.40} in model.family; known: {', '.join(FAMILIES)}") from None
    if family.name != family_name:
        raise bad(f"model.family = {family_name!r:.40} is not spelt as SegLab writes it ({family.name!r})")
    for key, low, high in (("in_channels", 1, MAX_CHANNELS), ("n_classes", 2, MAX_CLASSES)):
        if key in model and not low <= model[key] <= high:
            raise bad(f"model.{key} = {model[key]} is outside {low}..{high}")
    if len(model.get("arch", "")) > 100:
        raise bad("model.arch is too long to be an architecture name")
    if family.check_stored is not None:
        try:
            family.check_stored(model)
        except InputError as exc:
            raise bad(f"model.encoder: {exc}") from None
    if "head" in model.get("options", {}):
        try:
            check_head(model["options"]["head"], family.name)
        except InputError as exc:
            raise bad(f"model.options.head: {exc}") from None
    for key, value in model.get("options", {}).items():
        if key in family.stored_options:
            _check_option(f"model.options.{key}", value, family.stored_options[key], bad)


def _check_option(name: str, value, rule: tuple, bad: Bad) -> None:
    kind, low, high = rule[:3]
    values = value if kind == "nums" else [value]
    if kind == "nums" and (not isinstance(value, list) or len(value) != rule[3]):
        raise bad(f"{name} should be a list of {rule[3]} numbers")
    for v in values:
        ok = _is_int(v) if kind == "int" else _is_num(v)
        if not ok or not low <= v <= high:
            raise bad(f"{name} = {value!r:.60} is not {'a whole number' if kind == 'int' else 'a number'} "
                      f"in {low}..{high}")


def _check_normalization(norm, in_channels: int, bad: Bad) -> None:
    if not isinstance(norm, dict):
        raise bad("'normalization' is not a mapping")
    for key in ("low", "high"):
        if key in norm and not (_is_num(norm[key]) and 0 <= norm[key] <= 100):
            raise bad(f"normalization.{key} = {norm[key]!r:.40} is not a percentile in [0, 100]")
    if norm.get("low", 1.0) >= norm.get("high", 99.8):
        raise bad(f"normalization.low = {norm.get('low', 1.0)} is not below normalization.high = "
                  f"{norm.get('high', 99.8)}")
    if "per_image" in norm and not isinstance(norm["per_image"], bool):
        raise bad(f"normalization.per_image = {norm['per_image']!r:.40} is not true or false")
    for key in ("lo", "hi"):
        values = norm.get(key, [])
        if not isinstance(values, list):
            raise bad(f"normalization.{key} is not a list")
        if not all(_is_num(v) for v in values):
            raise bad(f"normalization.{key} holds non-numbers (or NaN/Inf)")
    if not norm.get("per_image", True) and not (len(norm.get("lo", [])) == len(norm.get("hi", []))
                                                == in_channels):
        raise bad(f"normalization.lo and .hi need one value per channel ({in_channels})")


def parse_meta(meta, path: Path | str) -> CheckpointMeta:
    """The CheckpointMeta of an untrusted on-disk dict; InputError naming the field of a wrong shape."""

    def bad(what: str) -> InputError:
        return InputError(f"{path}: malformed checkpoint metadata ({what})")

    _check_shape(meta, bad)
    _check_model(meta["model"], bad)
    _check_normalization(meta.get("normalization", {}), meta["model"].get("in_channels", 1), bad)
    if meta.get("label_mode", "scribbles") not in LABEL_MODES:
        raise bad(f"label_mode = {meta.get('label_mode')!r:.40} is not one of {', '.join(LABEL_MODES)}")
    patch = meta.get("patch")
    if patch is not None and not (_is_int(patch) and 32 <= patch <= MAX_PATCH):
        raise bad(f"patch = {patch!r:.40} is not a whole number of pixels in 32..{MAX_PATCH}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) <= MAX_CLASSES
                                  and all(isinstance(n, str) and len(n) <= 200 for n in names)):
        raise bad("class_names is not a list of short texts")
    for key in ("metrics", "training"):
        if key in meta and not isinstance(meta[key], dict):
            raise bad(f"'{key}' is not a mapping")
    if meta.get("scale") is not None:
        try:
            check_scale(meta["scale"])
        except InputError as exc:
            raise bad(f"scale: {exc}") from None
    area = meta.get("object_area")
    if area is not None and not (_is_num(area) and 0 < area <= MAX_OBJECT_AREA):
        raise bad(f"object_area = {area!r:.40} is not a number of pixels in (0, {MAX_OBJECT_AREA:.0e}]")
    solid = meta.get("object_solidity")
    if solid is not None and not (_is_num(solid) and 0 < solid <= 1):
        raise bad(f"object_solidity = {solid!r:.40} is not a share in (0, 1]")
    size = meta.get("pixel_size")
    if size is not None and not (isinstance(size, list) and len(size) in (2, 3)
                                 and all(_is_num(v) and MIN_PIXEL_UM <= v <= MAX_PIXEL_UM for v in size)):
        raise bad(f"pixel_size = {size!r:.60} is not 2 or 3 sizes in µm within {MIN_PIXEL_UM:g}..{MAX_PIXEL_UM:g}")
    z = meta.get("anisotropy")
    if z is not None and not (_is_num(z) and 0.1 <= z <= 50):
        raise bad(f"anisotropy = {z!r:.40} is not a z step over the pixel size from 0.1 to 50")
    return CheckpointMeta.from_dict(meta)


class DescribedModel:
    """What a checkpoint and a loaded model both read off their metadata, ``self.info`` (a :class:`CheckpointMeta`)."""

    info: CheckpointMeta

    @property
    def meta(self) -> dict:
        """The metadata in its on-disk form (a new dict: for JSON and for callers that read keys)."""
        return self.info.to_dict()

    @property
    def spec(self) -> ModelSpec:
        return self.info.model

    @property
    def label_mode(self) -> str:
        return self.info.label_mode

    @property
    def normalization(self) -> Normalization:
        return self.info.normalization
