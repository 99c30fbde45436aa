"""``seglab predict``: one image through a trained checkpoint or a stock model."""

from __future__ import annotations

import argparse
import os

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
    leave_out_triton,
    options_from_args,
)

#: PredictOptions fields offered as ``seglab predict`` options
OPTIONS = ("device", "runtime", "tile", "overlap", "split_instances", "tta", "score_threshold", "pixel_size", "volume",
           "anisotropy", "volume_method")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..core.models import CARDS

    def stock(boxes: bool) -> str:
        return ", ".join(name for card in CARDS if card.kind.boxes == boxes for name in card.stock)

    box_families = ", ".join(card.name for card in CARDS if card.kind.boxes)
    p.add_argument("--model", required=True, metavar="M.pt",
                   help="trained checkpoint, a bioimage.io model package (.zip or rdf.yaml), or stock:NAME for "
                        "a stock torchvision model in the torch cache "
                        f"({stock(False)}; box detectors: {stock(True)})")
    p.add_argument("--input", required=True, metavar="IMG.tif",
                   help="image to segment: TIFF / OME-TIFF, a microscope file (.nd2, .lif, .czi), or an OME-Zarr "
                        "(read block by block)")
    add_reading(p)
    p.add_argument("--output", default=None, metavar="LABELS.tif",
                   help="labels TIFF (uint16, or uint32 above 65535 objects; the image's axes without C), or an "
                        "OME-Zarr (a name ending in .zarr; written block by block); "
                        f"required except for a box detector ({box_families}), which writes --boxes")
    p.add_argument("--probabilities", default=None, metavar="P.tif", help="also write class probabilities "
                   "(float32, classes first)")
    p.add_argument("--boxes", default=None, metavar="BOXES.csv",
                   help="also write bounding boxes: y0,x0,y1,x1,class,score,plane (a box detector's "
                        "detections at or above --score-threshold)")
    p.add_argument("--boxes-from-labels", action="store_true",
                   help="derive the boxes from the predicted labels (score 1.0); always so for unet/fcn")
    from ..core.predict import PredictOptions

    add_settings(p, PredictOptions, OPTIONS)
    from . import predict_blocks

    predict_blocks.add_arguments(p)


def _check_args(args: argparse.Namespace) -> list[str]:
    """Every path and option, before anything is read or written; returns the files never to write over."""
    from . import predict_blocks

    protect = [args.input, args.model]
    if predict_blocks.is_zarr(args.input) or predict_blocks.is_zarr(args.output) or \
            predict_blocks.is_zarr(args.probabilities):
        predict_blocks.check_args(args, protect)
        if not predict_blocks.is_zarr(args.input):
            check_input(args.input, "--input")
        outputs = [p for p in (args.output, args.probabilities, args.boxes) if p]
        if len({os.path.abspath(p) for p in outputs}) != len(outputs):
            raise InputError("--output, --probabilities and --boxes must name different files")
        for flag, path in (("--output", args.output), ("--probabilities", args.probabilities)):
            if path and not predict_blocks.is_zarr(path):
                check_output(path, protect, flag)
        if not args.model.startswith("stock:"):
            check_input(args.model, "--model", "a checkpoint file")
        from ..core.predict import PredictOptions

        options_from_args(args, PredictOptions, OPTIONS)
        return protect
    predict_blocks.check_args(args, protect)
    check_tiff(args.input, "--input")
    if not args.model.startswith("stock:"):
        check_input(args.model, "--model", "a checkpoint file")
    outputs = [(f, p) for f, p in (("--output", args.output), ("--probabilities", args.probabilities),
                                   ("--boxes", args.boxes)) if p]
    paths = [os.path.abspath(p) for _, p in outputs]
    if len(set(paths)) != len(paths):
        raise InputError("--output, --probabilities and --boxes must name different files")
    for flag, path in outputs:  # every output, before the first write
        check_output(path, protect, flag)
    if args.boxes_from_labels and not args.boxes:
        raise InputError("--boxes-from-labels needs --boxes BOXES.csv to write them to")
    from ..core.predict import PredictOptions

    options_from_args(args, PredictOptions, OPTIONS)
    return protect


def _load(args: argparse.Namespace):
    """(model, image): the input TIFF is read once, before a stock model that needs its channel count."""
    from ..core.io import read_image
    from ..core.predict import load_model

    if args.model.startswith("stock:"):
        from ..core.predict import load_stock

        if args.runtime == "onnx":
            raise InputError(f"--runtime {args.runtime}: stock models run in torch")

        image = read_image(args.input, scene=args.scene, channel=args.channel, axes=args.axes)
        model = load_stock(args.model.removeprefix("stock:"), args.device,
                           in_channels=image.data.shape[-1] if "C" in image.axes else 1)
    else:
        model = load_model(args.model, args.device, runtime=args.runtime)
        image = None
    _check_kind(args, model.spec.family_entry)
    if image is None:
        image = read_image(args.input, scene=args.scene, channel=args.channel, axes=args.axes)
    return model, image


def _load_model(args: argparse.Namespace):
    """The model alone, for a block-wise run (the image stays on disk; stock models need its channels first)."""
    from ..core.predict import load_model

    if args.model.startswith("stock:"):
        raise InputError("stock models predict whole images; give a trained checkpoint for block-wise prediction")
    model = load_model(args.model, args.device, runtime=args.runtime)
    _check_kind(args, model.spec.family_entry)
    return model


def _check_kind(args: argparse.Namespace, family) -> None:
    """The outputs asked for against what the model gives (objects, boxes or per-pixel classes)."""
    if args.probabilities and not family.semantic:
        raise InputError(f"--probabilities: a {family.label} model gives {family.kind}, not per-pixel probabilities")
    if family.kind.boxes:
        if not args.boxes:
            raise InputError(f"a {family.label} model gives boxes: write them with --boxes BOXES.csv")
        if args.output or args.boxes_from_labels:
            flag = "--output" if args.output else "--boxes-from-labels"
            raise InputError(f"{flag}: a {family.label} model gives boxes, not labels; use --boxes alone")
    elif not args.output:
        raise InputError("--output LABELS.tif is required (only a box detector writes --boxes alone)")


def cmd_predict(args: argparse.Namespace) -> int:
    leave_out_triton(args.device)  # before torchvision: a process predicting on the CPU has no use for it
    protect = _check_args(args)

    import numpy as np

    from ..core.data import pixel_size_or
    from ..core.events import Message, TileDone
    from ..core.io import restore_singletons, write_csv, write_tiff
    from ..core.labels import BOX_COLUMNS, compact_labels, label_box_rows
    from ..core.predict import describe_axes, iter_predict
    from . import predict_blocks

    explicit = bool(args.block and not args.volume) or any(predict_blocks.is_zarr(p) for p in (args.input, args.output,
                                                                            args.probabilities))
    # larger than memory, or OME-Zarr: block by block where the model allows
    if predict_blocks.wanted(args) and (explicit or not args.model.startswith("stock:")):
        model = _load_model(args)
        why = predict_blocks.blockable(model, args)
        if why is None:
            return predict_blocks.run(args, model, protect)
        if explicit:
            raise InputError(why)
    model, image = _load(args)
    status = Status()

    def handle(event) -> None:
        if isinstance(event, TileDone):
            where = f"plane {event.plane + 1}/{event.planes}, " if event.planes > 1 else ""
            # off a terminal: every tile of a single image, else one line per plane
            status.transient(f"{where}tile {event.tile}/{event.tiles}",
                             fallback=event.planes == 1 or event.tile == event.tiles)
        elif isinstance(event, Message):
            status.message(event)

    pred = drive(iter_predict(model, image.data, image.axes, tile=args.tile or None, overlap=args.overlap,
                              probabilities=bool(args.probabilities), split_instances=args.split_instances,
                              score_threshold=args.score_threshold, tta=args.tta, volume=args.volume,
                              anisotropy=args.anisotropy, pixel_size=pixel_size_or(image.pixel_size, args.pixel_size),
                              volume_method=args.volume_method,
                              **({"block": args.block, "halo": args.halo} if args.volume else {})), handle)
    status.line(f"predicted {args.input} ({pred.kind})")
    if "Z" in image.axes or "T" in image.axes:
        aniso = f", anisotropy {pred.anisotropy:g}" if pred.anisotropy else ""
        status.line(f"axes {image.axes}: {describe_axes(image.axes, args.volume)}{aniso}")
    axes = image.axes.replace("C", "")
    if pred.kind.boxes:
        write_csv(args.boxes, pred.boxes, columns=BOX_COLUMNS, protect=protect)
        print(f"{len(pred.boxes)} boxes at or above score {args.score_threshold:g} written to {args.boxes}")
        return EXIT_OK
    # the file's own axes (without C): a (1, Y, X) stack gives (1, Y, X) labels
    written, out_axes = restore_singletons(compact_labels(pred.labels), axes, image.file_axes)
    write_tiff(args.output, written, axes=out_axes, protect=protect)
    print(f"labels written to {args.output} (shape {written.shape}, {written.dtype.name})")
    if args.probabilities:
        probs = pred.probabilities.astype(np.float32).reshape(pred.probabilities.shape[:1] + written.shape)
        write_tiff(args.probabilities, probs, axes="C" + out_axes, protect=protect)
        print(f"probabilities written to {args.probabilities} (shape {probs.shape}, float32)")
    if args.boxes:
        from_labels = args.boxes_from_labels or model.spec.semantic
        rows = label_box_rows(pred.labels, axes, pred.kind) if from_labels else pred.boxes
        write_csv(args.boxes, rows, columns=BOX_COLUMNS, protect=protect)
        print(f"{len(rows)} boxes written to {args.boxes}" + (" (from the labels)" if from_labels else ""))
    return EXIT_OK
