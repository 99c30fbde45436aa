"""Overhead of `iter_run_batch` on a local Dask cluster against a plain in-process loop.

Both paths do the same work per file with the same model (a random-init
U-Net resnet18 checkpoint saved once): read the TIFF, predict, write the
label TIFF, measure the objects and write their CSV. The loop loads the model
once and runs in this process; the batch time counts everything from the
call to the return: cluster start, worker imports, model load per worker,
manifest and summary, cluster shutdown.

The loop runs in a plain thread by default, like the worker thread of a
one-worker local cluster: on Linux, torch on a process's *main* thread ran
1.3-2x slower here (glibc's main malloc arena returns large buffers to the OS
and takes page faults on every forward), which would flatter the batch for a
reason that has nothing to do with its overhead. ``--main-thread`` shows it.

    python benchmarks/batch_overhead.py [--n 64] [--size 512] [--workers N] [--repeat R] [--quick]

Prints both times and the ratio last ("ratio batch/loop: 1.07x"); with
``--repeat`` loop and batch run back to back R times (taking turns to go
first) and the ratio is the median of the R pair ratios (on a shared machine
the load drifts between runs; a pair sees about the same load).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile


def make_inputs(folder: Path, n: int, size: int) -> None:
    """``n`` synthetic (size, size) uint16 nuclei images (8 distinct ones, repeated)."""
    from napari_seglab.core.synthetic import make_nuclei

    folder.mkdir(parents=True)
    distinct = [make_nuclei((size, size), seed=i)[0] for i in range(min(n, 8))]
    for i in range(n):
        tifffile.imwrite(folder / f"img{i:03d}.tif", distinct[i % len(distinct)], photometric="minisblack")


def make_model(path: Path) -> None:
    """Save a random-init U-Net resnet18 (1 channel in, 2 classes) as a checkpoint."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import random_unet_checkpoint

    torch.manual_seed(0)
    random_unet_checkpoint(path, encoder="resnet18")


def warm_up(model: Path, inputs: Path) -> None:
    """One untimed prediction, so that neither path pays this process's first-call costs."""
    from napari_seglab.core.events import drive
    from napari_seglab.core.io import read_image
    from napari_seglab.core.predict import iter_predict_image, load_model

    img = read_image(sorted(inputs.glob("*.tif"))[0])
    drive(iter_predict_image(load_model(str(model), "auto"), img.data, img.axes, split_instances=True))


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a new thread and return its result."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn(*args)))
    thread.start()
    thread.join()
    return out["value"]


def plain_loop(model: Path, inputs: Path, out: Path) -> float:
    """The baseline: load once, then per file predict + write labels + measurements."""
    from napari_seglab.core.batch import measure_labels, object_columns
    from napari_seglab.core.events import drive
    from napari_seglab.core.io import read_image, write_csv, write_tiff
    from napari_seglab.core.labels import compact_labels
    from napari_seglab.core.predict import iter_predict_image, load_model

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    lm = load_model(str(model), "auto")
    split = lm.spec.n_classes == 2 and lm.label_mode != "instances"
    for path in sorted(inputs.glob("*.tif")):
        img = read_image(path)
        pred = drive(iter_predict_image(lm, img.data, img.axes, split_instances=split))
        write_tiff(out / f"{path.stem}_labels.tif", compact_labels(pred.labels), axes=img.axes, protect=[path])
        rows = measure_labels(pred.labels, img.data, img.axes)
        write_csv(out / f"{path.stem}_objects.csv", rows,
                  columns=None if rows else object_columns(img.data, img.axes), protect=[path])
    return time.perf_counter() - t0


def batch(model: Path, inputs: Path, out: Path, workers: int | None) -> tuple[float, str]:
    """Time iter_run_batch; returns (seconds, a line on where the time went)."""
    from napari_seglab.core.batch import iter_run_batch
    from napari_seglab.core.events import FileDone, Message

    t0 = time.perf_counter()
    gen = iter_run_batch(str(model), str(inputs), str(out), workers=workers)
    notes, first, busy, last = [], None, 0.0, 0.0
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, Message):
                notes.append(ev.text)
            elif isinstance(ev, FileDone):
                first = first or time.perf_counter() - t0
                busy += ev.seconds
                last = time.perf_counter() - t0
    except StopIteration as fin:
        summary = fin.value
    seconds = time.perf_counter() - t0
    if summary.ok != summary.total:
        raise SystemExit(f"batch failed on {summary.failed} file(s); see {summary.manifest}")
    where = (f"{notes[-1] if notes else ''}; first file done after {first:.1f} s, last after {last:.1f} s, "
             f"{busy:.1f} s of file work in the workers")
    return seconds, where


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes, once closed)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="local workers (default: iter_run_batch's choice)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run loop and batch back to back this many times; the median pair ratio counts")
    parser.add_argument("--main-thread", action="store_true", help="run the loop on the main thread")
    parser.add_argument("--quick", action="store_true", help="a small run: 12 images of 256 px")
    args = parser.parse_args()
    if args.quick:
        args.n, args.size = 12, 256

    import torch

    root = Path(tempfile.mkdtemp(prefix="seglab-batch-bench-"))
    try:
        make_inputs(root / "in", args.n, args.size)
        make_model(root / "model.pt")
        print(f"{args.n} images of {args.size}x{args.size}, U-Net resnet18 (random init), "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads in this process")
        warm_up(root / "model.pt", root / "in")
        loops, batches = [], []
        runs_on = "main thread" if args.main_thread else "a thread"
        for r in range(args.repeat):
            for which in ("loop", "batch") if r % 2 == 0 else ("batch", "loop"):  # cancel order effects
                cpu = cpu_seconds()
                if which == "loop":
                    loop_args = (plain_loop, root / "model.pt", root / "in", root / f"out_loop{r}")
                    loops.append(loop_args[0](*loop_args[1:]) if args.main_thread else in_thread(*loop_args))
                    print(f"plain loop:   {loops[-1]:7.2f} s  ({loops[-1] / args.n * 1000:.0f} ms/image, "
                          f"{runs_on}; {cpu_seconds() - cpu:.1f} s CPU)", flush=True)
                else:
                    seconds, where = batch(root / "model.pt", root / "in", root / f"out_batch{r}", args.workers)
                    batches.append(seconds)
                    print(f"run_batch:    {seconds:7.2f} s  ({where}; {cpu_seconds() - cpu:.1f} s CPU)",
                          flush=True)
        same = np.array_equal(tifffile.imread(root / "out_loop0" / "img000_labels.tif"),
                              tifffile.imread(root / "out_batch0" / "img000_labels.tif"))
        print(f"same labels as the loop: {same}")
        pairs = [b / lp for lp, b in zip(loops, batches, strict=True)]
        ratio = statistics.median(pairs)
        if args.repeat > 1:
            print(f"best of {args.repeat}: loop {min(loops):.2f} s, batch {min(batches):.2f} s; "
                  f"pair ratios {', '.join(f'{p:.2f}' for p in pairs)}")
        print(f"ratio batch/loop: {ratio:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
