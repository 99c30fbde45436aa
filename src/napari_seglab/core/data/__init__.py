"""What a network sees: normalisation, object scale, training samples, patches and augmentation.

Modules: ``_samples`` (normalisation, samples, patch sampling, augmentation), ``_box_patches``
(the same geometry applied to box arrays), ``_scale`` (object size of strokes and objects), ``_pixels``
(physical pixel sizes: the resampling between an image's and a model's).
"""

from ._box_patches import MIN_VISIBLE, clip_boxes, empty_boxes, transform_boxes, zoom_boxes
from ._pixels import (
    anisotropy_from_pixel_size,
    check_pixel_size,
    format_size,
    match_pixel_sizes,
    pixel_ratio,
    pixel_size_or,
    prediction_factor,
    resample_region,
    source_window,
    yx_size,
)
from ._samples import (
    MIN_STROKES_FOR_HOLDOUT,
    TARGET_DIAMETER,
    Normalization,
    PatchSampler,
    Sample,
    check_scale,
    median_diameter,
    normalize,
    percentiles,
    resample_image,
    resample_labels,
    scale_for,
    scaled_shape,
    split_validation,
    to_chw,
)
from ._scale import STROKE_TARGET_DIAMETER, estimate_scale, stroke_diameter, target_diameter

__all__ = [
    "MIN_STROKES_FOR_HOLDOUT", "MIN_VISIBLE", "Normalization", "PatchSampler",
    "STROKE_TARGET_DIAMETER", "Sample", "TARGET_DIAMETER", "check_scale", "clip_boxes",
    "empty_boxes", "estimate_scale", "median_diameter", "normalize", "percentiles",
    "resample_image", "resample_labels", "scale_for", "scaled_shape", "split_validation",
    "stroke_diameter", "target_diameter", "to_chw", "transform_boxes", "zoom_boxes",
    "anisotropy_from_pixel_size", "check_pixel_size", "format_size", "match_pixel_sizes", "pixel_ratio",
    "pixel_size_or", "prediction_factor", "resample_region", "source_window", "yx_size",
]
