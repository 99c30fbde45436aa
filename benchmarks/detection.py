"""Box detectors against Mask R-CNN and U-Net + watershed boxes, for one training budget on this machine.

Every family trains on ``sample_data/nuclei_train.tif`` for the same wall-clock
budget (set-up included) with its defaults: the box detectors (``retinanet``,
``fcos``, ``fasterrcnn``) from the boxes of ``nuclei_boxes.csv`` (each
object's box), Mask R-CNN and the default U-Net (the baseline) from the dense
instance mask. Each then predicts ``nuclei_test.tif``; the boxes are scored
against the test objects' boxes: AP@0.5, AP@0.75, the count error (boxes
scoring >= 0.5 minus true objects) and the prediction time per megapixel. The
U-Net's boxes are those of its predicted objects (score 1), the baseline a
detector has to beat. Prints a table and, last, each detector's AP@0.5 as a
ratio of the U-Net's.

    python benchmarks/detection.py                      # 300 s per family, seed 0
    python benchmarks/detection.py --budget 120 --families retinanet unet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_seglab.core.evaluate import box_scores
from napari_seglab.core.events import drive
from napari_seglab.core.labels import label_box_rows, read_boxes_csv
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
FAMILIES = ("retinanet", "fcos", "fasterrcnn", "maskrcnn", "unet")


def run_family(family: str, budget: float, seed: int, device: str) -> dict:
    image = tifffile.imread(ROOT / "nuclei_train.tif")
    instances = tifffile.imread(ROOT / "nuclei_train_instances.tif")
    test = tifffile.imread(ROOT / "nuclei_test.tif")
    truth = label_box_rows(tifffile.imread(ROOT / "nuclei_test_instances.tif"), "YX", "instances")
    boxes = family in ("retinanet", "fcos", "fasterrcnn")
    config = TrainConfig(family=family, label_mode="boxes" if boxes else "instances", time_limit=budget,
                         device=device, seed=seed)
    t0 = time.monotonic()
    if boxes:
        result = drive(iter_train([image], [None], config, boxes=[read_boxes_csv(ROOT / "nuclei_boxes.csv")]))
    else:
        result = drive(iter_train([image], [instances], config))
    wall = time.monotonic() - t0
    model = load_model(result.checkpoint, device)
    t1 = time.monotonic()
    pred = drive(iter_predict_image(model, test))
    seconds_per_mp = (time.monotonic() - t1) / (test.size / 1e6)
    rows = pred.boxes if family != "unet" else label_box_rows(pred.labels, "YX", "instances")
    scores = box_scores(rows, truth, score_threshold=0.5)
    return {"family": family, "steps": result.steps, "wall": wall, "s_per_mp": seconds_per_mp, **scores}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per family")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    runs = []
    for family in args.families:
        for seed in args.seeds:
            r = run_family(family, args.budget, seed, args.device)
            runs.append(r)
            print(f"  {family:10s} seed {seed}: ap50 {r['ap50']:.3f} ap75 {r['ap75']:.3f} count error "
                  f"{r['count_error']:+d} of {r['n_true']} steps {r['steps']} wall {r['wall']:.0f}s "
                  f"predict {r['s_per_mp']:.1f} s/MP", flush=True)
    print(f"\nbudget {args.budget:g} s per family, seeds {args.seeds}")
    print("family      ap50          ap75    count error  steps  predict s/MP")
    means = {}
    for family in args.families:
        rs = [r for r in runs if r["family"] == family]
        ap50 = np.array([r["ap50"] for r in rs])
        means[family] = ap50.mean()
        print(f"{family:10s}  {ap50.mean():.3f}±{ap50.std():.3f}  {np.mean([r['ap75'] for r in rs]):.3f}  "
              f"{np.mean([r['count_error'] for r in rs]):+8.1f}  {np.mean([r['steps'] for r in rs]):6.0f}  "
              f"{np.mean([r['s_per_mp'] for r in rs]):8.1f}")
    if "unet" in means:
        base = max(means["unet"], 1e-9)
        print("box AP@0.5 / U-Net boxes: " + ", ".join(f"{f} {m / base:.2f}x" for f, m in means.items() if f != "unet"))


if __name__ == "__main__":
    main()
