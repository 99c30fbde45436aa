"""The ``fcn`` family: fully convolutional networks (Long et al.): a ResNet, a small head, bilinear upsampling.

Architectures:

- ``fcn_resnet18`` (ours, the default on a CPU): ResNet-18 through its third
  stage, that stage run at stride 8 instead of 16 (the first block keeps its
  resolution; torchvision cannot dilate ResNet-18's basic blocks), and
  torchvision's FCN head on its 256 channels. It trains from scratch about
  as fast as the U-Net's ``fast`` preset; a deeper fourth stage at stride 8
  costs ~3x per step for no gain on nuclei-sized objects.
- torchvision's ``fcn_resnet50`` / ``fcn_resnet101`` (dilated, stride 8): the
  stock VOC weights are used only when they are in the torch hub cache (or
  downloading is allowed). On a 2-core CPU a ResNet-50 FCN takes ~20 steps
  in 90 s and learns nothing in that time: the choice for a GPU.

A dense (semantic) family, like ``unet``.
"""

from __future__ import annotations

import os

from torch import nn

from ._catalogue import CATALOGUE
from ._dense import dense_loss
from ._family import Family, Spec
from ._weights import ChannelAdapter, hub_file, load_matching, load_state_file, torchvision_stock


class FCNWrapper(nn.Module):
    """torchvision FCN returning logits (B, K, Y, X) instead of a dict."""

    def __init__(self, fcn: nn.Module, in_channels: int):
        super().__init__()
        self.adapt = ChannelAdapter(in_channels)
        self.fcn = fcn

    def forward(self, x):
        return self.fcn(self.adapt(x))["out"]


#: the CPU-light architecture (no stock weights; an ImageNet ResNet-18 backbone when asked for)
LIGHT_ARCH = "fcn_resnet18"


def stock_weights(arch: str):
    """The torchvision weights enum of ``arch``'s stock (VOC) weights (None for the ResNet-18 FCN, which has none)."""
    from torchvision.models import segmentation as seg

    stock = {"fcn_resnet50": seg.FCN_ResNet50_Weights, "fcn_resnet101": seg.FCN_ResNet101_Weights}.get(arch)
    return None if stock is None else stock.DEFAULT


def light_fcn(out_channels: int) -> nn.Module:
    """The ResNet-18 FCN (see the module docstring), randomly initialised; its ``backbone`` is a ResNet-18 body."""
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    resnet = resnet18(weights=None)
    first = resnet.layer3[0]
    first.conv1.stride = (1, 1)  # stride 8 through the third stage
    first.downsample[0].stride = (1, 1)
    return FCN(IntermediateLayerGetter(resnet, {"layer3": "out"}), FCNHead(256, out_channels))


def _build_light(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    from torchvision.models import ResNet18_Weights

    fcn = light_fcn(spec.out_channels)
    note = "random initialisation"
    if pretrained in ("voc", "coco", "auto", "imagenet"):
        weights = ResNet18_Weights.IMAGENET1K_V1
        stock = torchvision_stock(weights, allow_download)
        if stock is None:
            note = (f"ImageNet ResNet-18 weights ({os.path.basename(weights.url)}) are not in the torch cache "
                    f"{hub_file(weights.url).parent}; training from random initialisation")
        else:
            fcn.backbone.load_state_dict(stock.get_state_dict(progress=False), strict=False)  # no fc, no layer4
            note = f"ImageNet backbone {weights}"
    elif pretrained:
        state = {k.removeprefix("fcn."): v for k, v in load_state_file(pretrained).items()}
        n = load_matching(fcn, state, str(pretrained), "a ResNet-18 FCN")
        note = f"weights from {pretrained} ({n} tensors)"
    return FCNWrapper(fcn, spec.in_channels), note


def build_fcn(spec: Spec, pretrained: str | None, allow_download: bool) -> tuple[nn.Module, str]:
    """The FCN of ``spec``; returns (model, weights note)."""
    from torchvision.models import segmentation as seg

    if spec.arch == LIGHT_ARCH:
        return _build_light(spec, pretrained, allow_download)
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
