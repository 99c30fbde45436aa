"""The ``fcos`` family: torchvision FCOS (single-stage, anchor-free: one box per FPN location) for boxes.

Architectures: ``fcos_resnet18_fpn`` (ours: a ResNet-18 FPN, much lighter
on a CPU; the default) and torchvision's ``fcos_resnet50_fpn``, which has
COCO weights. FCOS places one point per location of the levels P3-P7; its
"anchor sizes" (8..128 px, torchvision's own) set each level's centre
sampling radius and the object sizes it is responsible for, which suits
cells of about 8-128 px. Up to 2000 detections per image and 4000 candidates
per level before NMS (torchvision: 100 and 1000); no resizing.
"""

from __future__ import annotations

from torch import nn

from ._catalogue import CATALOGUE
from ._detector import (
    BOX_STORED_OPTIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectorModel,
    backbone_weights,
    check_box_options,
    coco_weights,
    detector_loss,
    load_pretrained,
    no_resize,
    option,
    predict_boxes_tiled,
    resnet18_fpn,
)
from ._family import Family, Spec

DEFAULTS = {
    "anchor_sizes": [8, 16, 32, 64, 128],  # equal to the strides of P3-P7, as FCOS assumes
    "detections_per_img": CATALOGUE["fcos"].max_objects,
    "topk_candidates": 4000,  # per FPN level, before NMS (torchvision: 1000)
    "box_score_thresh": 0.05,  # torchvision: 0.2; prediction raises it to the user's threshold
    "nms_thresh": 0.6,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


def stock_weights(arch: str):
    """The torchvision COCO weights enum of ``arch`` (None for the ResNet-18 architecture, which has none)."""
    return coco_weights(arch, "FCOS_ResNet50_FPN_Weights")


def build_fcos(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """FCOS of ``spec``; returns (model, weights note). ``pretrained`` as :func:`~napari_seglab.core.models._detector.load_pretrained`."""
    from torchvision.models import detection
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    check_box_options(spec, DEFAULTS)
    sizes = tuple((int(s),) for s in option(spec, DEFAULTS, "anchor_sizes"))
    anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
    settings = {"detections_per_img": int(option(spec, DEFAULTS, "detections_per_img")),
                "topk_candidates": int(option(spec, DEFAULTS, "topk_candidates")),
                "score_thresh": float(option(spec, DEFAULTS, "box_score_thresh")),
                "nms_thresh": float(option(spec, DEFAULTS, "nms_thresh"))}
    if spec.arch == "fcos_resnet18_fpn":
        backbone = resnet18_fpn([2, 3, 4], LastLevelP6P7(256, 256))
        detector = detection.FCOS(backbone, spec.n_classes, anchor_generator=anchors, **settings)
    else:
        detector = detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=spec.n_classes,
                                               **settings)
        detector.anchor_generator = anchors
    detector.transform = no_resize(spec, DEFAULTS)
    note = load_pretrained(detector, pretrained, allow_download, spec.arch, stock_weights(spec.arch),
                           backbone_weights(spec.arch))
    return DetectorModel(detector, spec.in_channels, spec.n_classes), note


FAMILY = Family.of(CATALOGUE["fcos"], build=build_fcos, loss=detector_loss, predict_objects=predict_boxes_tiled,
                   stored_options={**BOX_STORED_OPTIONS, "topk_candidates": ("int", 1, 100_000)},
                   check_options=lambda spec: check_box_options(spec, DEFAULTS), stock_weights=stock_weights)
