"""Model families, losses, checkpoints, metadata and export.

Layers inside this package, top to bottom (see ``.importlinter``): ``_export`` > ``_bioimageio`` >
``_bioimageio_descr`` > ``_traced`` > ``_checkpoint`` > ``_metadata`` > ``_registry`` (the table,
ModelSpec, build_model) > the family modules (``_unet``, ``_fcn``, ``_maskrcnn``, and the box detectors ``_retinanet``, ``_fcos``, ``_fasterrcnn``) > their
shared pieces (``_dense``, ``_detector`` for the torchvision detectors) > ``_family``, ``_weights``,
``_losses`` > ``_catalogue`` (every family's plain facts: no torch). A new family is one card in
the catalogue, one module declaring ``FAMILY = Family.of(card, ...)`` and one line in the registry.

The catalogue's names are imported with this package; the others (which need torch) on first use.
"""

from ..lazy import lazy_all, lazy_names
from ._catalogue import (
    CARDS,
    CATALOGUE,
    DEFAULT_ARCH,
    DEFAULT_ENCODER,
    DEFAULT_FAMILY,
    DEFAULT_PRESET,
    FAMILIES,
    FCN_ARCHS,
    INSTANCE_HEADS,
    MASKRCNN_ARCHS,
    MAX_CLASSES,
    MAX_OBJECTS,
    PRESETS,
    SMP_ARCHS,
    FamilyCard,
    Kind,
    Preset,
    family_card,
)

#: the names that need torch, by module
_LAZY = {
    "_checkpoint": ("Checkpoint", "check_weights_fit", "describe_checkpoint", "load_checkpoint", "save_checkpoint"),
    "_detector": ("batch_box_targets", "boxes_from_instances", "merge_tile_boxes"),
    "_export": ("FORMATS", "META_FILE", "check_export_target", "example_input", "export_bioimageio",
                "export_model", "export_onnx", "export_torchscript", "exportable_model"),
    "_bioimageio": ("ARCH_SHA256", "ExportResult", "PackageInfo", "Verdict", "bioimageio_problem",
                    "iter_export_bioimageio", "test_package"),
    "_traced": ("ProbabilityModel", "check_exportable", "onnx_bytes"),
    "_family": ("Family", "LossInputs"),
    "_fcn": ("FCNWrapper",),
    "_losses": ("balanced_class_weights", "bce_dice", "ce_dice", "probabilities", "segmentation_loss"),
    "_maskrcnn": ("build_maskrcnn", "detection_loss", "detection_targets", "predict_instances_tiled"),
    "_metadata": ("CheckpointMeta", "DescribedModel", "parse_meta"),
    "_registry": ("REGISTRY", "ModelSpec", "build_model", "check_head", "check_spec", "count_parameters",
                  "families", "get_family", "preset_spec"),
    "_unet": ("check_stored_encoder", "smp_encoders"),
    "_weights": ("hub_file",),
}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
__all__ = [
    "CARDS", "CATALOGUE", "DEFAULT_ARCH", "DEFAULT_ENCODER", "DEFAULT_FAMILY", "DEFAULT_PRESET", "FAMILIES",
    "FCN_ARCHS", "INSTANCE_HEADS", "MASKRCNN_ARCHS", "MAX_CLASSES", "MAX_OBJECTS", "PRESETS", "SMP_ARCHS", "FamilyCard", "Kind", "Preset",
    "family_card",
]
__all__ += lazy_all(_LAZY)
