"""Training as a generator of progress events.

:func:`train` yields :mod:`.events` (TrainStep, EpochEnd, CheckpointSaved,
Preview, Message) and returns a :class:`TrainResult`. Setting ``stop`` (a
``threading.Event``) ends training after the current step; the best model so
far is kept and written. Closing the generator (a cancelled napari worker)
also leaves the last good checkpoint intact: every write is atomic.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import (
    MIN_STROKES_FOR_HOLDOUT,
    Normalization,
    PatchSampler,
    Sample,
    percentiles,
    split_validation,
    to_chw,
)
from .device import describe, pick_device
from .errors import InputError
from .events import CheckpointSaved, EpochEnd, Message, Preview, TrainStep
from .io import check_image_values, guess_axes
from .labels import IGNORE, check_mode, make_target, n_classes_for, validate_labels
from .losses import balanced_class_weights, segmentation_loss
from .models import DEFAULT_ARCH, ModelSpec, build_model, check_spec

#: default patch side and batch. Dense labels: every pixel teaches, big patches give context.
#: Scribbles: few pixels are painted, so smaller patches centred on strokes, four times as many
#: per step (the same pixels per step), put more painted pixels through the model per second.
#: benchmarks/quality_scribbles.py, 120 s on the CPU, means of 3 seeds, 64 x 32 vs 128 x 8:
#: halves Dice 0.86 vs 0.83, AP@0.5 0.36 vs 0.31; unseen image Dice 0.90 vs 0.89, AP@0.5 0.36 vs
#: 0.47 (AP varies by +-0.1 between seeds either way)
DENSE_PATCH = {"cpu": 128, "cuda": 256}
SPARSE_PATCH = {"cpu": 64, "cuda": 128}
DENSE_BATCH, SPARSE_BATCH = 8, 32


@dataclass
class TrainConfig:
    """Settings of one training run (recorded in the checkpoint)."""

    label_mode: str = "scribbles"
    family: str = "unet"
    arch: str = "Unet"
    encoder: str = "resnet34"
    pretrained: str | None = None  # None | "auto" | "imagenet" | "coco" | path
    epochs: int | None = 20
    time_limit: float | None = None  # seconds
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
        if self.family == "maskrcnn" and self.label_mode != "instances":
            raise InputError("Mask R-CNN learns objects: it needs 'instances' labels (each object its own id), "
                             f"not {self.label_mode!r}")
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


def _planes(image: np.ndarray, labels: np.ndarray, axes: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split an image and its labels into annotated 2D planes ((Y, X[, C]), (Y, X))."""
    lead = [i for i, a in enumerate(axes) if a in "TZ"]
    if not lead:
        return [(image, labels)]
    out = []
    shape = [image.shape[i] for i in lead]
    for idx in np.ndindex(*shape):
        lab = labels[idx]
        if np.any(lab):
            out.append((image[idx], lab))
    return out


def prepare_samples(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], mode: str, *,
                    axes: Sequence[str | None] | None = None, read_255_as_foreground: bool = False,
                    norm: Normalization | None = None) -> tuple[list[Sample], Normalization, int]:
    """Validate image/label pairs and turn them into normalised 2D samples.

    Returns (samples, normalisation, input channels).
    """
    if len(images) != len(labels):
        raise InputError(f"{len(images)} image(s) but {len(labels)} label image(s); give one labels per image")
    if not images:
        raise InputError("no training images")
    norm = norm or Normalization()
    samples: list[Sample] = []
    channels = None
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        img = check_image_values(np.asarray(img), f"image {i + 1}")
        ax = (axes[i] if axes else None) or guess_axes(img.shape)
        spatial = img.shape[:-1] if "C" in ax else img.shape
        lab = validate_labels(np.asarray(lab), spatial, mode, read_255_as_foreground=read_255_as_foreground,
                              name=f"labels {i + 1}")
        c = img.shape[-1] if "C" in ax else 1
        if channels is not None and c != channels:
            raise InputError(f"image {i + 1} has {c} channel(s) but image 1 has {channels}")
        channels = c
        for plane, plane_lab in _planes(img, lab, ax):
            chw = to_chw(plane).astype(np.float32, copy=False)
            if float(chw.max()) == float(chw.min()):
                raise InputError(f"image {i + 1} is constant (all pixels {chw.min():g}); nothing to learn from")
            target = make_target(plane_lab, mode)
            samples.append(Sample(norm.apply(chw), target, plane_lab if mode == "instances" else None))
    if not samples:
        raise InputError("no annotated plane found in the labels")
    # record the training data's intensity range for images that need it
    lo, hi = percentiles(to_chw(np.asarray(images[0])) if np.asarray(images[0]).ndim == 2 else
                         np.moveaxis(np.asarray(images[0]).reshape(-1, channels), -1, 0), norm.low, norm.high)
    norm.lo, norm.hi = tuple(lo), tuple(hi)
    return samples, norm, channels


def _lr_factor(progress: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = (progress - warmup) / max(1e-6, 1 - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def _dice_scores(pred: np.ndarray, target: np.ndarray, n_classes: int, mode: str) -> tuple[float, list[float]]:
    """(mean Dice over classes, per-class Dice) on pixels where target != -1.

    Background counts as a class: a foreground-only Dice would reward a model
    that paints everything as foreground when the held-out strokes are
    mostly objects. Classes absent from both prediction and target are NaN and
    left out of the mean.
    """
    valid = target != IGNORE
    p, t = pred[valid], target[valid]
    per = []
    for c in range(n_classes):
        denom = np.count_nonzero(p == c) + np.count_nonzero(t == c)
        per.append(float(2 * np.count_nonzero((p == c) & (t == c)) / denom) if denom else float("nan"))
    vals = [d for d in per if not math.isnan(d)]
    return (float(np.mean(vals)) if vals else 1.0), per


class _Validator:
    """Held-out crops and their targets; scores a model on them."""

    def __init__(self, samples: list[Sample], held: list[np.ndarray], margin: int = 16):
        self.crops = []
        for s, h in zip(samples, held, strict=True):
            if not h.any():
                continue
            ys, xs = np.nonzero(h)
            y0, y1 = max(0, ys.min() - margin), min(h.shape[0], ys.max() + 1 + margin)
            x0, x1 = max(0, xs.min() - margin), min(h.shape[1], xs.max() + 1 + margin)
            tgt = np.where(h, s.target, IGNORE)[y0:y1, x0:x1]
            self.crops.append((s.image[:, y0:y1, x0:x1], tgt))

    def __bool__(self) -> bool:
        return bool(self.crops)

    def score(self, model: torch.nn.Module, meta: dict, device: torch.device, mode: str) -> tuple[float, list[float]]:
        from .predict import forward_probabilities, wrap_model

        lm = wrap_model(model, meta, device)
        spec = ModelSpec.from_dict(meta["model"])
        preds, tgts = [], []
        was_training = model.training
        model.eval()
        try:
            for img, tgt in self.crops:
                if spec.family == "maskrcnn":
                    from .detection import predict_instances_tiled
                    from .predict import run_to_completion

                    inst, _ = run_to_completion(predict_instances_tiled(lm, img, tile=max(img.shape[-2:]),
                                                                         overlap=0.0, score_threshold=0.5))
                    pred = (inst > 0).astype(np.int64)
                    tgt = np.where(tgt == IGNORE, IGNORE, (tgt > 0).astype(np.int64))
                else:
                    pred = np.argmax(forward_probabilities(lm, img), 0)
                preds.append(pred.reshape(-1))
                tgts.append(tgt.reshape(-1))
        finally:
            model.train(was_training)
        n = 2 if spec.family == "maskrcnn" else max(2, spec.n_classes)
        return _dice_scores(np.concatenate(preds), np.concatenate(tgts), n, mode)


def _pseudo_labelled(model, meta, device, samples: list[Sample], held: list[np.ndarray],
                     threshold: float) -> tuple[list[Sample], int]:
    """Self-training: add the model's confident predictions to sparse targets.

    Painted pixels keep their label; unpainted pixels where the model is at
    least ``threshold`` sure get its class; held-out validation pixels stay
    ignored so the validation Dice keeps measuring painted truth. Returns the
    new samples and the number of pseudo-labelled pixels.
    """
    from .predict import expand_probabilities, predict_plane_probabilities, wrap_model

    lm = wrap_model(model, meta, device)
    was_training = model.training
    model.eval()
    out, added = [], 0
    try:
        for s, h in zip(samples, held, strict=True):
            probs = None
            for _, _, o in predict_plane_probabilities(lm, s.image, tile=512, overlap=0.25):
                probs = o
            probs = expand_probabilities(probs)
            sure = (probs.max(0) >= threshold) & (s.target == IGNORE) & ~h
            target = np.where(sure, np.argmax(probs, 0), s.target)
            added += int(sure.sum())
            out.append(Sample(s.image, target, s.instances))
    finally:
        model.train(was_training)
    return out, added


def _preview(model, meta, device, plane: np.ndarray, mode: str, step: int) -> Preview:
    from .predict import predict_image, run_to_completion, wrap_model

    lm = wrap_model(model, meta, device)
    was_training = model.training
    model.eval()
    try:
        pred = run_to_completion(predict_image(lm, plane, probabilities=True, tile=512))
    finally:
        model.train(was_training)
    return Preview(step=step, labels=pred.labels, probabilities=pred.probabilities)


def train(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], config: TrainConfig, *,
          axes: Sequence[str | None] | None = None, stop: threading.Event | None = None,
          preview_plane: np.ndarray | None = None) -> Generator[object, None, TrainResult]:
    """Train a model on image/label pairs; yields progress events, returns a :class:`TrainResult`.

    ``images``: arrays in canonical axes (``axes`` per image, guessed when
    missing); ``labels``: integer arrays of the same spatial shape, in
    ``config.label_mode``. Stacks train on their annotated planes.
    """
    config = copy.copy(config).check()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    t_start = time.monotonic()
    sparse = config.label_mode == "scribbles"
    if config.patch is None:
        config.patch = (SPARSE_PATCH if sparse else DENSE_PATCH)["cuda" if device.type == "cuda" else "cpu"]
    if config.batch_size is None:
        config.batch_size = SPARSE_BATCH if sparse else DENSE_BATCH
    if config.lr is None:
        # Mask R-CNN from scratch diverges with AdamW above ~1e-4; U-Nets and FCNs like 3e-3
        config.lr = 1e-4 if config.family == "maskrcnn" else 1e-3 if (config.init or config.pretrained) else 3e-3

    init_ckpt = load_checkpoint(config.init, with_optimizer=True) if config.init else None
    norm = Normalization.from_dict(init_ckpt.meta["normalization"]) if init_ckpt else None
    samples, norm, channels = prepare_samples(images, labels, config.label_mode, axes=axes,
                                              read_255_as_foreground=config.read_255_as_foreground, norm=norm)
    n_classes = n_classes_for([s.target + 1 if config.label_mode == "scribbles" else s.target
                               for s in samples], config.label_mode)
    if config.label_mode == "instances" and config.family == "maskrcnn":
        n_classes = 2
    if init_ckpt is not None:
        spec = init_ckpt.spec
        if init_ckpt.label_mode != config.label_mode:
            raise InputError(f"{config.init}: was trained on {init_ckpt.label_mode!r} labels, not "
                             f"{config.label_mode!r}")
        if spec.in_channels != channels:
            raise InputError(f"{config.init}: expects {spec.in_channels} channel(s), the images have {channels}")
        if n_classes > spec.n_classes:
            raise InputError(f"{config.init}: knows {spec.n_classes} classes but the labels use {n_classes}")
        n_classes = spec.n_classes
    else:
        arch = config.arch if config.family == "unet" or config.arch != "Unet" else DEFAULT_ARCH[config.family]
        spec = check_spec(ModelSpec(family=config.family, arch=arch, encoder=config.encoder,
                                    in_channels=channels, n_classes=n_classes,
                                    options={"patch": config.patch} if config.family == "maskrcnn" else {}))
    model, note = build_model(spec, None if init_ckpt else config.pretrained, allow_download=config.allow_download)
    if init_ckpt is not None:
        model.load_state_dict(init_ckpt.state_dict)
        note = f"starting from {config.init}"
    model.to(device).train()
    # channels_last speeds convolutions up on CPUs and tensor cores (not on MPS; detectors take lists)
    channels_last = device.type != "mps" and spec.family != "maskrcnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    yield Message(f"{spec.family} {spec.arch}" + (f"/{spec.encoder}" if spec.family == "unet" else "")
                  + f", {n_classes} classes, on {describe(device)}; {note}")

    # validation hold-out
    # Mask R-CNN learns whole objects from every pixel of a patch: a blanked-out hold-out would
    # teach it 'background' there, so it chooses its best model by training loss instead
    val_fraction = 0.0 if spec.family == "maskrcnn" else config.val_fraction
    held = [split_validation(s.target, sparse, val_fraction, rng) for s in samples]
    validator = _Validator(samples, held)
    train_samples = [Sample(s.image, np.where(h, IGNORE, s.target), s.instances) for s, h in zip(samples, held, strict=True)]
    if validator:
        yield Message(f"validation: {sum(int(h.sum()) for h in held)} held-out annotated pixels")
    else:
        if val_fraction <= 0:
            why = "no validation hold-out asked for"
        elif sparse:
            why = f"fewer than {MIN_STROKES_FOR_HOLDOUT} strokes in a class, so every stroke trains"
        else:
            why = "annotation too small for a validation hold-out"
        yield Message(f"{why}: no validation Dice; the best model is chosen by training loss", "warning")
    sampler = PatchSampler(train_samples, config.patch, rng, favour=0.8 if sparse else 0.3)
    pending_rounds = sorted(config.self_training_at) if config.self_training and sparse and spec.semantic else []

    counts = np.bincount(np.concatenate([s.target[s.target != IGNORE] for s in train_samples]),
                         minlength=n_classes)[:n_classes]
    weights = balanced_class_weights(counts) if config.class_weights == "balanced" else None

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if init_ckpt is not None and init_ckpt.optimizer and config.resume_optimizer:
        try:
            optimizer.load_state_dict(init_ckpt.optimizer)
            for group in optimizer.param_groups:
                group["lr"] = config.lr
            yield Message("optimizer state restored: continuing training")
        except (ValueError, KeyError):
            yield Message("optimizer state of the checkpoint does not fit; starting a fresh optimizer", "warning")
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    meta = {
        "model": spec.to_dict(),
        "label_mode": config.label_mode,
        "n_classes": n_classes,
        "class_names": ["background", "object"] if spec.family == "maskrcnn"
        else ["background"] + [f"class {i}" for i in range(1, n_classes)]
        if config.label_mode != "instances" else ["background", "interior", "boundary"],
        "normalization": norm.to_dict(),
        "patch": config.patch,
        "training": {
            "config": {k: v for k, v in asdict(config).items()},
            "data": [{"shape": list(s.target.shape), "annotated_pixels": s.annotated} for s in samples],
            "class_pixels": counts.tolist(),
            "weights": note,
        },
        "metrics": {},
    }
    total_steps = config.epochs * config.steps_per_epoch if config.epochs else None
    history: list[dict] = []
    best_score, best_state, best_epoch = (-math.inf, -math.inf), None, 0
    ema = None
    step, epoch, stopped = 0, 0, False
    path = config.model_out
    last_path = str(Path(path).with_suffix(".last.pt")) if path and config.save_last else None

    def elapsed() -> float:
        return time.monotonic() - t_start

    def progress() -> float:
        parts = []
        if total_steps:
            parts.append(step / total_steps)
        if config.time_limit:
            parts.append(elapsed() / config.time_limit)
        return max(parts) if parts else 0.0

    def out_of_budget() -> bool:
        return (total_steps is not None and step >= total_steps) or \
            (config.time_limit is not None and elapsed() >= config.time_limit)

    def make_checkpoint(state: dict, metrics: dict) -> Checkpoint:
        m = copy.deepcopy(meta)
        m["metrics"] = metrics
        m["training"].update(steps=step, epochs=epoch, seconds=round(elapsed(), 2))
        return Checkpoint(meta=m, state_dict=state, path=path)

    finished = False
    try:
        while not finished:
            epoch += 1
            losses = []
            for _ in range(config.steps_per_epoch):
                if (stop is not None and stop.is_set()):
                    stopped = True
                    break
                if out_of_budget():
                    break
                if pending_rounds and progress() >= pending_rounds[0]:
                    pending_rounds.pop(0)
                    dense, added = _pseudo_labelled(model, meta, device, train_samples, held, config.pseudo_threshold)
                    sampler = PatchSampler(dense, config.patch, rng, favour=0.5)
                    yield Message(f"self-training: {added} confidently predicted pixels added to the painted ones")
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * _lr_factor(progress())
                x, y, inst = sampler.batch(config.batch_size)
                xt = torch.from_numpy(x).to(device)
                if channels_last:
                    xt = xt.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    if spec.family == "maskrcnn":
                        from .detection import detection_loss

                        loss = detection_loss(model, xt, inst)
                    else:
                        logits = model(xt)
                        loss = segmentation_loss(logits.float(), torch.from_numpy(y).to(device),
                                                 class_weights=weights, focal_gamma=config.focal_gamma)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise InputError("training diverged (loss is NaN or Inf); lower the learning rate")
                losses.append(value)
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                yield TrainStep(step=step, total_steps=total_steps, epoch=epoch, loss=value,
                                lr=optimizer.param_groups[0]["lr"], elapsed=elapsed(), time_limit=config.time_limit)
                if config.preview_every and preview_plane is not None and step % config.preview_every == 0:
                    yield _preview(model, meta, device, preview_plane, config.label_mode, step)
            finished = stopped or out_of_budget() or (config.epochs is not None and epoch >= config.epochs)
            if not losses:
                epoch -= 1
                break
            train_loss = float(np.mean(losses))
            val_dice, per_class = None, ()
            if validator:
                val_dice, per = validator.score(model, meta, device, config.label_mode)
                per_class = tuple(per)
                # validation Dice saturates on small annotations: ties go to the lower training loss
                score = (round(val_dice, 3), -ema)
            else:
                score = (0.0, -ema)
            is_best = score > best_score
            record = {"epoch": epoch, "step": step, "train_loss": train_loss, "val_dice": val_dice,
                      "per_class_dice": list(per_class), "seconds": round(elapsed(), 2)}
            history.append(record)
            yield EpochEnd(epoch=epoch, epochs=config.epochs, train_loss=train_loss, val_dice=val_dice,
                           per_class_dice=per_class, elapsed=elapsed(), is_best=is_best)
            if is_best:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
                metrics = {"val_dice": val_dice, "train_loss": train_loss, "epoch": epoch,
                           "per_class_dice": [None if math.isnan(d) else d for d in per_class]}
                best = make_checkpoint(best_state, metrics)
                if path:
                    save_checkpoint(path, model, best.meta)
                    yield CheckpointSaved(path=path, epoch=epoch, metric=val_dice)
    finally:
        # a closed generator (cancelled worker) still leaves the optimiser state for continue-training
        if last_path and step > 0:
            with contextlib.suppress(Exception):  # never mask the original error while cleaning up
                save_checkpoint(last_path, model, make_checkpoint({}, {"history": history}).meta, optimizer)
    if best_state is None:
        raise InputError("training was stopped before the first step; nothing to save")
    best = make_checkpoint(best_state, {"val_dice": history[best_epoch - 1]["val_dice"],
                                        "train_loss": history[best_epoch - 1]["train_loss"],
                                        "epoch": best_epoch, "history": history})
    if path:
        save_checkpoint(path, _StateOnly(best_state), best.meta)
    return TrainResult(checkpoint=best, path=path, history=history, stopped=stopped, steps=step,
                       seconds=elapsed())


class _StateOnly:
    """Adapter so save_checkpoint can write a plain state dict."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state
