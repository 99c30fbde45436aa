"""Prediction: loaded models, tiled and blended inference over 2D, 3D and time, stock models.

:func:`iter_predict_image` is the generator (the blocking twin is
:func:`napari_seglab.core.api.predict_image`). Modules: ``_image`` (whole images), ``_forward``
(one plane over a tile plan), ``_options`` (prediction settings declared once), ``_stock``
(torchvision's COCO / VOC models, from a cache only).
"""

from ._forward import (
    expand_probabilities,
    forward_probabilities,
    forward_raw,
    iter_plane,
    predict_plane,
)
from ._image import (
    LoadedModel,
    Prediction,
    iter_predict_image,
    labels_from_probabilities,
    load_model,
    wrap_model,
)
from ._options import BatchOptions, PredictOptions
from ._stock import STOCK, load_stock, stock_available, stock_meta

__all__ = [
    "BatchOptions", "LoadedModel", "PredictOptions", "Prediction", "STOCK", "expand_probabilities",
    "forward_probabilities", "forward_raw", "iter_plane", "iter_predict_image",
    "labels_from_probabilities", "load_model", "load_stock", "predict_plane", "stock_available",
    "stock_meta", "wrap_model",
]
