"""``seglab predict`` on images larger than memory: block by block from a lazy TIFF / OME-Zarr.

Chosen by :func:`wanted` (``--block``, an OME-Zarr input or output, or an image above
:data:`AUTO_BLOCK_PIXELS`); :func:`run` predicts into OME-Zarr stores (published only when complete)
or streams TIFF outputs band by band from a hidden scratch store. Ctrl-C closes the core generator,
and every store being written is removed.
"""

from __future__ import annotations

import argparse
import os
from contextlib import ExitStack
from pathlib import Path

from ..core.errors import InputError
from ..core.predict import AUTO_BLOCK_PIXELS  # torch-free (the options module)
from .common import EXIT_OK, Status, drive


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..core.predict import DEFAULT_BLOCK, DEFAULT_HALO, DEFAULT_VOLUME_BLOCK, MIN_VOLUME_BLOCK

    p.add_argument("--block", type=int, default=None, metavar="PX",
                   help=f"predict block by block, PX pixels a side (bounded memory; 256 or more); 0 = never. "
                        f"Default: {DEFAULT_BLOCK} for OME-Zarr input or output and for images above 4096x4096 "
                        "pixels, when the model allows it (U-Net / FCN; a model that resamples runs on its "
                        "resampled grid). With --3d: the side of the 3D blocks in voxels of the decoding grid "
                        f"({MIN_VOLUME_BLOCK} or more; 0 = the whole volume at once; default: "
                        f"{DEFAULT_VOLUME_BLOCK} once the grid holds more than 16 M voxels)")
    p.add_argument("--halo", type=int, default=None, metavar="PX",
                   help=f"pixels (the model's, after any resampling) around a block decoded with it (default "
                        f"{DEFAULT_HALO}): objects up to about this size are found exactly "
                        "as in the whole image; a block holding a wider one is decoded again with the halo "
                        "doubled. With --3d: voxels of the decoding grid around each 3D block (default: the "
                        "model's typical object diameter plus 8)")
    dask = p.add_mutually_exclusive_group()
    dask.add_argument("--workers", type=int, default=None, metavar="N",
                      help="block by block on N local Dask worker processes (the blocks are tasks; the output is "
                           "the same as in one process)")
    dask.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                      help="block by block as tasks of a running Dask scheduler whose workers see the same paths")


def is_zarr(path: str | None) -> bool:
    from ..core.io import is_zarr_path

    return bool(path) and is_zarr_path(path)


def wanted(args: argparse.Namespace) -> bool:
    """True when this prediction should go block by block (checked again against the model in :func:`run`).

    With ``--3d`` never: ``--block`` / ``--halo`` then set the 3D blocks of the whole-image path.
    """
    if getattr(args, "volume", False):
        return False
    if args.block == 0:
        if is_zarr(args.input) or is_zarr(args.output) or is_zarr(args.probabilities):
            raise InputError("--block 0: OME-Zarr input and output are read and written block by block only")
        return False
    if args.block or args.workers or args.scheduler or is_zarr(args.input) or is_zarr(args.output) or is_zarr(args.probabilities):
        return True
    # automatic only for a plain TIFF read as it is: microscope files, a scene / channel / axes choice and
    # 3D objects go through the whole-image path, which honours them (a --pixel-size is honoured by both)
    if Path(args.input).suffix.lower() not in (".tif", ".tiff") or _reading_choices(args):
        return False
    from ..core.io import probe_tiff

    shape, axes = probe_tiff(args.input)
    sizes = dict(zip(axes, shape, strict=False))
    return sizes.get("Y", 1) * sizes.get("X", 1) > AUTO_BLOCK_PIXELS and not set(axes) & set("TZQI")


def _reading_choices(args: argparse.Namespace) -> list[str]:
    """The options of this run that the block-wise path does not honour (yet)."""
    named = [f"--{name.replace('_', '-')}" for name in ("scene", "channel", "axes")
             if getattr(args, name, None) is not None]
    return named + (["--3d"] if getattr(args, "volume", False) else [])


def check_args(args: argparse.Namespace, protect: list[str]) -> None:
    """Paths of a block-wise run: the input exists, zarr outputs are writable and not inputs.

    With ``--3d``, ``--block`` / ``--halo`` are the 3D blocks' side and halo (voxels): checked here; the 2D
    default halo is filled in otherwise.
    """
    chosen = _reading_choices(args)
    volume = getattr(args, "volume", False)
    explicit = (args.block and not volume) or args.workers or args.scheduler or any(
        is_zarr(p) for p in (args.input, args.output, args.probabilities))
    if chosen and explicit:
        raise InputError(f"{', '.join(chosen)}: not available block by block yet; predict the whole image "
                         "(a TIFF input and output, without " + ("--workers or --scheduler)" if volume else
                                                                 "--block, --workers or --scheduler)"))
    if volume:
        from ..core.predict import check_volume_blocks

        try:
            check_volume_blocks(args.block, args.halo)
        except InputError as e:
            raise InputError(f"--3d --block / --halo: {e}") from None
        return
    if args.halo is None:
        from ..core.predict import DEFAULT_HALO

        args.halo = DEFAULT_HALO
    if args.block is not None and args.block != 0 and args.block < 256:
        raise InputError(f"--block must be 0 or at least 256 pixels; got {args.block}")
    if args.halo < 0:
        raise InputError(f"--halo must be 0 or more pixels; got {args.halo}")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be 1 or more; got {args.workers}")
    if (args.workers or args.scheduler) and args.block == 0:
        raise InputError("--workers / --scheduler split the image into blocks: they cannot go with --block 0")
    if is_zarr(args.input) and not Path(args.input).is_dir():
        raise InputError(f"--input {args.input}: no such OME-Zarr folder")
    for flag, path in (("--output", args.output), ("--probabilities", args.probabilities)):
        if is_zarr(path):
            final = Path(path).absolute()
            if not final.parent.is_dir():
                raise InputError(f"{flag} {path}: folder {final.parent} does not exist")
            if not os.access(final.parent, os.W_OK):
                raise InputError(f"{flag} {path}: folder {final.parent} is not writable")
            if any(Path(p).absolute() == final for p in protect):
                raise InputError(f"{flag} {path}: output would overwrite the input; choose another name")
            if final.exists() and not (final / "zarr.json").exists():
                raise InputError(f"{flag} {path}: exists and is not a zarr store written here; choose another name")


def blockable(model, args: argparse.Namespace) -> str | None:
    """Why this model cannot go block by block (None: it can)."""
    from ..core.predict import refusal

    return refusal(model, args.split_instances)


def run(args: argparse.Namespace, model, protect: list[str]) -> int:
    """Predict block by block and write the outputs; returns the exit code."""
    import numpy as np

    from ..core.data import pixel_size_or
    from ..core.events import BlockDone, Message, TileDone
    from ..core.io import OmeZarrWriter, open_lazy, write_tiff_tiled
    from ..core.predict import (
        DEFAULT_BLOCK,
        block_factor,
        chunk_for,
        iter_predict_blocks,
        labels_dtype,
    )

    if args.boxes:
        raise InputError("--boxes: not available block by block; predict the whole image (--block 0) for boxes")
    image = open_lazy(args.input)
    shape = image.shape[:2]
    pixel_size = pixel_size_or(image.pixel_size, getattr(args, "pixel_size", None))
    factor, _ = block_factor(model, pixel_size)  # InputError (nothing written) when out of range
    block = int(args.block or DEFAULT_BLOCK)
    status = Status()

    def handle(event) -> None:
        if isinstance(event, TileDone):
            status.transient(f"block {event.plane + 1}/{event.planes}, tile {event.tile}/{event.tiles}")
        elif isinstance(event, BlockDone):
            what = "renumbered" if event.stage == "renumber" else "predicted"
            status.transient(f"{what} block {event.block}/{event.blocks}",
                             fallback=event.stage != "renumber" or event.block == event.blocks)
        elif isinstance(event, Message):
            status.message(event)

    status.line(f"predicting {args.input} ({shape[0]}x{shape[1]}) in {block}px blocks")
    attrs = {"source": str(args.input), "block": block, "halo": int(args.halo)}
    with ExitStack() as stack:
        def store(path, store_shape, dtype, name):
            final = path if is_zarr(path) else f"{path}.scratch.zarr"  # a TIFF is streamed from a scratch store
            return stack.enter_context(OmeZarrWriter(final, store_shape, dtype, chunk=chunk_for(block),
                                                     pixel_size=pixel_size, protect=protect, name=name))

        labels = store(args.output, shape, labels_dtype(shape, factor), "labels")
        probs = None
        if args.probabilities:
            k = 2 if model.spec.has_regression_head else max(2, model.spec.n_classes)
            probs = store(args.probabilities, (k, *shape), np.float32, "probabilities")
        if args.workers or args.scheduler:
            result = _run_dask(args, model, block, labels, probs, handle, stack, pixel_size)
        else:
            result = drive(iter_predict_blocks(model, image.read, shape, labels.array,
                                               probabilities_out=None if probs is None else probs.array,
                                               block=block, halo=args.halo, tile=args.tile or None,
                                               overlap=args.overlap, tta=args.tta, pixel_size=pixel_size), handle)
        counted = f"{result.objects} objects, {result.crossing} across block faces" if result.kind.value != \
            "semantic" else f"{result.objects} classes"
        top = result.objects if result.kind.value != "semantic" else max(2, model.spec.n_classes)
        for writer, path in ((labels, args.output), (probs, args.probabilities)):
            if writer is None:
                continue
            if is_zarr(path):
                writer.finish({**attrs, "objects": result.objects, "crossing": result.crossing,
                               "merged": result.merged, "kind": result.kind.value})
            else:
                dtype = np.float32 if writer is probs else np.uint16 if top <= 65535 else np.uint32
                write_tiff_tiled(path, writer.array, dtype, protect=protect)
        status.line(f"predicted {args.input} ({result.kind.value}; {counted}; {result.blocks} blocks)")
    print(f"labels written to {args.output} (shape {shape})")
    if args.probabilities:
        print(f"probabilities written to {args.probabilities}")
    return EXIT_OK


def _run_dask(args: argparse.Namespace, model, block: int, labels, probs, handle, stack: ExitStack, pixel_size):
    """The blocks as tasks of a Dask cluster (local workers or ``--scheduler``); returns the BlockResult."""
    from ..core.batch import open_client, usable_cpus
    from ..core.predict import iter_predict_blocks_dask

    client, cluster, where, processes = open_client(args.workers, args.scheduler, 1, args.device)
    stack.callback(client.close)
    if cluster is not None:
        stack.callback(cluster.close)
    n = len(client.nthreads()) or 1
    threads = max(1, usable_cpus() // n) if cluster is not None and processes else 0
    Status().line(f"block tasks {where}")
    return drive(iter_predict_blocks_dask(
        client, model, str(Path(args.model).absolute()), str(Path(args.input).absolute()), str(labels.tmp / "0"),
        probabilities_path=None if probs is None else str(probs.tmp / "0"), block=block, halo=args.halo,
        tile=args.tile or None, overlap=args.overlap, device=args.device, runtime=args.runtime, tta=args.tta,
        threads=threads, pixel_size=pixel_size), handle)
