"""``seglab batch``: every matching image of a folder, locally or on a Dask cluster; large ones block by block."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import InputError
from .common import (
    EXIT_FILES_FAILED,
    EXIT_OK,
    Status,
    add_reading,
    add_settings,
    check_input,
    check_output_folder,
    drive,
    leave_out_triton,
    options_from_args,
)

#: BatchOptions fields offered as ``seglab batch`` options (--workers sits in a group with --scheduler)
OPTIONS = ("pattern", "recursive", "probabilities", "skip_existing", "device", "runtime", "tile", "overlap", "tta",
           "score_threshold", "pixel_size", "volume", "anisotropy", "volume_method", "block", "halo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M.pt",
                   help="trained checkpoint, or a bioimage.io model package (.zip or rdf.yaml)")
    p.add_argument("--input-dir", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--output-dir", required=True, metavar="OUT", help="folder for the results")
    from ..core.predict import BatchOptions

    add_settings(p, BatchOptions, OPTIONS[:4])
    add_reading(p, "each file")
    p.add_argument("--no-measurements", action="store_true", help="skip the per-object measurements CSV")
    where = p.add_mutually_exclusive_group()
    add_settings(where, BatchOptions, ("workers",))
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="address of a running Dask scheduler whose workers see the same paths")
    add_settings(p, BatchOptions, OPTIONS[4:])


def cmd_batch(args: argparse.Namespace) -> int:
    leave_out_triton(args.device)  # before torchvision: as in `seglab predict`, a CPU run has no use for it
    from ..core.events import FileDone, Message
    from ..core.io import check_pattern

    folder = Path(args.input_dir)
    if not folder.is_dir():
        raise InputError(f"--input-dir {folder}: " + ("is not a folder" if folder.exists() else "no such folder"))
    check_input(args.model, "--model", "a checkpoint file")
    check_output_folder(args.output_dir)
    check_pattern(args.pattern)
    from ..core.predict import BatchOptions

    options_from_args(args, BatchOptions, (*OPTIONS, "workers"))
    from ..core.batch import iter_run_batch

    status = Status()
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

    summary = drive(iter_run_batch(args.model, args.input_dir, args.output_dir, pattern=args.pattern,
                              recursive=args.recursive, probabilities=args.probabilities,
                              measurements=not args.no_measurements, skip_existing=args.skip_existing,
                              workers=args.workers, scheduler=args.scheduler, device=args.device,
                              runtime=args.runtime,
                              tile=args.tile or None, overlap=args.overlap, tta=args.tta,
                              score_threshold=args.score_threshold, pixel_size=args.pixel_size,
                              scene=args.scene, channel=args.channel, axes=args.axes, volume=args.volume,
                              anisotropy=args.anisotropy, volume_method=args.volume_method, block=args.block,
                              halo=args.halo), handle)
    print(f"{summary.total} files: ok {summary.ok}, failed {summary.failed}, skipped {summary.skipped}; "
          f"manifest: {summary.manifest}")
    if summary.failed:
        status.line(f"seglab: {summary.failed} of {summary.total} files failed (see {summary.manifest})")
        return EXIT_FILES_FAILED
    return EXIT_OK
