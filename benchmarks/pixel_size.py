"""Pixel size end to end: a model trained at one pixel size predicts an image at half that size.

The DSB2018 nuclei image (from the StarDist wheel, see ``sparse_annotations.py``) is split in two
halves. A model learns the left half's dense instance labels, the image declared at
``--pixel-size`` µm per pixel (a fixed number of steps, one thread). The right half is then
predicted three ways:

- ``same``: as it is, at the training pixel size (the reference);
- ``half``: upsampled 2x (linear), declared at half the pixel size: prediction resamples it back
  to the model's pixel size by itself (``pixel_size=`` of ``iter_predict_image``);
- ``half, size unknown``: the same upsampled image without its pixel size (what SegLab did before
  pixel sizes: the objects reach the network twice as large as it learnt them).

AP@0.5 is scored against the right half's true nuclei (upsampled 2x, nearest, for the upsampled
image). The goal: ``half`` within 0.05 of ``same``. The last line prints the difference.

    PYTHONPATH=src python benchmarks/pixel_size.py [--steps 300] [--stardist-wheel PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))

from sparse_annotations import halves, load_image, scores  # noqa: E402

from napari_seglab.core.events import Message, drive  # noqa: E402
from napari_seglab.core.predict import iter_predict_image, load_model  # noqa: E402
from napari_seglab.core.train import TrainConfig, iter_train  # noqa: E402


def upsample(img: np.ndarray, inst: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The image upsampled ``factor`` times (linear; as a microscope at 1/factor the pixel size sees it) and
    its labels (nearest)."""
    big = ndi.zoom(img.astype(np.float32), factor, order=1, mode="nearest", grid_mode=True)
    return big.astype(img.dtype), ndi.zoom(inst, factor, order=0, mode="nearest", grid_mode=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (fixed, not timed)")
    p.add_argument("--pixel-size", type=float, default=0.65, help="µm per pixel declared for the training image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stardist-wheel", default=None)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    img, inst = load_image("dsb", args.stardist_wheel)
    tr_img, tr_inst, te_img, te_inst = halves(img, inst)
    px = args.pixel_size
    cfg = TrainConfig(label_mode="instances", device="cpu", seed=args.seed, threads=1, epochs=max(1, args.steps // 50),
                      steps_per_epoch=min(50, args.steps), time_limit=None)
    t0 = time.monotonic()
    result = drive(iter_train([tr_img], [tr_inst], cfg, pixel_sizes=[(px, px)]))
    print(f"trained {result.steps} steps in {time.monotonic() - t0:.0f} s; checkpoint pixel size "
          f"{result.checkpoint.info.pixel_size}, object scale {result.checkpoint.info.scale:g}", flush=True)
    model = load_model(result.checkpoint, "cpu", runtime="torch")
    big_img, big_inst = upsample(te_img, te_inst)
    runs = {"same": (te_img, te_inst, (px, px)), "half": (big_img, big_inst, (px / 2, px / 2)),
            "half, size unknown": (big_img, big_inst, None)}
    ap = {}
    for name, (image, truth, size) in runs.items():
        notes: list[str] = []
        t0 = time.monotonic()
        pred = drive(iter_predict_image(model, image, pixel_size=size),
                     lambda e, notes=notes: notes.append(e.text) if isinstance(e, Message) else None)
        s = scores(pred.labels, truth)
        ap[name] = float(s[1])
        print(f"{name:20s} {image.shape[0]}x{image.shape[1]}: Dice {s[0]:.3f}  AP@0.5 {s[1]:.3f}  "
              f"AP@0.75 {s[2]:.3f}  objects {s[3]:+.0%} vs truth  ({time.monotonic() - t0:.1f} s)"
              + (f"  [{'; '.join(notes)}]" if notes else ""), flush=True)
    diff = ap["half"] - ap["same"]
    print(f"AP@0.5 at half the pixel size minus at the training size: {diff:+.3f} "
          f"(goal: within 0.05; without the pixel size: {ap['half, size unknown'] - ap['same']:+.3f})")
    return 0 if abs(diff) <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
