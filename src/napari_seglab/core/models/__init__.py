"""Model families: one module per family, one registry (see :mod:`.registry` and :mod:`.family`).

Layers inside this package, top to bottom: ``registry`` (the table, ModelSpec,
build_model) > the family modules (``unet``, ``fcn``, ``maskrcnn``, and the box
detectors ``retinanet``, ``fcos``, ``fasterrcnn``) > their shared pieces
(``dense``, ``detector`` for the torchvision detectors, ``weights``, ``family``).
"""

from .family import INSTANCE_HEADS, KINDS, Family, LossInputs, Preset
from .fcn import FCN_ARCHS, FCNWrapper
from .maskrcnn import MASKRCNN_ARCHS
from .registry import (
    DEFAULT_ARCH,
    DEFAULT_FAMILY,
    FAMILIES,
    ModelSpec,
    build_model,
    check_head,
    check_spec,
    count_parameters,
    families,
    get_family,
    preset_spec,
)
from .unet import (
    DEFAULT_ENCODER,
    DEFAULT_PRESET,
    PRESETS,
    SMP_ARCHS,
    check_stored_encoder,
    smp_encoders,
)

__all__ = [
    "DEFAULT_ARCH", "DEFAULT_ENCODER", "DEFAULT_FAMILY", "DEFAULT_PRESET", "FAMILIES", "FCN_ARCHS", "INSTANCE_HEADS",
    "KINDS", "MASKRCNN_ARCHS", "PRESETS", "SMP_ARCHS", "FCNWrapper", "Family", "LossInputs", "ModelSpec", "Preset",
    "build_model", "check_head", "check_spec", "check_stored_encoder", "count_parameters", "families",
    "get_family", "preset_spec", "smp_encoders",
]
