"""Prediction: loaded models, tiled and blended inference over 2D, 3D and time, stock models.

:func:`iter_predict_image` is the generator (the blocking twin is
:func:`napari_seglab.core.api.predict_image`). Modules: ``_image`` (whole images), ``_forward``
(one plane over a tile plan), ``_options`` (prediction settings declared once), ``_stock``
(torchvision's COCO / VOC models, from a cache only), ``_package`` (bioimage.io model packages), ``_onnx``
(onnxruntime as a runtime), ``_volume`` (3D objects from a 2D instance network), ``_blocks`` (one 2D image
block by block, bounded memory).
"""

from ..lazy import lazy_all, lazy_names
from ._options import (
    AUTO_BLOCK_PIXELS,
    DEFAULT_BLOCK,
    DEFAULT_HALO,
    DEFAULT_VOLUME_BLOCK,
    MIN_VOLUME_BLOCK,
    BatchOptions,
    ModelRunOptions,
    PredictOptions,
    check_volume_blocks,
)

#: the names that need torch, by module (imported on first use: the CLI's options need only _options)
_LAZY = {
    "_forward": ("expand_probabilities", "forward_probabilities", "forward_raw", "iter_plane", "predict_plane"),
    "_image": ("LoadedModel", "Prediction", "decode_head", "decode_plane", "iter_predict_image", "labels_from_probabilities",
               "load_model", "wrap_model"),
    "_blocks": ("BlockGrid", "BlockResult", "block_factor", "iter_predict_blocks", "refusal", "scaling_sample"),
    "_large": ("chunk_for", "iter_predict_to_zarr", "labels_dtype"),
    "_blocks_dask": ("iter_predict_blocks_dask",),
    "_stock": ("STOCK", "load_stock", "stock_available", "stock_meta"),
    "_onnx": ("AUTO_ONNX_PIXELS", "AUTO_TORCH_TILE_PIXELS", "AutoNetwork", "OnnxNetwork", "RUNTIMES",
              "onnxruntime_available", "use_onnx"),
    "_volume": ("DEFAULT_METHOD", "METHODS", "anisotropy_from_pixel_size", "check_anisotropy", "describe_axes",
                "iter_predict", "iter_predict_volume", "resolve_anisotropy", "volume_head"),
    "_package": ("PackageNetwork", "is_package", "load_package", "package_checkpoint", "package_summary"),
}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
__all__ = ["AUTO_BLOCK_PIXELS", "DEFAULT_BLOCK", "DEFAULT_HALO", "DEFAULT_VOLUME_BLOCK", "MIN_VOLUME_BLOCK",
           "BatchOptions", "ModelRunOptions", "PredictOptions", "check_volume_blocks"]
__all__ += lazy_all(_LAZY)
