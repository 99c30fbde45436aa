"""The ``fasterrcnn`` family: torchvision Faster R-CNN (two-stage: region proposals, then a box head) for boxes.

Architectures: ``fasterrcnn_resnet18_fpn`` (ours: a ResNet-18 FPN, much
lighter on a CPU; the default) and torchvision's ``fasterrcnn_resnet50_fpn``
(and ``_v2``), which have COCO weights. Settings as Mask R-CNN's, for many
small objects (``ModelSpec.options`` overrides each): anchors of 8..128 px on
the 5 levels P2-P6, up to 2000 detections per image from 2000 region
proposals (torchvision: 100 from 1000), no resizing.
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
    "anchor_sizes": [8, 16, 32, 64, 128],
    "aspect_ratios": [0.5, 1.0, 2.0],
    "detections_per_img": CATALOGUE["fasterrcnn"].max_objects,
    "rpn_pre_nms_top_n": 2000,  # per feature level, at prediction (torchvision: 1000)
    "rpn_post_nms_top_n": 2000,  # at prediction: the most boxes the box head can return (torchvision: 1000)
    "rpn_train_top_n": 1000,  # proposals kept while training (torchvision: 2000)
    "box_batch_size_per_image": 256,  # sampled regions per training image (torchvision: 512)
    "box_score_thresh": 0.05,
    "nms_thresh": 0.5,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


def stock_weights(arch: str):
    """The torchvision COCO weights enum of ``arch`` (None for the ResNet-18 architecture, which has none)."""
    return coco_weights(arch, "FasterRCNN_ResNet50_FPN_Weights", "FasterRCNN_ResNet50_FPN_V2_Weights")


def build_fasterrcnn(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """Faster R-CNN of ``spec``; returns (model, weights note). ``pretrained`` as :func:`~napari_seglab.core.models._detector.load_pretrained`."""
    from torchvision.models import detection
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    check_box_options(spec, DEFAULTS)
    sizes = tuple((int(s),) for s in option(spec, DEFAULTS, "anchor_sizes"))
    anchors = AnchorGenerator(sizes, (tuple(float(r) for r in option(spec, DEFAULTS, "aspect_ratios")),) * 5)
    train_top = int(option(spec, DEFAULTS, "rpn_train_top_n"))
    settings = {
        "box_detections_per_img": int(option(spec, DEFAULTS, "detections_per_img")),
        "box_score_thresh": float(option(spec, DEFAULTS, "box_score_thresh")),
        "box_nms_thresh": float(option(spec, DEFAULTS, "nms_thresh")),
        "box_batch_size_per_image": int(option(spec, DEFAULTS, "box_batch_size_per_image")),
        "rpn_pre_nms_top_n_train": train_top, "rpn_post_nms_top_n_train": train_top,
        "rpn_pre_nms_top_n_test": int(option(spec, DEFAULTS, "rpn_pre_nms_top_n")),
        "rpn_post_nms_top_n_test": int(option(spec, DEFAULTS, "rpn_post_nms_top_n")),
    }
    if spec.arch == "fasterrcnn_resnet18_fpn":
        backbone = resnet18_fpn([1, 2, 3, 4])  # P2-P5 and a pooled P6, as the ResNet-50 builder
        detector = detection.FasterRCNN(backbone, spec.n_classes, rpn_anchor_generator=anchors, **settings)
    else:
        detector = getattr(detection, spec.arch)(weights=None, weights_backbone=None, num_classes=spec.n_classes,
                                                 **settings)
        detector.rpn.anchor_generator = anchors  # the v2 builder fixes its own: ours has the same 3 per location
    detector.transform = no_resize(spec, DEFAULTS)
    note = load_pretrained(detector, pretrained, allow_download, spec.arch, stock_weights(spec.arch),
                           backbone_weights(spec.arch))
    return DetectorModel(detector, spec.in_channels, spec.n_classes), note


FAMILY = Family.of(CATALOGUE["fasterrcnn"], build=build_fasterrcnn, loss=detector_loss, predict_objects=predict_boxes_tiled,
                   stored_options={**BOX_STORED_OPTIONS, "rpn_pre_nms_top_n": ("int", 1, 100_000),
                    "rpn_post_nms_top_n": ("int", 1, 100_000), "rpn_train_top_n": ("int", 1, 100_000),
                    "box_batch_size_per_image": ("int", 1, 100_000), "aspect_ratios": ("nums", 0.01, 100.0, 3)},
                   check_options=lambda spec: check_box_options(spec, DEFAULTS), stock_weights=stock_weights)
