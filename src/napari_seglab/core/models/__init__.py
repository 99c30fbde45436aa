"""Model families, losses, checkpoints, metadata and export.

Layers inside this package, top to bottom (see ``.importlinter``): ``_export`` > ``_checkpoint`` >
``_metadata`` > ``_registry`` (the table, ModelSpec, build_model) > the family modules (``_unet``,
``_fcn``, ``_maskrcnn``, and the box detectors ``_retinanet``, ``_fcos``, ``_fasterrcnn``) > their
shared pieces (``_dense``, ``_detector`` for the torchvision detectors) > ``_family``, ``_weights``,
``_losses``. A new family is one module declaring ``FAMILY = Family(...)`` and one line in the
registry.
"""

from ._checkpoint import Checkpoint, describe_checkpoint, load_checkpoint, save_checkpoint
from ._detector import batch_box_targets, boxes_from_instances, merge_tile_boxes
from ._export import (
    META_FILE,
    example_input,
    export_bioimageio,
    export_model,
    export_torchscript,
    exportable_model,
)
from ._family import INSTANCE_HEADS, KINDS, Family, LossInputs, Preset
from ._fcn import FCN_ARCHS, FCNWrapper
from ._losses import balanced_class_weights, bce_dice, ce_dice, probabilities, segmentation_loss
from ._maskrcnn import (
    MASKRCNN_ARCHS,
    build_maskrcnn,
    detection_loss,
    detection_targets,
    predict_instances_tiled,
)
from ._metadata import CheckpointMeta, DescribedModel
from ._registry import (
    DEFAULT_ARCH,
    DEFAULT_FAMILY,
    FAMILIES,
    REGISTRY,
    ModelSpec,
    build_model,
    check_head,
    check_spec,
    count_parameters,
    families,
    get_family,
    preset_spec,
)
from ._unet import (
    DEFAULT_ENCODER,
    DEFAULT_PRESET,
    PRESETS,
    SMP_ARCHS,
    check_stored_encoder,
    smp_encoders,
)
from ._weights import hub_file

__all__ = [
    "Checkpoint", "CheckpointMeta", "DEFAULT_ARCH", "DEFAULT_ENCODER", "DEFAULT_FAMILY",
    "DEFAULT_PRESET", "DescribedModel", "FAMILIES", "FCNWrapper", "FCN_ARCHS", "Family", "INSTANCE_HEADS", "KINDS",
    "LossInputs", "MASKRCNN_ARCHS", "META_FILE", "ModelSpec", "PRESETS", "Preset", "REGISTRY",
    "SMP_ARCHS", "balanced_class_weights", "batch_box_targets", "bce_dice", "boxes_from_instances",
    "build_maskrcnn", "build_model", "ce_dice", "check_head", "check_spec", "check_stored_encoder",
    "count_parameters", "describe_checkpoint", "detection_loss", "detection_targets",
    "example_input", "export_bioimageio", "export_model", "export_torchscript", "exportable_model",
    "families", "get_family", "hub_file", "load_checkpoint", "merge_tile_boxes",
    "predict_instances_tiled", "preset_spec", "probabilities", "save_checkpoint",
    "segmentation_loss", "smp_encoders",
]
