"""Training as a generator of progress events.

:func:`train` yields :mod:`.events` (TrainStep, EpochEnd, CheckpointSaved,
Preview, Message) and returns a :class:`TrainResult`. Setting ``stop`` (a
``threading.Event``) ends training after the current step; the best model so
far is kept and written. Closing the generator (a cancelled napari worker)
also leaves the last good checkpoint intact: every write is atomic.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import (  # noqa: F401 - the constants and TrainConfig are re-exported
    DEFAULT_TIME_LIMIT,
    DENSE_BATCH,
    DENSE_PATCH,
    SPARSE_BATCH,
    SPARSE_PATCH,
    TrainConfig,
    default_batch,
    default_instance_head,
    default_lr,
    default_patch,
)
from .data import (
    MIN_STROKES_FOR_HOLDOUT,
    Normalization,
    PatchSampler,
    Sample,
    check_scale,
    median_diameter,
    percentiles,
    resample_image,
    resample_labels,
    scale_for,
    scaled_shape,
    split_validation,
    to_chw,
)
from .device import describe, pick_device
from .errors import InputError
from .events import CheckpointSaved, Message, Preview, TrainStep
from .io import check_image_values, guess_axes
from .labels import (
    IGNORE,
    get_mode,
    head_targets,
    make_target,
    object_instances,
    validate_labels,
)
from .losses import balanced_class_weights, segmentation_loss
from .models import (
    DEFAULT_ARCH,
    DEFAULT_PRESET,
    PRESETS,
    ModelSpec,
    build_model,
    check_spec,
    preset_spec,
)
from .runtime import Budget, ThreadTuner, bf16_helps, cost_note, sigint_deferred
from .train_state import RunState, Validator, run_meta


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
                    norm: Normalization | None = None, scale: float | None = 1.0, head: str = "boundary"
                    ) -> tuple[list[Sample], Normalization, int]:
    """Validate image/label pairs and turn them into normalised 2D samples.

    ``scale``: resampling factor applied to every plane (objects then reach the
    size the network resolves best); None estimates it from the painted
    objects (``instances`` / ``objects`` modes, see :func:`.data.scale_for`).
    ``head``: "flows" / "distance" give each sample the foreground target and
    the head's float target (instance modes only); "boundary" the 3 classes.
    Returns (samples, normalisation, input channels);
    :func:`prepare_training_data` also returns the scale used.
    """
    samples, norm, channels, _ = prepare_training_data(images, labels, mode, axes=axes, norm=norm, scale=scale,
                                                        read_255_as_foreground=read_255_as_foreground, head=head)
    return samples, norm, channels


def _annotated_planes(images, labels, mode, axes, read_255_as_foreground):
    """Validated (image plane, label plane) pairs of every annotated plane, and the channel count."""
    if len(images) != len(labels):
        raise InputError(f"{len(images)} image(s) but {len(labels)} label image(s); give one labels per image")
    if not images:
        raise InputError("no training images")
    planes, channels = [], None
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
            planes.append((chw, plane_lab))
    if not planes:
        raise InputError("no annotated plane found in the labels")
    return planes, channels


def prepare_training_data(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], mode: str, *,
                          axes: Sequence[str | None] | None = None, read_255_as_foreground: bool = False,
                          norm: Normalization | None = None, scale: float | None = None, head: str = "boundary"
                          ) -> tuple[list[Sample], Normalization, int, float]:
    """Like :func:`prepare_samples`, also returning the object scale used (None = estimated)."""
    planes, channels = _annotated_planes(images, labels, mode, axes, read_255_as_foreground)
    if scale is None:
        objects = [object_instances(lab, mode) for _, lab in planes]
        scale = scale_for(median_diameter([o for o in objects if o is not None]))
    scale = check_scale(scale)
    norm = norm or Normalization()
    samples: list[Sample] = []
    for chw, lab in planes:
        if scale != 1.0:
            shape = scaled_shape(lab.shape, scale)
            chw, lab = resample_image(chw, shape), resample_labels(lab, shape)
        if head != "boundary":  # targets of the whole (resampled) plane, before any patch is cut
            target, regression = head_targets(lab, mode, head)
            samples.append(Sample(norm.apply(chw), target, None, regression, head))
            continue
        target = make_target(lab, mode)
        samples.append(Sample(norm.apply(chw), target, get_mode(mode).detector_objects(lab)))
    # record the training data's intensity range for images that need it
    first = np.asarray(images[0])
    lo, hi = percentiles(to_chw(first) if first.ndim == 2 else np.moveaxis(first.reshape(-1, channels), -1, 0),
                         norm.low, norm.high)
    norm.lo, norm.hi = tuple(lo), tuple(hi)
    return samples, norm, channels, scale


def _lr_factor(progress: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = (progress - warmup) / max(1e-6, 1 - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


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


def _resolved(config: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy of ``config`` with every ``None`` default decided for ``device``."""
    config = copy.copy(config).check()
    kind = "cuda" if device.type == "cuda" else "cpu"
    if config.patch is None:
        config.patch = default_patch(config.label_mode, kind)
    if config.batch_size is None:
        config.batch_size = default_batch(config.label_mode)
    if config.lr is None:
        # Mask R-CNN from scratch diverges with AdamW above ~1e-4; U-Nets and FCNs like 3e-3
        config.lr = default_lr(config.family, fine_tuning=bool(config.init or config.pretrained))
    if config.family == "unet" and config.encoder is None:
        config.preset = config.preset or DEFAULT_PRESET.get(device.type, "fast")
    return config


def _model_spec(config: TrainConfig, channels: int, n_classes: int, head: str = "boundary") -> ModelSpec:
    """The ModelSpec a fresh run builds (preset, or family/arch/encoder as given)."""
    if config.family == "unet" and config.encoder is None and config.arch == "Unet":
        return check_spec(preset_spec(config.preset, channels, n_classes, head))
    arch = config.arch if config.family == "unet" or config.arch != "Unet" else DEFAULT_ARCH[config.family]
    encoder = config.encoder or PRESETS[config.preset or "fast"].encoder
    options = {"patch": config.patch} if config.family == "maskrcnn" else {}
    if head != "boundary":
        options["head"] = head
    return check_spec(ModelSpec(family=config.family, arch=arch, encoder=encoder, in_channels=channels,
                                n_classes=n_classes, options=options))


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
    tuner = None
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        tuner = ThreadTuner(max(1, cores), config.threads)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    budget = Budget(config.time_limit, config.epochs, config.steps_per_epoch, clock, t_start)
    sparse = get_mode(config.label_mode).sparse

    init_ckpt = load_checkpoint(config.init, with_optimizer=True) if config.init else None
    norm = Normalization.from_dict(init_ckpt.meta["normalization"]) if init_ckpt else None
    scale = config.scale
    if init_ckpt is not None and scale is None:
        scale = float(init_ckpt.meta.get("scale", 1.0))
    head = config.instance_head
    if init_ckpt is not None:  # fine-tuning keeps the checkpoint's head; asking for another is an error
        if head is not None and head != init_ckpt.spec.head:
            raise InputError(f"{config.init}: has the {init_ckpt.spec.head!r} instance head, not {head!r}")
        head = init_ckpt.spec.head
    elif head is None:
        head = default_instance_head(config.label_mode, config.family)
    config.instance_head = head
    samples, norm, channels, scale = prepare_training_data(
        images, labels, config.label_mode, axes=axes, read_255_as_foreground=config.read_255_as_foreground,
        norm=norm, scale=scale, head=head)
    n_classes = get_mode(config.label_mode).target_classes([s.target for s in samples])
    if (get_mode(config.label_mode).whole_objects and config.family == "maskrcnn") or head != "boundary":
        n_classes = 2  # background and object: the head's foreground channel
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
        spec = _model_spec(config, channels, n_classes, head)
    model, note = build_model(spec, None if init_ckpt else config.pretrained, allow_download=config.allow_download)
    if init_ckpt is not None:
        try:
            model.load_state_dict(init_ckpt.state_dict)
        except RuntimeError as exc:
            raise InputError(f"{config.init}: weights do not fit the recorded model "
                             f"({spec.family}/{spec.arch})") from exc
        note = f"starting from {config.init}"
    model.to(device).train()
    # channels_last speeds convolutions up on CPUs and tensor cores (not on MPS; detectors take lists)
    channels_last = device.type != "mps" and spec.family != "maskrcnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    name = f"{spec.family} {spec.arch}" + (f"/{spec.encoder}" if spec.family == "unet" else "")
    if spec.family == "unet" and config.preset and config.encoder is None and init_ckpt is None:
        name = f"'{config.preset}' preset ({name}, {spec.options.get('encoder_depth', 5)} levels)"
    what = f"{head} instance head" if spec.has_regression_head else f"{n_classes} classes"
    yield Message(f"{name}, {what}, on {describe(device)}; {note}")
    if scale != 1.0:
        yield Message(f"object scale {scale:g}: images are resampled by {scale:g} so objects reach about "
                      "the size the network resolves best (set the object scale to override)")
    cost, level = cost_note(spec, device, config.time_limit)
    if cost:
        yield Message(cost, level)

    # validation hold-out
    # Mask R-CNN learns whole objects from every pixel of a patch: a blanked-out hold-out would
    # teach it 'background' there, so it chooses its best model by training loss instead
    val_fraction = 0.0 if spec.family == "maskrcnn" else config.val_fraction
    held = [split_validation(s.target, sparse, val_fraction, rng) for s in samples]
    validator = Validator(samples, held)
    train_samples = [replace(s, target=np.where(h, IGNORE, s.target)) for s, h in zip(samples, held, strict=True)]
    if validator:
        yield Message(f"validation: {sum(int(h.sum()) for h in held)} held-out annotated pixels")
    elif spec.family != "maskrcnn":
        if val_fraction <= 0:
            why = "no validation hold-out asked for"
        elif sparse:
            what = get_mode(config.label_mode).units
            why = f"fewer than {MIN_STROKES_FOR_HOLDOUT} {what} in a class, so every stroke trains"
        else:
            why = "annotation too small for a validation hold-out"
        yield Message(f"{why}: no validation Dice; the best model is chosen by training loss", "warning")
    sampler = PatchSampler(train_samples, config.patch, rng, favour=0.8 if sparse else 0.3)
    pending_rounds = sorted(config.self_training_at) if config.self_training and get_mode(config.label_mode).self_training \
        and spec.semantic else []

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
    use_bf16 = False
    if spec.family != "maskrcnn":
        x0 = torch.from_numpy(sampler.batch(min(config.batch_size, 4))[0]).to(device)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        use_bf16, why = bf16_helps(model, x0, config.bf16, device)
        if why:
            yield Message(f"CPU arithmetic: {why}")

    meta = run_meta(config, spec, n_classes, norm, scale, samples, counts, note, use_bf16)
    history: list[dict] = []
    state = RunState(model, meta, config, budget)
    stopped = False
    epoch = 0
    try:
        finished = False
        while not finished:
            epoch += 1
            losses = []
            epoch_start = clock()
            last_start = None
            while not budget.epoch_over(len(losses), epoch_start):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                if budget.exhausted():
                    break
                if pending_rounds and budget.progress() >= pending_rounds[0]:
                    pending_rounds.pop(0)
                    dense, added = _pseudo_labelled(model, meta, device, train_samples, held, config.pseudo_threshold)
                    sampler = PatchSampler(dense, config.patch, rng, favour=0.5)
                    yield Message(f"self-training: {added} confidently predicted pixels added to the painted ones")
                if tuner is not None:
                    tuner.before_step(budget.step)
                t_step = clock()
                if last_start is not None:  # wall time per step, whatever the consumer did in between
                    budget.record_interval(t_step - last_start)
                last_start = t_step
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * _lr_factor(budget.progress())
                value = _step(model, optimizer, scaler, sampler, config, spec, device, channels_last, use_bf16,
                              weights)
                budget.step += 1
                note = tuner.after_step(budget.step, clock() - t_step) if tuner is not None else None
                losses.append(value)
                state.ema = value if state.ema is None else _smooth(state.ema, value, budget.step)
                yield TrainStep(step=budget.step, total_steps=budget.total_steps, epoch=epoch, loss=value,
                                lr=optimizer.param_groups[0]["lr"], elapsed=budget.elapsed(),
                                time_limit=config.time_limit)
                if note:
                    yield Message(note)
                    if budget.step < 20:
                        cost, level = cost_note(spec, device, config.time_limit, tuner.best_s)
                        yield Message(cost, level)
                if config.preview_every and preview_plane is not None and budget.step % config.preview_every == 0:
                    yield _preview(model, meta, device, preview_plane, config.label_mode, budget.step)
            finished = stopped or budget.exhausted() or (config.epochs is not None and epoch >= config.epochs)
            if not losses:
                epoch -= 1
                break
            t_end = clock()
            record, event = state.end_epoch(epoch, losses, validator, device, config.epochs)
            history.append(record)
            yield event
            val_s = clock() - t_end
            if event.is_best and state.path and not finished:  # the final write below saves the last best
                t_save = clock()
                with sigint_deferred():
                    save_checkpoint(state.path, model, state.best.meta)
                state.written = True
                state.save_s = clock() - t_save
                yield CheckpointSaved(path=state.path, epoch=epoch, metric=event.val_dice)
            # after the last step come one validation, the best model's write and the optimiser's
            # (about 3x the weights): the budget keeps that much time in hand
            budget.final_s = 1.2 * (val_s + state.save_s * (4.0 if state.last_path else 1.0))
        state.completed = True
    finally:
        state.rescue(history, optimizer)
    if state.best_state is None:
        raise InputError("training was stopped before the first step; nothing to save")
    best = state.final(history)
    return TrainResult(checkpoint=best, path=state.path, history=history, stopped=stopped, steps=budget.step,
                       seconds=budget.elapsed())


def _smooth(ema: float, value: float, step: int) -> float:
    """Running mean whose memory grows with the run (1/step at first, 0.1 later): no lag in short runs."""
    a = max(0.1, 1.0 / step)
    return (1 - a) * ema + a * value


def _step(model, optimizer, scaler, sampler, config, spec, device, channels_last, use_bf16, weights) -> float:
    """One optimiser step on a fresh batch; returns the loss."""
    reg = None
    if spec.has_regression_head:
        x, y, reg = sampler.head_batch(config.batch_size)
    else:
        x, y, inst = sampler.batch(config.batch_size)
    xt = torch.from_numpy(x).to(device)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.float16)
    else:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16)
    with autocast:
        if spec.family == "maskrcnn":
            from .detection import detection_loss

            loss = detection_loss(model, xt, inst)
        elif reg is not None:
            from .flows import head_loss

            yt = torch.from_numpy(y).to(device)
            loss = head_loss(model(xt).float(), torch.from_numpy(reg).to(device), yt == IGNORE, spec.head)
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
    value = float(loss.detach())
    if not math.isfinite(value):
        raise InputError("training diverged (loss is NaN or Inf); lower the learning rate")
    return value



