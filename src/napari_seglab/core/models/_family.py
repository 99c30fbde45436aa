"""What a model family declares in code: the :class:`Family` record each family module fills in once.

A family is a kind of network SegLab can build, train and predict with. Its plain facts (name,
kind, architectures, learning rates, presets, costs) are its :class:`~napari_seglab.core.models._catalogue.FamilyCard`
in the torch-free catalogue; its module (``_unet.py``, ``_fcn.py``, ``_maskrcnn.py``...) holds the
code and one ``FAMILY = Family.of(card, build=..., loss=...)``; :mod:`napari_seglab.core.models._registry`
lists the modules. Everything else in SegLab asks the family record, never the family's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ._catalogue import FamilyCard

#: a rule for one stored option: (kind "int" | "num" | "nums", low, high[, list length])
OptionRule = tuple


class Spec(Protocol):
    """What a family's hooks read from a :class:`~napari_seglab.core.models._registry.ModelSpec` (kept here so they need no registry)."""

    family: str
    arch: str
    encoder: str
    in_channels: int
    n_classes: int
    options: dict

    @property
    def out_channels(self) -> int: ...


@dataclass(frozen=True)
class LossInputs:
    """One training batch for a family's loss hook.

    ``images``: (B, C, P, P) float32 on the model's device. ``targets``: (B,
    P, P) int64 class per pixel, -1 where not annotated. ``instances``: B (P,
    P) object-id arrays (instance labels only). ``regression``: (B, K, P, P)
    float32 targets of a "flows" / "distance" head, else None. ``boxes``: B
    (N, 5) float32 arrays [y0, x0, y1, x1, class] in patch pixels (y1/x1
    exclusive, class >= 1; N may be 0) for box families, else None.
    """

    images: torch.Tensor
    targets: np.ndarray
    instances: Sequence[np.ndarray] | None = None
    regression: np.ndarray | None = None
    head: str = "boundary"
    class_weights: Sequence[float] | None = None  # one weight per class (see ..losses.balanced_class_weights)
    focal_gamma: float = 0.0
    boxes: Sequence[np.ndarray] | None = None


Builder = Callable[[Spec, "str | None", bool], "tuple[nn.Module, str]"]
LossHook = Callable[[nn.Module, LossInputs], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Family(FamilyCard):
    """A family's card (its plain facts) with the code that builds, trains and runs its networks.

    Hooks: ``build(spec, pretrained, allow_download) -> (model, weights note)``;
    ``loss(model, LossInputs) -> scalar tensor`` (puts nothing on the CPU);
    ``predict_objects(loaded_model, chw, *, tile, overlap, score_threshold,
    stop)`` a generator of (tiles done, total) returning ((Y, X) int32 object
    ids, one row per object) or None when stopped; None for dense
    families, which share the blended tiled path of
    :mod:`napari_seglab.core.predict._image`. ``check_options(spec)`` refuses bad family options;
    ``check_stored(model_dict)`` refuses names a checkpoint may not make SegLab
    build (both raise InputError).
    """

    build: Builder
    loss: LossHook
    predict_objects: Callable[..., Any] | None = None
    encoders: Callable[[], list[str]] | None = None  # None: the architecture fixes the backbone
    stored_options: Mapping[str, OptionRule] = field(default_factory=dict)
    check_options: Callable[[Spec], None] | None = None
    check_stored: Callable[[Mapping], None] | None = None
    #: architecture -> torchvision weights enum of its stock model (see ``FamilyCard.stock``)
    stock_weights: Callable[[str], Any] | None = None

    def __post_init__(self):
        super().__post_init__()
        if (self.predict_objects is None) != self.kind.dense:
            raise ValueError(f"family {self.name}: object families need predict_objects, dense ones must not")

    @classmethod
    def of(cls, card: FamilyCard, **code) -> Family:
        """The family of ``card`` with its code (the hooks above, as keywords)."""
        return cls(**{f.name: getattr(card, f.name) for f in fields(FamilyCard)}, **code)

    def model_name(self, spec: Spec) -> str:
        """``arch`` or ``arch/encoder``: the network's name for messages."""
        return f"{spec.arch}/{spec.encoder}" if self.encoders is not None else spec.arch
