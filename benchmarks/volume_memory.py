"""Peak resident memory of 3D prediction (the orthogonal method, flows head) on the CPU: whole volume vs 3D blocks.

Each variant runs in a fresh subprocess that loads torch, the model and the stack, predicts the stack
with ``iter_predict_volume`` and reports its peak RSS (``ru_maxrss``) and wall time. The baseline process
only loads. Variants: ``whole`` (``block=0``: the volume at once, as before the 3D blocks) and
``blocked`` (3D blocks of the library's default side), or a number: blocks of that side. Goal
(issue 23): a 64x1024x1024 stack peaks below 3 GB. The stack is a lattice of blob nuclei with noise (content matters for the decoding's memory:
every foreground voxel follows the flows).

``--network unet`` (default): a randomly initialised smp U-Net with the flows head, the same in every
process (memory does not depend on training), its foreground logit shifted per plane so that 30 % of each
plane is foreground. ``--network stand-in``: a network
of a few convolutions whose foreground is the bright blobs and whose flows point up the brightness, for a
realistic foreground fraction in a fraction of the time. The last line prints the blocked peak over the whole
volume's (or over the baseline when ``whole`` is not run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from napari_seglab.core.device import precision_for
from napari_seglab.core.events import Message
from napari_seglab.core.models import CheckpointMeta, ModelSpec, build_model
from napari_seglab.core.objects._flows import FLOW_SCALE
from napari_seglab.core.predict._image import LoadedModel
from napari_seglab.core.predict._volume import iter_predict_volume


class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        k = torch.tensor([[[[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]]], [[[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]]]])
        self.register_buffer("kernel", k)

    def forward(self, x):
        g = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel)
        g = g / (g.pow(2).sum(1, keepdim=True).sqrt() + 1e-3)
        return torch.cat([20 * (x - 0.3), FLOW_SCALE * g], 1)


class Thirty(torch.nn.Module):
    # the random U-Net's foreground logit shifted per plane so that 30 % of it is foreground (a realistic load)
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        out[:, :1] -= torch.quantile(out[:, :1].flatten(1).float(), 0.7, dim=1).view(-1, 1, 1, 1)
        return out


torch.manual_seed(0)  # every variant's process builds the same random network
spec = ModelSpec(family="unet", arch="Unet", encoder={encoder!r}, n_classes=2, options={{"head": "flows"}})
meta = CheckpointMeta.coerce({{"model": spec.to_dict(), "label_mode": "instances", "n_classes": 2,
                              "normalization": {{"per_image": True}}, "object_area": {area}}})
net = StandIn() if {network!r} == "stand-in" else Thirty(build_model(spec)[0])
net.eval()
cpu = torch.device("cpu")
lm = LoadedModel(net, meta, cpu, precision_for(cpu))
image = np.load({image!r})
out = {{"objects": 0, "seconds": 0.0, "notes": []}}
BLOCK = {block!r}
if BLOCK is not None:
    t0 = time.perf_counter()
    gen = iter_predict_volume(lm, image, "ZYX", anisotropy={anisotropy}, block=BLOCK)
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, Message):
                out["notes"].append(ev.text)
    except StopIteration as fin:
        pred = fin.value
    out["seconds"] = time.perf_counter() - t0
    out["objects"] = int(pred.labels.max())
out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if BLOCK is not None and {labels!r}:
    np.save({labels!r}, pred.labels)
print(json.dumps(out))
"""


def blob_lattice(shape, anisotropy: float, period: float = 32.0, seed: int = 0):
    """(Z, Y, X) uint16: blobs on a lattice of ``period`` pixels (z by the anisotropy), with noise, built plane by plane."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z, y, x = shape
    ky = np.cos(2 * np.pi * np.arange(y) / period).astype(np.float32)
    kx = np.cos(2 * np.pi * np.arange(x) / period).astype(np.float32)
    plane = np.outer(np.maximum(ky, 0), np.maximum(kx, 0))
    out = np.empty(shape, np.uint16)
    for i in range(z):
        kz = max(0.0, float(np.cos(2 * np.pi * i * anisotropy / period)))
        noisy = 200 + 1000 * kz * plane + rng.normal(0, 30, (y, x)).astype(np.float32)
        out[i] = np.clip(noisy, 0, 65535)
    return out


def measure(image: Path, args, block, labels: Path | None = None) -> dict:
    code = CHILD.format(encoder=args.encoder, network=args.network, image=str(image), block=block,
                        anisotropy=args.anisotropy, area=args.object_area, labels=str(labels) if labels else "")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(32, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--anisotropy", type=float, default=2.0)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--network", choices=("unet", "stand-in"), default="unet")
    p.add_argument("--object-area", type=float, default=100.0, help="the typical object's area the checkpoint records")
    p.add_argument("--variants", default="whole,blocked", help="comma-separated: whole, blocked or a block side")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import numpy as np

    variants = args.variants.split(",")
    gb = 2**30
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "stack.npy"
        np.save(image, blob_lattice(tuple(args.shape), args.anisotropy))
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        base = measure(image, args, None)
        from napari_seglab.core.predict._volume_blocks import DEFAULT_BLOCK

        sides = {v: 0 if v == "whole" else DEFAULT_BLOCK if v == "blocked" else int(v) for v in variants}
        runs = {v: measure(image, args, side, Path(tmp) / f"{v}.npy") for v, side in sides.items()}
        if "whole" in runs:  # the labels of each blocked variant against the whole volume's (ids included)
            whole = np.load(Path(tmp) / "whole.npy")
            for v in runs:
                if v != "whole":
                    runs[v]["differ"] = int((np.load(Path(tmp) / f"{v}.npy") != whole).sum())
    z, y, x = args.shape
    print(f"stack {z}x{y}x{x} uint16, anisotropy {args.anisotropy:g}, {args.network} ({args.encoder}), flows head, "
          f"{args.threads} thread(s), load average {load:.1f} at the start, {time.perf_counter() - t0:.0f} s in all")
    print(f"baseline (torch + model + stack): {base['peak'] / gb:.2f} GB")
    for v, r in runs.items():
        differ = f", {r['differ']} voxels differ from whole" if "differ" in r else ""
        print(f"{v:8s} peak RSS {r['peak'] / gb:.2f} GB, {r['seconds']:.0f} s, {r['objects']} objects{differ}; "
              + "; ".join(r["notes"][:1]))
    blocked = [v for v in runs if v != "whole"]
    if "whole" in runs and blocked:
        b = runs[blocked[0]]
        print(f"peak RSS blocked ({sides[blocked[0]]}) / whole: {b['peak'] / runs['whole']['peak']:.2f}x "
              f"({b['peak'] / gb:.2f} GB against {runs['whole']['peak'] / gb:.2f} GB; goal < 3 GB at 64x1024x1024)")
    else:
        v, r = next(iter(runs.items()))
        print(f"peak RSS {v} / baseline: {r['peak'] / base['peak']:.2f}x ({r['peak'] / gb:.2f} GB; goal < 3 GB "
              "at 64x1024x1024)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
