"""Training as a generator of progress events.

:func:`train` yields :mod:`.events` (TrainStep, EpochEnd, CheckpointSaved,
Preview, Message) and returns a :class:`TrainResult`. Setting ``stop`` (a
``threading.Event``) ends training after the current step; the best model so
far is kept and written. Closing the generator (a cancelled napari worker)
also leaves the last good checkpoint intact: every write is atomic.

The work is split by stage: :mod:`.train_data` (samples from image/label
pairs), :mod:`.train_setup` (model, hold-out, optimiser), :mod:`.train_loop`
(steps and the evaluation after each epoch) and :mod:`.train_state` (the best
model and its checkpoints).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import Checkpoint
from .data import check_scale
from .device import pick_device
from .errors import InputError
from .labels import check_mode, is_instance_mode
from .models import INSTANCE_HEADS, PRESETS, check_head, get_family
from .train_data import prepare_samples, prepare_training_data  # noqa: F401 (part of this module's API)
from .train_loop import _pseudo_labelled, run_loop  # noqa: F401 (tests reach the helper here)
from .train_setup import default_instance_head, set_up  # noqa: F401 (part of this module's API)

#: default patch side and batch. Dense labels: every pixel teaches, big patches give context.
#: Scribbles: few pixels are painted, so smaller patches centred on strokes, four times as many
#: per step (the same pixels per step), put more painted pixels through the model per second.
#: benchmarks/quality_scribbles.py, 120 s on the CPU, means of 3 seeds, 64 x 32 vs 128 x 8:
#: halves Dice 0.86 vs 0.83, AP@0.5 0.36 vs 0.31; unseen image Dice 0.90 vs 0.89, AP@0.5 0.36 vs
#: 0.47 (AP varies by +-0.1 between seeds either way)
DENSE_PATCH = {"cpu": 128, "cuda": 256}
SPARSE_PATCH = {"cpu": 64, "cuda": 128}
DENSE_BATCH, SPARSE_BATCH = 8, 32
#: seconds of training when neither epochs nor a time limit is given (the Train dock's default too)
DEFAULT_TIME_LIMIT = 120.0


@dataclass
class TrainConfig:
    """Settings of one training run (recorded in the checkpoint)."""

    label_mode: str = "scribbles"
    family: str = "unet"
    arch: str = "Unet"
    encoder: str | None = None  # None: the preset's encoder
    preset: str | None = None  # "fast" | "accurate"; None: "fast" on a CPU, "accurate" on CUDA
    pretrained: str | None = None  # None | "auto" | "imagenet" | "coco" | path
    epochs: int | None = None
    time_limit: float | None = None  # seconds, set-up and the final save included; 120 when neither is given
    steps_per_epoch: int = 25
    patch: int | None = None  # None: see SPARSE_PATCH / DENSE_PATCH
    batch_size: int | None = None  # None: 32 for scribbles, 8 for dense labels
    lr: float | None = None  # None: 3e-3 from scratch, 1e-3 when fine-tuning or pretrained
    weight_decay: float = 1e-4
    class_weights: str = "none"  # "none" | "balanced"
    focal_gamma: float = 0.0
    val_fraction: float = 0.15
    device: str = "auto"
    seed: int = 0
    model_out: str | None = None
    init: str | None = None  # checkpoint to start from (fine-tune / continue)
    resume_optimizer: bool = True
    save_last: bool = True
    preview_every: int = 0  # steps; 0 = off
    self_training: bool = False  # scribbles: add confident predictions as pseudo-labels
    self_training_at: tuple[float, ...] = (0.35, 0.65)  # fractions of the budget
    pseudo_threshold: float = 0.9
    read_255_as_foreground: bool = False
    allow_download: bool = False
    scale: float | None = None  # object scale (resampling factor); None: from the painted objects, else 1
    bf16: str = "auto"  # CPU training in bfloat16: "auto" (when the CPU has it, it is faster and agrees) | "on" | "off"
    threads: int | None = None  # torch CPU threads; None: every core this process may use
    #: instances / objects labels, unet / fcn: "boundary" (3 classes) | "flows" | "distance" (see core/flows.py)
    instance_head: str | None = None  # None: "flows" for dense instances (unet/fcn), else "boundary"

    def __post_init__(self):
        if self.epochs is None and self.time_limit is None:
            self.time_limit = DEFAULT_TIME_LIMIT

    def check(self) -> TrainConfig:
        """Refuse settings out of range before anything is built or allocated (InputError)."""
        import os

        max_patch = 8192
        train_bytes_per_pixel = {"unet": 1000, "fcn": 1500, "maskrcnn": 2000}  # a floor, float32 training
        pooled = ("deeplabv3plus", "pan", "deeplabv3")  # pool the patch to 1x1 before a BatchNorm

        def whole(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def number(value) -> bool:
            return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
                and math.isfinite(value)

        check_mode(self.label_mode)
        if self.epochs is None and self.time_limit is None:
            raise InputError("give a number of epochs or a time limit")
        if self.epochs is not None and (not whole(self.epochs) or self.epochs < 1):
            raise InputError(f"epochs must be a whole number of at least 1; got {self.epochs!r}")
        if self.time_limit is not None and (not number(self.time_limit) or self.time_limit <= 0):
            raise InputError(f"the time limit must be a positive, finite number of seconds; got {self.time_limit!r}")
        if not whole(self.steps_per_epoch) or self.steps_per_epoch < 1:
            raise InputError(f"steps per epoch must be at least 1; got {self.steps_per_epoch!r}")
        if self.patch is not None and (not whole(self.patch) or self.patch < 32 or self.patch % 32):
            raise InputError(f"patch size must be a multiple of 32 and at least 32; got {self.patch}")
        if self.patch is not None and self.patch > max_patch:
            raise InputError(f"patch size {self.patch} is above the largest SegLab trains with ({max_patch}); "
                             "a patch larger than the image is padded, not more informative")
        if self.batch_size is not None and (not whole(self.batch_size) or self.batch_size < 1):
            raise InputError("batch size must be at least 1")
        if self.batch_size is not None and self.batch_size > 4096:
            raise InputError(f"batch size {self.batch_size} is above 4096")
        patch = self.patch or min(SPARSE_PATCH.values())
        if self.patch is not None or self.batch_size is not None:
            batch = self.batch_size or (SPARSE_BATCH if self.label_mode == "scribbles" else DENSE_BATCH)
            need = batch * patch * patch * train_bytes_per_pixel.get(self.family, 1000)
            try:
                total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                total = None
            if torch.cuda.is_available() and self.device != "cpu":
                total = max(total or 0, torch.cuda.get_device_properties(0).total_memory)
            if total and need > total:
                raise InputError(f"--patch {patch} with --batch-size {batch} needs about {need / 2**30:.0f} GiB "
                                 f"to train, more than this machine has ({total / 2**30:.0f} GiB); use a smaller "
                                 "patch or batch")
        is_pooled = str(self.arch).lower() in pooled
        if self.family == "unet" and self.batch_size == 1 and (is_pooled or (patch // 32) ** 2 < 2):
            why = (f"{self.arch} pools the whole patch to one value per channel" if is_pooled
                   else f"a {patch} px patch leaves one pixel at the deepest level")
            raise InputError(f"batch size 1 cannot train this model: {why}, and BatchNorm needs more than one "
                             "value per channel; use --batch-size 2 or more" + ("" if is_pooled else " or --patch 64"))
        if self.lr is not None and not (number(self.lr) and 0 < self.lr < 1):
            raise InputError(f"learning rate {self.lr} is out of range (0, 1)")
        if not number(self.focal_gamma) or not 0 <= self.focal_gamma <= 10:
            raise InputError(f"focal gamma must lie in [0, 10]; got {self.focal_gamma}")
        if not number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise InputError(f"validation fraction must lie in [0, 1); got {self.val_fraction}")
        if not whole(self.seed) or not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be a whole number from 0 to 2**63 - 1; got {self.seed!r}")
        if self.instance_head is not None and (not isinstance(self.instance_head, str)
                                               or self.instance_head not in INSTANCE_HEADS):
            raise InputError(f"unknown instance head {str(self.instance_head)[:40]!r}; choose one of "
                             f"{', '.join(INSTANCE_HEADS)}")
        if self.instance_head not in (None, "boundary"):
            if not is_instance_mode(self.label_mode):
                raise InputError(f"the {self.instance_head!r} instance head needs 'instances' or 'objects' labels, "
                                 f"not {self.label_mode!r}")
            check_head(self.instance_head, self.family)
        if self.family == "maskrcnn" and self.label_mode != "instances":
            raise InputError("Mask R-CNN learns objects: it needs 'instances' labels (each object its own id), "
                             f"not {self.label_mode!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"unknown model preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.bf16 not in ("auto", "on", "off"):
            raise InputError(f"bf16 must be 'auto', 'on' or 'off'; got {self.bf16!r}")
        if self.threads is not None and not (isinstance(self.threads, int) and 1 <= self.threads <= 1024):
            raise InputError(f"threads must be a whole number from 1 to 1024; got {self.threads!r}")
        if self.scale is not None:
            self.scale = check_scale(self.scale)
        return self


@dataclass
class TrainResult:
    """What :func:`train` returns: the best checkpoint (in memory and, if asked, on disk)."""

    checkpoint: Checkpoint
    path: str | None
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    steps: int = 0
    seconds: float = 0.0


def _resolved(config: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy of ``config`` with every ``None`` default decided for ``device``."""
    config = copy.copy(config).check()
    family = get_family(config.family)
    kind = "cuda" if device.type == "cuda" else "cpu"
    if config.patch is None:
        config.patch = (SPARSE_PATCH if config.label_mode == "scribbles" else DENSE_PATCH)[kind]
    if config.batch_size is None:
        config.batch_size = SPARSE_BATCH if config.label_mode == "scribbles" else DENSE_BATCH
    if config.lr is None:
        config.lr = family.default_lr(fine_tune=bool(config.init or config.pretrained))
    if family.presets and config.encoder is None:
        config.preset = config.preset or family.default_preset.get(device.type, next(iter(family.presets)))
    return config


def train(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], config: TrainConfig, *,
          axes: Sequence[str | None] | None = None, stop: threading.Event | None = None,
          preview_plane: np.ndarray | None = None, clock=time.monotonic) -> Generator[object, None, TrainResult]:
    """Train a model on image/label pairs; yields progress events, returns a :class:`TrainResult`.

    ``images``: arrays in canonical axes (``axes`` per image, guessed when
    missing); ``labels``: integer arrays of the same spatial shape, in
    ``config.label_mode``. Stacks train on their annotated planes. After the
    first step, stopping, closing the generator or Ctrl-C always leave a
    loadable ``config.model_out`` with the best weights so far.
    ``clock``: the time source of the budget (tests pass a fake one).
    """
    t_start = clock()
    device = pick_device(config.device)
    config = _resolved(config, device)
    run = yield from set_up(images, labels, config, device, axes=axes, clock=clock, t_start=t_start)
    history, stopped = yield from run_loop(run, stop=stop, preview_plane=preview_plane)
    best = run.state.final(history)
    return TrainResult(checkpoint=best, path=run.state.path, history=history, stopped=stopped,
                       steps=run.budget.step, seconds=run.budget.elapsed())
