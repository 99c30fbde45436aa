"""The set-up of a training run: samples, model, hold-out, optimiser; what :func:`set_up` hands the loop.

:func:`set_up` is a generator of :class:`~napari_seglab.core.events.Message` events (what was
built, on which device, what it costs) returning a :class:`TrainRun`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..data import (
    MIN_STROKES_FOR_HOLDOUT,
    Normalization,
    PatchSampler,
    Sample,
    anisotropy_from_pixel_size,
    match_pixel_sizes,
    split_validation,
    yx_size,
)
from ..device import describe
from ..errors import InputError
from ..events import Message
from ..labels import IGNORE, get_mode
from ..models import (
    MAX_CLASSES,
    REGISTRY,
    Checkpoint,
    ModelSpec,
    balanced_class_weights,
    build_model,
    check_spec,
    get_family,
    load_checkpoint,
    preset_spec,
)
from ..objects import typical_solidity
from ._boxes import BoxValidator, box_classes, check_box_density, prepare_box_data, split_boxes
from ._config import default_instance_head
from ._data import (
    MIN_ORTHOGONAL_RUN,
    MIN_RUN_DEPTH,
    MIN_WHOLE_DEPTH,
    VolumeSource,
    background_note,
    gives_sections,
    label_stacks,
    orthogonal_plane_count,
    painted_runs,
    prepare_training_data,
    stroke_note,
    volume_sources,
)
from ._runtime import Budget, ThreadTuner, bf16_helps, cost_note
from ._state import RunState, Validator, run_meta

#: label modes a box family trains on: boxes (rows), or instance labels (one box per object)
BOX_LABEL_MODES = ("boxes", "instances")
#: probability that a box run's patch is placed around a box (the rest are uniform, background included)
BOX_FAVOUR = 0.7


@dataclass
class TrainRun:
    """Everything the training loop works with (``config``: the resolved TrainConfig)."""

    config: object
    device: torch.device
    spec: ModelSpec
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    sampler: PatchSampler
    samples: list[Sample]  # the training samples, held-out pixels ignored
    held: list[np.ndarray]  # per sample, the held-out validation pixels
    validator: Validator
    state: RunState
    budget: Budget
    rng: np.random.Generator
    tuner: ThreadTuner | None
    class_weights: torch.Tensor | None
    channels_last: bool
    use_bf16: bool
    pending_rounds: list[float]  # self-training rounds still to come (fractions of the budget)
    clock: Callable[[], float]
    volumes: list[VolumeSource] = field(default_factory=list)  # stacks that self-train in 3D ("volumes")
    round_seconds: float | None = None  # how long the last self-training round took


def model_spec(config, channels: int, n_classes: int, head: str = "boundary") -> ModelSpec:
    """The ModelSpec a fresh run builds: the family's preset, or family/arch/encoder as given."""
    family = get_family(config.family)
    if family.presets and config.encoder is None and config.arch == family.default_arch:
        return check_spec(preset_spec(config.preset, channels, n_classes, head, family.name))
    encoder = config.encoder or (family.presets[config.preset].encoder if family.presets and config.preset
                                 else ModelSpec.encoder)
    options = {"head": head} if head != "boundary" else {}
    return check_spec(ModelSpec(family=family.name, arch=config.arch, encoder=encoder, in_channels=channels,
                                n_classes=n_classes, options=options))


def _start_from(config) -> tuple[Checkpoint | None, Normalization | None, float | None, str]:
    """(checkpoint to continue, its normalisation, object scale, instance head) of a run."""
    init = _load_init(config.init) if config.init else None
    scale = config.scale
    if init is not None and scale is None:
        scale = init.info.scale
    head = config.instance_head
    if init is not None:  # fine-tuning keeps the checkpoint's head; asking for another is an error
        if head is not None and head != init.spec.head:
            raise InputError(f"{config.init}: has the {init.spec.head!r} instance head, not {head!r}")
        head = init.spec.head
    elif head is None:
        head = default_instance_head(config.label_mode, config.family)
    return init, (replace(init.info.normalization) if init else None), scale, head


def _load_init(path) -> Checkpoint:
    """The checkpoint to train on from: a .pt checkpoint (with its optimiser state), or the one inside a
    bioimage.io package SegLab exported."""
    from ..predict import is_package, package_checkpoint

    return package_checkpoint(path) if is_package(path) else load_checkpoint(path, with_optimizer=True)


def _spec_for(config, init: Checkpoint | None, samples: list[Sample], channels: int, head: str) -> ModelSpec:
    """The spec of the model to train: the checkpoint's (checked against the data) or a fresh one."""
    family = get_family(config.family)
    if family.kind.boxes:
        n_classes = box_classes(samples)  # background and the box classes
    elif not family.semantic or head != "boundary":
        n_classes = 2  # background and object: the detector's classes, the head's foreground channel
    else:
        n_classes = get_mode(config.label_mode).target_classes([s.target for s in samples])
    if n_classes > MAX_CLASSES:  # what a checkpoint may record: refused before a giant head is built
        raise InputError(f"the labels use class {n_classes - 1}, above the largest class id a model can hold "
                         f"({MAX_CLASSES - 1}); number the classes 1, 2, 3, ...")
    if init is None:
        return model_spec(config, channels, n_classes, head)
    spec = init.spec
    both_boxes = family.kind.boxes and {init.label_mode, config.label_mode} <= set(BOX_LABEL_MODES)
    if init.label_mode != config.label_mode and not both_boxes:
        raise InputError(f"{config.init}: was trained on {init.label_mode!r} labels, not {config.label_mode!r}")
    if spec.in_channels != channels:
        raise InputError(f"{config.init}: expects {spec.in_channels} channel(s), the images have {channels}")
    if n_classes > spec.n_classes:
        raise InputError(f"{config.init}: knows {spec.n_classes} classes but the labels use {n_classes}")
    return spec


def _build(config, spec: ModelSpec, init: Checkpoint | None, device: torch.device
           ) -> tuple[torch.nn.Module, str, bool]:
    """(model in train mode on ``device``, weights note, channels_last?)."""
    model, note = build_model(spec, None if init else config.pretrained, allow_download=config.allow_download)
    if init is not None:
        try:
            model.load_state_dict(init.state_dict)
        except RuntimeError as exc:
            raise InputError(f"{config.init}: weights do not fit the recorded model "
                             f"({spec.family}/{spec.arch})") from exc
        note = f"starting from {config.init}"
    model.to(device).train()
    # channels_last speeds convolutions up on CPUs and tensor cores (not on MPS)
    channels_last = device.type != "mps" and spec.family_entry.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, note, channels_last


def _describe(config, spec: ModelSpec, init, device: torch.device, note: str, scale: float) -> list[Message]:
    family = spec.family_entry
    name = f"{spec.family} {family.model_name(spec)}"
    if family.presets and config.preset and config.encoder is None and init is None:
        name = f"'{config.preset}' preset ({name}, {spec.options.get('encoder_depth', 5)} levels)"
    what = f"{spec.head} instance head" if spec.has_regression_head else f"{spec.n_classes} classes"
    out = [Message(f"{name}, {what}, on {describe(device)}; {note}")]
    if scale != 1.0:
        out.append(Message(f"object scale {scale:g}: images are resampled by {scale:g} so objects reach about "
                           "the size the network resolves best (set the object scale to override)"))
    cost, level = cost_note(spec, device, config.time_limit)
    if cost:
        out.append(Message(cost, level))
    return out


def _box_holdout(config, samples: list[Sample], rng) -> tuple[list[np.ndarray], BoxValidator, list[Sample],
                                                                list[Message]]:
    """A box run's hold-out (see :func:`~napari_seglab.core.train._boxes.split_boxes`): part of the annotated area with its boxes.

    The held-out part is cut out of the training samples (not blanked), so a
    box family trains on it nowhere, whatever its ``holdout`` flag says.
    """
    kept, held, why = split_boxes(samples, config.val_fraction, rng)
    validator = BoxValidator(held)
    masks = [np.zeros(s.target.shape, bool) for s in kept]
    if validator:
        return masks, validator, kept, [Message(f"validation: box AP@0.5 on {validator.n_boxes} held-out boxes "
                                                f"({len(held)} held-out part(s) of the annotated area)")]
    return masks, validator, kept, [
        Message(f"{why}: no validation AP; the best model is chosen by training loss", "warning")]


def _painted_objects(samples, mode: str) -> list[np.ndarray]:
    """The whole objects painted on each sample: its instances, or the objects of the labels kept for
    self-training (the ``objects`` mode)."""
    return [get_mode(mode).objects(s.labels) if s.labels is not None else s.instances
            for s in samples if s.labels is not None or s.instances is not None]


def _holdout(config, spec: ModelSpec, samples: list[Sample], rng, sparse: bool
             ) -> tuple[list[np.ndarray], Validator, list[Sample], list[Message]]:
    """(held-out pixels per sample, validator, training samples without them, messages)."""
    if spec.family_entry.kind.boxes:
        return _box_holdout(config, samples, rng)
    val_fraction = config.val_fraction if spec.family_entry.holdout else 0.0
    held = [split_validation(s.target, sparse, val_fraction, rng) for s in samples]
    validator = Validator(samples, held)
    train_samples = [replace(s, target=np.where(h, IGNORE, s.target)) for s, h in zip(samples, held, strict=True)]
    if validator:
        return held, validator, train_samples, [
            Message(f"validation: {sum(int(h.sum()) for h in held)} held-out annotated pixels")]
    if not spec.family_entry.holdout:
        return held, validator, train_samples, []
    if val_fraction <= 0:
        why = "no validation hold-out asked for"
    elif sparse:
        what = get_mode(config.label_mode).units
        why = f"fewer than {MIN_STROKES_FOR_HOLDOUT} {what} in a class, so every stroke trains"
    else:
        why = "annotation too small for a validation hold-out"
    return held, validator, train_samples, [
        Message(f"{why}: no validation Dice; the best model is chosen by training loss", "warning")]


def _optimizer(config, model: torch.nn.Module, init: Checkpoint | None
               ) -> tuple[torch.optim.Optimizer, list[Message]]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if init is None or not init.optimizer or not config.resume_optimizer:
        return optimizer, []
    try:
        optimizer.load_state_dict(init.optimizer)
    except (ValueError, KeyError):
        return optimizer, [Message("optimizer state of the checkpoint does not fit; starting a fresh optimizer",
                                   "warning")]
    for group in optimizer.param_groups:
        group["lr"] = config.lr
    return optimizer, [Message("optimizer state restored: continuing training")]


def _thread_tuner(config, device: torch.device) -> ThreadTuner | None:
    if device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return ThreadTuner(max(1, cores), config.threads)


def check_box_run(config, boxes) -> bool:
    """True when ``config`` trains a box family; InputError when boxes, label mode and family do not fit."""
    family = get_family(config.family)
    if not family.kind.boxes:
        if boxes is not None or config.label_mode == "boxes":
            what = "boxes are given" if boxes is not None else "the 'boxes' label mode is chosen"
            able = ", ".join(f.name for f in REGISTRY.values() if f.kind.boxes) or "none is installed"
            raise InputError(f"{what}, but {family.label} learns from painted labels, not boxes; choose a box "
                             f"detector family ({able})")
        return False
    if config.label_mode not in BOX_LABEL_MODES:
        raise InputError(f"{family.label} learns boxes: give boxes (label mode 'boxes') or 'instances' labels, "
                         f"not {config.label_mode!r}")
    return True


def _axes_names(images, axes) -> list[str]:
    """Each image's canonical axes: the given ones, else guessed from its shape."""
    from ..io import guess_axes

    return [a if a is not None else guess_axes(np.shape(i)) for i, a in
            zip(images, axes if axes is not None else [None] * len(images), strict=True)]


def _same_pixel_size(images, labels, axes, pixel_sizes, config, init: Checkpoint | None, box_run: bool):
    """(images, labels, the run's pixel size or None, notes): training images brought to one pixel size.

    Each image's size is its own (``pixel_sizes``), else ``config.pixel_size``. Images of another size
    than the first known one (or than the checkpoint being fine-tuned) are resampled to it in Y and X;
    box runs refuse instead (their box rows would need the same resampling).
    """

    given = list(pixel_sizes) if pixel_sizes is not None else [None] * len(images)
    if len(given) != len(images):
        raise InputError(f"{len(images)} images but {len(given)} pixel sizes")
    if config.pixel_size is not None:
        given = [s if s is not None else (float(config.pixel_size),) * 2 for s in given]
    reference = init.info.pixel_size if init is not None else None
    if all(s is None for s in given):
        return images, labels, reference, []
    names = _axes_names(images, axes)
    new_images, new_labels, size, notes = match_pixel_sizes(images, labels, names, given, reference,
                                                            f"the start model {config.init}")
    if box_run and any(a is not b for a, b in zip(new_images, images, strict=True)):
        raise InputError("the images have different pixel sizes; a box detector trains on one: resample them "
                         "(or their boxes) to one pixel size first")
    return new_images, new_labels, size, notes


def _painted_in_3d(labels: np.ndarray, mode: str) -> bool:
    """Whether a (Z, Y, X) sparse labels holds an object painted on more than one plane."""
    objects = get_mode(mode).objects(labels)
    if objects is None:
        return False
    ids = [set(np.unique(p[p > 0]).tolist()) for p in objects if np.any(p)]
    seen: set = set()
    for plane in ids:
        if seen & plane:
            return True
        seen |= plane
    return False


def _anisotropies(images, labels, axes, pixel_sizes, pixel_size, config
                  ) -> tuple[list[float | None], list[str], float | None]:
    """(per image the z step over the run's pixel size or None, notes, the z step of the first stack whose
    ZX/ZY planes are learnt or None) for ZX/ZY training planes.

    ``config.anisotropy`` when given (0: none), else each stack's own voxel size (``pixel_sizes``) over the
    run's in-plane size ``pixel_size`` (what its planes were resampled to). Dense labels and the ``objects``
    mode (3D self-training uses the z step of any painted stack); the notes speak of the stacks with a
    painted run (with objects painted on several planes): what was used, or how to get the ZX/ZY planes
    when the z step is unknown.
    """
    n = len(images)
    names = _axes_names(images, axes)
    every = [i for i in range(n) if "Z" in names[i] and labels[i] is not None]
    if not every or not gives_sections(config.label_mode):
        return [None] * n, [], None
    objects = get_mode(config.label_mode).sparse  # the objects mode: sections through its objects painted in 3D
    stacks = [i for i in every if any((_painted_in_3d(lab, config.label_mode) if objects else painted_runs(lab))
                                      for _, lab in label_stacks(np.asarray(labels[i]), names[i]))]
    out: list[float | None] = [None] * n
    if config.anisotropy is not None:
        if not config.anisotropy:
            return out, [], None
        for i in every:
            out[i] = float(config.anisotropy)
        where = "given"
    else:
        lateral = yx_size(pixel_size)
        for i in every:
            own = (pixel_sizes or [None] * n)[i]
            found = anisotropy_from_pixel_size(own, names[i])
            if found is not None and lateral is not None:  # over the pixels the planes were resampled to
                found *= sum(yx_size(own)) / sum(lateral)
            out[i] = found
        where = "from the voxel size"
    unknown = [i for i in stacks if out[i] is None]
    notes = []
    if unknown:
        what = ("objects painted on several planes" if objects else
                f"a stack painted on {MIN_ORTHOGONAL_RUN} or more consecutive planes")
        notes.append(f"image(s) {', '.join(str(i + 1) for i in unknown)}: {what}, but its z step is unknown: "
                     "trained on its YX planes only. Give the anisotropy (z step / pixel size) to also learn from "
                     "its ZX and ZY planes, which 3D prediction uses")
    known = [i for i in stacks if out[i] is not None]
    counts = {i: orthogonal_plane_count(np.asarray(labels[i]), names[i], out[i], config.label_mode) for i in known}
    learnt = [i for i in known if counts[i]]
    if known:
        count = sum(counts.values())
        values = ", ".join(sorted({f"{out[i]:.3g}" for i in known}))
        source = "the objects painted through their planes" if objects else "the painted runs"
        if count:
            notes.append(f"ZX/ZY planes: {count} more training planes through {source} of {len(known)} "
                         f"stack(s), z stretched by the anisotropy {values} ({where})")
        elif objects:
            notes.append(f"ZX/ZY planes: none; no object is painted on every one of its planes, at least "
                         f"{MIN_WHOLE_DEPTH:g} of its diameter deep at the anisotropy {values} ({where}) (or every "
                         "row through one crosses an object painted on fewer planes). Paint whole nuclei through "
                         "all their planes to add them")
        else:
            notes.append(f"ZX/ZY planes: none; the runs of consecutive painted planes are less than "
                         f"{MIN_RUN_DEPTH:g} objects deep at the anisotropy {values} ({where}), so their sections "
                         "would only show nuclei cut at both faces. Paint more consecutive planes to add them")
    return out, notes, (round(float(out[learnt[0]]), 4) if learnt else None)


def _volumes(images, labels, axes, anisotropy, config, head: str) -> tuple[list[VolumeSource], list[str]]:
    """The stacks that self-train in 3D (``instances`` labels painted on some of their planes), and notes on
    the stacks that cannot."""
    names = _axes_names(images, axes)
    partly = [i for i in range(len(images)) if "Z" in names[i] and labels[i] is not None
              and any(0 < sum(bool(np.any(p)) for p in lab) < len(lab)
                      for _, lab in label_stacks(np.asarray(labels[i]), names[i]))]
    if not partly:
        return [], []
    if head not in ("flows", "distance"):
        return [], [f"self-training of stacks painted on some planes predicts them in 3D, which needs the flows "
                    f"or distance instance head, not {head!r}: the unpainted planes stay unused"]
    unknown = [i for i in partly if not anisotropy[i]]
    notes = [f"image(s) {', '.join(str(i + 1) for i in unknown)}: painted on some planes, but the z step is "
             "unknown: no 3D self-training. Give the anisotropy (z step / pixel size) so the unpainted planes "
             "learn from the model's 3D objects"] if unknown else []
    found = volume_sources(images, labels, axes, anisotropy, config.label_mode)
    if found:
        planes = sum(len(v.labels) - len({z for _, z in v.planes}) for v in found)
        notes.append(f"3D self-training: the {planes} unpainted planes of {len(found)} stack(s) will learn from "
                     "the model's 3D objects, with the stacks' ZX/ZY planes")
    return found, notes


def set_up(images: Sequence[np.ndarray], labels: Sequence[np.ndarray | None], config, device: torch.device, *,
           axes: Sequence[str | None] | None, clock: Callable[[], float], t_start: float,
           boxes: Sequence[Sequence[dict] | None] | None = None,
           pixel_sizes: Sequence[Sequence[float] | None] | None = None) -> Generator[Message, None, TrainRun]:
    """Prepare a run of the resolved ``config`` on ``device``; yields Messages, returns the :class:`TrainRun`.

    ``pixel_sizes``: per image its µm per pixel or None (then ``config.pixel_size``, when set); see
    :func:`_same_pixel_size`.

    ``boxes``: per image a list of box rows, for box families (see :mod:`napari_seglab.core.train._boxes`).
    """
    tuner = _thread_tuner(config, device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    budget = Budget(config.time_limit, config.epochs, config.steps_per_epoch, clock, t_start)
    sparse = get_mode(config.label_mode).sparse
    box_run = check_box_run(config, boxes)
    init, norm, scale, head = _start_from(config)
    config = replace(config, instance_head=head)
    images, labels, pixel_size, size_notes = _same_pixel_size(images, labels, axes, pixel_sizes, config, init,
                                                              box_run)
    learnt_z = None
    volumes: list[VolumeSource] = []
    if box_run:
        object_area = None
        samples, norm, channels, scale, data_notes = prepare_box_data(images, labels, boxes, config.label_mode,
                                                                      axes=axes, norm=norm, scale=scale)
    else:
        anisotropy, z_notes, learnt_z = _anisotropies(images, labels, axes, pixel_sizes, pixel_size, config)
        # planes are normalised by their own percentiles, unless a start model brings its range
        lohi = (tuple(norm.lo), tuple(norm.hi)) if norm is not None and norm.lo and not norm.per_image else None
        samples, norm, channels, scale, object_area = prepare_training_data(
            images, labels, config.label_mode, axes=axes, read_255_as_foreground=config.read_255_as_foreground,
            norm=norm, scale=scale, head=head, anisotropy=anisotropy)
        if config.self_training and get_mode(config.label_mode).self_training == "volumes":
            volumes, notes = _volumes(images, labels, axes, anisotropy, config, head)
            for v in volumes:
                v.scale, v.norm, v.lohi = scale, norm, lohi
            z_notes += notes
            if volumes and learnt_z is None:  # its ZX/ZY planes will be learnt
                learnt_z = round(volumes[0].anisotropy, 4)
        data_notes = [Message(text, "warning") for text in (background_note(labels, config.label_mode),
                                                            stroke_note(labels, config.label_mode)) if text]
        data_notes += [Message(text) for text in z_notes]
    spec = _spec_for(config, init, samples, channels, head)
    if box_run:
        family = get_family(spec.family)
        check_box_density(samples, config.patch, int((spec.options or {}).get("detections_per_img",
                                                                               family.max_objects)), family.label)
    model, note, channels_last = _build(config, spec, init, device)
    yield from _describe(config, spec, init, device, note, scale)
    yield from data_notes
    for text in size_notes:
        yield Message(text)
    held, validator, train_samples, notes = _holdout(config, spec, samples, rng, sparse)
    yield from notes
    favour = BOX_FAVOUR if box_run else 0.8 if sparse else 0.3
    sampler = PatchSampler(train_samples, config.patch, rng, favour=favour, scale_jitter=config.scale_jitter or 1.0)
    kind = get_mode(config.label_mode).self_training
    self_training = config.self_training and kind and spec.semantic and (kind != "volumes" or volumes)
    n = spec.n_classes
    counts = np.bincount(np.concatenate([s.target[s.target != IGNORE] for s in train_samples]), minlength=n)[:n]
    weights = balanced_class_weights(counts) if config.class_weights == "balanced" else None
    optimizer, notes = _optimizer(config, model, init)
    yield from notes
    use_bf16 = False
    if spec.semantic:  # the probe compares dense outputs (a detector's are lists of boxes)
        x0 = torch.from_numpy(sampler.batch(min(config.batch_size, 4))[0]).to(device)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        use_bf16, why = bf16_helps(model, x0, config.bf16, device)
        if why:
            yield Message(f"CPU arithmetic: {why}")
    meta = run_meta(config, spec, norm, scale, samples, counts, note, use_bf16, object_area)
    # how convex the painted whole objects are: decoding splits only objects less convex than these
    solid = None if box_run else typical_solidity(_painted_objects(samples, config.label_mode))
    meta = meta.replace(pixel_size=pixel_size, anisotropy=learnt_z, object_solidity=solid)
    return TrainRun(config=config, device=device, spec=spec, model=model, optimizer=optimizer,
                    scaler=torch.amp.GradScaler("cuda") if device.type == "cuda" else None, sampler=sampler,
                    samples=train_samples, held=held, validator=validator,
                    state=RunState(model, meta, config, budget), budget=budget, rng=rng, tuner=tuner,
                    class_weights=weights, channels_last=channels_last, use_bf16=use_bf16,
                    pending_rounds=sorted(config.self_training_at) if self_training else [], clock=clock,
                    volumes=volumes if self_training else [])
