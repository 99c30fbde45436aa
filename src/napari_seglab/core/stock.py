"""Stock torchvision models (COCO Mask R-CNN, VOC FCN), ready to predict without training.

They are loaded only from the torch hub cache (``$TORCH_HOME/hub/checkpoints``,
by default ``~/.cache/torch/hub/checkpoints``) unless a caller passes
``allow_download=True``: nothing downloads silently, and the message for
missing weights says how to fetch them by hand. They see everyday photographs, not microscopy, so
they are a starting point for fine-tuning more than an answer.
"""

from __future__ import annotations

import torch

from .data import Normalization
from .errors import InputError
from .models import ModelSpec, _hub_file, build_model

STOCK = {
    "maskrcnn_coco": ("maskrcnn", "maskrcnn_resnet50_fpn", "coco"),
    "maskrcnn_v2_coco": ("maskrcnn", "maskrcnn_resnet50_fpn_v2", "coco"),
    "fcn_resnet50_voc": ("fcn", "fcn_resnet50", "voc"),
    "fcn_resnet101_voc": ("fcn", "fcn_resnet101", "voc"),
}


def _weights_enum(arch: str):
    from torchvision.models import detection, segmentation

    return {
        "maskrcnn_resnet50_fpn": detection.MaskRCNN_ResNet50_FPN_Weights.DEFAULT,
        "maskrcnn_resnet50_fpn_v2": detection.MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT,
        "fcn_resnet50": segmentation.FCN_ResNet50_Weights.DEFAULT,
        "fcn_resnet101": segmentation.FCN_ResNet101_Weights.DEFAULT,
    }[arch]


def _weights_name(arch: str) -> str:
    """The torchvision name of an architecture's default weights, e.g. ``FCN_ResNet50_Weights.DEFAULT``."""
    return f"{type(_weights_enum(arch)).__name__}.DEFAULT"


def stock_available(name: str) -> bool:
    """True when the stock weights of ``name`` are in the torch hub cache."""
    family, arch, _ = STOCK[name]
    return _hub_file(_weights_enum(arch).url).is_file()


def stock_meta(name: str, in_channels: int = 3, tile: int = 512) -> dict:
    """Checkpoint-style metadata for a stock model (what predict_image needs)."""
    if name not in STOCK:
        raise InputError(f"unknown stock model {name!r}; choose one of: {', '.join(STOCK)}")
    family, arch, _ = STOCK[name]
    categories = list(_weights_enum(arch).meta["categories"])
    spec = ModelSpec(family=family, arch=arch, encoder="", in_channels=in_channels, n_classes=len(categories),
                     options={"patch": tile} if family == "maskrcnn" else {})
    return {"model": spec.to_dict(), "label_mode": "instances" if family == "maskrcnn" else "classes",
            "n_classes": len(categories), "class_names": categories,
            "normalization": Normalization(low=0.0, high=100.0).to_dict(), "patch": tile,
            "training": {"stock": name}, "metrics": {}}


def load_stock(name: str, device: str | torch.device = "auto", *, in_channels: int = 3,
               allow_download: bool = False, tile: int = 512):
    """A :class:`~.predict.LoadedModel` of a stock model; InputError when its weights are absent."""
    from .checkpoint import Checkpoint
    from .predict import load_model

    meta = stock_meta(name, in_channels, tile)
    family, arch, source = STOCK[name]
    url = _weights_enum(arch).url
    if not allow_download and not _hub_file(url).is_file():
        raise InputError(f"stock model {name}: its weights ({_hub_file(url).name}) are not in the torch cache "
                         f"{_hub_file(url).parent}; on a machine with internet, download them with python -c "
                         f"\"import torchvision; torchvision.models.get_weight('{_weights_name(arch)}')"
                         f".get_state_dict()\" and copy the file there")
    model, note = build_model(ModelSpec.from_dict(meta["model"]), source, allow_download=allow_download)
    if "random" in note:
        raise InputError(f"stock model {name}: {note}")
    meta["training"]["weights"] = note
    return load_model(Checkpoint(meta=meta, state_dict=model.state_dict(), path=name), device)
