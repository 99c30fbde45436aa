"""Training: settings, samples, set-up, the loop, the run's state, box training.

:func:`iter_train` is the generator (the blocking twin is :func:`napari_seglab.core.api.train`).
Modules: ``_config`` (TrainConfig, declared once), ``_data`` (samples from image / label pairs),
``_boxes`` (samples and validation of box detectors), ``_setup`` (model, hold-out, optimiser),
``_loop`` (steps and evaluations), ``_state`` (the best model and its checkpoints), ``_runtime``
(time budget, threads, bfloat16, Ctrl-C), ``_train`` (the generator that ties them).
"""

from ._boxes import BoxValidator, prepare_box_data, split_boxes
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
from ._data import prepare_samples, prepare_training_data
from ._runtime import ThreadTuner, cost_note
from ._train import TrainResult, iter_train

__all__ = [
    "BoxValidator", "DEFAULT_TIME_LIMIT", "DENSE_BATCH", "DENSE_PATCH", "DIAMETER",
    "ResolvedTrainConfig", "SPARSE_BATCH", "SPARSE_PATCH", "ThreadTuner", "TrainConfig",
    "TrainResult", "cost_note", "iter_train", "prepare_box_data", "prepare_samples",
    "prepare_training_data", "split_boxes",
]
