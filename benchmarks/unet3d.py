"""A 3D U-Net against SegLab's 2D network in three views, at the same wall-clock budget.

The issue's third option for 3D objects: a network that sees the stack in 3D. A small 3D U-Net in
plain torch (3 levels, 16-32-64 channels, like the 2D preset's width) is trained from scratch on the
training part of a stack, resampled to cubic voxels (z stretched by the anisotropy), with SegLab's flows
in 3D as target: the foreground (BCE) and, inside each nucleus, the unit vector up the gradient of its
smoothed 3D distance transform (MSE), as ``decode_flows_3d`` follows them. Patches of 32^3 voxels,
batch 4, flips (a flipped axis negates its flow component), Adam 3e-3. The unseen part is predicted in
one pass and decoded by SegLab's own 3D flows decoder, so only the network differs.

The baseline, in the same run: SegLab's default for a stack (a 2D flows U-Net trained on the stack's YX
and ZX/ZY planes, decoded from its three views: ``quality_3d.py``'s recipe), trained for the same
budget (``--cache`` reuses a model of ``quality_3d.py --cache`` of the same budget and seed).

    OMP_NUM_THREADS=1 python benchmarks/unet3d.py --budget 600 --seed 0 [--data real synthetic]

Prints 3D AP@0.5 / AP@0.75 / Dice / objects for both, and last the AP@0.5 ratio 3D U-Net / SegLab.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from quality_3d import datasets, predict, row, score, train  # noqa: E402

from napari_seglab.core.objects._flows import FLOW_SCALE  # noqa: E402
from napari_seglab.core.objects._volume import decode_flows_3d  # noqa: E402

PATCH = 32


def cubic(volume: np.ndarray, anisotropy: float, labels: bool = False) -> np.ndarray:
    """A (Z, Y, X) stack with z stretched by ``anisotropy`` (nearest for labels, linear for images)."""
    return ndi.zoom(volume, (anisotropy, 1, 1), order=0 if labels else 1, grid_mode=True, mode="nearest")


def flows3d(labels: np.ndarray) -> np.ndarray:
    """(3, Z, Y, X) unit vectors (dz, dy, dx) up each object's smoothed distance transform; 0 outside."""
    out = np.zeros((3, *labels.shape), np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(sl, labels.shape, strict=True))
        inside = labels[box] == i
        d = ndi.gaussian_filter(ndi.distance_transform_edt(inside).astype(np.float32), 1.0)
        g = np.stack(np.gradient(d))
        g /= np.maximum(np.linalg.norm(g, axis=0), 1e-6)
        for c in range(3):
            out[c][box][inside] = g[c][inside]
    return out


def normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (1, 99.8))
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)


class UNet3D(nn.Module):
    def __init__(self, widths=(16, 32, 64), out=4):
        super().__init__()

        def block(a, b):
            return nn.Sequential(nn.Conv3d(a, b, 3, padding=1), nn.BatchNorm3d(b), nn.ReLU(inplace=True),
                                 nn.Conv3d(b, b, 3, padding=1), nn.BatchNorm3d(b), nn.ReLU(inplace=True))

        self.down = nn.ModuleList([block(1, widths[0]), block(widths[0], widths[1]), block(widths[1], widths[2])])
        self.up = nn.ModuleList([block(widths[2] + widths[1], widths[1]), block(widths[1] + widths[0], widths[0])])
        self.head = nn.Conv3d(widths[0], out, 1)

    def forward(self, x):
        skips = []
        for i, b in enumerate(self.down):
            x = b(x if i == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        for b, s in zip(self.up, reversed(skips[:-1]), strict=True):
            x = b(torch.cat([F.interpolate(x, size=s.shape[2:], mode="trilinear", align_corners=False), s], 1))
        return self.head(x)


def pad_to(volume: np.ndarray, size: int) -> np.ndarray:
    return np.pad(volume, [(0, max(0, size - n)) for n in volume.shape[-3:]] if volume.ndim == 3 else
                  [(0, 0)] + [(0, max(0, size - n)) for n in volume.shape[-3:]], mode="constant")


def train_unet3d(img: np.ndarray, lab: np.ndarray, anisotropy: float, budget: float, seed: int):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x = pad_to(normalise(cubic(img, anisotropy)), PATCH)
    y = cubic(lab, anisotropy, labels=True)
    fg = pad_to((y > 0).astype(np.float32), PATCH)
    fl = pad_to(flows3d(y), PATCH)
    net = UNet3D()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    t0, steps = time.monotonic(), 0
    while time.monotonic() - t0 < budget:
        xs, fs, ls = [], [], []
        for _ in range(4):
            o = [rng.integers(0, n - PATCH + 1) for n in x.shape]
            sl = tuple(slice(a, a + PATCH) for a in o)
            px, pf, pl = x[sl], fg[sl], fl[(slice(None), *sl)].copy()
            for ax in range(3):
                if rng.random() < 0.5:
                    px, pf, pl = np.flip(px, ax), np.flip(pf, ax), np.flip(pl, ax + 1)
                    pl[ax] *= -1
            px = px * rng.uniform(0.75, 1.3)
            xs.append(px.copy())
            fs.append(pf.copy())
            ls.append(pl.copy())
        xb = torch.from_numpy(np.stack(xs))[:, None]
        fb = torch.from_numpy(np.stack(fs))
        lb = torch.from_numpy(np.stack(ls))
        out = net(xb)
        loss = F.binary_cross_entropy_with_logits(out[:, 0], fb)
        loss = loss + 5.0 * F.mse_loss(out[:, 1:] * fb[:, None], lb * fb[:, None])  # unit flows inside
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net, steps, time.monotonic() - t0


def predict_unet3d(net: UNet3D, img: np.ndarray, anisotropy: float) -> tuple[np.ndarray, float]:
    t0 = time.monotonic()
    x = normalise(cubic(img, anisotropy))
    shape = x.shape
    size = [-(-n // 4) * 4 for n in shape]
    xp = np.pad(x, [(0, s - n) for s, n in zip(size, shape, strict=True)], mode="reflect")
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(xp)[None, None])[0].numpy()[:, :shape[0], :shape[1], :shape[2]]
    out[1:] *= FLOW_SCALE  # the decoder's units
    labels = decode_flows_3d(out)
    # back to the stack's planes: the middle row of each plane's stretch
    z = np.minimum(((np.arange(img.shape[0]) + 0.5) * anisotropy).astype(int), labels.shape[0] - 1)
    return labels[z], time.monotonic() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", nargs="+", default=["real"])
    p.add_argument("--stardist-wheel")
    p.add_argument("--cache", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = datasets(args.stardist_wheel)
    ratios = []
    for name in args.data:
        if name not in data:
            continue
        img, lab, test, truth, aniso = data[name]
        net, steps, secs = train_unet3d(img, lab, aniso, args.budget, args.seed)
        print(f"{name:9s} unet3d   trained {steps} steps in {secs:.0f} s", flush=True)
        pred, psecs = predict_unet3d(net, test, aniso)
        m3 = score(pred, truth, split=name == "real")
        row(name, "unet3d", "3D", m3, psecs)
        model, steps2, secs2 = train(img, lab, "flows", 150, args.seed, cache=args.cache, tag=name, budget=args.budget,
                                     anisotropy=aniso)
        print(f"{name:9s} seglab   " + (f"trained {steps2} steps in {secs2:.0f} s" if steps2 is not None
                                        else f"model from {args.cache}"), flush=True)
        pred2, psecs2 = predict(model, test, aniso, "orthogonal")
        m2 = score(pred2, truth, split=name == "real")
        row(name, "flows", "orthogonal", m2, psecs2)
        ratios.append((name, m3["ap50"] / m2["ap50"] if m2["ap50"] else float("nan")))
    for name, r in ratios:
        print(f"ap50 ratio 3D U-Net / SegLab orthogonal [{name}]: {r:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
