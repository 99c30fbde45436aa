"""Peak resident memory when predicting a 64x1024x1024 uint16 stack on the CPU.

A random-init U-Net (resnet34 by default) checkpoint predicts every plane
of a 3D stack in a fresh subprocess, whose peak RSS (``ru_maxrss``) is read at
the end. The baseline, measured the same way in the same run, is a process
that only loads torch, the model and the stack. Goal: the stack's peak stays
within the tiled-prediction bound, under 3 GB (the labels of a stack are
int32, twice the input's bytes; ``--probabilities`` adds the (K, Z, Y, X)
float32 buffer the caller asked for).

    python benchmarks/load_stack_memory.py [--planes 64] [--size 1024] [--probabilities] [--quick]

About 0.5 Mpx/s on 2 CPU cores: the full stack takes 2-3 minutes.
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
import json, resource, sys, time, numpy as np
sys.path.insert(0, {bench!r})
from _common import nuclei_like
from napari_seglab.core.predict import iter_predict_image, load_model
lm = load_model({ckpt!r}, "cpu")
stack = np.empty(({planes}, {size}, {size}), np.uint16)
for z in range({planes}):  # plane by plane: no stack-sized float temporary in either process
    stack[z] = nuclei_like(({size}, {size}), seed=z)
tiles, seconds = 0, 0.0
if {predict}:
    t0 = time.perf_counter()
    gen = iter_predict_image(lm, stack, "ZYX", probabilities={probabilities})
    try:
        while True:
            ev = next(gen); tiles = max(tiles, getattr(ev, "tiles", 0))
    except StopIteration as fin:
        pred = fin.value
    seconds = time.perf_counter() - t0
    assert pred.labels.shape == stack.shape and not pred.stopped
print(json.dumps({{"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tiles": tiles,
                  "seconds": seconds}}))
"""


def measure(ckpt: Path, args, predict: bool) -> dict:
    code = CHILD.format(bench=str(Path(__file__).parent), ckpt=str(ckpt), planes=args.planes, size=args.size,
                        predict=predict, probabilities=args.probabilities)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--planes", type=int, default=64)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--probabilities", action="store_true", help="also keep the (K, Z, Y, X) probabilities")
    p.add_argument("--quick", action="store_true", help="8 planes of 512x512 (seconds, not minutes)")
    args = p.parse_args(argv)
    if args.quick:
        args.planes, args.size = 8, 512
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import random_unet_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = random_unet_checkpoint(Path(tmp) / "m.pt", encoder=args.encoder)
        base = measure(ckpt, args, predict=False)
        run = measure(ckpt, args, predict=True)
    gb = 2**30
    voxels = args.planes * args.size**2
    print(f"stack {args.planes}x{args.size}x{args.size} uint16 ({voxels * 2 / gb:.2f} GB), Unet-{args.encoder}, "
          f"{run['tiles']} tile(s) per plane, probabilities {'kept' if args.probabilities else 'off'}")
    print(f"predicted in {run['seconds']:.0f} s ({voxels / max(run['seconds'], 1e-9) / 1e6:.2f} Mpx/s)")
    print(f"baseline (torch + model + stack): {base['peak'] / gb:.2f} GB")
    print(f"peak RSS predicting the stack: {run['peak'] / gb:.2f} GB (goal < 3 GB); "
          f"ratio to baseline {run['peak'] / base['peak']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
