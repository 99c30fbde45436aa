"""Stock torchvision models (COCO Mask R-CNN, VOC FCN), ready to predict without training.

They are loaded only from the torch hub cache (``$TORCH_HOME/hub/checkpoints``,
by default ``~/.cache/torch/hub/checkpoints``) unless a caller passes
``allow_download=True``: nothing downloads silently, and the message for
missing weights says how to fetch them by hand. They see everyday photographs, not microscopy, so
they are a starting point for fine-tuning more than an answer. Each family
declares its own stock models (``Family.stock``).
"""

from __future__ import annotations

import torch

from ..data import Normalization
from ..errors import InputError
from ..models import Checkpoint, CheckpointMeta, ModelSpec, build_model, families, hub_file
from ._image import LoadedModel, load_model

#: stock model name -> (family, architecture, weights source)
STOCK = {name: (family.name, arch, source) for family in families() for name, (arch, source) in family.stock.items()}


def _weights_enum(name: str):
    family, arch, _ = STOCK[name]
    return next(f for f in families() if f.name == family).stock_weights(arch)


def _weights_name(name: str) -> str:
    """The torchvision name of a stock model's weights, e.g. ``FCN_ResNet50_Weights.DEFAULT``."""
    return f"{type(_weights_enum(name)).__name__}.DEFAULT"


def stock_available(name: str) -> bool:
    """True when the stock weights of ``name`` are in the torch hub cache."""
    return hub_file(_weights_enum(name).url).is_file()


def stock_info(name: str, in_channels: int = 3, tile: int = 512) -> CheckpointMeta:
    """Checkpoint metadata for a stock model (what predict_image needs)."""
    if name not in STOCK:
        raise InputError(f"unknown stock model {name!r}; choose one of: {', '.join(STOCK)}")
    family, arch, _ = STOCK[name]
    categories = list(_weights_enum(name).meta["categories"])
    spec = ModelSpec(family=family, arch=arch, encoder="", in_channels=in_channels, n_classes=len(categories))
    return CheckpointMeta(model=spec, label_mode="classes" if spec.semantic else "instances",
                          class_names=tuple(categories), normalization=Normalization(low=0.0, high=100.0),
                          patch=tile, training={"stock": name})


def stock_meta(name: str, in_channels: int = 3, tile: int = 512) -> dict:
    """:func:`stock_info` in the on-disk dict form."""
    return stock_info(name, in_channels, tile).to_dict()


def load_stock(name: str, device: str | torch.device = "auto", *, in_channels: int = 3,
               allow_download: bool = False, tile: int = 512) -> LoadedModel:
    """A :class:`~napari_seglab.core.predict._image.LoadedModel` of a stock model; InputError when its weights are absent."""
    info = stock_info(name, in_channels, tile)
    _, _, source = STOCK[name]
    url = _weights_enum(name).url
    if not allow_download and not hub_file(url).is_file():
        raise InputError(f"stock model {name}: its weights ({hub_file(url).name}) are not in the torch cache "
                         f"{hub_file(url).parent}; on a machine with internet, download them with python -c "
                         f"\"import torchvision; torchvision.models.get_weight('{_weights_name(name)}')"
                         f".get_state_dict()\" and copy the file there")
    model, note = build_model(info.model, source, allow_download=allow_download)
    if "random" in note:
        raise InputError(f"stock model {name}: {note}")
    info = info.replace(training={**info.training, "weights": note})
    return load_model(Checkpoint(meta=info, state_dict=model.state_dict(), path=name), device)
