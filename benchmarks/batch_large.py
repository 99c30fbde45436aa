"""Peak memory of `seglab batch` on one large image: block by block against whole (`--block 0`).

One synthetic nuclei image (uint16, tiled TIFF) of ``--size`` pixels a side in a folder, a
random-weight flows-head U-Net (resnet18; its objects are arbitrary but the work per pixel is a real
model's), then `seglab batch --workers 0` twice, each in a fresh process that reports its own peak RSS:
``--block 0`` (the image, its outputs and the measurements whole) and ``--block B`` (block by block,
OME-Zarr labels, measurements block by block). Both write the objects CSV.

    python benchmarks/batch_large.py [--size 4096] [--block 1024] [--tile 512] [--work DIR]

Prints each run's peak RSS, seconds and object count, and the ratio blocked/whole of the peaks last.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(work: Path, size: int) -> tuple[Path, Path]:
    import numpy as np
    import tifffile
    import torch

    from napari_seglab.core.data import Normalization
    from napari_seglab.core.models import ModelSpec, build_model, save_checkpoint
    from napari_seglab.core.synthetic import make_nuclei

    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "scan.tif"
    if not image.exists():
        tile = make_nuclei((1024, 1024), seed=0)[0]
        reps = -(-size // 1024)
        big = np.tile(tile, (reps, reps))[:size, :size]
        tifffile.imwrite(image, big, tile=(512, 512), photometric="minisblack")
    model = work / "flows.pt"
    if not model.exists():
        torch.manual_seed(1)
        spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", in_channels=1, n_classes=2,
                         options={"head": "flows"})
        meta = {"model": spec.to_dict(), "label_mode": "instances", "normalization": Normalization().to_dict()}
        save_checkpoint(model, build_model(spec)[0], meta)
    return folder, model


def child(args) -> None:
    """One `seglab batch` in this process; prints its peak RSS (MB) and seconds as JSON."""
    import torch

    from napari_seglab.cli import main

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    t0 = time.perf_counter()
    code = main(["batch", "--model", args.model, "--input-dir", args.input, "--output-dir", args.output,
                 "--workers", "0", "--device", "cpu", "--runtime", "torch", "--tile", str(args.tile),
                 "--block", str(args.block)])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"code": code, "peak_mb": peak, "seconds": seconds}))


def run(folder: Path, model: Path, out: Path, block: int, tile: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--input", str(folder), "--output", str(out),
           "--block", str(block), "--tile", str(tile)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    objects = next(out.glob("*_objects.csv"))
    with open(objects, newline="", encoding="utf-8") as fh:
        result["objects"] = sum(1 for _ in csv.DictReader(fh))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--work", default=None, help="folder for the image and model (default: a temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="seglab_batch_large_"))
    folder, model = make_inputs(work, args.size)
    print(f"{args.size}x{args.size} uint16, block {args.block}, tile {args.tile}, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    results = {}
    for name, block in (("whole", 0), ("blocked", args.block)):
        out = work / f"out_{name}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        results[name] = r = run(folder, model, out, block, args.tile)
        print(f"{name:8s} peak RSS {r['peak_mb']:.0f} MB, {r['seconds']:.1f} s, {r['objects']} objects "
              f"(exit {r['code']})", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"ratio blocked/whole peak RSS: {results['blocked']['peak_mb'] / results['whole']['peak_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
