"""What a model family declares: the :class:`Family` record every family module fills in once.

A family is a kind of network SegLab can build, train and predict with. Its
module (``unet.py``, ``fcn.py``, ``maskrcnn.py``) holds the code and one
``FAMILY = Family(...)``; :mod:`napari_seglab.core.models._registry` lists the modules. Everything else
in SegLab asks the family record, never the family's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import InputError

#: what a family's network outputs: per-pixel classes, one mask per object, or one box per object
KINDS = ("semantic", "instances", "boxes")
#: instance heads of a dense network (``options["head"]``): "boundary" is the 3-class background /
#: interior / boundary map (absent from older checkpoints); "flows" and "distance" are the
#: regression heads of :mod:`napari_seglab.core.objects._flows` (a foreground logit plus flow or distance channels)
INSTANCE_HEADS = ("boundary", "flows", "distance")
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
class Preset:
    """A named choice of encoder and depth for a family (the Model tab and ``seglab train --preset``).

    ``cpu_step_s``: seconds per training step (batch 8 of 128 px, 1 channel,
    bfloat16 autocast, 2 threads) measured on this project's quiet 2-core
    machine with ``benchmarks/train_step_profile.py``; float32 costs about
    1.5-1.8x more, a busy machine 2-4x more; a GPU step costs milliseconds.
    """

    name: str
    encoder: str
    encoder_depth: int
    decoder_channels: tuple[int, ...]
    cpu_step_s: float
    summary: str

    def options(self) -> dict:
        return {"encoder_depth": self.encoder_depth, "decoder_channels": list(self.decoder_channels)}


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


@dataclass(frozen=True)
class Family:
    """Everything SegLab needs to know about one model family, declared in the family's own module.

    Hooks: ``build(spec, pretrained, allow_download) -> (model, weights note)``;
    ``loss(model, LossInputs) -> scalar tensor`` (puts nothing on the CPU);
    ``predict_objects(loaded_model, chw, *, tile, overlap, score_threshold,
    stop)`` a generator of (tiles done, total) returning ((Y, X) int32 object
    ids, one row per object) or None when stopped; None for dense
    (``semantic``) families, which share the blended tiled path of
    :mod:`napari_seglab.core.predict._image`. ``check_options(spec)`` refuses bad family options;
    ``check_stored(model_dict)`` refuses names a checkpoint may not make SegLab
    build (both raise InputError).
    """

    name: str
    kind: str  # one of KINDS
    label: str  # the drop-down text
    archs: tuple[str, ...]
    default_arch: str
    build: Builder
    loss: LossHook
    #: bytes of working memory a forward pass needs per input pixel (float32, CPU): the tile size
    bytes_per_pixel: int
    #: a floor of the bytes per pixel one float32 training step needs: refuses a patch x batch too big
    train_bytes_per_pixel: int
    lr: float  # AdamW learning rate from scratch
    lr_finetune: float  # ... from pretrained weights or a checkpoint
    exportable: bool  # the network maps an image to a tensor (TorchScript / ONNX / bioimage.io)
    predict_objects: Callable[..., Any] | None = None
    encoders: Callable[[], list[str]] | None = None  # None: the architecture fixes the backbone
    default_encoder: str | None = None
    presets: Mapping[str, Preset] = field(default_factory=dict)
    default_preset: Mapping[str, str] = field(default_factory=dict)  # device type -> preset name
    heads: tuple[str, ...] = ("boundary",)  # instance heads the family's network can carry
    label_modes: tuple[str, ...] | None = None  # None: every label mode
    label_modes_note: str = ""  # why only those
    stored_options: Mapping[str, OptionRule] = field(default_factory=dict)
    check_options: Callable[[Spec], None] | None = None
    check_stored: Callable[[Mapping], None] | None = None
    #: stock weights: stock model name -> (architecture, source) and architecture -> torchvision weights
    stock: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    stock_weights: Callable[[str], Any] | None = None
    channels_last: bool = True  # the network takes a batch tensor (detectors take lists)
    #: a blanked-out hold-out would teach a whole-object family "background" there: it picks its
    #: best model by training loss instead
    holdout: bool = True
    steps_to_useful: int = 150  # steps on the sample nuclei before a prediction is worth correcting
    cpu_step_s: float = 0.4  # typical seconds per CPU training step when no preset says

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"family {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.default_arch not in self.archs:
            raise ValueError(f"family {self.name}: default architecture {self.default_arch!r} not in its list")
        if (self.predict_objects is None) != (self.kind == "semantic"):
            raise ValueError(f"family {self.name}: object families need predict_objects, dense ones must not")

    @property
    def semantic(self) -> bool:
        """True when the network outputs a value per pixel (classes, or an instance head's maps)."""
        return self.kind == "semantic"

    def default_lr(self, fine_tune: bool) -> float:
        return self.lr_finetune if fine_tune else self.lr

    def model_name(self, spec: Spec) -> str:
        """``arch`` or ``arch/encoder``: the network's name for messages."""
        return f"{spec.arch}/{spec.encoder}" if self.encoders is not None else spec.arch


def choose(name: str, options: Sequence[str], what: str) -> str:
    """``name`` as spelt in ``options`` (case-insensitive); InputError listing them otherwise."""
    if name in options:
        return name
    lowered = {o.lower(): o for o in options}
    if isinstance(name, str) and name.lower() in lowered:
        return lowered[name.lower()]
    raise InputError(f"unknown {what} {name!r}; choose one of: {', '.join(options)}")
