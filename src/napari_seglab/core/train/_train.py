"""Training as a generator of progress events.

:func:`iter_train` yields :mod:`napari_seglab.core.events` (TrainStep, EpochEnd, CheckpointSaved,
Preview, Message) and returns a :class:`TrainResult`. Setting ``stop`` (a
``threading.Event``) ends training after the current step; the best model so
far is kept and written. Closing the generator (a cancelled napari worker)
also leaves the last good checkpoint intact: every write is atomic.

The work is split by stage: :mod:`napari_seglab.core.train._data` (samples from image/label
pairs), :mod:`napari_seglab.core.train._setup` (model, hold-out, optimiser), :mod:`napari_seglab.core.train._loop`
(steps and the evaluation after each epoch) and :mod:`napari_seglab.core.train._state` (the best
model and its checkpoints).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..device import pick_device
from ..models import Checkpoint
from ._config import (
    ResolvedTrainConfig,
    TrainConfig,
)
from ._loop import run_loop
from ._setup import set_up


@dataclass
class TrainResult:
    """What :func:`iter_train` returns: the best checkpoint (in memory and, if asked, on disk)."""

    checkpoint: Checkpoint
    path: str | None
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    steps: int = 0
    seconds: float = 0.0


def _resolved(config: TrainConfig | ResolvedTrainConfig, device: torch.device) -> ResolvedTrainConfig:
    """``config`` checked once, with every "auto" default decided for ``device`` (frozen; ``config`` unchanged)."""
    return config.resolve(device)


def iter_train(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None] | None, config: TrainConfig, *,
          boxes: Sequence[Sequence[dict] | None] | None = None, axes: Sequence[str | None] | None = None,
          stop: threading.Event | None = None, preview_plane: np.ndarray | None = None,
          clock=time.monotonic, pixel_sizes: Sequence[Sequence[float] | None] | None = None
          ) -> Generator[object, None, TrainResult]:
    """Train a model on image/label pairs; yields progress events, returns a :class:`TrainResult`.

    ``images``: arrays in canonical axes (``axes`` per image, guessed when
    missing); ``labels``: integer arrays of the same spatial shape, in
    ``config.label_mode``. Stacks train on their annotated planes. After the
    first step, stopping, closing the generator or Ctrl-C always leave a
    loadable ``config.model_out`` with the best weights so far.
    ``clock``: the time source of the budget (tests pass a fake one).
    ``pixel_sizes``: per image its µm per pixel (``ImageData.pixel_size``) or None; the checkpoint records
    the first known one (``config.pixel_size`` stands in for an image without one), and images of
    another size are resampled to it.

    Box detectors (families of kind "boxes"): ``boxes`` gives per image a
    list of box rows (see :mod:`napari_seglab.core.labels._boxes`; None or [] = no box, a negative) with
    ``config.label_mode`` "boxes"; ``labels`` (or an entry of it) may then be
    None, else it marks the annotated area (see :mod:`napari_seglab.core.train._boxes` for the
    rule). They also train from "instances" labels, one box per object.
    Validation is box AP@0.5 on a held-out part of the annotated area.
    """
    t_start = clock()
    device = pick_device(config.device)
    config = _resolved(config, device)
    run = yield from set_up(images, labels, config, device, axes=axes, clock=clock, t_start=t_start, boxes=boxes,
                            pixel_sizes=pixel_sizes)
    history, stopped = yield from run_loop(run, stop=stop, preview_plane=preview_plane)
    best = run.state.final(history)
    return TrainResult(checkpoint=best, path=run.state.path, history=history, stopped=stopped,
                       steps=run.budget.step, seconds=run.budget.elapsed())
