"""Images larger than memory: peak RSS, pixels/s and blocked vs whole-image agreement of ``seglab predict``.

Synthetic nuclei images (uint16) of 2k and 8k pixels a side (16k, 32k with ``--sizes``; long) are
written once into ``--work`` as a tiled TIFF and an OME-Zarr, and two tiny models (fast preset) are
trained once there: a semantic one (dense background / nucleus labels) and a flows instance model, both
at object scale 1. Every prediction runs ``seglab predict`` in a fresh process, which reports its own
peak RSS (``VmHWM``). Block-wise runs read the OME-Zarr (and the TIFF for the flows
model); whole-image runs (``--block 0``, up to ``--whole-max``) read the TIFF; all use the same tile, so
their labels must agree: semantic labels equal, instance labels equal up to renumbering with AP@0.5 and
AP@0.75 of one against the other 1.0. These runs say ``--runtime torch``; at the ``--runtime-sizes`` the
block-wise OME-Zarr run is repeated with ``seglab predict``'s defaults (the ``auto`` runtime, which turns
to onnxruntime after 4 megapixels, and the default tile) against the same with ``--runtime torch``, and
their labels must be equal up to renumbering. The last lines print the ratios: whole / blocked peak RSS at
the largest size both ran, blocked time per pixel at the largest size / at 2k, and the default runtime's
blocked peak RSS / torch's.

``--scale F`` trains the models at object scale F (the nuclei reach the network F times their size):
both paths then run on the image resampled by F (block by block on the resampled grid), and must
still agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GB = 2**30


def train_models(work: Path, seconds: float, names=("semantic", "flows"), scale: float = 1.0) -> dict[str, Path]:
    """The tiny models (trained once, kept in ``work``), at object ``scale``."""
    from napari_seglab.core.events import drive
    from napari_seglab.core.synthetic import make_nuclei
    from napari_seglab.core.train import TrainConfig, iter_train

    image, inst = make_nuclei((384, 384), seed=11)
    tag = "" if scale == 1.0 else f"_s{scale:g}"
    models = {name: work / f"{name}{tag}.pt" for name in names}
    labels = {"semantic": np.where(inst > 0, 2, 1).astype(np.uint8), "flows": inst}
    settings = {"semantic": {"label_mode": "scribbles"},
                "flows": {"label_mode": "instances", "instance_head": "flows"}}
    for name, path in models.items():
        if path.exists():
            continue
        cfg = TrainConfig(preset="fast", time_limit=seconds, patch=128, batch_size=4, device="cpu", scale=scale,
                          model_out=str(path), **settings[name])
        drive(iter_train([image], [labels[name]], cfg))
    return models


def make_images(work: Path, size: int) -> tuple[Path, Path]:
    """(tiled TIFF, OME-Zarr) of a ``size`` x ``size`` uint16 nuclei image, made in 2048 px pieces."""
    from napari_seglab.core.io import OmeZarrWriter, write_tiff_tiled
    from napari_seglab.core.synthetic import make_nuclei

    tif, zarr_path = work / f"nuclei_{size}.tif", work / f"nuclei_{size}.ome.zarr"
    if tif.exists() and zarr_path.exists():
        return tif, zarr_path
    piece = min(size, 2048)
    with OmeZarrWriter(zarr_path, (size, size), np.uint16, chunk=1024, name="nuclei") as w:
        for k, (y, x) in enumerate((y, x) for y in range(0, size, piece) for x in range(0, size, piece)):
            img, _ = make_nuclei((piece, piece), seed=100 + k)
            w.array[y:y + piece, x:x + piece] = img
        write_tiff_tiled(tif, w.array, np.uint16, tile=512)
        w.finish()
    return tif, zarr_path


#: runs seglab, then prints the process's own peak RSS (VmHWM: ru_maxrss would keep the forking parent's)
WRAPPER = """
import sys
from napari_seglab.cli import main
try:
    code = main(sys.argv[1:])
finally:
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("PEAK_KB", peak, file=sys.stderr)
sys.exit(code)
"""


def run_cli(args: list[str]) -> dict:
    """``seglab ARGS`` in a fresh process: wall seconds, peak RSS of that process (bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"seglab {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    peak = int(next(line for line in proc.stderr.splitlines() if line.startswith("PEAK_KB")).split()[1]) * 1024
    return {"seconds": seconds, "peak": peak, "log": proc.stderr}


def read_labels(path: Path) -> np.ndarray:
    from napari_seglab.core.io import open_lazy

    return open_lazy(path).load()


def agreement(a: np.ndarray, b: np.ndarray, instances: bool) -> dict:
    if not instances:
        return {"equal": bool(np.array_equal(a, b))}
    from napari_seglab.core.evaluate import match_instances

    fg = (a > 0) | (b > 0)
    pairs = np.unique(a[fg].astype(np.int64) * (int(b.max()) + 1) + b[fg])
    left, right = pairs // (int(b.max()) + 1), pairs % (int(b.max()) + 1)
    same = bool(np.array_equal(a > 0, b > 0) and len(np.unique(left)) == len(np.unique(right)) == len(pairs))
    scores = match_instances(a, b, (0.5, 0.75))
    return {"equal": same, "ap50": scores["ap50"], "ap75": scores["ap75"], "objects": int(scores["n_true"])}


def compare_runtimes(work: Path, model: Path, name: str, tag: str, size: int, zarr_path: Path) -> list[dict]:
    """Block by block with the defaults (runtime, tile) against the same with ``--runtime torch``."""
    rows, labels = [], {}
    for run, extra in (("defaults", []), ("defaults, torch", ["--runtime", "torch"])):
        out = work / f"{name}{tag}_{size}_{'torch' if extra else 'auto'}.ome.zarr"
        r = run_cli(["predict", "--model", str(model), "--input", str(zarr_path), "--output", str(out), *extra])
        labels[run] = read_labels(out)
        rows.append({"size": size, "model": name, "run": run, "seconds": r["seconds"], "peak_gb": r["peak"] / GB,
                     "mpx_s": size * size / r["seconds"] / 1e6})
    rows[0].update(agreement(labels["defaults"], labels["defaults, torch"], name == "flows"))
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/seglab_large_image", help="folder for the images and models (kept)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--models", nargs="+", default=["semantic", "flows"], choices=["semantic", "flows"])
    p.add_argument("--whole-max", type=int, default=8192, help="largest size also predicted whole")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--train-seconds", type=float, default=40)
    p.add_argument("--scale", type=float, default=1.0, help="object scale of the models predicting (resampling)")
    p.add_argument("--runtime-sizes", type=int, nargs="*", default=[2048],
                   help="sizes at which the default runtime is compared with torch block by block")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = train_models(work, args.train_seconds, args.models, args.scale)
    tag = "" if args.scale == 1.0 else f"_s{args.scale:g}"
    rows = []
    for size in args.sizes:
        tif, zarr_path = make_images(work, size)
        block = ["--block", "1024"]  # the default block: a 2k image in 4 blocks
        for name in args.models:
            common = ["predict", "--model", str(models[name]), "--tile", str(args.tile), "--device", "cpu",
                      "--runtime", "torch"]
            runs = {"zarr": run_cli([*common, "--input", str(zarr_path), "--output",
                                     str(work / f"{name}{tag}_{size}.ome.zarr"), *block])}
            if name == "flows":
                runs["tiff"] = run_cli([*common, "--input", str(tif), "--output", str(work / f"{name}{tag}_{size}_b.tif"),
                                        *block])
            blocked = read_labels(work / f"{name}{tag}_{size}.ome.zarr")
            meta = json.loads((work / f"{name}{tag}_{size}.ome.zarr" / "zarr.json").read_text())["attributes"]["seglab"]
            for how, r in runs.items():
                rows.append({"size": size, "model": name, "run": f"blocked {how}", "seconds": r["seconds"],
                             "peak_gb": r["peak"] / GB, "mpx_s": size * size / r["seconds"] / 1e6,
                             "crossing": meta.get("crossing")})
            if size <= args.whole_max:
                r = run_cli([*common, "--input", str(tif), "--output", str(work / f"{name}{tag}_{size}_w.tif"),
                             "--block", "0"])
                whole = read_labels(work / f"{name}{tag}_{size}_w.tif")
                rows.append({"size": size, "model": name, "run": "whole tiff", "seconds": r["seconds"],
                             "peak_gb": r["peak"] / GB, "mpx_s": size * size / r["seconds"] / 1e6,
                             **agreement(blocked, whole, name == "flows")})
            for row in rows[-3:]:
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if size in args.runtime_sizes:
                rows.extend(compare_runtimes(work, models[name], name, tag, size, zarr_path))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name in args.models:
        mine = [r for r in rows if r["model"] == name]
        both = [s for s in args.sizes if any(r["size"] == s and r["run"] == "whole tiff" for r in mine)]
        if both:
            s = max(both)
            whole = next(r for r in mine if r["size"] == s and r["run"] == "whole tiff")
            blocked = next(r for r in mine if r["size"] == s and r["run"].startswith("blocked"))
            print(f"{name}: peak RSS whole / blocked at {s}px: {whole['peak_gb']:.2f} / {blocked['peak_gb']:.2f} GB "
                  f"= {whole['peak_gb'] / blocked['peak_gb']:.2f}x")
        sizes = sorted({r["size"] for r in mine})
        if len(sizes) > 1:
            first = next(r for r in mine if r["size"] == sizes[0] and r["run"] == "blocked zarr")
            last = next(r for r in mine if r["size"] == sizes[-1] and r["run"] == "blocked zarr")
            print(f"{name}: blocked time per pixel {sizes[-1]}px / {sizes[0]}px = "
                  f"{first['mpx_s'] / last['mpx_s']:.2f}x")
        runtimes = [s for s in args.runtime_sizes if any(r["size"] == s and r["run"] == "defaults" for r in mine)]
        if runtimes:
            s = max(runtimes)
            auto, torch_run = (next(r for r in mine if r["size"] == s and r["run"] == run)
                               for run in ("defaults", "defaults, torch"))
            print(f"{name}: blocked peak RSS at {s}px, default runtime / --runtime torch: {auto['peak_gb']:.3f} / "
                  f"{torch_run['peak_gb']:.3f} GB = {auto['peak_gb'] / torch_run['peak_gb']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
