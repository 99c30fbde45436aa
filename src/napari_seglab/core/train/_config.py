"""Training settings, declared once: :class:`TrainConfig` and its frozen, resolved form.

Each field carries a :class:`~napari_seglab.core.settings.Setting` in its metadata (help text,
range or choices, what "auto" means, unit, command-line flag). The ``seglab train``
options and the Train dock's tooltips and ranges are built from it, and
:meth:`TrainConfig.check` applies the same rules to every caller, so a
Python user, the CLI and the dock get the same error for the same value.

``TrainConfig.resolve(device)`` decides every "auto" default for a device
and returns a frozen :class:`ResolvedTrainConfig`; the caller's config is
never changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, make_dataclass

import numpy as np

from ..errors import InputError
from ..labels import LABEL_MODES, get_mode
from ..models import CARDS, INSTANCE_HEADS
from ..settings import Setting, check_fields, check_used, setting, settings_of

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
MAX_PATCH, MAX_BATCH = 8192, 4096
MAX_TIME = 30 * 24 * 3600.0  # a month of training, in seconds
#: scale jitter of dense instance labels. Real DSB2018 nuclei (left half trains, right half is predicted), flows
#: head, fast preset, 2000 steps on one thread, seeds 0-2: AP@0.5 0.948 (spread 0.034) and AP@0.75 0.842 (0.044)
#: with jitter 1.33, against 0.920 (0.051) and 0.786 (0.020) without; Dice 0.939 for both
INSTANCE_SCALE_JITTER = 1.33
#: smp architectures that pool the whole patch to 1x1 before a BatchNorm
POOLED_ARCHS = ("deeplabv3plus", "pan", "deeplabv3")


def _sci(value: float) -> str:
    """3e-3, not 0.003: how learning rates are written."""
    return f"{value:.0e}".replace("e-0", "e-")


# ---------------------------------------------------------------------- help read from the family catalogue
def _default_archs() -> str:
    """The default architecture per family, and per device where it differs."""
    by_device = "; ".join(f"{c.name}: {c.default_arch} on a CPU, {c.gpu_arch} on a GPU" for c in CARDS if c.gpu_arch)
    return f"per family and device ({by_device})" if by_device else "per family"


def _learning_rates() -> str:
    """Each family's own learning rates, families that share them together."""
    groups: dict[tuple[float, float], list[str]] = {}
    for card in CARDS:
        groups.setdefault((card.lr, card.lr_finetune), []).append(card.name)
    heavier = "".join(f"; {arch} {_sci(lr)}" for card in CARDS for arch, lr in card.arch_lr.items())
    return "the family's own: " + "; ".join(
        f"{', '.join(names)} {_sci(lr)}" + (f" from scratch, {_sci(tuned)} fine-tuning" if tuned != lr else "")
        for (lr, tuned), names in groups.items()) + heavier


#: the family whose presets ``--preset`` chooses from (the U-Net)
_PRESETS_OF = next(card for card in CARDS if card.presets)
#: the families that carry the "flows" and "distance" instance heads
_HEADED = [card.name for card in CARDS if len(card.heads) > 1]


# ---------------------------------------------------------------------- which families use a setting
def _dense(card) -> bool:
    return card.kind.dense


def _with_encoder(card) -> bool:
    return card.default_encoder is not None


def _with_presets(card) -> bool:
    return bool(card.presets)


def _models(test) -> str:
    """The families passing ``test``, in words ("U-Net, FCN models")."""
    return ", ".join(card.label for card in CARDS if test(card)) + " models"


#: object diameter: the dock's field and ``--diameter``, turned into ``scale`` by :func:`~napari_seglab.core.data._samples.scale_for`
DIAMETER = Setting("typical object diameter in pixels; images are resampled so objects reach the size the network "
                   "resolves best", "object diameter", float, 1, 10000, unit="pixels", flag="--diameter",
                   metavar="PX", auto="measured on the painted objects (instances / objects modes) or read from "
                   "the image at the foreground strokes (scribbles), else no resampling")


@dataclass
class TrainConfig:
    """Settings of one training run (recorded in the checkpoint). None means "auto" (see each Setting)."""

    label_mode: str = setting("scribbles", label="label mode", choices=LABEL_MODES, metavar="{" + ",".join(
        LABEL_MODES) + "}", help="how to read the labels: " + "; ".join(
        f"{name}: {get_mode(name).legend}" for name in LABEL_MODES))
    family: str = setting(CARDS[0].name, label="model family", metavar="{" + ",".join(c.name for c in CARDS) + "}",
                          help="model family (" + ", ".join(c.name for c in CARDS if c.kind.boxes)
                               + ": box detectors)")
    arch: str = setting(CARDS[0].default_arch, label="architecture", auto=_default_archs(), metavar="ARCH",
                        help="architecture (" + "; ".join(f"{c.name}: {', '.join(c.archs)}" for c in CARDS) + ")")
    encoder: str | None = setting(label="encoder", auto="the preset's", used_by=_with_encoder,
                                  used_by_text=_models(_with_encoder),
                                  help="encoder of unet-family models (any segmentation-models-pytorch name), "
                                       "instead of the preset's")
    preset: str | None = setting(label="model preset", choices=tuple(_PRESETS_OF.presets), used_by=_with_presets,
                                 used_by_text=_models(_with_presets),
                                 auto=f"{_PRESETS_OF.default_preset['cpu']} on a CPU, "
                                      f"{_PRESETS_OF.default_preset['cuda']} on a GPU",
                                 help=f"{_PRESETS_OF.label} preset. " + "; ".join(
                                     f"{p.name}: {p.summary} (about {p.cpu_step_s:.2f} s per step on a quiet "
                                     "2-core CPU)" for p in _PRESETS_OF.presets.values()))
    pretrained: str | None = setting(label="pretrained weights", metavar="none|auto|PATH", auto="none",
                                     help="encoder weights: none (random), auto (stock weights when already on "
                                          "disk; nothing is downloaded unless allowed), or a weights file")
    epochs: int | None = setting(label="epochs", kind=int, low=1, high=100000, metavar="N",
                                 auto="train for the time limit", help="epochs of steps-per-epoch steps")
    time_limit: float | None = setting(label="time limit", kind=float, low=0, high=MAX_TIME, low_open=True, unit="seconds",
                                       metavar="SEC", auto=f"{DEFAULT_TIME_LIMIT:g} s when epochs are not given",
                                       help="training time in seconds, set-up and saving included; training stops "
                                            "at the epochs or the time limit, whichever comes first")
    steps_per_epoch: int = setting(25, label="steps per epoch", kind=int, low=1, high=100000, metavar="N",
                                   help="optimizer steps per epoch; the validation Dice is measured after each")
    patch: int | None = setting(label="patch size", kind=int, low=32, high=MAX_PATCH, step=32, unit="pixels",
                                metavar="PX", help="training patch side in pixels, a multiple of 32",
                                auto=f"dense labels {DENSE_PATCH['cpu']} on the CPU, {DENSE_PATCH['cuda']} on a "
                                     f"GPU; scribbles {SPARSE_PATCH['cpu']} / {SPARSE_PATCH['cuda']}")
    batch_size: int | None = setting(label="batch size", kind=int, low=1, high=MAX_BATCH, metavar="N",
                                     help="patches per step",
                                     auto=f"{DENSE_BATCH} for dense labels, {SPARSE_BATCH} for scribbles")
    lr: float | None = setting(label="learning rate", kind=float, low=0, high=1, low_open=True, high_open=True,
                               metavar="LR", help="AdamW learning rate", auto=_learning_rates())
    weight_decay: float = setting(1e-4, label="weight decay", kind=float, low=0, high=1, flag="",
                                  help="AdamW weight decay")
    class_weights: str = setting("none", label="class weights", choices=("none", "balanced"), used_by=_dense,
                                 used_by_text=_models(_dense),
                                 help="balanced: rare classes weigh more in the loss")
    focal_gamma: float = setting(0.0, label="focal gamma", kind=float, low=0, high=10, metavar="G", used_by=_dense,
                                 used_by_text=_models(_dense),
                                 help="focal loss gamma: 0 = plain cross-entropy; 2 = focus on hard pixels")
    val_fraction: float = setting(0.15, label="validation fraction", kind=float, low=0, high=1, high_open=True,
                                  metavar="F", help="fraction of strokes, tiles or annotated area held out "
                                                    "for validation (scribbles: only when every class has 10 "
                                                    "strokes or more; boxes: when 10 boxes or more; "
                                                    "0 = no hold-out)")
    device: str = setting("auto", label="device", metavar="{auto,cpu,cuda,mps}", help="where to train")
    seed: int = setting(0, label="seed", kind=int, low=0, high=2**63 - 1, metavar="N", help="random seed")
    model_out: str | None = setting(label="model file", metavar="M.pt", help="where to save the best model")
    init: str | None = setting(label="start model", metavar="M.pt",
                               help="start from this checkpoint (fine-tune / continue); its architecture and "
                                    "classes are kept")
    resume_optimizer: bool = True
    save_last: bool = True
    preview_every: int = setting(0, label="live preview every", kind=int, low=0, high=10000, flag="",
                                 help="steps between live predictions of the plane on screen; 0 = off")
    self_training: bool | None = setting(label="self-training", kind=bool, used_by=_dense,
                                         used_by_text=_models(_dense) + " trained on scribbles, objects or "
                                                                        "instances",
                                         auto="on for scribbles, objects and instances labels",
                                         help="add the model's confident predictions to the painted labels "
                                              "during training: pixels to scribbles, whole objects to objects, "
                                              "its 3D objects to the unpainted planes of a z-stack painted on "
                                              "some planes (instances, flows or distance head, z step known)")
    self_training_at: tuple[float, ...] = (0.35, 0.65)  # fractions of the budget
    pseudo_threshold: float = 0.9
    read_255_as_foreground: bool = setting(False, label="read 255 as foreground", kind=bool, flag="--mask-255",
                                           help="read 0/255 masks as background/foreground")
    allow_download: bool = setting(False, label="allow downloads", kind=bool,
                                   help="let --pretrained auto download weights")
    scale: float | None = setting(label="object scale", kind=float, low=0.25, high=4, metavar="F",
                                  auto="from the painted objects, else 1",
                                  help="resampling factor applied before the network (0.25-4), instead of "
                                       "--diameter")
    pixel_size: float | None = setting(label="pixel size", kind=float, low=1e-4, high=1e4, unit="µm", metavar="UM",
                                       auto="from each image's file",
                                       help="µm per pixel of the training images whose file does not say; the "
                                            "model records it, and prediction resamples images of another pixel "
                                            "size to it")
    anisotropy: float | None = setting(label="anisotropy", kind=float, low=0, high=50, metavar="F",
                                       auto="from each stack's voxel size; unknown: YX planes only",
                                       help="z step over the pixel size of Z stacks: dense labels painted on 3 or "
                                            "more consecutive planes, and objects painted through all their "
                                            "planes, then also teach the stack's ZX and ZY planes, stretched in z "
                                            "as 3D prediction sees them; 0 = YX planes only")
    bf16: str = setting("auto", label="bf16", choices=("auto", "on", "off"),
                        help="CPU training in bfloat16 (auto: when the CPU has it natively, it is faster and it "
                             "agrees with float32)")
    threads: int | None = setting(label="threads", kind=int, low=1, high=1024, metavar="N",
                                  auto="measured; fewer threads win when other programs share the cores",
                                  help="CPU threads")
    scale_jitter: float | None = setting(label="scale jitter", kind=float, low=1, high=2, metavar="F",
                                         auto=f"{INSTANCE_SCALE_JITTER:g} for dense instance labels, else 1 (off)",
                                         help="zoom training patches by up to this factor in and out, so objects "
                                              "are seen a little larger and smaller than painted (1 = off)")
    instance_head: str | None = setting(label="instance head", choices=INSTANCE_HEADS,
                                        auto=f"flows for dense instances ({' / '.join(_HEADED)}), else boundary",
                                        help=f"how {'/'.join(_HEADED)} models separate objects (instances and "
                                             "objects modes): "
                                             "boundary = background / interior / boundary classes; flows = "
                                             "foreground + flows towards each object's centre (cellpose-like); "
                                             "distance = foreground + distance to the object's boundary")

    def __post_init__(self):
        if self.epochs is None and self.time_limit is None:
            self.time_limit = DEFAULT_TIME_LIMIT

    def check(self) -> TrainConfig:
        """Refuse settings out of range before anything is built or allocated (InputError); returns self.

        Ranges and choices come from the fields' :class:`Setting` (a :class:`SettingError`
        names the setting); the rules between settings follow.
        """
        self._check()
        return self

    def _check(self, device_type: str = "cpu") -> tuple[str, str]:
        """:meth:`check`'s work; returns the family and architecture names as the model registry spells them."""
        declared = settings_of(TrainConfig)
        if self.epochs is None and self.time_limit is None:
            raise InputError("give a number of epochs or a time limit")
        if not declared["label_mode"].accepts(self.label_mode):
            get_mode(self.label_mode)  # the label modes' own message
        _check_patch(self.patch)
        check_fields(self)
        names = _check_model(self, device_type)
        _check_memory(self, names[0])
        return names

    def resolve(self, device) -> ResolvedTrainConfig:
        """Check, then decide every "auto" default for ``device`` (a torch.device or its type name).

        Returns a frozen :class:`ResolvedTrainConfig`; this config is not changed.
        """
        kind = getattr(device, "type", str(device).split(":")[0])
        family, arch = self._check(kind)  # an architecture not chosen is the family's default for this device
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(family=family, arch=arch, scale=None if self.scale is None else float(self.scale),
                      patch=self.patch or default_patch(self.label_mode, kind),
                      batch_size=self.batch_size or default_batch(self.label_mode),
                      device=str(device))
        fam = _family(family)
        values["lr"] = self.lr or default_lr(family, fine_tuning=bool(self.init or self.pretrained), arch=arch)
        if fam.presets and self.encoder is None:
            values["preset"] = self.preset or fam.default_preset.get(kind, next(iter(fam.presets)))
        if self.instance_head is None and self.init is None:
            values["instance_head"] = default_instance_head(self.label_mode, family)
        if self.scale_jitter is None:
            values["scale_jitter"] = default_scale_jitter(self.label_mode)
        if self.self_training is None:
            values["self_training"] = default_self_training(self.label_mode, fam)
        return ResolvedTrainConfig(**values)


def _resolved_check(self) -> TrainConfig:
    """Already checked. Returns an editable :class:`TrainConfig` of the same values, for code that still
    adjusts a copy: ``train()`` takes either form and checks a resolved config no second time."""
    config = TrainConfig.__new__(TrainConfig)
    config.__dict__.update({f.name: getattr(self, f.name) for f in fields(self)})  # no __post_init__: final values
    return config


#: A checked :class:`TrainConfig` with its defaults decided for one device (:meth:`TrainConfig.resolve`);
#: frozen, with the same fields. ``patch``, ``batch_size``, ``lr`` and (without epochs) ``time_limit`` are
#: always set, ``preset`` for preset-built U-Nets, ``instance_head`` for fresh models; ``device`` is the
#: device picked; ``encoder`` stays None when the preset chooses it.
ResolvedTrainConfig = make_dataclass(
    "ResolvedTrainConfig", [(f.name, f.type) for f in fields(TrainConfig)], frozen=True,
    namespace={"__module__": __name__, "__doc__": "A checked TrainConfig resolved for one device; frozen.",
               "resolve": lambda self, device=None: self, "check": _resolved_check})


# ---------------------------------------------------------------------- default policies (one copy each)
def default_patch(label_mode: str, device_type: str = "cpu") -> int:
    """Patch side for ``label_mode`` on a device of ``device_type`` (see DENSE_PATCH / SPARSE_PATCH)."""
    table = SPARSE_PATCH if get_mode(label_mode).painted == "strokes" else DENSE_PATCH
    return table["cuda" if device_type == "cuda" else "cpu"]


def default_batch(label_mode: str) -> int:
    """Patches per step for ``label_mode``: scribbles many small patches, dense labels fewer larger ones."""
    return SPARSE_BATCH if get_mode(label_mode).painted == "strokes" else DENSE_BATCH


def _family(name: str):
    """The model registry's record of family ``name`` (imported on use: the CLI's parser needs no torch).

    The help text reads the torch-free catalogue; a run asks the registry, which families can
    be plugged into.
    """
    from ..models import get_family

    return get_family(name)


def default_lr(family: str, *, fine_tuning: bool = False, arch: str | None = None) -> float:
    """AdamW learning rate: the family's own for ``arch`` (``lr`` / ``arch_lr`` / ``lr_finetune`` of its card)."""
    return _family(family).default_lr(fine_tune=fine_tuning, arch=arch)


def default_scale_jitter(label_mode: str) -> float:
    """Largest training zoom: :data:`INSTANCE_SCALE_JITTER` for dense instance labels, else 1 (off)."""
    return INSTANCE_SCALE_JITTER if get_mode(label_mode).whole_objects else 1.0


def default_self_training(label_mode: str, card) -> bool:
    """Self-training is on by default where it adds to the painted labels of a dense network: confident pixels
    to ``scribbles``, whole objects to ``objects``, 3D objects to partly painted z-stacks (``instances``).

    ``objects``: benchmarks/sparse_annotations.py paintings of the real DSB2018 image (10 / 25 % of the nuclei,
    random or first-picked, 0.5x / inverted / noisy variants; 13 runs of 400 steps): mean AP@0.5 0.738 ->
    0.782, worst run 0.471 -> 0.600, standard deviation 0.144 -> 0.079; 7 runs won, 5 lost (docs/benchmarks.md,
    "Self-training for painted objects"). ``scribbles``: strokes in 25 % of the DSB2018 nuclei, a true 120 s,
    seeds 0-2: mean AP@0.5 0.718 -> 0.755 (random nuclei) and 0.640 -> 0.779 (first-picked), Dice 0.895 ->
    0.911 and 0.809 -> 0.877, 5 of 6 runs won (docs/benchmarks.md, "The sparse modes at a true 120 s"); on the
    0.5x / inverted / 2x / noisy variants, seeds 0-2 in pairs, only 5 of 12 won (mean 0.728 -> 0.709: it lost
    on the 2x and inverted images, won on 0.5x and noisy), so over all 18 DSB runs 0.712 -> 0.728, kept on as
    a small gain on average (docs/benchmarks.md, "Scribbles self-training on the image variants").
    ``instances`` labels self-train only z-stacks painted on some of their planes (the "volumes" kind, see
    ``_selftrain``); elsewhere the setting changes nothing.
    """
    return bool(get_mode(label_mode).self_training) and _dense(card)


def default_instance_head(label_mode: str, family: str) -> str:
    """The instance head a fresh model gets: flows for dense ``instances`` labels (families that carry it), else
    boundary.

    Equal wall-clock time, fast preset (benchmarks/quality_vs_time.py, 2 seeds, busy 2-core machine):
    dense labels, unseen sample image, 60 s AP@0.5 / AP@0.75 0.95 / 0.85 with flows vs 0.87 / 0.68 with the
    boundary classes; DSB nuclei 0.87 / 0.78 vs 0.86 / 0.68. Partially painted objects lose with flows
    (0.56 / 0.18 vs 0.83 / 0.40): a few painted objects rarely touch, so the flows never learn to part
    touching nuclei, while the boundary class learns every painted outline.
    """
    return "flows" if get_mode(label_mode).whole_objects and "flows" in _family(family).heads else "boundary"


# ---------------------------------------------------------------------- rules between settings
def _check_patch(patch) -> None:
    """A patch above the largest is refused with why, before the declared range says only "from 32 to 8192"."""
    if isinstance(patch, (int, np.integer)) and not isinstance(patch, bool) and patch > MAX_PATCH:
        raise InputError(f"patch size {patch} is above the largest SegLab trains with ({MAX_PATCH}); "
                         "a patch larger than the image is padded, not more informative")


def _check_model(config: TrainConfig, device_type: str = "cpu") -> tuple[str, str]:
    """Family, architecture, encoder, preset and instance head: known names that fit together.

    Returns the family and architecture as the registry spells them ("UNET" -> "unet").
    """
    from ..models import PRESETS, ModelSpec, check_head, check_spec, check_stored_encoder

    if config.preset is not None and config.encoder is not None:
        raise InputError("give a preset or an encoder, not both (--preset or --encoder: a preset chooses the "
                         "encoder)")
    if isinstance(config.encoder, str) and config.encoder.startswith("tu-"):
        check_stored_encoder(config.encoder)  # a plain name of timm's own registry, as in a checkpoint
    spec = check_spec(ModelSpec(family=config.family, arch=config.arch or "Unet",
                                encoder=config.encoder or PRESETS[config.preset or "fast"].encoder), device_type)
    mode = get_mode(config.label_mode)
    if config.instance_head not in (None, "boundary"):
        if not mode.instances:
            raise InputError(f"the {config.instance_head!r} instance head needs 'instances' or 'objects' labels, "
                             f"not {config.label_mode!r}")
        check_head(config.instance_head, config.family)
    family = _family(spec.family)
    if family.label_modes is not None and config.label_mode not in family.label_modes:
        raise InputError(f"{family.label_modes_note}, not {config.label_mode!r}")
    check_used(config, family)  # an option the family would silently ignore
    if config.self_training and not mode.self_training:
        raise InputError(f"self-training (--self-training) adds confident predictions to painted labels: it "
                         f"needs scribbles, objects or instances labels, not {config.label_mode!r}")
    return spec.family, spec.arch


def _check_memory(config: TrainConfig, family_name: str) -> None:
    """Refuse a patch and batch that cannot fit in this machine's memory, and batch 1 where BatchNorm fails."""
    import torch

    patch = config.patch or min(SPARSE_PATCH.values())
    if config.patch is not None or config.batch_size is not None:
        batch = config.batch_size or default_batch(config.label_mode)
        need = batch * patch * patch * _family(family_name).train_bytes_per_pixel
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            total = None
        if torch.cuda.is_available() and config.device != "cpu":
            total = max(total or 0, torch.cuda.get_device_properties(0).total_memory)
        if total and need > total:
            raise InputError(f"--patch {patch} with --batch-size {batch} needs about {need / 2**30:.0f} GiB "
                             f"to train, more than this machine has ({total / 2**30:.0f} GiB); use a smaller "
                             "patch or batch")
    is_pooled = str(config.arch).lower() in POOLED_ARCHS
    if _family(family_name).presets and config.batch_size == 1 and (is_pooled or (patch // 32) ** 2 < 2):
        why = (f"{config.arch} pools the whole patch to one value per channel" if is_pooled
               else f"a {patch} px patch leaves one pixel at the deepest level")
        raise InputError(f"batch size 1 cannot train this model: {why}, and BatchNorm needs more than one "
                         "value per channel; use --batch-size 2 or more" + ("" if is_pooled else " or --patch 64"))
