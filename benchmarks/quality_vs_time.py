"""Quality against training time on a 2-core CPU: seglab vs a random forest and Otsu + watershed.

For each annotation mode (dense ``instances``, sparse ``scribbles``, partially
annotated ``objects``: a few whole nuclei plus background strokes), each
protocol (*halves*: train on the left half of ``nuclei_train.tif``, predict
the right half; *unseen*: train on all of it, predict ``nuclei_test.tif``) and
each budget (30, 60, 120 s, set-up included), seglab trains with its defaults
and predicts; the random forest (scikit-image multiscale features +
scikit-learn RandomForestClassifier, the ilastik approach) learns from the same
annotation, and Otsu + watershed needs none. Objects come from seglab's own
decoding for instance modes; for the semantic ones from the product's
``split_instances`` (the foreground snapped to the image's edges, then split,
see ``core/refine.py``). The forest's foreground is split plainly
(``instances_from_foreground``, as an ilastik-style pipeline would) and, as a
second baseline, after the same edge snapping ("RF+snap"). Prints a table of Dice and AP@0.5 (mean
and spread over seeds), steps per second for each preset and, last, the
ratios seglab / forest per mode, protocol and budget.

    python benchmarks/quality_vs_time.py                     # the full grid (about 1 hour)
    python benchmarks/quality_vs_time.py --budgets 60 --seeds 0 --modes instances

``--instance-head boundary flows`` trains each instance head in turn (instances
and objects modes; the table gains a head column). ``--protocols dsb`` adds a
real DSB2018 nuclei image (the one bundled in the StarDist 0.9.2 wheel; left
half trains, right half is predicted; background strokes for the objects mode
come from ``core.synthetic.make_scribbles``). ``--no-baselines`` skips the
forest and Otsu.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import random_forest_foreground
from scipy import ndimage as ndi

from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import drive
from napari_seglab.core.labels import is_instance_mode
from napari_seglab.core.objects import (
    SPLIT_THRESHOLD,
    instances_from_foreground,
    otsu_watershed,
    snap_to_edges,
)
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train

ROOT = Path(__file__).resolve().parents[1] / "sample_data"
MODES = ("instances", "scribbles", "objects")


def partial_objects(instances: np.ndarray, scribbles: np.ndarray, n: int = 10, seed: int = 5) -> np.ndarray:
    """A user's partial annotation: ``n`` whole nuclei (ids 2..) plus the background strokes (1)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(instances)
    ids = ids[ids > 0]
    sl = ndi.find_objects(instances)
    inner = [i for i in ids if sl[i - 1] is not None and sl[i - 1][0].start > 0 and sl[i - 1][1].start > 0
             and sl[i - 1][0].stop < instances.shape[0] and sl[i - 1][1].stop < instances.shape[1]]
    chosen = rng.choice(inner, size=min(n, len(inner)), replace=False)
    out = np.where(scribbles == 1, 1, 0).astype(np.uint16)
    for k, i in enumerate(chosen):
        out[instances == i] = k + 2
    return out


def annotation(mode: str, instances: np.ndarray, scribbles: np.ndarray) -> np.ndarray:
    if mode == "instances":
        return instances
    if mode == "scribbles":
        return scribbles
    return partial_objects(instances, scribbles)


def rf_labels(mode: str, ann: np.ndarray) -> np.ndarray:
    """The forest's training labels: 1 = background, 2 = nucleus, 0 = not annotated."""
    if mode == "instances":
        return np.where(ann > 0, 2, 1).astype(np.uint8)
    if mode == "scribbles":
        return ann.astype(np.uint8)
    return np.where(ann >= 2, 2, ann).astype(np.uint8)


def random_forest(train_img, labels, test_img, seed=0):
    """Objects from the forest's foreground: split plainly, and after edge snapping."""
    fg = random_forest_foreground(train_img, labels, test_img, seed).astype(np.float32)
    lo, hi = np.percentile(test_img, [1, 99.8])
    guide = np.clip((test_img.astype(np.float32) - lo) / (hi - lo), 0, 1)
    return instances_from_foreground(fg), instances_from_foreground(snap_to_edges(fg, guide), threshold=SPLIT_THRESHOLD)


def seglab(mode, train_img, ann, test_img, seconds, seed, preset, head="auto"):
    head = head if is_instance_mode(mode) and head != "auto" else None
    cfg = TrainConfig(label_mode=mode, time_limit=seconds, epochs=None, device="cpu", seed=seed, preset=preset,
                      instance_head=head)
    t0 = time.monotonic()
    result = drive(iter_train([train_img], [ann], cfg))
    wall = time.monotonic() - t0
    lm = load_model(result.checkpoint, "cpu")
    pred = drive(iter_predict_image(lm, test_img, split_instances=not is_instance_mode(mode)))
    return pred.labels, result.steps, wall


def steps_per_second(img, lab, preset: str, steps: int = 12) -> float:
    cfg = TrainConfig(label_mode="instances", epochs=1, steps_per_epoch=steps, time_limit=None, device="cpu",
                      preset=preset, val_fraction=0.0, save_last=False)
    from napari_seglab.core.events import TrainStep, collect

    events, _ = collect(iter_train([img], [lab], cfg))
    t = [e.elapsed for e in events if isinstance(e, TrainStep)]
    return (len(t) - 3) / (t[-1] - t[2])  # the first steps warm up


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[30, 60, 120])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--protocols", nargs="+", choices=("halves", "unseen", "dsb"), default=["halves", "unseen"])
    p.add_argument("--instance-head", nargs="+", default=["auto"], choices=("auto", "boundary", "flows", "distance"),
                   help="instance head(s) of the instances / objects modes, each trained in turn "
                        "(auto: the product's default per mode)")
    p.add_argument("--stardist-wheel", default=None, help="the StarDist wheel holding the DSB image (dsb protocol)")
    p.add_argument("--no-baselines", action="store_true", help="skip the random forest and Otsu + watershed")
    p.add_argument("--preset", default=None, help="model preset (default: seglab's default for the CPU)")
    p.add_argument("--no-speed", action="store_true", help="skip the steps-per-second table")
    args = p.parse_args(argv)
    img = tifffile.imread(ROOT / "nuclei_train.tif")
    inst = tifffile.imread(ROOT / "nuclei_train_instances.tif")
    scrib = tifffile.imread(ROOT / "nuclei_train_scribbles.tif")
    test = tifffile.imread(ROOT / "nuclei_test.tif")
    test_inst = tifffile.imread(ROOT / "nuclei_test_instances.tif")
    half = img.shape[1] // 2
    data = {"halves": (img[:, :half], inst[:, :half], scrib[:, :half], img[:, half:], inst[:, half:]),
            "unseen": (img, inst, scrib, test, test_inst)}
    if "dsb" in args.protocols:
        data["dsb"] = dsb_data(args.stardist_wheel)
    rows = []
    none = {"dice": float("nan"), "ap50": float("nan")}
    for proto in args.protocols:
        tr_img, tr_inst, tr_scrib, te_img, te_truth = data[proto]
        otsu = none if args.no_baselines else match_instances(otsu_watershed(te_img), te_truth)
        for mode in args.modes:
            ann = annotation(mode, tr_inst, tr_scrib)
            rf = rf_snap = none
            if not args.no_baselines:
                rf, rf_snap = (match_instances(lab, te_truth)
                               for lab in random_forest(tr_img, rf_labels(mode, ann), te_img))
            for head in (args.instance_head if is_instance_mode(mode) else ["auto"]):
                for budget in args.budgets:
                    runs = []
                    for seed in args.seeds:
                        labels, steps, wall = seglab(mode, tr_img, ann, te_img, budget, seed, args.preset, head)
                        m = match_instances(labels, te_truth)
                        runs.append((m["dice"], m["ap50"], m["ap75"], steps, wall))
                        print(f"  {proto:6s} {mode:9s} {head:8s} {budget:4.0f}s seed {seed}: dice {m['dice']:.3f} "
                              f"ap50 {m['ap50']:.3f} ap75 {m['ap75']:.3f} steps {steps} wall {wall:.1f}s", flush=True)
                    rows.append((proto, mode, head, budget, np.array(runs), rf, otsu, rf_snap))
    print()
    print("protocol mode      head     budget  seglab dice        seglab ap50        ap75   steps  wall  | "
          "RF dice ap50  | RF+snap dice ap50 | otsu dice ap50")
    for proto, mode, head, budget, r, rf, otsu, rf_snap in rows:
        print(f"{proto:8s} {mode:9s} {head:8s} {budget:5.0f}s  {r[:, 0].mean():.3f}±{r[:, 0].std():.3f}  "
              f"{r[:, 1].mean():.3f}±{r[:, 1].std():.3f}  {r[:, 2].mean():.3f}  {r[:, 3].mean():5.0f}  "
              f"{r[:, 4].mean():4.0f}s | {rf['dice']:.3f} {rf['ap50']:.3f} | {rf_snap['dice']:.3f} "
              f"{rf_snap['ap50']:.3f}     | {otsu['dice']:.3f} {otsu['ap50']:.3f}")
    if not args.no_speed:
        from napari_seglab.core.models import PRESETS

        for name in PRESETS:
            print(f"preset {name}: {steps_per_second(data['unseen'][0], data['unseen'][1], name):.2f} steps/s "
                  "(dense instances, 2 cores)")
    if len(args.instance_head) > 1:
        base = {(pr, mo, bu): r for pr, mo, he, bu, r, *_ in rows if he == args.instance_head[0]}
        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2f}x" if b > 0 else "n/a"

        print(f"head/{args.instance_head[0]} (AP@0.5, AP@0.75): " + "; ".join(
            f"{pr} {mo} {he} {bu:.0f}s {ratio(r[:, 1].mean(), base[pr, mo, bu][:, 1].mean())} "
            f"{ratio(r[:, 2].mean(), base[pr, mo, bu][:, 2].mean())}"
            for pr, mo, he, bu, r, *_ in rows if he != args.instance_head[0] and (pr, mo, bu) in base))
    if not args.no_baselines:
        print("seglab/(RF+snap): " + "; ".join(
            f"{proto} {mode} {budget:.0f}s dice {r[:, 0].mean() / max(rs['dice'], 1e-9):.2f}x "
            f"ap50 {r[:, 1].mean() / max(rs['ap50'], 1e-9):.2f}x" for proto, mode, head, budget, r, _, _, rs in rows))
        print("seglab/RF: " + "; ".join(
            f"{proto} {mode} {head} {budget:.0f}s dice {r[:, 0].mean() / max(rf['dice'], 1e-9):.2f}x "
            f"ap50 {r[:, 1].mean() / max(rf['ap50'], 1e-9):.2f}x" for proto, mode, head, budget, r, rf, *_ in rows))
    return 0


def dsb_data(wheel: str | None):
    """The DSB2018 nuclei image of the StarDist wheel: (train img, instances, scribbles, test img, truth)."""
    from instance_heads import real_data, stardist_wheel

    from napari_seglab.core.synthetic import make_scribbles

    tr_img, tr_inst, te_img, te_inst = real_data(stardist_wheel(wheel))
    tr_inst = np.asarray(tr_inst, np.int64)
    return tr_img, tr_inst, make_scribbles(tr_inst, seed=0), te_img, np.asarray(te_inst, np.int64)


if __name__ == "__main__":
    sys.exit(main())
