"""The ``retinanet`` family: torchvision RetinaNet (single-stage, focal loss over an FPN) for boxes.

Architectures: ``retinanet_resnet18_fpn`` (ours: a ResNet-18 FPN, much
lighter on a CPU, with the GroupNorm head of torchvision's v2; the default) and torchvision's ``retinanet_resnet50_fpn``
(and ``_v2``), which have COCO weights. Settings for many small objects
(``ModelSpec.options`` overrides each):

- anchors of 8..128 px on the 5 levels P3-P7 (3 scales x 3 ratios per
  location, as torchvision's 32..512 px ones, so COCO weights still fit);
- up to 2000 detections per image and 4000 candidates per level before NMS
  (torchvision keeps 300 and 1000: too few for a field of dense nuclei);
- no resizing (see :class:`~napari_seglab.core.models._detector.NoResizeTransform`).
"""

from __future__ import annotations

from functools import partial

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
    "detections_per_img": CATALOGUE["retinanet"].max_objects,
    "topk_candidates": 4000,  # per FPN level, before NMS (torchvision: 1000)
    "box_score_thresh": 0.05,
    "nms_thresh": 0.5,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
}


def stock_weights(arch: str):
    """The torchvision COCO weights enum of ``arch`` (None for the ResNet-18 architecture, which has none)."""
    return coco_weights(arch, "RetinaNet_ResNet50_FPN_Weights", "RetinaNet_ResNet50_FPN_V2_Weights")


def _anchors(spec: Spec):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    # three scales per level, 2^0, 2^(1/3), 2^(2/3), as torchvision's RetinaNet
    bases = option(spec, DEFAULTS, "anchor_sizes")
    sizes = tuple((int(s), int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in bases)
    ratios = (tuple(float(r) for r in option(spec, DEFAULTS, "aspect_ratios")),) * len(sizes)
    return AnchorGenerator(sizes, ratios)


def build_retinanet(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """RetinaNet of ``spec``; returns (model, weights note). ``pretrained`` as :func:`~napari_seglab.core.models._detector.load_pretrained`."""
    from torchvision.models import detection
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    check_box_options(spec, DEFAULTS)
    settings = {"detections_per_img": int(option(spec, DEFAULTS, "detections_per_img")),
                "topk_candidates": int(option(spec, DEFAULTS, "topk_candidates")),
                "score_thresh": float(option(spec, DEFAULTS, "box_score_thresh")),
                "nms_thresh": float(option(spec, DEFAULTS, "nms_thresh"))}
    anchors = _anchors(spec)
    if spec.arch == "retinanet_resnet18_fpn":
        backbone = resnet18_fpn([2, 3, 4], LastLevelP6P7(256, 256))
        # the v2 head (GroupNorm, GIoU box loss): from scratch it doubled box AP@0.5 after 100 steps on the
        # sample nuclei (0.24 against 0.11 with torchvision's plain head) at the same cost per step
        head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], spec.n_classes,
                             norm_layer=partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        detector = detection.RetinaNet(backbone, spec.n_classes, anchor_generator=anchors, head=head, **settings)
    else:
        detector = getattr(detection, spec.arch)(weights=None, weights_backbone=None, num_classes=spec.n_classes,
                                                 **settings)
        detector.anchor_generator = anchors  # the same 9 anchors per location as the builder's
    detector.transform = no_resize(spec, DEFAULTS)
    note = load_pretrained(detector, pretrained, allow_download, spec.arch, stock_weights(spec.arch),
                           backbone_weights(spec.arch))
    return DetectorModel(detector, spec.in_channels, spec.n_classes), note


FAMILY = Family.of(CATALOGUE["retinanet"], build=build_retinanet, loss=detector_loss, predict_objects=predict_boxes_tiled,
                   stored_options={**BOX_STORED_OPTIONS, "topk_candidates": ("int", 1, 100_000),
                    "aspect_ratios": ("nums", 0.01, 100.0, 3)},
                   check_options=lambda spec: check_box_options(spec, DEFAULTS), stock_weights=stock_weights)
