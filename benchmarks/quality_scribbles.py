"""Sparse scribbles: seglab vs the random-forest pixel classifier (the ilastik approach).

Two protocols: *halves* (the issue's): on the left half of the sample image,
the same scribbles train

* seglab: a U-Net on ``scribbles`` labels for a fixed CPU time;
* RF: scikit-image's ``fit_segmenter`` (a random forest on
  ``multiscale_basic_features``), which is how ilastik classifies pixels.

Both predict the right half. *unseen*: both train on the scribbles of the
whole sample image (enough strokes for seglab's validation hold-out) and
predict the unseen ``nuclei_test.tif``. Foreground becomes objects the same
way for both (``instances_from_foreground``: connected components split by a distance
watershed). Prints Dice and instance F1/AP at IoU 0.5 for both; the last line
is the AP@0.5 and Dice ratios seglab/RF (goal: seglab wins on both).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import random_forest_foreground

from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import Message, collect, drive
from napari_seglab.core.objects import instances_from_foreground
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train

ROOT = Path(__file__).resolve().parents[1] / "sample_data"


def random_forest(train_img, scribbles, test_img, seed=0):
    return random_forest_foreground(train_img, scribbles, test_img, seed)  # scribble value 2 = nucleus


def report(name, fg, truth):
    inst = instances_from_foreground(fg.astype(np.float32))
    m = match_instances(inst, truth)
    print(f"{name:8s} dice {m['dice']:.3f}  f1@0.5 {m['f1_50']:.3f}  ap@0.5 {m['ap50']:.3f}  "
          f"objects {m['n_pred']}/{m['n_true']}")
    return m


def compare(name, train_img, train_scrib, test_img, test_truth, args) -> tuple[dict, dict]:
    print(f"[{name}] scribbles: {np.count_nonzero(train_scrib)} annotated pixels "
          f"({np.count_nonzero(train_scrib) / train_scrib.size:.1%}) on {train_scrib.shape}; "
          f"predicting {test_img.shape}")
    t0 = time.monotonic()
    rf_fg = random_forest(train_img, train_scrib, test_img)
    t_rf = time.monotonic() - t0
    cfg = TrainConfig(label_mode="scribbles", time_limit=args.seconds, epochs=None, device="cpu",
                      encoder=args.encoder)
    t0 = time.monotonic()
    events, result = collect(iter_train([train_img], [train_scrib], cfg))
    t_ours = time.monotonic() - t0
    held = [e.text for e in events if isinstance(e, Message) and ("validation" in e.text)]
    pred = drive(iter_predict_image(load_model(result.checkpoint, "cpu"), test_img, probabilities=True))
    ours_fg = pred.probabilities[1] > 0.5
    print(f"[{name}] seglab trained {result.steps} steps in {t_ours:.0f} s ({'; '.join(held)}); "
          f"random forest fit+predict in {t_rf:.0f} s")
    return report("seglab", ours_fg, test_truth), report("RF", rf_fg, test_truth)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--protocol", choices=("halves", "unseen", "both"), default="both")
    args = p.parse_args(argv)
    img = tifffile.imread(ROOT / "nuclei_train.tif")
    truth = tifffile.imread(ROOT / "nuclei_train_instances.tif")
    scrib = tifffile.imread(ROOT / "nuclei_train_scribbles.tif")
    half = img.shape[1] // 2
    runs = {}
    if args.protocol in ("halves", "both"):
        runs["halves"] = compare("halves", img[:, :half], scrib[:, :half], img[:, half:], truth[:, half:], args)
    if args.protocol in ("unseen", "both"):
        test = tifffile.imread(ROOT / "nuclei_test.tif")
        test_truth = tifffile.imread(ROOT / "nuclei_test_instances.tif")
        runs["unseen"] = compare("unseen", img, scrib, test, test_truth, args)
    print("seglab/RF: " + "; ".join(
        f"{name} ap@0.5 {ours['ap50'] / max(rf['ap50'], 1e-9):.2f}x, dice {ours['dice'] / max(rf['dice'], 1e-9):.2f}x"
        for name, (ours, rf) in runs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
