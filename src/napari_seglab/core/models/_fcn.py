"""The ``fcn`` family: torchvision's fully convolutional network (ResNet-50 / 101 backbone).

A dense (semantic) family, like ``unet``; the stock VOC weights are used
only when they are in the torch hub cache (or downloading is allowed).
"""

from __future__ import annotations

import os

from torch import nn

from ._dense import dense_loss
from ._family import INSTANCE_HEADS, Family, Spec
from ._weights import ChannelAdapter, hub_file, load_state_file, torchvision_stock

FCN_ARCHS = ("fcn_resnet50", "fcn_resnet101")
#: ready-made torchvision models: name -> (architecture, weights source)
STOCK = {"fcn_resnet50_voc": ("fcn_resnet50", "voc"), "fcn_resnet101_voc": ("fcn_resnet101", "voc")}


class FCNWrapper(nn.Module):
    """torchvision FCN returning logits (B, K, Y, X) instead of a dict."""

    def __init__(self, fcn: nn.Module, in_channels: int):
        super().__init__()
        self.adapt = ChannelAdapter(in_channels)
        self.fcn = fcn

    def forward(self, x):
        return self.fcn(self.adapt(x))["out"]


def stock_weights(arch: str):
    """The torchvision weights enum of ``arch``'s stock (VOC) weights."""
    from torchvision.models import segmentation as seg

    return {"fcn_resnet50": seg.FCN_ResNet50_Weights, "fcn_resnet101": seg.FCN_ResNet101_Weights}[arch].DEFAULT


def build_fcn(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """The FCN of ``spec``; returns (model, weights note)."""
    from torchvision.models import segmentation as seg

    builder = getattr(seg, spec.arch)
    default = stock_weights(spec.arch)
    note = "random initialisation"
    state = None
    if pretrained in ("voc", "coco", "auto", "imagenet"):
        stock = torchvision_stock(default, allow_download)
        if stock is None:
            note = (f"stock {spec.arch} weights ({os.path.basename(default.url)}) are not in the torch "
                    f"cache {hub_file(default.url).parent}; training from random initialisation")
        else:
            state = stock.get_state_dict(progress=False)
            note = f"stock weights {default}"
    elif pretrained:
        state = load_state_file(pretrained)
        note = f"weights from {pretrained}"
    fcn = builder(weights=None, weights_backbone=None, num_classes=21 if state is not None else spec.out_channels,
                  aux_loss=False)
    if state is not None:
        fcn.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux_classifier")}, strict=False)
        last = fcn.classifier[-1]
        if last.out_channels != spec.out_channels:  # a stock VOC model keeps its 21 classes
            fcn.classifier[-1] = nn.Conv2d(last.in_channels, spec.out_channels, 1)
    return FCNWrapper(fcn, spec.in_channels), note


FAMILY = Family(
    name="fcn",
    kind="semantic",
    label="FCN",
    archs=FCN_ARCHS,
    default_arch="fcn_resnet50",
    build=build_fcn,
    loss=dense_loss,
    bytes_per_pixel=900,  # FCN-resnet50: 880 at 512 px (float32, CPU, inference mode)
    train_bytes_per_pixel=1500,
    lr=3e-3,
    lr_finetune=1e-3,
    exportable=True,
    heads=INSTANCE_HEADS,
    stock=STOCK,
    stock_weights=stock_weights,
    steps_to_useful=300,
    cpu_step_s=2.5,
)
