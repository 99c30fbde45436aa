"""``seglab evaluate`` (labels, or boxes), ``seglab export`` and ``seglab info``: the short commands."""

from __future__ import annotations

import argparse
import json
import math

from ..core.errors import InputError
from .common import EXIT_OK, check_input, check_output, check_tiff, plain_json

#: the score a predicted box needs to count in precision, recall, F1 and the counts (AP uses every score)
DEFAULT_SCORE_THRESHOLD = 0.5


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", metavar="P.tif", help="predicted labels")
    p.add_argument("--truth", metavar="T.tif",
                   help="ground-truth labels of the same shape; with --pred-boxes, instance labels whose "
                        "objects' boxes are the true boxes")
    p.add_argument("--pred-boxes", metavar="P.csv",
                   help="predicted boxes: a CSV with columns y0,x0,y1,x1[,class,score,plane] (what seglab "
                        "predict --boxes writes; no score column: every box scores 1)")
    p.add_argument("--truth-boxes", metavar="T.csv", help="true boxes: a CSV with columns y0,x0,y1,x1[,class,plane]")
    p.add_argument("--score-threshold", type=float, default=None, metavar="S",
                   help=f"boxes only: precision, recall, F1 and the counts use the predicted boxes scoring >= S "
                        f"(default {DEFAULT_SCORE_THRESHOLD}); AP uses every score")
    p.add_argument("--json", metavar="OUT",
                   help="also write the scores as JSON to OUT ('-': print the JSON instead of the boxes table)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.pred_boxes is not None or args.truth_boxes is not None:
        return _evaluate_boxes(args)
    if args.pred is None or args.truth is None:
        raise InputError("give --pred P.tif and --truth T.tif (labels), or --pred-boxes P.csv with "
                         "--truth-boxes T.csv or --truth LABELS.tif (boxes)")
    if args.score_threshold is not None:
        raise InputError("--score-threshold scores boxes: use it with --pred-boxes")
    _check_json_output(args, [args.pred, args.truth])
    check_tiff(args.pred, "--pred")
    check_tiff(args.truth, "--truth")
    from ..core.evaluate import match_instances
    from ..core.io import read_labels

    pred, truth = read_labels(args.pred), read_labels(args.truth)
    if pred.shape != truth.shape:
        raise InputError(f"--pred {args.pred} has shape {pred.shape} but --truth {args.truth} has shape "
                         f"{truth.shape}; they must match")
    doc = plain_json(match_instances(pred, truth))
    if args.json not in (None, "-"):
        _write_json(args.json, doc, [args.pred, args.truth])
    print(json.dumps(doc, indent=2))
    return EXIT_OK


def _check_box_arguments(args: argparse.Namespace) -> float:
    """Refuse a mix of labels and boxes options; returns the score threshold."""
    if args.pred is not None and args.pred_boxes is not None:
        raise InputError("--pred (labels) and --pred-boxes (boxes) do not mix: give one of them")
    if args.pred_boxes is None:
        raise InputError("--truth-boxes needs --pred-boxes P.csv: boxes are scored against boxes")
    if args.truth is not None and args.truth_boxes is not None:
        raise InputError("give the true boxes once: --truth-boxes T.csv or --truth LABELS.tif, not both")
    if args.truth is None and args.truth_boxes is None:
        raise InputError("--pred-boxes needs the truth: --truth-boxes T.csv or --truth LABELS.tif (instance labels)")
    threshold = DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"--score-threshold {threshold:g}: must lie between 0 and 1")
    return threshold


def _truth_rows_from_labels(path: str) -> list[dict]:
    """Each object's box of an instance labels TIFF (planes of a stack tagged like predict's boxes CSV)."""
    from ..core.io import read_labels
    from ..core.labels import instance_box_rows

    check_tiff(path, "--truth")
    return instance_box_rows(read_labels(path), f"--truth {path}")


def _evaluate_boxes(args: argparse.Namespace) -> int:
    threshold = _check_box_arguments(args)
    inputs = [p for p in (args.pred_boxes, args.truth_boxes, args.truth) if p is not None]
    _check_json_output(args, inputs)
    check_input(args.pred_boxes, "--pred-boxes", "a boxes CSV file", allow_empty=True)
    from ..core.evaluate import box_scores_by_plane
    from ..core.labels import read_boxes_csv

    pred = read_boxes_csv(args.pred_boxes)
    if args.truth_boxes is not None:
        check_input(args.truth_boxes, "--truth-boxes", "a boxes CSV file", allow_empty=True)
        truth = read_boxes_csv(args.truth_boxes)
    else:
        truth = _truth_rows_from_labels(args.truth)
    result = box_scores_by_plane(pred, truth, threshold)
    doc = plain_json({**result["overall"], "planes": result["planes"]})
    if args.json == "-":
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    if args.json is not None:
        _write_json(args.json, doc, inputs)
    print(box_table_text(result))
    return EXIT_OK


#: the columns of the boxes table: (header, key, format)
BOX_COLUMNS = (("AP@0.5", "ap50", ".3f"), ("AP@0.75", "ap75", ".3f"), ("AP@[.5:.95]", "ap", ".3f"),
               ("precision", "precision", ".3f"), ("recall", "recall", ".3f"), ("F1", "f1", ".3f"),
               ("TP", "tp", "d"), ("FP", "fp", "d"), ("FN", "fn", "d"), ("predicted", "n_pred", "d"),
               ("true", "n_true", "d"), ("count error", "count_error", "+d"))


def box_table_text(result: dict) -> str:
    """``box_scores_by_plane``'s result as an aligned text table: one row per plane, then "all"."""
    overall = result["overall"]
    rows = [(f"plane {tag}", scores) for tag, scores in result["planes"].items()] + [("all", overall)]
    header = ["", *(name for name, _key, _fmt in BOX_COLUMNS)]
    cells = [[label, *(format(scores[key], fmt) for _name, key, fmt in BOX_COLUMNS)] for label, scores in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *cells]]
    threshold = overall["score_threshold"]
    note = (f"precision, recall, F1 and counts at IoU 0.5 for predicted boxes scoring >= {threshold:g}; "
            "AP over every score")
    return "\n".join([*lines, note])


def _check_json_output(args: argparse.Namespace, inputs: list[str]) -> None:
    if args.json not in (None, "-"):
        check_output(args.json, inputs, "--json")


def _write_json(path: str, doc: dict, inputs: list[str]) -> None:
    from ..core.io import atomic_path, ensure_not_input

    ensure_not_input(path, inputs)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M.pt", help="trained checkpoint")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "bioimageio"), help="export format")
    p.add_argument("--out", required=True, metavar="PATH", help="output file (.pt, .onnx or .zip)")
    pkg = p.add_argument_group("bioimage.io packages (--format bioimageio; needs pip install "
                               "'napari-seglab[bioimageio]')")
    pkg.add_argument("--image", metavar="IMG.tif",
                     help="image whose centre becomes the package's test input (default: a synthetic nuclei image)")
    pkg.add_argument("--name", help="the model's name (default: family, architecture and encoder)")
    pkg.add_argument("--description", help="one paragraph about the model (default: what the checkpoint records)")
    pkg.add_argument("--author", action="append", default=[], metavar="NAME", help="an author (repeat for more)")
    pkg.add_argument("--license", default="CC-BY-4.0", metavar="SPDX", help="licence of the weights (default CC-BY-4.0)")
    pkg.add_argument("--cite", action="append", default=[], metavar="DOI_OR_URL",
                     help="a publication to cite, as a DOI (10.x/...) or a URL (repeat for more)")


def _package_options(args: argparse.Namespace) -> dict:
    """The bioimage.io options given, refused with another format; for bioimageio, export_bioimageio's keywords."""
    given = [f"--{k}" for k in ("image", "name", "description") if getattr(args, k) is not None]
    given += ["--author"] * bool(args.author) + ["--cite"] * bool(args.cite)
    given += ["--license"] * (args.license != "CC-BY-4.0")
    if args.format != "bioimageio":
        if given:
            raise InputError(f"{given[0]}: only --format bioimageio takes it")
        return {}
    from ..core.models import PackageInfo

    for ref in args.cite:
        if not (ref.startswith("10.") or ref.startswith(("http://", "https://"))):
            raise InputError(f"--cite {ref!r:.60}: give a DOI (10.xxxx/...) or an http(s) URL")
    image = None
    if args.image is not None:
        check_tiff(args.image, "--image")
        from ..core.io import read_image

        read = read_image(args.image)
        image = read.data[(0,) * sum(a in "TZ" for a in read.axes)]  # the first plane of a stack
    info = PackageInfo(name=args.name, description=args.description, authors=tuple(args.author),
                       license=args.license, cite=tuple((ref, ref) for ref in args.cite))
    return {"image": image, "info": info}


def cmd_export(args: argparse.Namespace) -> int:
    check_input(args.model, "--model", "a checkpoint file")
    check_output(args.out, [args.model] + ([args.image] if args.image else []), "--out")
    options = _package_options(args)
    from ..core.models import export_bioimageio, export_model

    if args.format != "bioimageio":
        path = export_model(args.model, args.format, args.out, protect=(args.model,))
        print(f"exported {args.format} model to {path}")
        return EXIT_OK
    from ..core.models import check_export_target

    check_export_target(args.model, args.out, (args.model,) + ((args.image,) if args.image else ()))
    result = export_bioimageio(args.model, args.out, **options)
    print(f"exported bioimage.io package to {result.path} (weights: {', '.join(result.formats)}; they agree "
          f"within {result.agreement:.0e}, declared tolerance {result.tolerance:.0e})")
    print(result.verdict.line)
    return EXIT_OK


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="M.pt", help="checkpoint file")


def cmd_info(args: argparse.Namespace) -> int:
    check_input(args.checkpoint, "", "a checkpoint file")
    from ..core.models import describe_checkpoint, load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    doc = {"path": str(args.checkpoint), "description": describe_checkpoint(ckpt), "meta": ckpt.meta}
    print(json.dumps(plain_json(doc), indent=2, default=str))
    return EXIT_OK
