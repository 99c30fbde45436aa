"""The ``fcn`` family: torchvision's fully convolutional network (ResNet-50 / 101 backbone).

A dense (semantic) family, like ``unet``; the stock VOC weights are used
only when they are in the torch hub cache (or downloading is allowed).
"""

from __future__ import annotations

import os

from torch import nn

from ._catalogue import CATALOGUE
from ._dense import dense_loss
from ._family import Family, Spec
from ._weights import ChannelAdapter, hub_file, load_state_file, torchvision_stock


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


FAMILY = Family.of(CATALOGUE["fcn"], build=build_fcn, loss=dense_loss, stock_weights=stock_weights)
