"""Many small files: 500 TIFFs of 64x64 through `iter_run_batch`, in-process and on a local Dask cluster.

A folder of small nuclei images (uint8 and uint16 alternating) goes through
:func:`napari_seglab.core.batch.iter_run_batch` twice with the same random-init
U-Net resnet18 checkpoint: with ``workers=0`` (in this process, no Dask: the
baseline) and on a local Dask cluster (``--workers``, default 2 worker
processes). Each run must finish with every file ok, a manifest of one ok
row per file and a summary row per file. Per-file costs dominate here
(reading, a 64x64 forward pass, watershed, measuring, three atomic writes and
a manifest append), so this shows the fixed overhead each file pays. A third
run resumes the finished folder with ``skip_existing`` (every file skipped).

    python benchmarks/load_many_files.py [--n 500] [--workers 2] [--quick]

Prints files/s for each run and, last, the ratio cluster/in-process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def make_inputs(folder: Path, n: int, size: int = 64) -> None:
    """``n`` (size, size) nuclei images, uint8 and uint16 alternating (16 distinct ones, repeated)."""
    from napari_seglab.core.synthetic import make_nuclei

    folder.mkdir(parents=True)
    distinct = [make_nuclei((size, size), seed=i)[0] for i in range(min(n, 16))]
    for i in range(n):
        img = distinct[i % len(distinct)]
        if i % 2:
            img = (img // 256).astype(np.uint8)
        tifffile.imwrite(folder / f"img{i:04d}.tif", img, photometric="minisblack")


def make_model(path: Path) -> None:
    """Save a random-init U-Net resnet18 (1 channel in, 2 classes) as a checkpoint."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import random_unet_checkpoint

    torch.manual_seed(0)
    random_unet_checkpoint(path, encoder="resnet18")


def run(model: Path, inputs: Path, out: Path, n: int, **kwargs) -> tuple[float, str]:
    """Run the batch to the end and check its bookkeeping; returns (seconds, where it ran)."""
    from napari_seglab.core.batch import iter_run_batch, read_manifest
    from napari_seglab.core.events import FileDone, Message, collect

    t0 = time.perf_counter()
    events, summary = collect(iter_run_batch(str(model), str(inputs), str(out), device="cpu", **kwargs))
    seconds = time.perf_counter() - t0
    done = sum(isinstance(ev, FileDone) for ev in events)
    notes = [ev.text for ev in events if isinstance(ev, Message)]
    want = "skipped" if kwargs.get("skip_existing") else "ok"
    rows = read_manifest(summary.manifest)
    with open(summary.summary_csv) as fh:
        summary_rows = sum(1 for _ in fh) - 1
    problems = []
    if done != n or getattr(summary, want) != n:
        problems.append(f"{done} FileDone events, summary {summary}")
    if len(rows) != n or any(r["status"] != want for r in rows.values()):
        problems.append(f"manifest has {len(rows)} rows, statuses {sorted({r['status'] for r in rows.values()})}")
    if summary_rows != n:
        problems.append(f"summary.csv has {summary_rows} rows")
    if len(list(out.glob("*_labels.tif"))) != n:
        problems.append("label files missing")
    if problems:
        raise SystemExit("batch run incomplete: " + "; ".join(problems))
    return seconds, notes[-1] if notes else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="number of files (default 500)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers (default 2 processes)")
    parser.add_argument("--quick", action="store_true", help="50 files")
    args = parser.parse_args()
    if args.quick:
        args.n = 50

    root = Path(tempfile.mkdtemp(prefix="seglab-many-files-"))
    try:
        make_inputs(root / "in", args.n)
        make_model(root / "model.pt")
        print(f"{args.n} TIFFs of 64x64 (uint8/uint16), U-Net resnet18 (random init), measurements on")
        local, where = run(root / "model.pt", root / "in", root / "out_local", args.n, workers=0)
        print(f"in-process (workers=0): {local:7.2f} s  {args.n / local:6.1f} files/s  ({where})", flush=True)
        dask, where = run(root / "model.pt", root / "in", root / "out_dask", args.n, workers=args.workers)
        print(f"local Dask cluster:     {dask:7.2f} s  {args.n / dask:6.1f} files/s  ({where})", flush=True)
        resume, _ = run(root / "model.pt", root / "in", root / "out_local", args.n, workers=0, skip_existing=True)
        print(f"resume, all skipped:    {resume:7.2f} s  {args.n / resume:6.1f} files/s", flush=True)
        print("all runs: every file ok, manifest and summary have one row per file")
        print(f"ratio cluster/in-process: {local / dask:.2f}x files/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
