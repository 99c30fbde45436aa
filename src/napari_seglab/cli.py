"""The ``seglab`` command line: train, predict, evaluate, export, batch and info.

A thin front over :mod:`napari_seglab.core`: parse arguments, drive the core
generators, print progress on stderr and results on stdout.

Exit codes: 0 success; 1 unexpected failure (``--debug`` shows the
traceback); 2 bad input (one line ``seglab: error: <reason>`` on stderr);
3 some files of a batch failed; 130 interrupted (Ctrl-C). Outputs are written
atomically, so an interrupted run never leaves a half-written file, and no
command writes over one of its input files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

from . import __version__
from .core.errors import InputError, SeglabError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_FILES_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
BOX_COLUMNS = ("y0", "x0", "y1", "x1", "class", "score", "plane")


class _Status:
    """Progress on stderr: permanent lines, plus one overwritten line when stderr is a terminal."""

    def __init__(self) -> None:
        self.stream = sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = 0

    def transient(self, text: str, *, fallback: bool = False) -> None:
        """Overwrite the status line (TTY); elsewhere print it only when ``fallback``."""
        if self.tty:
            text = text[:150]
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)
        elif fallback:
            self.line(text)

    def line(self, text: str) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        print(text, file=self.stream, flush=True)

    def message(self, event) -> None:
        self.line(("warning: " if event.level == "warning" else "") + event.text)


def _drive(gen, handle):
    """Run a core generator, passing each event to ``handle``; returns its result.

    The generator is closed on the way out (Ctrl-C included), so its cleanup runs.
    """
    try:
        while True:
            handle(next(gen))
    except StopIteration as fin:
        return fin.value
    finally:
        gen.close()


def _check_output(path: str, inputs, flag: str) -> None:
    """Refuse an output that is an input or cannot be written, before any work (nothing is written)."""
    from .core.io import check_output_path, ensure_not_input

    check_output_path(path, flag)
    ensure_not_input(path, inputs)


def _check_input(path: str | None, flag: str, what: str = "a TIFF file") -> None:
    """Refuse a missing, unreadable or special (FIFO, device) input file before heavy imports."""
    from .core.io import check_regular_file

    if path is not None:
        try:
            check_regular_file(path, what)
        except InputError as exc:
            raise InputError(f"{flag} {exc}") from None


def _check_tiff(path: str, flag: str) -> None:
    """An input TIFF's header: valid, and a declared size that fits in memory (nothing decoded)."""
    from .core.io import probe_tiff

    _check_input(path, flag)
    try:
        probe_tiff(path)
    except InputError as exc:
        raise InputError(f"{flag} {exc}") from None


def _check_encoder(name: str) -> None:
    """A timm encoder (``tu-NAME``) must be a plain name of timm's own registry, as in a checkpoint."""
    if isinstance(name, str) and name.startswith("tu-"):
        from .core.models import check_stored_encoder

        check_stored_encoder(name)


def _check_range(value, flag: str, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    """Refuse NaN, Inf and values outside [low, high] (open ends where asked) for an option."""
    inside = math.isfinite(value) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not inside:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"{flag} must lie in {lo}{low:g}, {high:g}{hi}; got {value}")


def _check_tile(tile: int) -> None:
    if tile != 0 and not 32 <= tile <= 16384:
        raise InputError(f"--tile must be 0 (automatic) or 32..16384 pixels; got {tile}")


def _plain_json(value):
    """Replace NaN/Inf (not valid JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    if len(args.labels) != len(args.image):
        raise InputError(f"{len(args.image)} --image but {len(args.labels)} --labels; give one labels file per image")
    # paths first, before torch is imported: a wrong path is reported at once
    for flag, paths in (("--image", args.image), ("--labels", args.labels)):
        for path in paths:
            _check_tiff(path, flag)
    _check_input(args.init, "--init", "a checkpoint file")
    inputs = [*args.image, *args.labels, args.init]
    _check_output(args.model_out, inputs, "--model-out")
    _check_output(str(Path(args.model_out).with_suffix(".last.pt")), inputs, "--model-out")
    if args.pretrained.lower() not in ("none", "auto", "imagenet", "coco", "voc"):
        _check_input(args.pretrained, "--pretrained", "a weights file")

    from .core.data import scale_for
    from .core.events import CheckpointSaved, EpochEnd, Message, TrainStep
    from .core.io import read_image, read_labels
    from .core.labels import check_mode
    from .core.models import ModelSpec, check_spec
    from .core.train import DEFAULT_TIME_LIMIT, TrainConfig, train

    check_mode(args.label_mode)
    if args.encoder is not None:
        _check_encoder(args.encoder)
    if args.preset is not None and args.encoder is not None:
        raise InputError("give --preset or --encoder, not both (a preset chooses the encoder)")
    spec = check_spec(ModelSpec(family=args.family, arch=args.arch or "Unet", encoder=args.encoder or "resnet18"))
    if args.diameter is not None and args.scale is not None:
        raise InputError("give --diameter or --scale, not both")
    scale = args.scale
    if scale is not None:
        _check_range(scale, "--scale", 0.25, 4)
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise InputError(f"--threads must be from 1 to 1024; got {args.threads}")
    if args.diameter is not None:
        _check_range(args.diameter, "--diameter", 1, 10000)
        scale = scale_for(args.diameter)
    epochs = args.epochs
    time_limit = args.time_limit if args.time_limit is not None or epochs is not None else DEFAULT_TIME_LIMIT
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    config = TrainConfig(
        label_mode=args.label_mode, family=spec.family, arch=spec.arch,
        encoder=spec.encoder if args.encoder is not None else None, preset=args.preset, scale=scale,
        bf16=args.bf16, threads=args.threads,
        pretrained=pretrained, epochs=epochs, time_limit=time_limit, steps_per_epoch=args.steps_per_epoch,
        patch=args.patch, batch_size=args.batch_size, lr=args.lr, class_weights=args.class_weights,
        focal_gamma=args.focal_gamma, val_fraction=args.val_fraction, device=args.device, seed=args.seed,
        model_out=args.model_out, init=args.init, read_255_as_foreground=args.mask_255,
        self_training=args.self_training, instance_head=args.instance_head,
        allow_download=args.allow_download).check()
    if config.class_weights not in ("none", "balanced"):
        raise InputError(f"unknown --class-weights {config.class_weights!r}; choose none or balanced")

    images = [read_image(p) for p in args.image]
    labels = [read_labels(q, spatial_like=img) for q, img in zip(args.labels, images, strict=True)]
    status = _Status()
    of_epochs = f"/{epochs}" if epochs else ""
    saved: list[str] = []

    def handle(event) -> None:
        if isinstance(event, TrainStep):
            total = f"/{event.total_steps}" if event.total_steps else ""
            status.transient(f"epoch {event.epoch}{of_epochs}  step {event.step}{total}  "
                             f"loss {event.loss:.4f}  {event.elapsed:.0f}s")
        elif isinstance(event, EpochEnd):
            dice = f"{event.val_dice:.3f}" if event.val_dice is not None else "n/a"
            status.line(f"epoch {event.epoch}{of_epochs}  loss {event.train_loss:.4f}  val Dice {dice}  "
                        f"{event.elapsed:.1f}s" + ("  (best)" if event.is_best else ""))
        elif isinstance(event, Message):
            status.message(event)
        elif isinstance(event, CheckpointSaved):
            saved.append(event.path)  # the epoch line already says "(best)"

    try:
        result = _drive(train([i.data for i in images], labels, config, axes=[i.axes for i in images]), handle)
    except KeyboardInterrupt:
        status.line(_what_was_kept(args.model_out, saved))
        raise
    metrics = result.checkpoint.meta.get("metrics", {})
    if metrics.get("val_dice") is not None:
        best = f"best val Dice {metrics['val_dice']:.3f} at epoch {metrics.get('epoch')}"
    else:
        best = f"best train loss {metrics.get('train_loss', float('nan')):.4f} at epoch {metrics.get('epoch')}"
    print(f"model saved to {result.path} ({best}; {result.steps} steps, {result.seconds:.0f} s)")
    return EXIT_OK


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


# ----------------------------------------------------------------------------- predict


def _boxes_from_labels(labels, axes: str, kind: str) -> list[dict]:
    """Box rows (y0, x0, y1, x1, class, score=1, plane) of every object, plane by plane.

    Instance labels: one box per id (class 1). Semantic labels: one box per
    connected region of each class.
    """
    import numpy as np
    from scipy import ndimage as ndi

    from .core.instances import boxes_from_labels
    from .core.predict import plane_indices

    rows = []
    for index in plane_indices(labels.shape, axes):
        plane = labels[index] if index else labels
        tag = ",".join(map(str, index))
        if kind == "instances":
            groups = [(1, plane)]
        else:
            groups = [(int(c), ndi.label(plane == c)[0]) for c in np.unique(plane) if c > 0]
        for cls, objects in groups:
            boxes, _ids = boxes_from_labels(objects)
            rows += [{"y0": int(b[0]), "x0": int(b[1]), "y1": int(b[2]), "x1": int(b[3]), "class": cls,
                      "score": 1.0, "plane": tag} for b in boxes]
    return rows


def cmd_predict(args: argparse.Namespace) -> int:
    _check_tiff(args.input, "--input")
    if not args.model.startswith("stock:"):
        _check_input(args.model, "--model", "a checkpoint file")
    protect = [args.input, args.model]
    outputs = [(f, p) for f, p in (("--output", args.output), ("--probabilities", args.probabilities),
                                   ("--boxes", args.boxes)) if p]
    paths = [os.path.abspath(p) for _, p in outputs]
    if len(set(paths)) != len(paths):
        raise InputError("--output, --probabilities and --boxes must name different files")
    for flag, path in outputs:  # every output, before the first write
        _check_output(path, protect, flag)
    if args.boxes_from_labels and not args.boxes:
        raise InputError("--boxes-from-labels needs --boxes BOXES.csv to write them to")
    _check_range(args.overlap, "--overlap", 0, 1, high_open=True)
    _check_range(args.score_threshold, "--score-threshold", 0, 1)
    _check_tile(args.tile)

    import numpy as np

    from .core.events import Message, TileDone
    from .core.io import read_image, restore_singletons, write_csv, write_tiff
    from .core.predict import load_model, predict_image

    if args.model.startswith("stock:"):
        from .core.stock import load_stock

        probe = read_image(args.input)
        model = load_stock(args.model.removeprefix("stock:"), args.device,
                           in_channels=probe.data.shape[-1] if "C" in probe.axes else 1)
    else:
        model = load_model(args.model, args.device)
    if args.probabilities and not model.spec.semantic:
        raise InputError("--probabilities: a Mask R-CNN model gives objects, not per-pixel probabilities")
    image = read_image(args.input)
    status = _Status()

    def handle(event) -> None:
        if isinstance(event, TileDone):
            where = f"plane {event.plane + 1}/{event.planes}, " if event.planes > 1 else ""
            # off a terminal: every tile of a single image, else one line per plane
            status.transient(f"{where}tile {event.tile}/{event.tiles}",
                             fallback=event.planes == 1 or event.tile == event.tiles)
        elif isinstance(event, Message):
            status.message(event)

    pred = _drive(predict_image(model, image.data, image.axes, tile=args.tile or None, overlap=args.overlap,
                                probabilities=bool(args.probabilities), split_instances=args.split_instances,
                                score_threshold=args.score_threshold), handle)
    status.line(f"predicted {args.input} ({pred.kind})")
    axes = image.axes.replace("C", "")
    labels = pred.labels
    dtype = np.uint16 if int(labels.max(initial=0)) < 65536 else np.uint32
    # the file's own axes (without C): a (1, Y, X) stack gives (1, Y, X) labels
    written, out_axes = restore_singletons(labels.astype(dtype), axes, image.file_axes)
    write_tiff(args.output, written, axes=out_axes, protect=protect)
    print(f"labels written to {args.output} (shape {written.shape}, {np.dtype(dtype).name})")
    if args.probabilities:
        probs = pred.probabilities.astype(np.float32).reshape(pred.probabilities.shape[:1] + written.shape)
        write_tiff(args.probabilities, probs, axes="C" + out_axes, protect=protect)
        print(f"probabilities written to {args.probabilities} (shape {probs.shape}, float32)")
    if args.boxes:
        from_labels = args.boxes_from_labels or model.spec.semantic
        rows = _boxes_from_labels(labels, axes, pred.kind) if from_labels else pred.boxes
        write_csv(args.boxes, rows, columns=BOX_COLUMNS, protect=protect)
        print(f"{len(rows)} boxes written to {args.boxes}" + (" (from the labels)" if from_labels else ""))
    return EXIT_OK


# ----------------------------------------------------------------------------- evaluate / export / info


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_tiff(args.pred, "--pred")
    _check_tiff(args.truth, "--truth")
    from .core.io import read_labels
    from .core.metrics import match_instances

    pred, truth = read_labels(args.pred), read_labels(args.truth)
    if pred.shape != truth.shape:
        raise InputError(f"--pred {args.pred} has shape {pred.shape} but --truth {args.truth} has shape "
                         f"{truth.shape}; they must match")
    print(json.dumps(_plain_json(match_instances(pred, truth)), indent=2))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    _check_input(args.model, "--model", "a checkpoint file")
    _check_output(args.out, [args.model], "--out")
    from .core.export import export_model

    path = export_model(args.model, args.format, args.out, protect=(args.model,))
    print(f"exported {args.format} model to {path}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    _check_input(args.checkpoint, "", "a checkpoint file")
    from .core.checkpoint import describe_checkpoint, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    doc = {"path": str(args.checkpoint), "description": describe_checkpoint(ckpt), "meta": ckpt.meta}
    print(json.dumps(_plain_json(doc), indent=2, default=str))
    return EXIT_OK


# ----------------------------------------------------------------------------- batch


def cmd_batch(args: argparse.Namespace) -> int:
    from .core.events import FileDone, Message
    from .core.io import check_pattern

    folder = Path(args.input_dir)
    if not folder.is_dir():
        raise InputError(f"--input-dir {folder}: " + ("is not a folder" if folder.exists() else "no such folder"))
    _check_input(args.model, "--model", "a checkpoint file")
    _check_output_folder(args.output_dir)
    check_pattern(args.pattern)
    if args.workers is not None and args.workers < 0:
        raise InputError("--workers must be 0 (in this process) or more")
    _check_range(args.overlap, "--overlap", 0, 1, high_open=True)
    _check_tile(args.tile)
    from .core.batch import run_batch

    status = _Status()
    done = 0

    def handle(event) -> None:
        nonlocal done
        if isinstance(event, FileDone):
            done += 1
            line = f"[{done}/{event.total}] {event.status}: "
            if event.error:  # the error names the file already, or should
                line += event.error if str(event.path) in event.error else f"{event.path}: {event.error}"
            else:
                line += str(event.path) + (f" ({event.seconds:.1f} s)" if event.status == "ok" else "")
            status.line(line)
        elif isinstance(event, Message):
            status.message(event)

    summary = _drive(run_batch(args.model, args.input_dir, args.output_dir, pattern=args.pattern,
                               recursive=args.recursive, probabilities=args.probabilities,
                               measurements=not args.no_measurements, skip_existing=args.skip_existing,
                               workers=args.workers, scheduler=args.scheduler, device=args.device,
                               tile=args.tile or None, overlap=args.overlap), handle)
    print(f"{summary.total} files: ok {summary.ok}, failed {summary.failed}, skipped {summary.skipped}; "
          f"manifest: {summary.manifest}")
    if summary.failed:
        status.line(f"seglab: {summary.failed} of {summary.total} files failed (see {summary.manifest})")
        return EXIT_FILES_FAILED
    return EXIT_OK


def _check_output_folder(folder: str) -> None:
    """The output folder exists and takes files, or its nearest existing parent does (nothing is created)."""
    from .core.io import check_output_path

    path = Path(folder).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"--output-dir {folder}: exists and is not a folder")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"--output-dir {folder}: {probe} is not a folder")
    try:
        check_output_path(probe / "manifest.csv")
    except InputError:
        raise InputError(f"--output-dir {folder}: folder {probe} does not accept new files "
                         "(read-only or no permission)") from None


# ----------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.HelpFormatter):
    """Help text with "(default: ...)" where a default is worth telling."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not quiet and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _parser_with_common(sub, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=description, formatter_class=_HelpFormatter)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an unexpected error")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``seglab`` command (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog="seglab", description="Train, apply and evaluate microscopy segmentation models (napari-seglab).",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad input, 3 some batch files failed, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _parser_with_common(sub, "train", "train a model on images and painted labels",
                            "Train a segmentation model on TIFF images and label TIFFs; saves the best model "
                            "(and <stem>.last.pt with the optimizer state, for --init).")
    p.add_argument("--image", action="append", required=True, metavar="IMG.tif",
                   help="training image (repeat for several)")
    p.add_argument("--labels", action="append", required=True, metavar="LAB.tif",
                   help="labels of the image given at the same position (repeat for several)")
    p.add_argument("--label-mode", required=True, metavar="{scribbles,instances,objects,classes}",
                   help="scribbles: 0 unlabelled, 1 background, 2.. classes; instances: one id per object; "
                        "objects: 0 unlabelled, 1 background, 2.. one id per whole painted object; "
                        "classes: dense class ids")
    p.add_argument("--model-out", required=True, metavar="M.pt", help="where to save the best model")
    p.add_argument("--family", default="unet", metavar="{unet,fcn,maskrcnn}", help="model family")
    p.add_argument("--arch", default=None, help="architecture (unet: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, "
                   "MAnet...; fcn: fcn_resnet50/101; maskrcnn: maskrcnn_resnet50_fpn[_v2]); default per family")
    p.add_argument("--preset", default=None, choices=("fast", "accurate"),
                   help="U-Net preset (default: fast on a CPU, accurate on a GPU). fast: 3-level ResNet-18 U-Net, "
                        "0.08 s per step on a quiet 2-core CPU (0.15-0.3 s when it is busy), useful within a "
                        "minute; accurate: 5-level ResNet-34 U-Net, 0.22 s per step there (0.5-1 s busy)")
    p.add_argument("--encoder", default=None,
                   help="encoder of unet-family models (any smp encoder), instead of the preset's")
    p.add_argument("--instance-head", default=None, choices=("boundary", "flows", "distance"),
                   help="how unet/fcn models separate objects (instances and objects modes): flows = foreground + "
                        "flows towards each object's centre (cellpose-like; the default for instances); boundary = "
                        "background / interior / boundary classes (the default for objects); distance = foreground "
                        "+ distance to the object's boundary")
    p.add_argument("--diameter", type=float, default=None, metavar="PX",
                   help="typical object diameter in pixels; images are resampled so objects reach the size the "
                        "network resolves best (default: measured on the painted objects, else no resampling)")
    p.add_argument("--scale", type=float, default=None, metavar="F",
                   help="resampling factor applied before the network (0.25-4), instead of --diameter")
    p.add_argument("--epochs", type=int, metavar="N", default=None,
                   help="epochs of --steps-per-epoch steps (default: train for --time-limit)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SEC",
                   help="training time in seconds, set-up and saving included (default 120 when --epochs is "
                        "not given)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: measured; fewer threads win when other programs share the cores)")
    p.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                   help="CPU training in bfloat16 (auto: when the CPU has it natively, it is faster and it agrees "
                        "with float32)")
    p.add_argument("--steps-per-epoch", type=int, metavar="N", default=25, help="optimizer steps per epoch")
    p.add_argument("--patch", type=int, metavar="PX", default=None,
                   help="training patch side in pixels, a multiple of 32 (default: dense labels 128 on the CPU, "
                        "256 on a GPU; scribbles 64 on the CPU, 128 on a GPU)")
    p.add_argument("--batch-size", type=int, metavar="N", default=None,
                   help="patches per step (default: 8 for dense labels, 32 for scribbles)")
    p.add_argument("--lr", type=float, metavar="LR", default=None,
                   help="AdamW learning rate (default: 3e-3 from scratch, 1e-3 fine-tuning, 1e-4 for Mask R-CNN)")
    p.add_argument("--class-weights", default="none", metavar="{none,balanced}",
                   help="balanced: weight rare classes up")
    p.add_argument("--focal-gamma", type=float, metavar="G", default=0.0, help="focal loss gamma (0 = plain cross-entropy)")
    p.add_argument("--val-fraction", type=float, metavar="F", default=0.15,
                   help="fraction of strokes or tiles held out for validation (scribbles: only when "
                        "every class has 10 strokes or more; 0 = no hold-out)")
    p.add_argument("--init", default=None, metavar="M.pt", help="start from this checkpoint (fine-tune/continue)")
    p.add_argument("--pretrained", default="none", metavar="none|auto|PATH",
                   help="encoder weights: none (random), auto (stock weights when cached), or a weights file")
    p.add_argument("--allow-download", action="store_true", help="let --pretrained auto download weights")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,mps}", help="where to train")
    p.add_argument("--mask-255", action="store_true", help="read 0/255 masks as background/foreground")
    p.add_argument("--self-training", action="store_true",
                   help="scribbles: add the model's confident predictions to the painted pixels during training")
    p.add_argument("--seed", type=int, metavar="N", default=0, help="random seed")
    p.set_defaults(func=cmd_train)

    p = _parser_with_common(sub, "predict", "segment one image with a trained model",
                            "Predict labels (and optionally probabilities and boxes) for one TIFF image.")
    p.add_argument("--model", required=True, metavar="M.pt",
                   help="trained checkpoint, or stock:NAME for a stock torchvision model in the torch cache "
                        "(maskrcnn_coco, maskrcnn_v2_coco, fcn_resnet50_voc, fcn_resnet101_voc)")
    p.add_argument("--input", required=True, metavar="IMG.tif", help="image to segment")
    p.add_argument("--output", required=True, metavar="LABELS.tif",
                   help="labels TIFF (uint16, or uint32 above 65535 objects; the image's axes without C)")
    p.add_argument("--probabilities", default=None, metavar="P.tif", help="also write class probabilities "
                   "(float32, classes first)")
    p.add_argument("--boxes", default=None, metavar="BOXES.csv",
                   help="also write bounding boxes: y0,x0,y1,x1,class,score,plane")
    p.add_argument("--boxes-from-labels", action="store_true",
                   help="derive the boxes from the predicted labels (score 1.0); always so for unet/fcn")
    p.add_argument("--tile", type=int, metavar="PX", default=0, help="tile side in pixels (0 = automatic)")
    p.add_argument("--overlap", type=float, metavar="F", default=0.25, help="tile overlap fraction")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,mps}", help="where to predict")
    p.add_argument("--split-instances", action="store_true",
                   help="split the foreground of a semantic model into objects (watershed)")
    p.add_argument("--score-threshold", type=float, metavar="S", default=0.5, help="Mask R-CNN detection score threshold")
    p.set_defaults(func=cmd_predict)

    p = _parser_with_common(sub, "evaluate", "compare predicted labels with ground truth",
                            "Print Dice, IoU and instance scores (AP, F1, precision, recall at IoU 0.5/0.75/0.9) "
                            "as JSON.")
    p.add_argument("--pred", required=True, metavar="P.tif", help="predicted labels")
    p.add_argument("--truth", required=True, metavar="T.tif", help="ground-truth labels of the same shape")
    p.set_defaults(func=cmd_evaluate)

    p = _parser_with_common(sub, "export", "export a model to TorchScript, ONNX or bioimage.io",
                            "Export a checkpoint: input (B, C, Y, X) float32 percentile-normalised, output "
                            "(B, K, Y, X) class probabilities.")
    p.add_argument("--model", required=True, metavar="M.pt", help="trained checkpoint")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "bioimageio"), help="export format")
    p.add_argument("--out", required=True, metavar="PATH", help="output file (.pt, .onnx or .zip)")
    p.set_defaults(func=cmd_export)

    p = _parser_with_common(sub, "batch", "segment every image of a folder",
                            "Predict every matching TIFF of a folder, locally or on a Dask cluster; writes "
                            "<stem>_labels.tif (+ probabilities, objects CSV), manifest.csv and summary.csv.")
    p.add_argument("--model", required=True, metavar="M.pt", help="trained checkpoint")
    p.add_argument("--input-dir", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--output-dir", required=True, metavar="OUT", help="folder for the results")
    p.add_argument("--pattern", default="*.tif", help="file name pattern")
    p.add_argument("--recursive", action="store_true", help="also look in sub-folders (mirrored in OUT)")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_probabilities.tif")
    p.add_argument("--no-measurements", action="store_true", help="skip the per-object measurements CSV")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N", help="local worker processes (0 = in this process, no Dask; default: automatic)")
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="address of a running Dask scheduler whose workers see the same paths")
    p.add_argument("--skip-existing", action="store_true", help="skip files whose outputs already exist")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,mps}", help="where to predict")
    p.add_argument("--tile", type=int, metavar="PX", default=0, help="tile side in pixels (0 = automatic)")
    p.add_argument("--overlap", type=float, metavar="F", default=0.25, help="tile overlap fraction")
    p.set_defaults(func=cmd_batch)

    p = _parser_with_common(sub, "info", "describe a checkpoint", "Print a checkpoint's description and "
                            "metadata as JSON.")
    p.add_argument("checkpoint", metavar="M.pt", help="checkpoint file")
    p.set_defaults(func=cmd_info)
    return parser


def _error(message: str) -> None:
    print(f"seglab: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the ``seglab`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid text must never end a run
        if hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # a closed or odd stream
                stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        _error("choose a command: train, predict, evaluate, export, batch or info")
        return EXIT_USAGE
    started = time.monotonic()
    try:
        return int(args.func(args) or EXIT_OK)
    except InputError as exc:
        _error(exc)
        return EXIT_USAGE
    except OSError as exc:  # a file or folder the user named: missing, no permission, full, read-only...
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        fresh_line = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C
        print(f"{fresh_line}seglab: interrupted after {time.monotonic() - started:.0f} s; no partial files were "
              "written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SeglabError as exc:
        _error(exc)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a command-line tool
        from .core.device import is_oom

        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (run with --debug to see the traceback)"
        if is_oom(exc):  # sizes the user chose (image, patch, batch, tile) do not fit: exit 2, not a bug
            _error("out of memory; try a smaller --batch-size, --patch or --tile, or --device cpu" + hint)
            return EXIT_USAGE
        else:
            first = (str(exc).splitlines() or [""])[0][:300]
            _error(f"unexpected {type(exc).__name__}: {first}{hint}")
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
