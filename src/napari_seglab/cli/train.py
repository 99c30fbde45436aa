"""``seglab train``: options built from :class:`~napari_seglab.core.train.TrainConfig`'s declarations."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import InputError
from .common import (
    EXIT_OK,
    Status,
    add_reading,
    add_settings,
    check_input,
    check_output,
    check_tiff,
    drive,
)

#: TrainConfig fields offered as ``seglab train`` options, in the order ``--help`` lists them
OPTIONS = ("label_mode", "model_out", "family", "arch", "preset", "encoder", "instance_head", "scale", "scale_jitter",
           "epochs", "time_limit", "threads", "bf16", "steps_per_epoch", "patch", "batch_size", "lr", "class_weights",
           "focal_gamma", "val_fraction", "init", "pretrained", "allow_download", "device",
           "read_255_as_foreground", "self_training", "seed", "pixel_size", "anisotropy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..core.train import DIAMETER, TrainConfig

    p.add_argument("--image", action="append", required=True, metavar="IMG.tif",
                   help="training image (repeat for several): TIFF / OME-TIFF, or .nd2, .lif, .czi")
    add_reading(p, "every --image")
    p.add_argument("--labels", action="append", metavar="LAB.tif",
                   help="labels of the image given at the same position (repeat for several); with --boxes, "
                        "optional: the annotated area (nonzero = every object there is boxed; without it the "
                        "whole image is)")
    p.add_argument("--boxes", action="append", metavar="BOXES.csv",
                   help="box annotations of the image at the same position, to train a box detector: a CSV with "
                        "y0,x0,y1,x1[,class][,plane] (what predict --boxes writes); an empty CSV makes the image a "
                        "negative; sets --label-mode boxes")
    add_settings(p, TrainConfig, OPTIONS[:7], required=("model_out",))
    p.set_defaults(label_mode=None)  # required, except with --boxes (then "boxes"): see _check_annotations
    p.add_argument(DIAMETER.flag, type=float, default=None, metavar=DIAMETER.metavar,
                   help=f"{DIAMETER.help} (default: {DIAMETER.auto})")
    add_settings(p, TrainConfig, OPTIONS[7:])


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the options describe, resolved for the device asked for (checked once, in the core)."""
    from ..core.data import scale_for, target_diameter
    from ..core.device import pick_device
    from ..core.settings import SettingError
    from ..core.train import DIAMETER, TrainConfig

    values = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    if str(values.get("pretrained", "")).lower() == "none":
        del values["pretrained"]
    if args.diameter is not None:
        if args.scale is not None:
            raise InputError("give --diameter or --scale, not both")
        if not DIAMETER.accepts(args.diameter):
            raise SettingError(DIAMETER, args.diameter)
    config = TrainConfig(**values)
    if args.diameter is not None:  # scribbles aim at a larger size than whole objects (core.scale)
        config.scale = scale_for(args.diameter, target_diameter(config.label_mode))
    return config.resolve(pick_device(config.device))


def _check_annotations(args: argparse.Namespace) -> None:
    """--labels and --boxes: one per --image, and a label mode that fits them (``boxes`` with --boxes)."""
    if args.boxes:
        if args.label_mode is None:
            args.label_mode = "boxes"
        elif args.label_mode != "boxes":
            raise InputError(f"--boxes trains from boxes: use --label-mode boxes (or leave it out), not "
                             f"{args.label_mode!r}")
        if len(args.boxes) != len(args.image):
            raise InputError(f"{len(args.image)} --image but {len(args.boxes)} --boxes; give one boxes CSV per image "
                             "(an empty one for an image without objects)")
    elif args.label_mode is None:
        raise InputError("--label-mode is required (or give --boxes to train a box detector from boxes)")
    elif args.label_mode == "boxes":
        raise InputError("--label-mode boxes needs --boxes BOXES.csv (one per --image)")
    elif not args.labels:
        raise InputError("--labels is required: one labels file per --image (or --boxes for a box detector)")
    if args.labels and len(args.labels) != len(args.image):
        what = "area" if args.boxes else "labels"
        raise InputError(f"{len(args.image)} --image but {len(args.labels)} --labels; give one {what} file per image")


def cmd_train(args: argparse.Namespace) -> int:
    _check_annotations(args)
    args.labels = args.labels or []
    # paths first, before torch is imported: a wrong path is reported at once
    for flag, paths in (("--image", args.image), ("--labels", args.labels)):
        for path in paths:
            check_tiff(path, flag)
    for path in args.boxes or ():
        check_input(path, "--boxes", "a boxes CSV file", allow_empty=True)
    check_input(args.init, "--init", "a checkpoint file")
    inputs = [*args.image, *args.labels, *(args.boxes or ()), args.init]
    check_output(args.model_out, inputs, "--model-out")
    check_output(str(Path(args.model_out).with_suffix(".last.pt")), inputs, "--model-out")
    if args.pretrained is not None and args.pretrained.lower() not in ("none", "auto", "imagenet", "coco", "voc"):
        check_input(args.pretrained, "--pretrained", "a weights file")
    config = config_from_args(args)

    from ..core.io import read_image, read_labels
    from ..core.labels import read_boxes_csv
    from ..core.train import iter_train

    boxes = [read_boxes_csv(b) for b in args.boxes] if args.boxes else None
    images = [read_image(p, scene=args.scene, channel=args.channel, axes=args.axes) for p in args.image]
    labels = [read_labels(q, spatial_like=img) for q, img in zip(args.labels, images, strict=True)] \
        if args.labels else None
    status = Status()
    saved: list[str] = []
    try:
        result = drive(iter_train([i.data for i in images], labels, config, boxes=boxes,
                                 axes=[i.axes for i in images], pixel_sizes=[i.pixel_size for i in images]),
                       _progress(status, saved, f"/{config.epochs}" if config.epochs else "",
                                 "val AP@0.5" if boxes is not None or _box_family(config.family) else "val Dice"))
    except KeyboardInterrupt:
        status.line(_what_was_kept(args.model_out, saved))
        raise
    metrics = result.checkpoint.meta.get("metrics", {})
    if metrics.get("val_ap50") is not None:
        best = f"best val box AP@0.5 {metrics['val_ap50']:.3f} at epoch {metrics.get('epoch')}"
    elif metrics.get("val_dice") is not None:
        best = f"best val Dice {metrics['val_dice']:.3f} at epoch {metrics.get('epoch')}"
    else:
        best = f"best train loss {metrics.get('train_loss', float('nan')):.4f} at epoch {metrics.get('epoch')}"
    print(f"model saved to {result.path} ({best}; {result.steps} steps, {result.seconds:.0f} s)")
    return EXIT_OK


def _box_family(name: str) -> bool:
    from ..core.models import get_family

    return get_family(name).kind.boxes


def _progress(status: Status, saved: list[str], of_epochs: str, metric: str = "val Dice"):
    """The handler of training events: a status line per step, a line per epoch, messages.

    ``metric``: the name of the validation score the epochs report ("val Dice", or a box run's "val AP@0.5").
    """
    from ..core.events import CheckpointSaved, EpochEnd, Message, TrainStep

    def handle(event) -> None:
        if isinstance(event, TrainStep):
            total = f"/{event.total_steps}" if event.total_steps else ""
            status.transient(f"epoch {event.epoch}{of_epochs}  step {event.step}{total}  "
                             f"loss {event.loss:.4f}  {event.elapsed:.0f}s")
        elif isinstance(event, EpochEnd):
            dice = f"{event.val_dice:.3f}" if event.val_dice is not None else "n/a"
            status.line(f"epoch {event.epoch}{of_epochs}  loss {event.train_loss:.4f}  {metric} {dice}  "
                        f"{event.elapsed:.1f}s" + ("  (best)" if event.is_best else ""))
        elif isinstance(event, Message):
            status.message(event)
        elif isinstance(event, CheckpointSaved):
            saved.append(event.path)  # the epoch line already says "(best)"

    return handle


def _what_was_kept(model_out: str, saved: list[str]) -> str:
    """After Ctrl-C: say which model files are on disk now, and only those."""
    best, last = Path(model_out), Path(model_out).with_suffix(".last.pt")
    if saved and best.is_file():
        return f"interrupted: the best model so far is in {best}"
    if last.is_file():
        return f"interrupted: no best model was saved; the latest model is in {last}"
    if best.is_file():
        return f"interrupted: {best} is from an earlier run (nothing better was saved)"
    return "interrupted: no model was saved"
