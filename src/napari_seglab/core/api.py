"""The Python API: blocking twins of the core's long generators, and what a script needs around them.

Each long core function is a generator of progress events (so one function
drives a napari worker, the CLI and the tests); its twin here runs it to the
end with :func:`~napari_seglab.core.events.drive` and returns the result, so a script never
handles generator plumbing (``api`` being this module)::

    prediction = api.predict_image(api.load_model("m.pt"), api.read_image("cells.tif").data)

Every twin takes ``on_event`` (called with each event: ``print`` shows
progress) and ``stop`` (a :class:`threading.Event` that ends the work early,
as the generator would). The generators themselves:
:func:`~napari_seglab.core.predict.iter_predict_image`, :func:`~napari_seglab.core.batch.iter_run_batch`,
:func:`~napari_seglab.core.train.iter_train`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .events import drive
from .io import read_image, read_labels
from .predict import LoadedModel, Prediction, load_model
from .train import TrainConfig

__all__ = ["TrainConfig", "drive", "load_model", "predict_image", "predict_large", "read_image", "read_labels",
           "run_batch", "train"]

OnEvent = Callable[[Any], object] | None


def predict_image(model: LoadedModel, image: np.ndarray, axes: str | None = None, *, on_event: OnEvent = None,
                  volume: bool = False, anisotropy: float | None = None,
                  voxel_size: Sequence[float] | None = None, volume_method: str = "auto",
                  **options) -> Prediction:
    """Predict ``image`` with a loaded model and return the :class:`~napari_seglab.core.predict._image.Prediction`.

    ``options`` are those of :func:`~napari_seglab.core.predict.iter_predict_image`: ``tile``,
    ``overlap`` (in [0, 1)), ``planes``, ``probabilities``,
    ``split_instances``, ``score_threshold``, ``memory_budget``, ``stop``, ``tta``.
    ``volume=True``: a z-stack's objects in 3D, one id through the planes
    (:func:`~napari_seglab.core.predict.iter_predict_volume`); ``anisotropy`` is the z step over the
    pixel size, or ``voxel_size`` the µm per (z, y, x) voxel side (``read_image(path).pixel_size``);
    neither: 1, with a warning event. ``volume_method``: "auto", "orthogonal" or "linked".
    """
    from .errors import InputError
    from .predict import iter_predict

    if not volume and (anisotropy is not None or voxel_size is not None):
        raise InputError("anisotropy / voxel_size apply to 3D objects: pass volume=True as well")
    return drive(iter_predict(model, image, axes, volume=volume, anisotropy=anisotropy, pixel_size=voxel_size,
                              volume_method=volume_method, **options), on_event)


def predict_large(model: LoadedModel, input_path, labels_path, *, on_event: OnEvent = None, **options):
    """Predict a 2D OME-Zarr or TIFF block by block into an OME-Zarr of labels; returns the BlockResult.

    ``options`` are those of :func:`~napari_seglab.core.predict.iter_predict_to_zarr`:
    ``probabilities_path``, ``block``, ``halo``, ``tile``, ``overlap``, ``stop``, ``tta``, ``protect``.
    Memory depends on the block, not the image (docs/large-images.md).
    """
    from .io import open_lazy
    from .predict import iter_predict_to_zarr

    return drive(iter_predict_to_zarr(model, open_lazy(input_path), labels_path, **options), on_event)


def run_batch(model: str, input_dir: str, output_dir: str, *, on_event: OnEvent = None, **options):
    """Predict every image of a folder and return the :class:`~napari_seglab.core.batch.BatchSummary`.

    ``options`` are those of :func:`~napari_seglab.core.batch.iter_run_batch` (``pattern``,
    ``recursive``, ``probabilities``, ``skip_existing``, ``workers``,
    ``scheduler``, ``device``, ``tile``, ``overlap``, ``block``, ``halo``, ``stop``...); pass
    ``on_event=print`` to see each file as it finishes.
    """
    from .batch import iter_run_batch as iter_batch

    return drive(iter_batch(model, input_dir, output_dir, **options), on_event)


def train(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None] | None, config, *,
          boxes: Sequence[Sequence[dict] | None] | None = None, on_event: OnEvent = None, **options):
    """Train a model and return the training result (its ``checkpoint`` holds the metadata and metrics).

    ``config`` is a :class:`~napari_seglab.core.train.TrainConfig`; ``options`` are those of
    :func:`~napari_seglab.core.train.iter_train` (``axes``, ``stop``...). Box detectors take
    ``boxes``: per image a list of box rows (e.g. from
    :func:`~napari_seglab.core.labels._boxes.read_boxes_csv`), with ``label_mode="boxes"``; ``labels``
    then marks the annotated area, or is None for whole images.
    """
    from .train import iter_train

    return drive(iter_train(images, labels, config, boxes=boxes, **options), on_event)
