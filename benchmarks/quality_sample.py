"""Quality on the sample nuclei: seglab U-Net (instances labels) vs Otsu + watershed.

Two protocols, both in the same run:

* ``halves``: train on the left half of ``nuclei_train.tif`` for a fixed CPU
  time, predict the right half.
* ``unseen``: train on the whole 256x512 ``nuclei_train.tif`` and predict the
  unseen ``nuclei_test.tif`` (the issue's acceptance check).

Prints Dice and instance F1/AP at IoU 0.5 for seglab and for the baseline
computed on the same pixels; the last line is the AP@0.5 ratio seglab/baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import tifffile

from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import drive
from napari_seglab.core.objects import otsu_watershed
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train

ROOT = Path(__file__).resolve().parents[1] / "sample_data"


def run_protocol(name, train_img, train_lab, test_img, test_truth, args):
    cfg = TrainConfig(label_mode="instances", time_limit=args.seconds, epochs=None, device="cpu",
                      encoder=args.encoder, patch=args.patch, batch_size=args.batch_size, lr=args.lr)
    t0 = time.monotonic()
    result = drive(iter_train([train_img], [train_lab], cfg))
    t_train = time.monotonic() - t0
    pred = drive(iter_predict_image(load_model(result.checkpoint, "cpu"), test_img))
    ours = match_instances(pred.labels, test_truth)
    base = match_instances(otsu_watershed(test_img), test_truth)
    print(f"[{name}] trained {result.steps} steps in {t_train:.0f} s")
    for label, m in (("seglab", ours), ("otsu+watershed", base)):
        print(f"[{name}] {label:15s} dice {m['dice']:.3f}  f1@0.5 {m['f1_50']:.3f}  ap@0.5 {m['ap50']:.3f}"
              f"  ap@0.75 {m['ap75']:.3f}  objects {m['n_pred']}/{m['n_true']}")
    return ours, base


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="training time budget per protocol")
    p.add_argument("--protocol", choices=["halves", "unseen", "both"], default="both")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    img = tifffile.imread(ROOT / "nuclei_train.tif")
    lab = tifffile.imread(ROOT / "nuclei_train_instances.tif")
    results = []
    if args.protocol in ("halves", "both"):
        half = img.shape[1] // 2
        results.append(run_protocol("halves", img[:, :half], lab[:, :half], img[:, half:], lab[:, half:], args))
    if args.protocol in ("unseen", "both"):
        test = tifffile.imread(ROOT / "nuclei_test.tif")
        truth = tifffile.imread(ROOT / "nuclei_test_instances.tif")
        results.append(run_protocol("unseen", img, lab, test, truth, args))
    ours, base = results[-1]
    print(f"ap50 ratio seglab/otsu: {ours['ap50'] / max(base['ap50'], 1e-9):.2f}x "
          f"({ours['ap50']:.3f} vs {base['ap50']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
