"""Which predicted objects can be accepted without a look: the thresholds of model-assisted annotation.

Trains the ``objects`` mode (CLI defaults, a step budget) on a real image with
a fraction of its nuclei painted whole plus background strokes, predicts the
same image (where the user paints), and for every object predicted where
nothing is painted records what :func:`napari_seglab.core.objects.assess_objects`
sees (mean uncertainty, area / median painted area, flow error) next to its
best IoU with a true nucleus. Prints, per threshold, how many objects would be
accepted and how many of those are right (IoU >= 0.5 and >= 0.75), so that the
constants in ``core/objects/_assist.py`` are chosen on numbers.

    python benchmarks/assist_thresholds.py                        # DSB2018 (StarDist wheel) and the sample
    python benchmarks/assist_thresholds.py --images sample --steps 200 --seeds 0
    python benchmarks/assist_thresholds.py --head flows --images dsb     # the flow-agreement threshold
"""

from __future__ import annotations

import argparse

import numpy as np
from sparse_annotations import annotate, chosen_nuclei, load_image

from napari_seglab.core.events import drive
from napari_seglab.core.objects import assess_objects, entropy_map, flow_agreement, solidity
from napari_seglab.core.predict import iter_predict_image, load_model
from napari_seglab.core.train import TrainConfig, iter_train


def best_iou(pred: np.ndarray, truth: np.ndarray, oid: int) -> float:
    mask = pred == oid
    ids, counts = np.unique(truth[mask], return_counts=True)
    best = 0.0
    for tid, inter in zip(ids, counts, strict=True):
        if tid:
            best = max(best, inter / (mask.sum() + (truth == tid).sum() - inter))
    return best


def run(img, inst, fraction, pattern, steps, seed, head=None):
    ann = annotate("objects", inst, chosen_nuclei(inst, fraction, pattern, seed), seed)
    cfg = TrainConfig(label_mode="objects", device="cpu", seed=seed, epochs=max(1, steps // 50),
                      steps_per_epoch=50, time_limit=None, instance_head=head)
    result = drive(iter_train([img], [ann], cfg))
    pred = drive(iter_predict_image(load_model(result.checkpoint, "cpu"), img, probabilities=True,
                                                head_outputs=True))
    errors = flow_agreement(pred.labels, pred.head_outputs) if pred.head_outputs is not None \
        and pred.head_outputs.shape[0] == 3 else None
    return assessed(pred.labels, ann, inst, entropy_map(pred.probabilities), errors)


def assessed(labels, ann, inst, uncertainty, errors) -> np.ndarray:
    """One row per object predicted where nothing is painted: uncertainty, area / reference, flow error,
    solidity, touching painted or on background strokes, best IoU with a true nucleus."""
    report = assess_objects(labels, ann, uncertainty=uncertainty, flow_errors=errors,
                            max_uncertainty=1.1, size_range=(0, np.inf), max_flow_error=np.inf, min_solidity=0)
    rows = []
    for row in report.unpainted:
        sl = (slice(row["y0"], row["y1"]), slice(row["x0"], row["x1"]))
        rows.append((row["uncertainty"], row["area"] / report.reference_area,
                     row["flow_error"] if row["flow_error"] is not None else 0.0,
                     solidity(labels[sl] == row["id"]), bool(row["reasons"]),
                     best_iou(labels, inst, row["id"])))
    return np.array(rows, float)


def table(rows: np.ndarray) -> None:
    u, size, flow, solid, other, iou = rows.T
    base = other == 0
    print(f"  objects where nothing is painted: {len(rows)}; right at IoU 0.5: {np.mean(iou >= 0.5):.3f}, "
          f"0.75: {np.mean(iou >= 0.75):.3f}; touching painted / on background strokes: {int(other.sum())}")
    print("  max_unc  size range   max_flow min_solid | accepted  right@0.5 right@0.75 | doubtful right@0.5")
    flows = (0.2, 0.4, 0.6, np.inf) if flow.any() else (np.inf,)  # flow errors exist for the flows head only
    for mu in (0.25, 0.3, 0.35, 0.4, 0.5, 1.1):
        for lo, hi in ((0.0, np.inf), (0.3, 3.0), (0.4, 2.5), (0.5, 2.0)):
            for mf in flows:
                for ms in (0.0, 0.85, 0.9, 0.92):
                    ok = base & (u <= mu) & (size >= lo) & (size <= hi) & (flow <= mf) & (solid >= ms)
                    rest = ~ok
                    print(f"  {mu:6.2f}  {lo:.1f}-{hi:<6.1f} {mf:6.1f}   {ms:5.2f}    | {ok.sum():5d}    "
                          f"{np.mean(iou[ok] >= 0.5) if ok.any() else np.nan:.3f}     "
                          f"{np.mean(iou[ok] >= 0.75) if ok.any() else np.nan:.3f}    | {rest.sum():5d}    "
                          f"{np.mean(iou[rest] >= 0.5) if rest.any() else np.nan:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", nargs="+", default=["dsb", "sample"])
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--patterns", nargs="+", default=["first", "random"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--head", default=None, choices=("boundary", "flows", "distance"),
                   help="the instance head (default: the objects mode's default)")
    p.add_argument("--stardist-wheel", default=None)
    args = p.parse_args(argv)
    pooled = []
    for name in args.images:
        img, inst = load_image(name, args.stardist_wheel)
        for pattern in args.patterns:
            for seed in args.seeds:
                rows = run(img, inst, args.fraction, pattern, args.steps, seed, args.head)
                print(f"{name} {pattern} seed {seed}:", flush=True)
                table(rows)
                pooled.append(rows)
    if len(pooled) > 1:
        print("all runs pooled:")
        table(np.concatenate(pooled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
