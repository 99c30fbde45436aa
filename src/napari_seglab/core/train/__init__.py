"""Training: settings, samples, set-up, the loop, the run's state, box training.

:func:`iter_train` is the generator (the blocking twin is :func:`napari_seglab.core.api.train`).
Modules: ``_config`` (TrainConfig, declared once), ``_data`` (samples from image / label pairs),
``_boxes`` (samples and validation of box detectors), ``_setup`` (model, hold-out, optimiser),
``_loop`` (steps and evaluations), ``_state`` (the best model and its checkpoints), ``_runtime``
(time budget, threads, bfloat16, Ctrl-C), ``_train`` (the generator that ties them).
"""

from ..lazy import lazy_all, lazy_names
from ._config import (
    DEFAULT_TIME_LIMIT,
    DENSE_BATCH,
    DENSE_PATCH,
    DIAMETER,
    SPARSE_BATCH,
    SPARSE_PATCH,
    ResolvedTrainConfig,
    TrainConfig,
)

#: the names that need torch, by module (imported on first use: the CLI's options need only _config)
_LAZY = {
    "_boxes": ("BoxValidator", "prepare_box_data", "split_boxes"),
    "_data": ("MIN_BACKGROUND_SHARE", "MIN_CLASS_STROKES", "background_note", "background_share",
              "prepare_samples", "prepare_training_data", "stroke_counts", "stroke_note"),
    "_runtime": ("ThreadTuner", "cost_note"),
    "_train": ("TrainResult", "iter_train"),
}
__getattr__, __dir__ = lazy_names(__name__, _LAZY)
__all__ = [
    "DEFAULT_TIME_LIMIT", "DENSE_BATCH", "DENSE_PATCH", "DIAMETER", "ResolvedTrainConfig", "SPARSE_BATCH",
    "SPARSE_PATCH", "TrainConfig",
]
__all__ += lazy_all(_LAZY)
