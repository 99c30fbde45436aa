"""A few whole nuclei painted through their planes (``objects`` labels) of a z-stack: YX planes only against
the ZX/ZY planes through them too, decoded in 3D and linked.

The StarDist wheel's real 3D stack, split as in ``quality_3d.py`` (train on rows 0-29, score the 31 objects
of rows 30-60, 5 of them slivers of the training part's nuclei). The user's labels: ``--fraction`` of the
training part's nuclei (at random, ``--seed``), painted whole through all their planes as 2, 3, ...;
background strokes (1) on every ``--bg-every``-th plane (``make_scribbles``' background strokes). Two
runs of ``seglab``'s own training for ``--steps`` steps, the default head of the ``objects`` mode
(``--head`` to change it), no validation hold-out: anisotropy 0 (the YX planes only) and the stack's 2 (its
ZX/ZY planes through the painted nuclei too). Each model predicts the unseen part with 3D objects both ways
(``linked`` and ``orthogonal``).

    OMP_NUM_THREADS=1 python benchmarks/objects_3d.py --seed 0 [--steps 400]

Prints 3D AP@0.5 / AP@0.75 / Dice / objects per run and method, and last the AP@0.5 ratio with / without
the ZX/ZY planes (orthogonal).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality_3d import datasets, predict, row, score  # noqa: E402

from napari_seglab.core.events import Message, collect  # noqa: E402
from napari_seglab.core.synthetic import make_scribbles  # noqa: E402
from napari_seglab.core.train import TrainConfig, iter_train  # noqa: E402


def paint(train: np.ndarray, fraction: float, bg_every: int, seed: int) -> np.ndarray:
    """``objects`` labels of a (Z, Y, X) instance stack: chosen nuclei whole through their planes, strokes."""
    ids = np.unique(train)
    ids = ids[ids > 0]
    chosen = np.random.default_rng(seed).choice(ids, size=max(1, round(fraction * len(ids))), replace=False)
    labels = np.zeros(train.shape, np.uint16)
    for z in range(0, len(train), bg_every):
        strokes = make_scribbles(train[z], seed=seed * 100 + z, n_objects=0, n_background=3, n_gaps=2,
                                 brush_radius=(1, 2))
        labels[z][strokes == 1] = 1
    for k, i in enumerate(chosen):
        labels[train == i] = k + 2
    return labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--head", default=None, help="instance head (default: the objects mode's)")
    p.add_argument("--fraction", type=float, default=0.4)
    p.add_argument("--bg-every", type=int, default=3)
    p.add_argument("--stardist-wheel")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    data = datasets(args.stardist_wheel)
    if "real" not in data:
        print("no StarDist wheel: nothing to measure", file=sys.stderr)
        return 2
    img, inst, test, truth, aniso = data["real"]
    labels = paint(inst, args.fraction, args.bg_every, args.seed)
    print(f"painted {len(np.unique(labels)) - 2} of {len(np.unique(inst)) - 1} nuclei through their planes; "
          f"background strokes {np.count_nonzero(labels == 1) / np.count_nonzero(labels >= 2):.2f} of their area",
          flush=True)
    found = {}
    for name, anisotropy in (("YX only", 0.0), ("ZX/ZY too", aniso)):
        cfg = TrainConfig(label_mode="objects", epochs=max(1, args.steps // 25), steps_per_epoch=25, device="cpu",
                          encoder="resnet18", patch=64, batch_size=8, lr=3e-3, seed=args.seed,
                          instance_head=args.head, val_fraction=0.0, anisotropy=anisotropy)
        t0 = time.monotonic()
        events, result = collect(iter_train([img], [labels], cfg, axes=["ZYX"]))
        for event in events:
            if isinstance(event, Message) and event.text.startswith("ZX/ZY"):
                print(f"  {event.text}", flush=True)
        print(f"{name}: trained {result.steps} steps in {time.monotonic() - t0:.0f} s", flush=True)
        for method in ("linked", "orthogonal"):
            pred, secs = predict(result.checkpoint, test, aniso, method)
            found[name, method] = score(pred, truth, split=True)
            row("real", name, method, found[name, method], secs)
    with_, without = found["ZX/ZY too", "orthogonal"]["ap50"], found["YX only", "orthogonal"]["ap50"]
    print("ap50 ratio ZX/ZY too / YX only [orthogonal]: "
          + (f"{with_ / without:.2f}x" if without else "inf (YX only found nothing right)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
