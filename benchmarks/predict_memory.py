"""Peak resident memory when predicting an 8192x8192 uint16 image on the CPU.

Runs the prediction in a fresh subprocess and reads its peak RSS
(``ru_maxrss``). The baseline, measured in the same way in the same run, is a
process that only loads torch, the model and the image. Goal: peak under 3 GB.
The last line prints the peak and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, numpy as np
sys.path.insert(0, {bench!r})
from _common import nuclei_like
from napari_seglab.core.events import drive
from napari_seglab.core.predict import iter_predict_image, load_model
lm = load_model({ckpt!r}, "cpu")
img = nuclei_like(({size}, {size}))
tiles = 0
if {predict}:
    gen = iter_predict_image(lm, img)
    try:
        while True:
            ev = next(gen); tiles = max(tiles, getattr(ev, "tiles", 0))
    except StopIteration as fin:
        pred = fin.value
    assert pred.labels.shape == img.shape
print(json.dumps({{"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tiles": tiles}}))
"""


def measure(ckpt: Path, size: int, predict: bool) -> dict:
    code = CHILD.format(bench=str(Path(__file__).parent), ckpt=str(ckpt), size=size, predict=predict)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--encoder", default="resnet34")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import random_unet_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_unet_checkpoint(Path(tmp) / "m.pt", encoder=args.encoder)
        base = measure(ckpt, args.size, predict=False)
        run = measure(ckpt, args.size, predict=True)
    gb = 2**30
    print(f"image {args.size}x{args.size} uint16 ({args.size**2 * 2 / gb:.2f} GB), Unet-{args.encoder}, "
          f"{run['tiles']} tiles")
    print(f"baseline (torch + model + image): {base['peak'] / gb:.2f} GB")
    print(f"peak RSS predicting: {run['peak'] / gb:.2f} GB (goal < 3 GB); "
          f"ratio to baseline {run['peak'] / base['peak']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
