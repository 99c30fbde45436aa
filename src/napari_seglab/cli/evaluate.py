"""``seglab evaluate``, ``seglab export`` and ``seglab info``: the short commands."""

from __future__ import annotations

import argparse
import json

from ..core.errors import InputError
from .common import EXIT_OK, check_input, check_output, check_tiff, plain_json


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, metavar="P.tif", help="predicted labels")
    p.add_argument("--truth", required=True, metavar="T.tif", help="ground-truth labels of the same shape")


def cmd_evaluate(args: argparse.Namespace) -> int:
    check_tiff(args.pred, "--pred")
    check_tiff(args.truth, "--truth")
    from ..core.io import read_labels
    from ..core.metrics import match_instances

    pred, truth = read_labels(args.pred), read_labels(args.truth)
    if pred.shape != truth.shape:
        raise InputError(f"--pred {args.pred} has shape {pred.shape} but --truth {args.truth} has shape "
                         f"{truth.shape}; they must match")
    print(json.dumps(plain_json(match_instances(pred, truth)), indent=2))
    return EXIT_OK


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M.pt", help="trained checkpoint")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "bioimageio"), help="export format")
    p.add_argument("--out", required=True, metavar="PATH", help="output file (.pt, .onnx or .zip)")


def cmd_export(args: argparse.Namespace) -> int:
    check_input(args.model, "--model", "a checkpoint file")
    check_output(args.out, [args.model], "--out")
    from ..core.export import export_model

    path = export_model(args.model, args.format, args.out, protect=(args.model,))
    print(f"exported {args.format} model to {path}")
    return EXIT_OK


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="M.pt", help="checkpoint file")


def cmd_info(args: argparse.Namespace) -> int:
    check_input(args.checkpoint, "", "a checkpoint file")
    from ..core.checkpoint import describe_checkpoint, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    doc = {"path": str(args.checkpoint), "description": describe_checkpoint(ckpt), "meta": ckpt.meta}
    print(json.dumps(plain_json(doc), indent=2, default=str))
    return EXIT_OK
