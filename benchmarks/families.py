"""Every model family with its defaults, at the CPU budgets, on the sample and on a real nuclei image.

Each family trains with ``TrainConfig``'s defaults (what ``seglab train
--family F --time-limit T`` does) for a wall-clock budget on the training
half of an image, then predicts the other half:

- ``sample``: the bundled synthetic nuclei (``nuclei_train.tif``; its left
  half trains, its right half is scored);
- ``dsb``: the DSB2018 nuclei image in the StarDist 0.9.2 wheel (left half /
  right half, 57 nuclei scored; ``pip download stardist==0.9.2`` once, or
  ``--stardist-wheel``).

Label modes: ``instances`` (the dense mask) for every family; for the dense
families also ``scribbles`` (strokes from ``core.synthetic.make_scribbles``),
``objects`` (a quarter of the nuclei painted whole, at random, plus the
background strokes) and ``classes`` (the foreground as class 1; its objects
are the connected components split by a watershed, as for scribbles). Scores: foreground Dice, AP@0.5 and AP@0.75 of the objects (DSB2018
convention, ``match_instances``) for the families that give masks; box AP@0.5
and AP@0.75 (area under the precision/recall curve) for every object family,
from the boxes of its detections (scored down to 0.05) or of the U-Net's
objects; the count error; and the training steps per second.

    python benchmarks/families.py                                    # the whole grid: hours
    python benchmarks/families.py --families fcn --budgets 90 --images dsb
    python benchmarks/families.py --families maskrcnn --budgets 600 --images dsb --arch maskrcnn_resnet50_fpn

Prints one line per run, a table, and last each run's AP@0.5 (box AP@0.5
for the box families) as a ratio of the default U-Net's at the same budget on
the same image.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sparse_annotations import annotate, chosen_nuclei, halves, load_image

from napari_seglab.core.evaluate import box_scores, match_instances
from napari_seglab.core.events import drive
from napari_seglab.core.labels import label_box_rows
from napari_seglab.core.models import get_family
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.synthetic import make_scribbles
from napari_seglab.core.train import TrainConfig, iter_train

FAMILIES = ("unet", "fcn", "maskrcnn", "retinanet", "fcos", "fasterrcnn")
#: detections down to this score count in the box AP (the precision/recall curve needs the weak ones)
AP_SCORE_FLOOR = 0.05


def modes_of(family: str, asked: list[str]) -> list[str]:
    entry = get_family(family)
    allowed = entry.label_modes or ("instances", "scribbles", "objects", "classes")
    return [m for m in asked if m in allowed]


def run(family: str, mode: str, tr_img, tr_inst, te_img, te_inst, budget: float, seed: int, **options) -> dict:
    if mode == "objects":  # a quarter of the nuclei painted whole, plus background strokes
        labels = annotate("objects", tr_inst, chosen_nuclei(tr_inst, 0.25, "random", seed), seed)
    elif mode == "classes":
        labels = (tr_inst > 0).astype(np.uint8)
    else:
        labels = tr_inst if mode == "instances" else make_scribbles(tr_inst, seed=seed)
    config = TrainConfig(family=family, label_mode=mode, time_limit=budget, epochs=None, device="cpu", seed=seed,
                         **options)
    t0 = time.monotonic()
    result = drive(iter_train([tr_img], [labels], config))
    wall = time.monotonic() - t0
    entry = get_family(family)
    model = load_model(result.checkpoint, "cpu")
    row = {"family": family, "mode": mode, "budget": budget, "seed": seed, "steps": result.steps,
           "steps_s": result.steps / wall, "arch": options.get("arch") or entry.default_arch,
           "dice": np.nan, "ap50": np.nan, "ap75": np.nan, "box50": np.nan, "box75": np.nan, "count": np.nan}
    truth_boxes = label_box_rows(te_inst, "YX", "instances")
    n_true = len(truth_boxes)
    if entry.kind.dense:
        pred = drive(iter_predict_image(model, te_img, split_instances=mode in ("scribbles", "classes")))
        m = match_instances(pred.labels, te_inst)
        rows = label_box_rows(pred.labels, "YX", "instances")
        row.update(dice=m["dice"], ap50=m["ap50"], ap75=m["ap75"], count=(len(rows) - n_true) / n_true)
    else:
        pred = drive(iter_predict_image(model, te_img, score_threshold=AP_SCORE_FLOOR))
        rows = pred.boxes
        kept = [r for r in rows if r["score"] >= 0.5]
        row["count"] = (len(kept) - n_true) / n_true
        if entry.kind.instances:  # masks at the default score threshold, as the user gets them
            labels = drive(iter_predict_image(model, te_img)).labels
            m = match_instances(labels, te_inst)
            row.update(dice=m["dice"], ap50=m["ap50"], ap75=m["ap75"])
    b = box_scores(rows, truth_boxes, score_threshold=0.5)
    row.update(box50=b["ap50"], box75=b["ap75"])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--modes", nargs="+", default=["instances", "scribbles"])
    p.add_argument("--budgets", type=float, nargs="+", default=[60, 120, 600])
    p.add_argument("--images", nargs="+", default=["sample", "dsb"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arch", default=None, help="an architecture instead of the family's default (one family)")
    p.add_argument("--instance-head", default=None, help="an instance head instead of the default")
    p.add_argument("--lr", type=float, default=None, help="a learning rate instead of the family's")
    p.add_argument("--no-baseline", action="store_true", help="skip the default U-Net runs the ratios need")
    p.add_argument("--stardist-wheel", default=None)
    args = p.parse_args(argv)
    options = {k: v for k, v in (("arch", args.arch), ("instance_head", args.instance_head), ("lr", args.lr)) if v}
    if options.get("arch") and len(args.families) != 1:
        p.error("--arch names the architecture of one family")
    plan = [(f, options, modes_of(f, args.modes)) for f in args.families]
    if not args.no_baseline and "unet" not in args.families:
        plan.insert(0, ("unet", {}, ["instances"]))  # the baseline of the ratios
    rows = []
    for name in args.images:
        img, inst = load_image(name, args.stardist_wheel)
        tr_img, tr_inst, te_img, te_inst = halves(img, inst)
        for budget in args.budgets:
            for family, own, modes in plan:
                for mode in modes:
                    for seed in args.seeds:
                        row = {"image": name, **run(family, mode, tr_img, tr_inst, te_img, te_inst, budget, seed,
                                                    **own)}
                        rows.append(row)
                        print(f"{name} {family} {row['arch']} {mode} {budget:.0f}s seed {seed}: "
                              f"Dice {row['dice']:.3f} AP50 {row['ap50']:.3f} AP75 {row['ap75']:.3f} "
                              f"box AP50 {row['box50']:.3f} box AP75 {row['box75']:.3f} count {row['count']:+.2f} "
                              f"steps {row['steps']} ({row['steps_s']:.2f}/s)", flush=True)
    print()
    print(f"{'image':7} {'family':10} {'arch':26} {'mode':9} {'budget':>6} {'Dice':>6} {'AP50':>6} {'AP75':>6} "
          f"{'boxAP50':>7} {'boxAP75':>7} {'count':>6} {'steps/s':>7}")
    for r in rows:
        print(f"{r['image']:7} {r['family']:10} {r['arch']:26} {r['mode']:9} {r['budget']:6.0f} {r['dice']:6.3f} "
              f"{r['ap50']:6.3f} {r['ap75']:6.3f} {r['box50']:7.3f} {r['box75']:7.3f} {r['count']:+6.2f} "
              f"{r['steps_s']:7.2f}")
    base = {(r["image"], r["budget"]): r for r in rows if r["family"] == "unet" and r["mode"] == "instances"
            and r["seed"] == args.seeds[0]}
    ratios = []
    for r in rows:
        b = base.get((r["image"], r["budget"]))
        if b is None or r is b:
            continue
        key = "box50" if np.isnan(r["ap50"]) else "ap50"
        ratios.append(f"{r['image']} {r['family']} {r['mode']} {r['budget']:.0f}s: "
                      f"{r[key] / max(b[key], 1e-9):.2f}x" + (" (box)" if key == "box50" else ""))
    print("AP@0.5 / default U-Net's: " + ("; ".join(ratios) if ratios else "no baseline run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
