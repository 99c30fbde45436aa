"""The registry of model families, and the :class:`ModelSpec` that names one network of a family.

Adding a family is a card in :mod:`napari_seglab.core.models._catalogue`, one module that declares
``FAMILY = Family.of(card, ...)`` (see :mod:`napari_seglab.core.models._family`) and one line in
:data:`_FAMILIES` below. Every name is looked
up here; an unknown name raises an InputError listing the valid ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from torch import nn

from ..errors import InputError
from ..objects import n_outputs
from . import (
    _fasterrcnn as fasterrcnn,
)
from . import (
    _fcn as fcn,
)
from . import (
    _fcos as fcos,
)
from . import (
    _maskrcnn as maskrcnn,
)
from . import (
    _retinanet as retinanet,
)
from . import (
    _unet as unet,
)
from ._catalogue import DEFAULT_ENCODER, DEFAULT_FAMILY, FAMILIES, INSTANCE_HEADS, choose
from ._family import Family

#: every family with its code, in the catalogue's order (the order of the drop-downs)
_FAMILIES: tuple[Family, ...] = (unet.FAMILY, fcn.FAMILY, maskrcnn.FAMILY, retinanet.FAMILY, fcos.FAMILY,
                                  fasterrcnn.FAMILY)
if tuple(f.name for f in _FAMILIES) != FAMILIES:
    raise RuntimeError(f"the registry's families {[f.name for f in _FAMILIES]} are not the catalogue's {FAMILIES}")
REGISTRY: dict[str, Family] = {f.name: f for f in _FAMILIES}


def families() -> tuple[Family, ...]:
    """Every registered family, the default first."""
    return _FAMILIES


def get_family(name: str) -> Family:
    """The family called ``name`` (any letter case); InputError listing the families otherwise."""
    return REGISTRY[choose(name, tuple(REGISTRY), "model family")]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in the checkpoint (frozen: :func:`check_spec` returns a copy).

    ``out_channels`` is the number of logit channels (1 for a binary
    semantic model); ``n_classes`` counts background. ``options`` holds
    family-specific settings (encoder depth, detector sizes and limits,
    the instance head).
    """

    family: str = DEFAULT_FAMILY
    arch: str = _FAMILIES[0].default_arch
    encoder: str = DEFAULT_ENCODER
    in_channels: int = 1
    n_classes: int = 2
    options: dict = field(default_factory=dict)

    @property
    def family_entry(self) -> Family:
        """The registry's :class:`Family` of this spec."""
        return get_family(self.family)

    @property
    def head(self) -> str:
        """The instance head: "boundary" (also every semantic and old model), "flows" or "distance"."""
        head = (self.options or {}).get("head", "boundary")
        return head if head in self.family_entry.heads else "boundary"

    @property
    def has_regression_head(self) -> bool:
        """True for the "flows" and "distance" heads, whose raw outputs are decoded into objects."""
        return self.head in ("flows", "distance")

    @property
    def out_channels(self) -> int:
        if self.has_regression_head:
            return n_outputs(self.head)
        return 1 if self.n_classes == 2 and self.semantic else self.n_classes

    @property
    def semantic(self) -> bool:
        """True for a dense network (one value per pixel), False for object and box detectors."""
        return self.family_entry.semantic

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {k: d[k] for k in ("family", "arch", "encoder", "in_channels", "n_classes", "options") if k in d}
        return cls(**known)


def check_spec(spec: ModelSpec, device_type: str = "cpu") -> ModelSpec:
    """``spec`` with its names normalised, once validated; unknown names list the valid ones.

    An architecture of the default family given with another family came with the defaults: it
    becomes that family's default on a device of ``device_type`` (``FamilyCard.default_arch_on``).
    """
    family = get_family(spec.family)
    arch = spec.arch
    if family.name != DEFAULT_FAMILY and arch in REGISTRY[DEFAULT_FAMILY].archs:
        arch = family.default_arch_on(device_type)  # the default family's architecture came with the defaults
    spec = replace(spec, family=family.name, arch=choose(arch, family.archs, f"{family.name} architecture"))
    if family.check_options is not None:
        family.check_options(spec)
    check_head((spec.options or {}).get("head", "boundary"), family.name)
    if spec.in_channels < 1:
        raise InputError("a model needs at least one input channel")
    if spec.n_classes < 2:
        raise InputError("a model needs at least two classes (background and one class)")
    return spec


def check_head(head, family: str = DEFAULT_FAMILY) -> str:
    """Validate an instance head name (from a user or a checkpoint) for ``family``; InputError if unknown."""
    if not isinstance(head, str) or head not in INSTANCE_HEADS:
        raise InputError(f"unknown instance head {str(head)[:40]!r}; choose one of {', '.join(INSTANCE_HEADS)}")
    entry = get_family(family)
    if head not in entry.heads:
        able = " and ".join(f.name for f in _FAMILIES if head in f.heads)
        raise InputError(f"{entry.label} has its own instance head; the {head!r} head is for the {able} families")
    return head


def preset_spec(name: str, in_channels: int = 1, n_classes: int = 2, head: str = "boundary",
                family: str = DEFAULT_FAMILY) -> ModelSpec:
    """The ModelSpec of ``family``'s preset ``name`` (e.g. the U-Net's "fast"), with ``head`` when not boundary."""
    entry = get_family(family)
    preset = entry.presets[choose(name, tuple(entry.presets), "model preset")]
    options = preset.options()
    if check_head(head, entry.name) != "boundary":
        options["head"] = head
    return ModelSpec(family=entry.name, arch=entry.default_arch, encoder=preset.encoder, in_channels=in_channels,
                     n_classes=n_classes, options=options)


def build_model(spec: ModelSpec, pretrained: str | None = None, *, allow_download: bool = False
                ) -> tuple[nn.Module, str]:
    """Build the model of ``spec``; returns (model, a note on where its weights came from).

    ``pretrained``: None (random init), ``"auto"`` / ``"imagenet"`` / ``"coco"``
    / ``"voc"`` (the family's stock weights when on disk; a note says when they
    are not), or a path to a ``.pth`` / ``.safetensors`` state dict.
    """
    spec = check_spec(spec)
    return spec.family_entry.build(spec, pretrained, allow_download)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
