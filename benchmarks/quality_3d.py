"""3D nuclei: objects through a stack, linked planes vs the three views decoded in 3D.

Data, each split into a training part and an unseen part:

- ``synthetic``: :func:`napari_seglab.core.synthetic.make_nuclei_3d` stacks (24x128x128,
  anisotropy 2), train on seed 0, predict seed 1;
- ``real``: the labelled 3D nuclei stack that ships in the StarDist wheel
  (``stardist/data/images/img3d.tif`` + ``mask3d.tif``, 31x61x57, 51 nuclei, anisotropy
  about 2), read from the wheel with zipfile, never copied; train on the top rows (y < 30),
  predict the bottom rows.

For every instance head (``flows``, ``distance``, ``boundary``) one 2D U-Net is trained on the
painted planes with ``seglab``'s own training, for ``--steps`` steps (equal steps, so the load of
the shared machine changes the time, not the result), then the same model predicts the unseen
part two ways: ``linked`` (2D objects per plane linked by overlap, the floor) and ``orthogonal``
(YX/ZX/ZY planes combined and decoded in 3D). Scores: 3D AP@0.5 and @0.75 (IoU over voxels),
Dice, count error. ``--sparse`` also trains the flows head from 3 painted planes of each training
stack, and from 10 consecutive ones, against the fully painted stack at the same steps or budget (the "few
planes" goal; ``--sparse-rows`` picks the rows). ``--sections off`` trains on the YX planes only (training is not told the z step, so
painted runs teach no ZX/ZY planes). ``--self-training off`` leaves the unpainted planes of the --sparse
rows unused (the library's default labels them with the model's 3D objects during training).

``--budget SEC`` trains for a wall-clock budget instead of a number of steps (the issue's 120 s and
600 s on 2 cores). With it, ``--stardist-python`` (a venv with ``stardist==0.9.2`` and
``tensorflow-cpu``; ``python3 -m venv V && V/bin/pip install stardist tensorflow-cpu``) also trains
StarDist 3D from scratch on the same training part for the same budget
(``benchmarks/stardist3d_peer.py``, its 3D example's recipe) and scores its objects the same way.

    OMP_NUM_THREADS=1 python benchmarks/quality_3d.py --steps 150 [--sparse]
    OMP_NUM_THREADS=1 python benchmarks/quality_3d.py --budget 120 --heads flows --data real \
        --stardist-python /tmp/sd-venv/bin/python

Prints one row per (data, head, method) and last the AP@0.5 ratios orthogonal / linked and
orthogonal / StarDist 3D.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import tifffile

from napari_seglab.core.evaluate import match_instances
from napari_seglab.core.events import drive
from napari_seglab.core.objects import _volume as volume_objects
from napari_seglab.core.predict import iter_predict_volume, load_model
from napari_seglab.core.synthetic import make_nuclei_3d
from napari_seglab.core.train import TrainConfig, iter_train

WHEELS = "/tmp/seglab-bench-stardist/stardist-*.whl"


def stardist_stack(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """The StarDist wheel's 3D nuclei stack (31, 61, 57) uint16 and its instance mask, int64."""
    with zipfile.ZipFile(wheel) as z:
        img = tifffile.imread(BytesIO(z.read("stardist/data/images/img3d.tif")))
        mask = tifffile.imread(BytesIO(z.read("stardist/data/images/mask3d.tif")))
    return img, np.asarray(mask, np.int64)


def datasets(wheel: str | None):
    img, inst = make_nuclei_3d((24, 128, 128), seed=0, anisotropy=2.0)
    test, truth = make_nuclei_3d((24, 128, 128), seed=1, anisotropy=2.0)
    out = {"synthetic": (img, inst, test, truth, 2.0)}
    found = [wheel] if wheel else sorted(glob.glob(WHEELS))
    if found:
        img, inst = stardist_stack(Path(found[0]))
        # objects cut by the split keep only their part: relabel each side's pieces
        out["real"] = (img[:, :30], inst[:, :30], img[:, 30:], inst[:, 30:], 2.0)
    else:
        print("no StarDist wheel: the real stack is skipped", file=sys.stderr)
    return out


#: the --sparse rows: which planes of the training stack are painted
SPARSE_ROWS = ("3 planes", "10 consecutive", "full")

#: a true object of the unseen part touching the split face with at most this many rows there is a sliver of a
#: nucleus that lies in the training part (the real stack's split leaves 5 of 31, 11-122 voxels)
SLIVER_ROWS = 3


def slivers(truth: np.ndarray, face: bool) -> int:
    """How many true objects are slivers cut off by the split (rows 0..SLIVER_ROWS-1 only); 0 without a split."""
    if not face:
        return 0
    shallow = np.unique(truth[:, :SLIVER_ROWS])
    return int(np.setdiff1d(shallow[shallow > 0], np.unique(truth[:, SLIVER_ROWS:])).size)


def score(pred: np.ndarray, truth: np.ndarray, split: bool = False) -> dict:
    m = match_instances(pred, truth, (0.5, 0.75))
    m["count_error"] = (m["n_pred"] - m["n_true"]) / max(m["n_true"], 1)
    # the count against the nuclei the unseen part really holds (slivers of the training part's nuclei aside)
    whole = m["n_true"] - slivers(truth, split)
    m["count_error_whole"] = (m["n_pred"] - whole) / max(whole, 1)
    return m


def train(img, lab, head: str, steps: int, seed: int = 0, cache: Path | None = None, tag: str = "",
          budget: float | None = None, anisotropy: float = 0.0, self_training: bool | None = None):
    """(checkpoint path or Checkpoint, steps, seconds); with ``cache``, a model trained before is reused.

    ``budget``: train for this many wall-clock seconds (set-up included) instead of ``steps`` steps.
    ``anisotropy``: the stack's z step over its pixel size (0: YX planes only). ``self_training``: None = the
    library's default (3D self-training of a stack painted on some planes, when the z step is known).
    """
    length = f"{budget:g}s" if budget else str(steps)
    sections = "_zxzy" if anisotropy else ""
    st = {None: "", True: "_st", False: "_nost"}[self_training]
    out = cache / f"{tag}_{head}_{length}_{seed}{sections}{st}.pt" if cache else None
    if out is not None and out.exists():
        return out, None, 0.0
    cfg = TrainConfig(label_mode="instances", epochs=None if budget else max(1, steps // 25),
                      steps_per_epoch=min(steps, 25), time_limit=budget, device="cpu", encoder="resnet18", patch=64,
                      batch_size=8, lr=3e-3, seed=seed, instance_head=head, val_fraction=0.0,
                      model_out=str(out) if out else None, anisotropy=anisotropy, self_training=self_training)
    t0 = time.monotonic()
    result = drive(iter_train([img], [lab], cfg, axes=["ZYX"]))
    return (out or result.checkpoint), result.steps, time.monotonic() - t0


def predict(model, test, anisotropy, method):
    t0 = time.monotonic()
    pred = drive(iter_predict_volume(load_model(model, "cpu", runtime="torch"), test, "ZYX",
                                     anisotropy=anisotropy, method=method))
    return pred.labels, time.monotonic() - t0


def run_stardist(python: str, img, lab, test, anisotropy: float, budget: float, seed: int) -> dict:
    """StarDist 3D trained from scratch for ``budget`` seconds in its own interpreter; labels, steps, seconds."""
    peer = Path(__file__).with_name("stardist3d_peer.py")
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "job.npz", Path(tmp) / "out.npz"
        np.savez(job, train_image=img, train_labels=lab, test_image=test, budget=budget, seed=seed,
                 anisotropy=anisotropy)
        proc = subprocess.run([python, str(peer), str(job), str(out)], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode:
            raise RuntimeError(f"StarDist 3D failed:\n{proc.stderr[-3000:]}")
        r = np.load(out)
        return {"labels": r["labels"], "steps": int(r["steps"]), "seconds": float(r["seconds"]),
                "predict_seconds": float(r["predict_seconds"])}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else ("inf (the baseline found nothing right)" if a > 0 else "0/0")


def row(name, head, method, m, secs):
    print(f"{name:9s} {head:8s} {method:10s} ap50 {m['ap50']:.3f} ap75 {m['ap75']:.3f} dice {m['dice']:.3f} "
          f"objects {m['n_pred']:3d}/{m['n_true']:3d} count_err {m['count_error']:+.2f} "
          f"(whole nuclei {m['count_error_whole']:+.2f})  ({secs:.0f} s)", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--budget", type=float, default=None,
                   help="train for this many wall-clock seconds instead of --steps steps (the issue's 120 / 600)")
    p.add_argument("--heads", nargs="*", default=["flows", "distance", "boundary"])
    p.add_argument("--data", nargs="+", default=["synthetic", "real"])
    p.add_argument("--stardist-wheel")
    p.add_argument("--sparse", action="store_true",
                   help="also 3 painted planes and 10 consecutive ones vs the full stack (each --data)")
    p.add_argument("--sparse-rows", nargs="+", choices=SPARSE_ROWS, default=list(SPARSE_ROWS),
                   help="which --sparse rows to train (the full stack is the ratios' reference)")
    p.add_argument("--methods", nargs="+", default=["linked", "orthogonal"])
    p.add_argument("--boundary-decoders", nargs="+", default=["2d-rules", "seeds"],
                   help="3D decoders of the boundary head to compare (the last one's score counts in the ratio)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--sections", choices=("on", "off"), default="on",
                   help="on: training knows the stack's anisotropy, so its painted runs also teach their ZX/ZY "
                        "planes (the default with a file's voxel size); off: YX planes only")
    p.add_argument("--self-training", choices=("default", "on", "off"), default="default",
                   help="--sparse rows: 3D self-training of the partly painted stacks (default: the library's, on)")
    p.add_argument("--cache", type=Path, help="folder to keep the trained models in and reuse them from")
    p.add_argument("--stardist-python", default=None,
                   help="interpreter with stardist 0.9 and tensorflow-cpu: also train StarDist 3D (needs --budget)")
    args = p.parse_args(argv)
    if args.stardist_python and not args.budget:
        p.error("--stardist-python needs --budget SEC (the peer trains for wall-clock time)")
    import torch

    torch.set_num_threads(1)
    data = datasets(args.stardist_wheel)
    ratios = []
    for name in args.data:
        if name not in data:
            continue
        img, lab, test, truth, aniso = data[name]
        peer = {}
        for head in args.heads:
            sections = aniso if args.sections == "on" else 0.0
            model, steps, t_train = train(img, lab, head, args.steps, args.seed, cache=args.cache, tag=name,
                                          budget=args.budget, anisotropy=sections)
            print(f"{name:9s} {head:8s} " + (f"trained {steps} steps in {t_train:.0f} s" if steps is not None
                                               else f"model from {args.cache}"), flush=True)
            scores = {}
            for method in args.methods:
                variants = args.boundary_decoders if head == "boundary" and method == "orthogonal" else [None]
                for variant in variants:
                    if variant:
                        volume_objects.BOUNDARY_DECODER = variant
                    pred, secs = predict(model, test, aniso, method)
                    scores[method] = score(pred, truth, split=name == "real")
                    row(name, head, method + (f"/{variant}" if variant else ""), scores[method], secs)
            if {"linked", "orthogonal"} <= set(scores):
                ratios.append((name, head, "linked", _ratio(scores["orthogonal"]["ap50"], scores["linked"]["ap50"])))
            if args.stardist_python and "orthogonal" in scores:
                if "stardist3d" not in peer:
                    sd = run_stardist(args.stardist_python, img, lab, test, aniso, args.budget, args.seed)
                    peer["stardist3d"] = score(sd["labels"], truth, split=name == "real")
                    print(f"{name:9s} stardist trained {sd['steps']} steps in {sd['seconds']:.0f} s", flush=True)
                    row(name, "stardist", "3D", peer["stardist3d"], sd["predict_seconds"])
                ratios.append((name, head, "StarDist 3D", _ratio(scores["orthogonal"]["ap50"],
                                                                 peer["stardist3d"]["ap50"])))
    few_planes = {}
    for name in args.data if args.sparse else ():
        if name not in data:
            continue
        img, lab, test, truth, aniso = data[name]
        planes = np.linspace(0, lab.shape[0] - 1, 5).astype(int)[1:4]  # 3 planes through the middle
        few = np.zeros_like(lab)
        few[planes] = lab[planes]
        middle = lab.shape[0] // 2 - 5
        block = np.zeros_like(lab)  # 10 consecutive planes through the middle: a run deep enough for ZX/ZY planes
        block[middle:middle + 10] = lab[middle:middle + 10]
        for label, labels in (("3 planes", few), ("10 consecutive", block), ("full", lab)):
            if label not in args.sparse_rows:
                continue
            tag = name + {"full": "", "3 planes": "3planes"}.get(label, "10planes")
            model, steps, t_train = train(img, labels, "flows", args.steps, args.seed, cache=args.cache,
                                          tag=tag, budget=args.budget,
                                          anisotropy=aniso if args.sections == "on" else 0.0,
                                          self_training={"on": True, "off": False}.get(args.self_training))
            if steps is not None:
                print(f"{name:9s} flows    {label}: trained {steps} steps in {t_train:.0f} s", flush=True)
            pred, secs = predict(model, test, aniso, "orthogonal")
            few_planes[name, label] = score(pred, truth, split=name == "real")
            row(name, "flows", label, few_planes[name, label], t_train + secs)
    for name, head, against, r in ratios:
        print(f"ap50 ratio orthogonal/{against} [{name} {head}]: {r}")
    for (name, label), m in few_planes.items():  # the "few planes" goal: 3 planes >= 0.8x the full stack
        if label != "full" and (name, "full") in few_planes:
            print(f"ap50 ratio {label}/full [{name} flows]: {_ratio(m['ap50'], few_planes[name, 'full']['ap50'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
