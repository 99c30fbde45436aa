"""Which instance head separates touching nuclei best at an equal number of training steps?

Trains one small smp U-Net (resnet18, encoder depth 4, decoder 128-64-32-16)
per head and step budget, from scratch, with the same patches, batch, optimiser
and schedule, then predicts an unseen image and scores it with
``napari_seglab.core.evaluate.match_instances``:

- ``3class``: background / interior / boundary (CE + Dice), decoded by
  ``core.instances.instances_from_probabilities`` (today's product);
- ``flows``: foreground + centre-pointing flows (``core.flows``);
- ``distance``: foreground + normalised distance to the boundary (``core.flows``).

Data: the bundled sample (train ``nuclei_train.tif``, predict ``nuclei_test.tif``)
and a real DSB2018 nuclei image shipped in the StarDist wheel (train the left
half, predict the right half). The wheel is fetched with ``pip download --no-deps``
unless ``--stardist-wheel`` points at one.

Run pinned, as the machine is shared:

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/instance_heads.py --steps 150 400

Prints one row per (data, steps, head, seed), the decode-parameter sweep, and
last the ratios of each new head's AP@0.75 to the 3-class head's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.models import CheckpointMeta, ModelSpec, ce_dice
from napari_seglab.core.objects import _flows as flows
from napari_seglab.core.objects import boundary_targets, instances_from_probabilities
from napari_seglab.core.predict import predict_plane, wrap_model

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("3class", "flows", "distance")


def _norm(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1.0, 99.8])
    return ((img.astype(np.float32) - lo) / max(hi - lo, 1e-6))[None]


def sample_data():
    read = lambda name: tifffile.imread(ROOT / "sample_data" / name)  # noqa: E731
    return (read("nuclei_train.tif"), read("nuclei_train_instances.tif"),
            read("nuclei_test.tif"), read("nuclei_test_instances.tif"))


def stardist_wheel(path: str | None) -> Path:
    if path:
        return Path(path)
    cache = Path(tempfile.gettempdir()) / "seglab-bench-stardist"
    found = sorted(cache.glob("stardist-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        "stardist==0.9.2"], check=True)
        found = sorted(cache.glob("stardist-*.whl"))
    return found[-1]


def real_data(wheel: Path):
    """StarDist's bundled 2D nuclei image (a DSB2018 image) and mask: left half trains, right half tests."""
    with zipfile.ZipFile(wheel) as z:
        img = tifffile.imread(BytesIO(z.read("stardist/data/images/img2d.tif")))
        mask = tifffile.imread(BytesIO(z.read("stardist/data/images/mask2d.tif")))
    half = img.shape[1] // 2
    return img[:, :half], mask[:, :half], img[:, half:], mask[:, half:]


def build(n_out: int) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=n_out, encoder_depth=4,
                    decoder_channels=(128, 64, 32, 16))


def make_target(instances: np.ndarray, head: str) -> np.ndarray:
    """(K, Y, X) float32 target for the whole plane (computed before patches are cut)."""
    if head == "3class":
        return boundary_targets(instances).astype(np.float32)[None]
    return flows.targets(instances, mode="instances", kind=head)[0]


def draw_batch(image, target, head, rng, batch, patch):
    h, w = image.shape[1:]
    imgs, tgts = [], []
    for _ in range(batch):
        y0, x0 = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        im = image[:, y0:y0 + patch, x0:x0 + patch]
        tg = target[:, y0:y0 + patch, x0:x0 + patch]
        t, fy, fx = (bool(b) for b in rng.integers(0, 2, 3))
        im = flows.transform(im, transpose=t, flip_y=fy, flip_x=fx)
        tg = flows.transform(tg, transpose=t, flip_y=fy, flip_x=fx, kind="flows" if head == "flows" else None)
        im = im * rng.uniform(0.75, 1.3) + rng.uniform(-0.1, 0.1)
        imgs.append(np.ascontiguousarray(im, np.float32))
        tgts.append(np.ascontiguousarray(tg, np.float32))
    return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(tgts))


def loss_fn(out, tgt, head):
    if head == "3class":
        return ce_dice(out, tgt[:, 0].long())
    return flows.head_loss(out, tgt, torch.zeros(tgt[:, 0].shape, dtype=torch.bool), head)


def lr_factor(progress: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = (progress - warmup) / (1 - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, p)))


def train(image, instances, head, steps, seed, batch=8, patch=128, lr=3e-3):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, target = _norm(image), make_target(instances, head)
    model = build(3 if head == "3class" else flows.n_outputs(head))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step / steps)
        imgs, tgts = draw_batch(x, target, head, rng, batch, patch)
        loss = loss_fn(model(imgs), tgts, head)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), (time.perf_counter() - t0) / steps, float(loss.detach())


def raw_outputs(model, image, head, tile=256):
    """The network's raw outputs over the whole image, tiled and blended as the product predicts."""
    options = {} if head == "3class" else {"head": head}
    spec = ModelSpec(family="unet", arch="Unet", encoder="resnet18", n_classes=3 if head == "3class" else 2,
                     options=options)
    lm = wrap_model(model, CheckpointMeta(model=spec), torch.device("cpu"))
    return predict_plane(lm, _norm(image), tile=tile, overlap=0.25, raw=True)


def decode(raw, head, **kw):
    if head == "3class":
        return instances_from_probabilities(torch.softmax(torch.from_numpy(raw), 0).numpy(), **kw)
    return flows.decode(raw, head, **kw)


SWEEP = {
    "3class": [{}, {"split_seeds": False}],
    "flows": [{}, {"flow_threshold": 0.4}, {"flow_threshold": None}, {"threshold": -1.0}, {"n_steps": 100}],
    "distance": [{}, {"seeds": "cores", "core": 0.4}, {"seeds": "cores", "core": 0.5}, {"seeds": "cores", "core": 0.6}, {"h": 0.2},
                 {"threshold": -1.0}],
}


def score(pred, truth):
    r = match_instances(pred, truth, (0.5, 0.75))
    return r["ap50"], r["ap75"], r["dice"], r["n_pred"], r["n_true"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 400])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    ap.add_argument("--data", nargs="+", default=["sample", "real"], choices=["sample", "real"])
    ap.add_argument("--stardist-wheel", default=None, help="path to a stardist wheel (else pip download)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sets = {"sample": sample_data} | {"real": lambda: real_data(stardist_wheel(args.stardist_wheel))}
    rows, sweeps = [], []
    print(f"{'data':7} {'steps':>5} {'head':9} {'seed':>4} {'AP50':>6} {'AP75':>6} {'Dice':>6} {'n/true':>8} "
          f"{'s/step':>7} {'dec s/MP':>8}", flush=True)
    for name in args.data:
        tr_img, tr_ins, te_img, te_ins = sets[name]()
        mp = te_img.size / 1e6
        for steps in args.steps:
            for head in args.heads:
                for seed in args.seeds:
                    model, s_step, _ = train(tr_img, tr_ins, head, steps, seed)
                    raw = raw_outputs(model, te_img, head)
                    t0 = time.perf_counter()
                    pred = decode(raw, head)
                    dec = (time.perf_counter() - t0) / mp
                    ap50, ap75, dsc, n_pred, n_true = score(pred, te_ins)
                    rows.append((name, steps, head, seed, ap50, ap75, dsc))
                    print(f"{name:7} {steps:5d} {head:9} {seed:4d} {ap50:6.3f} {ap75:6.3f} {dsc:6.3f} "
                          f"{n_pred:>3}/{n_true:<4} {s_step:7.2f} {dec:8.2f}", flush=True)
                    for kw in SWEEP[head][1:]:
                        sweeps.append((name, steps, head, seed, kw, *score(decode(raw, head, **kw), te_ins)[:3]))
    print("\ndecode-parameter sweep (tuned on the test image: optimistic, for choosing defaults only)")
    for name, steps, head, seed, kw, ap50, ap75, dsc in sweeps:
        print(f"{name:7} {steps:5d} {head:9} {seed:4d} {str(kw):38} AP50 {ap50:.3f} AP75 {ap75:.3f} Dice {dsc:.3f}")
    print("\nmean over seeds, and ratios to the 3-class head (AP50 / AP75 / Dice)")
    for name in args.data:
        for steps in args.steps:
            base = None
            for head in args.heads:
                vals = np.array([r[4:] for r in rows if r[:3] == (name, steps, head)])
                m = vals.mean(0)
                base = m if head == "3class" else base
                ratio = "" if base is None or head == "3class" else \
                    " ratio " + " / ".join(f"{a / max(b, 1e-9):.2f}" for a, b in zip(m, base, strict=True))
                print(f"{name:7} {steps:5d} {head:9} AP50 {m[0]:.3f} AP75 {m[1]:.3f} Dice {m[2]:.3f} "
                      f"(spread AP75 {np.ptp(vals[:, 1]):.3f}){ratio}")


if __name__ == "__main__":
    main()
